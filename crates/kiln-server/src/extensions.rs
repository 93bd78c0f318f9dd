//! State of Triton's logging and trace extensions, shared by the HTTP and gRPC front ends
//! (`http/extensions.rs`, `grpc/extensions.rs`), and the CUDA shared-memory answers of a server
//! without a GPU.
//!
//! The log itself belongs to the process (one tracing subscriber, built by the binary), so the
//! server reaches it through a [`LogControl`] handle the binary installs with
//! [`crate::Assembled::set_log_control`]. Trace settings decide, per request, whether its
//! `request` span is created at all ([`TraceSettings::sample`]): a request not sampled runs
//! under no span, so nothing of it is exported.

use kiln_core::{Error, ErrorCode, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Triton's log settings (`GET /v2/logging`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Where the log goes; empty = standard error, the only destination Kiln writes to.
    pub log_file: String,
    /// Whether info messages are logged.
    pub log_info: bool,
    /// Whether warnings are logged.
    pub log_warning: bool,
    /// Whether errors are logged.
    pub log_error: bool,
    /// 0 = no verbose log; 1 = debug messages; 2 and more = trace messages.
    pub log_verbose_level: u32,
    /// `default` or `ISO8601` (both the text log, whose timestamps are ISO 8601), or `json`.
    pub log_format: String,
}

/// The process's log, as the binary exposes it to the server.
pub trait LogControl: Send + Sync {
    /// The settings in force.
    fn get(&self) -> LogSettings;
    /// Puts `settings` in force (already checked by `check_log_settings`); the error says why
    /// they cannot be.
    fn set(&self, settings: &LogSettings) -> std::result::Result<(), String>;
}

/// Log formats accepted in `log_format`.
pub const LOG_FORMATS: &[&str] = &["default", "ISO8601", "json"];

/// Refuses settings Kiln's log cannot honour, naming the field.
pub fn check_log_settings(s: &LogSettings) -> Result<()> {
    let bad = |m: String| Err(Error::new(ErrorCode::InvalidArgument, m));
    if !s.log_file.is_empty() {
        return bad(format!(
            "log_file '{}': Kiln logs to standard error only; redirect it instead",
            s.log_file
        ));
    }
    if !LOG_FORMATS.contains(&s.log_format.as_str()) {
        return bad(format!(
            "log_format '{}': expected one of {}",
            s.log_format,
            LOG_FORMATS.join(", ")
        ));
    }
    // the log is filtered by a level threshold: a level is on only if every more severe one is
    if s.log_info && !s.log_warning {
        return bad(
            "log_warning: cannot be off while log_info is on (the log is filtered by level)".into(),
        );
    }
    if (s.log_info || s.log_warning) && !s.log_error {
        return bad("log_error: cannot be off while log_info or log_warning is on (the log is filtered by level)".into());
    }
    if s.log_verbose_level > 0 && !s.log_info {
        return bad("log_verbose_level: cannot be above 0 while log_info is off (the log is filtered by level)".into());
    }
    Ok(())
}

/// One scope of trace settings (server-wide, or a model's overrides).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceFields {
    /// `OFF`, or any of `TIMESTAMPS`, `TENSORS`.
    pub level: Option<Vec<String>>,
    /// One request in `rate` is traced.
    pub rate: Option<u64>,
    /// Traces left; -1 = no limit.
    pub count: Option<i64>,
    /// Traces per flush of the trace log (kept for clients; spans leave through the OTLP batch
    /// exporter, which flushes on its own schedule).
    pub log_frequency: Option<u64>,
}

/// The trace settings of one scope, every field resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// See [`TraceFields::level`].
    pub level: Vec<String>,
    /// See [`TraceFields::rate`].
    pub rate: u64,
    /// Traces left in this scope; -1 = no limit.
    pub count: i64,
    /// See [`TraceFields::log_frequency`].
    pub log_frequency: u64,
}

impl Trace {
    /// Kiln's defaults: every request traced (its span exported when the server exports spans,
    /// `--otlp-endpoint`), no limit.
    pub fn defaults() -> Trace {
        Trace {
            level: vec!["TIMESTAMPS".into()],
            rate: 1,
            count: -1,
            log_frequency: 0,
        }
    }

    /// Whether tracing is off (`trace_level` `OFF` or empty).
    pub fn off(&self) -> bool {
        self.level.is_empty() || self.level.iter().any(|l| l == "OFF")
    }
}

