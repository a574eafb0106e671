//! One ONNX node to plan steps: the supported operator set, the uses of each operator the GPU
//! executor covers, and the element type and rank of each result.

use tract_onnx::pb::NodeProto;

use super::lower::{Arg, Known, Lowered, NodeError, Operands};
use super::onnx::{ElemType, attr_float, attr_int, attr_ints, attr_string};
use super::plan::{EwOp, Op, View};

mod layout;

type Lowering = Result<Vec<Lowered>, NodeError>;

/// The ONNX operators the GPU executor runs (default domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Gelu",
    "Softmax",
    "LayerNormalization",
    "ReduceMean",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Cast",
    "Concat",
    "Gather",
];

/// Lowers one node of the default domain.
pub(super) fn lower_node(
    known: &dyn Known,
    opset: i64,
    node: &NodeProto,
    ops: &Operands,
) -> Lowering {
    let out = node.output.first().cloned().unwrap_or_default();
    let n = Node { node, ops, out };
    match node.op_type.as_str() {
        "Gemm" => n.gemm(),
        "MatMul" => n.matmul(),
        "Add" => n.binary(EwOp::Add),
        "Sub" => n.binary(EwOp::Sub),
        "Mul" => n.binary(EwOp::Mul),
        "Div" => n.binary(EwOp::Div),
        "Pow" => n.binary(EwOp::Pow),
        "Sqrt" => n.unary_float(EwOp::Sqrt),
        "Sigmoid" => n.unary_float(EwOp::Sigmoid),
        "Tanh" => n.unary_float(EwOp::Tanh),
        "Erf" => n.unary_float(EwOp::Erf),
        "Gelu" => n.gelu(),
        "Relu" => n.relu(),
        "Cast" => n.cast(),
        "Softmax" => n.softmax(opset),
        "LayerNormalization" => n.layer_norm(),
        "ReduceMean" => n.reduce_mean(known, opset),
        "Transpose" => n.transpose(),
        "Concat" => n.concat(),
        "Gather" => n.gather(),
        "Reshape" => n.reshape(known),
        "Flatten" => n.flatten(),
        "Squeeze" => n.squeeze(known, opset),
        "Unsqueeze" => n.unsqueeze(known, opset),
        "Identity" => n.view(View::Identity, n.rank(0)?),
        _ => Err(NodeError::Unsupported(None)),
    }
}

struct Node<'a> {
    node: &'a NodeProto,
    ops: &'a Operands,
    out: String,
}

fn unsupported<T>(why: impl Into<String>) -> Result<T, NodeError> {
    Err(NodeError::Unsupported(Some(why.into())))
}

fn invalid<T>(why: impl Into<String>) -> Result<T, NodeError> {
    Err(NodeError::Invalid(why.into()))
}

/// Element types element-wise kernels compute in.
const EW_TYPES: &[ElemType] = &[ElemType::F32, ElemType::F64, ElemType::I64, ElemType::I32];
const FLOAT_TYPES: &[ElemType] = &[ElemType::F32, ElemType::F64];

