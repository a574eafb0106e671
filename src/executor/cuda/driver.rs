//! Owned CUDA resources over cudarc's driver and cuBLAS bindings: device and pinned host memory,
//! streams, timing events, modules, a cuBLAS handle bound to a stream, and captured graphs. Each one keeps its
//! context alive, binds it before every call, and frees itself on drop, so an instance that is
//! dropped gives back everything it held. Every raw call is in this file.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::cublas::sys as blas;
use cudarc::driver::{CudaContext, result, sys};

use crate::executor::gpu_plan::gemm::CublasGemm;

/// A driver or cuBLAS failure as text.
pub fn fail(what: &str, e: impl std::fmt::Debug) -> String {
    format!("{what}: {e:?}")
}

fn bind(ctx: &CudaContext) -> Result<(), String> {
    ctx.bind_to_thread()
        .map_err(|e| fail("binding the CUDA context", e))
}

/// Device memory from `cuMemAlloc`.
pub struct DeviceBuffer {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

// SAFETY: a device pointer is an address in the context's memory, usable from any thread that
// binds the context (every method does); the buffer is freed once, on drop.
unsafe impl Send for DeviceBuffer {}
// SAFETY: shared references only read the address; writes go through the stream, ordered by it.
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    pub fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<DeviceBuffer, String> {
        bind(ctx)?;
        // SAFETY: the context is current; the size is non-zero (callers ask for at least 1).
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }
            .map_err(|e| fail(&format!("allocating {bytes} bytes of device memory"), e))?;
        Ok(DeviceBuffer {
            ctx: Arc::clone(ctx),
            ptr,
            bytes,
        })
    }

    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Copies host bytes into the start of the buffer and waits for the copy.
    pub fn upload(&self, bytes: &[u8]) -> Result<(), String> {
        assert!(bytes.len() <= self.bytes, "upload larger than the buffer");
        bind(&self.ctx)?;
        // SAFETY: the destination holds at least `bytes.len()` bytes (asserted); the copy is
        // synchronous, so the source outlives it.
        unsafe { result::memcpy_htod_sync(self.ptr, bytes) }
            .map_err(|e| fail("copying to the device", e))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if bind(&self.ctx).is_ok() {
            // SAFETY: allocated by `malloc_sync` in this context and freed only here. Work that
            // used it was synchronized by its owner before dropping.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory from `cuMemAllocHost`, the staging area of asynchronous copies.
pub struct PinnedBuffer {
    ctx: Arc<CudaContext>,
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: plain host memory owned by this value; the pointer is not shared outside it.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared references only read through `as_slice`.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    pub fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<PinnedBuffer, String> {
        bind(ctx)?;
        // SAFETY: the context is current; flags 0 asks for plain page-locked memory.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }.map_err(|e| {
            fail(
                &format!("allocating {bytes} bytes of pinned host memory"),
                e,
            )
        })?;
        Ok(PinnedBuffer {
            ctx: Arc::clone(ctx),
            ptr: ptr.cast(),
            bytes,
        })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Copies bytes into the buffer at `offset`. The caller makes sure no queued copy is reading
    /// or writing the range (the instance writes inputs only while its stream is idle).
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(
            offset + bytes.len() <= self.bytes,
            "write past the staging buffer"
        );
        // SAFETY: the range is inside the allocation (asserted) and, by the contract above, no
        // other access to it is in flight; the source is ordinary host memory that cannot
        // overlap a page-locked allocation of ours.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `bytes` bytes were allocated at `ptr` and live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if bind(&self.ctx).is_ok() {
            // SAFETY: allocated by `malloc_host` and freed only here; copies that used it were
            // synchronized by the owner first.
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}

/// A non-blocking stream of one instance.
pub struct Stream {
    ctx: Arc<CudaContext>,
    raw: sys::CUstream,
}

// SAFETY: a stream handle may be used from any thread with the context bound; one instance (one
// thread at a time) owns it.
unsafe impl Send for Stream {}

impl Stream {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Stream, String> {
        bind(ctx)?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| fail("creating a CUDA stream", e))?;
        Ok(Stream {
            ctx: Arc::clone(ctx),
            raw,
        })
    }

    pub fn raw(&self) -> sys::CUstream {
        self.raw
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn bind(&self) -> Result<(), String> {
        bind(&self.ctx)
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<(), String> {
        // SAFETY: the stream is alive.
        unsafe { result::stream::synchronize(self.raw) }.map_err(|e| fail("running on the GPU", e))
    }

    /// Queues a copy of `bytes` bytes from pinned host memory to the device.
    pub fn copy_in(
        &self,
        dst: u64,
        src: &PinnedBuffer,
        offset: usize,
        bytes: usize,
    ) -> Result<(), String> {
        assert!(offset + bytes <= src.bytes, "copy past the staging buffer");
        let host = &src.as_slice()[offset..offset + bytes];
        // SAFETY: `dst` points into a device buffer of the instance holding at least `bytes`
        // bytes (the buffer plan sized it); the pinned source lives as long as the instance,
        // which synchronizes the stream before reading or freeing it.
        unsafe { result::memcpy_htod_async(dst, host, self.raw) }
            .map_err(|e| fail("copying inputs", e))
    }

    /// Queues a copy of `bytes` bytes from the device to pinned host memory.
    pub fn copy_out(
        &self,
        dst: &PinnedBuffer,
        offset: usize,
        src: u64,
        bytes: usize,
    ) -> Result<(), String> {
        assert!(offset + bytes <= dst.bytes, "copy past the staging buffer");
        // SAFETY: the range is inside the pinned buffer (asserted); the host only reads it after
        // synchronizing the stream; `src` holds `bytes` bytes by the buffer plan.
        let host = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(offset), bytes) };
        // SAFETY: as above.
        unsafe { result::memcpy_dtoh_async(host, src, self.raw) }
            .map_err(|e| fail("copying outputs", e))
    }

    /// Queues a fill of `bytes` zero bytes.
    pub fn zero(&self, dst: u64, bytes: usize) -> Result<(), String> {
        // SAFETY: `dst` holds `bytes` bytes (the caller's own buffer).
        unsafe { result::memset_d8_async(dst, 0, bytes, self.raw) }
            .map_err(|e| fail("clearing memory", e))
    }

    /// Queues a kernel. `params` holds each argument's bytes, in order.
    pub fn launch(
        &self,
        function: &Function,
        grid: u32,
        block: u32,
        params: &[Vec<u8>],
    ) -> Result<(), String> {
        let mut pointers: Vec<*mut c_void> =
            params.iter().map(|p| p.as_ptr() as *mut c_void).collect();
        // SAFETY: `function` comes from a module the caller keeps loaded; each parameter's bytes
        // match the kernel's parameter list (built for that kernel by the instance), and the
        // driver copies them before returning; every pointer argument is a live device address
        // of the instance's memory.
        unsafe {
            result::launch_kernel(
                function.0,
                (grid, 1, 1),
                (block, 1, 1),
                0,
                self.raw,
                &mut pointers,
            )
        }
        .map_err(|e| fail("launching a kernel", e))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if bind(&self.ctx).is_ok() {
            // SAFETY: created by `stream::create`, destroyed once, after synchronizing.
            unsafe {
                let _ = result::stream::synchronize(self.raw);
                let _ = result::stream::destroy(self.raw);
            }
        }
    }
}

