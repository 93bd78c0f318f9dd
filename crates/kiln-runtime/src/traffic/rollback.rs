//! Automatic rollback of canary versions (opt-in by a model's `[traffic_rollback]`).
//!
//! Once a second a monitor snapshots the request counts and latency histogram of every
//! weighted version of the models that have a policy, keeping a ring of snapshots per version
//! that spans the policy's window; the difference between the newest and the oldest is the
//! window. The stable version is the one with the highest weight (ties: the lower version
//! number); every other version with a weight above 0 is a canary, judged against it by
//! [`judge`]. A canary that fails it gets weight 0, a warning and a `kiln_traffic_rollbacks`
//! count.

use super::{shown, ORIGIN_ROLLBACK};
use crate::stats::{LatencyHistogram, VersionStats};
use crate::ModelRepository;
use kiln_core::RollbackPolicy;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the monitor looks.
const TICK: Duration = Duration::from_secs(1);

/// One version's requests over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    /// Requests answered (successes and failures).
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// 99th percentile latency of those requests; `None` without any.
    pub p99: Option<Duration>,
}

impl WindowStats {
    /// Failures per request (0 without requests).
    pub fn failure_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

/// What [`judge`] finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few requests in the window, or the canary does as well as the policy asks.
    Keep,
    /// The canary's failure rate exceeds the stable version's times `failure_ratio`.
    Failures {
        /// The canary's failure rate.
        canary: f64,
        /// The stable version's failure rate.
        stable: f64,
    },
    /// The canary's p99 latency exceeds the stable version's times `latency_ratio`.
    Latency {
        /// The canary's p99.
        canary: Duration,
        /// The stable version's p99.
        stable: Duration,
    },
}

/// The stable version of `weights` (the highest weight; ties: the lower version number) and
/// its canaries (every other version with a weight above 0), or `None` when no weight is above
/// 0.
pub fn split_roles(weights: &BTreeMap<u64, u32>) -> Option<(u64, Vec<u64>)> {
    // ascending versions: `max_by_key` keeps the last maximum, so compare on (weight, -version)
    let (&stable, _) = weights
        .iter()
        .filter(|(_, &w)| w > 0)
        .max_by_key(|(&v, &w)| (w, std::cmp::Reverse(v)))?;
    let canaries = weights
        .iter()
        .filter(|(&v, &w)| w > 0 && v != stable)
        .map(|(&v, _)| v)
        .collect();
    Some((stable, canaries))
}

/// Judges a canary against the stable version over the same window: nothing until both have
/// `min_requests`; then rollback when the canary's failure rate is above 0 and above the
/// stable's times `failure_ratio`, or its p99 above the stable's times `latency_ratio`.
pub fn judge(policy: &RollbackPolicy, stable: &WindowStats, canary: &WindowStats) -> Verdict {
    if stable.requests < policy.min_requests || canary.requests < policy.min_requests {
        return Verdict::Keep;
    }
    let (c, s) = (canary.failure_rate(), stable.failure_rate());
    if c > 0.0 && c > s * policy.failure_ratio {
        return Verdict::Failures {
            canary: c,
            stable: s,
        };
    }
    if let (Some(c), Some(s)) = (canary.p99, stable.p99) {
        if c.as_secs_f64() > s.as_secs_f64() * policy.latency_ratio {
            return Verdict::Latency {
                canary: c,
                stable: s,
            };
        }
    }
    Verdict::Keep
}

/// One snapshot of a version's counters.
struct Sample {
    at: Instant,
    success: u64,
    fail: u64,
    latency: Vec<u64>,
}

impl Sample {
    fn of(stats: &VersionStats, at: Instant) -> Self {
        Sample {
            at,
            success: stats.success.get().count,
            fail: stats.fail.get().count,
            latency: stats.latency.snapshot(),
        }
    }
}

/// The snapshots of one served version instance.
struct Ring {
    /// The statistics sampled: a reloaded version has new ones, and starts a new ring.
    stats: Arc<VersionStats>,
    samples: VecDeque<Sample>,
    /// The tick that last sampled it; rings not sampled in a tick are dropped.
    tick: u64,
}

/// The monitor's memory between ticks.
#[derive(Default)]
pub(crate) struct Monitor {
    rings: HashMap<(String, u64), Ring>,
    tick: u64,
}

