//! `switchyard traffic …`: a client of a running server's `switchyard.v1.TrafficControl`
//! service — show, set, pin, promote, roll back, drive rollouts, list history, report.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use switchyard::proto::switchyard_v1 as pb;
use switchyard::proto::switchyard_v1::traffic_control_client::TrafficControlClient;
use switchyard::routing::TrafficPolicy;

/// `switchyard traffic`: talks to a running server's `switchyard.v1.TrafficControl` service.
#[derive(Args, Debug)]
pub struct TrafficArgs {
    /// The management service's address (the gRPC port, or the management port when the
    /// server has one).
    #[arg(short, long, default_value = "http://127.0.0.1:8001", global = true)]
    url: String,
    /// Bearer token for servers started with a management token.
    #[arg(
        long,
        env = "SWITCHYARD_MANAGEMENT_TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: TrafficCommand,
}

#[derive(Subcommand, Debug)]
enum TrafficCommand {
    /// Show a model's policy, shares, rollout and notes.
    Get { model: String },
    /// Replace a model's policy (weights, routing key, shadow, rollout), from flags or a file.
    Set(SetArgs),
    /// Send every request that names no version to VERSION (loading it if needed).
    Pin { model: String, version: String },
    /// Remove the pin: the weights (or the version policy) decide again.
    Unpin { model: String },
    /// Give VERSION (default: the rollout's candidate, else the newest) all the traffic.
    Promote {
        model: String,
        version: Option<String>,
    },
    /// Give all traffic back to VERSION (default: the baseline, else the previous version).
    Rollback {
        model: String,
        version: Option<String>,
    },
    /// Start a rollout of VERSION (default: the newest ready version) per the model's plan.
    Start {
        model: String,
        version: Option<String>,
    },
    /// Hold the rollout at its step (and start no new one).
    Pause { model: String },
    /// Let a paused rollout go on.
    Resume { model: String },
    /// Every change of the model's traffic since the server started.
    History { model: String },
    /// Per version requests, errors and latency, with a test of the error-rate difference.
    Report {
        model: String,
        /// Confidence level of the intervals.
        #[arg(long, default_value_t = 0.95)]
        confidence: f64,
    },
}

#[derive(Args, Debug)]
struct SetArgs {
    model: String,
    /// A traffic.yaml to send as the policy (other flags are then not allowed).
    #[arg(long, conflicts_with_all = ["weight", "routing_key", "shadow", "rollout_steps"])]
    file: Option<PathBuf>,
    /// VERSION=WEIGHT (repeatable), e.g. --weight 1=90 --weight 2=10.
    #[arg(long)]
    weight: Vec<String>,
    /// gRPC metadata header carrying the routing key, e.g. x-user-id.
    #[arg(long)]
    routing_key: Option<String>,
    /// VERSION:PERCENT of requests mirrored to a shadow version, e.g. 3:20.
    #[arg(long)]
    shadow: Option<String>,
    /// Canary steps in percent, e.g. 5,25,50,100 (enables automatic rollout).
    #[arg(long, value_delimiter = ',')]
    rollout_steps: Vec<f64>,
    /// Seconds at each step [default: 60].
    #[arg(long, requires = "rollout_steps")]
    rollout_interval: Option<f64>,
    /// Canary requests needed at each step [default: 200].
    #[arg(long, requires = "rollout_steps")]
    min_requests: Option<u64>,
    /// Allowed canary error rate above the baseline's [default: 0.01].
    #[arg(long, requires = "rollout_steps")]
    max_error_rate_delta: Option<f64>,
    /// Allowed canary p99 as a multiple of the baseline's [default: 1.5].
    #[arg(long, requires = "rollout_steps")]
    max_p99_ratio: Option<f64>,
}

