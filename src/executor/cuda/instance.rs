//! One GPU execution instance: its stream, cuBLAS handle, memory (arena, pinned staging and the
//! Gather error flags, sized once for the largest batch so that serving allocates nothing), and
//! per batch size the list of calls a run queues (copies in, kernels and GEMMs, copies out),
//! computed once, and with CUDA graphs the captured graph of that list.
//!
//! A run writes the inputs into pinned staging, queues the calls (or replays the graph), waits
//! for the stream, checks the error flags and reads the outputs from staging.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::executor::gpu_plan::buffers::Storage;
use crate::executor::gpu_plan::fusion::KernelKind;
use crate::executor::gpu_plan::gemm::CublasGemm;
use crate::executor::gpu_plan::kernel_src::elementwise_meta;
use crate::executor::gpu_plan::library_src::{BLOCK, MAX_TRANSPOSE_RANK, ROWS_PER_BLOCK};
use crate::executor::gpu_plan::onnx::{Dim, ElemType};
use crate::executor::gpu_plan::plan::{Op, ValueId};
use crate::executor::gpu_plan::pool::{BatchPlan, MemoryPool};
use crate::executor::gpu_plan::shape::Launch;
use crate::executor::{ExecError, Instance, Phases};
use crate::tensor::Tensor;

use super::driver::{Blas, DeviceBuffer, Event, Function, Graph, PinnedBuffer, Stream};
use super::model::{CudaAlloc, CudaModel};

/// One thing a run queues.
enum Call {
    /// Staging bytes to the device.
    CopyIn {
        dst: u64,
        offset: usize,
        bytes: usize,
    },
    /// Device bytes to staging.
    CopyOut {
        offset: usize,
        src: u64,
        bytes: usize,
    },
    Kernel {
        function: Function,
        grid: u32,
        block: u32,
        params: Vec<Vec<u8>>,
    },
    Gemm {
        call: CublasGemm,
        first: u64,
        second: u64,
        out: u64,
        alpha: f32,
    },
}

/// Everything a run at one batch size queues, and what its Gather flags mean.
struct Calls {
    plan: Arc<BatchPlan>,
    /// The copies in, then the compute (kernels and GEMMs), then the copies out.
    calls: Vec<Call>,
    /// Where the compute begins and the copies out begin in `calls`.
    compute: std::ops::Range<usize>,
    /// Per Gather flag slot, the length of the axis it indexes.
    gather_axes: Vec<usize>,
}

/// Bytes per Gather flag slot: `[set, index]` as two i64.
const FLAG_BYTES: usize = 16;

pub struct CudaInstance {
    // Field order is drop order: graphs and call lists before the memory they point into, the
    // stream last (after `Drop` below synchronized it).
    graphs: HashMap<usize, Graph>,
    calls: HashMap<usize, Arc<Calls>>,
    blas: Blas,
    pool: MemoryPool<CudaAlloc>,
    flags: DeviceBuffer,
    flags_host: PinnedBuffer,
    /// Gather kernels in plan order: (node name, flag slot).
    gathers: Vec<String>,
    /// Timing events recorded around each run: start, copies in done, compute done, copies out
    /// done.
    events: [Event; 4],
    /// Arena and staging addresses the cached calls were made for.
    addresses: (u64, usize),
    reserved: usize,
    device: usize,
    model: Arc<CudaModel>,
    stream: Stream,
}

fn p64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn pi(v: usize) -> Vec<u8> {
    (v as i64).to_le_bytes().to_vec()
}

fn blocks(n: usize, per_block: usize, cap: u32) -> u32 {
    (n.div_ceil(per_block).max(1) as u64).min(cap as u64) as u32
}

