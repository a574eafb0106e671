//! ModelStatistics: the per-version counters, in Triton's message shape.

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::registry::stats::{DurationStat, VersionStats};

use super::pb::{InferBatchStatistics, InferStatistics, ModelStatistics, StatisticDuration};

fn duration(stat: &DurationStat) -> Option<StatisticDuration> {
    let (count, ns) = stat.read();
    Some(StatisticDuration { count, ns })
}

fn version_statistics(name: &str, label: &str, stats: &VersionStats) -> ModelStatistics {
    let batch_stats = stats
        .batches()
        .into_iter()
        .map(|(size, f)| InferBatchStatistics {
            batch_size: size,
            compute_input: Some(StatisticDuration {
                count: f.count,
                ns: f.compute_input_ns,
            }),
            compute_infer: Some(StatisticDuration {
                count: f.count,
                ns: f.compute_infer_ns,
            }),
            compute_output: Some(StatisticDuration {
                count: f.count,
                ns: f.compute_output_ns,
            }),
        })
        .collect();
    ModelStatistics {
        name: name.to_string(),
        version: label.to_string(),
        last_inference: stats.last_inference_ms.load(Ordering::Relaxed),
        inference_count: stats.inference_count.load(Ordering::Relaxed),
        execution_count: stats.execution_count.load(Ordering::Relaxed),
        inference_stats: Some(InferStatistics {
            success: duration(&stats.success),
            fail: duration(&stats.fail),
            queue: duration(&stats.queue),
            compute_input: duration(&stats.compute_input),
            compute_infer: duration(&stats.compute_infer),
            compute_output: duration(&stats.compute_output),
            cache_hit: Some(StatisticDuration::default()),
            cache_miss: Some(StatisticDuration::default()),
        }),
        batch_stats,
        ..Default::default()
    }
}

/// Statistics of the ready versions of one model (or of every model when `name` is empty),
/// optionally of one version.
pub fn collect(registry: &Registry, name: &str, version: &str) -> Result<Vec<ModelStatistics>> {
    let models = if name.is_empty() {
        registry.models()
    } else {
        vec![registry.get(name)?]
    };
    let mut out = Vec::new();
    for model in models {
        let snapshot = model.snapshot();
        if !version.is_empty() && !name.is_empty() {
            let v = model.pick(version)?;
            out.push(version_statistics(&model.name, v.label(), &v.stats));
            continue;
        }
        for v in snapshot.ready_versions() {
            out.push(version_statistics(&model.name, v.label(), &v.stats));
        }
    }
    if out.is_empty() && !name.is_empty() {
        return Err(Error::NotReady {
            model: name.to_string(),
            reason: "no version is ready".into(),
        });
    }
    Ok(out)
}
