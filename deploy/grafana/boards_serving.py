"""The serving and sparse-model/learning dashboards' panels (gen_dashboards.py writes them)."""

from board import RATE, Board, ds_var, mean, query_var, quantiles, sel

def serving():
    b = Board(
        "kiln-serving",
        "Kiln / Serving",
        "kiln serve: traffic, errors, latency, queueing and batching per model and version, "
        "canaries, the response cache, pipelines and the process.",
        [
            ds_var(),
            query_var("job", "Job", "label_values(kiln_inference_request_success_total, job)"),
            query_var(
                "model",
                "Model",
                'label_values(kiln_inference_request_success_total{job=~"$job"}, model)',
            ),
        ],
    )
    b.row("Traffic and errors")
    b.panel(
        "Request rate",
        "Inference requests per second by model: answered, and failed (any reason).",
        [
            (f"sum by (model) (rate({sel('kiln_inference_request_success_total')}[{RATE}]))", "{{model}} ok"),
            (f"sum by (model) (rate({sel('kiln_inference_request_failure_total')}[{RATE}]))", "{{model}} failed"),
        ],
        unit="reqps",
    )
    b.panel(
        "Errors by reason",
        "Failed requests per second by model and reason (overloaded = 429, invalid_argument = "
        "400, internal = 500, unavailable = 503, timeout), and requests refused server-wide before "
        "their body was read.",
        [
            (
                f"sum by (model, reason) (rate({sel('kiln_inference_request_failure_total')}[{RATE}]))",
                "{{model}} {{reason}}",
            ),
            (
                f'sum by (reason) (rate(kiln_server_admission_rejected_total{{job=~"$job"}}[{RATE}]))',
                "refused: {{reason}}",
            ),
        ],
        unit="reqps",
    )
    b.panel(
        "Failure ratio",
        "Share of requests that failed, by model: what the availability objective (99.9%) is "
        "measured against.",
        [
            (
                f"sum by (model) (rate({sel('kiln_inference_request_failure_total')}[{RATE}])) / "
                f"(sum by (model) (rate({sel('kiln_inference_request_success_total')}[{RATE}])) + "
                f"sum by (model) (rate({sel('kiln_inference_request_failure_total')}[{RATE}])))",
                "{{model}}",
            )
        ],
        unit="percentunit",
    )
    b.panel(
        "Rows per second",
        "Rows (batch items) inferred per second by model.",
        [(f"sum by (model) (rate({sel('kiln_inference_rows_total')}[{RATE}]))", "{{model}}")],
    )
    b.row("Latency")
    b.panel(
        "Request duration p50 / p95 / p99",
        "End-to-end request time inside the server, from kiln_inference_request_duration_seconds.",
        quantiles("kiln_inference_request_duration_seconds", "model"),
        unit="s",
        w=24,
    )
    b.panel(
        "Compute vs overhead (mean per request)",
        "Mean compute time (the model's execution of the request's batch) against overhead "
        "(request time minus compute: decoding, queueing, batching, encoding).",
        [
            mean("kiln_inference_compute_duration_seconds", "model", "{{model}} compute"),
            mean("kiln_inference_overhead_duration_seconds", "model", "{{model}} overhead"),
        ],
        unit="s",
    )
    b.panel(
        "Queue time p99",
        "Time requests waited in the model's queue before their batch started.",
        [
            (
                "histogram_quantile(0.99, sum by (model, le) (rate("
                f"{sel('kiln_inference_queue_duration_seconds_bucket')}[{RATE}])))",
                "{{model}}",
            )
        ],
        unit="s",
    )
    b.row("Queueing and batching")
    b.panel(
        "Queue depth",
        "Requests waiting in each version's queue; at the model's max_queue_size new requests "
        "get 429.",
        [(f"sum by (model, version) ({sel('kiln_inference_queue_depth_requests')})", "{{model}} v{{version}}")],
    )
    b.panel(
        "In-flight requests",
        "Requests admitted and not yet answered, by model (the autoscaling signal).",
        [(f"sum by (model) ({sel('kiln_inference_inflight_requests')})", "{{model}}")],
    )
    b.panel(
        "Batch size (rows)",
        "Mean and p95 rows per executed batch: how much dynamic batching gathers.",
        [
            mean("kiln_inference_batch_size_rows", "model", "{{model}} mean"),
            (
                "histogram_quantile(0.95, sum by (model, le) (rate("
                f"{sel('kiln_inference_batch_size_rows_bucket')}[{RATE}])))",
                "{{model}} p95",
            ),
        ],
    )
    b.panel(
        "Executions per second",
        "Batches executed per second; with the request rate, how many requests share a batch.",
        [(f"sum by (model) (rate({sel('kiln_inference_executions_total')}[{RATE}]))", "{{model}}")],
    )
    b.row("Versions and canaries")
    b.panel(
        "Traffic by version",
        "Requests per second to each version of a model: a canary's share under [traffic] weights.",
        [
            (
                f"sum by (model, version) (rate({sel('kiln_inference_request_success_total')}[{RATE}]))",
                "{{model}} v{{version}} ok",
            ),
            (
                f"sum by (model, version) (rate({sel('kiln_inference_request_failure_total')}[{RATE}]))",
                "{{model}} v{{version}} failed",
            ),
        ],
        unit="reqps",
    )
    b.panel(
        "p99 by version",
        "Request duration p99 per version, what the automatic rollback compares.",
        [
            (
                "histogram_quantile(0.99, sum by (model, version, le) (rate("
                f"{sel('kiln_inference_request_duration_seconds_bucket')}[{RATE}])))",
                "{{model}} v{{version}}",
            )
        ],
        unit="s",
    )
    b.panel(
        "Model loads",
        "Version loads in the last hour by outcome (reason ok, or why the load failed).",
        [
            (
                f"sum by (model, version, reason) (increase({sel('kiln_repository_model_loads_total')}[1h]))",
                "{{model}} v{{version}} {{reason}}",
            )
        ],
    )
    b.panel(
        "Model owners",
        "Who owns each loaded version (config.toml owner and team), as alerts carry them.",
        [(f"max by (model, version, owner, team) ({sel('kiln_model_info')})", "")],
        kind="table",
    )
    b.row("Response cache")
    b.panel(
        "Response cache hit ratio",
        "Share of lookups answered from the response cache, by model (models with "
        "[response_cache] enable = true).",
        [
            (
                f"sum by (model) (rate({sel('kiln_response_cache_hits_total')}[{RATE}])) / "
                f"(sum by (model) (rate({sel('kiln_response_cache_hits_total')}[{RATE}])) + "
                f"sum by (model) (rate({sel('kiln_response_cache_misses_total')}[{RATE}])))",
                "{{model}}",
            )
        ],
        unit="percentunit",
    )
    b.panel(
        "Response cache size",
        "Bytes and entries held by the server's one response cache.",
        [
            ('sum by (instance) (kiln_response_cache_bytes{job=~"$job"})', "{{instance}} bytes"),
            ('sum by (instance) (kiln_response_cache_entries{job=~"$job"})', "{{instance}} entries"),
        ],
        unit="bytes",
    )
    b.row("Pipelines")
    b.panel(
        "Pipeline step p95",
        "p95 time of each pipeline step (member model or built-in op).",
        [
            (
                "histogram_quantile(0.95, sum by (model, step, le) (rate("
                f"{sel('kiln_pipeline_step_duration_seconds_bucket')}[{RATE}])))",
                "{{model}} {{step}}",
            )
        ],
        unit="s",
    )
    b.panel(
        "Pipeline step requests and failures",
        "Step executions and step failures per second.",
        [
            (f"sum by (model, step) (rate({sel('kiln_pipeline_step_requests_total')}[{RATE}]))", "{{model}} {{step}}"),
            (
                f"sum by (model, step) (rate({sel('kiln_pipeline_step_failures_total')}[{RATE}]))",
                "{{model}} {{step}} failed",
            ),
        ],
        unit="reqps",
    )
    b.row("Process")
    b.panel(
        "CPU",
        "CPU seconds per second used by each kiln serve process (1 = one core).",
        [('sum by (instance) (rate(process_cpu_seconds_total{job=~"$job"}[' + RATE + "]))", "{{instance}}")],
        w=8,
    )
    b.panel(
        "Memory",
        "Resident memory of each kiln serve process.",
        [('sum by (instance) (process_resident_memory_bytes{job=~"$job"})', "{{instance}}")],
        unit="bytes",
        w=8,
    )
    b.panel(
        "Connections, threads, file descriptors",
        "Open connections (all listeners), threads and open file descriptors per process.",
        [
            ('sum by (instance) (kiln_server_connections_open{job=~"$job"})', "{{instance}} connections"),
            ('sum by (instance) (process_threads{job=~"$job"})', "{{instance}} threads"),
            ('sum by (instance) (process_open_fds{job=~"$job"})', "{{instance}} fds"),
        ],
        w=8,
    )
    return b


