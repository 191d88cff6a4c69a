//! LayerNorm: candle's module, with glance's kernel on the CPU in f32
//! ([`crate::kernels::norm`]).

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNormConfig, VarBuilder};

use crate::kernels::{host_f32, norm};

/// A layer norm over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    /// Weight and bias as host floats, for the kernel (CPU f32, mean removed).
    host: Option<(Vec<f32>, Option<Vec<f32>>)>,
}

/// `candle_nn::layer_norm`: the weight and bias (`gamma`/`beta` in old checkpoints) under `vb`.
pub fn layer_norm<C: Into<LayerNormConfig>>(
    size: usize,
    config: C,
    vb: VarBuilder,
) -> Result<LayerNorm> {
    Ok(LayerNorm::from(candle_nn::layer_norm(size, config, vb)?))
}

impl From<candle_nn::LayerNorm> for LayerNorm {
    fn from(inner: candle_nn::LayerNorm) -> Self {
        let host =
            (inner.remove_mean() && host_f32(inner.weight()) && inner.bias().is_none_or(host_f32))
                .then(|| -> Result<_> {
                    Ok((
                        inner.weight().to_vec1::<f32>()?,
                        inner.bias().map(Tensor::to_vec1::<f32>).transpose()?,
                    ))
                })
                .and_then(Result::ok);
        Self { inner, host }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.host {
            Some((w, b)) if host_f32(x) => {
                norm::layer_norm(x, w, b.as_deref(), self.inner.eps() as f32)
            }
            _ => self.inner.forward(x),
        }
    }
}
