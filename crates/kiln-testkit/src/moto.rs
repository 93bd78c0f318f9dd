//! moto, the AWS mock, as an S3 server on a loopback port chosen at run time, for the dataset
//! cache's end-to-end tests. Needs a Python with `moto[server]` and boto3
//! (`scripts/setup-python.sh`; see [`crate::python`]).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Access key used with moto (it accepts any).
pub const KEY: &str = "kiln-test";
/// Secret used with moto.
pub const SECRET: &str = "kiln-test-secret";

/// The modules a Python needs to run [`Moto`].
pub const MODULES: &[&str] = &["moto.server", "boto3"];

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

/// Environment for boto3 children and the cache under test: fixed keys, nothing read from the host's AWS config.
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