impl CudaInstance {
    pub fn new(model: Arc<CudaModel>, device: usize) -> Result<CudaInstance, String> {
        let dm = &model.devices[device];
        let stream = Stream::new(&dm.ctx)?;
        let blas = Blas::new(&stream)?;
        let mut pool = MemoryPool::new(
            CudaAlloc {
                ctx: Arc::clone(&dm.ctx),
            },
            Arc::clone(&model.program),
        );
        let reserved = model.schema.max_batch_size.max(1);
        let batched = model
            .program
            .plan
            .inputs
            .iter()
            .all(|i| i.dims.first().is_some_and(|d| matches!(d, Dim::Var(_))));
        if batched {
            pool.reserve(reserved).map_err(|e| e.to_string())?;
        }
        let gathers: Vec<String> = model
            .program
            .fusion
            .kernels
            .iter()
            .filter(|k| k.kind == KernelKind::Gather)
            .map(|k| model.program.plan.steps[k.steps[0]].node.clone())
            .collect();
        let flag_bytes = (gathers.len() * FLAG_BYTES).max(FLAG_BYTES);
        let flags = DeviceBuffer::new(&dm.ctx, flag_bytes)?;
        let flags_host = PinnedBuffer::new(&dm.ctx, flag_bytes)?;
        let events = [
            Event::new(&dm.ctx)?,
            Event::new(&dm.ctx)?,
            Event::new(&dm.ctx)?,
            Event::new(&dm.ctx)?,
        ];
        let mut instance = CudaInstance {
            graphs: HashMap::new(),
            calls: HashMap::new(),
            blas,
            pool,
            flags,
            flags_host,
            gathers,
            events,
            addresses: (0, 0),
            reserved: if batched { reserved } else { 1 },
            device,
            model,
            stream,
        };
        instance.warm_up(batched)?;
        Ok(instance)
    }

    /// Runs the largest and the smallest batch once (cuBLAS picks and loads its kernels on
    /// first use) and, with CUDA graphs, captures and replays a graph for every batch size.
    fn warm_up(&mut self, batched: bool) -> Result<(), String> {
        let sizes: Vec<usize> = if batched {
            (1..=self.reserved).collect()
        } else {
            vec![1]
        };
        let (smallest, largest) = (sizes[0], sizes[sizes.len() - 1]);
        let first_runs = if largest == smallest {
            vec![largest]
        } else {
            vec![largest, smallest]
        };
        for batch in first_runs {
            let calls = self.prepare(batch)?;
            self.clear_staging(&calls.plan);
            self.enqueue(&calls)?;
            self.stream.synchronize()?;
        }
        if self.model.options.graphs {
            for &batch in &sizes {
                let calls = self.prepare(batch)?;
                let graph = Graph::capture(&self.stream, || self.enqueue_compute(&calls))?;
                graph.launch(&self.stream)?;
                self.stream.synchronize()?;
                self.graphs.insert(batch, graph);
            }
        }
        Ok(())
    }

    fn clear_staging(&self, plan: &BatchPlan) {
        let staging = self.pool_staging();
        for span in &plan.buffers.staging_inputs {
            staging.write(span.offset, &vec![0u8; span.bytes]);
        }
    }

    fn pool_staging(&self) -> &PinnedBuffer {
        self.pool.blocks().1.expect("prepared").host()
    }

    /// The calls for a batch size, made once; memory grows only for a batch larger than any
    /// before (never after warm-up for batched models), and then every cached list is rebuilt.
    fn prepare(&mut self, batch: usize) -> Result<Arc<Calls>, String> {
        let prepared = self.pool.prepare(batch).map_err(|e| e.to_string())?;
        let addresses = (
            prepared.arena.device().ptr(),
            prepared.staging.host().ptr() as usize,
        );
        let plan = prepared.plan;
        if addresses != self.addresses {
            self.calls.clear();
            self.graphs.clear();
            self.addresses = addresses;
        }
        if let Some(calls) = self.calls.get(&batch) {
            return Ok(Arc::clone(calls));
        }
        let calls = Arc::new(self.build(plan)?);
        self.calls.insert(batch, Arc::clone(&calls));
        Ok(calls)
    }

