//! Where every value lives at one batch size: constants in the weight block (laid out once per
//! model), fused intermediates in registers, views in their source's bytes, and everything else
//! in one activation arena whose buffers are reused once their values are dead (liveness over
//! the kernel order). Host-side arithmetic only; `pool` holds the memory.

use super::fusion::{Fusion, KernelKind};
use super::plan::{Op, Plan, ValueId};
use super::shape::Shapes;

/// Alignment of every buffer, in bytes (cudaMalloc's own alignment, and enough for vector loads).
pub const ALIGN: usize = 256;

fn align(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// Where a value's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In the weight block, at this offset.
    Weight { offset: usize },
    /// In the activation arena, at this offset.
    Arena { offset: usize },
    /// Computed inside a fused kernel and never written to memory.
    Register,
    /// A scalar constant compiled into kernel source, or a value nothing reads.
    None,
}

/// The device layout of the model's constants: one block, uploaded once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightLayout {
    /// (constant, offset) in upload order.
    pub entries: Vec<(ValueId, usize)>,
    pub bytes: usize,
}

impl WeightLayout {
    /// Lays out every constant some step reads as a tensor.
    pub fn new(plan: &Plan) -> WeightLayout {
        let mut bytes = 0;
        let mut entries = Vec::new();
        for v in plan.device_constants() {
            let size = plan.constant(v).map_or(0, |c| c.bytes.len());
            entries.push((v, bytes));
            bytes += align(size);
        }
        WeightLayout { entries, bytes }
    }

    /// The offset of a constant in the block.
    pub fn offset(&self, value: ValueId) -> Option<usize> {
        self.entries
            .iter()
            .find(|(v, _)| *v == value)
            .map(|&(_, o)| o)
    }

    /// The block's contents, for one host-to-device copy.
    pub fn image(&self, plan: &Plan) -> Vec<u8> {
        let mut image = vec![0u8; self.bytes];
        for &(v, offset) in &self.entries {
            if let Some(c) = plan.constant(v) {
                image[offset..offset + c.bytes.len()].copy_from_slice(&c.bytes);
            }
        }
        image
    }
}

/// A byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: usize,
    pub bytes: usize,
}

/// Every value's place at one batch size, and the sizes of the blocks that hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferPlan {
    /// By value.
    pub storage: Vec<Storage>,
    /// Bytes of the activation arena (inputs, intermediates, outputs).
    pub arena_bytes: usize,
    /// Distinct buffers carved from the arena (fewer than the values stored there: reuse).
    pub buffers: usize,
    /// Values written to the arena (excluding views, which share bytes).
    pub materialized: usize,
    /// Live range of each arena value, in kernel positions (inputs from 0, outputs to the end).
    pub live: Vec<Option<(usize, usize)>>,
    /// Pinned host staging: one span per graph input, then one per graph output.
    pub staging_inputs: Vec<Span>,
    pub staging_outputs: Vec<Span>,
    pub staging_bytes: usize,
}

/// Which bytes each value uses and when they are live, over the kernel order (positions from 1;
/// 0 is before the first kernel, `kernels + 1` after the last).
struct Liveness {
    /// The value whose bytes each value uses (itself unless it is a view).
    root: Vec<ValueId>,
    /// Position of the write (`usize::MAX`: never written by a kernel or copied in).
    start: Vec<usize>,
    /// Position of the last read.
    end: Vec<usize>,
    /// Values computed inside fused kernels.
    registers: Vec<ValueId>,
}

fn liveness(plan: &Plan, fusion: &Fusion) -> Liveness {
    let n = plan.values.len();
    let mut l = Liveness {
        root: (0..n).collect(),
        start: vec![usize::MAX; n],
        end: vec![0; n],
        registers: Vec::new(),
    };
    for input in &plan.inputs {
        l.start[input.value] = 0;
    }
    for (k, kernel) in fusion.kernels.iter().enumerate() {
        let position = k + 1;
        let out = kernel.output(plan);
        if kernel.kind == KernelKind::View {
            let step = &plan.steps[kernel.steps[0]];
            debug_assert!(matches!(step.op, Op::View(_)));
            l.root[out] = l.root[step.inputs[0]];
            continue;
        }
        let inner = &kernel.steps[..kernel.steps.len() - 1];
        l.registers
            .extend(inner.iter().map(|&s| plan.steps[s].output));
        (l.start[out], l.end[out]) = (position, position);
        for v in kernel.inputs(plan) {
            let r = l.root[v];
            l.end[r] = l.end[r].max(position);
        }
    }
    for &v in &plan.outputs {
        let r = l.root[v];
        l.end[r] = fusion.kernels.len() + 1;
    }
    l
}

