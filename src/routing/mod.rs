//! Traffic management: how a model's requests are split between its ready versions.
//!
//! - [`policy`]: `<model>/traffic.yaml` — weights, pin, routing key, shadow, rollout plan.
//! - [`router`]: the route table built per snapshot, sticky (rendezvous) and random picks.
//! - [`shadow`]: mirroring a share of requests to a candidate and comparing its answers.
//! - [`rollout`]: the pure gate and step decisions of an automatic rollout.
//! - [`controller`]: the task that steps rollouts and rolls them back.
//! - [`history`]: every change of a model's traffic, with its cause.
//! - [`stats`], [`report`]: latency histograms and the statistics of the A/B report.

pub mod commands;
pub mod controller;
pub mod history;
pub mod policy;
pub mod report;
pub mod rollout;
pub mod router;
pub mod shadow;
pub mod stats;

pub use policy::TrafficPolicy;
pub use router::{RouteKind, RouteTable};

/// Where the policy in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicySource {
    /// No traffic file: the version policy decides.
    #[default]
    None,
    /// `<model>/traffic.yaml`.
    File,
    /// An in-memory override (the repository could not be written, or the daemon was told not
    /// to write it); lost at restart.
    Memory,
}

impl PolicySource {
    /// The name reported by the management API.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::None => "none",
            PolicySource::File => "file",
            PolicySource::Memory => "memory",
        }
    }
}

/// The traffic policy of a snapshot and where it came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficState {
    pub policy: TrafficPolicy,
    pub source: PolicySource,
    /// Why the source is what it is, or why the traffic file was rejected; empty when all is
    /// well.
    pub detail: String,
}

/// The request parameter that carries a routing key.
pub const ROUTING_KEY_PARAMETER: &str = "routing_key";