impl Node<'_> {
    fn arity(&self, min: usize, max: usize) -> Result<(), NodeError> {
        let given = self.ops.ids.len();
        if given < min || given > max || self.node.output.is_empty() {
            return invalid(format!(
                "takes {min} to {max} inputs and an output, has {given} inputs and {} outputs",
                self.node.output.len()
            ));
        }
        Ok(())
    }

    /// The type of input `i` (an unknown type makes the node unreportable on its own).
    fn dtype(&self, i: usize) -> Result<ElemType, NodeError> {
        match self.ops.dtypes.get(i).copied().flatten() {
            Some(t) => Ok(t),
            None => Err(NodeError::UnknownInput),
        }
    }

    fn rank(&self, i: usize) -> Result<usize, NodeError> {
        match self.ops.ranks.get(i).copied().flatten() {
            Some(r) => Ok(r),
            None => Err(NodeError::UnknownInput),
        }
    }

    fn present(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|n| !n.is_empty())
    }

    fn input(&self, i: usize) -> Arg {
        Arg::Name(self.node.input[i].clone())
    }

    fn step(&self, op: Op, inputs: Vec<Arg>, dtype: ElemType, rank: usize) -> Lowering {
        Ok(vec![Lowered {
            op,
            inputs,
            output: self.out.clone(),
            dtype,
            rank,
        }])
    }

    fn require(&self, i: usize, allowed: &[ElemType]) -> Result<ElemType, NodeError> {
        let t = self.dtype(i)?;
        if !allowed.contains(&t) {
            return unsupported(format!("{} inputs", t.name()));
        }
        Ok(t)
    }

    fn gemm(&self) -> Lowering {
        self.arity(2, 3)?;
        for i in 0..self.ops.ids.len() {
            self.require(i, &[ElemType::F32])?;
        }
        if self.rank(0)? != 2 || self.rank(1)? != 2 {
            return invalid("Gemm takes 2-D A and B");
        }
        let op = Op::Gemm {
            trans_a: attr_int(self.node, "transA", 0) != 0,
            trans_b: attr_int(self.node, "transB", 0) != 0,
            alpha: attr_float(self.node, "alpha", 1.0),
        };
        let beta = attr_float(self.node, "beta", 1.0);
        let ab = vec![self.input(0), self.input(1)];
        if !self.present(2) || beta == 0.0 {
            return self.step(op, ab, ElemType::F32, 2);
        }
        let product = format!("{}#gemm", self.out);
        let mut steps = vec![Lowered {
            op,
            inputs: ab,
            output: product.clone(),
            dtype: ElemType::F32,
            rank: 2,
        }];
        let mut bias = self.input(2);
        if beta != 1.0 {
            let scaled = format!("{}#beta_c", self.out);
            steps.push(Lowered {
                op: Op::Elementwise(EwOp::Mul),
                inputs: vec![bias, Arg::Scalar(format!("{}#beta", self.out), beta)],
                output: scaled.clone(),
                dtype: ElemType::F32,
                rank: self.rank(2)?,
            });
            bias = Arg::Name(scaled);
        }
        steps.push(Lowered {
            op: Op::Elementwise(EwOp::Add),
            inputs: vec![Arg::Name(product), bias],
            output: self.out.clone(),
            dtype: ElemType::F32,
            rank: 2,
        });
        Ok(steps)
    }

    fn matmul(&self) -> Lowering {
        self.arity(2, 2)?;
        self.require(0, &[ElemType::F32])?;
        self.require(1, &[ElemType::F32])?;
        let (ra, rb) = (self.rank(0)?, self.rank(1)?);
        let rank = match (ra, rb) {
            (0, _) | (_, 0) => return invalid("MatMul of a scalar"),
            (1, 1) => 0,
            (1, r) | (r, 1) => r - 1,
            (a, b) => a.max(b),
        };
        self.step(
            Op::MatMul,
            vec![self.input(0), self.input(1)],
            ElemType::F32,
            rank,
        )
    }

    fn binary(&self, op: EwOp) -> Lowering {
        self.arity(2, 2)?;
        let a = self.require(0, EW_TYPES)?;
        if op == EwOp::Pow {
            self.require(0, FLOAT_TYPES)?;
            self.require(1, EW_TYPES)?;
        } else if self.require(1, EW_TYPES)? != a {
            return invalid(format!(
                "inputs of types {} and {}",
                a.name(),
                self.dtype(1)?.name()
            ));
        }
        let rank = self.rank(0)?.max(self.rank(1)?);
        self.step(
            Op::Elementwise(op),
            vec![self.input(0), self.input(1)],
            a,
            rank,
        )
    }

    fn unary(&self, op: EwOp, allowed: &[ElemType]) -> Lowering {
        self.arity(1, 1)?;
        let t = self.require(0, allowed)?;
        self.step(Op::Elementwise(op), vec![self.input(0)], t, self.rank(0)?)
    }

    fn unary_float(&self, op: EwOp) -> Lowering {
        self.unary(op, FLOAT_TYPES)
    }

    fn relu(&self) -> Lowering {
        self.unary(EwOp::Relu, EW_TYPES)
    }

    fn gelu(&self) -> Lowering {
        let approximate = attr_string(self.node, "approximate").unwrap_or_default();
        let tanh = match approximate.as_str() {
            "" | "none" => false,
            "tanh" => true,
            other => return invalid(format!("approximate='{other}'")),
        };
        self.unary(EwOp::Gelu { tanh }, FLOAT_TYPES)
    }

    fn cast(&self) -> Lowering {
        self.arity(1, 1)?;
        let code = attr_int(self.node, "to", 0) as i32;
        let Some(to) = ElemType::from_onnx(code) else {
            return unsupported(format!("to {}", ElemType::onnx_name(code)));
        };
        let from = self.dtype(0)?;
        if from == to {
            return self.view(View::Identity, self.rank(0)?);
        }
        if from == ElemType::F16 || to == ElemType::F16 {
            return unsupported("FLOAT16 casts");
        }
        self.step(
            Op::Elementwise(EwOp::Cast { to }),
            vec![self.input(0)],
            to,
            self.rank(0)?,
        )
    }

    fn softmax(&self, opset: i64) -> Lowering {
        self.arity(1, 1)?;
        self.require(0, &[ElemType::F32])?;
        let axis = attr_int(self.node, "axis", if opset >= 13 { -1 } else { 1 });
        let op = Op::Softmax {
            axis,
            coerce_2d: opset < 13,
        };
        self.step(op, vec![self.input(0)], ElemType::F32, self.rank(0)?)
    }

    fn layer_norm(&self) -> Lowering {
        self.arity(2, 3)?;
        if self.node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return unsupported("Mean/InvStdDev outputs");
        }
        for i in 0..self.ops.ids.len() {
            self.require(i, &[ElemType::F32])?;
        }
        let op = Op::LayerNorm {
            axis: attr_int(self.node, "axis", -1),
            epsilon: attr_float(self.node, "epsilon", 1e-5),
        };
        let inputs = (0..self.ops.ids.len())
            .filter(|&i| self.present(i))
            .map(|i| self.input(i));
        self.step(op, inputs.collect(), ElemType::F32, self.rank(0)?)
    }

    /// Axes from the attribute (before `input_from_opset`) or from a constant second input.
    fn axes(
        &self,
        known: &dyn Known,
        opset: i64,
        input_from_opset: i64,
    ) -> Result<Option<Vec<i64>>, NodeError> {
        if opset < input_from_opset {
            return Ok(attr_ints(self.node, "axes"));
        }
        if !self.present(1) {
            return Ok(None);
        }
        match known.ints(&self.node.input[1]) {
            Some(axes) => Ok(Some(axes)),
            None => unsupported("axes computed at run time"),
        }
    }

    fn reduce_mean(&self, known: &dyn Known, opset: i64) -> Lowering {
        self.arity(1, 2)?;
        self.require(0, &[ElemType::F32])?;
        let rank = self.rank(0)?;
        let axes = self.axes(known, opset, 18)?.unwrap_or_default();
        if axes.is_empty() && attr_int(self.node, "noop_with_empty_axes", 0) != 0 {
            return self.view(View::Identity, rank);
        }
        let keepdims = attr_int(self.node, "keepdims", 1) != 0;
        let reduced = if axes.is_empty() { rank } else { axes.len() };
        let out_rank = if keepdims {
            rank
        } else {
            rank.saturating_sub(reduced)
        };
        let op = Op::ReduceMean { axes, keepdims };
        self.step(op, vec![self.input(0)], ElemType::F32, out_rank)
    }
}
