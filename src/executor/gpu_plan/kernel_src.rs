//! CUDA C source for fused element-wise kernels, the input NVRTC compiles at load time. The text
//! is a pure function of the plan: the same model always gives the same source (so compiled
//! kernels can be cached by it). Shapes are not compiled in: each launch passes the output's
//! dimensions and every input's broadcast strides by value (`ElementwiseMeta`), so one compiled
//! kernel serves every batch size.

use std::fmt::Write;

use super::fusion::{Kernel, KernelKind};
use super::onnx::ElemType;
use super::plan::{EwOp, Op, Plan, ValueId};
use super::shape::Shapes;

/// The source of one fused element-wise kernel and how to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    /// The `extern "C"` function name, `fused_<kernel index>`.
    pub name: String,
    pub source: String,
    /// Buffers passed after the meta block and the element count, in order: `in0`, `in1`, ...
    pub inputs: Vec<ValueId>,
    /// The buffer passed last.
    pub output: ValueId,
    /// Rank of the iteration space (the output's rank, at least 1).
    pub rank: usize,
}

/// The by-value argument of one launch: output dimensions and each input's strides over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementwiseMeta {
    pub numel: usize,
    pub dims: Vec<i64>,
    /// Per input, per output dimension: elements to step in that input (0 where it broadcasts).
    pub strides: Vec<Vec<i64>>,
}

impl ElementwiseMeta {
    /// The words of the meta struct in memory order (`dims`, then `strides` row by row).
    pub fn words(&self) -> Vec<i64> {
        let mut out = self.dims.clone();
        for s in &self.strides {
            out.extend(s);
        }
        out
    }
}

/// The C type of an element type in generated kernels.
pub fn c_type(t: ElemType) -> &'static str {
    match t {
        ElemType::F32 => "float",
        ElemType::F64 => "double",
        ElemType::F16 => "__half",
        ElemType::I64 => "long long",
        ElemType::I32 => "int",
        ElemType::I8 => "signed char",
        ElemType::U8 | ElemType::Bool => "unsigned char",
    }
}

fn literal(value: f64, t: ElemType) -> String {
    match t {
        ElemType::F32 if (value as f32).is_finite() => format!("{:?}f", value as f32),
        ElemType::F32 => format!("__int_as_float(0x{:08x})", (value as f32).to_bits()),
        ElemType::F64 if value.is_finite() => format!("{value:?}"),
        ElemType::F64 => format!("__longlong_as_double(0x{:016x}LL)", value.to_bits()),
        ElemType::I64 => format!("{}LL", value as i64),
        _ => format!("(({}){})", c_type(t), value as i64),
    }
}

/// `name` with the single-precision suffix for FLOAT (`expf`), as is for DOUBLE (`exp`).
fn math(name: &str, t: ElemType) -> String {
    if t == ElemType::F32 {
        format!("{name}f")
    } else {
        name.to_string()
    }
}

fn expression(op: EwOp, t: ElemType, a: &str, b: &str) -> String {
    let one = literal(1.0, t);
    let half = literal(0.5, t);
    match op {
        EwOp::Add => format!("{a} + {b}"),
        EwOp::Sub => format!("{a} - {b}"),
        EwOp::Mul => format!("{a} * {b}"),
        EwOp::Div => format!("{a} / {b}"),
        EwOp::Pow => format!("{}({a}, ({}){b})", math("pow", t), c_type(t)),
        EwOp::Sqrt => format!("{}({a})", math("sqrt", t)),
        EwOp::Relu => format!("{a} < ({ct})0 ? ({ct})0 : {a}", ct = c_type(t)),
        EwOp::Sigmoid => format!("{one} / ({one} + {}(-{a}))", math("exp", t)),
        EwOp::Tanh => format!("{}({a})", math("tanh", t)),
        EwOp::Erf => format!("{}({a})", math("erf", t)),
        EwOp::Gelu { tanh: false } => format!(
            "{half} * {a} * ({one} + {}({a} * {}))",
            math("erf", t),
            literal(std::f64::consts::FRAC_1_SQRT_2, t)
        ),
        EwOp::Gelu { tanh: true } => format!(
            "{half} * {a} * ({one} + {}({} * ({a} + {} * {a} * {a} * {a})))",
            math("tanh", t),
            literal((2.0 / std::f64::consts::PI).sqrt(), t),
            literal(0.044715, t)
        ),
        EwOp::Cast { to: ElemType::Bool } => format!("(unsigned char)({a} != 0)"),
        EwOp::Cast { to } => format!("({})({a})", c_type(to)),
    }
}

/// The CUDA C source of an element-wise kernel (`kernel.kind` must be `Elementwise`).
pub fn elementwise_source(plan: &Plan, index: usize, kernel: &Kernel) -> KernelSource {
    assert_eq!(
        kernel.kind,
        KernelKind::Elementwise,
        "only element-wise kernels are generated"
    );
    let name = format!("fused_{index}");
    let inputs = kernel.inputs(plan);
    let output = kernel.output(plan);
    let rank = plan.values[output].rank.max(1);
    let ops: Vec<String> = kernel
        .steps
        .iter()
        .map(|&s| format!("{} (node {})", plan.steps[s].op.name(), plan.steps[s].node))
        .collect();
    let mut src = String::new();
    let w = &mut src;
    let _ = writeln!(w, "// {name}: {}", ops.join(" -> "));
    signature(w, plan, &name, rank, &inputs, output);
    let _ = writeln!(
        w,
        "    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;\n         \
         i += (long long)gridDim.x * blockDim.x) {{"
    );
    index_math(w, rank, inputs.len());
    for (k, &v) in inputs.iter().enumerate() {
        let t = c_type(plan.values[v].dtype);
        let _ = writeln!(w, "        const {t} v{k} = in{k}[off{k}];");
    }
    body(w, plan, kernel, &inputs, &ops);
    let _ = writeln!(
        w,
        "        out[i] = t{};\n    }}\n}}",
        kernel.steps.len() - 1
    );
    KernelSource {
        name,
        source: src,
        inputs,
        output,
        rank,
    }
}

