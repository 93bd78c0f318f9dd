//! Places in a version's queue held for requests whose body is still being read
//! (`Scheduler::reserve`): they count against `max_queue_size` with the queued requests, are
//! given back on drop, and a released place is the room its request is queued into. The
//! workers' waits on an empty queue are counted. Runs on a model that computes nothing.

use kiln_core::backend::{LoadedModel, ModelIo};
use kiln_core::{ErrorCode, Result, Tensor};
use kiln_runtime::scheduler::{BatchPolicy, Pending, Scheduler};
use kiln_runtime::stats::VersionStats;
use kiln_runtime::RuntimeMetrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on anything the test waits for; never asserted as a duration.
const PATIENCE: Duration = Duration::from_secs(30);

struct Idle(ModelIo);

impl LoadedModel for Idle {
    fn io(&self) -> &ModelIo {
        &self.0
    }
    fn execute(&self, _inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(vec![])
    }
}

/// A scheduler with a queue of `max_queue` whose one worker waits a minute for a batch to
/// fill, so queued requests stay queued.
fn scheduler(max_queue: usize) -> Scheduler {
    let policy = BatchPolicy {
        max_batch: 8,
        preferred: vec![],
        max_delay: Duration::from_secs(60),
        max_queue,
        worker_nice: 0,
    };
    Scheduler::start(
        "model 'idle' version 1".into(),
        "idle-1",
        Arc::new(Idle(ModelIo {
            inputs: vec![],
            outputs: vec![],
        })),
        1,
        policy,
        1,
        Arc::new(VersionStats::default()),
        RuntimeMetrics::default().for_version("idle", 1),
    )
    .expect("scheduler starts")
}

fn pending() -> Pending {
    let (reply, _rx) = tokio::sync::oneshot::channel();
    Pending {
        inputs: vec![],
        rows: 1,
        level: 0,
        arrival: Instant::now(),
        deadline: None,
        reply,
        span: tracing::Span::none(),
    }
}

#[test]
fn held_places_count_against_the_queue_bound_until_released() {
    let s = scheduler(2);
    let a = s.reserve().expect("first place");
    let b = s.reserve().expect("second place");
    assert!(s.reserve().is_none(), "two places held fill a queue of two");
    assert_eq!(s.waits().reserved_now, 2);
    drop(a);
    let c = s.reserve().expect("a released place is free again");
    // the holder of a place releases it just before queueing: its request finds room
    drop(b);
    s.enqueue(pending()).expect("room for the released place");
    assert_eq!(s.queue_len(), 1);
    assert!(s.reserve().is_none(), "one queued and one held fill it");
    drop(c);
    s.enqueue(pending()).expect("room again");
    let e = s.enqueue(pending()).expect_err("queue full");
    assert_eq!(e.code, ErrorCode::Overloaded);
    assert!(s.reserve().is_none(), "no place in a full queue");
    assert_eq!(s.waits().reserved_now, 0);
}

#[test]
fn a_worker_waiting_on_an_empty_queue_is_counted() {
    let s = scheduler(1);
    let deadline = Instant::now() + PATIENCE;
    while s.waits().idle == 0 {
        assert!(Instant::now() < deadline, "the worker never waited");
        std::thread::yield_now();
    }
    assert_eq!(s.waits().idle_while_reserved, 0, "nothing was being read");
}