impl Monitor {
    /// Samples `stats` of `model` `version` at `now`; its requests over the last `window` (or
    /// since it was first sampled, when that is more recent).
    fn observe(
        &mut self,
        model: &str,
        version: u64,
        stats: &Arc<VersionStats>,
        now: Instant,
        window: Duration,
    ) -> WindowStats {
        let ring = self
            .rings
            .entry((model.to_string(), version))
            .or_insert_with(|| Ring {
                stats: stats.clone(),
                samples: VecDeque::new(),
                tick: 0,
            });
        if !Arc::ptr_eq(&ring.stats, stats) {
            ring.stats = stats.clone();
            ring.samples.clear();
        }
        ring.tick = self.tick;
        if ring.tick_sampled(now) {
            ring.samples.push_back(Sample::of(stats, now));
        }
        // keep the newest sample at or before the window's start as the base
        let start = now.checked_sub(window).unwrap_or(now);
        while ring.samples.len() > 1 && ring.samples[1].at <= start {
            ring.samples.pop_front();
        }
        let (Some(base), Some(last)) = (ring.samples.front(), ring.samples.back()) else {
            return WindowStats::default();
        };
        let counts: Vec<u64> = last
            .latency
            .iter()
            .zip(&base.latency)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        WindowStats {
            requests: (last.success + last.fail).saturating_sub(base.success + base.fail),
            failures: last.fail.saturating_sub(base.fail),
            p99: LatencyHistogram::quantile(&counts, 0.99),
        }
    }
}

impl Ring {
    /// Whether `now` needs a new sample (not when the same version was sampled at `now`
    /// already, as a stable version judged against several canaries is).
    fn tick_sampled(&self, now: Instant) -> bool {
        self.samples.back().is_none_or(|s| s.at != now)
    }
}

