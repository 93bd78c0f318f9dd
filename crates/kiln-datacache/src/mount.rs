//! The mount daemon: stale-mount cleanup, FUSE session, admin endpoint, metadata TTL refresh and
//! a clean unmount when the shutdown future resolves (SIGTERM/SIGINT in the CLI).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use prometheus_client::collector::Collector;

use crate::admin::{self, DaemonInfo};
use crate::error::{DatacacheError, Result};
use crate::fs::{FsOptions, KilnFs};
use crate::service::{CacheService, ServiceConfig};

/// Settings of one mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Cache instance settings.
    pub service: ServiceConfig,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// FUSE worker threads.
    pub fuse_threads: usize,
    /// Kernel attribute / entry TTL.
    pub kernel_ttl: Duration,
    /// Let other users read the mount (`allow_other`).
    pub allow_other: bool,
    /// Admin endpoint address (`/metrics`, `/stats`, ...); `None` disables it.
    pub admin_addr: Option<SocketAddr>,
}

fn mount_err(
    path: &Path,
    reason: impl Into<String>,
    source: Option<std::io::Error>,
) -> DatacacheError {
    DatacacheError::Mount {
        path: path.to_path_buf(),
        reason: reason.into(),
        source,
    }
}

/// Whether `path` is a mount point according to /proc/self/mountinfo (octal escapes decoded).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| {
        m.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
            == want
    })
}

/// Detaches a mount (lazy unmount): `umount2(MNT_DETACH)` as root, else `fusermount3 -uz`.
pub fn detach(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| mount_err(path, "path contains a nul byte", None))?;
    // SAFETY: `c` is a valid nul-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let os_err = std::io::Error::last_os_error();
    for bin in ["fusermount3", "fusermount"] {
        if let Ok(s) = std::process::Command::new(bin)
            .arg("-uz")
            .arg(path)
            .status()
        {
            if s.success() {
                return Ok(());
            }
        }
    }
    Err(mount_err(path, "could not detach the mount", Some(os_err)))
}

/// Makes `path` ready to mount on: creates it, and detaches a stale FUSE mount left by a crashed
/// daemon (`ENOTCONN` on stat, or a mount whose daemon pid is gone). A live mount is an error.
pub fn prepare_mountpoint(path: &Path, cache_dir: &Path) -> Result<PathBuf> {
    match std::fs::metadata(path) {
        Err(e)
            if e.raw_os_error() == Some(libc::ENOTCONN)
                || e.raw_os_error() == Some(libc::ECONNABORTED) =>
        {
            tracing::warn!(mountpoint = %path.display(), "stale mount from a crashed daemon detected; detaching");
            detach(path)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| DatacacheError::io(path, e))?;
        }
        Err(e) => return Err(mount_err(path, "cannot stat the mount point", Some(e))),
        Ok(m) if !m.is_dir() => return Err(mount_err(path, "not a directory", None)),
        Ok(_) => {}
    }
    let abs = std::fs::canonicalize(path).map_err(|e| DatacacheError::io(path, e))?;
    if is_mountpoint(&abs) {
        let owner_alive = admin::read_daemon_info(cache_dir)
            .filter(|d| Path::new(&d.mountpoint) == abs)
            .is_some_and(|d| {
                Path::new(&format!("/proc/{}", d.pid)).exists() && d.pid != std::process::id()
            });
        if owner_alive {
            return Err(mount_err(&abs, "already mounted by a running daemon", None));
        }
        tracing::warn!(mountpoint = %abs.display(), "mount point is still mounted but its daemon is gone; detaching");
        detach(&abs)?;
    }
    Ok(abs)
}

/// Runs a mount until `shutdown` resolves or the file system is unmounted from outside, then
/// unmounts, flushes the cache and returns.
pub async fn run_mount(cfg: MountConfig, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    run_mount_with_collectors(cfg, Vec::new(), shutdown).await
}

/// [`run_mount`], with `collectors` added to the metrics the admin endpoint serves: the process
/// that runs the mount adds its own (the `kiln` binary adds process metrics).
pub async fn run_mount_with_collectors(
    cfg: MountConfig,
    collectors: Vec<Box<dyn Collector>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let cache_dir = cfg.service.cache.dir.clone();
    let mountpoint = prepare_mountpoint(&cfg.mountpoint, &cache_dir)?;
    let svc = Arc::new(CacheService::open(cfg.service.clone()).await?);
    for c in collectors {
        svc.metrics.register_collector(c);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_url = None;
    let mut admin_task = None;
    if let Some(addr) = cfg.admin_addr {
        let mut rx = stop_rx.clone();
        let (bound, h) = admin::serve(svc.clone(), addr, async move {
            let _ = rx.wait_for(|v| *v).await;
        })
        .await?;
        admin_url = Some(format!("http://{bound}"));
        admin_task = Some(h);
    }
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = KilnFs::new(
        svc.meta.clone(),
        svc.data.clone(),
        tokio::runtime::Handle::current(),
        FsOptions {
            ttl: cfg.kernel_ttl,
            uid,
            gid,
        },
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("kiln:{}", svc.config.source.spec.display())),
        MountOption::Subtype("kiln".into()),
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if cfg.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(cfg.fuse_threads.max(1));
    config.clone_fd = true;
    let mp = mountpoint.clone();
    let session = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &mp, &config))
        .await
        .map_err(|e| mount_err(&mountpoint, format!("mount task failed: {e}"), None))?
        .map_err(|e| mount_err(&mountpoint, "fuse mount failed", Some(e)))?;
    let info = DaemonInfo {
        pid: std::process::id(),
        admin: admin_url.clone(),
        mountpoint: mountpoint.to_string_lossy().into_owned(),
        source: svc.config.source.spec.display(),
    };
    let info_path = cache_dir.join("daemon.json");
    if let Ok(s) = serde_json::to_string_pretty(&info) {
        let _ = std::fs::write(&info_path, s);
    }
    let (_, tree) = svc.meta.current();
    tracing::info!(mountpoint = %mountpoint.display(), source = %info.source, files = tree.file_count(),
        admin = admin_url.as_deref().unwrap_or("off"), "mounted");
    drop(tree);

    let ttl = cfg.service.meta_ttl;
    let refresher = {
        let svc = svc.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let tick = ttl.min(Duration::from_secs(60)).max(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = rx.wait_for(|v| *v) => break,
                    _ = tokio::time::sleep(tick) => {}
                }
                if svc.meta.age() >= ttl {
                    if let Err(e) = svc.refresh().await {
                        tracing::warn!(error = %e, "metadata refresh failed; keeping the current tree");
                    }
                }
            }
        })
    };

    let finished = async {
        while !session.guard.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown => tracing::info!(mountpoint = %mountpoint.display(), "shutdown requested; unmounting"),
        _ = finished => tracing::warn!(mountpoint = %mountpoint.display(), "file system was unmounted from outside"),
    }
    let _ = stop_tx.send(true);
    let mp = mountpoint.clone();
    let unmounted = tokio::task::spawn_blocking(move || {
        if session.guard.is_finished() {
            return session.join();
        }
        session.umount_and_join()
    })
    .await;
    match unmounted {
        Ok(Ok(())) => {}
        other => {
            tracing::warn!(mountpoint = %mp.display(), result = ?other.err().map(|e| e.to_string()), "unmount was not clean; detaching lazily");
            if is_mountpoint(&mp) {
                detach(&mp)?;
            }
        }
    }
    let _ = refresher.await;
    if let Some(h) = admin_task {
        let _ = h.await;
    }
    svc.close().await?;
    let _ = std::fs::remove_file(&info_path);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted cleanly");
    Ok(())
}
