//! Shadow traffic: a share of the requests routed by policy is also sent, asynchronously, to a
//! candidate version. The client only ever sees the primary's answer. The shadow's latency,
//! errors and the difference of its outputs against the primary's are recorded on the shadow
//! version. Shadow work never delays the primary: at most `SHADOW_SLOTS` mirrored requests per
//! model are in flight, and a request arriving while all slots are taken is not mirrored (and
//! counted as dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};

use crate::tensor::{DataType, InferRequest, InferResponse, Tensor, split_bytes_elements};

use super::router::ShadowTarget;
use super::stats::LatencyHistogram;

/// Mirrored requests in flight per model, at most.
pub const SHADOW_SLOTS: usize = 64;

/// What shadow traffic to one version found.
#[derive(Debug, Default)]
pub struct ShadowStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub matched: AtomicU64,
    pub mismatched: AtomicU64,
    /// Bits of the largest absolute difference seen (a non-negative f64, whose bit patterns order
    /// like the numbers).
    max_abs_diff_bits: AtomicU64,
    /// Latency of successful shadow requests.
    pub latency: LatencyHistogram,
}

impl ShadowStats {
    /// The largest absolute difference of any output element against the primary.
    pub fn max_abs_diff(&self) -> f64 {
        f64::from_bits(self.max_abs_diff_bits.load(Ordering::Relaxed))
    }

    fn record_comparison(&self, difference: Difference) {
        match difference {
            Difference::Values(0.0) => self.matched.fetch_add(1, Ordering::Relaxed),
            _ => self.mismatched.fetch_add(1, Ordering::Relaxed),
        };
        let magnitude = match difference {
            Difference::Values(d) => d,
            Difference::Structure => f64::INFINITY,
        };
        if magnitude > 0.0 {
            self.max_abs_diff_bits
                .fetch_max(magnitude.to_bits(), Ordering::Relaxed);
        }
    }
}

/// The bounded number of shadow requests a model may have in flight.
#[derive(Debug, Clone)]
pub struct ShadowSlots(Arc<Semaphore>);

impl Default for ShadowSlots {
    fn default() -> Self {
        ShadowSlots(Arc::new(Semaphore::new(SHADOW_SLOTS)))
    }
}

/// The primary's side of a mirrored request: hands its answer over for comparison.
pub struct Mirror {
    primary: oneshot::Sender<InferResponse>,
}

impl Mirror {
    /// Passes the primary's answer to the shadow task; a failed primary is not compared.
    pub fn primary_done(self, answer: Result<&InferResponse, ()>) {
        if let Ok(answer) = answer {
            let _ = self.primary.send(answer.clone());
        }
    }
}

