//! Loading a model for the GPU: plan the graph, compile its kernels with NVRTC for each GPU the
//! instance groups name, upload the weights once per GPU, and hand out instances.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::CudaContext;

use crate::executor::gpu_plan::library_src::{kernel_names, module_source};
use crate::executor::gpu_plan::onnx::ElemType;
use crate::executor::gpu_plan::pool::{DeviceAllocator, DeviceWeights, MemoryKind};
use crate::executor::gpu_plan::{Program, onnx::Dim};
use crate::executor::{Instance, LoadedModel};
use crate::proto::inference::ModelConfig;
use crate::proto::inference::model_instance_group::Kind;
use crate::schema::ModelSchema;
use crate::tensor::DataType;

use super::driver::{DeviceBuffer, GemmMath, Module, PinnedBuffer};
use super::instance::CudaInstance;

/// What the configuration asks of the GPU executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOptions {
    /// `parameters { key: "precision" value: { string_value: "fp16" } }`; fp32 by default.
    pub math: GemmMath,
    /// `optimization { cuda { graphs: true } }`: capture one CUDA graph per batch size.
    pub graphs: bool,
}

impl GpuOptions {
    pub fn from_config(config: &ModelConfig) -> Result<GpuOptions, String> {
        let math = match config
            .parameters
            .get("precision")
            .map(|p| p.string_value.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("fp32") => GemmMath::Fp32,
            Some("fp16") => GemmMath::Fp16,
            Some(other) => {
                return Err(format!(
                    "parameter 'precision' must be \"fp32\" or \"fp16\", got \"{other}\""
                ));
            }
        };
        let graphs = config
            .optimization
            .as_ref()
            .and_then(|o| o.cuda.as_ref())
            .is_some_and(|c| c.graphs);
        Ok(GpuOptions { math, graphs })
    }
}

/// Device memory for the memory pool: device blocks and pinned host blocks.
pub struct CudaAlloc {
    pub ctx: Arc<CudaContext>,
}

/// A block of either kind.
pub enum Block {
    Device(DeviceBuffer),
    Host(PinnedBuffer),
}

impl Block {
    pub fn device(&self) -> &DeviceBuffer {
        match self {
            Block::Device(b) => b,
            Block::Host(_) => unreachable!("the pool asked for device memory here"),
        }
    }

    pub fn host(&self) -> &PinnedBuffer {
        match self {
            Block::Host(b) => b,
            Block::Device(_) => unreachable!("the pool asked for pinned memory here"),
        }
    }
}

impl DeviceAllocator for CudaAlloc {
    type Block = Block;

    fn allocate(&mut self, kind: MemoryKind, bytes: usize) -> Result<Block, String> {
        match kind {
            MemoryKind::Device => DeviceBuffer::new(&self.ctx, bytes).map(Block::Device),
            MemoryKind::PinnedHost => PinnedBuffer::new(&self.ctx, bytes).map(Block::Host),
        }
    }

    fn release(&mut self, block: Block) {
        drop(block);
    }
}

/// One GPU's share of a model: its compiled kernels and a copy of the weights.
pub struct DeviceModel {
    pub ctx: Arc<CudaContext>,
    pub ordinal: usize,
    pub module: Module,
    pub weights: DeviceWeights<CudaAlloc>,
    pub multiprocessors: u32,
}

/// A model loaded on its GPUs.
pub struct CudaModel {
    pub program: Arc<Program>,
    pub schema: Arc<ModelSchema>,
    pub options: GpuOptions,
    /// For each plan input, the index of its schema input.
    pub input_order: Vec<usize>,
    /// For each schema output, the index of its plan output.
    pub output_order: Vec<usize>,
    pub devices: Vec<DeviceModel>,
    /// The device (index into `devices`) of each configured instance, in order.
    placement: Vec<usize>,
    next: AtomicUsize,
}

fn elem_type(dt: DataType) -> Option<ElemType> {
    Some(match dt {
        DataType::Fp32 => ElemType::F32,
        DataType::Fp64 => ElemType::F64,
        DataType::Fp16 => ElemType::F16,
        DataType::Int64 => ElemType::I64,
        DataType::Int32 => ElemType::I32,
        DataType::Int8 => ElemType::I8,
        DataType::Uint8 => ElemType::U8,
        DataType::Bool => ElemType::Bool,
        _ => return None,
    })
}