impl ModelRepository {
    /// Starts the automatic rollback monitor (once per repository; later calls do nothing).
    /// It looks once a second at the models with traffic weights and a `[traffic_rollback]`
    /// policy, and ends when the repository is dropped.
    pub fn spawn_rollback_monitor(self: &Arc<Self>) {
        if self.routes().monitor.swap(true, Ordering::AcqRel) {
            return;
        }
        let repo = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut monitor = Monitor::default();
            loop {
                tick.tick().await;
                let Some(repo) = repo.upgrade() else { return };
                repo.check_rollbacks(&mut monitor, Instant::now());
            }
        });
    }

    /// One look of the rollback monitor at `now`.
    pub(crate) fn check_rollbacks(&self, monitor: &mut Monitor, now: Instant) {
        let watched = self.routes().watched();
        if watched.is_empty() {
            monitor.rings.clear();
            return;
        }
        monitor.tick += 1;
        let serving = self.serving();
        for (model, weights, policy) in watched {
            let Some((stable, canaries)) = split_roles(&weights.weights) else {
                continue;
            };
            let find = |v: u64| serving.iter().find(|s| s.name == model && s.version == v);
            let Some(sv) = find(stable).filter(|_| !canaries.is_empty()) else {
                continue;
            };
            let window = Duration::from_secs(policy.window_s);
            let s = monitor.observe(&model, stable, &sv.stats, now, window);
            // the weights as this look saw them, and as its own rollbacks leave them
            let mut judged = weights;
            for canary in canaries {
                let Some(cv) = find(canary) else { continue };
                let c = monitor.observe(&model, canary, &cv.stats, now, window);
                let verdict = judge(&policy, &s, &c);
                if verdict == Verdict::Keep {
                    continue;
                }
                let Some((old, new)) = self.routes().zero(&model, canary, &judged) else {
                    continue;
                };
                judged = new.clone();
                let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
                let reason = match verdict {
                    Verdict::Failures { .. } => "failure rate",
                    _ => "p99 latency",
                };
                tracing::warn!(
                    model = %model,
                    version = canary,
                    stable,
                    reason,
                    canary_requests = c.requests,
                    canary_failures = c.failures,
                    canary_failure_rate = c.failure_rate(),
                    canary_p99_ms = ms(c.p99),
                    stable_requests = s.requests,
                    stable_failures = s.failures,
                    stable_failure_rate = s.failure_rate(),
                    stable_p99_ms = ms(s.p99),
                    failure_ratio = policy.failure_ratio,
                    latency_ratio = policy.latency_ratio,
                    window_s = policy.window_s,
                    old = %shown(Some(&old)),
                    new = %new,
                    origin = ORIGIN_ROLLBACK,
                    "canary rolled back: traffic weight set to 0"
                );
                self.metrics().record_rollback(&model, canary);
            }
        }
        let tick = monitor.tick;
        monitor.rings.retain(|_, r| r.tick == tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RollbackPolicy {
        RollbackPolicy {
            failure_ratio: 2.0,
            latency_ratio: 2.0,
            window_s: 30,
            min_requests: 100,
        }
    }

    fn w(requests: u64, failures: u64, p99_ms: u64) -> WindowStats {
        WindowStats {
            requests,
            failures,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn roles_follow_the_weights() {
        let r = |w: &[(u64, u32)]| split_roles(&w.iter().copied().collect());
        assert_eq!(r(&[(1, 95), (2, 5)]), Some((1, vec![2])));
        assert_eq!(r(&[(1, 5), (2, 95)]), Some((2, vec![1])));
        // ties: the higher version is the canary
        assert_eq!(r(&[(1, 50), (2, 50)]), Some((1, vec![2])));
        assert_eq!(r(&[(1, 90), (2, 0), (3, 10)]), Some((1, vec![3])));
        assert_eq!(r(&[(1, 0), (2, 0)]), None);
        assert_eq!(r(&[(4, 7)]), Some((4, vec![])));
    }

    #[test]
    fn nothing_is_judged_below_min_requests() {
        let p = policy();
        assert_eq!(judge(&p, &w(99, 0, 1), &w(500, 500, 100)), Verdict::Keep);
        assert_eq!(judge(&p, &w(500, 0, 1), &w(99, 99, 100)), Verdict::Keep);
    }

    #[test]
    fn failure_rate_against_the_stable_one() {
        let p = policy();
        // stable 1%, canary 2%: not above 2x
        assert_eq!(judge(&p, &w(1000, 10, 5), &w(100, 2, 5)), Verdict::Keep);
        assert_eq!(
            judge(&p, &w(1000, 10, 5), &w(100, 3, 5)),
            Verdict::Failures {
                canary: 0.03,
                stable: 0.01
            }
        );
        // a clean stable version: any canary failure is above it
        assert!(matches!(
            judge(&p, &w(1000, 0, 5), &w(100, 1, 5)),
            Verdict::Failures { .. }
        ));
        // both clean
        assert_eq!(judge(&p, &w(1000, 0, 5), &w(100, 0, 5)), Verdict::Keep);
    }

    #[test]
    fn p99_against_the_stable_one() {
        let p = policy();
        assert_eq!(judge(&p, &w(1000, 0, 10), &w(100, 0, 20)), Verdict::Keep);
        assert_eq!(
            judge(&p, &w(1000, 0, 10), &w(100, 0, 21)),
            Verdict::Latency {
                canary: Duration::from_millis(21),
                stable: Duration::from_millis(10)
            }
        );
    }

    #[test]
    fn the_window_is_the_difference_of_its_ends() {
        let mut m = Monitor::default();
        let stats = Arc::new(VersionStats::default());
        let t0 = Instant::now();
        let window = Duration::from_secs(2);
        let at = |s: u64| t0 + Duration::from_secs(s);
        for _ in 0..50 {
            stats.record_request(false, Duration::from_millis(1));
        }
        assert_eq!(m.observe("m", 1, &stats, at(0), window).requests, 0);
        for _ in 0..10 {
            stats.record_request(true, Duration::from_millis(1));
        }
        let ws = m.observe("m", 1, &stats, at(1), window);
        assert_eq!((ws.requests, ws.failures), (10, 0));
        stats.record_request(false, Duration::from_millis(40));
        let ws = m.observe("m", 1, &stats, at(2), window);
        assert_eq!((ws.requests, ws.failures), (11, 1));
        // the same instant again (a stable version with two canaries) samples once
        assert_eq!(m.observe("m", 1, &stats, at(2), window), ws);
        // three seconds in: the first second has left the window
        let ws = m.observe("m", 1, &stats, at(3), window);
        assert_eq!((ws.requests, ws.failures), (1, 1));
        assert!(ws.p99.unwrap() >= Duration::from_millis(40), "{ws:?}");
        // a reloaded version (new statistics) starts over
        let fresh = Arc::new(VersionStats::default());
        assert_eq!(m.observe("m", 1, &fresh, at(4), window).requests, 0);
    }
}
