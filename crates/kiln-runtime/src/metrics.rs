//! Prometheus metrics of the runtime, per model and version: request outcomes, latency
//! histograms (request, queue, compute, server overhead), batch sizes, queue depth and
//! in-flight requests, `kiln_model_info` (who owns each model) and, per model, the time of the
//! last applied embedding delta. Handles are resolved once per served version so the hot path
//! only touches atomics.

use kiln_core::config::ModelConfig;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

/// Labels of per-version series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
}

/// Labels of per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name.
    pub model: String,
}

/// Labels of failure counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Why the request failed (`overloaded`, `timeout`, `invalid_argument`, ...).
    pub reason: String,
}

/// Labels of `kiln_model_info`: who answers for a served model version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// The config's `owner`, empty when unset.
    pub owner: String,
    /// The config's `team`, empty when unset.
    pub team: String,
}

/// Labels of per-step pipeline series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// Pipeline name.
    pub model: String,
    /// Pipeline version.
    pub version: String,
    /// Step name.
    pub step: String,
}

type HistFamily = Family<VersionLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 2 us .. ~16 s, factor 2: fine enough to read a sub-20-us overhead p50.
    Histogram::new(exponential_buckets(2e-6, 2.0, 24))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Every runtime metric family; register once with [`RuntimeMetrics::register`].
pub struct RuntimeMetrics {
    success: Family<VersionLabels, Counter>,
    failure: Family<FailureLabels, Counter>,
    rows: Family<VersionLabels, Counter>,
    executions: Family<VersionLabels, Counter>,
    request_seconds: HistFamily,
    queue_seconds: HistFamily,
    compute_seconds: HistFamily,
    overhead_seconds: HistFamily,
    batch_size: HistFamily,
    queue_depth: Family<VersionLabels, Gauge>,
    inflight: Family<VersionLabels, Gauge>,
    idle_waits: Family<VersionLabels, Counter>,
    idle_waits_reserved: Family<VersionLabels, Counter>,
    loads: Family<FailureLabels, Counter>,
    cache_hits: Family<VersionLabels, Counter>,
    cache_misses: Family<VersionLabels, Counter>,
    cache_lookup_seconds: HistFamily,
    cache_insert_seconds: HistFamily,
    cache_bytes: Gauge,
    cache_entries: Gauge,
    step_requests: Family<StepLabels, Counter>,
    step_failures: Family<StepLabels, Counter>,
    step_seconds: Family<StepLabels, Histogram, fn() -> Histogram>,
    rollbacks: Family<VersionLabels, Counter>,
    info: Family<InfoLabels, Gauge>,
    delta_applied_at: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    /// The `info` series set so far, to drop those a newer load of the model replaces.
    info_set: Mutex<Vec<InfoLabels>>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            success: Family::default(),
            failure: Family::default(),
            rows: Family::default(),
            executions: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            queue_seconds: Family::new_with_constructor(latency_histogram),
            compute_seconds: Family::new_with_constructor(latency_histogram),
            overhead_seconds: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            queue_depth: Family::default(),
            inflight: Family::default(),
            idle_waits: Family::default(),
            idle_waits_reserved: Family::default(),
            loads: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_lookup_seconds: Family::new_with_constructor(latency_histogram),
            cache_insert_seconds: Family::new_with_constructor(latency_histogram),
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
            step_requests: Family::default(),
            step_failures: Family::default(),
            step_seconds: Family::new_with_constructor(latency_histogram),
            rollbacks: Family::default(),
            info: Family::default(),
            delta_applied_at: Family::default(),
            info_set: Mutex::default(),
        }
    }
}

