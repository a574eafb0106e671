//! Runs a program on the host exactly as the device executor will: the same kernel order, the
//! same buffer offsets in one arena (filled with NaN bytes first, so a read of a value that was
//! never written shows), the same GEMM descriptors and element-wise broadcast strides. It is the
//! semantics the CUDA kernels must reproduce, and the way to test lowering, fusion and memory
//! planning against the CPU executor without a GPU. Slow; for tests only.

use super::Program;
use super::buffers::Storage;
use super::fusion::{Kernel, KernelKind};
use super::kernel_src::elementwise_meta;
use super::onnx::{ElemType, HostTensor};
use super::plan::{EwOp, Op, Plan, ValueId};
use super::pool::BatchPlan;
use super::reference_ops::{
    concat, erf, gather, gemm, layer_norm, reduce_mean, softmax, transpose,
};
use super::shape::Launch;

/// One element, widened.
#[derive(Debug, Clone, Copy)]
enum Num {
    F(f64),
    I(i64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::F(x) => x,
            Num::I(x) => x as f64,
        }
    }
    fn i(self) -> i64 {
        match self {
            Num::F(x) => x as i64,
            Num::I(x) => x,
        }
    }
}

fn load(t: ElemType, b: &[u8], i: usize) -> Num {
    let at = |n: usize| &b[i * n..(i + 1) * n];
    match t {
        ElemType::F32 => Num::F(f32::from_le_bytes(at(4).try_into().unwrap()) as f64),
        ElemType::F64 => Num::F(f64::from_le_bytes(at(8).try_into().unwrap())),
        ElemType::I64 => Num::I(i64::from_le_bytes(at(8).try_into().unwrap())),
        ElemType::I32 => Num::I(i32::from_le_bytes(at(4).try_into().unwrap()) as i64),
        ElemType::I8 => Num::I(b[i] as i8 as i64),
        ElemType::U8 | ElemType::Bool => Num::I(b[i] as i64),
        ElemType::F16 => Num::F(f16_to_f64(u16::from_le_bytes(at(2).try_into().unwrap()))),
    }
}

fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let frac = (bits & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 => sign * if frac == 0.0 { f64::INFINITY } else { f64::NAN },
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

fn store(t: ElemType, b: &mut [u8], i: usize, v: Num) {
    let mut put = |bytes: &[u8]| b[i * bytes.len()..(i + 1) * bytes.len()].copy_from_slice(bytes);
    match t {
        ElemType::F32 => put(&(v.f() as f32).to_le_bytes()),
        ElemType::F64 => put(&v.f().to_le_bytes()),
        ElemType::I64 => put(&v.i().to_le_bytes()),
        ElemType::I32 => put(&(v.i() as i32).to_le_bytes()),
        ElemType::I8 | ElemType::U8 | ElemType::Bool => put(&[v.i() as u8]),
        ElemType::F16 => unreachable!("no kernel writes FLOAT16 element by element"),
    }
}

fn floats(t: &HostTensor) -> Vec<f32> {
    (0..t.numel())
        .map(|i| load(t.dtype, &t.bytes, i).f() as f32)
        .collect()
}

struct Machine<'a> {
    plan: &'a Plan,
    batch: &'a BatchPlan,
    weights: Vec<u8>,
    arena: Vec<u8>,
}

/// Runs the program at the batch plan's size on host memory; inputs in `plan.inputs` order.
pub fn run(
    program: &Program,
    batch: &BatchPlan,
    inputs: &[HostTensor],
) -> Result<Vec<HostTensor>, String> {
    let plan = &program.plan;
    let mut m = Machine {
        plan,
        batch,
        weights: program.weights.image(plan),
        arena: vec![0xff; batch.buffers.arena_bytes],
    };
    for (input, tensor) in plan.inputs.iter().zip(inputs) {
        if tensor.dims != batch.shapes.values[input.value]
            || tensor.dtype != plan.values[input.value].dtype
        {
            return Err(format!(
                "input {} does not match the batch plan",
                input.name
            ));
        }
        m.write(input.value, &tensor.bytes);
    }
    for kernel in &program.fusion.kernels {
        m.kernel(kernel)?;
    }
    Ok(plan.outputs.iter().map(|&v| m.tensor(v)).collect())
}

