//! The lowered graph: values (graph inputs, constants, step results) and a topologically ordered
//! list of steps, each one operation the GPU executor knows how to run. Pure data; `lower` builds
//! it, `shape` sizes it for a batch, `fusion` groups its steps into kernels.

use std::sync::Arc;

use super::onnx::{Dim, ElemType, HostTensor};

/// Index of a value in `Plan::values`.
pub type ValueId = usize;
/// Index of a step in `Plan::steps`.
pub type StepId = usize;

/// A lowered model.
#[derive(Debug, Clone)]
pub struct Plan {
    pub values: Vec<Value>,
    pub inputs: Vec<PlanInput>,
    /// The graph outputs, in the model's order.
    pub outputs: Vec<ValueId>,
    /// Topologically ordered: every step follows the steps producing its inputs.
    pub steps: Vec<Step>,
    /// For each value, the steps reading it (a step reading a value twice is listed once).
    pub consumers: Vec<Vec<StepId>>,
}

/// A tensor of the plan. Its element type and rank do not depend on the batch size.
#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    pub dtype: ElemType,
    pub rank: usize,
    pub source: Source,
}

/// Where a value comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The graph input with this index in `Plan::inputs`.
    Input(usize),
    /// A constant from the model file (an initializer or a `Constant` node).
    Constant(Arc<HostTensor>),
    /// The result of a step.
    Step(StepId),
}

/// A graph input with its declared dimensions.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub name: String,
    pub value: ValueId,
    pub dims: Vec<Dim>,
}

/// One operation on values.
#[derive(Debug, Clone)]
pub struct Step {
    /// The ONNX node this step comes from (a Gemm with a bias yields two steps of one node).
    pub node: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// The operations the GPU executor runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// ONNX Gemm without its bias: `alpha * op(A) * op(B)` on 2-D operands. A bias becomes a
    /// following element-wise `Add` step (scaled by `beta` through a `Mul` when beta != 1).
    Gemm {
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
    },
    /// ONNX MatMul (numpy semantics: 1-D operands, broadcast batch dimensions).
    MatMul,
    /// An element-wise operation with numpy broadcasting.
    Elementwise(EwOp),
    /// Softmax along `axis`; with `coerce_2d` (opset < 13), over all dimensions from `axis` on.
    Softmax {
        axis: i64,
        coerce_2d: bool,
    },
    /// LayerNormalization over the dimensions from `axis` on: inputs x, scale, optional bias.
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    /// ReduceMean over `axes` (all when empty).
    ReduceMean {
        axes: Vec<i64>,
        keepdims: bool,
    },
    /// A copy with permuted dimensions (reversed when `perm` is empty).
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: i64,
    },
    /// Gather(data, indices) along `axis`.
    Gather {
        axis: i64,
    },
    /// A change of shape that keeps the bytes: the output shares its input's buffer.
    View(View),
}

/// Shape-only operations.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    Reshape {
        shape: Vec<i64>,
        allow_zero: bool,
    },
    Flatten {
        axis: i64,
    },
    Squeeze {
        axes: Vec<i64>,
    },
    Unsqueeze {
        axes: Vec<i64>,
    },
    /// Identity, and Cast to the type the value already has.
    Identity,
}

/// Element-wise operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EwOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Sqrt,
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    /// Gelu, exact (erf) or with the tanh approximation.
    Gelu {
        tanh: bool,
    },
    Cast {
        to: ElemType,
    },
}

impl EwOp {
    /// The ONNX operator name.
    pub fn name(self) -> &'static str {
        match self {
            EwOp::Add => "Add",
            EwOp::Sub => "Sub",
            EwOp::Mul => "Mul",
            EwOp::Div => "Div",
            EwOp::Pow => "Pow",
            EwOp::Sqrt => "Sqrt",
            EwOp::Relu => "Relu",
            EwOp::Sigmoid => "Sigmoid",
            EwOp::Tanh => "Tanh",
            EwOp::Erf => "Erf",
            EwOp::Gelu { .. } => "Gelu",
            EwOp::Cast { .. } => "Cast",
        }
    }

    /// Whether the operation takes two operands.
    pub fn is_binary(self) -> bool {
        matches!(
            self,
            EwOp::Add | EwOp::Sub | EwOp::Mul | EwOp::Div | EwOp::Pow
        )
    }
}

impl Op {
    /// A short name for summaries and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Elementwise(op) => op.name(),
            Op::Softmax { .. } => "Softmax",
            Op::LayerNorm { .. } => "LayerNormalization",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Gather { .. } => "Gather",
            Op::View(View::Reshape { .. }) => "Reshape",
            Op::View(View::Flatten { .. }) => "Flatten",
            Op::View(View::Squeeze { .. }) => "Squeeze",
            Op::View(View::Unsqueeze { .. }) => "Unsqueeze",
            Op::View(View::Identity) => "Identity",
        }
    }

    /// Whether the step runs as a GEMM (cuBLAS).
    pub fn is_gemm(&self) -> bool {
        matches!(self, Op::Gemm { .. } | Op::MatMul)
    }
}

impl Plan {
    /// The value named `name`, if any.
    pub fn value_named(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name)
    }

    /// The constant behind a value, if it is one.
    pub fn constant(&self, value: ValueId) -> Option<&HostTensor> {
        match &self.values[value].source {
            Source::Constant(c) => Some(c),
            _ => None,
        }
    }

    /// A one-element constant that element-wise kernels take as a literal instead of a buffer.
    pub fn inline_scalar(&self, value: ValueId) -> Option<f64> {
        self.constant(value).and_then(HostTensor::scalar)
    }

    /// Whether the step is element-wise (and so may be fused with its neighbours).
    pub fn is_elementwise(&self, step: StepId) -> bool {
        matches!(self.steps[step].op, Op::Elementwise(_))
    }

    /// Whether a value is a graph output.
    pub fn is_output(&self, value: ValueId) -> bool {
        self.outputs.contains(&value)
    }

    /// The step producing a value, if a step does.
    pub fn producer(&self, value: ValueId) -> Option<StepId> {
        match self.values[value].source {
            Source::Step(s) => Some(s),
            _ => None,
        }
    }

    /// Constants read as tensors by some step (and so uploaded to the device): every constant
    /// operand except scalars that element-wise kernels inline.
    pub fn device_constants(&self) -> Vec<ValueId> {
        let mut out: Vec<ValueId> = Vec::new();
        for step in &self.steps {
            let elementwise = matches!(step.op, Op::Elementwise(_));
            for &v in &step.inputs {
                let inlined = elementwise && self.inline_scalar(v).is_some();
                if self.constant(v).is_some() && !inlined && !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    }
}
