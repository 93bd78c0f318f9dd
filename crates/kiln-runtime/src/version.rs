//! One served model version: the loaded model and its scheduler, or a pipeline; statistics
//! and metric handles; the request validation that runs before anything is queued; and the
//! response cache lookup in front of both.
//!
//! This is the one servable type the server gets from the repository: an engine version and a
//! pipeline differ only in how [`ServedVersion::infer`] computes a validated request (a
//! closed set, so an enum rather than a trait object).

mod validate;

use crate::metrics::VersionMetrics;
use crate::pipeline::Pipeline;
use crate::response_cache::{CacheKey, ResponseCache};
use crate::scheduler::{Answer, BatchPolicy, Pending, QueueSlot, Scheduler, WorkerWaits};
use crate::stats::VersionStats;
use kiln_core::backend::{LoadedModel, ModelIo};
use kiln_core::{DeltaAck, SparseParameters, SparseTableInfo};
use kiln_core::{Error, ErrorCode, ModelConfig, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Numbers served version instances, for response cache keys: a reloaded version is a new
/// instance and never answers from the old one's entries.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// The request [`ServedVersion::infer`] computes: the one request type of every layer.
pub use kiln_core::InferRequest;

/// One request in the in-flight gauge. Dropping it leaves the gauge, also when the request's
/// future is dropped mid-way, which then counts as a cancelled request.
struct InFlight<'a> {
    /// The version's metric handles.
    metrics: &'a VersionMetrics,
    /// Set once the request has its answer (success or error), which its caller counts.
    answered: bool,
}

impl<'a> InFlight<'a> {
    fn start(metrics: &'a VersionMetrics) -> Self {
        metrics.inflight.inc();
        InFlight {
            metrics,
            answered: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.inflight.dec();
        if !self.answered {
            self.metrics.fail("cancelled");
        }
    }
}

/// How a served version computes.
enum Body {
    /// A loaded model (shared by the scheduler's instances) behind its scheduler.
    Engine {
        model: Arc<dyn LoadedModel>,
        scheduler: Scheduler,
    },
    /// A pipeline of member models and built-in operations.
    Pipeline(Box<Pipeline>),
}

/// A model version that takes traffic.
pub struct ServedVersion {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// The configuration it was loaded with.
    pub config: Arc<ModelConfig>,
    /// Cumulative Triton-style statistics.
    pub stats: Arc<VersionStats>,
    body: Body,
    metrics: VersionMetrics,
    /// This instance's number (response cache keys).
    instance: u64,
    /// Bumped by every delta a table of this version takes; part of response cache keys.
    epoch: AtomicU64,
    /// The response cache, when the model enables it and the server has one.
    cache: Option<Arc<ResponseCache>>,
}

impl Drop for ServedVersion {
    fn drop(&mut self) {
        if let Some(c) = &self.cache {
            c.invalidate_instance(self.instance);
        }
    }
}

impl ServedVersion {
    /// Starts the scheduler of a loaded model; its worker threads run at `worker_nice` above
    /// the caller's nice value (see [`ModelRepository::set_worker_nice`]).
    ///
    /// [`ModelRepository::set_worker_nice`]: crate::ModelRepository::set_worker_nice
    pub fn start(
        name: &str,
        version: u64,
        config: Arc<ModelConfig>,
        model: Arc<dyn LoadedModel>,
        metrics: VersionMetrics,
        worker_nice: i32,
        cache: Option<Arc<ResponseCache>>,
    ) -> Result<Self> {
        let count = config.instance_group.count as usize;
        let db = &config.dynamic_batching;
        let mut preferred: Vec<usize> = db
            .preferred_batch_sizes
            .iter()
            .map(|&p| p as usize)
            .collect();
        preferred.sort_unstable();
        let policy = BatchPolicy {
            max_batch: config.max_batch_size as usize,
            preferred,
            max_delay: Duration::from_micros(db.max_queue_delay_us),
            max_queue: db.max_queue_size,
            worker_nice,
        };
        let stats = Arc::new(VersionStats::default());
        let scheduler = Scheduler::start(
            format!("model '{name}' version {version}"),
            &format!("{name}-{version}"),
            model.clone(),
            count,
            policy,
            db.priority_levels as usize,
            stats.clone(),
            metrics.clone(),
        )?;
        Ok(ServedVersion {
            name: name.to_string(),
            version,
            config,
            stats,
            body: Body::Engine { model, scheduler },
            metrics,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
            cache,
        })
    }

