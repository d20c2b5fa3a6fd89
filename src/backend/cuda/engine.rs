//! The CUDA engine: one GPU's context, its stream (every operation is queued on it in order),
//! cuBLAS, and the kernels of `kernels.cu` loaded from NVRTC's PTX.
//!
//! Errors: the `Backend` operations that return nothing (kernel launches, as CUDA's own are
//! asynchronous) record the first failure; the next operation that returns a `Result`
//! (`zeros`, `resize`, `upload`, `download`) reports it, naming the device and what to
//! change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};

use super::memory::CudaBuf;
use super::module::{KERNELS, compile};
use crate::error::{Error, Result};

/// An NVIDIA GPU as a compute engine (`--device cuda[:N]`).
#[derive(Clone)]
pub struct Cuda {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) device: String,
    pub(super) stream: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    funcs: HashMap<&'static str, CudaFunction>,
    error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({})", self.inner.device)
    }
}

/// Threads per block of the kernels (8 warps; the block reductions assume at most 256).
pub(super) const THREADS: u32 = 256;

impl Cuda {
    /// The engine on GPU `ordinal`: opens it, compiles the kernels for its architecture and
    /// loads them.
    pub fn new(ordinal: usize) -> Result<Self> {
        let device = format!("cuda:{ordinal}");
        let fail = |what: &str, e: &dyn std::fmt::Display| Error::Device {
            device: device.clone(),
            msg: format!("{what}: {e} (run with --device cpu)"),
        };
        crate::backend::device::gpu_info(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| fail("opening the GPU", &e))?;
        // one stream: every operation is ordered, so cudarc's events between streams are not needed
        // SAFETY: no buffer of this context is used on another stream.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(|e| fail("reading its architecture", &e))?;
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let ptx = compile(arch)?;
        let module = ctx.load_module(ptx).map_err(|e| fail("loading the kernels", &e))?;
        let mut funcs = HashMap::new();
        for &name in KERNELS {
            funcs.insert(name, module.load_function(name).map_err(|e| fail(name, &e))?);
        }
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| fail("starting cuBLAS", &e))?;
        let inner = Inner { device, stream, blas, funcs, error: Mutex::new(None) };
        Ok(Cuda { inner: Arc::new(inner) })
    }

    pub(super) fn stream(&self) -> &CudaStream {
        &self.inner.stream
    }

    pub(super) fn func(&self, name: &str) -> &CudaFunction {
        self.inner.funcs.get(name).unwrap_or_else(|| panic!("kernel `{name}` is not in module::KERNELS"))
    }

    /// Records the first failure of an operation that cannot return it.
    pub(super) fn note<T, E: std::fmt::Display>(&self, r: std::result::Result<T, E>, what: &str) {
        if let Err(e) = r {
            let mut slot = self.inner.error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("{what}: {e}"));
        }
    }

    /// The first recorded failure, as an error (cleared).
    pub(super) fn check(&self) -> Result<()> {
        let mut slot = self.inner.error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            None => Ok(()),
            Some(msg) => Err(self.error(msg)),
        }
    }

    pub(super) fn error(&self, msg: String) -> Error {
        let advice = if msg.contains("OUT_OF_MEMORY") {
            " (the GPU's memory is full: give a smaller --batch, or --precision bf16)"
        } else {
            ""
        };
        Error::Device { device: self.inner.device.clone(), msg: format!("{msg}{advice}") }
    }

    /// `n` zeros in device memory.
    pub(super) fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.check()?;
        self.inner.stream.alloc_zeros::<f32>(n.max(1)).map_err(|e| self.error(format!("allocating {n} values: {e}")))
    }

    /// A host copy of `n` values at device address `ptr`.
    pub(super) fn read_back<T: Default + Clone>(&self, ptr: u64, n: usize) -> Result<Vec<T>> {
        let mut host = vec![T::default(); n];
        if n > 0 {
            // SAFETY: ptr addresses n values of T of a live buffer (a view's); the copy is
            // synchronised before `host` is read.
            let r = unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host, ptr, self.stream().cu_stream()) };
            self.note(r, "copying to the host");
            self.note(self.stream().synchronize(), "waiting for the GPU");
        }
        self.check()?;
        Ok(host)
    }

    /// A new buffer holding `host`.
    pub(super) fn buf_of(&self, host: &[f32]) -> Result<CudaBuf> {
        self.check()?;
        let data = self.inner.stream.clone_htod(host).map_err(|e| self.error(format!("copying to the GPU: {e}")))?;
        Ok(CudaBuf { data: Some(data), len: host.len() })
    }

    /// The device address of a cudarc buffer.
    pub(super) fn addr<T>(&self, s: &CudaSlice<T>) -> u64 {
        DevicePtr::device_ptr(s, self.stream()).0
    }

    /// u32 host values (token ids) in device memory, for one call.
    pub(super) fn ids(&self, host: &[u32]) -> Option<CudaSlice<u32>> {
        let r = self.inner.stream.clone_htod(host);
        self.note(r.as_ref().map(|_| ()), "copying token ids to the GPU");
        r.ok()
    }

    /// f32 host values in device memory, for one call.
    pub(super) fn floats(&self, host: &[f32]) -> Option<CudaSlice<f32>> {
        let r = self.inner.stream.clone_htod(host);
        self.note(r.as_ref().map(|_| ()), "copying to the GPU");
        r.ok()
    }

    /// dst = src, `n` values between device addresses.
    pub(super) fn copy_raw(&self, dst: u64, src: u64, n: usize) {
        if n > 0 {
            // SAFETY: both address n f32 of live buffers (views'), queued on the one stream.
            let r = unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, n * 4, self.stream().cu_stream()) };
            self.note(r, "copying on the GPU");
        }
    }
}

/// A launch over `n` elements with grid-stride loops.
pub(super) fn elems(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// A launch of one warp per row.
pub(super) fn warps(rows: usize) -> LaunchConfig {
    let per_block = (THREADS / 32) as usize;
    let blocks = rows.div_ceil(per_block).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// A launch of one block per row.
pub(super) fn blocks(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Launches kernel `$name` of engine `$e` with configuration `$cfg` and the arguments (each
/// bound to a local so that it lives until the launch), recording a failure.
macro_rules! launch {
    ($e:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg;
        let e = &$e;
        let mut b = e.stream().launch_builder(e.func($name));
        $( let a = $arg; b.arg(&a); )*
        // SAFETY: the arguments match the kernel's parameters in kernels.cu one for one
        // (device addresses as u64, i64 / int / float / double as i64 / i32 / f32 / f64).
        let r = unsafe { b.launch($cfg) };
        e.note(r, $name);
    }};
}
pub(super) use launch;