    /// Turns a batch plan into calls: addresses resolved, kernel arguments laid out.
    fn build(&self, bp: Arc<BatchPlan>) -> Result<Calls, String> {
        let model = &self.model;
        let program = &model.program;
        let plan = &program.plan;
        let dm = &model.devices[self.device];
        let weights = dm.weights.block().device().ptr();
        let arena = self.addresses.0;
        let addr = |v: ValueId| -> Result<u64, String> {
            match bp.buffers.storage[v] {
                Storage::Weight { offset } => Ok(weights + offset as u64),
                Storage::Arena { offset } => Ok(arena + offset as u64),
                other => Err(format!(
                    "value {} has no memory ({other:?})",
                    plan.values[v].name
                )),
            }
        };
        let cap = dm.multiprocessors.max(1) * 32;
        let f = |name: &str| dm.module.function(name);
        let mut calls = Vec::new();
        for (i, input) in plan.inputs.iter().enumerate() {
            let span = bp.buffers.staging_inputs[i];
            if span.bytes > 0 && matches!(bp.buffers.storage[input.value], Storage::Arena { .. }) {
                calls.push(Call::CopyIn {
                    dst: addr(input.value)?,
                    offset: span.offset,
                    bytes: span.bytes,
                });
            }
        }
        let mut gather_slot = 0;
        let mut gather_axes = vec![0; self.gathers.len()];
        for (k, kernel) in program.fusion.kernels.iter().enumerate() {
            let s = *kernel.steps.last().expect("a kernel runs a step");
            let step = &plan.steps[s];
            let out = step.output;
            let numel = bp.shapes.numel(out);
            let launch = &bp.shapes.launches[s];
            let size = plan.values[out].dtype.size();
            match (kernel.kind, launch) {
                (KernelKind::View, _) => {}
                (_, _) if numel == 0 => {
                    if kernel.kind == KernelKind::Gather {
                        gather_slot += 1;
                    }
                }
                (KernelKind::Elementwise, _) => {
                    let meta = elementwise_meta(plan, kernel, &bp.shapes);
                    let mut params = vec![
                        meta.words().iter().flat_map(|w| w.to_le_bytes()).collect(),
                        pi(meta.numel),
                    ];
                    for v in kernel.inputs(plan) {
                        params.push(p64(addr(v)?));
                    }
                    params.push(p64(addr(out)?));
                    calls.push(Call::Kernel {
                        function: f(&format!("fused_{k}"))?,
                        grid: blocks(numel, BLOCK as usize, cap),
                        block: BLOCK,
                        params,
                    });
                }
                (KernelKind::Gemm, Launch::Gemm(desc)) => {
                    calls.push(Call::Gemm {
                        call: desc.cublas()?,
                        first: addr(step.inputs[1])?,
                        second: addr(step.inputs[0])?,
                        out: addr(out)?,
                        alpha: desc.alpha,
                    });
                }
                (KernelKind::Softmax, Launch::Softmax(r))
                | (KernelKind::ReduceMean, Launch::ReduceMean(r)) => {
                    let name = if kernel.kind == KernelKind::Softmax {
                        "sy_softmax"
                    } else {
                        "sy_reduce_mean"
                    };
                    calls.push(Call::Kernel {
                        function: f(name)?,
                        grid: blocks(r.outer * r.inner, ROWS_PER_BLOCK as usize, u32::MAX),
                        block: BLOCK,
                        params: vec![
                            p64(addr(step.inputs[0])?),
                            p64(addr(out)?),
                            pi(r.outer),
                            pi(r.len),
                            pi(r.inner),
                        ],
                    });
                }
                (KernelKind::LayerNorm, Launch::LayerNorm { rows, cols }) => {
                    let Op::LayerNorm { epsilon, .. } = step.op else {
                        unreachable!("a LayerNorm kernel runs a LayerNorm step")
                    };
                    let scale = step.inputs[1];
                    let (bias, bias_n) = match step.inputs.get(2) {
                        Some(&b) => (addr(b)?, bp.shapes.numel(b)),
                        None => (0, 1),
                    };
                    calls.push(Call::Kernel {
                        function: f("sy_layer_norm")?,
                        grid: blocks(*rows, ROWS_PER_BLOCK as usize, u32::MAX),
                        block: BLOCK,
                        params: vec![
                            p64(addr(step.inputs[0])?),
                            p64(addr(scale)?),
                            pi(bp.shapes.numel(scale).max(1)),
                            p64(bias),
                            pi(bias_n.max(1)),
                            p64(addr(out)?),
                            pi(*rows),
                            pi(*cols),
                            epsilon.to_le_bytes().to_vec(),
                        ],
                    });
                }
                (KernelKind::Transpose, Launch::Transpose { dims, perm }) => {
                    if dims.len() > MAX_TRANSPOSE_RANK {
                        return Err(format!(
                            "node {}: Transpose of rank {} (at most {MAX_TRANSPOSE_RANK})",
                            step.node,
                            dims.len()
                        ));
                    }
                    let rank = dims.len();
                    let mut strides = vec![1usize; rank];
                    for d in (0..rank.saturating_sub(1)).rev() {
                        strides[d] = strides[d + 1] * dims[d + 1];
                    }
                    let mut meta = [0i64; 1 + 2 * MAX_TRANSPOSE_RANK];
                    meta[0] = rank as i64;
                    for d in 0..rank {
                        meta[1 + d] = dims[perm[d]] as i64;
                        meta[1 + MAX_TRANSPOSE_RANK + d] = strides[perm[d]] as i64;
                    }
                    calls.push(Call::Kernel {
                        function: f(&format!("sy_transpose_{size}"))?,
                        grid: blocks(numel, BLOCK as usize, cap),
                        block: BLOCK,
                        params: vec![
                            meta.iter().flat_map(|w| w.to_le_bytes()).collect(),
                            p64(addr(step.inputs[0])?),
                            p64(addr(out)?),
                            pi(numel),
                        ],
                    });
                }
                (
                    KernelKind::Concat,
                    Launch::Concat {
                        outer,
                        extents,
                        inner,
                    },
                ) => {
                    let dst_row = extents.iter().sum::<usize>() * inner;
                    let mut offset = 0;
                    for (&v, &extent) in step.inputs.iter().zip(extents) {
                        let src_row = extent * inner;
                        if src_row * outer > 0 {
                            calls.push(Call::Kernel {
                                function: f(&format!("sy_concat_{size}"))?,
                                grid: blocks(src_row * outer, BLOCK as usize, cap),
                                block: BLOCK,
                                params: vec![
                                    p64(addr(v)?),
                                    p64(addr(out)?),
                                    pi(*outer),
                                    pi(src_row),
                                    pi(dst_row),
                                    pi(offset),
                                ],
                            });
                        }
                        offset += src_row;
                    }
                }
                (
                    KernelKind::Gather,
                    Launch::Gather {
                        outer,
                        axis_len,
                        indices,
                        inner,
                    },
                ) => {
                    let index_type = match plan.values[step.inputs[1]].dtype {
                        ElemType::I64 => "i64",
                        ElemType::I32 => "i32",
                        other => {
                            return Err(format!(
                                "node {}: Gather indices of type {other:?}",
                                step.node
                            ));
                        }
                    };
                    calls.push(Call::Kernel {
                        function: f(&format!("sy_gather_{size}_{index_type}"))?,
                        grid: blocks(numel, BLOCK as usize, cap),
                        block: BLOCK,
                        params: vec![
                            p64(addr(step.inputs[0])?),
                            p64(addr(step.inputs[1])?),
                            p64(addr(out)?),
                            pi(*outer),
                            pi(*axis_len),
                            pi(*indices),
                            pi(*inner),
                            p64(self.flags.ptr() + (gather_slot * FLAG_BYTES) as u64),
                        ],
                    });
                    gather_axes[gather_slot] = *axis_len;
                    gather_slot += 1;
                }
                (kind, launch) => {
                    return Err(format!(
                        "node {}: no GPU kernel for {kind:?} with {launch:?}",
                        step.node
                    ));
                }
            }
        }
        for (j, &v) in plan.outputs.iter().enumerate() {
            let span = bp.buffers.staging_outputs[j];
            if span.bytes > 0 {
                calls.push(Call::CopyOut {
                    offset: span.offset,
                    src: addr(v)?,
                    bytes: span.bytes,
                });
            }
        }
        let copies_in = calls
            .iter()
            .take_while(|c| matches!(c, Call::CopyIn { .. }))
            .count();
        let copies_out = calls
            .iter()
            .rev()
            .take_while(|c| matches!(c, Call::CopyOut { .. }))
            .count();
        Ok(Calls {
            plan: bp,
            compute: copies_in..calls.len() - copies_out,
            calls,
            gather_axes,
        })
    }

