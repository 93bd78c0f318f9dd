//! The dynamic-batching scheduler of one model version.
//!
//! Requests wait in a bounded, priority-ordered queue ([`QueueState`], plain logic with no
//! threads so it is unit-tested directly). `instances` worker threads share the queue: each
//! takes a batch when one is due (max batch reached, a preferred size available, or the first
//! request's `max_queue_delay` passed), runs it on its own backend instance, and answers every
//! request with its rows. Compute never runs on the async runtime; a request whose client went
//! away or whose timeout passed is dropped before compute. How workers survive backend errors
//! and panics, and when a version gives up, is described in `crate::worker`.

use crate::metrics::VersionMetrics;
use crate::stats::VersionStats;
use crate::worker::{new_instance, worker, Shared};
pub use crate::worker::{QueueSlot, WorkerWaits};
use kiln_core::backend::LoadedModel;
use kiln_core::{Error, ErrorCode, Result, Tensor};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a computed request gets back.
#[derive(Debug)]
pub struct Answer {
    /// Outputs in the model's output order, with this request's rows.
    pub outputs: Vec<Tensor>,
    /// Time the request spent queued.
    pub queue: Duration,
    /// Backend time of the batch it ran in.
    pub compute: Duration,
}

/// A request waiting for compute.
pub struct Pending {
    /// Inputs in the model's input order, already validated.
    pub inputs: Vec<Tensor>,
    /// Rows (batch elements) of this request; 1 when the model does not batch.
    pub rows: usize,
    /// Priority level index, 0 = most urgent.
    pub level: usize,
    /// When the request entered the queue.
    pub arrival: Instant,
    /// After this instant the request is answered with a timeout instead of computed.
    pub deadline: Option<Instant>,
    /// Where the answer goes; closed when the client has gone.
    pub reply: oneshot::Sender<Result<Answer>>,
    /// The request's tracing span (disabled when nothing listens): the batch that computes
    /// the request links to it, so a trace crosses the queue.
    pub span: tracing::Span,
}

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Most rows per batch; 0 means no batching (one request per execution).
    pub max_batch: usize,
    /// Preferred batch sizes, ascending.
    pub preferred: Vec<usize>,
    /// How long the first queued request may wait for others.
    pub max_delay: Duration,
    /// Most requests queued.
    pub max_queue: usize,
    /// Nice value the worker threads add to their own (0: unchanged). A positive value lets
    /// the network threads preempt compute at once, so admission and refusals stay fast while
    /// every core computes.
    pub worker_nice: i32,
}

/// What a worker should do next.
#[derive(Debug)]
pub enum Decision {
    /// Run these requests as one batch.
    Ready(Vec<Pending>),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("rows", &self.rows)
            .field("level", &self.level)
            .finish()
    }
}

/// The queue: one FIFO per priority level.
#[derive(Debug)]
pub struct QueueState {
    levels: Vec<VecDeque<Pending>>,
    len: usize,
    rows: usize,
    /// Set when the version is retired: queued work is flushed at once, then workers exit.
    pub shutdown: bool,
    /// Set (with the reason) when the version cannot compute any more: nothing is queued.
    pub broken: Option<String>,
}

impl QueueState {
    /// An empty queue with `levels` priority levels.
    pub fn new(levels: usize) -> Self {
        QueueState {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
            rows: 0,
            shutdown: false,
            broken: None,
        }
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `p`, or hands it back if the queue is full or shutting down.
    pub fn push(&mut self, p: Pending, policy: &BatchPolicy) -> std::result::Result<(), Pending> {
        if self.len >= policy.max_queue || self.shutdown || self.broken.is_some() {
            return Err(p);
        }
        self.len += 1;
        self.rows += p.rows;
        let level = p.level.min(self.levels.len() - 1);
        self.levels[level].push_back(p);
        Ok(())
    }

    /// Takes every queued request, in priority order.
    pub fn drain(&mut self) -> Vec<Pending> {
        let all: Vec<Pending> = self.levels.iter_mut().flat_map(|q| q.drain(..)).collect();
        self.len = 0;
        self.rows = 0;
        all
    }

    fn oldest_arrival(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|q| q.front().map(|p| p.arrival))
            .min()
    }

    /// Decides whether a batch is due at `now` and takes it from the queue.
    pub fn next_batch(&mut self, now: Instant, policy: &BatchPolicy) -> Decision {
        let Some(oldest) = self.oldest_arrival() else {
            return Decision::Idle;
        };
        if policy.max_batch == 0 {
            return Decision::Ready(self.take(1, true));
        }
        let limit = if self.rows >= policy.max_batch {
            policy.max_batch
        } else if let Some(&p) = policy.preferred.iter().rev().find(|&&p| p <= self.rows) {
            p
        } else if self.shutdown || now >= oldest + policy.max_delay {
            policy.max_batch
        } else {
            return Decision::WaitUntil(oldest + policy.max_delay);
        };
        Decision::Ready(self.take(limit, false))
    }