/// A kernel of a loaded module; valid while the module is.
#[derive(Debug, Clone, Copy)]
pub struct Function(sys::CUfunction);

// SAFETY: a function handle is context-wide and immutable; launching it from any thread with
// the context bound is allowed.
unsafe impl Send for Function {}
// SAFETY: as above.
unsafe impl Sync for Function {}

/// A loaded module and its kernels by name.
pub struct Module {
    ctx: Arc<CudaContext>,
    raw: sys::CUmodule,
    functions: HashMap<String, sys::CUfunction>,
}

// SAFETY: module and function handles are context-wide and immutable once loaded.
unsafe impl Send for Module {}
// SAFETY: as above: lookups only read the map.
unsafe impl Sync for Module {}

impl Module {
    /// Loads PTX and looks up every named kernel.
    pub fn load(ctx: &Arc<CudaContext>, ptx: &str, names: &[String]) -> Result<Module, String> {
        bind(ctx)?;
        let image = CString::new(ptx).map_err(|_| "PTX with a NUL byte".to_string())?;
        // SAFETY: `image` is a NUL-terminated PTX text that lives across the call.
        let raw = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .map_err(|e| fail("loading the compiled kernels", e))?;
        let mut module = Module {
            ctx: Arc::clone(ctx),
            raw,
            functions: HashMap::new(),
        };
        for name in names {
            let cname = CString::new(name.as_str()).map_err(|_| format!("kernel name {name}"))?;
            // SAFETY: the module was just loaded and is unloaded only on drop.
            let f = unsafe { result::module::get_function(raw, cname) }
                .map_err(|e| fail(&format!("finding kernel {name}"), e))?;
            module.functions.insert(name.clone(), f);
        }
        Ok(module)
    }