    /// A served pipeline.
    pub fn pipeline(
        name: &str,
        version: u64,
        config: Arc<ModelConfig>,
        pipeline: Pipeline,
        metrics: VersionMetrics,
        cache: Option<Arc<ResponseCache>>,
    ) -> Self {
        ServedVersion {
            name: name.to_string(),
            version,
            config,
            stats: Arc::new(VersionStats::default()),
            body: Body::Pipeline(Box::new(pipeline)),
            metrics,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
            cache,
        }
    }

    /// The loaded model of an engine version; `None` for a pipeline.
    pub fn model(&self) -> Option<&Arc<dyn LoadedModel>> {
        match &self.body {
            Body::Engine { model, .. } => Some(model),
            Body::Pipeline(_) => None,
        }
    }

    /// The pipeline, if this version is one.
    pub fn pipeline_body(&self) -> Option<&Pipeline> {
        match &self.body {
            Body::Pipeline(p) => Some(p),
            Body::Engine { .. } => None,
        }
    }

    /// Backend-specific facts shown in the model's metadata.
    pub fn describe(&self) -> Vec<(String, String)> {
        match &self.body {
            Body::Engine { model, .. } => model.describe(),
            Body::Pipeline(_) => vec![("engine".into(), "pipeline".into())],
        }
    }

    /// The version's online-updatable tables (a recsys model's embeddings, a pipeline's item
    /// tables), if it has any. Every delta applied through them bumps the version's response
    /// cache epoch, so no answer computed before it is served again.
    pub fn sparse(&self) -> Option<VersionTables<'_>> {
        let inner: &dyn SparseParameters = match &self.body {
            Body::Engine { model, .. } => model.sparse()?,
            Body::Pipeline(p) => p.sparse()?,
        };
        Some(VersionTables {
            version: self,
            inner,
        })
    }

    /// Marks every cached answer of this version stale (a table changed).
    fn tables_changed(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(c) = &self.cache {
            c.invalidate_before(self.instance, epoch);
        }
    }

    /// `model 'name' version v`, how errors name this version.
    fn label(&self) -> String {
        format!("model '{}' version {}", self.name, self.version)
    }

    /// Inputs and outputs.
    pub fn io(&self) -> &ModelIo {
        match &self.body {
            Body::Engine { model, .. } => model.io(),
            Body::Pipeline(p) => p.io(),
        }
    }

    /// Validates, queues and awaits one request. Failures are counted by reason; a request
    /// whose future is dropped before it is answered (the client went away) counts as
    /// `cancelled`.
    ///
    /// The current tracing span (the caller's request span, if it entered one) goes with the
    /// request through the queue: the batch that computes it links to it.
    pub async fn infer(&self, req: InferRequest) -> Result<Vec<Tensor>> {
        self.infer_timed(req).await.map(|a| a.outputs)
    }

    /// [`ServedVersion::infer`], also returning how long the request queued and computed
    /// (what a pipeline adds up over its steps).
    pub(crate) async fn infer_timed(&self, req: InferRequest) -> Result<Answer> {
        let mut in_flight = InFlight::start(&self.metrics);
        let received = req.received;
        let result = self.run(req).await;
        in_flight.answered = true;
        drop(in_flight);
        let total = received.elapsed();
        self.metrics.request_seconds.observe(total.as_secs_f64());
        self.stats.record_request(result.is_ok(), total);
        match result {
            Ok(a) => {
                self.metrics.success.inc();
                self.metrics
                    .overhead_seconds
                    .observe(total.saturating_sub(a.compute).as_secs_f64());
                self.metrics
                    .compute_seconds
                    .observe(a.compute.as_secs_f64());
                Ok(a)
            }
            Err(e) => {
                self.metrics.fail(e.code.as_label());
                Err(e)
            }
        }
    }

