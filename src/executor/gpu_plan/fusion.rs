//! Fusion decisions, a pure function of the plan: element-wise steps whose results are read only
//! inside one group become one kernel (a chain or a small DAG with one output), so intermediate
//! results live in registers instead of device memory. Every other step is a kernel of its own.

use super::plan::{Op, Plan, StepId, ValueId};

/// What a kernel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// A cuBLAS (strided-batched) GEMM.
    Gemm,
    /// A generated, NVRTC-compiled kernel running one or more fused element-wise steps.
    Elementwise,
    Softmax,
    LayerNorm,
    ReduceMean,
    Transpose,
    Concat,
    Gather,
    /// Nothing runs: the output shares its input's bytes.
    View,
}

/// One launch (or none, for views) of the executor, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub kind: KernelKind,
    /// The steps it runs, in plan order; the last one produces the kernel's only output.
    pub steps: Vec<StepId>,
}

/// The plan grouped into kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fusion {
    /// Kernels in an order that respects every dependency (each at its last step's position).
    pub kernels: Vec<Kernel>,
    /// For each step, the kernel running it.
    pub kernel_of: Vec<usize>,
}

impl Kernel {
    /// The value the kernel writes.
    pub fn output(&self, plan: &Plan) -> ValueId {
        plan.steps[*self.steps.last().expect("a kernel runs a step")].output
    }

    /// Values the kernel reads from memory, in order of first use: for a fused group, the
    /// operands not computed inside it, less the scalar constants compiled into its source.
    pub fn inputs(&self, plan: &Plan) -> Vec<ValueId> {
        let inside: Vec<ValueId> = self.steps.iter().map(|&s| plan.steps[s].output).collect();
        let mut out = Vec::new();
        for &s in &self.steps {
            for &v in &plan.steps[s].inputs {
                let inlined =
                    self.kind == KernelKind::Elementwise && plan.inline_scalar(v).is_some();
                if !inside.contains(&v) && !inlined && !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    }
}

fn kind(op: &Op) -> KernelKind {
    match op {
        Op::Gemm { .. } | Op::MatMul => KernelKind::Gemm,
        Op::Elementwise(_) => KernelKind::Elementwise,
        Op::Softmax { .. } => KernelKind::Softmax,
        Op::LayerNorm { .. } => KernelKind::LayerNorm,
        Op::ReduceMean { .. } => KernelKind::ReduceMean,
        Op::Transpose { .. } => KernelKind::Transpose,
        Op::Concat { .. } => KernelKind::Concat,
        Op::Gather { .. } => KernelKind::Gather,
        Op::View(_) => KernelKind::View,
    }
}

/// Groups the plan's steps into kernels.
///
/// Walking the steps backwards, an element-wise step joins the group of its consumers when its
/// result is not a graph output and every step reading it is element-wise and in that one
/// group; otherwise its result is written to memory and it starts a group of its own. A group
/// therefore has exactly one output, and a value read outside its group is never fused away.
pub fn fuse(plan: &Plan) -> Fusion {
    let steps = plan.steps.len();
    // group[s]: the step whose output the group of `s` writes (its sink).
    let mut group: Vec<StepId> = (0..steps).collect();
    for s in (0..steps).rev() {
        if !plan.is_elementwise(s) {
            continue;
        }
        let out = plan.steps[s].output;
        let readers = &plan.consumers[out];
        let sink = readers.first().map(|&r| group[r]);
        let joins = !plan.is_output(out)
            && !readers.is_empty()
            && readers
                .iter()
                .all(|&r| plan.is_elementwise(r) && Some(group[r]) == sink);
        if let (true, Some(sink)) = (joins, sink) {
            group[s] = sink;
        }
    }
    let mut kernels = Vec::new();
    let mut kernel_of = vec![usize::MAX; steps];
    for sink in 0..steps {
        if group[sink] != sink {
            continue;
        }
        let members: Vec<StepId> = (0..=sink).filter(|&s| group[s] == sink).collect();
        for &m in &members {
            kernel_of[m] = kernels.len();
        }
        kernels.push(Kernel {
            kind: kind(&plan.steps[sink].op),
            steps: members,
        });
    }
    Fusion { kernels, kernel_of }
}

impl Fusion {
    /// Kernels of a kind.
    pub fn count(&self, kind: KernelKind) -> usize {
        self.kernels.iter().filter(|k| k.kind == kind).count()
    }

    /// Kernels that launch something (all but views).
    pub fn launches(&self) -> usize {
        self.kernels.len() - self.count(KernelKind::View)
    }
}