    pub fn function(&self, name: &str) -> Result<Function, String> {
        self.functions
            .get(name)
            .map(|&f| Function(f))
            .ok_or_else(|| format!("kernel {name} is not in the compiled module"))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if bind(&self.ctx).is_ok() {
            // SAFETY: loaded by `load_data`, unloaded once; instances using its functions hold
            // the model (and so the module) until they are dropped.
            let _ = unsafe { result::module::unload(self.raw) };
        }
    }
}

/// How cuBLAS multiplies FLOAT matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmMath {
    /// Full single precision (`CUBLAS_COMPUTE_32F`).
    Fp32,
    /// Tensor cores with operands rounded to half precision, accumulating in single
    /// (`CUBLAS_COMPUTE_32F_FAST_16F`).
    Fp16,
}

/// A cuBLAS handle bound to one stream, with its own workspace (so that graph capture never
/// needs cuBLAS to allocate).
pub struct Blas {
    ctx: Arc<CudaContext>,
    handle: blas::cublasHandle_t,
    _workspace: DeviceBuffer,
}

// SAFETY: the handle is used by one instance (one thread at a time) with the context bound.
unsafe impl Send for Blas {}

/// cuBLAS workspace per handle (cuBLAS's own recommendation for Hopper is 32 MiB).
const WORKSPACE_BYTES: usize = 32 << 20;

impl Blas {
    pub fn new(stream: &Stream) -> Result<Blas, String> {
        // The workspace first: if the handle cannot be made, dropping it is all the cleanup.
        let workspace = DeviceBuffer::new(stream.context(), WORKSPACE_BYTES)?;
        stream.bind()?;
        let handle = cudarc::cublas::result::create_handle()
            .map_err(|e| fail("creating a cuBLAS handle", e))?;
        // From here on, dropping `blas_handle` destroys the handle.
        let blas_handle = Blas {
            ctx: Arc::clone(stream.context()),
            handle,
            _workspace: workspace,
        };
        // SAFETY: the handle and stream are alive; the workspace outlives the handle (it is
        // dropped after it, see Drop). Setting the stream resets the workspace, so it comes after.
        unsafe {
            cudarc::cublas::result::set_stream(handle, stream.raw() as blas::cudaStream_t)
                .map_err(|e| fail("binding cuBLAS to the stream", e))?;
            blas::cublasSetWorkspace_v2(
                handle,
                blas_handle._workspace.ptr() as *mut c_void,
                WORKSPACE_BYTES,
            )
            .result()
            .map_err(|e| fail("giving cuBLAS its workspace", e))?;
        }
        Ok(blas_handle)
    }

