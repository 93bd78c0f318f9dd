//! A backend that panics or fails never takes its model version down: the batch's requests get
//! an error naming the model and the cause, the worker rebuilds its instance and serves on, and
//! a version that truly cannot compute any more says not-ready and fails its queued requests at
//! once. Runs on a scripted test backend, no engine needed.

use kiln_core::backend::{Backend, LoadedModel, ModelInstance, ModelIo};
use kiln_core::{DataType, Error, ErrorCode, ModelConfig, Result, Tensor, TensorSpec};
use kiln_runtime::{
    Backends, ControlMode, InferRequest, ModelRepository, RuntimeMetrics, ServedVersion,
    VersionState,
};
use parking_lot::Mutex;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on anything the tests wait for; never asserted as a duration.
const PATIENCE: Duration = Duration::from_secs(30);

/// Values the scripted instance reacts to.
const PANIC: i64 = 666;
const PANIC_AFTER_GATE: i64 = 667;
const PANIC_ON_CHECKED: i64 = 777;
const REFUSE: i64 = 400;

/// What the test scripts and observes, shared by the model and its instances.
#[derive(Default)]
struct Control {
    /// Instances created so far.
    created: AtomicUsize,
    /// When set, creating an instance fails.
    fail_create: AtomicBool,
    /// Set when an instance starts a batch holding [`PANIC_AFTER_GATE`].
    entered: AtomicBool,
    /// What that batch waits for before it panics.
    gate: Mutex<Option<mpsc::Receiver<()>>>,
    /// When set, `check_inputs` refuses [`PANIC_ON_CHECKED`].
    check_armed: AtomicBool,
    /// Rows of every batch executed.
    batches: Mutex<Vec<usize>>,
}

struct Scripted(Arc<Control>, ModelIo);

impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn load(&self, _dir: &Path, _config: &ModelConfig) -> Result<Arc<dyn LoadedModel>> {
        Ok(Arc::new(Model(self.0.clone(), self.1.clone())))
    }
}

struct Model(Arc<Control>, ModelIo);

impl LoadedModel for Model {
    fn io(&self) -> &ModelIo {
        &self.1
    }
    fn execute(&self, _inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(Error::internal("the scripted model runs on instances only"))
    }
    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        let armed = self.0.check_armed.load(Ordering::SeqCst);
        if armed && values(&inputs[0]).contains(&PANIC_ON_CHECKED) {
            return Err(Error::invalid(format!(
                "input 'x': value {PANIC_ON_CHECKED} is out of range"
            )));
        }
        Ok(())
    }
    fn create_instance(&self) -> Option<Result<Box<dyn ModelInstance>>> {
        if self.0.fail_create.load(Ordering::SeqCst) {
            return Some(Err(Error::internal("scripted: no more instances")));
        }
        self.0.created.fetch_add(1, Ordering::SeqCst);
        Some(Ok(Box::new(Instance {
            control: self.0.clone(),
            poisoned: false,
        })))
    }
}

/// Doubles `x`; panics or refuses on the scripted values. After a panic it would answer wrong
/// (all zeros), so a correct answer proves the instance was rebuilt.
struct Instance {
    control: Arc<Control>,
    poisoned: bool,
}

impl ModelInstance for Instance {
    fn execute(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let x = values(&inputs[0]);
        self.control.batches.lock().push(x.len());
        if x.contains(&REFUSE) {
            return Err(Error::invalid(format!("input 'x': value {REFUSE} refused")));
        }
        if x.contains(&PANIC_AFTER_GATE) {
            self.control.entered.store(true, Ordering::SeqCst);
            let gate = self.control.gate.lock().take();
            if let Some(rx) = gate {
                let _ = rx.recv_timeout(PATIENCE);
            }
            self.poisoned = true;
            panic!("scripted panic after the gate");
        }
        if x.contains(&PANIC_ON_CHECKED) {
            self.poisoned = true;
            self.control.check_armed.store(true, Ordering::SeqCst);
            panic!("index out of bounds in the scripted engine");
        }
        if x.contains(&PANIC) {
            self.poisoned = true;
            panic!("scripted engine exploded");
        }
        let k = if self.poisoned { 0 } else { 2 };
        let y: Vec<i64> = x.iter().map(|v| v * k).collect();
        Ok(vec![Tensor::from_vec("y", inputs[0].shape.clone(), &y)])
    }
}

fn values(t: &Tensor) -> Vec<i64> {
    t.to_vec::<i64>().expect("INT64 input")
}

fn spec(name: &str) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        data_type: DataType::Int64,
        dims: vec![1],
        allow_ragged_batch: false,
    }
}

/// A repository with one model `flaky` on the scripted backend; `extra` goes into its config.
async fn repository(
    control: &Arc<Control>,
    extra: &str,
) -> (tempfile::TempDir, Arc<ModelRepository>) {
    repository_at(control, extra, 0).await
}

