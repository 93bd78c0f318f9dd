//! `kiln cache <command>`: the dataset cache's flags, turned into the library's typed
//! configurations ([`SourceConfig`], [`CacheConfig`], [`MountConfig`], [`Selection`]), and the
//! commands' output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use kiln_datacache::admin::{self, WarmupRequest};
use kiln_datacache::cache::CacheConfig;
use kiln_datacache::mount::{run_mount_with_collectors, MountConfig};
use kiln_datacache::service::{CacheService, ServiceConfig};
use kiln_datacache::source::{Credentials, SourceConfig, SourceSpec};
use kiln_datacache::warmup::{self, Selection, WarmupReport};
use kiln_datacache::DatacacheError;

use crate::signal::shutdown_signal;

/// Dataset cache commands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Mount a remote dataset read-only at MOUNTPOINT (runs until SIGTERM/SIGINT).
    Mount(MountArgs),
    /// Fetch a dataset (or part of it) into the cache ahead of a job.
    Warmup(WarmupArgs),
    /// Make a running mount list the remote again.
    Refresh(AdminArgs),
    /// Print the counters of a running mount.
    Stats(StatsArgs),
}

/// Where the data comes from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Dataset URL: s3://bucket/prefix, http(s)://host/path, webhdfs://namenode:port/path, file:///path.
    #[arg(long, env = "KILN_CACHE_SOURCE")]
    pub source: Option<String>,
    /// S3 endpoint URL for non-AWS stores (MinIO, Ceph, moto).
    #[arg(long, env = "KILN_CACHE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "KILN_CACHE_REGION", default_value = "us-east-1")]
    pub region: String,
    /// S3 access key id (falls back to AWS_ACCESS_KEY_ID).
    #[arg(long, env = "KILN_CACHE_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key_id: Option<String>,
    /// S3 secret access key (falls back to AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "KILN_CACHE_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<String>,
    /// S3 session token (falls back to AWS_SESSION_TOKEN).
    #[arg(long, env = "KILN_CACHE_SESSION_TOKEN", hide_env_values = true)]
    pub session_token: Option<String>,
    /// WebHDFS user name.
    #[arg(long, env = "KILN_CACHE_HDFS_USER")]
    pub hdfs_user: Option<String>,
    /// Listing file used instead of listing the remote (`path[<TAB>size]` per line; needed for http).
    #[arg(long, env = "KILN_CACHE_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// Bound on one remote request attempt.
    #[arg(long, env = "KILN_CACHE_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Retries of transient remote errors (exponential backoff with jitter).
    #[arg(long, env = "KILN_CACHE_RETRIES", default_value_t = 3)]
    pub retries: usize,
}

/// Cache directory and sizes.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Directory of the disk tier, metadata snapshot and lock (one process at a time).
    #[arg(long, env = "KILN_CACHE_DIR", default_value = "/var/cache/kiln")]
    pub cache_dir: PathBuf,
    /// Memory tier size (e.g. 2GiB).
    #[arg(long, env = "KILN_CACHE_MEMORY_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub memory_size: u64,
    /// Disk tier size (e.g. 200GiB).
    #[arg(long, env = "KILN_CACHE_DISK_SIZE", default_value = "20GiB", value_parser = parse_size)]
    pub disk_size: u64,
    /// Block size: files up to this size are cached whole, larger ones in blocks.
    #[arg(long, env = "KILN_CACHE_BLOCK_SIZE", default_value = "4MiB", value_parser = parse_size)]
    pub block_size: u64,
    /// Blocks read ahead for sequential readers of large files.
    #[arg(long, env = "KILN_CACHE_READAHEAD_BLOCKS", default_value_t = 2)]
    pub readahead_blocks: u32,
    /// Bound on a read that needs the remote; past it the read fails with EIO.
    #[arg(long, env = "KILN_CACHE_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
    /// Age after which the metadata is listed again (also `kiln cache refresh`).
    #[arg(long, env = "KILN_CACHE_METADATA_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub metadata_ttl: Duration,
}

