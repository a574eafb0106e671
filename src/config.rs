//! Settings: one typed struct, layered as defaults < settings file < `SWITCHYARD_*` environment <
//! command-line flags (through the `config` crate), and validated once at start-up. Names follow
//! `tritonserver`'s flags where the meaning is the same.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default gRPC port (Triton's).
pub const DEFAULT_GRPC_PORT: u16 = 8001;
/// Default HTTP port (Triton's).
pub const DEFAULT_HTTP_PORT: u16 = 8000;
/// Default metrics port (Triton's).
pub const DEFAULT_METRICS_PORT: u16 = 8002;
/// Default address to listen on.
pub const DEFAULT_GRPC_ADDRESS: &str = "0.0.0.0";
/// Default repository directory, relative to the working directory.
pub const DEFAULT_MODEL_REPOSITORY: &str = "model_repository";
/// Default largest gRPC message accepted or sent (64 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Default seconds between rescans in poll mode (Triton's default).
pub const DEFAULT_REPOSITORY_POLL_SECS: u64 = 15;
/// Default seconds between safety-net rescans in watch mode.
pub const DEFAULT_REPOSITORY_RESCAN_SECS: u64 = 60;
/// Default quiet time before new model files are taken, in milliseconds.
pub const DEFAULT_REPOSITORY_SETTLE_MS: u64 = 300;
/// Default grace period for in-flight requests at shutdown.
pub const DEFAULT_EXIT_TIMEOUT_SECS: u64 = 30;
/// The settings' names, as keys of the settings file and (upper-cased) of the environment.
pub const SETTING_KEYS: &[&str] = &[
    "model_repository",
    "grpc_address",
    "grpc_port",
    "http_port",
    "metrics_port",
    "model_control_mode",
    "load_model",
    "repository_poll_secs",
    "repository_rescan_secs",
    "repository_settle_ms",
    "exit_timeout_secs",
    "grpc_max_message_bytes",
    "otlp_endpoint",
    "trace_sampling_ratio",
    "log_format",
    "log_filter",
    "management_address",
    "management_port",
    "management_token",
    "traffic_store",
];

/// Prefix of environment variables that set settings (`SWITCHYARD_GRPC_PORT=9001`).
pub const ENV_PREFIX: &str = "SWITCHYARD";

/// How the set of loaded models is controlled (Triton's `--model-control-mode`, plus `watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelControlMode {
    /// Load every model at start-up and follow the repository through filesystem events, with a
    /// slow full rescan as a safety net; the load/unload API is refused.
    #[default]
    Watch,
    /// Load every model at start-up and rescan the repository every `repository_poll_secs`, for
    /// filesystems without change events; the load/unload API is refused.
    Poll,
    /// Load every model at start-up and never change them; the load/unload API is refused.
    None,
    /// Load only `load_model` at start-up; models change only through the load/unload API.
    Explicit,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Where traffic changes made through the management API are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrafficStore {
    /// Rewrite `<model>/traffic.yaml` atomically, so replicas sharing the repository agree; fall
    /// back to memory where the repository cannot be written.
    #[default]
    File,
    /// Never write the repository; hold changes in memory (lost at restart).
    Memory,
}