    /// Queues a whole run: the copies in, the compute, the copies out.
    fn enqueue(&self, calls: &Calls) -> Result<(), String> {
        self.enqueue_calls(&calls.calls[..calls.compute.start])?;
        self.enqueue_compute(calls)?;
        self.enqueue_calls(&calls.calls[calls.compute.end..])
    }

    /// Queues the compute of a run (what a CUDA graph holds): clear the flags, the kernels and
    /// GEMMs, then the flags back to the host.
    fn enqueue_compute(&self, calls: &Calls) -> Result<(), String> {
        let flagged = !self.gathers.is_empty();
        if flagged {
            self.stream.zero(self.flags.ptr(), self.flags.bytes())?;
        }
        self.enqueue_calls(&calls.calls[calls.compute.clone()])?;
        if flagged {
            self.stream
                .copy_out(&self.flags_host, 0, self.flags.ptr(), self.flags.bytes())?;
        }
        Ok(())
    }

    fn enqueue_calls(&self, calls: &[Call]) -> Result<(), String> {
        let staging = self.pool_staging();
        for call in calls {
            match call {
                Call::CopyIn { dst, offset, bytes } => {
                    self.stream.copy_in(*dst, staging, *offset, *bytes)?
                }
                Call::CopyOut { offset, src, bytes } => {
                    self.stream.copy_out(staging, *offset, *src, *bytes)?
                }
                Call::Kernel {
                    function,
                    grid,
                    block,
                    params,
                } => self.stream.launch(function, *grid, *block, params)?,
                Call::Gemm {
                    call,
                    first,
                    second,
                    out,
                    alpha,
                } => {
                    self.blas
                        .gemm(call, *first, *second, *out, *alpha, self.model.options.math)?
                }
            }
        }
        Ok(())
    }