impl SetArgs {
    fn policy(&self) -> Result<pb::TrafficPolicy, String> {
        if let Some(file) = &self.file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let policy =
                TrafficPolicy::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            return Ok(switchyard::grpc::policy_to_wire(&policy));
        }
        let mut weights = HashMap::new();
        for pair in &self.weight {
            let (v, w) = pair
                .split_once('=')
                .ok_or_else(|| format!("--weight {pair}: expected VERSION=WEIGHT"))?;
            let w: f64 = w
                .parse()
                .map_err(|_| format!("--weight {pair}: '{w}' is not a number"))?;
            weights.insert(v.to_string(), w);
        }
        let shadow = match &self.shadow {
            None => None,
            Some(s) => {
                let (v, p) = s
                    .split_once(':')
                    .ok_or_else(|| format!("--shadow {s}: expected VERSION:PERCENT"))?;
                let percent = p
                    .parse()
                    .map_err(|_| format!("--shadow {s}: '{p}' is not a number"))?;
                Some(pb::ShadowPolicy {
                    version: v.to_string(),
                    percent,
                })
            }
        };
        let rollout = (!self.rollout_steps.is_empty()).then(|| pb::RolloutPlan {
            steps: self.rollout_steps.clone(),
            interval_seconds: self.rollout_interval,
            min_requests: self.min_requests,
            max_error_rate_delta: self.max_error_rate_delta,
            max_p99_ratio: self.max_p99_ratio,
            paused: false,
        });
        Ok(pb::TrafficPolicy {
            weights,
            routing_key: self.routing_key.clone().unwrap_or_default(),
            shadow,
            rollout,
            pin: String::new(),
        })
    }
}

/// What a command printed.
enum Answer {
    Status(Box<pb::TrafficStatus>),
    History(pb::HistoryResponse),
    Report(pb::TrafficReport),
}

