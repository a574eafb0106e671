//! Device memory of a loaded model behind a small allocator trait, so its accounting is tested
//! without a GPU: the weight block (allocated once per model), and per instance one activation
//! arena and one pinned staging block, sized by the largest batch seen so far. A batch size seen
//! before (or covered by `reserve` at warm-up) allocates nothing; dropping releases everything.

use std::collections::HashMap;
use std::sync::Arc;

use super::Program;
use super::buffers::{BufferPlan, plan_buffers};
use super::shape::{ShapeError, Shapes};

/// Which memory a block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Device memory (`cuMemAlloc`).
    Device,
    /// Page-locked host memory for asynchronous copies (`cuMemAllocHost`).
    PinnedHost,
}

/// Allocates and frees blocks. The CUDA executor implements it on a stream; tests count bytes.
pub trait DeviceAllocator {
    type Block;
    fn allocate(&mut self, kind: MemoryKind, bytes: usize) -> Result<Self::Block, String>;
    fn release(&mut self, block: Self::Block);
}

/// Why memory could not be prepared for a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolError {
    Shape(ShapeError),
    Allocation {
        kind: MemoryKind,
        bytes: usize,
        reason: String,
    },
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Shape(e) => write!(f, "{e}"),
            PoolError::Allocation {
                kind,
                bytes,
                reason,
            } => {
                write!(
                    f,
                    "cannot allocate {bytes} bytes of {kind:?} memory: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// A plan sized for one batch: shapes, launches and buffer offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    pub batch: usize,
    pub shapes: Shapes,
    pub buffers: BufferPlan,
}

impl BatchPlan {
    /// Sizes a program at a batch size (host arithmetic only).
    pub fn new(program: &Program, batch: usize) -> Result<BatchPlan, ShapeError> {
        let shapes = Shapes::for_batch(&program.plan, batch)?;
        let buffers = plan_buffers(&program.plan, &program.fusion, &shapes, &program.weights);
        Ok(BatchPlan {
            batch,
            shapes,
            buffers,
        })
    }
}

struct Held<B> {
    block: B,
    bytes: usize,
}

fn allocate<A: DeviceAllocator>(
    allocator: &mut A,
    kind: MemoryKind,
    bytes: usize,
) -> Result<Held<A::Block>, PoolError> {
    allocator
        .allocate(kind, bytes)
        .map(|block| Held { block, bytes })
        .map_err(|reason| PoolError::Allocation {
            kind,
            bytes,
            reason,
        })
}

/// The model's constants on the device: one block, allocated at load, released on drop.
pub struct DeviceWeights<A: DeviceAllocator> {
    allocator: A,
    held: Option<Held<A::Block>>,
}

impl<A: DeviceAllocator> DeviceWeights<A> {
    /// Allocates the weight block (the caller copies `program.weights.image(..)` into it).
    pub fn allocate(mut allocator: A, program: &Program) -> Result<Self, PoolError> {
        let held = allocate(
            &mut allocator,
            MemoryKind::Device,
            program.weights.bytes.max(1),
        )?;
        Ok(DeviceWeights {
            allocator,
            held: Some(held),
        })
    }

    pub fn block(&self) -> &A::Block {
        &self.held.as_ref().expect("held until drop").block
    }
}

impl<A: DeviceAllocator> Drop for DeviceWeights<A> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.allocator.release(held.block);
        }
    }
}

/// What one instance holds: its activation arena and staging block, grown to the largest batch
/// seen, and the batch plans computed so far.
pub struct MemoryPool<A: DeviceAllocator> {
    allocator: A,
    program: Arc<Program>,
    plans: HashMap<usize, Arc<BatchPlan>>,
    arena: Option<Held<A::Block>>,
    staging: Option<Held<A::Block>>,
}

/// The blocks and plan for one run.
pub struct Prepared<'a, B> {
    pub plan: Arc<BatchPlan>,
    pub arena: &'a B,
    pub staging: &'a B,
}

impl<A: DeviceAllocator> MemoryPool<A> {
    /// An empty pool: nothing is allocated until a batch is prepared or reserved.
    pub fn new(allocator: A, program: Arc<Program>) -> Self {
        MemoryPool {
            allocator,
            program,
            plans: HashMap::new(),
            arena: None,
            staging: None,
        }
    }

    /// The plan for a batch size, computed once and kept.
    pub fn batch_plan(&mut self, batch: usize) -> Result<Arc<BatchPlan>, PoolError> {
        if let Some(plan) = self.plans.get(&batch) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(BatchPlan::new(&self.program, batch).map_err(PoolError::Shape)?);
        self.plans.insert(batch, plan.clone());
        Ok(plan)
    }

    /// Memory for a run at a batch size; allocates only when this batch needs more than any
    /// batch before it (the old, smaller block is released first).
    pub fn prepare(&mut self, batch: usize) -> Result<Prepared<'_, A::Block>, PoolError> {
        let plan = self.batch_plan(batch)?;
        let arena_bytes = plan.buffers.arena_bytes.max(1);
        let staging_bytes = plan.buffers.staging_bytes.max(1);
        grow(
            &mut self.allocator,
            &mut self.arena,
            MemoryKind::Device,
            arena_bytes,
        )?;
        grow(
            &mut self.allocator,
            &mut self.staging,
            MemoryKind::PinnedHost,
            staging_bytes,
        )?;
        Ok(Prepared {
            plan,
            arena: &self.arena.as_ref().expect("grown").block,
            staging: &self.staging.as_ref().expect("grown").block,
        })
    }

    /// Sizes the blocks for every batch up to `max_batch` (at warm-up), so serving allocates
    /// nothing, and keeps every batch plan.
    pub fn reserve(&mut self, max_batch: usize) -> Result<(), PoolError> {
        let (mut arena, mut staging) = (1, 1);
        for batch in 1..=max_batch.max(1) {
            let plan = self.batch_plan(batch)?;
            arena = arena.max(plan.buffers.arena_bytes);
            staging = staging.max(plan.buffers.staging_bytes);
        }
        grow(
            &mut self.allocator,
            &mut self.arena,
            MemoryKind::Device,
            arena,
        )?;
        grow(
            &mut self.allocator,
            &mut self.staging,
            MemoryKind::PinnedHost,
            staging,
        )
    }

    /// The blocks held now: (arena, staging).
    pub fn blocks(&self) -> (Option<&A::Block>, Option<&A::Block>) {
        (
            self.arena.as_ref().map(|h| &h.block),
            self.staging.as_ref().map(|h| &h.block),
        )
    }

    /// Bytes held now: (device, pinned host).
    pub fn held_bytes(&self) -> (usize, usize) {
        let bytes = |h: &Option<Held<A::Block>>| h.as_ref().map_or(0, |h| h.bytes);
        (bytes(&self.arena), bytes(&self.staging))
    }
}

fn grow<A: DeviceAllocator>(
    allocator: &mut A,
    held: &mut Option<Held<A::Block>>,
    kind: MemoryKind,
    bytes: usize,
) -> Result<(), PoolError> {
    if held.as_ref().is_some_and(|h| h.bytes >= bytes) {
        return Ok(());
    }
    if let Some(old) = held.take() {
        allocator.release(old.block);
    }
    *held = Some(allocate(allocator, kind, bytes)?);
    Ok(())
}

impl<A: DeviceAllocator> Drop for MemoryPool<A> {
    fn drop(&mut self) {
        for held in [self.arena.take(), self.staging.take()]
            .into_iter()
            .flatten()
        {
            self.allocator.release(held.block);
        }
    }
}
