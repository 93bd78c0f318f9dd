//! The checks of a [`LearnConfig`]'s values on their own (not against the model).

use super::LearnConfig;
use crate::error::Result;

impl LearnConfig {
    /// Checks the values on their own (not against the model).
    pub fn check_values(&self) -> Result<()> {
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !ok_name(&self.name) {
            return Err(self.err(
                "name",
                format!("'{}' must be non-empty, of A-Z a-z 0-9 . _ -", self.name),
            ));
        }
        let s = &self.sources;
        match (s.jsonl.is_empty(), &s.kafka) {
            (true, None) => {
                return Err(self.err("sources", "give jsonl = [...] or [sources.kafka]"))
            }
            (false, Some(_)) => return Err(self.err("sources", "give jsonl or kafka, not both")),
            _ => {}
        }
        if s.jsonl.iter().filter(|p| *p == "-").count() > 1 {
            return Err(self.err("sources.jsonl", "stdin (\"-\") can be read once"));
        }
        if let Some(k) = &s.kafka {
            for (f, v) in [
                ("brokers", &k.brokers),
                ("impressions_topic", &k.impressions_topic),
                ("actions_topic", &k.actions_topic),
                ("group_id", &k.group_id),
            ] {
                if v.is_empty() {
                    return Err(self.err(&format!("sources.kafka.{f}"), "must not be empty"));
                }
            }
            if k.impressions_topic == k.actions_topic {
                return Err(self.err(
                    "sources.kafka.actions_topic",
                    "must differ from impressions_topic",
                ));
            }
        }
        if self.labels.positive.is_empty() || self.labels.positive.iter().any(|p| p.is_empty()) {
            return Err(self.err("labels.positive", "name at least one action, none empty"));
        }
        if self.join.window_ms == 0 {
            return Err(self.err("join.window_ms", "must be at least 1"));
        }
        if self.join.memory_cap_bytes == 0 {
            return Err(self.err("join.memory_cap_bytes", "must be at least 1"));
        }
        let f = &self.trainer.ftrl;
        let pos = |v: f64| v.is_finite() && v > 0.0;
        let nonneg = |v: f64| v.is_finite() && v >= 0.0;
        for (name, v, good, want) in [
            ("alpha", f.alpha, pos(f.alpha), "> 0"),
            ("beta", f.beta, pos(f.beta), "> 0"),
            ("l1", f.l1, nonneg(f.l1), ">= 0"),
            ("l2", f.l2, nonneg(f.l2), ">= 0"),
        ] {
            if !good {
                return Err(self.err(
                    &format!("trainer.ftrl.{name}"),
                    format!("{v} must be finite and {want}"),
                ));
            }
        }
        let d = &self.trainer.deep;
        for (name, v) in [("lr", d.lr), ("embedding_lr", d.embedding_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(self.err(
                    &format!("trainer.deep.{name}"),
                    format!("{v} must be finite and > 0"),
                ));
            }
        }
        if d.batch_size == 0 {
            return Err(self.err("trainer.deep.batch_size", "must be at least 1"));
        }
        if d.ttl_s == Some(0) {
            return Err(self.err("trainer.deep.ttl_s", "must be at least 1 (or unset)"));
        }
        let p = &self.publish;
        for (name, zero) in [
            ("interval_ms", p.interval_ms == 0),
            ("max_rows", p.max_rows == 0),
            ("snapshot_interval_s", p.snapshot_interval_s == 0),
            (
                "dense_version_interval_s",
                p.dense_version_interval_s == Some(0),
            ),
        ] {
            if zero {
                return Err(self.err(&format!("publish.{name}"), "must be at least 1"));
            }
        }
        if let Some(k) = &p.kafka {
            if k.brokers.is_empty() {
                return Err(self.err("publish.kafka.brokers", "must not be empty"));
            }
        }
        for (i, e) in p.endpoints.iter().enumerate() {
            let known = ["http://", "https://", "grpc://"];
            if !known.iter().any(|s| e.url.starts_with(s)) {
                return Err(self.err(
                    &format!("publish.endpoints[{i}].url"),
                    format!("'{}' must start with http://, https:// or grpc://", e.url),
                ));
            }
        }
        if self.checkpoint.interval_s == 0 {
            return Err(self.err("checkpoint.interval_s", "must be at least 1"));
        }
        Ok(())
    }
}
