//! The kernel sources and their compilation by NVRTC: `kernels.cu` is compiled once per
//! process for the device's architecture, with `--fmad=false` so that products and sums are
//! rounded as the CPU rounds them (its explicit fused multiply-adds are `fmaf` there).

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts};

use crate::error::{Error, Result};

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// The kernels `SOURCE` defines (`extern "C" __global__`), as the engine loads them.
pub const KERNELS: &[&str] = &[
    "fill_f32",
    "add_inplace",
    "scale_f32",
    "sum_squares_partial",
    "adamw",
    "rmsnorm_forward",
    "rmsnorm_backward_dx",
    "rmsnorm_backward_dw_partial",
    "rmsnorm_backward_dw_finish",
    "act_forward",
    "act_inplace",
    "act_backward",
    "bias_backward_partial",
    "bias_backward_finish",
    "dropout",
    "cross_entropy_fused",
    "embed_forward",
    "embed_backward_tokens",
    "embed_backward_table",
    "rope",
    "mean_over_positions",
    "mean_over_positions_backward",
    "attention_forward",
    "attention_backward_delta",
    "attention_backward_dq",
    "attention_backward_dkdv",
    "kv_append",
    "add_bias",
];

/// `SOURCE` compiled to PTX for `arch` (`compute_90` for an H100 or H200; a `compute_`
/// target gives PTX the driver compiles for its GPU).
pub fn compile(arch: &'static str) -> Result<Ptx> {
    let opts = CompileOptions {
        arch: Some(arch),
        fmad: Some(false),
        options: vec!["--std=c++17".into()],
        name: Some("igpt_kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts).map_err(|e| {
        let why = match &e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        };
        Error::Device {
            device: "cuda".into(),
            msg: format!("NVRTC could not compile igpt's kernels for {arch}:\n{why}"),
        }
    })
}