/// GPU ordinals of every instance the KIND_GPU groups ask for: `count` instances on each GPU a
/// group lists, or on every GPU when it lists none (Triton's rule).
pub fn placement(config: &ModelConfig, available: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for (index, group) in config.instance_group.iter().enumerate() {
        if group.kind != Kind::Gpu as i32 {
            return Err(format!(
                "instance group #{index} is not KIND_GPU: a model runs either on GPUs or on the \
                 CPU, not both"
            ));
        }
        let gpus: Vec<usize> = if group.gpus.is_empty() {
            (0..available).collect()
        } else {
            group
                .gpus
                .iter()
                .map(|&g| {
                    usize::try_from(g)
                        .ok()
                        .filter(|&g| g < available)
                        .ok_or_else(|| {
                            format!(
                                "instance group #{index} names GPU {g}, but this machine has \
                                 {available} GPU(s)"
                            )
                        })
                })
                .collect::<Result<_, _>>()?
        };
        for gpu in gpus {
            for _ in 0..group.count.max(1) {
                out.push(gpu);
            }
        }
    }
    if out.is_empty() {
        out.push(0);
    }
    Ok(out)
}

/// Loads a model for the GPU executor.
pub fn load(
    config: &ModelConfig,
    schema: &Arc<ModelSchema>,
    model_file: &Path,
) -> Result<Arc<dyn LoadedModel>, String> {
    if let Some(reason) = super::gpu_load_refusal() {
        return Err(reason);
    }
    if !model_file.is_file() {
        return Err(format!("model file {} not found", model_file.display()));
    }
    let options = GpuOptions::from_config(config)?;
    let program = Program::from_file(model_file)
        .map_err(|e| format!("the GPU executor cannot run {}: {e}", model_file.display()))?;
    let (input_order, output_order) = match_io(&program, schema)?;
    if options.graphs {
        let variable = program
            .plan
            .inputs
            .iter()
            .find(|i| i.dims.iter().skip(1).any(|d| matches!(d, Dim::Var(_))));
        if let Some(input) = variable {
            return Err(format!(
                "CUDA graphs need fixed shapes, but input '{}' has a variable dimension besides \
                 the batch",
                input.name
            ));
        }
    }
    let probe = super::gpus();
    let placement_ordinals = placement(config, probe.gpus.len())?;
    let mut ordinals: Vec<usize> = placement_ordinals.clone();
    ordinals.sort_unstable();
    ordinals.dedup();
    let source = module_source(&program);
    let names = kernel_names(&program);
    let mut ptx_by_arch: BTreeMap<(i32, i32), String> = BTreeMap::new();
    let mut devices = Vec::new();
    for &ordinal in &ordinals {
        let info = &probe.gpus[ordinal];
        let arch = info.compute_capability;
        if let std::collections::btree_map::Entry::Vacant(slot) = ptx_by_arch.entry(arch) {
            slot.insert(compile(&source, arch)?);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("GPU {ordinal}: {e:?}"))?;
        let module = Module::load(&ctx, &ptx_by_arch[&arch], &names)?;
        let weights = DeviceWeights::allocate(
            CudaAlloc {
                ctx: Arc::clone(&ctx),
            },
            &program,
        )
        .map_err(|e| format!("GPU {ordinal}: weights: {e}"))?;
        weights
            .block()
            .device()
            .upload(&program.weights.image(&program.plan))?;
        let multiprocessors = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| format!("GPU {ordinal}: {e:?}"))? as u32;
        devices.push(DeviceModel {
            ctx,
            ordinal,
            module,
            weights,
            multiprocessors,
        });
    }
    let placement = placement_ordinals
        .iter()
        .map(|o| ordinals.iter().position(|x| x == o).expect("listed"))
        .collect();
    Ok(Arc::new(CudaLoaded(Arc::new(CudaModel {
        program: Arc::new(program),
        schema: Arc::clone(schema),
        options,
        input_order,
        output_order,
        devices,
        placement,
        next: AtomicUsize::new(0),
    }))))
}

/// Compiles the model's kernels to PTX for one GPU architecture, once per process for the same
/// source (a model reloaded with the same graph, or served under several names, compiles once).
pub fn compile(source: &str, arch: (i32, i32)) -> Result<String, String> {
    type Cache = std::sync::Mutex<std::collections::HashMap<(String, (i32, i32)), String>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (source.to_string(), arch);
    if let Some(ptx) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(ptx.clone());
    }
    let ptx = compile_uncached(source, arch)?;
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, ptx.clone());
    Ok(ptx)
}

fn compile_uncached(source: &str, (major, minor): (i32, i32)) -> Result<String, String> {
    let options = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
        ..Default::default()
    };
    std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(source, options))
        .map_err(|_| "NVRTC failed to start".to_string())?
        .map(|ptx| ptx.to_src())
        .map_err(|e| format!("NVRTC could not compile the model's kernels: {e:?}"))
}