def tsel(metric, extra=""):
    return f'{metric}{{job=~"$job",table=~"$table"{extra}}}'


def jsel(metric):
    return f'{metric}{{job=~"$learner"}}'


def sparse_learning():
    b = Board(
        "kiln-sparse-learning",
        "Kiln / Sparse models and learning",
        "Embedding tables of served sparse models (deltas applied, lag, rejections, size, "
        "lookups) and the online learner (kiln learn).",
        [
            ds_var(),
            query_var("job", "Serving job", "label_values(kiln_embed_table_rows, job)"),
            query_var("table", "Table", 'label_values(kiln_embed_table_rows{job=~"$job"}, table)'),
            query_var("learner", "Learner job", "label_values(kiln_learn_samples_total, job)"),
        ],
    )
    b.row("Deltas on the serving replicas")
    b.panel(
        "Seconds since the last applied delta",
        "Per model, the seconds since its stalest replica last applied a delta (from its delta "
        "topic or the admin API; replays and refused deltas do not count): a learner that stopped "
        "publishing, or a stuck consumer, shows as a rising line (alert KilnDeltaLagging).",
        [
            (
                'max by (model) (time() - kiln_delta_last_applied_timestamp_seconds{job=~"$job"})',
                "{{model}}",
            )
        ],
        unit="s",
        w=8,
    )
    b.panel(
        "Deltas applied",
        "Deltas and rows applied per second to each table (from kiln learn, the admin API or a "
        "delta topic).",
        [
            (f"sum by (table) (rate({tsel('kiln_embed_deltas_applied_total')}[{RATE}]))", "{{table}} deltas"),
            (f"sum by (table) (rate({tsel('kiln_embed_delta_rows_applied_total')}[{RATE}]))", "{{table}} rows"),
            (
                f"sum by (table) (rate({tsel('kiln_embed_delta_tombstones_applied_total')}[{RATE}]))",
                "{{table}} tombstones",
            ),
        ],
        unit="ops",
        w=8,
    )
    b.panel(
        "Delta lag (creation to apply)",
        "Apply time minus creation time of each table's last delta (the learner dates a delta "
        "by its events), the highest over replicas: how far behind the events the served rows "
        "were when the last delta landed.",
        [(f"max by (table) ({tsel('kiln_embed_delta_lag_seconds')})", "{{table}}")],
        unit="s",
        w=8,
    )
    b.panel(
        "Deltas rejected",
        "Deltas refused per second by table and reason (duplicate, gap, invalid).",
        [
            (
                f"sum by (table, reason) (rate({tsel('kiln_embed_deltas_rejected_total')}[{RATE}]))",
                "{{table}} {{reason}}",
            )
        ],
        unit="ops",
    )
    b.panel(
        "Last applied sequence",
        "The sequence number of each table's last applied delta, per replica: replicas that "
        "disagree for long are behind.",
        [(f"max by (table, instance) ({tsel('kiln_embed_delta_last_sequence')})", "{{table}} {{instance}}")],
    )
    b.row("Delta topic (kiln serve --delta-source)")
    b.panel(
        "Delta topic: applied and rejected",
        "Delta-topic messages applied per model, and skipped by reason (only with a Kafka delta "
        "source).",
        [
            ('sum by (model) (rate(kiln_delta_source_applied_total{job=~"$job"}[' + RATE + "]))", "{{model}} applied"),
            (
                'sum by (model, reason) (rate(kiln_delta_source_rejected_total{job=~"$job"}[' + RATE + "]))",
                "{{model}} {{reason}}",
            ),
        ],
        unit="ops",
    )
    b.panel(
        "Delta topic: consumer lag",
        "Delta-topic messages not yet read, per model and partition.",
        [('sum by (model, partition) (kiln_delta_source_lag{job=~"$job"})', "{{model}} {{partition}}")],
    )
    b.row("Embedding tables")
    b.panel(
        "Table rows",
        "Live rows per table (the highest over replicas).",
        [(f"max by (table) ({tsel('kiln_embed_table_rows')})", "{{table}}")],
    )
    b.panel(
        "Table memory",
        "Bytes held per table (the highest over replicas).",
        [(f"max by (table) ({tsel('kiln_embed_table_memory_bytes')})", "{{table}}")],
        unit="bytes",
    )
    b.panel(
        "Lookups and misses",
        "Keys looked up per second, and the share not found (served as the table's default).",
        [
            (f"sum by (table) (rate({tsel('kiln_embed_lookup_keys_total')}[{RATE}]))", "{{table}} keys/s"),
            (
                f"sum by (table) (rate({tsel('kiln_embed_lookup_misses_total')}[{RATE}])) / "
                f"sum by (table) (rate({tsel('kiln_embed_lookup_keys_total')}[{RATE}]))",
                "{{table}} miss ratio",
            ),
        ],
    )
    b.panel(
        "Evictions and admission",
        "Rows evicted by reason (ttl, cap) and rows refused by the admission filter, per second.",
        [
            (
                f"sum by (table, reason) (rate({tsel('kiln_embed_evicted_rows_total')}[{RATE}]))",
                "{{table}} evicted {{reason}}",
            ),
            (
                f"sum by (table) (rate({tsel('kiln_embed_admission_rejected_rows_total')}[{RATE}]))",
                "{{table}} not admitted",
            ),
        ],
    )
    b.row("kiln learn")
    b.panel(
        "Samples learned",
        "Samples per second, and how they were joined (positives, negatives).",
        [
            (f"sum by (instance) (rate({jsel('kiln_learn_samples_total')}[{RATE}]))", "{{instance}} samples"),
            (f"sum by (instance) (rate({jsel('kiln_learn_joined_positives_total')}[{RATE}]))", "{{instance}} positives"),
            (f"sum by (instance) (rate({jsel('kiln_learn_joined_negatives_total')}[{RATE}]))", "{{instance}} negatives"),
        ],
        unit="ops",
    )
    b.panel(
        "Source lag and malformed events",
        "Events not yet read per Kafka source partition, and malformed events skipped per "
        "second by reason.",
        [
            (f"sum by (partition) ({jsel('kiln_learn_consumer_lag')})", "{{partition}} lag"),
            (
                f"sum by (reason) (rate({jsel('kiln_learn_malformed_events_total')}[{RATE}]))",
                "malformed {{reason}}",
            ),
        ],
    )
    b.panel(
        "Deltas published and delivered",
        "Deltas published, acknowledged by the replicas, and failed delivery attempts per second; "
        "deltas still queued for delivery.",
        [
            (f"sum by (instance) (rate({jsel('kiln_learn_deltas_published_total')}[{RATE}]))", "{{instance}} published"),
            (f"sum by (instance) (rate({jsel('kiln_learn_deltas_delivered_total')}[{RATE}]))", "{{instance}} delivered"),
            (f"sum by (instance) (rate({jsel('kiln_learn_sink_failures_total')}[{RATE}]))", "{{instance}} failed"),
            (f"sum by (instance) ({jsel('kiln_learn_sink_queued')})", "{{instance}} queued"),
        ],
    )
    b.panel(
        "Freshness",
        "Event to publish (an impression entering the learner until its rows were published) and "
        "publish latency (until a replica acknowledged), p50 and p99.",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate({jsel(m + '_bucket')}[{RATE}])))",
                f"{name} p{int(q * 100)}",
            )
            for m, name in (
                ("kiln_learn_event_to_publish_seconds", "event to publish"),
                ("kiln_learn_publish_latency_seconds", "publish"),
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
    )
    b.panel(
        "Model quality",
        "Progressive-validation AUC and log loss (windowed and cumulative).",
        [
            (f"max by (window) ({jsel('kiln_learn_auc')})", "AUC {{window}}"),
            (f"max by (window) ({jsel('kiln_learn_logloss')})", "log loss {{window}}"),
        ],
    )
    b.panel(
        "Checkpoints and joiner",
        "Seconds since the last checkpoint; impressions waiting in the joiner.",
        [
            (f"max by (instance) ({jsel('kiln_learn_checkpoint_age_seconds')})", "{{instance}} checkpoint age (s)"),
            (f"sum by (instance) ({jsel('kiln_learn_joiner_open')})", "{{instance}} open impressions"),
        ],
    )
    return b