/// `switchyard traffic ...`: prints the model's state (or history, or report) after the command.
pub fn traffic(args: TrafficArgs) -> ExitCode {
    let result = super::runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(call(args)));
    match result {
        Ok(Answer::Status(status)) => print_status(&status),
        Ok(Answer::History(history)) => print_history(&history),
        Ok(Answer::Report(report)) => print_report(&report),
        Err(e) => {
            eprintln!("switchyard traffic: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn request<T>(message: T, token: &Option<String>) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

async fn call(args: TrafficArgs) -> Result<Answer, String> {
    let url = if args.url.contains("://") {
        args.url.clone()
    } else {
        format!("http://{}", args.url)
    };
    let channel = Channel::from_shared(url.clone())
        .map_err(|e| format!("{url}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let mut client = TrafficControlClient::new(channel);
    let token = &args.token;
    let version = |v: Option<String>| v.unwrap_or_default();
    let status = |s: Result<tonic::Response<pb::TrafficStatus>, tonic::Status>| {
        s.map(|r| Answer::Status(Box::new(r.into_inner())))
    };
    let reply = match args.command {
        TrafficCommand::Get { model } => status(
            client
                .get_traffic(request(pb::GetTrafficRequest { model }, token)?)
                .await,
        ),
        TrafficCommand::Set(set) => {
            let policy = Some(set.policy()?);
            let message = pb::SetTrafficRequest {
                model: set.model,
                policy,
            };
            status(client.set_traffic(request(message, token)?).await)
        }
        TrafficCommand::Pin { model, version } => status(
            client
                .pin(request(pb::PinRequest { model, version }, token)?)
                .await,
        ),
        TrafficCommand::Unpin { model } => status(
            client
                .unpin(request(pb::UnpinRequest { model }, token)?)
                .await,
        ),
        TrafficCommand::Promote { model, version: v } => {
            let message = pb::PromoteRequest {
                model,
                version: version(v),
            };
            status(client.promote(request(message, token)?).await)
        }
        TrafficCommand::Rollback { model, version: v } => {
            let message = pb::RollbackRequest {
                model,
                version: version(v),
            };
            status(client.rollback(request(message, token)?).await)
        }
        TrafficCommand::Start { model, version: v } => {
            let message = pb::StartRolloutRequest {
                model,
                version: version(v),
            };
            status(client.start_rollout(request(message, token)?).await)
        }
        TrafficCommand::Pause { model } => {
            let message = pb::PauseRolloutRequest { model };
            status(client.pause_rollout(request(message, token)?).await)
        }
        TrafficCommand::Resume { model } => {
            let message = pb::ResumeRolloutRequest { model };
            status(client.resume_rollout(request(message, token)?).await)
        }
        TrafficCommand::History { model } => client
            .history(request(pb::HistoryRequest { model }, token)?)
            .await
            .map(|r| Answer::History(r.into_inner())),
        TrafficCommand::Report { model, confidence } => client
            .report(request(pb::ReportRequest { model, confidence }, token)?)
            .await
            .map(|r| Answer::Report(r.into_inner())),
    };
    reply.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

fn print_status(status: &pb::TrafficStatus) {
    println!("model:   {}", status.model);
    let scope = if status.pin_scope.is_empty() {
        String::new()
    } else {
        format!(" ({})", status.pin_scope)
    };
    println!("pinned:  {}{scope}", or_none(&status.pinned_version));
    println!("default: {}", or_none(&status.default_version));
    println!("ready:   {}", status.ready_versions.join(", "));
    let mut shares: Vec<(&String, &f64)> = status.effective_percent.iter().collect();
    shares.sort_by_key(|(v, _)| v.parse::<u64>().unwrap_or(u64::MAX));
    let shares: Vec<String> = shares
        .iter()
        .map(|(v, p)| format!("{v}: {p:.1}%"))
        .collect();
    println!("shares:  {}", shares.join(", "));
    let detail = if status.source_detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", status.source_detail)
    };
    println!("policy:  {}{detail}", status.source);
    if let Some(policy) = &status.policy {
        if !policy.routing_key.is_empty() {
            println!("routing key header: {}", policy.routing_key);
        }
        if let Some(shadow) = &policy.shadow {
            println!("shadow:  version {} at {}%", shadow.version, shadow.percent);
        }
    }
    if let Some(r) = &status.rollout {
        let reason = if r.reason.is_empty() {
            String::new()
        } else {
            format!(" — {}", r.reason)
        };
        println!(
            "rollout: version {} over {}: {} at step {} ({:.1}%){reason}",
            r.candidate, r.baseline, r.phase, r.step, r.canary_percent
        );
    }
    if !status.failed_versions.is_empty() {
        println!("failed:  {}", status.failed_versions.join(", "));
    }
    for note in &status.notes {
        println!("note:    {note}");
    }
}

fn print_history(history: &pb::HistoryResponse) {
    for event in &history.events {
        let secs = event.unix_ms / 1000;
        println!(
            "{secs}.{:03}  {:<8} {}",
            event.unix_ms % 1000,
            event.cause,
            event.detail
        );
    }
}

fn print_report(report: &pb::TrafficReport) {
    println!("model {}", report.model);
    println!(
        "{:>8} {:>7} {:>10} {:>8} {:>9} {:>9} {:>9}",
        "version", "share", "requests", "errors", "err rate", "p50 ms", "p99 ms"
    );
    for v in &report.versions {
        println!(
            "{:>8} {:>6.1}% {:>10} {:>8} {:>8.3}% {:>9.3} {:>9.3}",
            v.version,
            v.percent,
            v.requests,
            v.errors,
            v.error_rate * 100.0,
            v.p50_ms,
            v.p99_ms
        );
        if let Some(s) = &v.shadow {
            println!(
                "{:>8} shadow: {} requests, {} errors, {} dropped, {} matched, {} mismatched, \
                 max |diff| {}, p50 {:.3} ms, p99 {:.3} ms",
                "",
                s.requests,
                s.errors,
                s.dropped,
                s.matched,
                s.mismatched,
                s.max_abs_diff,
                s.p50_ms,
                s.p99_ms
            );
        }
    }
    for c in &report.comparisons {
        println!(
            "{} vs {}: error rate {:.3}% vs {:.3}%, difference {:+.3}% ({:.0}% CI {:+.3}% .. \
             {:+.3}%), z = {:.2}, p = {:.4}",
            c.candidate,
            c.baseline,
            c.error_rate_candidate * 100.0,
            c.error_rate_baseline * 100.0,
            c.difference * 100.0,
            c.confidence * 100.0,
            c.ci_low * 100.0,
            c.ci_high * 100.0,
            c.z,
            c.p_value
        );
    }
}
