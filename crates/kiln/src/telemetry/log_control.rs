//! The log's run-time settings (Triton's logging extension): the level threshold and the
//! format, put in force by swapping the reloadable filters of the text and JSON logs.

use kiln_server::{LogControl, LogSettings};
use std::sync::Mutex;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Swaps one log's filter.
pub type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The handle the server reads and changes the log through.
pub struct LogHandle {
    /// The `--log` filter, kept while the level it allows is the one asked for, so that its
    /// per-target directives survive a format change.
    initial: String,
    /// The most verbose level `--log` allows.
    initial_level: LevelFilter,
    text: Reload,
    json: Reload,
    settings: Mutex<LogSettings>,
}

/// Triton's level flags for a threshold.
fn flags(level: LevelFilter) -> (bool, bool, bool, u32) {
    let on = |l: LevelFilter| level >= l;
    let verbose = if level >= LevelFilter::TRACE {
        2
    } else {
        u32::from(level >= LevelFilter::DEBUG)
    };
    (
        on(LevelFilter::INFO),
        on(LevelFilter::WARN),
        on(LevelFilter::ERROR),
        verbose,
    )
}

/// The threshold of checked settings (each level on only if the more severe ones are).
fn threshold(s: &LogSettings) -> LevelFilter {
    match (s.log_verbose_level, s.log_info, s.log_warning, s.log_error) {
        (v, _, _, _) if v >= 2 => LevelFilter::TRACE,
        (1, _, _, _) => LevelFilter::DEBUG,
        (_, true, _, _) => LevelFilter::INFO,
        (_, _, true, _) => LevelFilter::WARN,
        (_, _, _, true) => LevelFilter::ERROR,
        _ => LevelFilter::OFF,
    }
}

impl LogHandle {
    /// A handle over the logs installed with `--log` filter `initial`, JSON when `json`.
    pub fn new(initial: &str, json: bool, text: Reload, json_reload: Reload) -> LogHandle {
        let initial_level = EnvFilter::try_new(initial)
            .ok()
            .and_then(|f| f.max_level_hint())
            .unwrap_or(LevelFilter::INFO);
        let (log_info, log_warning, log_error, log_verbose_level) = flags(initial_level);
        LogHandle {
            initial: initial.to_string(),
            initial_level,
            text,
            json: json_reload,
            settings: Mutex::new(LogSettings {
                log_file: String::new(),
                log_info,
                log_warning,
                log_error,
                log_verbose_level,
                log_format: if json { "json" } else { "default" }.into(),
            }),
        }
    }

    /// The filter for a threshold: `--log` when it is the threshold it started with; Kiln's
    /// own crates more verbose than the rest for the verbose levels.
    fn filter(&self, level: LevelFilter) -> EnvFilter {
        let directive = if level == self.initial_level {
            self.initial.clone()
        } else if level > LevelFilter::INFO {
            format!("info,kiln={level}")
        } else {
            level.to_string()
        };
        EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
    }
}

impl LogControl for LogHandle {
    fn get(&self) -> LogSettings {
        self.settings.lock().expect("log settings lock").clone()
    }

    fn set(&self, s: &LogSettings) -> Result<(), String> {
        let mut current = self.settings.lock().expect("log settings lock");
        let on = self.filter(threshold(s));
        let off = EnvFilter::new("off");
        if s.log_format == "json" {
            (self.text)(off)?;
            (self.json)(on)?;
        } else {
            (self.json)(off)?;
            (self.text)(on)?;
        }
        *current = s.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_flags_agree() {
        for l in [
            LevelFilter::OFF,
            LevelFilter::ERROR,
            LevelFilter::WARN,
            LevelFilter::INFO,
            LevelFilter::DEBUG,
            LevelFilter::TRACE,
        ] {
            let (log_info, log_warning, log_error, log_verbose_level) = flags(l);
            let s = LogSettings {
                log_file: String::new(),
                log_info,
                log_warning,
                log_error,
                log_verbose_level,
                log_format: "default".into(),
            };
            assert_eq!(threshold(&s), l);
        }
    }
}