impl RuntimeMetrics {
    /// Registers every family in `registry`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "kiln_inference_request_success",
            "Inference requests answered successfully",
            self.success.clone(),
        );
        r.register(
            "kiln_inference_request_failure",
            "Inference requests that failed, by reason",
            self.failure.clone(),
        );
        r.register(
            "kiln_inference_rows",
            "Rows (batch elements) computed",
            self.rows.clone(),
        );
        r.register(
            "kiln_inference_executions",
            "Batches executed by the backend",
            self.executions.clone(),
        );
        r.register(
            "kiln_inference_request_duration_seconds",
            "Time from receiving a request to its answer, in seconds",
            self.request_seconds.clone(),
        );
        r.register(
            "kiln_inference_queue_duration_seconds",
            "Time a request waited in the scheduler queue, in seconds",
            self.queue_seconds.clone(),
        );
        r.register(
            "kiln_inference_compute_duration_seconds",
            "Backend execution time of the batch a request ran in, in seconds",
            self.compute_seconds.clone(),
        );
        r.register(
            "kiln_inference_overhead_duration_seconds",
            "Request time minus compute time: what the server adds, in seconds",
            self.overhead_seconds.clone(),
        );
        r.register(
            "kiln_inference_batch_size_rows",
            "Rows per executed batch",
            self.batch_size.clone(),
        );
        r.register(
            "kiln_inference_queue_depth_requests",
            "Requests waiting in the scheduler queue",
            self.queue_depth.clone(),
        );
        r.register(
            "kiln_inference_inflight_requests",
            "Requests received and not yet answered",
            self.inflight.clone(),
        );
        r.register(
            "kiln_inference_worker_idle_waits",
            "Times a model worker found its queue empty and waited for a request",
            self.idle_waits.clone(),
        );
        r.register(
            "kiln_inference_worker_starved_waits",
            "Times a model worker found its queue empty while a request admitted at its headers \
             was still being read or decoded",
            self.idle_waits_reserved.clone(),
        );
        r.register(
            "kiln_repository_model_loads",
            "Model version loads, by outcome (reason = ok or the error kind)",
            self.loads.clone(),
        );
        r.register(
            "kiln_response_cache_hits",
            "Requests answered from the response cache",
            self.cache_hits.clone(),
        );
        r.register(
            "kiln_response_cache_misses",
            "Requests of cache-enabled models the response cache did not have",
            self.cache_misses.clone(),
        );
        r.register(
            "kiln_response_cache_lookup_duration_seconds",
            "Time to look a request up in the response cache, in seconds",
            self.cache_lookup_seconds.clone(),
        );
        r.register(
            "kiln_response_cache_insertion_duration_seconds",
            "Time to store an answer in the response cache, in seconds",
            self.cache_insert_seconds.clone(),
        );
        r.register(
            "kiln_response_cache_bytes",
            "Bytes of answers the response cache holds, as of its last insertion",
            self.cache_bytes.clone(),
        );
        r.register(
            "kiln_response_cache_entries",
            "Answers the response cache holds, as of its last insertion",
            self.cache_entries.clone(),
        );
        r.register(
            "kiln_pipeline_step_requests",
            "Pipeline step executions",
            self.step_requests.clone(),
        );
        r.register(
            "kiln_pipeline_step_failures",
            "Pipeline step executions that failed",
            self.step_failures.clone(),
        );
        r.register(
            "kiln_pipeline_step_duration_seconds",
            "Time a pipeline step took, in seconds (model steps include the member's queue)",
            self.step_seconds.clone(),
        );
        r.register(
            "kiln_traffic_rollbacks",
            "Canary versions whose traffic weight was set to 0 by automatic rollback",
            self.rollbacks.clone(),
        );
        r.register(
            "kiln_model_info",
            "Always 1 for each loaded model version; its owner and team (config.toml) as labels",
            self.info.clone(),
        );
        r.register(
            "kiln_delta_last_applied_timestamp_seconds",
            "Unix time of the last embedding delta applied to the model, from its delta topic or \
             the admin API (replays, refused deltas and snapshot restores do not count), in seconds",
            self.delta_applied_at.clone(),
        );
    }

    /// Sets `kiln_delta_last_applied_timestamp_seconds` of `model` to now: a delta from its
    /// delta topic or the admin API changed its tables. Callers leave out replays (no version
    /// applied it), refused deltas and snapshot restores, so `time()` minus the gauge says how
    /// long the served rows have gone without an update from the learner.
    pub fn record_delta_applied(&self, model: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.delta_applied_at
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .set(now);
    }

    /// Sets `kiln_model_info` of a version that became ready, with the owner and team of its
    /// `config`. The model's series with another owner or team go: the configuration is the
    /// model's, so its newest load says who owns every version, and a single owner per model
    /// keeps the alert rules' join on `model` unambiguous.
    pub fn set_model_info(&self, model: &str, version: u64, config: &ModelConfig) {
        let labels = InfoLabels {
            model: model.to_string(),
            version: version.to_string(),
            owner: config.owner.clone().unwrap_or_default(),
            team: config.team.clone().unwrap_or_default(),
        };
        let mut set = self.info_set.lock();
        set.retain(|l| {
            let stale = l.model == labels.model
                && (l.version == labels.version
                    || l.owner != labels.owner
                    || l.team != labels.team);
            if stale {
                self.info.remove(l);
            }
            !stale
        });
        self.info.get_or_create(&labels).set(1);
        set.push(labels);
    }

    /// Drops the `kiln_model_info` series of `model` `version` (`None`: of every version) and,
    /// for the whole model, its `kiln_delta_last_applied_timestamp_seconds`: a version retired
    /// or a model unloaded owns no series that alert rules would go on judging.
    pub fn forget(&self, model: &str, version: Option<u64>) {
        let version = version.map(|v| v.to_string());
        self.info_set.lock().retain(|l| {
            let gone = l.model == model && version.as_ref().is_none_or(|v| &l.version == v);
            if gone {
                self.info.remove(l);
            }
            !gone
        });
        if version.is_none() {
            self.delta_applied_at.remove(&ModelLabels {
                model: model.to_string(),
            });
        }
    }

    /// Counts one automatic rollback of `model` `version`.
    pub fn record_rollback(&self, model: &str, version: u64) {
        self.rollbacks
            .get_or_create(&VersionLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .inc();
    }

    /// Resolves the handles of one pipeline step.
    pub fn for_step(&self, model: &str, version: u64, step: &str) -> StepMetrics {
        let l = StepLabels {
            model: model.to_string(),
            version: version.to_string(),
            step: step.to_string(),
        };
        StepMetrics {
            requests: self.step_requests.get_or_create_owned(&l),
            failures: self.step_failures.get_or_create_owned(&l),
            seconds: self.step_seconds.get_or_create_owned(&l),
        }
    }

    /// Resolves the handles of one model version.
    pub fn for_version(&self, model: &str, version: u64) -> VersionMetrics {
        let l = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        VersionMetrics {
            success: self.success.get_or_create_owned(&l),
            rows: self.rows.get_or_create_owned(&l),
            executions: self.executions.get_or_create_owned(&l),
            request_seconds: self.request_seconds.get_or_create_owned(&l),
            queue_seconds: self.queue_seconds.get_or_create_owned(&l),
            compute_seconds: self.compute_seconds.get_or_create_owned(&l),
            overhead_seconds: self.overhead_seconds.get_or_create_owned(&l),
            batch_size: self.batch_size.get_or_create_owned(&l),
            queue_depth: self.queue_depth.get_or_create_owned(&l),
            inflight: self.inflight.get_or_create_owned(&l),
            idle_waits: self.idle_waits.get_or_create_owned(&l),
            idle_waits_reserved: self.idle_waits_reserved.get_or_create_owned(&l),
            cache_hits: self.cache_hits.get_or_create_owned(&l),
            cache_misses: self.cache_misses.get_or_create_owned(&l),
            cache_lookup_seconds: self.cache_lookup_seconds.get_or_create_owned(&l),
            cache_insert_seconds: self.cache_insert_seconds.get_or_create_owned(&l),
            cache_bytes: self.cache_bytes.clone(),
            cache_entries: self.cache_entries.clone(),
            failure: self.failure.clone(),
            labels: l,
        }
    }

    /// Counts one load attempt of a model version.
    pub fn record_load(&self, model: &str, version: u64, outcome: &str) {
        self.loads
            .get_or_create(&FailureLabels {
                model: model.to_string(),
                version: version.to_string(),
                reason: outcome.to_string(),
            })
            .inc();
    }
}