fn match_io(program: &Program, schema: &ModelSchema) -> Result<(Vec<usize>, Vec<usize>), String> {
    let plan = &program.plan;
    let mut input_order = Vec::new();
    for input in &plan.inputs {
        let ix = schema
            .inputs
            .iter()
            .position(|s| s.name == input.name)
            .ok_or_else(|| {
                format!(
                    "the ONNX graph's input '{}' is not in the configuration",
                    input.name
                )
            })?;
        let spec = &schema.inputs[ix];
        let want = plan.values[input.value].dtype;
        if elem_type(spec.datatype) != Some(want) {
            return Err(format!(
                "input '{}' is {} in the configuration but {want:?} in the ONNX graph",
                spec.name,
                spec.datatype.config_name()
            ));
        }
        if spec.reshape.is_some() {
            return Err(format!(
                "input '{}': the GPU executor does not take a configured reshape",
                spec.name
            ));
        }
        input_order.push(ix);
    }
    if let Some(extra) = schema
        .inputs
        .iter()
        .find(|s| !plan.inputs.iter().any(|i| i.name == s.name))
    {
        return Err(format!(
            "input '{}' is not an input of the ONNX graph",
            extra.name
        ));
    }
    let mut output_order = Vec::new();
    for spec in &schema.outputs {
        let ix = plan
            .outputs
            .iter()
            .position(|&v| plan.values[v].name == spec.name)
            .ok_or_else(|| format!("output '{}' is not an output of the ONNX graph", spec.name))?;
        let got = plan.values[plan.outputs[ix]].dtype;
        if elem_type(spec.datatype) != Some(got) {
            return Err(format!(
                "output '{}' is {got:?} in the ONNX graph but {} in the configuration",
                spec.name,
                spec.datatype.config_name()
            ));
        }
        output_order.push(ix);
    }
    Ok((input_order, output_order))
}

impl CudaModel {
    /// The device of the next instance: the configured placement, in turn.
    fn next_device(&self) -> usize {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.placement[i % self.placement.len()]
    }
}

/// The handle the runner keeps.
pub struct CudaLoaded(pub Arc<CudaModel>);

impl LoadedModel for CudaLoaded {
    fn instance(&self) -> Result<Box<dyn Instance>, String> {
        let device = self.0.next_device();
        Ok(Box::new(CudaInstance::new(Arc::clone(&self.0), device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::{ModelInstanceGroup, ModelParameter};

    fn gpu_group(count: i32, gpus: &[i32]) -> ModelInstanceGroup {
        ModelInstanceGroup {
            kind: Kind::Gpu as i32,
            count,
            gpus: gpus.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn instances_go_count_times_onto_each_listed_gpu_or_every_gpu() {
        let config = ModelConfig {
            instance_group: vec![gpu_group(2, &[1, 0]), gpu_group(1, &[])],
            ..Default::default()
        };
        assert_eq!(placement(&config, 2).unwrap(), vec![1, 1, 0, 0, 0, 1]);
        let e = placement(&config, 1).unwrap_err();
        assert_eq!(
            e,
            "instance group #0 names GPU 1, but this machine has 1 GPU(s)"
        );
        let mixed = ModelConfig {
            instance_group: vec![
                gpu_group(1, &[]),
                ModelInstanceGroup {
                    kind: Kind::Cpu as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(
            placement(&mixed, 1)
                .unwrap_err()
                .starts_with("instance group #1 is not KIND_GPU"),
        );
    }

    #[test]
    fn precision_and_graphs_come_from_the_configuration() {
        let mut config = ModelConfig::default();
        assert_eq!(
            GpuOptions::from_config(&config).unwrap(),
            GpuOptions {
                math: GemmMath::Fp32,
                graphs: false
            }
        );
        let text = "optimization { cuda { graphs: true } }\n\
                    parameters { key: \"precision\" value: { string_value: \"FP16\" } }";
        let parsed = crate::repository::model_config::parse(text).unwrap();
        assert_eq!(
            GpuOptions::from_config(&parsed).unwrap(),
            GpuOptions {
                math: GemmMath::Fp16,
                graphs: true
            }
        );
        config.parameters.insert(
            "precision".into(),
            ModelParameter {
                string_value: "bf16".into(),
            },
        );
        assert_eq!(
            GpuOptions::from_config(&config).unwrap_err(),
            "parameter 'precision' must be \"fp32\" or \"fp16\", got \"bf16\""
        );
    }
}
