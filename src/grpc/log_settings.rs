//! Triton's logging extension over gRPC (`LogSettings`), mapped onto the daemon's log filter
//! (`telemetry::log_filter`), so `tritonclient`'s `get_log_settings` / `update_log_settings`
//! work unchanged:
//!
//! - `log_info`, `log_warning`, `log_error` (bool): print lines at that level, or not;
//! - `log_verbose_level` (uint32): 0 off; 1 adds the daemon's `debug` lines, 2 and above its
//!   `trace` lines too;
//! - `log_format`: always `ISO8601` (lines carry RFC 3339 timestamps, as text or JSON per
//!   `--log-format`); Triton's `default` (glog) format is refused;
//! - `log_file`: always empty: logs go to standard output, and naming a file is refused.
//!
//! Every setting is checked before any is changed. Changing needs what changing trace settings
//! needs (the management token; on the management port only, when there is one).

use std::collections::HashMap;

use crate::error::Error;
use crate::telemetry::log_filter::{LogChange, LogSettings};

use super::pb::LogSettingsResponse;
use super::pb::log_settings_request::SettingValue as RequestedValue;
use super::pb::log_settings_request::setting_value::ParameterChoice as Requested;
use super::pb::log_settings_response::SettingValue;
use super::pb::log_settings_response::setting_value::ParameterChoice;

const FILE: &str = "log_file";
const INFO: &str = "log_info";
const WARNING: &str = "log_warning";
const ERROR: &str = "log_error";
const VERBOSE: &str = "log_verbose_level";
const FORMAT: &str = "log_format";
const FORMAT_VALUE: &str = "ISO8601";

const NAMES: [&str; 6] = [FILE, INFO, WARNING, ERROR, VERBOSE, FORMAT];

fn kind(value: &Requested) -> String {
    match value {
        Requested::BoolParam(b) => format!("bool {b}"),
        Requested::Uint32Param(n) => format!("uint32 {n}"),
        Requested::StringParam(s) => format!("string {s:?}"),
    }
}

/// Checks every requested setting; the change to make.
pub fn plan(settings: &HashMap<String, RequestedValue>) -> Result<LogChange, Error> {
    let mut names: Vec<&String> = settings.keys().collect();
    names.sort();
    let mut change = LogChange::default();
    for name in names {
        let value = settings[name]
            .parameter_choice
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("log setting '{name}' has no value")))?;
        let expected = |what: &str| {
            Error::invalid(format!(
                "log setting '{name}' takes a {what}, got {}",
                kind(value)
            ))
        };
        let switch = |slot: &mut Option<bool>| match value {
            Requested::BoolParam(on) => {
                *slot = Some(*on);
                Ok(())
            }
            _ => Err(expected("bool")),
        };
        match name.as_str() {
            INFO => switch(&mut change.info)?,
            WARNING => switch(&mut change.warning)?,
            ERROR => switch(&mut change.error)?,
            VERBOSE => match value {
                Requested::Uint32Param(level) => change.verbose = Some(*level),
                _ => return Err(expected("uint32")),
            },
            FORMAT => match value {
                Requested::StringParam(format) if format.eq_ignore_ascii_case(FORMAT_VALUE) => {}
                Requested::StringParam(format) => {
                    return Err(Error::invalid(format!(
                        "log format '{format}' is not available: lines carry ISO 8601 (RFC 3339) \
                         timestamps, as text or JSON (--log-format); log_format is '{FORMAT_VALUE}'"
                    )));
                }
                _ => return Err(expected("string")),
            },
            FILE => match value {
                Requested::StringParam(file) if file.is_empty() => {}
                Requested::StringParam(file) => {
                    return Err(Error::invalid(format!(
                        "log_file '{file}' is not supported: logs go to standard output; \
                         redirect it, or collect the container's output"
                    )));
                }
                _ => return Err(expected("string")),
            },
            _ => {
                return Err(Error::invalid(format!(
                    "unknown log setting '{name}' (known: {})",
                    NAMES.join(", ")
                )));
            }
        }
    }
    Ok(change)
}