/// The meta struct and the kernel's parameter list.
fn signature(
    w: &mut String,
    plan: &Plan,
    name: &str,
    rank: usize,
    inputs: &[ValueId],
    output: ValueId,
) {
    let _ = writeln!(w, "struct {name}_meta {{\n    long long dims[{rank}];");
    if !inputs.is_empty() {
        let _ = writeln!(w, "    long long strides[{}][{rank}];", inputs.len());
    }
    let _ = writeln!(w, "}};\n");
    let mut params = vec![
        format!("const {name}_meta meta"),
        "const long long n".to_string(),
    ];
    for (k, &v) in inputs.iter().enumerate() {
        params.push(format!(
            "const {}* __restrict__ in{k}",
            c_type(plan.values[v].dtype)
        ));
    }
    params.push(format!(
        "{}* __restrict__ out",
        c_type(plan.values[output].dtype)
    ));
    let _ = writeln!(
        w,
        "extern \"C\" __global__ void {name}(\n    {}) {{",
        params.join(",\n    ")
    );
}

/// One line per fused step, in plan order: `t<j>` from inputs `v<k>`, earlier `t`s and literals.
fn body(w: &mut String, plan: &Plan, kernel: &Kernel, inputs: &[ValueId], ops: &[String]) {
    let operand = |v: ValueId| -> String {
        if let Some(k) = inputs.iter().position(|&x| x == v) {
            return format!("v{k}");
        }
        if let Some(j) = kernel.steps.iter().position(|&s| plan.steps[s].output == v) {
            return format!("t{j}");
        }
        let scalar = plan
            .inline_scalar(v)
            .expect("an operand is an input, a step or a scalar");
        literal(scalar, plan.values[v].dtype)
    };
    for (j, &s) in kernel.steps.iter().enumerate() {
        let step = &plan.steps[s];
        let Op::Elementwise(op) = step.op else {
            unreachable!("fused steps are element-wise")
        };
        let t = plan.values[step.output].dtype;
        let a = operand(step.inputs[0]);
        let b = step.inputs.get(1).map(|&v| operand(v)).unwrap_or_default();
        let expr = expression(op, t, &a, &b);
        let _ = writeln!(
            w,
            "        const {} t{j} = {expr}; // {}",
            c_type(t),
            ops[j]
        );
    }
}

/// Broadcasting index math: the output coordinate of element `i`, dimension by dimension from
/// the innermost, accumulated into each input's offset through its strides.
fn index_math(w: &mut String, rank: usize, inputs: usize) {
    let _ = writeln!(w, "        long long rest = i;");
    for k in 0..inputs {
        let _ = writeln!(w, "        long long off{k} = 0;");
    }
    for d in (0..rank).rev() {
        let _ = writeln!(w, "        {{");
        if d == 0 {
            let _ = writeln!(w, "            const long long c = rest;");
        } else {
            let _ = writeln!(w, "            const long long c = rest % meta.dims[{d}];");
            let _ = writeln!(w, "            rest /= meta.dims[{d}];");
        }
        for k in 0..inputs {
            let _ = writeln!(w, "            off{k} += c * meta.strides[{k}][{d}];");
        }
        let _ = writeln!(w, "        }}");
    }
}

/// The launch argument of an element-wise kernel at one set of shapes.
pub fn elementwise_meta(plan: &Plan, kernel: &Kernel, shapes: &Shapes) -> ElementwiseMeta {
    let output = kernel.output(plan);
    let mut dims: Vec<usize> = shapes.values[output].clone();
    if dims.is_empty() {
        dims.push(1);
    }
    let strides = kernel
        .inputs(plan)
        .iter()
        .map(|&v| broadcast_strides(&shapes.values[v], &dims))
        .collect();
    ElementwiseMeta {
        numel: dims.iter().product(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        strides,
    }
}

/// Strides of a contiguous tensor of shape `input` indexed by coordinates of `output` under
/// numpy broadcasting (right-aligned; 0 where the input has size 1 or no dimension).
pub fn broadcast_strides(input: &[usize], output: &[usize]) -> Vec<i64> {
    let pad = output.len() - input.len();
    let mut strides = vec![0i64; output.len()];
    let mut step = 1i64;
    for j in (0..input.len()).rev() {
        if input[j] != 1 {
            strides[j + pad] = step;
        }
        step *= input[j] as i64;
    }
    strides
}

/// Sources of every element-wise kernel of a fusion, in kernel order.
pub fn sources(plan: &Plan, fusion: &super::fusion::Fusion) -> Vec<KernelSource> {
    fusion
        .kernels
        .iter()
        .enumerate()
        .filter(|(_, k)| k.kind == KernelKind::Elementwise)
        .map(|(i, k)| elementwise_source(plan, i, k))
        .collect()
}
