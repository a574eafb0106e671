//! `switchyard.v1.TrafficControl`: read and change a model's traffic policy, drive its rollout,
//! list its history and report on its arms. Conversions between the wire messages and the
//! routing types live here; the semantics live in `routing::commands`.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::proto::switchyard_v1 as pb;
use crate::proto::switchyard_v1::traffic_control_server::TrafficControl;
use crate::registry::{ModelSnapshot, ModelVersion, Registry};
use crate::routing::commands;
use crate::routing::policy::{RolloutPlan, Shadow, TrafficPolicy};
use crate::routing::report::two_proportion_test;

/// The management service over the shared registry.
pub struct TrafficService {
    registry: Arc<Registry>,
}

type Reply<T> = Result<Response<T>, Status>;

impl TrafficService {
    /// Wraps the registry.
    pub fn new(registry: Arc<Registry>) -> TrafficService {
        TrafficService { registry }
    }

    fn status(&self, model: &str) -> Result<pb::TrafficStatus, Error> {
        let snapshot = self.registry.get(model)?.snapshot();
        Ok(status_of(model, &snapshot))
    }

    fn reply(&self, model: &str) -> Reply<pb::TrafficStatus> {
        Ok(Response::new(self.status(model)?))
    }
}

fn label(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn status_of(model: &str, snapshot: &ModelSnapshot) -> pb::TrafficStatus {
    let traffic = &snapshot.traffic;
    let policy = &traffic.policy;
    let rollout = policy.rollout_state.as_ref().map(|s| {
        let canary_percent = snapshot
            .routes
            .effective_percent()
            .into_iter()
            .find(|(v, _)| *v == s.candidate)
            .map(|(_, p)| p)
            .unwrap_or_default();
        pb::RolloutStatus {
            candidate: s.candidate.to_string(),
            baseline: s.baseline.to_string(),
            phase: s.phase.as_str().into(),
            step: s.step as u32,
            canary_percent,
            reason: s.reason.clone(),
        }
    });
    pb::TrafficStatus {
        model: model.to_string(),
        pinned_version: label(policy.pin),
        default_version: label(snapshot.default_version),
        ready_versions: snapshot
            .ready_versions()
            .map(|v| v.label().to_string())
            .collect(),
        pin_scope: match policy.pin {
            Some(_) => traffic.source.as_str().into(),
            None => String::new(),
        },
        policy: Some(policy_to_wire(policy)),
        effective_percent: effective_percent(snapshot),
        source: traffic.source.as_str().into(),
        source_detail: traffic.detail.clone(),
        rollout,
        notes: snapshot.routes.notes().to_vec(),
        failed_versions: policy.failed.keys().map(u64::to_string).collect(),
    }
}

/// Every ready version's share of requests naming none, percent.
fn effective_percent(snapshot: &ModelSnapshot) -> std::collections::HashMap<String, f64> {
    let mut shares: std::collections::HashMap<String, f64> = snapshot
        .ready_versions()
        .map(|v| (v.label().to_string(), 0.0))
        .collect();
    let routes = &snapshot.routes;
    let weighted = routes.effective_percent();
    if let Some(pinned) = routes.pinned() {
        shares.insert(pinned.label().to_string(), 100.0);
    } else if !weighted.is_empty() {
        for (v, p) in weighted {
            shares.insert(v.to_string(), p);
        }
    } else if let Some(default) = snapshot.default_version {
        shares.insert(default.to_string(), 100.0);
    }
    shares
}

/// A policy as the wire carries it (also used by the `switchyard traffic` client).
pub fn policy_to_wire(policy: &TrafficPolicy) -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        weights: policy
            .weights
            .iter()
            .map(|(v, w)| (v.to_string(), *w))
            .collect(),
        routing_key: policy.routing_key.clone().unwrap_or_default(),
        shadow: policy.shadow.as_ref().map(|s| pb::ShadowPolicy {
            version: s.version.to_string(),
            percent: s.percent,
        }),
        rollout: policy.rollout.as_ref().map(|r| pb::RolloutPlan {
            steps: r.steps.clone(),
            interval_seconds: Some(r.interval.as_secs_f64()),
            min_requests: Some(r.min_requests),
            max_error_rate_delta: Some(r.max_error_rate_delta),
            max_p99_ratio: Some(r.max_p99_ratio),
            paused: r.paused,
        }),
        pin: label(policy.pin),
    }
}

