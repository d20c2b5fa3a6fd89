//! The CUDA engine's buffers and views. A buffer is device memory with a length (its
//! capacity may be larger, so that a workspace that shrinks and grows again reallocates
//! nothing); a view is a device pointer, a length and the lifetime of the buffer it reads
//! (`Copy`, as the `Backend` interface asks, where cudarc's own views are not).

use std::marker::PhantomData;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

/// f32 values in device memory.
#[derive(Clone, Debug, Default)]
pub struct CudaBuf {
    pub(super) data: Option<CudaSlice<f32>>,
    pub(super) len: usize,
}

impl CudaBuf {
    /// Values the memory holds room for.
    pub(super) fn capacity(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len())
    }

    /// The device address of element `at` (0 for an empty buffer).
    pub(super) fn ptr(&self, stream: &CudaStream, at: usize) -> u64 {
        match &self.data {
            None => 0,
            Some(d) => {
                let (p, _sync) = d.device_ptr(stream);
                p + (at * 4) as u64
            }
        }
    }
}

/// A read-only view of `len` values at device address `ptr`.
#[derive(Clone, Copy, Debug)]
pub struct DView<'a> {
    pub(super) ptr: u64,
    pub(super) len: usize,
    pub(super) _buf: PhantomData<&'a CudaBuf>,
}

/// A writable view of `len` values at device address `ptr`.
#[derive(Debug)]
pub struct DViewMut<'a> {
    pub(super) ptr: u64,
    pub(super) len: usize,
    pub(super) _buf: PhantomData<&'a mut CudaBuf>,
}

impl<'a> DView<'a> {
    pub(super) fn new(ptr: u64, len: usize) -> Self {
        DView { ptr, len, _buf: PhantomData }
    }
    /// The address of element `i`.
    pub(super) fn at(&self, i: usize) -> u64 {
        self.ptr + (i * 4) as u64
    }
}

impl<'a> DViewMut<'a> {
    pub(super) fn new(ptr: u64, len: usize) -> Self {
        DViewMut { ptr, len, _buf: PhantomData }
    }
}
