//! The per-model traffic policy file `<model>/traffic.yaml`: its types, parsing with precise
//! errors, deterministic emission and an atomic write.
//!
//! Users write the file by hand; the daemon rewrites it (without comments) for management
//! commands and records rollout progress in `rollout_state` and `failed`. In the file, a null
//! value (`~`, or a key with nothing after it) means the same as leaving the key out, except for
//! `rollout`, where it means a plan with every default (as `rollout: {}` does).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

mod yaml;
use yaml::*;

#[cfg(test)]
mod tests;

/// The name of the policy file inside a model's directory.
pub const TRAFFIC_FILE: &str = "traffic.yaml";

/// A model's traffic policy; the default (an empty or absent file) routes by the model's own rules.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficPolicy {
    /// Unpinned traffic split, version -> relative weight; versions not listed get none. Empty:
    /// no weights.
    pub weights: BTreeMap<u64, f64>,
    /// Every request naming no version goes to this version (overrides `weights`).
    pub pin: Option<u64>,
    /// The gRPC metadata header whose value makes assignment sticky, lower-case.
    pub routing_key: Option<String>,
    /// A copy of some requests sent to another version, its responses discarded.
    pub shadow: Option<Shadow>,
    /// Automatic progressive rollout of the newest ready version.
    pub rollout: Option<RolloutPlan>,
    /// Progress of the current rollout, written by the daemon.
    pub rollout_state: Option<RolloutState>,
    /// Versions a rollout rejected -> digest of their files then; not retried until they change.
    pub failed: BTreeMap<u64, String>,
}

/// Shadow traffic: a share of requests is also sent to `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// The version receiving the copies.
    pub version: u64,
    /// Share of requests copied, 0 to 100 (100 when omitted in the file).
    pub percent: f64,
}

/// How a rollout progresses and when it fails.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// Candidate traffic percentages, in (0, 100] and strictly increasing.
    pub steps: Vec<f64>,
    /// Minimum time spent at each step.
    pub interval: Duration,
    /// Candidate requests needed at a step before it is judged.
    pub min_requests: u64,
    /// Largest tolerated candidate error rate minus baseline error rate, in [0, 1].
    pub max_error_rate_delta: f64,
    /// Largest tolerated candidate p99 latency over baseline p99 latency, at least 1.
    pub max_p99_ratio: f64,
    /// Hold the rollout where it is.
    pub paused: bool,
}

impl Default for RolloutPlan {
    fn default() -> RolloutPlan {
        RolloutPlan {
            steps: vec![5.0, 25.0, 50.0, 100.0],
            interval: Duration::from_secs(60),
            min_requests: 200,
            max_error_rate_delta: 0.01,
            max_p99_ratio: 1.5,
            paused: false,
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Moving through the steps.
    Running,
    /// Held at its step.
    Paused,
    /// The candidate took all traffic.
    Promoted,
    /// The candidate was rejected; traffic went back to the baseline.
    Failed,
}

impl RolloutPhase {
    const ALL: [RolloutPhase; 4] = [Self::Running, Self::Paused, Self::Promoted, Self::Failed];

    /// The word used in the file: "running", "paused", "promoted" or "failed".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::Failed => "failed",
        }
    }
}

impl FromStr for RolloutPhase {
    type Err = String;

    /// Parses the word written by [`RolloutPhase::as_str`].
    fn from_str(s: &str) -> Result<RolloutPhase, String> {
        let found = Self::ALL.into_iter().find(|p| p.as_str() == s);
        let words = Self::ALL.map(Self::as_str).join(", ");
        found.ok_or_else(|| format!("expected one of {words}, got '{}'", printable(s)))
    }
}

/// Progress of a rollout, written by the daemon (deleting it resets the rollout).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutState {
    /// The version being rolled out.
    pub candidate: u64,
    /// The version it is compared with.
    pub baseline: u64,
    /// Where the rollout stands.
    pub phase: RolloutPhase,
    /// Index into [`RolloutPlan::steps`].
    pub step: usize,
    /// Why the phase was last changed; empty when there is nothing to say.
    pub reason: String,
}

// Accepted keys, space-separated, in the order the file is written.
const TOP_KEYS: &str = "weights pin routing_key shadow rollout rollout_state failed";
const SHADOW_KEYS: &str = "version percent";
const ROLLOUT_KEYS: &str = "steps interval min_requests max_error_rate_delta max_p99_ratio paused";
const STATE_KEYS: &str = "candidate baseline phase step reason";
/// Headers that cannot be a routing key: HTTP/2 connection-specific ones and those the gRPC
/// transport sets or strips (besides every "grpc-" one).
const RESERVED_HEADERS: &str = "connection content-length content-type host keep-alive \
    proxy-connection te transfer-encoding upgrade user-agent";
/// Duration units, largest first, in nanoseconds.
const UNITS: [(&str, u128); 4] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
];

