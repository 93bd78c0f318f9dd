//! The worker threads of a version's scheduler: each takes due batches from the shared queue
//! and runs them on its own backend instance.
//!
//! A failure inside the backend fails only the requests of that batch. A panic is caught at the
//! instance boundary: the batch is answered (400 for the requests whose data the model rejects
//! on a check, else 500 "backend panicked"), the instance, whose state may be poisoned, is
//! dropped and rebuilt from the loaded model, and the worker goes on. A worker that cannot
//! rebuild its instance exits; when the last one is gone the version is broken: it reports
//! not-ready and fails its queued and new requests at once instead of holding them.

use crate::metrics::VersionMetrics;
use crate::scheduler::{Answer, BatchPolicy, Decision, Pending, QueueState};
use crate::stats::VersionStats;
use kiln_core::backend::{LoadedModel, ModelInstance, SharedInstance};
use kiln_core::{Error, ErrorCode, Result, Tensor};
use parking_lot::{Condvar, Mutex};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// State shared by the handle and the workers.
pub(crate) struct Shared {
    /// The queue, under one lock held only to push or take.
    pub state: Mutex<QueueState>,
    /// Wakes workers on new work and on shutdown.
    pub cond: Condvar,
    /// Batch formation settings.
    pub policy: BatchPolicy,
    /// Cumulative statistics.
    pub stats: Arc<VersionStats>,
    /// Prometheus handles.
    pub metrics: VersionMetrics,
    /// `model 'name' version v`, the prefix of every error a batch fails with.
    pub label: String,
    /// The loaded model, to rebuild instances and to check inputs after a panic.
    pub model: Arc<dyn LoadedModel>,
    /// Worker threads still able to compute; the version is broken when it reaches zero.
    pub workers: AtomicUsize,
    /// Set once the version is broken, so readiness checks need not take the queue's lock.
    pub broken: AtomicBool,
    /// Places in the queue held by requests admitted at their headers whose body is still
    /// being read or decoded ([`crate::scheduler::QueueSlot`]); changed under `state`'s lock.
    pub reserved: AtomicUsize,
    /// Times a worker found the queue empty and waited.
    pub idle_waits: AtomicU64,
    /// Of those, the times a request holding a place was still being read or decoded.
    pub idle_waits_reserved: AtomicU64,
    /// Places ever taken.
    pub places_taken: AtomicU64,
}

impl Shared {
    /// `e` with the model and version in front of its message (code and cause kept).
    fn labeled(&self, e: Error) -> Error {
        e.prefixed(&self.label)
    }

    /// The error every request of a broken version gets.
    pub fn broken_error(&self, reason: &str) -> Error {
        Error::unavailable(format!(
            "{} is not ready: it cannot compute any more ({reason})",
            self.label
        ))
    }

    /// Counts a worker about to wait on an empty queue (called under `state`'s lock), and
    /// whether an admitted request was on its way.
    fn count_idle_wait(&self) {
        self.idle_waits.fetch_add(1, Ordering::Relaxed);
        self.metrics.idle_waits.inc();
        if self.reserved.load(Ordering::Relaxed) > 0 {
            self.idle_waits_reserved.fetch_add(1, Ordering::Relaxed);
            self.metrics.idle_waits_reserved.inc();
        }
    }

    /// Marks the version broken and fails everything queued at once.
    fn break_version(&self, reason: String) {
        tracing::error!(model = %self.label, %reason, "model version cannot compute any more: not ready");
        let e = self.broken_error(&reason);
        let drained = {
            let mut st = self.state.lock();
            st.broken = Some(reason);
            self.broken.store(true, Ordering::Release);
            st.drain()
        };
        self.metrics.queue_depth.set(0);
        self.cond.notify_all();
        for p in drained {
            let _ = p.reply.send(Err(e.clone()));
        }
    }
}

/// A place in a version's queue held for a request whose body is being read
/// ([`crate::scheduler::Scheduler::reserve`]); released on drop.
#[derive(Default)]
pub struct QueueSlot {
    /// `None` for a place that holds nothing (a version without a queue).
    pub(crate) shared: Option<Arc<Shared>>,
}

impl QueueSlot {
    /// A place that holds nothing, for versions without a queue of their own (pipelines).
    pub fn none() -> Self {
        QueueSlot { shared: None }
    }
}