/// The wire policy as a checked policy: converted, then validated by the traffic file's own
/// parser, so the API and the file accept exactly the same policies with the same messages.
fn policy_from_wire(model: &str, wire: pb::TrafficPolicy) -> Result<TrafficPolicy, Error> {
    let invalid = |m: String| Error::invalid(format!("model '{model}': traffic policy: {m}"));
    let version = |what: &str, v: &str| {
        v.parse::<u64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| invalid(format!("{what}: version '{v}' is not a positive integer")))
    };
    let mut policy = TrafficPolicy::default();
    for (v, w) in &wire.weights {
        policy.weights.insert(version("weights", v)?, *w);
    }
    if !wire.pin.is_empty() {
        policy.pin = Some(version("pin", &wire.pin)?);
    }
    policy.routing_key = Some(wire.routing_key).filter(|k| !k.is_empty());
    if let Some(shadow) = wire.shadow.filter(|s| !s.version.is_empty()) {
        policy.shadow = Some(Shadow {
            version: version("shadow", &shadow.version)?,
            percent: shadow.percent,
        });
    }
    if let Some(plan) = wire.rollout {
        let defaults = RolloutPlan::default();
        let interval = match plan.interval_seconds {
            Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Duration::from_secs_f64(s),
            Some(s) => return Err(invalid(format!("rollout: interval {s} s must be > 0"))),
            None => defaults.interval,
        };
        policy.rollout = Some(RolloutPlan {
            steps: if plan.steps.is_empty() {
                defaults.steps
            } else {
                plan.steps
            },
            interval,
            min_requests: plan.min_requests.unwrap_or(defaults.min_requests),
            max_error_rate_delta: plan
                .max_error_rate_delta
                .unwrap_or(defaults.max_error_rate_delta),
            max_p99_ratio: plan.max_p99_ratio.unwrap_or(defaults.max_p99_ratio),
            paused: plan.paused,
        });
    }
    TrafficPolicy::parse(&policy.to_yaml(model)).map_err(invalid)
}

fn optional_version(model: &str, version: &str) -> Result<Option<u64>, Error> {
    if version.is_empty() {
        return Ok(None);
    }
    version
        .parse()
        .map(Some)
        .map_err(|_| Error::UnknownVersion {
            model: model.to_string(),
            version: version.to_string(),
        })
}

fn millis(d: Option<Duration>) -> f64 {
    d.map(|d| d.as_secs_f64() * 1e3).unwrap_or_default()
}

fn version_report(version: &ModelVersion, percent: f64) -> pb::VersionReport {
    let stats = &version.stats;
    let (ok, errors) = (stats.success.read().0, stats.fail.read().0);
    let latency = stats.latency.snapshot();
    let shadow = &stats.shadow;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let shadow_requests = load(&shadow.requests) + load(&shadow.dropped);
    let shadow_latency = shadow.latency.snapshot();
    pb::VersionReport {
        version: version.label().to_string(),
        percent,
        requests: ok + errors,
        errors,
        error_rate: if ok + errors == 0 {
            0.0
        } else {
            errors as f64 / (ok + errors) as f64
        },
        p50_ms: millis(latency.quantile(0.5)),
        p99_ms: millis(latency.quantile(0.99)),
        shadow: (shadow_requests > 0).then(|| pb::ShadowReport {
            requests: load(&shadow.requests),
            errors: load(&shadow.errors),
            dropped: load(&shadow.dropped),
            matched: load(&shadow.matched),
            mismatched: load(&shadow.mismatched),
            max_abs_diff: shadow.max_abs_diff(),
            p50_ms: millis(shadow_latency.quantile(0.5)),
            p99_ms: millis(shadow_latency.quantile(0.99)),
        }),
    }
}

