//! The route table of one model snapshot: which ready versions take requests that name no
//! version, and in what shares. Built once per snapshot (at swap time) from the traffic policy
//! and the ready versions; per request it is only read.
//!
//! Sticky assignment uses weighted rendezvous hashing: every arm scores a key with
//! `-ln(u) / weight`, where `u` is a uniform number derived from a fixed hash of the key and the
//! version, and the lowest score wins. The hash has no per-process state, so every replica and
//! every restart assigns a key to the same version while the weights stay the same; raising one
//! arm's weight lowers only that arm's scores, so keys only ever move towards it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::registry::{ModelVersion, VersionStatus};

use super::policy::TrafficPolicy;

/// A ready version with a positive weight.
#[derive(Clone)]
struct Arm {
    version: u64,
    weight: f64,
    serving: Arc<ModelVersion>,
}

/// Where shadow traffic goes.
#[derive(Clone)]
pub struct ShadowTarget {
    pub serving: Arc<ModelVersion>,
    /// Share of routed requests mirrored, 0-1.
    pub fraction: f64,
}

/// Why a request went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The request named the version.
    Named,
    /// The model is pinned.
    Pinned,
    /// Chosen by weight from the routing key.
    Sticky,
    /// Chosen by weight at random (no routing key).
    Random,
    /// No weights apply: the version policy's default.
    Default,
}

impl RouteKind {
    /// Every kind, in the order of [`RouteKind::index`].
    pub const ALL: [RouteKind; 5] = [
        RouteKind::Named,
        RouteKind::Pinned,
        RouteKind::Sticky,
        RouteKind::Random,
        RouteKind::Default,
    ];

    /// The kind's position in [`RouteKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in traces and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Named => "named",
            RouteKind::Pinned => "pinned",
            RouteKind::Sticky => "sticky",
            RouteKind::Random => "random",
            RouteKind::Default => "default",
        }
    }
}

/// The precomputed routing of one snapshot.
#[derive(Clone, Default)]
pub struct RouteTable {
    arms: Vec<Arm>,
    total: f64,
    pin: Option<Arc<ModelVersion>>,
    shadow: Option<ShadowTarget>,
    notes: Vec<String>,
}

impl RouteTable {
    /// Builds the table for a policy over the versions of a snapshot.
    pub fn build(policy: &TrafficPolicy, versions: &BTreeMap<u64, VersionStatus>) -> RouteTable {
        let ready = |v: u64| versions.get(&v).and_then(|s| s.serving.clone());
        let mut table = RouteTable::default();
        if let Some(pin) = policy.pin {
            table.pin = ready(pin);
            if table.pin.is_none() {
                table.notes.push(format!(
                    "pinned version {pin} is not ready; the pin is ignored"
                ));
            }
        }
        for (&version, &weight) in policy.weights.iter().filter(|(_, w)| **w > 0.0) {
            match ready(version) {
                Some(serving) => table.arms.push(Arm {
                    version,
                    weight,
                    serving,
                }),
                None => table.notes.push(format!(
                    "version {version} (weight {weight}) is not ready; its share goes to the \
                     other weighted versions"
                )),
            }
        }
        table.total = table.arms.iter().map(|a| a.weight).sum();
        if table.arms.is_empty() && !policy.weights.is_empty() {
            table.notes.push(
                "no weighted version is ready: requests naming no version go to the newest \
                 ready version"
                    .into(),
            );
        }
        if let Some(shadow) = &policy.shadow {
            match ready(shadow.version) {
                Some(serving) if shadow.percent > 0.0 => {
                    table.shadow = Some(ShadowTarget {
                        serving,
                        fraction: shadow.percent / 100.0,
                    })
                }
                Some(_) => {}
                None => table.notes.push(format!(
                    "shadow version {} is not ready; nothing is mirrored",
                    shadow.version
                )),
            }
        }
        table
    }

    /// The pinned version, when the pin is in force.
    pub fn pinned(&self) -> Option<&Arc<ModelVersion>> {
        self.pin.as_ref()
    }

    /// The shadow target, when shadow traffic is on.
    pub fn shadow(&self) -> Option<&ShadowTarget> {
        self.shadow.as_ref()
    }