impl std::fmt::Debug for QueueSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSlot")
            .field("held", &self.shared.is_some())
            .finish()
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.reserved.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What the workers of a version waited for ([`crate::scheduler::Scheduler::waits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerWaits {
    /// Times a worker found the queue empty and waited.
    pub idle: u64,
    /// Of those, the times a request holding a place ([`QueueSlot`]) was still being read or
    /// decoded: the worker starved for a request the server had already admitted.
    pub idle_while_reserved: u64,
    /// Places held now.
    pub reserved_now: usize,
    /// Places taken since the version started.
    pub places_taken: u64,
}

/// A new instance of `model`: its own state, or the shared model when it has none. A panic
/// while creating it is an error.
pub(crate) fn new_instance(model: &Arc<dyn LoadedModel>) -> Result<Box<dyn ModelInstance>> {
    match catch_unwind(AssertUnwindSafe(|| model.create_instance())) {
        Ok(Some(r)) => r,
        Ok(None) => Ok(Box::new(SharedInstance(model.clone()))),
        Err(p) => Err(Error::internal(format!(
            "creating an instance panicked: {}",
            panic_message(p.as_ref())
        ))),
    }
}

/// Adds `nice` to the calling thread's nice value (Linux keeps one per thread). A failure is
/// logged and the worker goes on at the normal priority.
fn lower_priority(label: &str, nice: i32) {
    // SAFETY: gettid and getpriority/setpriority take no pointers; they act on this thread only.
    let (tid, now) = unsafe {
        let tid = libc::gettid() as libc::id_t;
        (tid, libc::getpriority(libc::PRIO_PROCESS, tid))
    };
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, now + nice) } != 0 {
        tracing::warn!(model = %label, nice, error = %std::io::Error::last_os_error(),
            "cannot change the worker thread's priority");
    }
}

/// The text of a panic payload.
fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Counts a worker out when its thread ends; the last one to end for a failure (rather than
/// the version's retirement) breaks the version.
struct WorkerExit {
    /// The scheduler's state.
    shared: Arc<Shared>,
    /// Why the worker stops computing; `None` for a normal exit at retirement.
    failure: Option<String>,
}

impl Drop for WorkerExit {
    fn drop(&mut self) {
        let failure = if std::thread::panicking() {
            Some("a worker thread panicked outside the backend".to_string())
        } else {
            self.failure.take()
        };
        let left = self.shared.workers.fetch_sub(1, Ordering::AcqRel) - 1;
        let Some(reason) = failure else { return };
        if left == 0 {
            self.shared.break_version(reason);
        } else {
            tracing::error!(model = %self.shared.label, %reason, workers_left = left,
                "a worker of the model version stopped");
        }
    }
}

/// The loop of one worker thread.
pub(crate) fn worker(shared: Arc<Shared>, instance: Box<dyn ModelInstance>) {
    if shared.policy.worker_nice != 0 {
        lower_priority(&shared.label, shared.policy.worker_nice);
    }
    let mut exit = WorkerExit {
        shared: shared.clone(),
        failure: None,
    };
    let mut instance = Some(instance);
    loop {
        let (batch, left) = {
            let mut st = shared.state.lock();
            let batch = loop {
                match st.next_batch(Instant::now(), &shared.policy) {
                    Decision::Ready(b) => break b,
                    Decision::WaitUntil(t) => {
                        shared.cond.wait_until(&mut st, t);
                    }
                    Decision::Idle => {
                        if st.shutdown || st.broken.is_some() {
                            return;
                        }
                        shared.count_idle_wait();
                        shared.cond.wait(&mut st);
                    }
                }
            };
            (batch, st.len())
        };
        shared.metrics.queue_depth.set(left as i64);
        if left > 0 {
            shared.cond.notify_one();
        }
        let Some(current) = instance.as_mut() else {
            return;
        };
        if !run_batch(&shared, current.as_mut(), batch) {
            continue;
        }
        // The backend panicked: its state may be poisoned, so it is replaced.
        if let Some(old) = instance.take() {
            if catch_unwind(AssertUnwindSafe(move || drop(old))).is_err() {
                tracing::warn!(model = %shared.label, "dropping a panicked instance panicked too");
            }
        }
        match new_instance(&shared.model) {
            Ok(fresh) => {
                tracing::info!(model = %shared.label, "instance rebuilt after a backend panic");
                instance = Some(fresh);
            }
            Err(e) => {
                exit.failure = Some(format!(
                    "an instance could not be rebuilt after a backend panic: {}",
                    e.message
                ));
                return;
            }
        }
    }
}

/// Answers expired and abandoned requests, computes the rest. Returns true when the backend
/// panicked (the instance must be rebuilt).
fn run_batch(shared: &Shared, instance: &mut dyn ModelInstance, batch: Vec<Pending>) -> bool {
    let start = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for p in batch {
        if p.reply.is_closed() {
            // Nobody waits for it any more. Its caller already counted it (as cancelled or
            // timed out), so it is dropped without a count of its own.
            drop(p);
        } else if p.deadline.is_some_and(|d| start >= d) {
            let _ = p.reply.send(Err(Error::new(
                ErrorCode::Timeout,
                "request timed out in the queue before it was computed",
            )));
        } else {
            live.push(p);
        }
    }
    if live.is_empty() {
        return false;
    }
    // One span per batch, linked to the span of every request it computes (disabled, and
    // free, when nothing listens).
    let span = tracing::debug_span!("batch", model = %shared.label, requests = live.len());
    for p in &live {
        span.follows_from(&p.span);
        let q = start - p.arrival;
        shared.stats.queue.add(q);
        shared.metrics.queue_seconds.observe(q.as_secs_f64());
    }
    let _entered = span.enter();
    compute(shared, instance, live, start)
}

/// Runs `live` as one batch and answers it. A data error (400) in a batch of several requests
/// is retried one request at a time, so only the requests at fault get it. Returns true when
/// the backend panicked.
fn compute(
    shared: &Shared,
    instance: &mut dyn ModelInstance,
    live: Vec<Pending>,
    start: Instant,
) -> bool {
    let rows: usize = live.iter().map(|p| p.rows).sum();
    let result = catch_unwind(AssertUnwindSafe(|| execute(instance, &live, rows)));
    match result {
        Ok(Ok((outputs, t_in, t_infer, t_out))) => {
            shared.stats.record_batch(rows as u64, t_in, t_infer, t_out);
            shared.metrics.batch_size.observe(rows as f64);
            shared.metrics.executions.inc();
            shared.metrics.rows.inc_by(rows as u64);
            for (p, outs) in live.into_iter().zip(outputs) {
                let _ = p.reply.send(Ok(Answer {
                    outputs: outs,
                    queue: start - p.arrival,
                    compute: t_infer,
                }));
            }
            false
        }
        Ok(Err(e)) if e.code == ErrorCode::InvalidArgument && live.len() > 1 => {
            tracing::debug!(error = %e.report(), rows, "batch refused its data: retried request by request");
            let mut panicked = false;
            for p in live {
                if panicked {
                    // The instance is poisoned: the rest fail with the batch.
                    let _ = p.reply.send(Err(shared.labeled(Error::internal(
                        "backend panicked on a request batched with this one",
                    ))));
                    continue;
                }
                panicked = compute(shared, instance, vec![p], start);
            }
            panicked
        }
        Ok(Err(e)) => {
            if e.code == ErrorCode::InvalidArgument {
                tracing::debug!(model = %shared.label, error = %e.report(), "request refused by the backend");
            } else {
                tracing::warn!(model = %shared.label, error = %e.report(), rows, "batch failed");
            }
            let e = shared.labeled(e);
            for p in live {
                let _ = p.reply.send(Err(e.clone()));
            }
            false
        }
        Err(payload) => {
            let why = panic_message(payload.as_ref());
            tracing::error!(model = %shared.label, panic = %why, rows, "backend panicked; rebuilding the instance");
            for p in live {
                // A request the model's own checks reject is the client's fault (400).
                let e = match shared.model.check_inputs(&p.inputs) {
                    Err(e) => e,
                    Ok(()) => Error::internal(format!("backend panicked: {why}")),
                };
                let _ = p.reply.send(Err(shared.labeled(e)));
            }
            true
        }
    }
}

type Executed = (Vec<Vec<Tensor>>, Duration, Duration, Duration);

/// Concatenates the requests' inputs, runs the batch and splits the outputs back per request.
fn execute(instance: &mut dyn ModelInstance, live: &[Pending], rows: usize) -> Result<Executed> {
    let t0 = Instant::now();
    let n_inputs = live[0].inputs.len();
    let inputs: Vec<Tensor> = if live.len() == 1 {
        live[0].inputs.clone()
    } else {
        (0..n_inputs)
            .map(|i| {
                let parts: Vec<&Tensor> = live.iter().map(|p| &p.inputs[i]).collect();
                Tensor::concat_rows(&parts)
            })
            .collect::<Result<_>>()?
    };
    let t1 = Instant::now();
    let outputs = instance.execute(&inputs)?;
    let t2 = Instant::now();
    let per_request: Vec<Vec<Tensor>> = if live.len() == 1 {
        vec![outputs]
    } else {
        let counts: Vec<usize> = live.iter().map(|p| p.rows).collect();
        let mut split: Vec<Vec<Tensor>> = (0..live.len())
            .map(|_| Vec::with_capacity(outputs.len()))
            .collect();
        for out in &outputs {
            if out.rows() != rows {
                return Err(Error::internal(format!(
                    "output '{}' has {} rows for a batch of {rows}",
                    out.name,
                    out.rows()
                )));
            }
            for (dst, piece) in split.iter_mut().zip(out.split_rows(&counts)?) {
                dst.push(piece);
            }
        }
        split
    };
    let t3 = Instant::now();
    Ok((per_request, t1 - t0, t2 - t1, t3 - t2))
}