/// [`repository`] whose worker threads run at `nice` above the test process.
async fn repository_at(
    control: &Arc<Control>,
    extra: &str,
    nice: i32,
) -> (tempfile::TempDir, Arc<ModelRepository>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let model = dir.path().join("flaky");
    std::fs::create_dir_all(model.join("1")).expect("version directory");
    std::fs::write(model.join("1/model.bin"), b"scripted").expect("model file");
    std::fs::write(
        model.join("config.toml"),
        format!(
            "backend = \"scripted\"\ndefault_model_filename = \"model.bin\"\n\
             max_batch_size = 8\nwarmup = false\n{extra}"
        ),
    )
    .expect("config.toml");
    let io = ModelIo {
        inputs: vec![spec("x")],
        outputs: vec![spec("y")],
    };
    let mut backends = Backends::new();
    backends.register(Arc::new(Scripted(control.clone(), io)));
    let repo = ModelRepository::new(dir.path(), backends, Arc::new(RuntimeMetrics::default()));
    repo.set_worker_nice(nice);
    repo.start(ControlMode::None, &[]).await.expect("start");
    (dir, repo)
}

fn request(x: &[i64]) -> InferRequest {
    InferRequest::new(vec![Tensor::from_vec("x", vec![x.len() as i64, 1], x)])
}

async fn infer(v: &ServedVersion, x: &[i64]) -> Result<Vec<i64>> {
    let out = tokio::time::timeout(PATIENCE, v.infer(request(x)))
        .await
        .expect("answered, not held in the queue")?;
    Ok(values(&out[0]))
}

async fn eventually<F: Fn() -> bool>(what: &str, check: F) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn joined<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("answered in time")
}

