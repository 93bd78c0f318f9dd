//! The servers' delta admin API as a sink: `POST
//! /admin/v1/models/{model}/tables/{table}/deltas` (body: one encoded delta,
//! `application/octet-stream`, `Authorization: Bearer <token>` when the servers have an admin
//! token), to every endpoint of a list.
//!
//! Each endpoint has its own HTTP client, queue and task, and acknowledges every delta in
//! order: a server refuses a sequence gap, so an endpoint's next delta is sent only after its
//! previous one is acknowledged (a replayed sequence number is acknowledged as a duplicate,
//! so resending after a lost response is safe). A failed send (connection refused, timeout,
//! any non-2xx answer) is retried for that endpoint alone with exponential backoff (100 ms
//! doubling to `max_backoff`); the other endpoints go on.
//!
//! **The bound.** An endpoint's queue holds at most `max_queued` deltas. When a new publish
//! would pass it, the endpoint's deltas not yet sent are merged, per table, into one delta
//! holding the latest value (or tombstone) of each key, which the server applies exactly as
//! it would have applied the sequence. The queue of an endpoint that stays down therefore
//! holds at most one delta per table plus the one being retried, whose size is bounded by the
//! rows touched while it was down (at most the table). Sequence numbers are the endpoint's own
//! (1, 2, 3 ... per table and source), assigned when a delta is first sent: they equal the
//! publisher's until a merge, after which they are lower by the number of deltas merged
//! away; the server sees no gap either way.
//! Merges are counted (`kiln_learn_sink_merged_total`) and logged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kiln_embed::Delta;
use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use super::{Batch, Sink, SinkStatus};
use crate::config::EndpointConfig;
use crate::error::{Error, Result};
use crate::metrics::LearnMetrics;

/// Settings of an [`AdminSink`].
#[derive(Clone, Debug)]
pub struct AdminSinkConfig {
    /// Servers: base URL (`http://host:port`, the HTTP port of `kiln serve`) and admin token
    /// (sent as `Authorization: Bearer <token>` when set).
    pub endpoints: Vec<EndpointConfig>,
    /// The served model the deltas are for.
    pub model: String,
    /// Most deltas queued per endpoint before its unsent ones are merged (at least 2).
    pub max_queued: usize,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Longest wait between retries of a failing endpoint.
    pub max_backoff: Duration,
}

struct Item {
    table: String,
    first_batch: u64,
    last_batch: u64,
    delta: Arc<Delta>,
    /// The encoding with the endpoint's sequence number, fixed at the first attempt.
    wire: Option<Bytes>,
}

#[derive(Default)]
struct EpState {
    queue: VecDeque<Item>,
    next_seq: HashMap<String, u64>,
    /// The last batch number queued.
    enqueued: u64,
}

impl EpState {
    fn acked(&self) -> u64 {
        self.queue
            .front()
            .map_or(self.enqueued, |i| i.first_batch.saturating_sub(1))
    }
}

struct Shared {
    state: Mutex<Vec<EpState>>,
    acked: Condvar,
    wake: Vec<Notify>,
    closed: std::sync::atomic::AtomicBool,
}

/// Deltas to every server of a list through its delta admin API.
pub struct AdminSink {
    config: AdminSinkConfig,
    shared: Arc<Shared>,
    metrics: Arc<LearnMetrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AdminSink {
    /// Starts one task per endpoint on `runtime`.
    pub fn start(
        config: AdminSinkConfig,
        metrics: Arc<LearnMetrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::config(
                "learn.toml",
                "publish.admin.endpoints",
                "at least one server URL is required",
            ));
        }
        // reqwest is built without a default TLS crypto provider in this workspace
        let _ = rustls::crypto::ring::default_provider().install_default();
        let n = config.endpoints.len();
        let shared = Arc::new(Shared {
            state: Mutex::new((0..n).map(|_| EpState::default()).collect()),
            acked: Condvar::new(),
            wake: (0..n).map(|_| Notify::new()).collect(),
            closed: false.into(),
        });
        let mut tasks = Vec::with_capacity(n);
        for (i, e) in config.endpoints.iter().enumerate() {
            let url = &e.url;
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(Error::config(
                    "learn.toml",
                    format!("publish.endpoints[{i}].url"),
                    format!("'{url}': the learner publishes over HTTP (http:// or https://)"),
                ));
            }
            let client = reqwest::Client::builder()
                .timeout(config.request_timeout)
                .build()
                .map_err(|e| Error::Publish {
                    sink: url.clone(),
                    reason: format!("HTTP client: {e}"),
                })?;
            let ep = Endpoint {
                index: i,
                base: format!(
                    "{}/admin/v1/models/{}/tables",
                    url.trim_end_matches('/'),
                    config.model
                ),
                client,
                token: e.token.clone().filter(|t| !t.is_empty()),
                max_backoff: config.max_backoff.max(Duration::from_millis(100)),
                shared: shared.clone(),
                metrics: metrics.clone(),
            };
            tasks.push(runtime.spawn(ep.run()));
        }
        Ok(AdminSink {
            config,
            shared,
            metrics,
            tasks,
        })
    }
}

