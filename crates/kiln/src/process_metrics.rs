//! Process metrics under the conventional Prometheus names (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, ...), read from `/proc/self` at each
//! scrape. They describe the process rather than a subsystem, so each subcommand that serves
//! `/metrics` registers [`ProcessCollector`] into its own registry: `kiln serve` into the
//! server's, `kiln cache mount` into the cache's.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// A Prometheus collector of this process's CPU time, memory, file descriptors, threads and
/// start time. Where `/proc/self/stat` cannot be read (not Linux), it exposes nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Registers the collector into `registry` (once per registry).
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Self::boxed());
    }

    /// The collector, boxed for registries that take collectors after they are built.
    pub fn boxed() -> Box<dyn Collector> {
        Box::new(ProcessCollector)
    }
}

/// One reading of the process's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// OS threads.
    pub threads: u64,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors, if `/proc/self/fd` can be listed.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors, if there is one.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads the figures from `/proc`; `None` where `/proc/self/stat` cannot be read or parsed.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s))
            .unwrap_or(0.0);
        let mut stats = parse_stat(
            &stat,
            if ticks > 0 { ticks as f64 } else { 100.0 },
            if page > 0 { page as u64 } else { 4096 },
            boot_time,
        )?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        stats.max_fds = max_fds();
        Some(stats)
    }
}

/// Parses `/proc/self/stat`: `ticks_per_second` is `sysconf(_SC_CLK_TCK)`, `page_bytes` the
/// page size, `boot_time` the `btime` of `/proc/stat`. File descriptors are left `None`.
pub fn parse_stat(
    stat: &str,
    ticks_per_second: f64,
    page_bytes: u64,
    boot_time: f64,
) -> Option<ProcessStats> {
    // Fields after the parenthesised command name, which may itself contain spaces and ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Indices are the stat(5) field numbers minus 3 (the pid and the command come first).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime) = (num(11)?, num(12)?);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks_per_second,
        threads: num(17)?,
        start_time_seconds: boot_time + num(19)? as f64 / ticks_per_second,
        virtual_bytes: num(20)?,
        resident_bytes: num(21)?.saturating_mul(page_bytes),
        open_fds: None,
        max_fds: None,
    })
}

/// The boot time (`btime`, seconds since the epoch) in the text of `/proc/stat`.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat.lines().find_map(|l| {
        l.strip_prefix("btime ")
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
}

/// The soft `RLIMIT_NOFILE`, or `None` when it is unlimited or cannot be read.
fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Encodes one gauge family without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let e = &mut encoder;
        gauge(
            e,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            s.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            s.virtual_bytes,
        )?;
        if let Some(fds) = s.open_fds {
            gauge(
                e,
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                fds,
            )?;
        }
        if let Some(max) = s.max_fds {
            gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                max,
            )?;
        }
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            None,
            s.threads,
        )?;
        gauge(
            e,
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(&Unit::Seconds),
            s.start_time_seconds,
        )
    }
}

#[cfg(test)]
#[path = "process_metrics_tests.rs"]
mod tests;
