//! Where a command runs: `--device cpu|cuda[:N]`, and what this machine and build offer.
//!
//! `cuda[:N]` names the N-th NVIDIA GPU (0 first); a build has the CUDA engine
//! (`backend::cuda`) only with the cargo feature `cuda`, which loads the NVIDIA libraries
//! (`libcuda`, `libnvrtc`, `libcublas`, `libcublasLt`) at run time, so it builds and runs on
//! machines without them. `bench`, `sample`, `complete`, `eval` and `probe` (its features)
//! run on it; [`Device::check`] refuses a device a command cannot use, with what to change.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result};

/// A compute device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// The GPU of this index (CUDA's ordinal).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a device: give cpu, cuda or cuda:N (N the GPU's index, 0 first)");
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            t => {
                let n = t.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Device::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build has the CUDA backend (the cargo feature `cuda`).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// One NVIDIA library the CUDA backend loads, and the file found for it.
#[derive(Clone, Debug, Serialize)]
pub struct Library {
    pub name: &'static str,
    /// The name the dynamic loader opened, or None when none of the candidates loads.
    pub found: Option<String>,
}

/// The libraries, each with the names the loader tries (the driver's soname first; the
/// toolkit's by major version, 13 then 12, as pip's nvidia-* packages ship them).
const LIBRARIES: [(&str, &[&str]); 4] = [
    ("cuda", &["libcuda.so.1", "libcuda.so"]),
    ("nvrtc", &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]),
    ("cublas", &["libcublas.so.13", "libcublas.so.12", "libcublas.so"]),
    ("cublasLt", &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]),
];

/// Whether the dynamic loader can open `name` (it is closed again at once).
fn loadable(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: dlopen/dlclose on a NUL-terminated name; the handle is not used otherwise.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            return false;
        }
        libc::dlclose(h);
    }
    true
}

/// Which of the NVIDIA libraries this machine's loader finds (LD_LIBRARY_PATH included).
pub fn libraries() -> Vec<Library> {
    LIBRARIES
        .iter()
        .map(|(name, candidates)| Library {
            name,
            found: candidates.iter().find(|c| loadable(c)).map(|c| c.to_string()),
        })
        .collect()
}

/// What a GPU is, as its driver reports it.
#[derive(Clone, Debug, Serialize)]
pub struct GpuInfo {
    pub device: String,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
    pub free_memory_bytes: usize,
    pub device_count: usize,
}

/// The GPU `ordinal`, asked of its driver; an error says what is missing.
pub fn gpu_info(ordinal: usize) -> Result<GpuInfo> {
    let dev = Device::Cuda(ordinal);
    if !CUDA_BUILT {
        return Err(no_cuda_build(dev));
    }
    if let Some(lib) = libraries().into_iter().find(|l| l.name == "cuda" && l.found.is_none()) {
        return Err(Error::Device {
            device: dev.to_string(),
            msg: format!(
                "no NVIDIA driver: lib{}.so does not load (install the driver, or run with --device cpu)",
                lib.name
            ),
        });
    }
    query(ordinal)
}

#[cfg(feature = "cuda")]
fn query(ordinal: usize) -> Result<GpuInfo> {
    use cudarc::driver::CudaContext;
    let device = Device::Cuda(ordinal).to_string();
    let err = |what: &str, e: cudarc::driver::DriverError| Error::Device {
        device: device.clone(),
        msg: format!("{what}: {e}"),
    };
    let count = CudaContext::device_count().map_err(|e| err("counting the GPUs", e))? as usize;
    if ordinal >= count {
        return Err(Error::Device {
            device: device.clone(),
            msg: format!(
                "this machine has {count} GPU(s) (cuda:0 to cuda:{}); give one of those",
                count.saturating_sub(1)
            ),
        });
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| err("opening the GPU", e))?;
    let (free, total) = ctx.mem_get_info().map_err(|e| err("reading its memory", e))?;
    Ok(GpuInfo {
        device: device.clone(),
        name: ctx.name().map_err(|e| err("reading its name", e))?,
        compute_capability: ctx.compute_capability().map_err(|e| err("reading its compute capability", e))?,
        total_memory_bytes: total,
        free_memory_bytes: free,
        device_count: count,
    })
}

#[cfg(not(feature = "cuda"))]
fn query(ordinal: usize) -> Result<GpuInfo> {
    Err(no_cuda_build(Device::Cuda(ordinal)))
}

fn no_cuda_build(dev: Device) -> Error {
    Error::Device {
        device: dev.to_string(),
        msg: "this igpt was built without the CUDA backend: rebuild with `cargo build --release --features cuda`, or run with --device cpu".into(),
    }
}

impl Device {
    /// Refuses a device that `command` cannot run on here, naming what to change: a GPU
    /// needs a build with the `cuda` feature and a driver, and the commands that call this
    /// do not run on the CUDA engine yet (issue #16).
    pub fn check(self, command: &str) -> Result<()> {
        let Device::Cuda(n) = self else { return Ok(()) };
        let gpu = gpu_info(n)?;
        Err(Error::Device {
            device: self.to_string(),
            msg: format!(
                "{} is present, but igpt's CUDA engine does not run `{command}` yet; run it with --device cpu",
                gpu.name
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (s, d) in [("cpu", Device::Cpu), ("cuda", Device::Cuda(0)), ("cuda:3", Device::Cuda(3))] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU0"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains("give cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        assert!(Device::Cpu.check("train").is_ok());
    }

    /// Without the `cuda` feature every GPU request says how to get one; with it, on a
    /// machine without a driver, the message names the driver.
    #[test]
    fn a_gpu_request_here_says_what_is_missing() {
        let e = Device::Cuda(0).check("train").unwrap_err().to_string();
        assert!(e.starts_with("cuda:0: "), "{e}");
        if !CUDA_BUILT {
            assert!(e.contains("--features cuda"), "{e}");
        } else if libraries()[0].found.is_none() {
            assert!(e.contains("no NVIDIA driver"), "{e}");
        }
        assert!(e.contains("--device cpu"), "{e}");
        assert_eq!(libraries().len(), 4);
    }
}