    /// Queues `C = alpha * op(A) * op(B)` (column-major, as `call` describes) on the stream.
    pub fn gemm(
        &self,
        call: &CublasGemm,
        first: u64,
        second: u64,
        out: u64,
        alpha: f32,
        math: GemmMath,
    ) -> Result<(), String> {
        let op = |t: bool| {
            if t {
                blas::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let compute = match math {
            GemmMath::Fp32 => blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            GemmMath::Fp16 => blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16F,
        };
        let beta = 0.0f32;
        let f32t = blas::cudaDataType::CUDA_R_32F;
        // SAFETY: the operands are device addresses of FLOAT matrices laid out as `call` says
        // (its dimensions come from the shape inference that sized the buffers); alpha and beta
        // are host scalars read during the call (the default pointer mode).
        unsafe {
            blas::cublasGemmStridedBatchedEx(
                self.handle,
                op(call.transa),
                op(call.transb),
                call.m,
                call.n,
                call.k,
                (&alpha as *const f32).cast(),
                first as *const c_void,
                f32t,
                call.lda,
                call.stride_a,
                second as *const c_void,
                f32t,
                call.ldb,
                call.stride_b,
                (&beta as *const f32).cast(),
                out as *mut c_void,
                f32t,
                call.ldc,
                call.stride_c,
                call.batch,
                compute,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
            .result()
        }
        .map_err(|e| fail("cuBLAS GEMM", e))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        if bind(&self.ctx).is_ok() {
            // SAFETY: created by `create_handle`, destroyed once; the workspace field is dropped
            // after this body runs.
            let _ = unsafe { cudarc::cublas::result::destroy_handle(self.handle) };
        }
    }
}

/// A CUDA event with timing, for measuring intervals of a stream on the device clock.
pub struct Event {
    ctx: Arc<CudaContext>,
    raw: sys::CUevent,
}

// SAFETY: an event handle may be used from any thread with the context bound; one instance (one
// thread at a time) owns it.
unsafe impl Send for Event {}

impl Event {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Event, String> {
        bind(ctx)?;
        let raw = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(|e| fail("creating a CUDA event", e))?;
        Ok(Event {
            ctx: Arc::clone(ctx),
            raw,
        })
    }

    /// Queues the event on the stream: it completes when everything queued before it has.
    pub fn record(&self, stream: &Stream) -> Result<(), String> {
        // SAFETY: the event and the stream are alive and belong to the same context.
        unsafe { result::event::record(self.raw, stream.raw()) }
            .map_err(|e| fail("recording a CUDA event", e))
    }

    /// Device time from `self` to `later`, both recorded and completed (the caller synchronized
    /// the stream they were recorded on).
    pub fn until(&self, later: &Event) -> Result<std::time::Duration, String> {
        // SAFETY: both events are alive, created with timing, recorded and complete.
        let ms = unsafe { result::event::elapsed(self.raw, later.raw) }
            .map_err(|e| fail("reading a CUDA event", e))?;
        Ok(std::time::Duration::from_secs_f64(
            f64::from(ms.max(0.0)) / 1e3,
        ))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if bind(&self.ctx).is_ok() {
            // SAFETY: created by `event::create`, destroyed once; the owner synchronized the
            // stream it was recorded on.
            let _ = unsafe { result::event::destroy(self.raw) };
        }
    }
}

/// A graph captured from a stream, instantiated for replay.
pub struct Graph {
    ctx: Arc<CudaContext>,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

// SAFETY: graph handles are used by the one instance owning them, with the context bound.
unsafe impl Send for Graph {}

impl Graph {
    /// Captures what `record` queues on the stream (nothing runs while capturing).
    pub fn capture(
        stream: &Stream,
        record: impl FnOnce() -> Result<(), String>,
    ) -> Result<Graph, String> {
        stream.bind()?;
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        // SAFETY: the stream is alive and idle (the instance synchronizes after every run).
        unsafe { result::stream::begin_capture(stream.raw(), mode) }
            .map_err(|e| fail("starting a graph capture", e))?;
        let recorded = record();
        // SAFETY: capture was begun on this stream above; ending it is required either way.
        let ended = unsafe { result::stream::end_capture(stream.raw()) };
        recorded?;
        let graph = ended.map_err(|e| fail("ending a graph capture", e))?;
        // SAFETY: `graph` was just captured; it is destroyed if instantiation fails.
        let exec =
            match unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
                Ok(exec) => exec,
                Err(e) => {
                    // SAFETY: as above.
                    let _ = unsafe { result::graph::destroy(graph) };
                    return Err(fail("instantiating a graph", e));
                }
            };
        Ok(Graph {
            ctx: Arc::clone(stream.context()),
            graph,
            exec,
        })
    }

    /// Queues one replay on the stream.
    pub fn launch(&self, stream: &Stream) -> Result<(), String> {
        // SAFETY: the executable graph is alive; it refers only to the instance's memory, which
        // lives as long as the instance holding this graph.
        unsafe { result::graph::launch(self.exec, stream.raw()) }
            .map_err(|e| fail("replaying a graph", e))
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if bind(&self.ctx).is_ok() {
            // SAFETY: both created in `capture`, destroyed once.
            unsafe {
                let _ = result::graph::exec_destroy(self.exec);
                let _ = result::graph::destroy(self.graph);
            }
        }
    }
}

/// Free and total device memory of the current context's device.
pub fn memory_info(ctx: &Arc<CudaContext>) -> Result<(usize, usize), String> {
    bind(ctx)?;
    result::mem_get_info().map_err(|e| fail("reading device memory", e))
}
