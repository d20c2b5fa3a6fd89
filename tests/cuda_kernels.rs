//! The CUDA engine's kernel sources compile: NVRTC (the library alone, no GPU needed)
//! compiles `kernels.cu` for the H200's architecture and the PTX defines every kernel the
//! engine loads. Skips, saying why, where libnvrtc does not load (`.ci/run` installs it).
#![cfg(feature = "cuda")]

use igpt::backend::cuda::module::{KERNELS, compile};
use igpt::backend::device::libraries;

#[test]
fn nvrtc_compiles_every_kernel() {
    if libraries().iter().any(|l| l.name == "nvrtc" && l.found.is_none()) {
        eprintln!("skipped: libnvrtc does not load here (put it on LD_LIBRARY_PATH to run this test)");
        return;
    }
    let ptx = compile("compute_90").unwrap_or_else(|e| panic!("{e}"));
    let src = ptx.to_src();
    for k in KERNELS {
        assert!(src.contains(&format!(".entry {k}(")), "the PTX has no kernel `{k}`");
    }
    let entries = src.matches(".entry ").count();
    assert_eq!(entries, KERNELS.len(), "kernels.cu defines kernels that KERNELS does not list");
}
