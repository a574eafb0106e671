//! Triton's trace extension over gRPC (`TraceSetting`), mapped onto the daemon's OpenTelemetry
//! tracing, so `tritonclient`'s `get_trace_settings` / `update_trace_settings` work unchanged:
//!
//! - `trace_rate` N: one trace in N requests, on average (the sampling ratio 1/N, decided per
//!   trace id); read back as the nearest whole N, or 0 when the ratio is 0.
//! - `trace_level`: `OFF` holds off new traces while export stays configured; `TIMESTAMPS` lets
//!   them start again. Spans carry timings and attributes, never tensors, so `TENSORS` is refused.
//! - `trace_count`: how many more traces may start (-1: no limit); read back as what is left.
//! - `trace_mode`: always `opentelemetry`.
//!
//! An empty value list resets a setting to its start-up value. Triton's own trace-file settings
//! (`trace_file`, `log_frequency`) do not apply: spans go to the OTLP endpoint. Settings are
//! global; a request naming a model reads them, and changing them for one model is refused.
//! Every change is checked before any is made, and needs trace export to be on.

use std::collections::HashMap;

use crate::error::Error;
use crate::telemetry::tracing;

use super::pb::{TraceSettingRequest, TraceSettingResponse, trace_setting_response};
use super::traffic::RequireToken;

/// Who may change trace and log settings through the inference service.
#[derive(Clone)]
pub enum Updates {
    /// Callers that present the management token, when one is configured.
    Token(RequireToken),
    /// Nobody: a management port is configured, and changes are made there
    /// (`switchyard.v1.Telemetry`), away from inference clients.
    ManagementPortOnly,
}

impl Updates {
    /// Whether a caller with this metadata may change `what` (e.g. "trace settings") here.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap, what: &str) -> Result<(), Error> {
        match self {
            Updates::Token(token) => token.check(metadata),
            Updates::ManagementPortOnly => Err(Error::PermissionDenied(format!(
                "{what} are read-only on the inference port while a management port is \
                 configured; change them there with switchyard.v1.Telemetry"
            ))),
        }
    }
}

const RATE: &str = "trace_rate";
const LEVEL: &str = "trace_level";
const COUNT: &str = "trace_count";
const MODE: &str = "trace_mode";
const MODE_VALUE: &str = "opentelemetry";

/// One checked change; `None` resets the setting to its start-up value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The sampling ratio.
    Ratio(Option<f64>),
    /// Whether new traces are held off.
    Paused(Option<bool>),
    /// How many more traces may start (negative: no limit).
    Count(Option<i64>),
}

/// Checks every requested setting; the changes to make, in a fixed order.
pub fn plan(settings: &HashMap<String, Vec<String>>) -> Result<Vec<Change>, Error> {
    let mut names: Vec<&String> = settings.keys().collect();
    names.sort();
    let mut changes = Vec::new();
    for name in names {
        let values = &settings[name];
        let change = match name.as_str() {
            RATE => Change::Ratio(single(name, values)?.map(rate).transpose()?),
            LEVEL => Change::Paused(level(values)?),
            COUNT => Change::Count(single(name, values)?.map(count).transpose()?),
            MODE => match single(name, values)? {
                None => continue,
                Some(mode) if mode.eq_ignore_ascii_case(MODE_VALUE) => continue,
                Some(mode) => {
                    return Err(Error::invalid(format!(
                        "trace_mode '{mode}' is not supported: this server traces with \
                         OpenTelemetry only (trace_mode 'opentelemetry')"
                    )));
                }
            },
            "trace_file" | "log_frequency" => {
                return Err(Error::invalid(format!(
                    "trace setting '{name}' belongs to Triton's own trace files; this server \
                     exports OpenTelemetry spans over OTLP (endpoint: --otlp-endpoint or \
                     switchyard.v1.Telemetry/SetTraceExporter)"
                )));
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown trace setting '{name}'; supported: {RATE}, {LEVEL}, {COUNT}, {MODE}"
                )));
            }
        };
        changes.push(change);
    }
    Ok(changes)
}

/// The one value of a single-valued setting, or `None` for an empty list (reset).
fn single<'a>(name: &str, values: &'a [String]) -> Result<Option<&'a str>, Error> {
    match values {
        [] => Ok(None),
        [value] => Ok(Some(value.trim())),
        _ => Err(Error::invalid(format!(
            "trace setting '{name}' takes one value, got {}: {values:?}",
            values.len()
        ))),
    }
}

fn rate(value: &str) -> Result<f64, Error> {
    match value.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(1.0 / n as f64),
        _ => Err(Error::invalid(format!(
            "trace_rate must be a whole number >= 1 (one trace in that many requests), got \
             '{value}'"
        ))),
    }
}

fn count(value: &str) -> Result<i64, Error> {
    match value.parse::<i64>() {
        Ok(n) if n >= -1 => Ok(n),
        _ => Err(Error::invalid(format!(
            "trace_count must be -1 (no limit) or a whole number >= 0, got '{value}'"
        ))),
    }
}