    /// Queues a run between the instance's timing events and waits for it: the copies in, the
    /// compute (the captured graph when there is one), the copies out. Returns the device time
    /// of the copies in and of the copies out.
    fn run_timed(&self, batch: usize, calls: &Calls) -> Result<(Duration, Duration), String> {
        let [start, copied_in, computed, copied_out] = &self.events;
        start.record(&self.stream)?;
        self.enqueue_calls(&calls.calls[..calls.compute.start])?;
        copied_in.record(&self.stream)?;
        match self.graphs.get(&batch) {
            Some(graph) => graph.launch(&self.stream)?,
            None => self.enqueue_compute(calls)?,
        }
        computed.record(&self.stream)?;
        self.enqueue_calls(&calls.calls[calls.compute.end..])?;
        copied_out.record(&self.stream)?;
        self.stream.synchronize()?;
        Ok((start.until(copied_in)?, computed.until(copied_out)?))
    }

    /// The batch size of a request: the leading dimension of the first input when the plan's
    /// inputs are batched, else 1.
    fn batch_of(&self, inputs: &[Option<Tensor>]) -> usize {
        let plan = &self.model.program.plan;
        plan.inputs
            .first()
            .filter(|i| matches!(i.dims.first(), Some(Dim::Var(_))))
            .and_then(|_| inputs[self.model.input_order[0]].as_ref())
            .and_then(|t| t.shape.first())
            .map_or(1, |&d| d.max(0) as usize)
    }

    fn run(
        &mut self,
        inputs: Vec<Option<Tensor>>,
        phases: &mut Phases,
    ) -> Result<Vec<Tensor>, ExecError> {
        let started = Instant::now();
        self.stream.bind().map_err(ExecError::Failed)?;
        let model = Arc::clone(&self.model);
        let plan = &model.program.plan;
        let batch = self.batch_of(&inputs);
        let calls = self.prepare(batch).map_err(ExecError::Input)?;
        let bp = &calls.plan;
        let staging = self.pool_staging();
        for (i, input) in plan.inputs.iter().enumerate() {
            let spec = &model.schema.inputs[model.input_order[i]];
            let tensor = inputs[model.input_order[i]].as_ref().ok_or_else(|| {
                ExecError::Input(format!(
                    "input '{}' is required by the ONNX graph",
                    spec.name
                ))
            })?;
            let expected = &bp.shapes.values[input.value];
            let fits = tensor.shape.len() == expected.len()
                && tensor
                    .shape
                    .iter()
                    .zip(expected)
                    .all(|(&g, &e)| g >= 0 && g as usize == e);
            let span = bp.buffers.staging_inputs[i];
            if !fits || tensor.data.len() != span.bytes {
                return Err(ExecError::Input(format!(
                    "input '{}' has shape {:?}; the model expects {expected:?}",
                    spec.name, tensor.shape
                )));
            }
            staging.write(span.offset, &tensor.data);
        }
        let staged = Instant::now();
        let (copy_in, copy_out) = self.run_timed(batch, &calls).map_err(ExecError::Failed)?;
        self.check_flags(&calls)?;
        let ran = Instant::now();
        let split = split_phases(staged - started, ran - staged, copy_in, copy_out);
        let staging = self.pool_staging().as_slice();
        let outputs = model
            .schema
            .outputs
            .iter()
            .zip(&model.output_order)
            .map(|(spec, &j)| {
                let span = bp.buffers.staging_outputs[j];
                Tensor {
                    name: spec.name.clone(),
                    datatype: spec.datatype,
                    shape: bp.shapes.values[plan.outputs[j]]
                        .iter()
                        .map(|&d| d as i64)
                        .collect(),
                    data: Bytes::copy_from_slice(&staging[span.offset..span.offset + span.bytes]),
                }
            })
            .collect();
        phases.input += split.input;
        phases.infer += split.infer;
        phases.output += split.output + ran.elapsed();
        Ok(outputs)
    }

