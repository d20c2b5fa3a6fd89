//! Which SIMD kernel set runs, chosen once at start-up from the CPU (or `IGPT_KERNELS`).
//!
//! The crate is built for the baseline of its target (x86-64: SSE2), so one binary runs on
//! any CPU of the architecture. Every hot kernel is compiled several times, once per
//! [`KernelSet`], with `#[target_feature]` (hand-written intrinsics in [`super::avx2`] and
//! [`super::avx512`], plain loops through [`multiversion!`]); each call picks the version of
//! the active set with one relaxed atomic load. Other architectures run the portable set.
//!
//! Every set computes the same operations in the same order (explicit `mul_add`, the same
//! accumulator layout), so results are bit-identical across sets unless a kernel's doc
//! says otherwise. `gemm` dispatches its own matrix-product kernels at run time.

use std::sync::atomic::{AtomicU8, Ordering};

/// A family of kernels, from the most to the least capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelSet {
    /// AVX-512 F/VL/BW/DQ with AVX2, FMA and F16C (x86-64-v4): 16-lane kernels.
    Avx512,
    /// AVX2 with FMA and F16C (x86-64-v3): 8-lane kernels.
    Avx2,
    /// Plain loops compiled for the target's baseline (SSE2 on x86-64; NEON on aarch64).
    Portable,
}

impl KernelSet {
    /// Every set, best first.
    pub const ALL: [KernelSet; 3] = [KernelSet::Avx512, KernelSet::Avx2, KernelSet::Portable];

    /// The name `IGPT_KERNELS`, `igpt info` and the benchmarks' JSON use.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Avx512 => "avx512",
            KernelSet::Avx2 => "avx2",
            KernelSet::Portable => "portable",
        }
    }

    /// Whether this CPU can run the set.
    pub fn supported(self) -> bool {
        match self {
            KernelSet::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx512 => {
                KernelSet::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The sets this CPU can run, best first (always ends with `Portable`).
    pub fn available() -> Vec<KernelSet> {
        Self::ALL.into_iter().filter(|s| s.supported()).collect()
    }

    /// The best set this CPU can run.
    pub fn best() -> KernelSet {
        Self::available()[0]
    }

    fn from_u8(v: u8) -> KernelSet {
        Self::ALL[v as usize]
    }
}

impl std::fmt::Display for KernelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KernelSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" => Ok(KernelSet::Avx512),
            "avx2" => Ok(KernelSet::Avx2),
            "portable" | "scalar" | "generic" => Ok(KernelSet::Portable),
            other => Err(format!("unknown kernel set `{other}`: use avx512, avx2 or portable")),
        }
    }
}

/// The environment variable that forces a kernel set.
pub const ENV: &str = "IGPT_KERNELS";

/// The set `IGPT_KERNELS` asks for (the best supported one when unset or empty), or why it
/// cannot be used: an unknown name, or a set this CPU lacks.
pub fn requested() -> Result<KernelSet, String> {
    let Ok(value) = std::env::var(ENV) else { return Ok(KernelSet::best()) };
    if value.trim().is_empty() {
        return Ok(KernelSet::best());
    }
    let set: KernelSet = value.parse().map_err(|e| format!("{ENV}={value}: {e}"))?;
    if !set.supported() {
        let have: Vec<&str> = KernelSet::available().iter().map(|s| s.name()).collect();
        return Err(format!(
            "{ENV}={value}: this CPU cannot run the {set} kernels (it has: {}); unset {ENV} or choose one of those",
            have.join(", ")
        ));
    }
    Ok(set)
}

const UNSET: u8 = u8::MAX;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

/// The kernel set every dispatching kernel uses: [`requested`], fixed at the first call; a
/// request that cannot be honoured falls back to the best supported set (the binary checks
/// [`requested`] first and refuses it with its message).
#[inline]
pub fn active() -> KernelSet {
    match ACTIVE.load(Ordering::Relaxed) {
        UNSET => init(),
        v => KernelSet::from_u8(v),
    }
}

#[cold]
fn init() -> KernelSet {
    let set = requested().unwrap_or_else(|_| KernelSet::best());
    let v = KernelSet::ALL.iter().position(|&s| s == set).expect("a listed set") as u8;
    match ACTIVE.compare_exchange(UNSET, v, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => set,
        Err(first) => KernelSet::from_u8(first),
    }
}

/// The CPU features igpt's kernels care about that this CPU has (for `igpt info`).
pub fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut have = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if is_x86_feature_detected!($f) { have.push($f); } )* };
        }
        probe!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw", "avx512dq");
    }
    #[cfg(target_arch = "aarch64")]
    have.push("neon");
    have
}

/// Compiles a function body once per [`KernelSet`] (`#[target_feature]` copies for AVX-512
/// and AVX2+FMA, a plain one for the baseline) and calls the copy of the active set.
/// Closures in the body (rayon tasks) inherit their copy's features; helpers it calls
/// must be `#[inline(always)]` to be compiled with them. Arguments are plain identifiers;
/// the function may not be generic.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn avx512($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) $(-> $ret)? $body
            #[allow(clippy::too_many_arguments)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            match $crate::backend::isa::active() {
                // SAFETY: `active` only returns sets whose features this CPU has.
                #[cfg(target_arch = "x86_64")]
                $crate::backend::isa::KernelSet::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::backend::isa::KernelSet::Avx2 => unsafe { avx2($($arg),*) },
                _ => portable($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_portable_is_always_there() {
        for s in KernelSet::ALL {
            assert_eq!(s.name().parse::<KernelSet>().unwrap(), s);
        }
        assert!("sse9".parse::<KernelSet>().unwrap_err().contains("avx512, avx2 or portable"));
        let avail = KernelSet::available();
        assert_eq!(*avail.last().unwrap(), KernelSet::Portable);
        assert!(avail.contains(&active()));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(KernelSet::Avx512.supported(), cpu_features().contains(&"avx512bw") && KernelSet::Avx2.supported());
    }
}
