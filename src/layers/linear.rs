//! A linear layer with HF's `[out, in]` weight layout and a CPU fast path for the few-row inputs
//! of token-by-token decoding.
//!
//! For a handful of rows, a general GEMM spends most of its time packing the whole weight matrix
//! into panels on every call; decoding is memory-bound, so glance instead streams each weight row
//! once and takes its dot products with all input rows while it is in L1 ("skinny" GEMM).

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::activation::Gelu;
use crate::kernels::few_rows::skinny_matmul;
use crate::kernels::gemm_bf16::{self, Epilogue, PackedWeights};
use crate::kernels::{cpu_bf16_matmul, host_f32, transposed, with_f32_values, with_values};
use crate::layers::activation::HiddenAct;
use crate::load::weights::PACK_AS_STORED;

/// Inputs with at most this many rows take the streaming path on the CPU.
const SKINNY_MAX_ROWS: usize = 32;

/// Packs a CPU f32 `[n, k]` weight (or `[k, n]` when `in_out`), or a bf16 `[n, k]` one, straight
/// from its storage.
fn pack_bf16(weight: &Tensor, in_out: bool) -> Result<PackedWeights> {
    let (rows, cols) = weight.dims2()?;
    if weight.dtype() == DType::BF16 && !in_out {
        return with_values(weight, |w| PackedWeights::from_bf16(w, rows, cols));
    }
    with_f32_values(&weight.to_dtype(DType::F32)?, |w| match in_out {
        false => PackedWeights::new(w, rows, cols),
        true => PackedWeights::from_transposed(w, rows, cols),
    })
}

/// `vb.get(shape, name)` for a weight that a [`Linear`] may pack for the bf16 kernel: where it
/// will (CPU, bf16 matmuls, f32 layers), a bf16 checkpoint's tensor comes as stored instead of
/// through an f32 copy (see [`crate::load::weights::PACK_AS_STORED`]).
pub fn packable_weight<S: Into<candle_core::Shape>>(
    vb: &VarBuilder,
    shape: S,
    name: &str,
) -> Result<Tensor> {
    match cpu_bf16_matmul() && vb.device().is_cpu() && vb.dtype() == DType::F32 {
        true => vb.get_with_hints_dtype(shape, name, PACK_AS_STORED, DType::F32),
        false => vb.get(shape, name),
    }
}

#[derive(Debug, Clone)]
enum Weight {
    /// `[out, in]`, HF's `nn.Linear` layout.
    Dense(Tensor),
    /// Packed for [`gemm_bf16::matmul`]; the f32 tensor is not kept.
    Bf16(Arc<PackedWeights>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// The bias as host floats, read once for the streaming path (CPU f32 only).
    bias_host: Option<Vec<f32>>,
}

/// `vb.get((out, in), "weight")` and `vb.get(out, "bias")`, as `candle_nn::linear`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = packable_weight(&vb, (out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

/// `vb.get((out, in), "weight")` only, as `candle_nn::linear_no_bias`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(
        packable_weight(&vb, (out_dim, in_dim), "weight")?,
        None,
    ))
}

impl Linear {
    /// A layer from an `[in, out]` weight (GPT-2's `Conv1D`). Packed for bf16 straight from that
    /// layout; in f32 it is transposed once (in tiles): decoding steps read `[out, in]` rows
    /// 20 % faster than strips of `[in, out]` columns, which outweighs the copy at load for any
    /// folder of more than a few batches.
    pub fn from_in_out(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let layer = Self::new_with(weight, bias, true);
        match layer.weight {
            Weight::Dense(w) => Ok(Self {
                weight: Weight::Dense(transposed(&w)?),
                ..layer
            }),
            Weight::Bf16(_) => Ok(layer),
        }
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::new_with(weight, bias, false)
    }

    /// `weight` is f32, or bf16 on the CPU as [`packable_weight`] reads it (packed, or else
    /// widened to f32).
    fn new_with(weight: Tensor, bias: Option<Tensor>, in_out: bool) -> Self {
        let bias_host = bias
            .as_ref()
            .filter(|b| host_f32(b))
            .and_then(|b| b.to_vec1::<f32>().ok());
        let host_bf16 = weight.device().is_cpu() && weight.dtype() == DType::BF16;
        let packable = cpu_bf16_matmul()
            && (host_f32(&weight) || host_bf16)
            && weight.rank() == 2
            && bias.is_some() == bias_host.is_some();
        let weight = match packable.then(|| pack_bf16(&weight, in_out)) {
            Some(Ok(packed)) => Weight::Bf16(Arc::new(packed)),
            _ if host_bf16 => Weight::Dense(
                weight
                    .to_dtype(DType::F32)
                    .expect("candle widens CPU bf16 to f32"),
            ),
            _ => Weight::Dense(weight),
        };
        Self {
            weight,
            bias,
            bias_host,
        }
    }

