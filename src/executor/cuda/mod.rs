//! The CUDA executor, through cudarc with dynamic loading: the driver, NVRTC and cuBLAS libraries
//! are opened at run time, so the build needs no CUDA toolkit and a machine without a GPU still
//! runs (models asking for KIND_GPU then fail to load with the reason the probe gives).
//!
//! `model` plans a graph (`gpu_plan`), compiles its kernels with NVRTC and uploads the weights per
//! GPU; `instance` runs batches on a stream of its own; `driver` owns the raw resources.
#![allow(unsafe_code)]

pub mod driver;
mod instance;
pub mod model;

pub use model::{GpuOptions, load};

use std::sync::OnceLock;

use cudarc::driver::CudaContext;

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: usize,
    /// The device's UUID as NVML and `nvidia-smi` write it: `GPU-` and 32 hex digits in groups.
    pub uuid: String,
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
                uuid: format_uuid(
                    &context
                        .uuid()
                        .map_err(|e| format!("GPU {ordinal}: {e:?}"))?
                        .bytes,
                ),
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

/// A CUDA device UUID in NVML's form: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..].concat()
    )
}

/// Why a KIND_GPU instance group cannot load here, if it cannot: no GPU, or the NVRTC or cuBLAS
/// library missing.
pub fn gpu_load_refusal() -> Option<String> {
    let probe = gpus();
    let missing = |what: &str| {
        Some(format!(
            "KIND_GPU needs the CUDA {what} library ({}), which was not found",
            library_names(what)
        ))
    };
    match &probe.unavailable {
        Some(reason) => Some(format!("KIND_GPU needs a usable GPU: {reason}")),
        None if !probe.nvrtc => missing("NVRTC"),
        None if !probe.cublas => missing("cuBLAS"),
        None => None,
    }
}

fn library_names(what: &str) -> &'static str {
    match what {
        "NVRTC" => "libnvrtc.so.13",
        _ => "libcublas.so.13",
    }
}

/// Holds a GPU's primary context and reads its memory use: tests of load/unload cycles keep one
/// for their whole run, so that a leak cannot hide behind the context being torn down.
pub struct DeviceMemory(std::sync::Arc<CudaContext>);

impl DeviceMemory {
    pub fn open(ordinal: usize) -> Result<DeviceMemory, String> {
        if let Some(reason) = gpu_load_refusal() {
            return Err(reason);
        }
        CudaContext::new(ordinal)
            .map(DeviceMemory)
            .map_err(|e| format!("GPU {ordinal}: {e:?}"))
    }

    /// Bytes of device memory in use on the GPU (total less free), by every process.
    pub fn used(&self) -> Result<usize, String> {
        driver::memory_info(&self.0).map(|(free, total)| total - free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_written_as_nvml_writes_them() {
        let bytes: [std::ffi::c_char; 16] =
            std::array::from_fn(|i| (i * 17) as u8 as std::ffi::c_char);
        assert_eq!(
            format_uuid(&bytes),
            "GPU-00112233-4455-6677-8899-aabbccddeeff"
        );
    }

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
        for gpu in &probe.gpus {
            assert!(
                gpu.uuid.starts_with("GPU-") && gpu.uuid.len() == 40,
                "{gpu:?}"
            );
        }
        match gpu_load_refusal() {
            Some(refusal) => assert!(refusal.contains("KIND_GPU"), "{refusal}"),
            None => assert!(probe.nvrtc && probe.cublas && !probe.gpus.is_empty()),
        }
    }
}