    async fn run(&self, mut req: InferRequest) -> Result<Answer> {
        // the data lengths were checked when the inputs entered the request (or are now, for
        // a request built unchecked)
        let (inputs, rows) = self.validate(req.take_inputs()?)?;
        // The model's own data checks (e.g. ids within the table a Gather reads) run per
        // request, so a bad request never fails the others batched with it.
        if let Body::Engine { model, .. } = &self.body {
            model
                .check_inputs(&inputs)
                .map_err(|e| e.prefixed(self.label()))?;
        }
        let Some(cache) = &self.cache else {
            return self.compute(req, inputs, rows).await;
        };
        // the epoch before computing: an answer that a delta overtakes is stored as stale
        let started = Instant::now();
        let epoch = self.epoch.load(Ordering::Acquire);
        let key = CacheKey::salted(self.instance, epoch, self.cache_salt(&req, 0), &inputs);
        if let Some(outputs) = cache.get(&key) {
            let took = started.elapsed();
            self.stats.cache_hit.add(took);
            self.metrics.cache_hits.inc();
            self.metrics
                .cache_lookup_seconds
                .observe(took.as_secs_f64());
            return Ok(Answer {
                outputs,
                queue: Duration::ZERO,
                compute: Duration::ZERO,
            });
        }
        let lookup = started.elapsed();
        self.metrics.cache_misses.inc();
        self.metrics
            .cache_lookup_seconds
            .observe(lookup.as_secs_f64());
        let answer = self.compute(req, inputs, rows).await?;
        let started = Instant::now();
        cache.insert(key, &answer.outputs);
        let insert = started.elapsed();
        let (entries, bytes) = cache.usage();
        self.metrics.cache_entries.set(entries as i64);
        self.metrics.cache_bytes.set(bytes as i64);
        self.metrics
            .cache_insert_seconds
            .observe(insert.as_secs_f64());
        self.stats.cache_miss.add(lookup + insert);
        Ok(answer)
    }

    /// What a cached answer depends on besides this version's inputs and table epoch: 0 for
    /// an engine version; for a pipeline, the request parameters it reads (`routing_key`,
    /// which picks member versions, and its `switch` steps' parameters) and the instance and
    /// epoch of every serving version of its member models, so that a member's delta, reload
    /// or unload is never answered from before it.
    fn cache_salt(&self, req: &InferRequest, depth: usize) -> u128 {
        let Body::Pipeline(p) = &self.body else {
            return 0;
        };
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let switches = p.steps().iter().filter_map(|s| match &s.kind {
            crate::pipeline::spec::StepKind::Switch { parameter, .. } => parameter.as_deref(),
            _ => None,
        });
        for name in std::iter::once("routing_key").chain(switches) {
            if let Some(value) = req.parameters.get(name) {
                for part in [name, value.as_str()] {
                    h.update(&(part.len() as u64).to_le_bytes());
                    h.update(part.as_bytes());
                }
            }
        }
        for m in p.member_versions() {
            h.update(&m.instance.to_le_bytes());
            h.update(&m.epoch.load(Ordering::Acquire).to_le_bytes());
            // a member pipeline depends on its own members (the repository refuses cycles;
            // the depth bound is a guard)
            if depth < 8 {
                h.update(&m.cache_salt(req, depth + 1).to_le_bytes());
            }
        }
        h.digest128()
    }