    /// The weight as packed for the bf16 kernel, if it is.
    pub fn packed(&self) -> Option<&PackedWeights> {
        match &self.weight {
            Weight::Bf16(packed) => Some(packed),
            Weight::Dense(_) => None,
        }
    }

    fn skinny_applies(&self, weight: &Tensor, rows: usize) -> bool {
        rows <= SKINNY_MAX_ROWS
            && host_f32(weight)
            && weight.is_contiguous()
            && self.bias.is_some() == self.bias_host.is_some()
    }
}

/// What the bf16 kernel does to a layer's output as it stores it ([`Epilogue`]).
enum Then<'a> {
    Nothing,
    Add(&'a Tensor),
    Gelu(Gelu),
}

impl Linear {
    /// `x · Wᵀ + b + residual` (`residual` shaped as the output). On the bf16 path the kernel
    /// adds it as it stores the output, instead of a second pass over both.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Weight::Bf16(packed) = &self.weight {
            let lead = &x.dims()[..x.rank().saturating_sub(1)];
            if host_f32(residual) && residual.dims() == [lead, &[packed.n]].concat().as_slice() {
                return self.bf16_forward(packed, x, Then::Add(residual));
            }
        }
        self.forward(x)? + residual
    }

    /// `act(x · Wᵀ + b)`; on the bf16 path the kernel applies a GELU as it stores the output.
    pub fn forward_act(&self, x: &Tensor, act: &HiddenAct) -> Result<Tensor> {
        if let (Weight::Bf16(packed), Some(kind)) = (&self.weight, act.fast_gelu()) {
            return self.bf16_forward(packed, x, Then::Gelu(kind));
        }
        self.forward(x)?.apply(act)
    }

    /// `x`'s rows through the bf16 kernel, then `then`.
    fn bf16_forward(&self, packed: &PackedWeights, x: &Tensor, then: Then) -> Result<Tensor> {
        let dims = x.dims();
        let (in_dim, lead) = dims
            .split_last()
            .expect("linear input has at least one dimension");
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, *in_dim))?.to_dtype(DType::F32)?;
        let bias = self.bias_host.as_deref();
        let y = with_f32_values(&x2, |xs| match then {
            Then::Nothing => Ok(gemm_bf16::matmul(xs, rows, packed, bias)),
            Then::Add(r) => with_f32_values(r, |r| {
                gemm_bf16::matmul_with(xs, rows, packed, bias, Epilogue::Residual(r))
            }),
            Then::Gelu(kind) => Ok(gemm_bf16::matmul_with(
                xs,
                rows,
                packed,
                bias,
                Epilogue::Gelu(kind),
            )),
        })??;
        Tensor::from_vec(y, [lead, &[packed.n]].concat(), x.device())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (in_dim, lead) = dims
            .split_last()
            .expect("linear input has at least one dimension");
        let rows: usize = lead.iter().product();
        let weight = match &self.weight {
            Weight::Bf16(packed) => return self.bf16_forward(packed, x, Then::Nothing),
            Weight::Dense(w) => w,
        };
        let out_dim = weight.dim(0)?;
        if self.skinny_applies(weight, rows) && x.dtype() == DType::F32 {
            let x2 = x.reshape((rows, *in_dim))?;
            let y = with_f32_values(&x2, |xs| {
                with_f32_values(weight, |w| {
                    skinny_matmul(xs, rows, w, out_dim, *in_dim, self.bias_host.as_deref())
                })
            })??;
            return Tensor::from_vec(y, (rows, out_dim), x.device())?
                .reshape([lead, &[out_dim]].concat());
        }
        let y = x.reshape((rows, *in_dim))?.matmul(&weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape([lead, &[out_dim]].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn skinny_path_equals_gemm() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (67, 45), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 67, &dev).unwrap();
        let lin = Linear::new(w.clone(), Some(b.clone()));
        for rows in [1, 3, 32, 33] {
            let x = Tensor::randn(0f32, 1.0, (rows, 45), &dev).unwrap();
            let ours = lin.forward(&x).unwrap();
            let reference = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let diff = crate::kernels::max_abs_diff(&ours, &reference);
            assert!(diff < 1e-4, "rows {rows}");
        }
    }

    #[test]
    fn in_out_weights_equal_their_transpose() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (45, 150), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 150, &dev).unwrap();
        let plain = Linear::new(w.t().unwrap().contiguous().unwrap(), Some(b.clone()));
        let in_out = Linear::from_in_out(w, Some(b)).unwrap();
        for rows in [1, 7, 32, 40] {
            let x = Tensor::randn(0f32, 1.0, (2, rows, 45), &dev).unwrap();
            let diff = crate::kernels::max_abs_diff(
                &in_out.forward(&x).unwrap(),
                &plain.forward(&x).unwrap(),
            );
            assert!(diff < 1e-4, "rows {rows}");
        }
    }
}