/// Every setting of the daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The model repository directory (Triton's `--model-repository`).
    pub model_repository: PathBuf,
    /// Address the gRPC server binds (Triton's `--grpc-address`).
    pub grpc_address: String,
    /// gRPC port; 0 picks a free one and logs it (Triton's `--grpc-port`).
    pub grpc_port: u16,
    /// HTTP/REST port (Triton's `--http-port`); the HTTP endpoint is not served yet.
    pub http_port: u16,
    /// Prometheus metrics port (Triton's `--metrics-port`), on the gRPC address; 0 picks a free one.
    pub metrics_port: u16,
    /// How models are loaded and unloaded (Triton's `--model-control-mode`).
    pub model_control_mode: ModelControlMode,
    /// Models loaded at start-up in explicit mode; `*` loads all (Triton's `--load-model`).
    pub load_model: Vec<String>,
    /// Seconds between rescans in poll mode (Triton's `--repository-poll-secs`).
    pub repository_poll_secs: u64,
    /// Seconds between safety-net rescans in watch mode.
    pub repository_rescan_secs: u64,
    /// A version directory is loaded only when its files are this many milliseconds old and
    /// unchanged across two looks, so half-written models are never taken.
    pub repository_settle_ms: u64,
    /// Seconds in-flight requests get to finish at shutdown (Triton's `--exit-timeout-secs`).
    pub exit_timeout_secs: u64,
    /// Largest gRPC message accepted or sent, in bytes; protects memory before decoding.
    pub grpc_max_message_bytes: usize,
    /// OTLP/gRPC endpoint for traces (e.g. `http://127.0.0.1:4317`); unset: the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` environment, else no traces.
    pub otlp_endpoint: Option<String>,
    /// Share of traces started here that are recorded, 0.0 to 1.0 (a caller's sampled parent is
    /// always followed).
    pub trace_sampling_ratio: f64,
    /// Log format: text or json.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax, used when `RUST_LOG` is unset.
    pub log_filter: String,
    /// Address the management port binds (e.g. 127.0.0.1 or an internal interface); unset: the
    /// gRPC address. Only used with `management_port`.
    pub management_address: Option<String>,
    /// Serve the management service (`switchyard.v1.TrafficControl`) on this port (of
    /// `management_address`) instead of the inference port, so inference clients cannot reach
    /// it; 0 picks a free one. Unset: served on the gRPC port.
    pub management_port: Option<u16>,
    /// When set, every management call must carry `authorization: Bearer <token>`.
    pub management_token: Option<String>,
    /// Where traffic changes are kept: file (default) or memory.
    pub traffic_store: TrafficStore,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            model_repository: PathBuf::from(DEFAULT_MODEL_REPOSITORY),
            grpc_address: DEFAULT_GRPC_ADDRESS.to_string(),
            grpc_port: DEFAULT_GRPC_PORT,
            http_port: DEFAULT_HTTP_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
            model_control_mode: ModelControlMode::Watch,
            load_model: Vec::new(),
            repository_poll_secs: DEFAULT_REPOSITORY_POLL_SECS,
            repository_rescan_secs: DEFAULT_REPOSITORY_RESCAN_SECS,
            repository_settle_ms: DEFAULT_REPOSITORY_SETTLE_MS,
            exit_timeout_secs: DEFAULT_EXIT_TIMEOUT_SECS,
            grpc_max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            otlp_endpoint: None,
            trace_sampling_ratio: 1.0,
            log_format: LogFormat::Text,
            log_filter: "info".to_string(),
            management_address: None,
            management_port: None,
            management_token: None,
            traffic_store: TrafficStore::File,
        }
    }
}

/// Why settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Source(#[from] config::ConfigError),
    #[error("settings: {0}")]
    Invalid(String),
}

/// One value set on the command line, applied over every other source.
pub type Override = (&'static str, config::Value);

impl Settings {
    /// Layers the sources, deserializes and validates. `env` is the environment to read
    /// (`std::env::vars()` in the daemon; tests pass their own).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Vec<Override>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        // Only variables that name a setting: other SWITCHYARD_* variables (set by scripts around
        // the daemon) are not settings and must not be taken for misspelt ones.
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(ENV_PREFIX)
                    .and_then(|k| k.strip_prefix('_'))
                    .is_some_and(|k| SETTING_KEYS.contains(&k.to_ascii_lowercase().as_str()))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("load_model")
                .source(Some(env)),
        );
        for (key, value) in overrides {
            builder = builder.set_override(key, value)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what deserialization cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: String| Err(SettingsError::Invalid(m));
        if !self.model_repository.is_dir() {
            return invalid(format!(
                "model_repository {} is not a directory",
                self.model_repository.display()
            ));
        }
        if self.grpc_address.parse::<std::net::IpAddr>().is_err() {
            return invalid(format!(
                "grpc_address '{}' is not an IP address",
                self.grpc_address
            ));
        }
        if self.grpc_max_message_bytes < 1024 {
            return invalid(format!(
                "grpc_max_message_bytes {} is below 1024",
                self.grpc_max_message_bytes
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sampling_ratio) {
            return invalid(format!(
                "trace_sampling_ratio {} is outside 0.0..=1.0",
                self.trace_sampling_ratio
            ));
        }
        if self.repository_poll_secs == 0 || self.repository_rescan_secs == 0 {
            return invalid(
                "repository_poll_secs and repository_rescan_secs must be at least 1".into(),
            );
        }
        if let Some(address) = &self.management_address {
            if address.parse::<std::net::IpAddr>().is_err() {
                return invalid(format!(
                    "management_address '{address}' is not an IP address"
                ));
            }
            if self.management_port.is_none() {
                return invalid("management_address needs management_port".into());
            }
        }
        if self.management_token.as_deref().is_some_and(str::is_empty) {
            return invalid("management_token is set but empty".into());
        }
        if self.model_control_mode != ModelControlMode::Explicit && !self.load_model.is_empty() {
            return invalid(
                "load_model is only meaningful with model_control_mode explicit".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