/// Mirrors `request` to the shadow target when it is sampled and a slot is free. The shadow runs
/// on its own task; the returned handle takes the primary's answer.
pub fn mirror(
    target: &ShadowTarget,
    slots: &ShadowSlots,
    primary_version: u64,
    request: &InferRequest,
) -> Option<Mirror> {
    let shadow = &target.serving;
    if shadow.version == primary_version
        || (target.fraction < 1.0 && fastrand::f64() >= target.fraction)
    {
        return None;
    }
    let stats = &shadow.stats.shadow;
    let Ok(permit) = Arc::clone(&slots.0).try_acquire_owned() else {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let (tx, rx) = oneshot::channel::<InferResponse>();
    let mut mirrored = request.clone();
    mirrored.model_version = shadow.label().to_string();
    let shadow = Arc::clone(shadow);
    tokio::spawn(async move {
        let started = Instant::now();
        let answer = shadow.infer(mirrored).await;
        let stats = &shadow.stats.shadow;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(answer) => {
                stats.latency.record(started.elapsed());
                if let Ok(primary) = rx.await {
                    stats.record_comparison(compare(&primary.outputs, &answer.outputs));
                }
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(permit);
    });
    Some(Mirror { primary: tx })
}

/// How two answers differ.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Difference {
    /// Same outputs, shapes and types; the largest absolute element difference.
    Values(f64),
    /// Outputs, shapes or types differ.
    Structure,
}

fn compare(primary: &[Tensor], shadow: &[Tensor]) -> Difference {
    let mut largest = 0.0f64;
    for p in primary {
        let Some(s) = shadow.iter().find(|s| s.name == p.name) else {
            return Difference::Structure;
        };
        if s.datatype != p.datatype || s.shape != p.shape {
            return Difference::Structure;
        }
        match (values(p), values(s)) {
            (Some(a), Some(b)) if a.len() == b.len() => {
                for (x, y) in a.iter().zip(&b) {
                    let d = (x - y).abs();
                    largest = if d.is_nan() {
                        f64::INFINITY
                    } else {
                        largest.max(d)
                    };
                }
            }
            (None, None) if p.datatype == DataType::Bytes => {
                let same = split_bytes_elements(&p.data) == split_bytes_elements(&s.data);
                if !same {
                    largest = largest.max(1.0);
                }
            }
            _ => return Difference::Structure,
        }
    }
    Difference::Values(largest)
}

/// The elements of a numeric tensor as f64; `None` for BYTES or malformed data.
fn values(t: &Tensor) -> Option<Vec<f64>> {
    let size = t.datatype.element_size()?;
    if t.datatype == DataType::Bytes || !t.data.len().is_multiple_of(size) {
        return None;
    }
    let chunks = t.data.chunks_exact(size);
    let read = |c: &[u8]| -> f64 {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        match t.datatype {
            DataType::Bool | DataType::Uint8 => f64::from(c[0]),
            DataType::Int8 => f64::from(c[0] as i8),
            DataType::Uint16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            DataType::Int16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            DataType::Uint32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DataType::Int32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DataType::Uint64 => u64::from_le_bytes(b) as f64,
            DataType::Int64 => i64::from_le_bytes(b) as f64,
            DataType::Fp16 => half_to_f64(u16::from_le_bytes([b[0], b[1]])),
            DataType::Fp32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DataType::Fp64 => f64::from_le_bytes(b),
            DataType::Bytes => f64::NAN,
        }
    };
    Some(chunks.map(read).collect())
}

/// IEEE 754 half precision to f64.
fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((h >> 10) & 0x1f);
    let fraction = f64::from(h & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn fp32(name: &str, values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![1, values.len() as i64],
            data: Bytes::from(
                values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
        }
    }

    #[test]
    fn equal_answers_match_and_differences_are_measured() {
        let a = [fp32("OUT", &[1.0, 2.0, 3.0])];
        assert_eq!(compare(&a, &a), Difference::Values(0.0));
        let b = [fp32("OUT", &[1.0, 2.5, 1003.0])];
        assert_eq!(compare(&a, &b), Difference::Values(1000.0));
        let c = [fp32("OTHER", &[1.0, 2.0, 3.0])];
        assert_eq!(compare(&a, &c), Difference::Structure);
        let d = [fp32("OUT", &[1.0, 2.0])];
        assert_eq!(compare(&a, &d), Difference::Structure);
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(half_to_f64(0x3c00), 1.0);
        assert_eq!(half_to_f64(0xc000), -2.0);
        assert_eq!(half_to_f64(0x0001), 2f64.powi(-24));
        assert!(half_to_f64(0x7e00).is_nan());
    }

    #[test]
    fn stats_keep_the_largest_difference() {
        let stats = ShadowStats::default();
        stats.record_comparison(Difference::Values(0.0));
        stats.record_comparison(Difference::Values(2.5));
        stats.record_comparison(Difference::Values(1.0));
        assert_eq!(stats.matched.load(Ordering::Relaxed), 1);
        assert_eq!(stats.mismatched.load(Ordering::Relaxed), 2);
        assert_eq!(stats.max_abs_diff(), 2.5);
    }
}