    /// Takes requests in priority order, FIFO within a level, up to `limit` rows (or one
    /// request when `one`); always at least one request.
    fn take(&mut self, limit: usize, one: bool) -> Vec<Pending> {
        let mut batch = Vec::new();
        let mut rows = 0;
        for q in &mut self.levels {
            while let Some(front) = q.front() {
                if !batch.is_empty() && (one || rows + front.rows > limit) {
                    break;
                }
                let p = q.pop_front().expect("front exists");
                rows += p.rows;
                batch.push(p);
                if one {
                    break;
                }
            }
            if one && !batch.is_empty() {
                break;
            }
        }
        self.len -= batch.len();
        self.rows -= rows;
        batch
    }
}

/// Handle to a version's scheduler. Dropping it retires the version: queued requests are still
/// computed and answered, then the workers exit.
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Starts `count` worker threads (at least one), each on its own instance of `model`; a
    /// failure to create an instance fails the start. `label` (`model 'm' version v`) prefixes
    /// the errors batches fail with; `thread` names the threads.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        label: String,
        thread: &str,
        model: Arc<dyn LoadedModel>,
        count: usize,
        policy: BatchPolicy,
        levels: usize,
        stats: Arc<VersionStats>,
        metrics: VersionMetrics,
    ) -> Result<Self> {
        let count = count.max(1);
        let instances = (0..count)
            .map(|_| new_instance(&model))
            .collect::<Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::new(levels)),
            cond: Condvar::new(),
            policy,
            stats,
            metrics,
            label,
            model,
            workers: AtomicUsize::new(count),
            broken: AtomicBool::new(false),
            reserved: AtomicUsize::new(0),
            idle_waits: AtomicU64::new(0),
            idle_waits_reserved: AtomicU64::new(0),
            places_taken: AtomicU64::new(0),
        });
        let scheduler = Scheduler { shared };
        for (i, instance) in instances.into_iter().enumerate() {
            let s = scheduler.shared.clone();
            std::thread::Builder::new()
                .name(format!("kiln-{thread}-{i}"))
                .spawn(move || worker(s, instance))
                .map_err(|e| Error::internal(format!("cannot start worker thread: {e}")))?;
        }
        Ok(scheduler)
    }

    /// Queues a request; fails at once with [`ErrorCode::Overloaded`] when the queue is full.
    pub fn enqueue(&self, p: Pending) -> Result<()> {
        let depth = {
            let mut st = self.shared.state.lock();
            if let Err(p) = st.push(p, &self.shared.policy) {
                let shutting = st.shutdown;
                let broken = st.broken.clone();
                drop(st);
                drop(p);
                return Err(if let Some(reason) = broken {
                    self.shared.broken_error(&reason)
                } else if shutting {
                    Error::unavailable("model version is being unloaded")
                } else {
                    Error::new(
                        ErrorCode::Overloaded,
                        format!(
                            "queue full ({} requests waiting): server overloaded, retry later",
                            self.shared.policy.max_queue
                        ),
                    )
                });
            }
            st.len()
        };
        self.shared.metrics.queue_depth.set(depth as i64);
        self.shared.cond.notify_one();
        Ok(())
    }

    /// Requests waiting now.
    pub fn queue_len(&self) -> usize {
        self.shared.state.lock().len()
    }

    /// Holds a place in the queue for a request admitted at its headers, until its body is
    /// read and decoded: `None` when the queued requests and the places already held fill the
    /// queue (places are taken under the queue's lock, so two requests never take the last
    /// one). Releasing the place just before [`Scheduler::enqueue`] leaves the request room,
    /// so a request is refused at its headers or not at all, never after its body was decoded.
    /// A version shutting down or broken gives a place: `enqueue` then says why it refuses.
    pub fn reserve(&self) -> Option<QueueSlot> {
        let st = self.shared.state.lock();
        let held = self.shared.reserved.load(Ordering::Relaxed);
        if st.len() + held >= self.shared.policy.max_queue && !st.shutdown && st.broken.is_none() {
            return None;
        }
        self.shared.reserved.fetch_add(1, Ordering::Relaxed);
        self.shared.places_taken.fetch_add(1, Ordering::Relaxed);
        Some(QueueSlot {
            shared: Some(self.shared.clone()),
        })
    }

    /// Counters of the workers' waits, to tell a starved worker from an idle one.
    pub fn waits(&self) -> WorkerWaits {
        WorkerWaits {
            idle: self.shared.idle_waits.load(Ordering::Relaxed),
            idle_while_reserved: self.shared.idle_waits_reserved.load(Ordering::Relaxed),
            reserved_now: self.shared.reserved.load(Ordering::Relaxed),
            places_taken: self.shared.places_taken.load(Ordering::Relaxed),
        }
    }

    /// Why the version cannot compute any more (every worker gone), or `None` while it can.
    pub fn failure(&self) -> Option<String> {
        if !self.shared.broken.load(Ordering::Acquire) {
            return None;
        }
        self.shared.state.lock().broken.clone()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.state.lock().shutdown = true;
        self.shared.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(
        rows: usize,
        level: usize,
        arrival: Instant,
    ) -> (Pending, oneshot::Receiver<Result<Answer>>) {
        let (tx, rx) = oneshot::channel();
        (
            Pending {
                inputs: vec![],
                rows,
                level,
                arrival,
                deadline: None,
                reply: tx,
                span: tracing::Span::none(),
            },
            rx,
        )
    }

    fn policy(max_batch: usize, preferred: Vec<usize>, delay_us: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch,
            preferred,
            max_delay: Duration::from_micros(delay_us),
            max_queue: 4,
            worker_nice: 0,
        }
    }

    fn sizes(d: Decision) -> Vec<usize> {
        match d {
            Decision::Ready(b) => b.iter().map(|p| p.rows).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn waits_for_delay_then_flushes() {
        let t = Instant::now();
        let pol = policy(8, vec![], 100);
        let mut q = QueueState::new(1);
        let (p, _r) = pending(2, 0, t);
        q.push(p, &pol).unwrap();
        match q.next_batch(t, &pol) {
            Decision::WaitUntil(at) => assert_eq!(at, t + Duration::from_micros(100)),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            sizes(q.next_batch(t + Duration::from_micros(100), &pol)),
            vec![2]
        );
        assert!(matches!(q.next_batch(t, &pol), Decision::Idle));
    }

    #[test]
    fn full_batch_goes_at_once_and_respects_max_rows() {
        let t = Instant::now();
        let pol = policy(4, vec![], 1_000_000);
        let mut q = QueueState::new(1);
        let mut rx = vec![];
        for r in [3, 2, 1] {
            let (p, x) = pending(r, 0, t);
            q.push(p, &pol).unwrap();
            rx.push(x);
        }
        assert_eq!(sizes(q.next_batch(t, &pol)), vec![3]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn preferred_size_is_formed_without_waiting() {
        let t = Instant::now();
        let pol = policy(8, vec![2, 4], 1_000_000);
        let mut q = QueueState::new(1);
        let mut rx = vec![];
        for _ in 0..3 {
            let (p, x) = pending(1, 0, t);
            q.push(p, &pol).unwrap();
            rx.push(x);
        }
        assert_eq!(sizes(q.next_batch(t, &pol)), vec![1, 1]);
    }

    #[test]
    fn priority_levels_are_served_first_and_queue_is_bounded() {
        let t = Instant::now();
        let pol = policy(0, vec![], 0);
        let mut q = QueueState::new(2);
        let mut rx = vec![];
        for (rows, level) in [(1, 1), (2, 1), (3, 0), (4, 0)] {
            let (p, x) = pending(rows, level, t);
            q.push(p, &pol).unwrap();
            rx.push(x);
        }
        let (p, _x) = pending(5, 0, t);
        assert!(q.push(p, &pol).is_err(), "fifth request must be refused");
        let order: Vec<usize> = (0..4).flat_map(|_| sizes(q.next_batch(t, &pol))).collect();
        assert_eq!(order, vec![3, 4, 1, 2]);
    }

    #[test]
    fn a_broken_queue_refuses_new_requests_and_drains_the_queued() {
        let t = Instant::now();
        let pol = policy(8, vec![], 1_000_000);
        let mut q = QueueState::new(2);
        let mut rx = vec![];
        for level in [1, 0] {
            let (p, x) = pending(1, level, t);
            q.push(p, &pol).unwrap();
            rx.push(x);
        }
        q.broken = Some("no instance".into());
        let (p, _x) = pending(1, 0, t);
        assert!(q.push(p, &pol).is_err(), "a broken queue takes nothing");
        let drained: Vec<usize> = q.drain().iter().map(|p| p.level).collect();
        assert_eq!(drained, vec![0, 1]);
        assert!(q.is_empty());
        assert!(matches!(q.next_batch(t, &pol), Decision::Idle));
    }

    #[test]
    fn shutdown_flushes_without_delay() {
        let t = Instant::now();
        let pol = policy(8, vec![], 1_000_000);
        let mut q = QueueState::new(1);
        let (p, _x) = pending(1, 0, t);
        q.push(p, &pol).unwrap();
        q.shutdown = true;
        assert_eq!(sizes(q.next_batch(t, &pol)), vec![1]);
    }
}