    /// Computes validated inputs: through the scheduler, or the pipeline.
    async fn compute(&self, req: InferRequest, inputs: Vec<Tensor>, rows: usize) -> Result<Answer> {
        let scheduler = match &self.body {
            Body::Engine { scheduler, .. } => scheduler,
            Body::Pipeline(p) => {
                let timeout = match req.timeout {
                    Some(t) if !t.is_zero() => Some(t),
                    _ => {
                        let ms = self.config.dynamic_batching.default_timeout_ms;
                        (ms > 0).then(|| Duration::from_millis(ms))
                    }
                };
                let deadline = timeout.map(|t| req.received + t);
                let (outputs, queue, compute) = p
                    .run(&req, inputs, deadline)
                    .await
                    .map_err(|e| e.prefixed(format!("pipeline '{}'", self.name)))?;
                // as Triton counts an ensemble: its members' queue and compute times summed
                self.stats.queue.add(queue);
                self.stats
                    .record_batch(1, Duration::ZERO, compute, Duration::ZERO);
                return Ok(Answer {
                    outputs,
                    queue,
                    compute,
                });
            }
        };
        let db = &self.config.dynamic_batching;
        let level = match req.priority {
            None | Some(0) => self.config.default_priority(),
            Some(p) if p <= db.priority_levels as u64 => p as u32,
            Some(p) => {
                return Err(Error::invalid(format!(
                    "parameter 'priority': {p} is outside 1..={} for model '{}'",
                    db.priority_levels, self.name
                )))
            }
        };
        let timeout = match req.timeout {
            Some(t) if !t.is_zero() => Some(t),
            _ => (db.default_timeout_ms > 0).then(|| Duration::from_millis(db.default_timeout_ms)),
        };
        let deadline = timeout.map(|t| req.received + t);
        let (tx, rx) = tokio::sync::oneshot::channel();
        scheduler.enqueue(Pending {
            inputs,
            rows,
            level: (level - 1) as usize,
            arrival: Instant::now(),
            deadline,
            reply: tx,
            span: tracing::Span::current(),
        })?;
        let answer = match deadline {
            None => rx.await,
            Some(d) => match tokio::time::timeout_at(d.into(), rx).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Error::new(
                        ErrorCode::Timeout,
                        format!("request timed out after {:?}", timeout.unwrap_or_default()),
                    ))
                }
            },
        };
        answer.map_err(|_| {
            let why = (scheduler.failure())
                .map(|w| format!(": {w}"))
                .unwrap_or_default();
            Error::unavailable(format!("{} stopped before answering{why}", self.label()))
        })?
    }

    /// Requests waiting in this version's queue (0 for a pipeline: its steps queue at their
    /// member models).
    pub fn queue_len(&self) -> usize {
        match &self.body {
            Body::Engine { scheduler, .. } => scheduler.queue_len(),
            Body::Pipeline(_) => 0,
        }
    }

    /// Holds a place in this version's queue for a request admitted at its headers while its
    /// body is read and decoded; `None` when the queue is full (see [`Scheduler::reserve`]).
    /// A pipeline has no queue of its own: its place holds nothing.
    pub fn reserve_slot(&self) -> Option<QueueSlot> {
        match &self.body {
            Body::Engine { scheduler, .. } => scheduler.reserve(),
            Body::Pipeline(_) => Some(QueueSlot::none()),
        }
    }

    /// What this version's workers waited for, and the places held in its queue now
    /// (`None` for a pipeline).
    pub fn worker_waits(&self) -> Option<WorkerWaits> {
        match &self.body {
            Body::Engine { scheduler, .. } => Some(scheduler.waits()),
            Body::Pipeline(_) => None,
        }
    }

    /// Counts a request the server refused before it reached [`ServedVersion::infer`] (its
    /// early admission check), the way `infer` counts its own failures.
    pub fn record_refused(&self, e: &Error) {
        self.stats.record_request(false, Duration::ZERO);
        self.metrics.fail(e.code.as_label());
    }

    /// Why this version cannot compute any more (its workers are gone), or `None` while it
    /// can. A broken version reports not-ready and fails its requests at once.
    pub fn failure(&self) -> Option<String> {
        match &self.body {
            Body::Engine { scheduler, .. } => scheduler.failure(),
            Body::Pipeline(p) => p.failure(),
        }
    }
}

/// A served version's tables ([`ServedVersion::sparse`]): the model's own, with every change
/// marking the version's cached answers stale.
pub struct VersionTables<'a> {
    version: &'a ServedVersion,
    inner: &'a dyn SparseParameters,
}

impl VersionTables<'_> {
    /// The tables, in the model's order.
    pub fn tables(&self) -> Vec<SparseTableInfo> {
        self.inner.tables()
    }

    /// Applies one encoded delta to `table` (see [`SparseParameters::apply_delta`]).
    pub fn apply_delta(&self, table: &str, encoded: &[u8]) -> Result<DeltaAck> {
        let ack = self.inner.apply_delta(table, encoded);
        // stale even on an error: part of the delta may have been written
        if !matches!(&ack, Ok(a) if !a.applied) {
            self.version.tables_changed();
        }
        ack
    }

    /// Sets the last applied sequence number of `source` on `table`.
    pub fn reset_source(&self, table: &str, source: &str, seq: u64) -> Result<()> {
        self.inner.reset_source(table, source, seq)
    }

    /// The rows of `keys` in `table`.
    pub fn rows(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        self.inner.rows(table, keys)
    }
}
