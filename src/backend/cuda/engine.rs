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
        // cudarc stops the process where a library it needs does not load: ask first
        if let Some(lib) = crate::backend::device::libraries().into_iter().find(|l| l.found.is_none()) {
            return Err(Error::Device {
                device: device.clone(),
                msg: format!(
                    "lib{}.so does not load: put the CUDA libraries on LD_LIBRARY_PATH (pip's nvidia-* packages ship them), or run with --device cpu",
                    lib.name
                ),
            });
        }
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
        let name = ctx.name().map_err(|e| fail("reading its name", &e))?;
        let device = format!("{device} ({name})");
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
        let advice =
            if msg.contains("OUT_OF_MEMORY") { " (the GPU's memory is full: give a smaller --batch)" } else { "" };
        Error::Device { device: self.inner.device.clone(), msg: format!("{msg}{advice}") }
    }

    /// Makes this engine's context current on the calling thread (cudarc's launches and
    /// allocations do it themselves; the raw copies and cuBLAS calls need it).
    pub(super) fn bind(&self) {
        self.note(self.inner.stream.context().bind_to_thread(), "binding the GPU's context");
    }

    /// `n` zeros in device memory (at least one value, so that an empty buffer has an
    /// address), or None with the failure recorded: for the operations that return nothing.
    pub(super) fn scratch<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Option<CudaSlice<T>> {
        let r = self.inner.stream.alloc_zeros::<T>(n.max(1));
        self.note(r.as_ref().map(|_| ()), "allocating on the GPU");
        r.ok()
    }

    /// `n` zeros in device memory, or the first failure recorded before or now.
    pub(super) fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        let s = self.scratch::<f32>(n);
        self.check()?;
        s.ok_or_else(|| self.error(format!("allocating {n} values")))
    }

    /// A host copy of `n` values at device address `ptr`, or None with the failure recorded
    /// (for the operations that return nothing or a value: they leave the error for the
    /// next `Result`).
    pub(super) fn fetch<T: Default + Clone>(&self, ptr: u64, n: usize) -> Option<Vec<T>> {
        let mut host = vec![T::default(); n];
        if n > 0 {
            self.bind();
            // SAFETY: ptr addresses n values of T of a live buffer (a view's); the copy is
            // synchronised before `host` is read.
            let r = unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host, ptr, self.stream().cu_stream()) };
            self.note(r, "copying to the host");
            self.note(self.stream().synchronize(), "waiting for the GPU");
        }
        let failed = self.inner.error.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        (!failed).then_some(host)
    }

    /// A host copy of `n` values at device address `ptr`, or the first failure so far.
    pub(super) fn read_back<T: Default + Clone>(&self, ptr: u64, n: usize) -> Result<Vec<T>> {
        let host = self.fetch(ptr, n);
        self.check()?;
        host.ok_or_else(|| self.error("copying to the host".into()))
    }

    /// A new buffer holding `host`.
    pub(super) fn buf_of(&self, host: &[f32]) -> Result<CudaBuf> {
        let mut buf = CudaBuf { data: Some(self.alloc(host.len())?), len: host.len() };
        if !host.is_empty() {
            let r = self.inner.stream.memcpy_htod(host, buf.data.as_mut().expect("allocated"));
            self.note(r, "copying to the GPU");
        }
        self.check()?;
        Ok(buf)
    }

    /// The device address of a cudarc buffer.
    pub(super) fn addr<T>(&self, s: &CudaSlice<T>) -> u64 {
        DevicePtr::device_ptr(s, self.stream()).0
    }

    /// Host values in device memory for one call (token ids, loss weights), or None with the
    /// failure recorded.
    pub(super) fn staged<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        host: &[T],
    ) -> Option<CudaSlice<T>> {
        let mut dst = self.scratch::<T>(host.len())?;
        if !host.is_empty() {
            let r = self.inner.stream.memcpy_htod(host, &mut dst);
            self.note(r, "copying to the GPU");
        }
        Some(dst)
    }

    /// `Backend::resize` with a failure recorded instead of returned (for the operations
    /// that return nothing): false when it failed.
    pub(super) fn resize_quietly(&self, buf: &mut CudaBuf, n: usize) -> bool {
        if n > buf.capacity() {
            let Some(data) = self.scratch::<f32>(n) else { return false };
            let mut grown = CudaBuf { data: Some(data), len: n };
            let keep = buf.len.min(n);
            self.copy_raw(grown.ptr(self.stream(), 0), buf.ptr(self.stream(), 0), keep);
            std::mem::swap(buf, &mut grown);
        } else if n > buf.len {
            let (at, extra) = (buf.ptr(self.stream(), buf.len), n - buf.len);
            launch!(self, "fill_f32", elems(extra); at, 0.0f32, extra as i64);
        }
        buf.len = n;
        true
    }

    /// dst = src, `n` values between device addresses.
    pub(super) fn copy_raw(&self, dst: u64, src: u64, n: usize) {
        if n > 0 {
            self.bind();
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
