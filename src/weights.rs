//! Weights to a `VarBuilder`: safetensors memory-mapped (single file or shards), or a
//! `pytorch_model.bin` where that is all a repository has.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::hub::Weights;

pub fn var_builder(
    weights: &Weights,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    match weights {
        Weights::Safetensors(paths) => {
            for p in paths {
                std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
            }
            // SAFETY: the files are memory-mapped read-only; like every mmap user we rely on
            // nobody truncating model files while glance runs.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(paths, dtype, device) };
            vb.map_err(|e| Error::Config {
                file: paths[0].display().to_string(),
                message: format!("cannot read safetensors weights: {e}"),
            })
        }
        Weights::PyTorch(path) => {
            VarBuilder::from_pth(path, dtype, device).map_err(|e| Error::Config {
                file: path.display().to_string(),
                message: format!("cannot read weights: {e}"),
            })
        }
    }
}
