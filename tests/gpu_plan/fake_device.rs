//! A device allocator for tests: counts blocks and bytes instead of allocating them, and fails
//! the test on a double release. Clones share their counts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use switchyard::executor::gpu_plan::{DeviceAllocator, MemoryKind};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub allocations: usize,
    pub releases: usize,
    pub device_bytes: usize,
    pub pinned_bytes: usize,
}

#[derive(Clone, Default)]
pub struct FakeDevice {
    counts: Arc<Mutex<Counts>>,
    pub live: Arc<Mutex<HashSet<u64>>>,
}

#[derive(Debug)]
pub struct FakeBlock {
    pub id: u64,
    pub kind: MemoryKind,
    pub bytes: usize,
}

impl FakeDevice {
    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap()
    }
}

impl DeviceAllocator for FakeDevice {
    type Block = FakeBlock;

    fn allocate(&mut self, kind: MemoryKind, bytes: usize) -> Result<FakeBlock, String> {
        let mut c = self.counts.lock().unwrap();
        c.allocations += 1;
        match kind {
            MemoryKind::Device => c.device_bytes += bytes,
            MemoryKind::PinnedHost => c.pinned_bytes += bytes,
        }
        let id = c.allocations as u64;
        self.live.lock().unwrap().insert(id);
        Ok(FakeBlock { id, kind, bytes })
    }

    fn release(&mut self, block: FakeBlock) {
        assert!(
            self.live.lock().unwrap().remove(&block.id),
            "double release of {block:?}"
        );
        let mut c = self.counts.lock().unwrap();
        c.releases += 1;
        match block.kind {
            MemoryKind::Device => c.device_bytes -= block.bytes,
            MemoryKind::PinnedHost => c.pinned_bytes -= block.bytes,
        }
    }
}