/// A scope's settings plus its sampling counter.
#[derive(Debug)]
struct Scope {
    /// Fields set in this scope (for a model: its overrides).
    set: TraceFields,
    /// Requests seen since the rate last changed.
    seen: u64,
    /// Traces left, when `count` was set in this scope.
    left: Option<i64>,
}

impl Scope {
    fn new(set: TraceFields) -> Scope {
        let left = set.count;
        Scope { set, seen: 0, left }
    }
}

/// Server-wide and per-model trace settings, with Triton's semantics: a model follows the
/// server-wide value of every field it does not override; a model with overrides samples and
/// counts on its own.
#[derive(Debug)]
pub struct TraceSettings {
    global: Mutex<Scope>,
    models: Mutex<HashMap<String, Scope>>,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            global: Mutex::new(Scope::new(TraceFields::default())),
            models: Mutex::new(HashMap::new()),
        }
    }
}

fn resolve(model: Option<&TraceFields>, global: &TraceFields, global_left: Option<i64>) -> Trace {
    let d = Trace::defaults();
    Trace {
        level: model
            .and_then(|m| m.level.clone())
            .or_else(|| global.level.clone())
            .unwrap_or(d.level),
        rate: model.and_then(|m| m.rate).or(global.rate).unwrap_or(d.rate),
        count: model
            .and_then(|m| m.count)
            .or(global_left)
            .unwrap_or(d.count),
        log_frequency: model
            .and_then(|m| m.log_frequency)
            .or(global.log_frequency)
            .unwrap_or(d.log_frequency),
    }
}

impl TraceSettings {
    /// The settings in force for `model` (`None`: server-wide).
    pub fn get(&self, model: Option<&str>) -> Trace {
        let g = self.global.lock().expect("trace settings lock");
        let models = self.models.lock().expect("trace settings lock");
        match model.and_then(|m| models.get(m)) {
            Some(s) => {
                let mut t = resolve(Some(&s.set), &g.set, g.left);
                if let Some(left) = s.left {
                    t.count = left;
                }
                t
            }
            None => resolve(None, &g.set, g.left),
        }
    }

    /// Applies an update to `model`'s scope (`None`: server-wide). `set` holds the fields
    /// given; `clear` the fields given as `null`, which return to the server-wide value (for a
    /// model) or to the default (server-wide). Returns the settings now in force.
    pub fn update(&self, model: Option<&str>, set: TraceFields, clear: TraceFields) -> Trace {
        {
            let mut g = self.global.lock().expect("trace settings lock");
            let mut models = self.models.lock().expect("trace settings lock");
            let scope = match model {
                None => &mut *g,
                Some(m) => models
                    .entry(m.to_string())
                    .or_insert_with(|| Scope::new(TraceFields::default())),
            };
            apply(scope, set, clear);
            if let Some(m) = model {
                if models
                    .get(m)
                    .is_some_and(|s| s.set == TraceFields::default())
                {
                    models.remove(m);
                }
            }
        }
        self.get(model)
    }

    /// Whether a request to `model` is traced: its scope's level is not `OFF`, it is the first
    /// of each `rate` requests, and the scope has traces left (each traced request uses one).
    pub fn sample(&self, model: &str) -> bool {
        let mut g = self.global.lock().expect("trace settings lock");
        let mut models = self.models.lock().expect("trace settings lock");
        let g = &mut *g;
        let own = models.get_mut(model);
        let trace = resolve(own.as_deref().map(|s| &s.set), &g.set, None);
        if trace.off() {
            return false;
        }
        // a model with overrides samples on its own; without its own count it draws on the
        // server-wide one
        let (seen, left) = match own {
            Some(s) if s.left.is_some() => (&mut s.seen, &mut s.left),
            Some(s) => (&mut s.seen, &mut g.left),
            None => (&mut g.seen, &mut g.left),
        };
        let first_of_rate = *seen % trace.rate.max(1) == 0;
        *seen = seen.wrapping_add(1);
        if !first_of_rate {
            return false;
        }
        match left {
            Some(0) => false,
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => true,
        }
    }
}

fn apply(scope: &mut Scope, set: TraceFields, clear: TraceFields) {
    if clear.level.is_some() {
        scope.set.level = None;
    }
    if clear.rate.is_some() {
        scope.set.rate = None;
    }
    if clear.count.is_some() {
        scope.set.count = None;
        scope.left = None;
    }
    if clear.log_frequency.is_some() {
        scope.set.log_frequency = None;
    }
    if set.level.is_some() {
        scope.set.level = set.level;
    }
    if set.rate.is_some() {
        scope.set.rate = set.rate;
        scope.seen = 0;
    }
    if set.count.is_some() {
        scope.set.count = set.count;
        scope.left = set.count;
    }
    if set.log_frequency.is_some() {
        scope.set.log_frequency = set.log_frequency;
    }
}