fn state_of(repo: &ModelRepository) -> (VersionState, String) {
    let row = repo
        .index()
        .into_iter()
        .find(|e| e.name == "flaky" && e.version == Some(1))
        .expect("index row of flaky version 1");
    (row.state, row.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_fails_alone_and_the_worker_rebuilds_its_instance() {
    let control = Arc::new(Control::default());
    let (_dir, repo) = repository(&control, "[dynamic_batching]\nmax_queue_delay_us = 0\n").await;
    let v = repo.get("flaky", None).expect("flaky serves");
    assert_eq!(infer(&v, &[1, 2]).await.expect("before the panic"), [2, 4]);
    assert_eq!(control.created.load(Ordering::SeqCst), 1);

    let e = infer(&v, &[5, PANIC])
        .await
        .expect_err("the panicking batch fails");
    assert_eq!(e.code, ErrorCode::Internal, "{}", e.message);
    for part in [
        "model 'flaky' version 1",
        "backend panicked",
        "scripted engine exploded",
    ] {
        assert!(e.message.contains(part), "{part:?} in {}", e.message);
    }

    // The worker lives on, on a fresh instance (the poisoned one would answer zeros).
    for i in 0..5 {
        assert_eq!(
            infer(&v, &[i, 3]).await.expect("after the panic"),
            [2 * i, 6]
        );
    }
    assert_eq!(
        control.created.load(Ordering::SeqCst),
        2,
        "instance rebuilt once"
    );
    assert_eq!(state_of(&repo).0, VersionState::Ready);
    assert!(repo.get("flaky", Some(1)).is_ok(), "version still ready");
    assert_eq!(v.queue_len(), 0);

    // An engine error is the batch's answer, with the model named; the instance is kept.
    let e = infer(&v, &[REFUSE]).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(
        e.message.contains("model 'flaky' version 1") && e.message.contains("value 400"),
        "{}",
        e.message
    );
    assert_eq!(infer(&v, &[7]).await.expect("after the error"), [14]);
    assert_eq!(
        control.created.load(Ordering::SeqCst),
        2,
        "no rebuild after an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_data_the_model_rejects_is_a_400() {
    let control = Arc::new(Control::default());
    let (_dir, repo) = repository(&control, "[dynamic_batching]\nmax_queue_delay_us = 0\n").await;
    let v = repo.get("flaky", None).expect("flaky serves");
    let e = infer(&v, &[PANIC_ON_CHECKED]).await.expect_err("panics");
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message);
    assert!(
        e.message.contains("model 'flaky' version 1") && e.message.contains("out of range"),
        "{}",
        e.message
    );
    assert_eq!(infer(&v, &[1]).await.expect("after the panic"), [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_error_fails_only_the_request_at_fault_in_its_batch() {
    let control = Arc::new(Control::default());
    // Batches form only at two rows (the delay is a bound, never reached).
    let (_dir, repo) = repository(
        &control,
        "[dynamic_batching]\nmax_queue_delay_us = 30000000\npreferred_batch_sizes = [2]\n",
    )
    .await;
    let v = repo.get("flaky", None).expect("flaky serves");
    let (good, bad) = joined(async { tokio::join!(infer(&v, &[21]), infer(&v, &[REFUSE])) }).await;
    assert_eq!(good.expect("the good request is answered"), [42]);
    assert_eq!(
        bad.expect_err("the bad one fails").code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(control.batches.lock()[0], 2, "both ran in one batch first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_cannot_rebuild_goes_not_ready_and_fails_queued_requests_at_once() {
    let control = Arc::new(Control::default());
    let (tx, rx) = mpsc::channel();
    *control.gate.lock() = Some(rx);
    let (_dir, repo) = repository(&control, "[dynamic_batching]\nmax_queue_delay_us = 0\n").await;
    let v = repo.get("flaky", None).expect("flaky serves");

    let first = tokio::spawn({
        let v = v.clone();
        async move { infer(&v, &[PANIC_AFTER_GATE]).await }
    });
    eventually("the worker runs the panicking batch", || {
        control.entered.load(Ordering::SeqCst)
    })
    .await;
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let v = v.clone();
            tokio::spawn(async move { infer(&v, &[i]).await })
        })
        .collect();
    eventually("three requests queued", || v.queue_len() == 3).await;
    control.fail_create.store(true, Ordering::SeqCst);
    tx.send(()).expect("open the gate");

    let e = joined(first)
        .await
        .expect("task")
        .expect_err("panicked batch");
    assert!(e.message.contains("backend panicked"), "{}", e.message);
    for q in queued {
        let e = joined(q).await.expect("task").expect_err("failed at once");
        assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
        assert!(
            e.message.contains("model 'flaky' version 1")
                && e.message.contains("cannot compute any more")
                && e.message.contains("no more instances"),
            "{}",
            e.message
        );
    }
    let (state, reason) = state_of(&repo);
    assert_eq!(state, VersionState::Unavailable);
    assert!(reason.contains("could not be rebuilt"), "{reason}");
    let e = repo.get("flaky", None).err().expect("model not ready");
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(repo.get("flaky", Some(1)).is_err(), "version not ready");
    // A handle taken before is refused at once too.
    let e = infer(&v, &[1]).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert_eq!(v.queue_len(), 0);

    // An explicit load rebuilds the broken version.
    control.fail_create.store(false, Ordering::SeqCst);
    repo.load("flaky").await.expect("reload");
    let v = repo.get("flaky", None).expect("serves again");
    assert_eq!(infer(&v, &[4]).await.expect("after the reload"), [8]);
    assert_eq!(state_of(&repo).0, VersionState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_serves_while_one_worker_is_left_and_goes_not_ready_when_none_is() {
    let control = Arc::new(Control::default());
    let (_dir, repo) = repository(
        &control,
        "[dynamic_batching]\nmax_queue_delay_us = 0\n[instance_group]\ncount = 2\n",
    )
    .await;
    let v = repo.get("flaky", None).expect("flaky serves");
    assert_eq!(control.created.load(Ordering::SeqCst), 2);
    control.fail_create.store(true, Ordering::SeqCst);

    let e = infer(&v, &[PANIC]).await.expect_err("first panic");
    assert_eq!(e.code, ErrorCode::Internal, "{}", e.message);
    // The worker that panicked cannot rebuild and stops; the other one serves on.
    for i in 0..4 {
        assert_eq!(infer(&v, &[i]).await.expect("one worker left"), [2 * i]);
    }
    assert_eq!(state_of(&repo).0, VersionState::Ready);

    let e = infer(&v, &[PANIC]).await.expect_err("second panic");
    assert_eq!(e.code, ErrorCode::Internal, "{}", e.message);
    eventually("the version goes not-ready", || {
        state_of(&repo).0 == VersionState::Unavailable
    })
    .await;
    assert!(repo.get("flaky", None).is_err());
    let e = infer(&v, &[1]).await.expect_err("refused at once");
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
}

/// The nice value of a thread (`/proc/self/task/<tid>/stat`, field 19) or of the process.
fn nice_of(stat: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = &text[text.rfind(')')? + 2..];
    rest.split(' ').nth(16)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_run_at_the_configured_nice_value() {
    let control = Arc::new(Control::default());
    let (_dir, repo) = repository_at(&control, "[instance_group]\ncount = 2\n", 7).await;
    let v = repo.get("flaky", None).expect("flaky serves");
    assert_eq!(infer(&v, &[1]).await.expect("answer"), vec![2]);
    let base = nice_of(Path::new("/proc/self/stat")).expect("process nice value");
    let want = (base + 7).min(19);
    eventually("two worker threads at the raised nice value", || {
        let tasks = std::fs::read_dir("/proc/self/task").expect("thread list");
        tasks
            .filter_map(|t| t.ok())
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("kiln-flaky-1-"))
            })
            .filter(|t| nice_of(&t.path().join("stat")) == Some(want))
            .count()
            >= 2
    })
    .await;
}