/// `kiln cache mount`.
#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// FUSE worker threads.
    #[arg(long, env = "KILN_CACHE_FUSE_THREADS", default_value_t = 16)]
    pub fuse_threads: usize,
    /// Kernel attribute and entry cache TTL.
    #[arg(long, env = "KILN_CACHE_KERNEL_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub kernel_ttl: Duration,
    /// Allow other users to read the mount.
    #[arg(long, env = "KILN_CACHE_ALLOW_OTHER")]
    pub allow_other: bool,
    /// Admin endpoint (/metrics, /stats, /refresh, /warmup).
    #[arg(long, env = "KILN_CACHE_ADMIN_ADDR", default_value = "127.0.0.1:9477")]
    pub admin_addr: SocketAddr,
    /// Disable the admin endpoint.
    #[arg(long, env = "KILN_CACHE_NO_ADMIN")]
    pub no_admin: bool,
    /// Where to mount.
    #[arg(env = "KILN_CACHE_MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

/// `kiln cache warmup`.
#[derive(Debug, Clone, Args)]
pub struct WarmupArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Only files under this prefix (relative to the source root).
    #[arg(long, env = "KILN_CACHE_WARMUP_PREFIX")]
    pub prefix: Option<String>,
    /// File with one path per line (relative to the source root) to warm.
    #[arg(long, env = "KILN_CACHE_WARMUP_LIST")]
    pub list: Option<PathBuf>,
    /// Concurrent fetches.
    #[arg(long, env = "KILN_CACHE_WARMUP_THREADS", default_value_t = 16)]
    pub threads: usize,
    /// Admin URL of a running mount to warm through (default: found in `<cache-dir>/daemon.json`).
    #[arg(long, env = "KILN_CACHE_ADMIN_URL")]
    pub admin: Option<String>,
    /// No progress bar.
    #[arg(long, env = "KILN_CACHE_NO_PROGRESS")]
    pub no_progress: bool,
    /// Print the final report as JSON on stdout.
    #[arg(long, env = "KILN_CACHE_JSON")]
    pub json: bool,
}

/// How to reach a running mount.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Cache directory of the running mount (its daemon.json names the admin URL).
    #[arg(long, env = "KILN_CACHE_DIR", default_value = "/var/cache/kiln")]
    pub cache_dir: PathBuf,
    /// Admin URL, e.g. http://127.0.0.1:9477 (overrides --cache-dir).
    #[arg(long, env = "KILN_CACHE_ADMIN_URL")]
    pub admin: Option<String>,
}

/// `kiln cache stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print JSON.
    #[arg(long, env = "KILN_CACHE_JSON")]
    pub json: bool,
}

/// Parses `4096`, `4K`, `4KiB`, `4MB` (decimal), `1.5GiB`, `20G` (binary) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    Ok((n * mult) as u64)
}

impl SourceArgs {
    /// The under-storage configuration (credentials from flags, else the AWS env vars).
    pub fn to_config(&self) -> anyhow::Result<SourceConfig> {
        let url = self.source.as_deref().context("--source is required")?;
        let credentials = with_aws_env(Credentials {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
        });
        Ok(SourceConfig {
            spec: SourceSpec::parse(url)?,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials,
            request_timeout: self.request_timeout,
            retries: self.retries,
            hdfs_user: self.hdfs_user.clone(),
        })
    }
}

impl CacheArgs {
    /// The data cache configuration.
    pub fn to_config(&self) -> CacheConfig {
        CacheConfig {
            dir: self.cache_dir.clone(),
            memory_bytes: self.memory_size as usize,
            disk_bytes: self.disk_size as usize,
            block_size: self.block_size,
            readahead_blocks: self.readahead_blocks,
            read_timeout: self.read_timeout,
        }
    }
}

fn service_config(s: &SourceArgs, c: &CacheArgs) -> anyhow::Result<ServiceConfig> {
    Ok(ServiceConfig {
        source: s.to_config()?,
        cache: c.to_config(),
        manifest: s.manifest.clone(),
        meta_ttl: c.metadata_ttl,
    })
}