/// Trace levels Triton accepts.
pub const TRACE_LEVELS: &[&str] = &["OFF", "TIMESTAMPS", "TENSORS"];

/// Parses one trace setting given as text (both protocols carry them as strings) into `f`.
pub fn parse_trace_field(f: &mut TraceFields, key: &str, values: &[String]) -> Result<()> {
    let bad = |m: String| Err(Error::new(ErrorCode::InvalidArgument, m));
    let one = || match values {
        [v] => Ok(v.trim()),
        _ => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{key}: expected one value, got {}", values.len()),
        )),
    };
    match key {
        "trace_level" => {
            for v in values {
                if !TRACE_LEVELS.contains(&v.as_str()) {
                    return bad(format!(
                        "trace_level '{v}': expected OFF, TIMESTAMPS or TENSORS"
                    ));
                }
            }
            if values.is_empty() {
                return bad("trace_level: expected at least one level".into());
            }
            f.level = Some(values.to_vec());
        }
        "trace_rate" => {
            let v = one()?;
            match v.parse::<u64>() {
                Ok(n) if n > 0 => f.rate = Some(n),
                _ => return bad(format!("trace_rate '{v}': expected a whole number above 0")),
            }
        }
        "trace_count" => {
            let v = one()?;
            match v.parse::<i64>() {
                Ok(n) if n >= -1 => f.count = Some(n),
                _ => return bad(format!("trace_count '{v}': expected -1 (no limit) or a whole number")),
            }
        }
        "log_frequency" => {
            let v = one()?;
            match v.parse::<u64>() {
                Ok(n) => f.log_frequency = Some(n),
                _ => return bad(format!("log_frequency '{v}': expected a whole number")),
            }
        }
        "trace_file" => {
            return bad("trace_file: the trace file can not be updated through the network protocol; Kiln exports spans over OTLP (--otlp-endpoint)".into())
        }
        "trace_mode" => {
            let v = one()?;
            if v != "opentelemetry" {
                return bad(format!("trace_mode '{v}': Kiln traces through OpenTelemetry only"));
            }
        }
        other => return bad(format!("unknown trace setting '{other}'")),
    }
    Ok(())
}

/// A trace scope's settings as Triton renders them: every value a list of strings.
pub fn trace_entries(t: &Trace) -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("trace_level", t.level.clone()),
        ("trace_rate", vec![t.rate.to_string()]),
        ("trace_count", vec![t.count.to_string()]),
        ("log_frequency", vec![t.log_frequency.to_string()]),
        ("trace_file", vec![String::new()]),
        ("trace_mode", vec!["opentelemetry".into()]),
    ]
}

/// The extensions' server state.
#[derive(Default)]
pub struct Extensions {
    /// The process's log, once the binary installs it.
    pub log: OnceLock<Arc<dyn LogControl>>,
    /// Trace settings.
    pub trace: TraceSettings,
}

impl Extensions {
    /// The log handle, or the error saying there is none.
    pub fn log(&self) -> Result<&Arc<dyn LogControl>> {
        self.log.get().ok_or_else(|| {
            Error::new(
                ErrorCode::Unavailable,
                "log settings are not available: this server was started without a log handle",
            )
        })
    }
}

/// Whether a request to `model` gets its `request` span: only asked (and counted) when a
/// subscriber listens to debug spans at all, so it costs two atomic loads otherwise.
pub fn traced(st: &crate::state::AppState, model: &str) -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG) && st.extensions.trace.sample(model)
}

/// Refusal of CUDA shared-memory registration on a server without a GPU.
pub fn cuda_register_refused(name: &str) -> Error {
    Error::new(
        ErrorCode::Unsupported,
        format!(
            "failed to register CUDA shared memory region '{name}': this server has no GPU; \
             use system shared memory instead"
        ),
    )
}

/// The answer for a named CUDA region's status: none is ever registered.
pub fn cuda_region_unknown(name: &str) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("Unable to find cuda shared memory region: '{name}'"),
    )
}

#[cfg(test)]
#[path = "extensions_tests.rs"]
mod tests;