/// The settings as Triton reports them.
pub fn response(settings: &LogSettings) -> LogSettingsResponse {
    let value = |choice| SettingValue {
        parameter_choice: Some(choice),
    };
    let entries = [
        (FILE, ParameterChoice::StringParam(String::new())),
        (INFO, ParameterChoice::BoolParam(settings.info)),
        (WARNING, ParameterChoice::BoolParam(settings.warning)),
        (ERROR, ParameterChoice::BoolParam(settings.error)),
        (VERBOSE, ParameterChoice::Uint32Param(settings.verbose)),
        (FORMAT, ParameterChoice::StringParam(FORMAT_VALUE.into())),
    ];
    LogSettingsResponse {
        settings: entries
            .into_iter()
            .map(|(name, choice)| (name.to_string(), value(choice)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(entries: &[(&str, Requested)]) -> HashMap<String, RequestedValue> {
        entries
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    RequestedValue {
                        parameter_choice: Some(value.clone()),
                    },
                )
            })
            .collect()
    }

    fn refused(entries: &[(&str, Requested)]) -> String {
        let err = plan(&request(entries)).unwrap_err();
        assert_eq!(err.code(), crate::error::Code::InvalidArgument);
        err.to_string()
    }

    #[test]
    fn settings_become_one_change() {
        let change = plan(&request(&[
            (INFO, Requested::BoolParam(false)),
            (ERROR, Requested::BoolParam(true)),
            (VERBOSE, Requested::Uint32Param(2)),
            (FORMAT, Requested::StringParam("iso8601".into())),
            (FILE, Requested::StringParam(String::new())),
        ]))
        .unwrap();
        assert_eq!(
            change,
            LogChange {
                info: Some(false),
                error: Some(true),
                verbose: Some(2),
                ..LogChange::default()
            }
        );
        assert_eq!(plan(&HashMap::new()).unwrap(), LogChange::default());
    }

    #[test]
    fn wrong_types_names_and_values_are_refused_with_the_reason() {
        assert_eq!(
            refused(&[(INFO, Requested::Uint32Param(1))]),
            "log setting 'log_info' takes a bool, got uint32 1"
        );
        assert_eq!(
            refused(&[(VERBOSE, Requested::BoolParam(true))]),
            "log setting 'log_verbose_level' takes a uint32, got bool true"
        );
        assert!(
            refused(&[(FORMAT, Requested::StringParam("default".into()))])
                .contains("log format 'default' is not available")
        );
        assert!(
            refused(&[(FILE, Requested::StringParam("/tmp/x.log".into()))])
                .contains("logs go to standard output")
        );
        assert!(
            refused(&[("log_colour", Requested::BoolParam(true))])
                .contains("unknown log setting 'log_colour' (known: log_file, log_info")
        );
        let empty: HashMap<String, RequestedValue> =
            [("log_info".to_string(), RequestedValue::default())].into();
        assert_eq!(
            plan(&empty).unwrap_err().to_string(),
            "log setting 'log_info' has no value"
        );
    }

    #[test]
    fn the_response_lists_every_setting() {
        let settings = LogSettings {
            warning: false,
            verbose: 1,
            ..LogSettings::new("info")
        };
        let response = response(&settings);
        let get = |name: &str| response.settings[name].parameter_choice.clone().unwrap();
        assert_eq!(response.settings.len(), 6);
        assert_eq!(get(WARNING), ParameterChoice::BoolParam(false));
        assert_eq!(get(INFO), ParameterChoice::BoolParam(true));
        assert_eq!(get(VERBOSE), ParameterChoice::Uint32Param(1));
        assert_eq!(get(FORMAT), ParameterChoice::StringParam("ISO8601".into()));
        assert_eq!(get(FILE), ParameterChoice::StringParam(String::new()));
    }
}
