//! MLP activations. ImageGPT uses quick_gelu, x * sigmoid(1.702 x) (OpenAI's `gelu2`);
//! the tanh GELU and ReLU are accepted for configs that name them.

use super::isa::multiversion;
use rayon::prelude::*;

use super::math::exp;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    QuickGelu,
    GeluTanh,
    Relu,
}

impl Activation {
    /// From HF's `activation_function` name.
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::config("activation_function", format!("`{other}` is not supported"))),
        }
    }

    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => x / (1.0 + exp(-1.702 * x)),
            Activation::GeluTanh => {
                let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
                // tanh(u) = 1 - 2 / (exp(2u) + 1)
                0.5 * x * (2.0 - 2.0 / (exp(2.0 * u) + 1.0))
            }
            Activation::Relu => x.max(0.0),
        }
    }
}

multiversion! {
/// out = act(inp), element-wise. `out` may be a different buffer (training keeps the input).
pub fn act_forward(act: Activation, out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(4096).zip(inp.par_chunks(4096)).for_each(|(o, x)| {
        // One loop per activation, so each vectorises without a branch inside.
        match act {
            Activation::QuickGelu => o.iter_mut().zip(x).for_each(|(o, &x)| *o = Activation::QuickGelu.apply(x)),
            Activation::GeluTanh => o.iter_mut().zip(x).for_each(|(o, &x)| *o = Activation::GeluTanh.apply(x)),
            Activation::Relu => o.iter_mut().zip(x).for_each(|(o, &x)| *o = x.max(0.0)),
        }
    });
}
}

multiversion! {
/// x = act(x) in place (inference).
pub fn act_inplace(act: Activation, x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|c| match act {
        Activation::QuickGelu => c.iter_mut().for_each(|v| *v = Activation::QuickGelu.apply(*v)),
        Activation::GeluTanh => c.iter_mut().for_each(|v| *v = Activation::GeluTanh.apply(*v)),
        Activation::Relu => c.iter_mut().for_each(|v| *v = v.max(0.0)),
    });
}
}

impl Activation {
    /// d act(x) / dx.
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => {
                let s = 1.0 / (1.0 + exp(-1.702 * x));
                s + 1.702 * x * s * (1.0 - s)
            }
            Activation::GeluTanh => {
                let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
                let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.797_884_6 * (1.0 + 3.0 * 0.044_715 * x * x)
            }
            Activation::Relu => (x > 0.0) as u8 as f32,
        }
    }
}

multiversion! {
/// dinp = dout * act'(inp) (overwrites `dinp`).
pub fn act_backward(act: Activation, dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    dinp.par_chunks_mut(4096).zip(dout.par_chunks(4096)).zip(inp.par_chunks(4096)).for_each(|((d, g), x)| {
        let it = d.iter_mut().zip(g).zip(x);
        match act {
            Activation::QuickGelu => it.for_each(|((d, &g), &x)| *d = g * Activation::QuickGelu.derivative(x)),
            Activation::GeluTanh => it.for_each(|((d, &g), &x)| *d = g * Activation::GeluTanh.derivative(x)),
            Activation::Relu => it.for_each(|((d, &g), &x)| *d = if x > 0.0 { g } else { 0.0 }),
        }
    });
}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_gelu_values() {
        // torch: x * torch.sigmoid(1.702 * x) at x = -3, -0.5, 0, 0.5, 3
        let xs = [-3.0f32, -0.5, 0.0, 0.5, 3.0];
        let want = [-0.018_071_31, -0.149_611_56, 0.0, 0.350_388_44, 2.981_928_7];
        for (x, w) in xs.iter().zip(want) {
            let got = Activation::QuickGelu.apply(*x);
            assert!((got - w).abs() < 1e-6, "{x}: {got} vs {w}");
        }
        assert!(Activation::QuickGelu.apply(-200.0).abs() < 1e-30);
        assert_eq!(Activation::QuickGelu.apply(200.0), 200.0);
    }
}