/// Metric handles of one served model version.
#[derive(Clone)]
pub struct VersionMetrics {
    /// Successful requests.
    pub success: Counter,
    /// Rows computed.
    pub rows: Counter,
    /// Batches executed.
    pub executions: Counter,
    /// End-to-end request time.
    pub request_seconds: Histogram,
    /// Queue wait time.
    pub queue_seconds: Histogram,
    /// Backend compute time of the request's batch.
    pub compute_seconds: Histogram,
    /// Request time minus compute time.
    pub overhead_seconds: Histogram,
    /// Rows per batch.
    pub batch_size: Histogram,
    /// Requests queued.
    pub queue_depth: Gauge,
    /// Requests in flight.
    pub inflight: Gauge,
    /// Times a worker waited on an empty queue.
    pub idle_waits: Counter,
    /// Times a worker waited on an empty queue while an admitted request was being read.
    pub idle_waits_reserved: Counter,
    /// Response cache hits.
    pub cache_hits: Counter,
    /// Response cache misses.
    pub cache_misses: Counter,
    /// Response cache lookup time.
    pub cache_lookup_seconds: Histogram,
    /// Response cache insertion time.
    pub cache_insert_seconds: Histogram,
    /// Bytes the server-wide response cache holds (one gauge shared by every version).
    pub cache_bytes: Gauge,
    /// Entries the server-wide response cache holds (one gauge shared by every version).
    pub cache_entries: Gauge,
    failure: Family<FailureLabels, Counter>,
    labels: VersionLabels,
}

impl VersionMetrics {
    /// Counts one failed request with its reason.
    pub fn fail(&self, reason: &str) {
        self.failure
            .get_or_create(&FailureLabels {
                model: self.labels.model.clone(),
                version: self.labels.version.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Metric handles of one pipeline step.
#[derive(Clone)]
pub struct StepMetrics {
    /// Executions.
    pub requests: Counter,
    /// Failed executions.
    pub failures: Counter,
    /// Time per execution.
    pub seconds: Histogram,
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