impl Machine<'_> {
    fn bytes(&self, v: ValueId) -> usize {
        self.batch.shapes.bytes(self.plan, v)
    }

    fn read(&self, v: ValueId) -> Vec<u8> {
        let n = self.bytes(v);
        match self.batch.buffers.storage[v] {
            Storage::Weight { offset } => self.weights[offset..offset + n].to_vec(),
            Storage::Arena { offset } => self.arena[offset..offset + n].to_vec(),
            Storage::Register | Storage::None => self
                .plan
                .constant(v)
                .map(|c| c.bytes.clone())
                .unwrap_or_else(|| panic!("value {} has no storage", self.plan.values[v].name)),
        }
    }

    fn tensor(&self, v: ValueId) -> HostTensor {
        HostTensor {
            dims: self.batch.shapes.values[v].clone(),
            dtype: self.plan.values[v].dtype,
            bytes: self.read(v),
        }
    }

    fn write(&mut self, v: ValueId, bytes: &[u8]) {
        let Storage::Arena { offset } = self.batch.buffers.storage[v] else {
            panic!(
                "value {} is written but has no arena space",
                self.plan.values[v].name
            );
        };
        self.arena[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn kernel(&mut self, kernel: &Kernel) -> Result<(), String> {
        let s = *kernel.steps.last().expect("a kernel runs a step");
        let step = &self.plan.steps[s];
        let out = step.output;
        let ins: Vec<HostTensor> = kernel
            .inputs(self.plan)
            .iter()
            .map(|&v| self.tensor(v))
            .collect();
        let t = self.plan.values[out].dtype;
        let mut result = vec![0u8; self.bytes(out)];
        match kernel.kind {
            KernelKind::View => return Ok(()),
            KernelKind::Elementwise => self.elementwise(kernel, &mut result),
            _ => library_kernel(
                &self.batch.shapes.launches[s],
                &step.op,
                t,
                &ins,
                &mut result,
            )?,
        }
        self.write(out, &result);
        Ok(())
    }

    /// The fused kernel, element by element, with the generated source's index math.
    fn elementwise(&self, kernel: &Kernel, result: &mut [u8]) {
        let plan = self.plan;
        let inputs = kernel.inputs(plan);
        let data: Vec<Vec<u8>> = inputs.iter().map(|&v| self.read(v)).collect();
        let meta = elementwise_meta(plan, kernel, &self.batch.shapes);
        let mut regs: Vec<Num> = vec![Num::I(0); kernel.steps.len()];
        for i in 0..meta.numel {
            let mut rest = i as i64;
            let mut offs = vec![0i64; inputs.len()];
            for d in (0..meta.dims.len()).rev() {
                let c = if d == 0 { rest } else { rest % meta.dims[d] };
                rest /= meta.dims[d].max(1);
                for (k, off) in offs.iter_mut().enumerate() {
                    *off += c * meta.strides[k][d];
                }
            }
            let operand = |v: ValueId, regs: &[Num]| -> Num {
                if let Some(k) = inputs.iter().position(|&x| x == v) {
                    return load(plan.values[v].dtype, &data[k], offs[k] as usize);
                }
                if let Some(j) = kernel.steps.iter().position(|&s| plan.steps[s].output == v) {
                    return regs[j];
                }
                let x = plan.inline_scalar(v).expect("a scalar");
                if plan.values[v].dtype.is_float() {
                    Num::F(x)
                } else {
                    Num::I(x as i64)
                }
            };
            for (j, &s) in kernel.steps.iter().enumerate() {
                let step = &plan.steps[s];
                let Op::Elementwise(op) = step.op else {
                    unreachable!()
                };
                let a = operand(step.inputs[0], &regs);
                let b = step
                    .inputs
                    .get(1)
                    .map(|&v| operand(v, &regs))
                    .unwrap_or(Num::I(0));
                regs[j] = apply(op, plan.values[step.output].dtype, a, b);
            }
            store(
                plan.values[kernel.output(plan)].dtype,
                result,
                i,
                regs[kernel.steps.len() - 1],
            );
        }
    }
}

/// A kernel the executor takes from a library (cuBLAS) or a fixed source: GEMM, Softmax,
/// LayerNormalization, ReduceMean and the copies.
fn library_kernel(
    launch: &Launch,
    op: &Op,
    t: ElemType,
    ins: &[HostTensor],
    result: &mut [u8],
) -> Result<(), String> {
    match (launch, op) {
        (Launch::Gemm(desc), _) => gemm(desc, &floats(&ins[0]), &floats(&ins[1]), result),
        (Launch::Softmax(rows), _) => softmax(*rows, &floats(&ins[0]), result),
        (Launch::LayerNorm { rows, cols }, Op::LayerNorm { epsilon, .. }) => {
            let params: Vec<Vec<f32>> = ins[1..].iter().map(floats).collect();
            layer_norm(*rows, *cols, *epsilon, &floats(&ins[0]), &params, result)
        }
        (Launch::ReduceMean(rows), _) => reduce_mean(*rows, &floats(&ins[0]), result),
        (Launch::Transpose { dims, perm }, _) => {
            transpose(dims, perm, t.size(), &ins[0].bytes, result)
        }
        (
            Launch::Concat {
                outer,
                extents,
                inner,
            },
            _,
        ) => concat(*outer, extents, *inner * t.size(), ins, result),
        (
            Launch::Gather {
                outer,
                axis_len,
                indices,
                inner,
            },
            _,
        ) => {
            let idx: Vec<i64> = (0..*indices)
                .map(|i| load(ins[1].dtype, &ins[1].bytes, i).i())
                .collect();
            gather(
                *outer,
                *axis_len,
                &idx,
                *inner * t.size(),
                &ins[0].bytes,
                result,
            )?
        }
        (launch, op) => return Err(format!("no reference for {op:?} with {launch:?}")),
    }
    Ok(())
}

fn apply(op: EwOp, t: ElemType, a: Num, b: Num) -> Num {
    let float = |x: f64| {
        Num::F(if t == ElemType::F32 {
            x as f32 as f64
        } else {
            x
        })
    };
    if let EwOp::Cast { to } = op {
        return match (to.is_float(), to) {
            (true, _) => float(a.f()),
            (false, ElemType::Bool) => Num::I((a.f() != 0.0) as i64),
            (false, _) => Num::I(a.i()),
        };
    }
    if !t.is_float() {
        let (x, y) = (a.i(), b.i());
        return Num::I(match op {
            EwOp::Add => x.wrapping_add(y),
            EwOp::Sub => x.wrapping_sub(y),
            EwOp::Mul => x.wrapping_mul(y),
            EwOp::Div => x.checked_div(y).unwrap_or(0),
            EwOp::Relu => x.max(0),
            _ => unreachable!("lowering allows only arithmetic on integers"),
        });
    }
    let (x, y) = (a.f(), b.f());
    float(match op {
        EwOp::Add => x + y,
        EwOp::Sub => x - y,
        EwOp::Mul => x * y,
        EwOp::Div => x / y,
        EwOp::Pow => x.powf(y),
        EwOp::Sqrt => x.sqrt(),
        EwOp::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        EwOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        EwOp::Tanh => x.tanh(),
        EwOp::Erf => erf(x),
        EwOp::Gelu { tanh: false } => 0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2)),
        EwOp::Gelu { tanh: true } => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        EwOp::Cast { .. } => unreachable!(),
    })
}