/// Assigns storage at one batch size.
pub fn plan_buffers(
    plan: &Plan,
    fusion: &Fusion,
    shapes: &Shapes,
    weights: &WeightLayout,
) -> BufferPlan {
    let n = plan.values.len();
    let Liveness {
        root,
        start,
        end,
        registers,
    } = liveness(plan, fusion);
    let mut storage = vec![Storage::None; n];
    for &(v, offset) in &weights.entries {
        storage[v] = Storage::Weight { offset };
    }
    for v in registers {
        storage[v] = Storage::Register;
    }
    let arena_values: Vec<ValueId> = (0..n)
        .filter(|&v| root[v] == v && start[v] != usize::MAX && plan.constant(v).is_none())
        .collect();
    let (offsets, arena_bytes, buffers) =
        assign(&arena_values, &start, &end, |v| shapes.bytes(plan, v));
    let mut live = vec![None; n];
    for (&v, &offset) in arena_values.iter().zip(&offsets) {
        storage[v] = Storage::Arena { offset };
        live[v] = Some((start[v], end[v]));
    }
    for v in 0..n {
        storage[v] = storage[root[v]];
    }
    let mut staging = 0;
    let mut span = |v: ValueId| {
        let bytes = shapes.bytes(plan, v);
        let s = Span {
            offset: staging,
            bytes,
        };
        staging += align(bytes);
        s
    };
    let staging_inputs = plan.inputs.iter().map(|i| span(i.value)).collect();
    let staging_outputs = plan.outputs.iter().map(|&v| span(v)).collect();
    BufferPlan {
        storage,
        arena_bytes,
        buffers,
        materialized: arena_values.len(),
        live,
        staging_inputs,
        staging_outputs,
        staging_bytes: staging,
    }
}

/// Greedy buffer reuse: values in order of first write; each takes the smallest free buffer
/// that fits, else grows the largest free one, else opens a new one. A buffer frees when the
/// last kernel reading its value has run, so a kernel's output never shares its inputs' bytes.
fn assign(
    values: &[ValueId],
    start: &[usize],
    end: &[usize],
    bytes: impl Fn(ValueId) -> usize,
) -> (Vec<usize>, usize, usize) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by_key(|&i| (start[values[i]], values[i]));
    let mut sizes: Vec<usize> = Vec::new();
    let mut busy_until: Vec<Option<usize>> = Vec::new();
    let mut slot_of = vec![0usize; values.len()];
    for i in order {
        let v = values[i];
        let need = align(bytes(v).max(1));
        let free = |s: usize| busy_until[s].is_none_or(|e| e < start[v]);
        let fit = (0..sizes.len())
            .filter(|&s| free(s) && sizes[s] >= need)
            .min_by_key(|&s| sizes[s]);
        let slot = fit
            .or_else(|| {
                (0..sizes.len())
                    .filter(|&s| free(s))
                    .max_by_key(|&s| sizes[s])
            })
            .unwrap_or_else(|| {
                sizes.push(0);
                busy_until.push(None);
                sizes.len() - 1
            });
        sizes[slot] = sizes[slot].max(need);
        busy_until[slot] = Some(end[v]);
        slot_of[i] = slot;
    }
    let mut slot_offsets = Vec::with_capacity(sizes.len());
    let mut total = 0;
    for &size in &sizes {
        slot_offsets.push(total);
        total += size;
    }
    let offsets = slot_of.iter().map(|&s| slot_offsets[s]).collect();
    (offsets, total, sizes.len())
}