    /// What is worth telling about this table (weighted versions that are not ready, ...).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The share (percent) of weight-routed requests each weighted ready version takes.
    pub fn effective_percent(&self) -> Vec<(u64, f64)> {
        self.arms
            .iter()
            .map(|a| (a.version, 100.0 * a.weight / self.total))
            .collect()
    }

    /// Whether weights decide where requests naming no version go.
    pub fn is_weighted(&self) -> bool {
        !self.arms.is_empty()
    }

    /// Chooses among the weighted arms: by rendezvous score for a key hash, else at random.
    /// Arms whose circuit breaker is open are passed over while a healthy arm exists.
    pub fn pick(&self, key: Option<u64>) -> Option<(&Arc<ModelVersion>, RouteKind)> {
        let healthy_only = self.arms.iter().any(|a| a.serving.is_healthy())
            && !self.arms.iter().all(|a| a.serving.is_healthy());
        let eligible = |a: &&Arm| !healthy_only || a.serving.is_healthy();
        match key {
            Some(key) => self
                .arms
                .iter()
                .filter(eligible)
                .map(|a| (rendezvous_score(key, a.version, a.weight), a))
                .min_by(|x, y| x.0.total_cmp(&y.0))
                .map(|(_, a)| (&a.serving, RouteKind::Sticky)),
            None => {
                let total: f64 = self.arms.iter().filter(eligible).map(|a| a.weight).sum();
                let mut point = fastrand::f64() * total;
                let mut chosen = None;
                for arm in self.arms.iter().filter(eligible) {
                    chosen = Some(arm);
                    if point < arm.weight {
                        break;
                    }
                    point -= arm.weight;
                }
                chosen.map(|a| (&a.serving, RouteKind::Random))
            }
        }
    }
}

/// A routing key's hash: stable across processes, platforms and releases (FNV-1a, then a
/// 64-bit finaliser for avalanche).
pub fn key_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// The splitmix64 finaliser.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `-ln(u) / weight` with `u` uniform in (0, 1) from the key and the version.
fn rendezvous_score(key: u64, version: u64, weight: f64) -> f64 {
    let h = mix(key ^ mix(version.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -u.ln() / weight
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(key: u64, weights: &[(u64, f64)]) -> u64 {
        weights
            .iter()
            .map(|&(v, w)| (rendezvous_score(key, v, w), v))
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .map(|(_, v)| v)
            .unwrap()
    }

    #[test]
    fn key_hash_is_fixed() {
        // Replicas and restarts must agree: these values may never change.
        assert_eq!(key_hash(""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(key_hash("user-1"), key_hash("user-1"));
        assert_ne!(key_hash("user-1"), key_hash("user-2"));
        // FNV-1a of "user-42" through the splitmix64 finaliser, computed independently.
        assert_eq!(key_hash("user-42"), 0x7a15_96f0_e94b_5793);
    }

    #[test]
    fn rendezvous_shares_follow_weights() {
        let weights = [(1, 90.0), (2, 10.0)];
        let n = 100_000u64;
        let to_2 = (0..n)
            .filter(|k| assign(key_hash(&format!("k{k}")), &weights) == 2)
            .count() as f64;
        let share = to_2 / n as f64;
        assert!((share - 0.10).abs() < 0.005, "share {share}");
    }

    #[test]
    fn raising_the_canary_only_moves_keys_towards_it() {
        let before = [(1, 90.0), (2, 10.0)];
        let after = [(1, 50.0), (2, 50.0)];
        let mut moved = 0;
        for k in 0..20_000 {
            let key = key_hash(&format!("user-{k}"));
            let (a, b) = (assign(key, &before), assign(key, &after));
            assert!(!(a == 2 && b == 1), "key {k} moved back to the baseline");
            moved += usize::from(a != b);
        }
        assert!(moved > 7_000, "moved {moved}");
    }

    #[test]
    fn three_way_split_and_removal_keeps_other_keys() {
        let three = [(1, 40.0), (2, 40.0), (3, 20.0)];
        let without_3 = [(1, 40.0), (2, 40.0)];
        for k in 0..10_000 {
            let key = key_hash(&format!("u{k}"));
            let a = assign(key, &three);
            if a != 3 {
                assert_eq!(a, assign(key, &without_3), "key {k} moved needlessly");
            }
        }
    }
}
