//! The GPU executor's plan of a model, everything about running an ONNX graph on a GPU that
//! needs no GPU: lowering the graph to steps (GEMMs, element-wise operations, reductions, copies
//! and views), refusing unsupported operators by name, shape inference at any batch size, fusion
//! of element-wise steps into generated CUDA C kernels, and the device-memory plan (weights
//! once, one reused activation arena, pinned staging) behind an allocator trait. `reference`
//! runs a plan on the host with the same buffers and launch dimensions, to test all of this
//! against the CPU executor.
//!
//! The CUDA executor (`cuda`) adds the device side: streams, cuBLAS, NVRTC, copies.

pub mod buffers;
pub mod fusion;
pub mod gemm;
pub mod kernel_src;
pub mod library_src;
mod lower;
pub mod onnx;
mod ops;
pub mod plan;
pub mod pool;
pub mod reference;
mod reference_ops;
pub mod shape;
mod shape_rules;

use std::path::Path;

use tract_onnx::pb::{ModelProto, NodeProto};

pub use buffers::{BufferPlan, Storage, WeightLayout};
pub use fusion::{Fusion, Kernel, KernelKind, fuse};
pub use kernel_src::KernelSource;
pub use lower::Unsupported;
pub use ops::SUPPORTED_OPS;
pub use plan::{Op, Plan, Step, ValueId};
pub use pool::{BatchPlan, DeviceAllocator, DeviceWeights, MemoryKind, MemoryPool, PoolError};
pub use shape::{Launch, ShapeError, Shapes};

/// Why a model cannot be planned for the GPU.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LowerError {
    /// The file could not be read or decoded, or the graph is incomplete.
    #[error("{0}")]
    Read(String),
    /// Operators (or input types) outside what the GPU executor runs: every one of them.
    #[error("unsupported operators: {}", join(.0))]
    Unsupported(Vec<Unsupported>),
    /// A node that is malformed (bad attributes or arity).
    #[error("node {node} ({op_type}): {reason}")]
    Invalid {
        node: String,
        op_type: String,
        reason: String,
    },
    /// The graph lowers, but its shapes do not fit together.
    #[error("shapes do not fit: {0}")]
    Shape(#[from] ShapeError),
}

fn join(list: &[Unsupported]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl LowerError {
    pub(crate) fn invalid(node: &NodeProto, reason: String) -> LowerError {
        LowerError::Invalid {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            reason,
        }
    }
}

/// A model ready for the GPU executor: its plan, its kernels and its weight layout. Nothing
/// here depends on the batch size; `BatchPlan` sizes it for one.
#[derive(Debug, Clone)]
pub struct Program {
    pub plan: Plan,
    pub fusion: Fusion,
    pub weights: WeightLayout,
    /// CUDA C source of each fused element-wise kernel, in kernel order.
    pub kernels: Vec<KernelSource>,
}

impl Program {
    /// Reads and plans an ONNX file.
    pub fn from_file(path: &Path) -> Result<Program, LowerError> {
        Program::from_model(&onnx::read_model(path)?)
    }

    /// Plans a decoded ONNX model.
    pub fn from_model(model: &ModelProto) -> Result<Program, LowerError> {
        let graph = onnx::Graph::from_model(model)?;
        let plan = lower::lower(&graph)?;
        let fusion = fuse(&plan);
        let weights = WeightLayout::new(&plan);
        let kernels = kernel_src::sources(&plan, &fusion);
        Ok(Program {
            plan,
            fusion,
            weights,
            kernels,
        })
    }

    /// What the plan runs.
    pub fn summary(&self) -> Summary {
        let f = &self.fusion;
        let gemms = f.count(KernelKind::Gemm);
        let fused = f.count(KernelKind::Elementwise);
        let views = f.count(KernelKind::View);
        Summary {
            steps: self.plan.steps.len(),
            gemms,
            fused_kernels: fused,
            elementwise_steps: (0..self.plan.steps.len())
                .filter(|&s| self.plan.is_elementwise(s))
                .count(),
            other_kernels: f.kernels.len() - gemms - fused - views,
            views,
            weight_bytes: self.weights.bytes,
        }
    }

    /// Lowers a model file and, where its only variable dimension is the batch, sizes it at
    /// batch 1: what `repo check` reports for a KIND_GPU model.
    pub fn check_file(path: &Path) -> Result<Summary, LowerError> {
        let program = Program::from_file(path)?;
        let batch_only = program.plan.inputs.iter().all(|i| {
            i.dims
                .iter()
                .skip(1)
                .all(|d| matches!(d, onnx::Dim::Fixed(_)))
        });
        if batch_only {
            BatchPlan::new(&program, 1)?;
        }
        Ok(program.summary())
    }
}

/// Counts of what a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub steps: usize,
    pub gemms: usize,
    /// Generated element-wise kernels (each runs one or more element-wise steps).
    pub fused_kernels: usize,
    pub elementwise_steps: usize,
    /// Softmax, LayerNormalization, ReduceMean, Transpose, Concat and Gather kernels.
    pub other_kernels: usize,
    /// Steps that launch nothing (reshapes and the like).
    pub views: usize,
    pub weight_bytes: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "graph lowers to {} steps ({} fused kernels for {} element-wise steps, {} GEMMs, \
             {} other kernels, {} views)",
            self.steps,
            self.fused_kernels,
            self.elementwise_steps,
            self.gemms,
            self.other_kernels,
            self.views
        )
    }
}

#[cfg(test)]
mod tests;
