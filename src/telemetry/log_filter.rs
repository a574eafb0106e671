//! What the log layer prints, changeable while the daemon runs.
//!
//! Three parts decide whether a log line is printed:
//! - the directives: `RUST_LOG` or `--log-filter` at start-up (the `EnvFilter` syntax, levels per
//!   module), replaceable at run time;
//! - Triton's level switches: `error`, `warning` and `info` lines can each be turned off;
//! - Triton's verbose level: 1 adds the daemon's own `debug` lines, 2 and above its `trace`
//!   lines, whatever the directives say (dependencies stay as the directives have them).
//!
//! A change swaps the whole filter (tracing-subscriber's reload layer) and rebuilds the callsite
//! interest cache, so a line that no filter wants still costs one comparison. Changes are made
//! through Triton's `LogSettings` and `switchyard.v1.Telemetry/SetLogging`.

use std::sync::{Mutex, OnceLock};

use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber, span};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::error::Error;

/// The module whose lines the verbose level adds.
const OWN_CRATE: &str = "switchyard";

/// The settings behind the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `EnvFilter` directives, e.g. `info,switchyard::scheduler=debug`.
    pub directives: String,
    pub error: bool,
    pub warning: bool,
    pub info: bool,
    /// 0: off; 1: the daemon's `debug` lines; 2 and above: its `trace` lines too.
    pub verbose: u32,
}

impl LogSettings {
    /// Every level switch on, not verbose.
    pub fn new(directives: &str) -> LogSettings {
        LogSettings {
            directives: directives.to_string(),
            error: true,
            warning: true,
            info: true,
            verbose: 0,
        }
    }

    fn level_on(&self, level: &Level) -> bool {
        match *level {
            Level::ERROR => self.error,
            Level::WARN => self.warning,
            Level::INFO => self.info,
            _ => true,
        }
    }
}

/// The log layer's filter for one [`LogSettings`].
#[derive(Debug)]
pub struct LogFilter {
    settings: LogSettings,
    directives: EnvFilter,
    verbose: Option<EnvFilter>,
}

impl LogFilter {
    /// The filter for `settings`; INVALID_ARGUMENT, with the parser's reason, for directives
    /// that do not parse.
    pub fn new(settings: LogSettings) -> Result<LogFilter, Error> {
        let directives = EnvFilter::try_new(&settings.directives).map_err(|e| {
            Error::invalid(format!(
                "log filter '{}' is not valid: {e}",
                settings.directives
            ))
        })?;
        let verbose = match settings.verbose {
            0 => None,
            1 => Some(EnvFilter::new(format!("{OWN_CRATE}=debug"))),
            _ => Some(EnvFilter::new(format!("{OWN_CRATE}=trace"))),
        };
        Ok(LogFilter {
            settings,
            directives,
            verbose,
        })
    }

    /// The filter for `directives` as given at start-up; where they do not parse, the
    /// `EnvFilter` default (errors only), as `RUST_LOG` has always been read.
    pub fn at_start(directives: &str) -> LogFilter {
        LogFilter::new(LogSettings::new(directives)).unwrap_or_else(|_| LogFilter {
            settings: LogSettings::new(directives),
            directives: EnvFilter::new(directives),
            verbose: None,
        })
    }

    pub fn settings(&self) -> &LogSettings {
        &self.settings
    }
}

fn either(a: Interest, b: Interest) -> Interest {
    if a.is_always() || b.is_always() {
        Interest::always()
    } else if a.is_never() && b.is_never() {
        Interest::never()
    } else {
        Interest::sometimes()
    }
}