impl Drop for AdminSink {
    fn drop(&mut self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Sink for AdminSink {
    fn name(&self) -> String {
        let urls: Vec<&str> = self
            .config
            .endpoints
            .iter()
            .map(|e| e.url.as_str())
            .collect();
        urls.join(",")
    }

    fn send(&mut self, batch: Batch) -> Result<()> {
        let mut state = self.shared.state.lock();
        for (i, ep) in state.iter_mut().enumerate() {
            for d in &batch.deltas {
                ep.queue.push_back(Item {
                    table: d.table.clone(),
                    first_batch: batch.number,
                    last_batch: batch.number,
                    delta: d.clone(),
                    wire: None,
                });
            }
            ep.enqueued = batch.number;
            if ep.queue.len() > self.config.max_queued.max(2) {
                let merged = merge_unsent(&mut ep.queue);
                self.metrics.sink_merged.inc_by(merged as u64);
                tracing::warn!(endpoint = %self.config.endpoints[i].url, merged,
                    queued = ep.queue.len(), "endpoint behind: merged its unsent deltas");
            }
            self.shared.wake[i].notify_one();
        }
        Ok(())
    }

    fn status(&self) -> SinkStatus {
        let state = self.shared.state.lock();
        SinkStatus {
            acked: state.iter().map(EpState::acked).min().unwrap_or(0),
            queued: state.iter().map(|e| e.queue.len()).sum(),
        }
    }

    fn flush(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        loop {
            if state.iter().all(|e| e.queue.is_empty()) {
                return true;
            }
            if self
                .shared
                .acked
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return state.iter().all(|e| e.queue.is_empty());
            }
        }
    }
}

/// Merges the queue's deltas that were never sent into one per table (the front one stays
/// when it has been sent: the server may have applied it). Returns how many deltas went.
fn merge_unsent(queue: &mut VecDeque<Item>) -> usize {
    let keep = usize::from(queue.front().is_some_and(|i| i.wire.is_some()));
    let before = queue.len();
    let unsent: Vec<Item> = queue.drain(keep..).collect();
    let mut order: Vec<String> = Vec::new();
    let mut by_table: HashMap<String, Vec<Item>> = HashMap::new();
    for it in unsent {
        if !by_table.contains_key(&it.table) {
            order.push(it.table.clone());
        }
        by_table.entry(it.table.clone()).or_default().push(it);
    }
    for t in order {
        let items = by_table.remove(&t).unwrap_or_default();
        let first_batch = items.first().map_or(0, |i| i.first_batch);
        let last_batch = items.last().map_or(0, |i| i.last_batch);
        let deltas: Vec<&Delta> = items.iter().map(|i| i.delta.as_ref()).collect();
        queue.push_back(Item {
            table: t,
            first_batch,
            last_batch,
            delta: Arc::new(merge(&deltas)),
            wire: None,
        });
    }
    before - queue.len()
}

/// One delta equivalent to applying `deltas` in order (same table, source and dim): the last
/// write or tombstone of each key wins. Its `seq` is the first's, `created_ms` the oldest.
pub fn merge(deltas: &[&Delta]) -> Delta {
    let Some(first) = deltas.first() else {
        return Delta::default();
    };
    let dim = first.dim;
    let mut last: BTreeMap<u64, Option<&[f32]>> = BTreeMap::new();
    for d in deltas {
        for k in &d.tombstones {
            last.insert(*k, None);
        }
        for (i, k) in d.keys.iter().enumerate() {
            last.insert(*k, Some(&d.values[i * dim..(i + 1) * dim]));
        }
    }
    let mut out = Delta {
        source: first.source.clone(),
        table: first.table.clone(),
        seq: first.seq,
        created_ms: deltas
            .iter()
            .map(|d| d.created_ms)
            .filter(|&c| c > 0)
            .min()
            .unwrap_or(0),
        dim,
        ..Delta::default()
    };
    for (k, v) in last {
        match v {
            Some(v) => {
                out.keys.push(k);
                out.values.extend_from_slice(v);
            }
            None => out.tombstones.push(k),
        }
    }
    out
}

struct Endpoint {
    index: usize,
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    max_backoff: Duration,
    shared: Arc<Shared>,
    metrics: Arc<LearnMetrics>,
}

impl Endpoint {
    /// The head of the queue, encoded with this endpoint's sequence number.
    fn head(&self) -> Option<(String, Bytes)> {
        let mut state = self.shared.state.lock();
        let ep = &mut state[self.index];
        let next = &mut ep.next_seq;
        let item = ep.queue.front_mut()?;
        if item.wire.is_none() {
            let seq = next.entry(item.table.clone()).or_insert(0);
            *seq += 1;
            let mut d = (*item.delta).clone();
            d.seq = *seq;
            item.wire = Some(Bytes::from(d.encode()));
        }
        Some((item.table.clone(), item.wire.clone().unwrap_or_default()))
    }

