"""The dataset cache dashboard's panels (gen_dashboards.py writes it)."""

from board import RATE, Board, ds_var, query_var

def csel(metric, extra=""):
    return f'{metric}{{job=~"$job"{extra}}}'


def datacache():
    b = Board(
        "kiln-datacache",
        "Kiln / Dataset cache",
        "kiln cache mount on each node: hit ratio, bytes served, remote requests and errors, "
        "tiers and warm-up.",
        [
            ds_var(),
            query_var("job", "Job", "label_values(kiln_cache_remote_requests_total, job)"),
        ],
    )
    hits = f"sum by (instance) (rate({csel('kiln_cache_hit_bytes_total')}[{RATE}]))"
    misses = f"sum by (instance) (rate({csel('kiln_cache_miss_bytes_total')}[{RATE}]))"
    b.row("Reads")
    b.panel(
        "Hit ratio",
        "Share of bytes read that came from the cache (memory or disk), and share of files whose "
        "first block did.",
        [
            (f"{hits} / ({hits} + {misses})", "{{instance}} bytes"),
            (
                f"sum by (instance) (rate({csel('kiln_cache_hit_files_total')}[{RATE}])) / "
                f"(sum by (instance) (rate({csel('kiln_cache_hit_files_total')}[{RATE}])) + "
                f"sum by (instance) (rate({csel('kiln_cache_miss_files_total')}[{RATE}])))",
                "{{instance}} files",
            ),
        ],
        unit="percentunit",
    )
    b.panel(
        "Bytes served",
        "Bytes per second served from each tier, and fetched from the remote to answer reads.",
        [
            (f"sum by (tier) (rate({csel('kiln_cache_hit_bytes_total')}[{RATE}]))", "hit {{tier}}"),
            (f"sum (rate({csel('kiln_cache_miss_bytes_total')}[{RATE}]))", "miss"),
        ],
        unit="Bps",
    )
    b.panel(
        "Read errors and timeouts",
        "Reads answered with an error, and reads past the read timeout, per second.",
        [
            (f"sum by (instance) (rate({csel('kiln_cache_read_errors_total')}[{RATE}]))", "{{instance}} errors"),
            (f"sum by (instance) (rate({csel('kiln_cache_read_timeouts_total')}[{RATE}]))", "{{instance}} timeouts"),
        ],
        unit="ops",
    )
    b.panel(
        "Refetched blocks",
        "Cached blocks that failed verification (corrupt) or whose remote object changed (stale).",
        [
            (f"sum by (instance) (rate({csel('kiln_cache_corrupt_blocks_total')}[{RATE}]))", "{{instance}} corrupt"),
            (f"sum by (instance) (rate({csel('kiln_cache_stale_blocks_total')}[{RATE}]))", "{{instance}} stale"),
        ],
        unit="ops",
    )
    b.row("Remote")
    b.panel(
        "Remote requests and errors",
        "Requests to the remote store per second by operation, and those that failed after "
        "retries.",
        [
            (f"sum by (op) (rate({csel('kiln_cache_remote_requests_total')}[{RATE}]))", "{{op}}"),
            (f"sum by (op) (rate({csel('kiln_cache_remote_errors_total')}[{RATE}]))", "{{op}} errors"),
        ],
        unit="reqps",
    )
    b.panel(
        "Remote latency p99",
        "p99 of remote requests by operation.",
        [
            (
                "histogram_quantile(0.99, sum by (op, le) (rate("
                f"{csel('kiln_cache_remote_request_duration_seconds_bucket')}[{RATE}])))",
                "{{op}}",
            )
        ],
        unit="s",
    )
    b.panel(
        "Remote bytes read",
        "Bytes per second read from the remote store.",
        [(f"sum by (instance) (rate({csel('kiln_cache_remote_read_bytes_total')}[{RATE}]))", "{{instance}}")],
        unit="Bps",
    )
    b.row("Tiers, metadata and warm-up")
    b.panel(
        "Tier size",
        "Bytes held per cache tier (disk: allocated), and memory-tier evictions per second.",
        [
            (f"sum by (instance, tier) ({csel('kiln_cache_tier_bytes')})", "{{instance}} {{tier}}"),
        ],
        unit="bytes",
        w=8,
    )
    b.panel(
        "Evictions and metadata",
        "Memory-tier evictions and metadata loads from the remote per second; files in the "
        "metadata cache.",
        [
            (f"sum by (instance) (rate({csel('kiln_cache_evictions_total')}[{RATE}]))", "{{instance}} evictions/s"),
            (f"sum by (instance) (rate({csel('kiln_cache_metadata_refreshes_total')}[{RATE}]))", "{{instance}} refreshes/s"),
            (f"sum by (instance) ({csel('kiln_cache_metadata_files')})", "{{instance}} metadata files"),
        ],
        w=8,
    )
    b.panel(
        "Warm-up",
        "Warm-up files by outcome and bytes fetched by warm-up, against the files planned.",
        [
            (f"sum by (state) (increase({csel('kiln_cache_warmup_files_total')}[1h]))", "files {{state}}"),
            (f"sum ({csel('kiln_cache_warmup_planned_files')})", "planned"),
        ],
        w=8,
    )
    b.panel(
        "Process CPU and memory",
        "CPU seconds per second and resident memory of each kiln cache mount.",
        [
            (f"sum by (instance) (rate({csel('process_cpu_seconds_total')}[{RATE}]))", "{{instance}} cpu"),
            (f"sum by (instance) ({csel('process_resident_memory_bytes')})", "{{instance}} rss"),
        ],
        w=24,
    )
    return b