/// Fills unset credentials from the usual AWS environment variables.
fn with_aws_env(mut c: Credentials) -> Credentials {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    c.access_key_id = c.access_key_id.or_else(|| env("AWS_ACCESS_KEY_ID"));
    c.secret_access_key = c.secret_access_key.or_else(|| env("AWS_SECRET_ACCESS_KEY"));
    c.session_token = c.session_token.or_else(|| env("AWS_SESSION_TOKEN"));
    c
}

fn admin_url(cache_dir: &Path, explicit: Option<&str>) -> Option<String> {
    explicit
        .map(|s| s.trim_end_matches('/').to_string())
        .or_else(|| admin::read_daemon_info(cache_dir).and_then(|d| d.admin))
}

/// Runs one `kiln cache` command. Async: call it from the binary's tokio runtime.
pub async fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    kiln_datacache::source::install_tls_provider();
    match cmd {
        CacheCommand::Mount(a) => {
            let cfg = MountConfig {
                service: service_config(&a.source, &a.cache)?,
                mountpoint: a.mountpoint.clone(),
                fuse_threads: a.fuse_threads,
                kernel_ttl: a.kernel_ttl,
                allow_other: a.allow_other,
                admin_addr: (!a.no_admin).then_some(a.admin_addr),
            };
            let process = vec![crate::process_metrics::ProcessCollector::boxed()];
            run_mount_with_collectors(cfg, process, shutdown_signal()).await?;
            Ok(())
        }
        CacheCommand::Warmup(a) => run_warmup(a).await,
        CacheCommand::Refresh(a) => {
            let url = admin_url(&a.cache_dir, a.admin.as_deref())
                .context("no running mount found (pass --admin or --cache-dir)")?;
            let r = admin::request_refresh(&url).await?;
            println!(
                "refreshed: {} files, {} bytes, generation {}, {} ms",
                r.files, r.bytes, r.generation, r.elapsed_ms
            );
            Ok(())
        }
        CacheCommand::Stats(a) => {
            let url = admin_url(&a.admin.cache_dir, a.admin.admin.as_deref())
                .context("no running mount found (pass --admin or --cache-dir)")?;
            let s = admin::fetch_stats(&url).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_stats(&s);
            }
            Ok(())
        }
    }
}

fn print_stats(s: &admin::StatsResponse) {
    let st = &s.stats;
    println!("source            {}", s.source);
    println!(
        "metadata          {} files, {:.1} MB, generation {}, age {} s, {:.1} MB in memory",
        s.files,
        s.bytes as f64 / 1e6,
        s.generation,
        s.metadata_age_secs,
        st.metadata_heap_bytes as f64 / 1e6
    );
    println!(
        "hits              {} files, {:.1} MB memory, {:.1} MB disk",
        st.hit_files,
        st.hit_bytes_memory as f64 / 1e6,
        st.hit_bytes_disk as f64 / 1e6
    );
    println!(
        "misses            {} files, {:.1} MB",
        st.miss_files,
        st.miss_bytes as f64 / 1e6
    );
    println!(
        "remote            {} reads ({} failed, mean {:.2} ms), {} lists, {} stats, {:.1} MB",
        st.remote_reads,
        st.remote_read_errors,
        st.remote_read_mean_ms,
        st.remote_lists,
        st.remote_stats,
        st.remote_bytes as f64 / 1e6
    );
    println!(
        "tiers             memory {:.1} MB, disk {:.1} MB, {} evictions",
        st.memory_bytes as f64 / 1e6,
        st.disk_bytes as f64 / 1e6,
        st.evictions
    );
    println!(
        "integrity         {} corrupt, {} stale blocks refetched; {} read errors ({} timeouts)",
        st.corrupt_blocks, st.stale_blocks, st.read_errors, st.read_timeouts
    );
    let w = &s.warmup;
    println!(
        "warm-up           {} ({} planned, {} done, {} failed, {} skipped)",
        if w.running { "running" } else { "idle" },
        w.planned_files,
        w.done,
        w.failed,
        w.skipped
    );
}

fn read_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("reading warm-up list {}", path.display()))?;
    Ok(s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').next().unwrap_or(l).to_string())
        .collect())
}