    async fn run(self) {
        let closed = || self.shared.closed.load(std::sync::atomic::Ordering::SeqCst);
        let mut backoff = Duration::from_millis(100);
        while !closed() {
            let Some((table, body)) = self.head() else {
                self.shared.wake[self.index].notified().await;
                continue;
            };
            let started = std::time::Instant::now();
            match self.post(&table, body).await {
                Ok(()) => {
                    self.metrics
                        .publish_latency
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.deltas_delivered.inc();
                    let mut state = self.shared.state.lock();
                    state[self.index].queue.pop_front();
                    self.shared.acked.notify_all();
                    backoff = Duration::from_millis(100);
                }
                Err(reason) => {
                    self.metrics.sink_failures.inc();
                    tracing::warn!(endpoint = %self.base, table, %reason,
                        retry_in_ms = backoff.as_millis() as u64, "delta not delivered");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    async fn post(&self, table: &str, body: Bytes) -> std::result::Result<(), String> {
        let mut req = self
            .client
            .post(format!("{}/{table}/deltas", self.base))
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {}", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seq: u64, keys: &[u64], vals: &[f32], tomb: &[u64]) -> Delta {
        Delta {
            source: "l@1".into(),
            table: "t".into(),
            seq,
            created_ms: 10 + seq,
            dim: 1,
            keys: keys.to_vec(),
            values: vals.to_vec(),
            tombstones: tomb.to_vec(),
        }
    }

    #[test]
    fn a_merge_keeps_the_last_write_or_tombstone_of_each_key() {
        let a = d(3, &[1, 2], &[0.1, 0.2], &[]);
        let b = d(4, &[3], &[0.3], &[1]);
        let c = d(5, &[1, 2], &[0.5, 0.6], &[3]);
        let m = merge(&[&a, &b, &c]);
        assert_eq!(m.seq, 3);
        assert_eq!(m.created_ms, 13);
        assert_eq!(m.keys, vec![1, 2]);
        assert_eq!(m.values, vec![0.5, 0.6]);
        assert_eq!(m.tombstones, vec![3]);
    }

    #[test]
    fn a_sent_front_delta_is_never_merged() {
        let item = |b: u64, wire: bool| Item {
            table: "t".into(),
            first_batch: b,
            last_batch: b,
            delta: Arc::new(d(b, &[b], &[b as f32], &[])),
            wire: wire.then(Bytes::new),
        };
        let mut q: VecDeque<Item> = (1..=5).map(|b| item(b, b == 1)).collect();
        assert_eq!(merge_unsent(&mut q), 3);
        assert_eq!(q.len(), 2);
        assert_eq!((q[0].first_batch, q[0].last_batch), (1, 1));
        assert_eq!((q[1].first_batch, q[1].last_batch), (2, 5));
        assert_eq!(q[1].delta.keys, vec![2, 3, 4, 5]);
    }
}