impl<S> Filter<S> for LogFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.settings.level_on(meta.level())
            && (Filter::<S>::enabled(&self.directives, meta, cx)
                || self
                    .verbose
                    .as_ref()
                    .is_some_and(|v| Filter::<S>::enabled(v, meta, cx)))
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if !self.settings.level_on(meta.level()) {
            return Interest::never();
        }
        let directives = Filter::<S>::callsite_enabled(&self.directives, meta);
        match &self.verbose {
            Some(verbose) => either(directives, Filter::<S>::callsite_enabled(verbose, meta)),
            None => directives,
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let directives = Filter::<S>::max_level_hint(&self.directives)?;
        match &self.verbose {
            Some(verbose) => Some(directives.max(Filter::<S>::max_level_hint(verbose)?)),
            None => Some(directives),
        }
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_new_span(&self.directives, attrs, id, cx.clone());
        if let Some(verbose) = &self.verbose {
            Filter::<S>::on_new_span(verbose, attrs, id, cx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        Filter::<S>::on_record(&self.directives, id, values, cx.clone());
        if let Some(verbose) = &self.verbose {
            Filter::<S>::on_record(verbose, id, values, cx);
        }
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_enter(&self.directives, id, cx.clone());
        if let Some(verbose) = &self.verbose {
            Filter::<S>::on_enter(verbose, id, cx);
        }
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_exit(&self.directives, id, cx.clone());
        if let Some(verbose) = &self.verbose {
            Filter::<S>::on_exit(verbose, id, cx);
        }
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_close(&self.directives, id.clone(), cx.clone());
        if let Some(verbose) = &self.verbose {
            Filter::<S>::on_close(verbose, id, cx);
        }
    }
}

/// The running log filter, once the subscriber is installed.
struct Installed {
    handle: reload::Handle<LogFilter, Registry>,
    /// The directives the daemon started with (what an empty filter goes back to).
    start: String,
    /// Serialises changes (read, check, swap).
    changing: Mutex<()>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Makes the filter behind `handle` the one [`current`] and [`change`] act on (the first call
/// wins).
pub(crate) fn install(handle: reload::Handle<LogFilter, Registry>, start: &str) {
    let _ = INSTALLED.set(Installed {
        handle,
        start: start.to_string(),
        changing: Mutex::new(()),
    });
}

fn installed() -> Result<&'static Installed, Error> {
    INSTALLED.get().ok_or_else(|| {
        Error::FailedPrecondition("the log subscriber is not installed in this process".into())
    })
}

/// The log settings in effect.
pub fn current() -> Result<LogSettings, Error> {
    installed()?
        .handle
        .with_current(|f| f.settings().clone())
        .map_err(|e| Error::Unavailable(format!("reading the log filter: {e}")))
}

/// What to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogChange {
    /// New directives; an empty string goes back to the start-up directives.
    pub directives: Option<String>,
    pub error: Option<bool>,
    pub warning: Option<bool>,
    pub info: Option<bool>,
    pub verbose: Option<u32>,
}

impl LogChange {
    /// `settings` with this change made.
    pub fn applied_to(&self, settings: &LogSettings, start: &str) -> LogSettings {
        let mut next = settings.clone();
        if let Some(directives) = &self.directives {
            let directives = directives.trim();
            next.directives = if directives.is_empty() {
                start.to_string()
            } else {
                directives.to_string()
            };
        }
        next.error = self.error.unwrap_or(next.error);
        next.warning = self.warning.unwrap_or(next.warning);
        next.info = self.info.unwrap_or(next.info);
        next.verbose = self.verbose.unwrap_or(next.verbose);
        next
    }
}

/// Makes `change`, or nothing if any part of it is invalid; returns the settings now in effect.
pub fn change(change: &LogChange) -> Result<LogSettings, Error> {
    let installed = installed()?;
    let _changing = installed.changing.lock().unwrap_or_else(|e| e.into_inner());
    let next = change.applied_to(&current()?, &installed.start);
    let filter = LogFilter::new(next.clone())?;
    installed
        .handle
        .reload(filter)
        .map_err(|e| Error::Unavailable(format!("changing the log filter: {e}")))?;
    tracing::info!(
        filter = %next.directives,
        error = next.error,
        warning = next.warning,
        info = next.info,
        verbose = next.verbose,
        "log settings changed"
    );
    Ok(next)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Runs `emit` under a subscriber whose one layer prints through `settings`' filter; the
    /// lines printed, as `LEVEL target message`.
    fn printed(settings: LogSettings, emit: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(LogFilter::new(settings).unwrap());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    fn emit() {
        tracing::error!(target: "switchyard::a", "e");
        tracing::warn!(target: "switchyard::a", "w");
        tracing::info!(target: "switchyard::a", "i");
        tracing::debug!(target: "switchyard::a", "d");
        tracing::trace!(target: "switchyard::a", "t");
        tracing::debug!(target: "h2::codec", "dep");
    }

    #[test]
    fn directives_pick_lines_and_switches_turn_levels_off() {
        assert_eq!(
            printed(LogSettings::new("info"), emit),
            [
                "ERROR switchyard::a: e",
                "WARN switchyard::a: w",
                "INFO switchyard::a: i"
            ]
        );
        let quiet = LogSettings {
            info: false,
            warning: false,
            ..LogSettings::new("debug")
        };
        assert_eq!(
            printed(quiet, emit),
            [
                "ERROR switchyard::a: e",
                "DEBUG switchyard::a: d",
                "DEBUG h2::codec: dep"
            ]
        );
    }

    #[test]
    fn the_verbose_level_adds_the_daemons_own_lines_only() {
        let verbose = |verbose| LogSettings {
            verbose,
            ..LogSettings::new("warn")
        };
        assert_eq!(
            printed(verbose(1), emit),
            [
                "ERROR switchyard::a: e",
                "WARN switchyard::a: w",
                "INFO switchyard::a: i",
                "DEBUG switchyard::a: d"
            ]
        );
        assert_eq!(printed(verbose(2), emit).len(), 5);
        assert!(!printed(verbose(5), emit).iter().any(|l| l.contains("h2")));
    }

    #[test]
    fn bad_directives_are_refused_with_the_parsers_reason() {
        let err = LogFilter::new(LogSettings::new("switchyard=loud")).unwrap_err();
        assert_eq!(err.code(), crate::error::Code::InvalidArgument);
        assert!(
            err.to_string()
                .contains("log filter 'switchyard=loud' is not valid"),
            "{err}"
        );
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name_and_empty_directives_go_back_to_the_start() {
        let now = LogSettings {
            info: false,
            ..LogSettings::new("debug")
        };
        let next = LogChange {
            directives: Some(" ".into()),
            verbose: Some(2),
            ..LogChange::default()
        }
        .applied_to(&now, "info");
        assert_eq!(
            next,
            LogSettings {
                directives: "info".into(),
                info: false,
                verbose: 2,
                ..LogSettings::new("info")
            }
        );
    }
}