/// The A/B report: every ready version's figures, and the baseline (largest share, else the
/// default version) against each other version that had requests.
fn report(model: &str, snapshot: &ModelSnapshot, confidence: f64) -> pb::TrafficReport {
    let shares = effective_percent(snapshot);
    let versions: Vec<pb::VersionReport> = snapshot
        .ready_versions()
        .map(|v| version_report(v, shares.get(v.label()).copied().unwrap_or_default()))
        .collect();
    let baseline = snapshot.primary_version().map(|v| v.to_string());
    let base = versions
        .iter()
        .find(|v| Some(&v.version) == baseline.as_ref());
    let comparisons = base
        .map(|base| {
            versions
                .iter()
                .filter(|v| v.version != base.version && v.requests > 0)
                .filter_map(|v| {
                    let t = two_proportion_test(
                        base.errors,
                        base.requests,
                        v.errors,
                        v.requests,
                        confidence,
                    )?;
                    Some(pb::ArmComparison {
                        baseline: base.version.clone(),
                        candidate: v.version.clone(),
                        error_rate_baseline: t.rate_a,
                        error_rate_candidate: t.rate_b,
                        difference: t.difference,
                        z: t.z,
                        p_value: t.p_value,
                        ci_low: t.ci_low,
                        ci_high: t.ci_high,
                        confidence: t.confidence,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    pb::TrafficReport {
        model: model.to_string(),
        versions,
        comparisons,
    }
}

#[tonic::async_trait]
impl TrafficControl for TrafficService {
    async fn get_traffic(
        &self,
        request: Request<pb::GetTrafficRequest>,
    ) -> Reply<pb::TrafficStatus> {
        self.reply(&request.into_inner().model)
    }

    async fn set_traffic(
        &self,
        request: Request<pb::SetTrafficRequest>,
    ) -> Reply<pb::TrafficStatus> {
        let request = request.into_inner();
        let policy = policy_from_wire(&request.model, request.policy.unwrap_or_default())?;
        commands::set(&self.registry, &request.model, policy).await?;
        self.reply(&request.model)
    }

    async fn pin(&self, request: Request<pb::PinRequest>) -> Reply<pb::TrafficStatus> {
        let request = request.into_inner();
        let version = optional_version(&request.model, &request.version)?.ok_or_else(|| {
            Error::invalid(format!("model '{}': pin needs a version", request.model))
        })?;
        commands::pin(&self.registry, &request.model, Some(version)).await?;
        self.reply(&request.model)
    }

    async fn unpin(&self, request: Request<pb::UnpinRequest>) -> Reply<pb::TrafficStatus> {
        let model = request.into_inner().model;
        commands::pin(&self.registry, &model, None).await?;
        self.reply(&model)
    }

    async fn promote(&self, request: Request<pb::PromoteRequest>) -> Reply<pb::TrafficStatus> {
        let request = request.into_inner();
        let version = optional_version(&request.model, &request.version)?;
        commands::promote(&self.registry, &request.model, version).await?;
        self.reply(&request.model)
    }

    async fn rollback(&self, request: Request<pb::RollbackRequest>) -> Reply<pb::TrafficStatus> {
        let request = request.into_inner();
        let version = optional_version(&request.model, &request.version)?;
        commands::rollback(&self.registry, &request.model, version).await?;
        self.reply(&request.model)
    }

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Reply<pb::TrafficStatus> {
        let request = request.into_inner();
        let version = optional_version(&request.model, &request.version)?;
        commands::start_rollout(&self.registry, &request.model, version).await?;
        self.reply(&request.model)
    }

    async fn pause_rollout(
        &self,
        request: Request<pb::PauseRolloutRequest>,
    ) -> Reply<pb::TrafficStatus> {
        let model = request.into_inner().model;
        commands::set_paused(&self.registry, &model, true).await?;
        self.reply(&model)
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::ResumeRolloutRequest>,
    ) -> Reply<pb::TrafficStatus> {
        let model = request.into_inner().model;
        commands::set_paused(&self.registry, &model, false).await?;
        self.reply(&model)
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Reply<pb::HistoryResponse> {
        let model = request.into_inner().model;
        self.registry.get(&model)?;
        let events = self
            .registry
            .history
            .list(&model)
            .into_iter()
            .map(|e| pb::TrafficEvent {
                unix_ms: e.unix_ms,
                cause: e.cause.as_str().into(),
                detail: e.detail,
            })
            .collect();
        Ok(Response::new(pb::HistoryResponse { events }))
    }

    async fn report(&self, request: Request<pb::ReportRequest>) -> Reply<pb::TrafficReport> {
        let request = request.into_inner();
        let confidence = match request.confidence {
            0.0 => 0.95,
            c if c > 0.0 && c < 1.0 => c,
            c => {
                return Err(Error::invalid(format!(
                    "confidence {c} must be between 0 and 1 (exclusive)"
                ))
                .into());
            }
        };
        let snapshot = self.registry.get(&request.model)?.snapshot();
        Ok(Response::new(report(&request.model, &snapshot, confidence)))
    }
}

/// Checks `authorization: Bearer <token>` on management calls when a token is configured.
#[derive(Clone)]
pub struct RequireToken(pub Option<Arc<str>>);

impl RequireToken {
    /// Passes when no token is configured or the metadata carries it.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Error> {
        let Some(expected) = &self.0 else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(Error::Unauthenticated("management token rejected".into())),
            None => Err(Error::Unauthenticated(
                "management calls need 'authorization: Bearer <token>'".into(),
            )),
        }
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
