//! Shared test support: deterministic datasets, the moto S3 server on a loopback port chosen at
//! run time, and skip checks for Python and FUSE.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_datacache::cache::CacheConfig;
use kiln_datacache::service::ServiceConfig;
use kiln_datacache::source::{Credentials, SourceConfig, SourceSpec};

/// Access key used with moto (it accepts any).
pub const KEY: &str = "kiln-test";
/// Secret used with moto.
pub const SECRET: &str = "kiln-test-secret";

/// Deterministic bytes for file `seed` of `len` bytes (xorshift).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `n` small files (`min..max` bytes) in 10 class folders plus `large` (path, size) files
/// under `root`; returns every relative path.
pub fn make_dataset(
    root: &Path,
    n: usize,
    min: usize,
    max: usize,
    large: &[(&str, usize)],
) -> Vec<String> {
    let mut paths = Vec::new();
    for i in 0..n {
        let len = min + (content(i as u64 + 7, 8)[0] as usize * 257 + i * 31) % (max - min + 1);
        let rel = format!("class_{:02}/img_{:06}.bin", i % 10, i);
        write(root, &rel, &content(i as u64, len));
        paths.push(rel);
    }
    for (j, (rel, size)) in large.iter().enumerate() {
        write(root, rel, &content(1_000_000 + j as u64, *size));
        paths.push((*rel).to_string());
    }
    paths
}

/// Writes one file, creating parents.
pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, data).expect("write");
}

/// Repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv Python with moto, or `None` (with a visible skip message). Under `CI` a missing venv fails.
pub fn python(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("KILN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let ok = p.exists()
        && Command::new(&p)
            .args(["-c", "import moto.server, boto3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: python with moto not found at {} (run scripts/setup-python.sh); CI is set, failing", p.display());
    }
    eprintln!("SKIPPED {test}: python with moto[server] not found at {} (run scripts/setup-python.sh or set KILN_PYTHON)", p.display());
    None
}

/// Whether FUSE mounts can be made here; prints a visible skip message when not.
pub fn fuse_available(test: &str) -> bool {
    let dev = Path::new("/dev/fuse").exists();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = ["fusermount3", "fusermount"]
        .iter()
        .any(|b| Command::new(b).arg("-V").output().is_ok());
    if dev && (root || fusermount) {
        return true;
    }
    eprintln!("SKIPPED {test}: FUSE unavailable (/dev/fuse present: {dev}, root: {root}, fusermount: {fusermount})");
    false
}

/// A moto S3 server on 127.0.0.1, killed on drop.
pub struct Moto {
    /// Child process.
    pub child: Child,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    /// Python used to start it (also for uploads).
    pub python: PathBuf,
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it accepts connections.
    pub fn start(python: &Path) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            // a test thread polling a child process, not a runtime thread
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            python: python.to_path_buf(),
        }
    }

    /// Creates `bucket` and uploads every file under `root` to `prefix` with 32 boto3 threads.
    pub fn upload(&self, root: &Path, bucket: &str, prefix: &str) {
        let script = r#"
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
ep, root, bucket, prefix = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1")
s3.create_bucket(Bucket=bucket)
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
def put(p):
    with open(p, "rb") as fh:
        s3.put_object(Bucket=bucket, Key=prefix + os.path.relpath(p, root), Body=fh.read())
with ThreadPoolExecutor(32) as ex:
    list(ex.map(put, files))
print(len(files))
"#;
        let out = Command::new(&self.python)
            .args([
                "-c",
                script,
                &self.endpoint,
                &root.to_string_lossy(),
                bucket,
                prefix,
            ])
            .envs(aws_env())
            .output()
            .expect("run upload");
        assert!(
            out.status.success(),
            "upload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sends a signal to the server (SIGSTOP to make it hang, SIGCONT, SIGKILL).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on the pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Environment for boto3 children: fixed keys, nothing read from the host's AWS config.
pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
}

/// Service configuration for `source` with small test sizes.
pub fn service_config(
    source: &str,
    endpoint: Option<&str>,
    dir: &Path,
    block_size: u64,
) -> ServiceConfig {
    ServiceConfig {
        source: SourceConfig {
            spec: SourceSpec::parse(source).expect("source"),
            endpoint: endpoint.map(str::to_string),
            region: "us-east-1".into(),
            credentials: Credentials {
                access_key_id: Some(KEY.into()),
                secret_access_key: Some(SECRET.into()),
                session_token: None,
            },
            request_timeout: Duration::from_secs(2),
            retries: 2,
            hdfs_user: None,
        },
        cache: CacheConfig {
            dir: dir.to_path_buf(),
            memory_bytes: 64 << 20,
            disk_bytes: 512 << 20,
            block_size,
            readahead_blocks: 2,
            read_timeout: Duration::from_secs(4),
        },
        manifest: None,
        meta_ttl: Duration::from_secs(3600),
    }
}