/// `Some(true)` for OFF, `Some(false)` for TIMESTAMPS, `None` for a reset.
fn level(values: &[String]) -> Result<Option<bool>, Error> {
    let mut off = false;
    let mut timestamps = false;
    for value in values {
        match value.trim().to_ascii_uppercase().as_str() {
            "OFF" => off = true,
            "TIMESTAMPS" => timestamps = true,
            "TENSORS" => {
                return Err(Error::invalid(
                    "trace_level TENSORS is not supported: spans carry timings and attributes, \
                     never tensor contents",
                ));
            }
            _ => {
                return Err(Error::invalid(format!(
                    "trace_level '{value}' is not a trace level; expected OFF or TIMESTAMPS"
                )));
            }
        }
    }
    match (off, timestamps) {
        (true, true) => Err(Error::invalid(
            "trace_level OFF cannot be combined with another level",
        )),
        (true, false) => Ok(Some(true)),
        (false, true) => Ok(Some(false)),
        (false, false) => Ok(None),
    }
}

/// Makes the checked changes.
pub fn apply(changes: &[Change]) -> Result<(), Error> {
    for change in changes {
        match *change {
            Change::Ratio(ratio) => {
                tracing::set_sampling_ratio(ratio.unwrap_or_else(tracing::start_sampling_ratio))?
            }
            Change::Paused(paused) => tracing::set_paused(paused.unwrap_or(false))?,
            Change::Count(count) => tracing::set_remaining_traces(count.unwrap_or(-1))?,
        }
    }
    Ok(())
}

/// The settings in effect, as Triton names them.
pub fn current() -> TraceSettingResponse {
    let ratio = tracing::sampling_ratio();
    let rate = if ratio > 0.0 {
        (1.0 / ratio).round() as u64
    } else {
        0
    };
    let level = if tracing::enabled() && !tracing::paused() {
        "TIMESTAMPS"
    } else {
        "OFF"
    };
    let settings = [
        (RATE, rate.to_string()),
        (LEVEL, level.to_string()),
        (COUNT, tracing::remaining_traces().to_string()),
        (MODE, MODE_VALUE.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| {
        let value = trace_setting_response::SettingValue { value: vec![value] };
        (name.to_string(), value)
    })
    .collect();
    TraceSettingResponse { settings }
}

/// The requested settings as plain lists of values.
pub fn requested(request: &TraceSettingRequest) -> HashMap<String, Vec<String>> {
    request
        .settings
        .iter()
        .map(|(name, value)| (name.clone(), value.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn settings(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn refused(pairs: &[(&str, &[&str])]) -> String {
        let err = plan(&settings(pairs)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        err.to_string()
    }

    #[test]
    fn triton_settings_become_changes_and_empty_lists_reset() {
        let changes = plan(&settings(&[
            ("trace_rate", &["4"]),
            ("trace_level", &["OFF"]),
            ("trace_count", &["-1"]),
            ("trace_mode", &["opentelemetry"]),
        ]))
        .unwrap();
        assert_eq!(
            changes,
            [
                Change::Count(Some(-1)),
                Change::Paused(Some(true)),
                Change::Ratio(Some(0.25)),
            ]
        );
        let changes = plan(&settings(&[
            ("trace_rate", &[]),
            ("trace_level", &["timestamps"]),
            ("trace_count", &["3"]),
        ]))
        .unwrap();
        assert_eq!(
            changes,
            [
                Change::Count(Some(3)),
                Change::Paused(Some(false)),
                Change::Ratio(None),
            ]
        );
        assert_eq!(
            plan(&settings(&[("trace_level", &[])])).unwrap(),
            [Change::Paused(None)]
        );
        assert!(plan(&HashMap::new()).unwrap().is_empty());
    }

    #[test]
    fn bad_settings_are_refused_naming_setting_and_value() {
        assert!(
            refused(&[("trace_rate", &["0"])]).contains("trace_rate must be a whole number >= 1")
        );
        assert!(refused(&[("trace_rate", &["0.5"])]).contains("got '0.5'"));
        assert!(refused(&[("trace_rate", &["2", "3"])]).contains("takes one value, got 2"));
        assert!(refused(&[("trace_count", &["-2"])]).contains("got '-2'"));
        assert!(refused(&[("trace_level", &["TENSORS"])]).contains("TENSORS is not supported"));
        assert!(refused(&[("trace_level", &["OFF", "TIMESTAMPS"])]).contains("cannot be combined"));
        assert!(refused(&[("trace_level", &["LOUD"])]).contains("'LOUD' is not a trace level"));
        assert!(refused(&[("trace_mode", &["triton"])]).contains("trace_mode 'triton'"));
        assert!(refused(&[("trace_file", &["/tmp/t.json"])]).contains("OTLP"));
        assert!(refused(&[("log_frequency", &["10"])]).contains("'log_frequency'"));
        assert!(
            refused(&[("trace_ratio", &["1"])]).contains("unknown trace setting 'trace_ratio'")
        );
        // One bad setting refuses the whole request: nothing is planned.
        assert!(
            refused(&[("trace_rate", &["2"]), ("trace_level", &["TENSORS"])]).contains("TENSORS")
        );
    }
}