impl TrafficPolicy {
    /// Parses the file's text; an empty file, only comments, `{}` or `~` give the default.
    /// Errors are one line naming the key path, what was expected and what was found.
    pub fn parse(text: &str) -> Result<TrafficPolicy, String> {
        let docs = YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        let root = match docs.as_slice() {
            [] => return Ok(TrafficPolicy::default()),
            [root] => root,
            more => return Err(format!("expected one YAML document, found {}", more.len())),
        };
        if root.is_null() {
            return Ok(TrafficPolicy::default());
        }
        let top = entries("", root, TOP_KEYS)?;
        let mut policy = TrafficPolicy::default();
        if let Some(y) = top.get("weights") {
            policy.weights = version_map("weights", y, |w| {
                number("weight", w, "a finite number >= 0", |x| x >= 0.0)
            })?;
        }
        if let Some(y) = top.get("pin") {
            policy.pin = Some(version("pin", y)?);
        }
        if let Some(y) = top.get("routing_key") {
            policy.routing_key = Some(routing_key(y).map_err(|e| format!("routing_key: {e}"))?);
        }
        if let Some(y) = top.get("shadow") {
            let e = entries("shadow", y, SHADOW_KEYS)?;
            let version = version("shadow.version", required("shadow", &e, "version")?)?;
            let percent = match e.get("percent") {
                None => 100.0,
                Some(y) => number("shadow.percent:", y, "a number from 0 to 100", percent)?,
            };
            policy.shadow = Some(Shadow { version, percent });
        }
        policy.rollout = match top.get("rollout") {
            Some(y) => Some(rollout_plan(y)?),
            // A bare `rollout:` turns rollouts on with every default.
            None => root["rollout"].is_null().then(RolloutPlan::default),
        };
        if let Some(y) = top.get("rollout_state") {
            policy.rollout_state = Some(rollout_state(y)?);
        }
        if let Some(y) = top.get("failed") {
            policy.failed = version_map("failed", y, |d| match d {
                Yaml::String(s) => Ok(s.clone()),
                _ => expected("", "a quoted digest string", d),
            })?;
        }
        Ok(policy)
    }

    /// The file's text: deterministic, a header comment naming `model`, absent and empty
    /// sections left out, versions quoted, and numbers written so that `parse` gives `self` back.
    pub fn to_yaml(&self, model: &str) -> String {
        let mut lines = vec![format!(
            "# Traffic policy of model '{}'. Rewritten by `switchyard traffic` commands; \
             comments are not kept.",
            printable(model)
        )];
        let l = &mut lines;
        if !self.weights.is_empty() {
            l.push("weights:".into());
            l.extend(self.weights.iter().map(|(v, w)| format!("  \"{v}\": {w}")));
        }
        if let Some(pin) = self.pin {
            l.push(format!("pin: \"{pin}\""));
        }
        if let Some(key) = &self.routing_key {
            l.push(format!("routing_key: {}", quote(key)));
        }
        if let Some(s) = &self.shadow {
            l.push("shadow:".into());
            l.push(format!("  version: \"{}\"", s.version));
            l.push(format!("  percent: {}", s.percent));
        }
        if let Some(r) = &self.rollout {
            let steps: Vec<String> = r.steps.iter().map(f64::to_string).collect();
            l.push("rollout:".into());
            l.push(format!("  steps: [{}]", steps.join(", ")));
            l.push(format!("  interval: {}", format_duration(r.interval)));
            l.push(format!("  min_requests: {}", r.min_requests));
            l.push(format!(
                "  max_error_rate_delta: {}",
                r.max_error_rate_delta
            ));
            l.push(format!("  max_p99_ratio: {}", r.max_p99_ratio));
            l.push(format!("  paused: {}", r.paused));
        }
        if let Some(s) = &self.rollout_state {
            l.push("rollout_state:".into());
            l.push(format!("  candidate: \"{}\"", s.candidate));
            l.push(format!("  baseline: \"{}\"", s.baseline));
            l.push(format!("  phase: {}", s.phase.as_str()));
            l.push(format!("  step: {}", s.step));
            if !s.reason.is_empty() {
                l.push(format!("  reason: {}", quote(&s.reason)));
            }
        }
        if !self.failed.is_empty() {
            l.push("failed:".into());
            l.extend(
                self.failed
                    .iter()
                    .map(|(v, d)| format!("  \"{v}\": {}", quote(d))),
            );
        }
        lines.join("\n") + "\n"
    }

    /// Whether this is the default policy (nothing configured, nothing recorded).
    pub fn is_empty(&self) -> bool {
        *self == TrafficPolicy::default()
    }
}

/// Reads `<dir>/traffic.yaml`: `Ok(None)` when absent, `Err(message naming the file)` when
/// unreadable or invalid.
pub fn read(dir: &Path) -> Result<Option<TrafficPolicy>, String> {
    let path = dir.join(TRAFFIC_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let policy = TrafficPolicy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(policy))
}

/// Writes `<dir>/traffic.yaml` atomically: a temporary file in the same directory (named
/// `.traffic.yaml.<pid>.<n>`), written, fsync'ed, renamed over the target (keeping the target's
/// permissions), then the directory fsync'ed. On any error the temporary file is removed and the
/// error returned. A policy that would not read back equal (say a NaN weight or a zero interval)
/// is refused with [`io::ErrorKind::InvalidInput`] before anything is written.
pub fn write(dir: &Path, policy: &TrafficPolicy, model: &str) -> io::Result<()> {
    let text = policy.to_yaml(model);
    match TrafficPolicy::parse(&text) {
        Ok(back) if back == *policy => {}
        Ok(_) => return Err(invalid("the policy would not read back equal to itself")),
        Err(e) => return Err(invalid(&format!("the policy would not read back: {e}"))),
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{TRAFFIC_FILE}.{}.{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => break (tmp, file),
            // A leftover of a crashed process that had the same id: try the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let target = dir.join(TRAFFIC_FILE);
    let result = (|| {
        if let Ok(meta) = fs::metadata(&target) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &target)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `<dir>/traffic.yaml` (`Ok` if absent), as when a policy becomes empty.
pub fn remove(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(TRAFFIC_FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