    /// Fails the run if a Gather met an index out of range, naming the node, the index and the
    /// axis: an input error (INVALID_ARGUMENT), which leaves the instance as it is.
    fn check_flags(&self, calls: &Calls) -> Result<(), ExecError> {
        let words = self.flags_host.as_slice();
        for (slot, node) in self.gathers.iter().enumerate() {
            let at = |i: usize| {
                let o = slot * FLAG_BYTES + i * 8;
                i64::from_le_bytes(words[o..o + 8].try_into().expect("8 bytes"))
            };
            if at(0) != 0 {
                return Err(ExecError::Input(format!(
                    "Gather (node {node}): index {} is out of range for an axis of {}",
                    at(1),
                    calls.gather_axes[slot]
                )));
            }
        }
        Ok(())
    }
}

/// How one run's time splits into Triton's phases. The host staged the inputs for `staging`, then
/// waited `device` for the stream, of which the CUDA events timed `copy_in` copying inputs to the
/// GPU and `copy_out` copying outputs back. Input is staging and copy-in, output the copy-out (the
/// caller adds its host work), infer the rest of the wait: the kernels and their launches. The
/// three add up to `staging + device`.
fn split_phases(
    staging: Duration,
    device: Duration,
    copy_in: Duration,
    copy_out: Duration,
) -> Phases {
    // Event timestamps and the host clock differ by microseconds; the copies never take more
    // than the wait they are part of.
    let copy_in = copy_in.min(device);
    let copy_out = copy_out.min(device - copy_in);
    Phases {
        input: staging + copy_in,
        infer: device - copy_in - copy_out,
        output: copy_out,
    }
}

impl Instance for CudaInstance {
    fn execute(
        &mut self,
        inputs: Vec<Option<Tensor>>,
        phases: &mut Phases,
    ) -> Result<Vec<Tensor>, ExecError> {
        self.run(inputs, phases)
    }
}

impl Drop for CudaInstance {
    fn drop(&mut self) {
        // Nothing may still use the memory the fields free.
        let _ = self.stream.bind().and_then(|()| self.stream.synchronize());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn copies_go_to_input_and_output_and_the_rest_of_the_wait_to_infer() {
        let p = split_phases(5 * US, 100 * US, 12 * US, 30 * US);
        assert_eq!(p.input, 17 * US);
        assert_eq!(p.infer, 58 * US);
        assert_eq!(p.output, 30 * US);
        assert_eq!(p.input + p.infer + p.output, 105 * US);
    }

    #[test]
    fn device_times_past_the_host_wait_are_capped_so_nothing_underflows() {
        // The events' clock may read a little more than the host waited.
        let p = split_phases(2 * US, 40 * US, 25 * US, 20 * US);
        assert_eq!(p.input, 27 * US);
        assert_eq!(p.infer, Duration::ZERO);
        assert_eq!(p.output, 15 * US);
        assert_eq!(p.input + p.infer + p.output, 42 * US);
        let p = split_phases(Duration::ZERO, 10 * US, 50 * US, 50 * US);
        assert_eq!(
            (p.input, p.infer, p.output),
            (10 * US, Duration::ZERO, Duration::ZERO)
        );
    }
}
