//! The dynamic-batching scheduler of one model version.
//!
//! Requests wait in a bounded, priority-ordered queue ([`QueueState`], plain logic with no
//! threads so it is unit-tested directly). `instances` worker threads share the queue: each
//! takes a batch when one is due (max batch reached, a preferred size available, or the first
//! request's `max_queue_delay` passed), runs it on its own backend instance, and answers every
//! request with its rows. Compute never runs on the async runtime; a request whose client went
//! away or whose timeout passed is dropped before compute.

use crate::metrics::VersionMetrics;
use crate::stats::VersionStats;
use kiln_core::backend::ModelInstance;
use kiln_core::{Error, ErrorCode, Result, Tensor};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
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
}

impl QueueState {
    /// An empty queue with `levels` priority levels.
    pub fn new(levels: usize) -> Self {
        QueueState {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
            rows: 0,
            shutdown: false,
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
        if self.len >= policy.max_queue || self.shutdown {
            return Err(p);
        }
        self.len += 1;
        self.rows += p.rows;
        let level = p.level.min(self.levels.len() - 1);
        self.levels[level].push_back(p);
        Ok(())
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

/// State shared by the handle and the workers.
struct Shared {
    /// The queue, under one lock held only to push or take.
    state: Mutex<QueueState>,
    /// Wakes workers on new work and on shutdown.
    cond: Condvar,
    /// Batch formation settings.
    policy: BatchPolicy,
    /// Cumulative statistics.
    stats: Arc<VersionStats>,
    /// Prometheus handles.
    metrics: VersionMetrics,
}

/// Handle to a version's scheduler. Dropping it retires the version: queued requests are still
/// computed and answered, then the workers exit.
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Starts one worker thread per instance.
    pub fn start(
        name: &str,
        instances: Vec<Box<dyn ModelInstance>>,
        policy: BatchPolicy,
        levels: usize,
        stats: Arc<VersionStats>,
        metrics: VersionMetrics,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::new(levels)),
            cond: Condvar::new(),
            policy,
            stats,
            metrics,
        });
        for (i, instance) in instances.into_iter().enumerate() {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("kiln-{name}-{i}"))
                .spawn(move || worker(s, instance))
                .map_err(|e| Error::internal(format!("cannot start worker thread: {e}")))?;
        }
        Ok(Scheduler { shared })
    }

    /// Queues a request; fails at once with [`ErrorCode::Overloaded`] when the queue is full.
    pub fn enqueue(&self, p: Pending) -> Result<()> {
        let depth = {
            let mut st = self.shared.state.lock();
            if let Err(p) = st.push(p, &self.shared.policy) {
                let shutting = st.shutdown;
                drop(st);
                drop(p);
                return Err(if shutting {
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
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.state.lock().shutdown = true;
        self.shared.cond.notify_all();
    }
}

fn worker(shared: Arc<Shared>, mut instance: Box<dyn ModelInstance>) {
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
                        if st.shutdown {
                            return;
                        }
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
        run_batch(&shared, instance.as_mut(), batch);
    }
}

fn run_batch(shared: &Shared, instance: &mut dyn ModelInstance, batch: Vec<Pending>) {
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
        return;
    }
    let rows: usize = live.iter().map(|p| p.rows).sum();
    for p in &live {
        let q = start - p.arrival;
        shared.stats.queue.add(q);
        shared.metrics.queue_seconds.observe(q.as_secs_f64());
    }
    let result = execute(instance, &live, rows);
    match result {
        Ok((outputs, t_in, t_infer, t_out)) => {
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
        }
        Err(e) => {
            tracing::warn!(error = %e, rows, "batch failed");
            for p in live {
                let _ = p.reply.send(Err(e.clone()));
            }
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
