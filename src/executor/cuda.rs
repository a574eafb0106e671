//! GPU discovery through cudarc with dynamic loading: the driver, NVRTC and cuBLAS libraries are
//! opened at run time, so the build needs no CUDA toolkit and a machine without a GPU still runs.
//! The CUDA executor that runs models on the GPU builds on this; until it exists, models asking
//! for KIND_GPU fail to load with the reason this probe gives.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use cudarc::driver::CudaContext;

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
}

/// What the machine offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProbe {
    /// The GPUs found; empty when there is no usable GPU.
    pub gpus: Vec<GpuInfo>,
    /// Why there is no usable GPU, when there is none.
    pub unavailable: Option<String>,
    /// Whether the NVRTC and cuBLAS libraries could be opened.
    pub nvrtc: bool,
    pub cublas: bool,
}

/// The probe of this process, run once.
pub fn gpus() -> &'static GpuProbe {
    static PROBE: OnceLock<GpuProbe> = OnceLock::new();
    PROBE.get_or_init(probe)
}

/// Looks for the CUDA libraries and the GPUs, never panicking: cudarc panics when a library it
/// is asked to use is missing, so presence is checked first and every driver call is contained.
pub fn probe() -> GpuProbe {
    // SAFETY: each `is_culib_present` only tries to open the named shared libraries (dlopen) and
    // closes them again; it calls no function inside them.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    let unavailable = |reason: String| GpuProbe {
        gpus: Vec::new(),
        unavailable: Some(reason),
        nvrtc,
        cublas,
    };
    if !driver {
        return unavailable(
            "no NVIDIA driver: the CUDA driver library (libcuda) was not found".into(),
        );
    }
    let listed = std::panic::catch_unwind(list_gpus)
        .unwrap_or_else(|_| Err("the CUDA driver failed while listing devices".into()));
    match listed {
        Ok(gpus) if gpus.is_empty() => unavailable("the CUDA driver reports no devices".into()),
        Ok(gpus) => GpuProbe {
            gpus,
            unavailable: None,
            nvrtc,
            cublas,
        },
        Err(reason) => unavailable(reason),
    }
}

fn list_gpus() -> Result<Vec<GpuInfo>, String> {
    let count = CudaContext::device_count().map_err(|e| format!("CUDA driver: {e:?}"))?;
    (0..count.max(0) as usize)
        .map(|ordinal| {
            let context = CudaContext::new(ordinal).map_err(|e| format!("GPU {ordinal}: {e:?}"))?;
            Ok(GpuInfo {
                ordinal,
                name: context
                    .name()
                    .map_err(|e| format!("GPU {ordinal}: {e:?}"))?,
                compute_capability: context
                    .compute_capability()
                    .map_err(|e| format!("GPU {ordinal}: {e:?}"))?,
                total_memory_bytes: context
                    .total_mem()
                    .map_err(|e| format!("GPU {ordinal}: {e:?}"))?,
            })
        })
        .collect()
}

/// Why a KIND_GPU instance group cannot load here.
pub fn gpu_load_refusal() -> String {
    let probe = gpus();
    match &probe.unavailable {
        Some(reason) => format!("KIND_GPU needs a usable GPU: {reason}"),
        None => format!(
            "{} GPU(s) found, but the CUDA executor does not run models yet; use KIND_CPU",
            probe.gpus.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answers_without_panicking_with_or_without_a_gpu() {
        let probe = probe();
        assert_eq!(
            probe.gpus.is_empty(),
            probe.unavailable.is_some(),
            "{probe:?}"
        );
        for gpu in &probe.gpus {
            assert!(
                !gpu.name.is_empty() && gpu.total_memory_bytes > 0,
                "{gpu:?}"
            );
        }
        let refusal = gpu_load_refusal();
        assert!(
            refusal.contains("KIND_GPU") || refusal.contains("CUDA executor"),
            "{refusal}"
        );
    }
}
