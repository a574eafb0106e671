//! GPU families, in Triton's names and with its `gpu_uuid` label so that its dashboards work:
//! utilisation and device memory of every GPU the CUDA probe found, read through NVML (the
//! driver's management library, opened at run time by `nvml-wrapper`) at each scrape. Without a
//! GPU, or without NVML, there are no GPU samples; the reason is logged once.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use tracing::{info, warn};

use super::Family;

/// One GPU at one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub uuid: String,
    /// Share of the last sample period in which a kernel ran, 0 to 1; `None` where the device
    /// does not report it.
    pub utilization: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

/// NVML and the GPUs to report.
struct Monitor {
    nvml: Nvml,
    uuids: Vec<String>,
}

/// The library's names: the driver installs the versioned one; the bare name is a development
/// link.
const NVML_LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

fn open(uuids: Vec<String>) -> Result<Monitor, String> {
    let mut last = String::new();
    for name in NVML_LIBRARIES {
        match Nvml::builder().lib_path(name.as_ref()).init() {
            Ok(nvml) => return Ok(Monitor { nvml, uuids }),
            Err(e) => last = format!("{name}: {e}"),
        }
    }
    Err(format!("NVML could not be opened ({last})"))
}

fn monitor() -> Option<&'static Monitor> {
    static MONITOR: OnceLock<Option<Monitor>> = OnceLock::new();
    MONITOR
        .get_or_init(|| {
            let probe = crate::executor::cuda::gpus();
            if probe.gpus.is_empty() {
                return None;
            }
            match open(probe.gpus.iter().map(|g| g.uuid.clone()).collect()) {
                Ok(m) => Some(m),
                Err(reason) => {
                    warn!(%reason, "GPU metrics are off");
                    None
                }
            }
        })
        .as_ref()
}

/// Reads every GPU now: empty without a GPU or NVML. Blocking (NVML calls the driver).
pub fn sample() -> Vec<GpuSample> {
    let Some(monitor) = monitor() else {
        return Vec::new();
    };
    let mut samples = Vec::with_capacity(monitor.uuids.len());
    for uuid in &monitor.uuids {
        let read = monitor
            .nvml
            .device_by_uuid(uuid.as_str())
            .and_then(|device| {
                let memory = device.memory_info()?;
                let utilization = device
                    .utilization_rates()
                    .ok()
                    .map(|u| f64::from(u.gpu) / 100.0);
                Ok(GpuSample {
                    uuid: uuid.clone(),
                    utilization,
                    memory_used_bytes: memory.used,
                    memory_total_bytes: memory.total,
                })
            });
        match read {
            Ok(sample) => samples.push(sample),
            Err(e) => log_once(uuid, &e.to_string()),
        }
    }
    samples
}

/// Logs a GPU that NVML cannot read, the first time only.
fn log_once(uuid: &str, error: &str) {
    static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if !logged.iter().any(|u| u == uuid) {
        logged.push(uuid.to_string());
        info!(gpu_uuid = uuid, %error, "NVML cannot read this GPU; it has no GPU metrics");
    }
}

/// The GPU families for `samples`; none when there are no samples.
pub(super) fn families(samples: &[GpuSample]) -> Vec<Family> {
    if samples.is_empty() {
        return Vec::new();
    }
    let mut utilization = Family::new(
        "nv_gpu_utilization",
        "gauge",
        "GPU utilization rate [0.0 - 1.0)",
    );
    let mut total = Family::new(
        "nv_gpu_memory_total_bytes",
        "gauge",
        "GPU total memory, in bytes",
    );
    let mut used = Family::new(
        "nv_gpu_memory_used_bytes",
        "gauge",
        "GPU used memory, in bytes",
    );
    for s in samples {
        let label = || vec![("gpu_uuid", s.uuid.clone())];
        if let Some(u) = s.utilization {
            utilization.add(label(), u);
        }
        total.add(label(), s.memory_total_bytes as f64);
        used.add(label(), s.memory_used_bytes as f64);
    }
    vec![utilization, total, used]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(families: &[Family]) -> String {
        let mut out = String::new();
        for f in families {
            f.write(&mut out);
        }
        out
    }

    #[test]
    fn each_gpu_gets_triton_named_gauges_labelled_by_uuid() {
        let samples = [
            GpuSample {
                uuid: "GPU-00000000-0000-0000-0000-000000000001".into(),
                utilization: Some(0.37),
                memory_used_bytes: 1_048_576,
                memory_total_bytes: 85_899_345_920,
            },
            GpuSample {
                uuid: "GPU-00000000-0000-0000-0000-000000000002".into(),
                utilization: None,
                memory_used_bytes: 0,
                memory_total_bytes: 42,
            },
        ];
        let out = text(&families(&samples));
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                r#"nv_gpu_utilization{gpu_uuid="GPU-00000000-0000-0000-0000-000000000001"} 0.37"#,
                r#"nv_gpu_memory_total_bytes{gpu_uuid="GPU-00000000-0000-0000-0000-000000000001"} 85899345920"#,
                r#"nv_gpu_memory_total_bytes{gpu_uuid="GPU-00000000-0000-0000-0000-000000000002"} 42"#,
                r#"nv_gpu_memory_used_bytes{gpu_uuid="GPU-00000000-0000-0000-0000-000000000001"} 1048576"#,
                r#"nv_gpu_memory_used_bytes{gpu_uuid="GPU-00000000-0000-0000-0000-000000000002"} 0"#,
            ]
        );
        assert!(out.contains("# TYPE nv_gpu_utilization gauge"), "{out}");
    }

    #[test]
    fn every_gpu_metric_the_dashboard_queries_is_exported() {
        let dashboard = include_str!("../../../deploy/grafana/switchyard.json");
        let sample = GpuSample {
            uuid: "GPU-0".into(),
            utilization: Some(0.5),
            memory_used_bytes: 1,
            memory_total_bytes: 2,
        };
        let out = text(&families(&[sample]));
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("nv_gpu_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 3, "{names:?}");
        for name in names {
            assert!(
                out.contains(&format!("# TYPE {name} gauge")),
                "the dashboard queries {name}, which is not exported"
            );
        }
    }

    #[test]
    fn without_gpus_there_are_no_gpu_families() {
        assert!(families(&[]).is_empty());
        // This machine's own answer: no samples where the probe finds no GPU.
        if crate::executor::cuda::gpus().gpus.is_empty() {
            assert!(sample().is_empty());
        }
    }
}