async fn run_warmup(a: WarmupArgs) -> anyhow::Result<()> {
    let sel = Selection {
        prefix: a.prefix.clone(),
        paths: a.list.as_deref().map(read_list).transpose()?,
    };
    let show = !a.no_progress;
    let delegate = a.admin.is_some()
        || (a.source.source.is_none() && admin::read_daemon_info(&a.cache.cache_dir).is_some());
    let report = if delegate {
        let url = admin_url(&a.cache.cache_dir, a.admin.as_deref())
            .context("no admin URL for the running mount")?;
        warmup_remote(&url, sel, a.threads, show).await?
    } else {
        let svc = match CacheService::open(service_config(&a.source, &a.cache)?).await {
            Err(DatacacheError::Locked { pid, .. }) => match admin_url(&a.cache.cache_dir, None) {
                Some(url) => {
                    tracing::info!(pid, admin = %url, "cache directory is held by a running mount; warming through it");
                    let r = warmup_remote(&url, sel, a.threads, show).await?;
                    return finish_warmup(r, a.json);
                }
                None => bail!(
                    "cache directory {} is in use by pid {pid:?} and no admin endpoint is known",
                    a.cache.cache_dir.display()
                ),
            },
            other => other?,
        };
        let (_, tree) = svc.meta.current();
        let r = warmup::warmup(&svc.data, &tree, &sel, a.threads, &svc.warmup, show).await;
        svc.close().await?;
        r
    };
    finish_warmup(report, a.json)
}

async fn warmup_remote(
    url: &str,
    selection: Selection,
    threads: usize,
    show: bool,
) -> anyhow::Result<WarmupReport> {
    let started = Instant::now();
    admin::start_warmup(url, &WarmupRequest { selection, threads }).await?;
    let progress = warmup::WarmupProgress::default();
    let mut bar = None;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = admin::warmup_progress(url).await?;
        let b = bar.get_or_insert_with(|| warmup::progress_bar(s.planned_files, show));
        b.set_length(s.planned_files);
        for (c, v) in [
            (&progress.planned_bytes, s.planned_bytes),
            (&progress.done, s.done),
            (&progress.failed, s.failed),
            (&progress.skipped, s.skipped),
            (&progress.bytes, s.bytes),
        ] {
            c.store(v, std::sync::atomic::Ordering::Relaxed);
        }
        warmup::update_bar(b, &progress, started);
        if !s.running {
            b.finish_and_clear();
            return s.last.context("the daemon reported no warm-up result");
        }
    }
}

fn finish_warmup(r: WarmupReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("warm-up: {} planned, {} done, {} failed, {} skipped; {:.1} MB fetched in {:.1} s ({:.0} files/s, {:.1} MB/s)",
            r.planned, r.done, r.failed, r.skipped, r.bytes_fetched as f64 / 1e6, r.elapsed_secs, r.files_per_sec,
            r.bytes_fetched as f64 / 1e6 / r.elapsed_secs.max(1e-9));
        for f in &r.failures {
            println!("  failed: {} ({})", f.path, f.error);
        }
    }
    if r.failed > 0 {
        bail!("warm-up finished with {} failed files", r.failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CacheCommand,
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("4X").is_err());
    }

    #[test]
    fn parses_commands() {
        let c = Cli::try_parse_from([
            "kiln",
            "mount",
            "--source",
            "s3://b/p",
            "--endpoint",
            "http://127.0.0.1:1",
            "/mnt/x",
        ])
        .unwrap();
        assert!(matches!(c.cmd, CacheCommand::Mount(ref m) if m.mountpoint == Path::new("/mnt/x")));
        let c = Cli::try_parse_from([
            "kiln",
            "warmup",
            "--source",
            "s3://b",
            "--threads",
            "4",
            "--prefix",
            "a/",
        ])
        .unwrap();
        assert!(matches!(c.cmd, CacheCommand::Warmup(ref w) if w.threads == 4));
        assert!(Cli::try_parse_from(["kiln", "stats", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["kiln", "refresh", "--admin", "http://x"]).is_ok());
    }
}
