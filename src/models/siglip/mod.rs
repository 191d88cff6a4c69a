//! SigLIP contrastive image–text model (`SiglipModel`, google/siglip-*): sigmoid-scored
//! similarities between un-projected tower outputs.

pub mod config;
mod text;
mod vision;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

pub use config::SiglipConfig;

use crate::error::{Error, Result};
use crate::models::{ImageTextEncoder, Scoring, TextPadding};

pub struct SiglipModel {
    text_model: text::TextModel,
    vision_model: vision::VisionModel,
    logit_scale: f32,
    logit_bias: f32,
    text_len: usize,
}

impl SiglipModel {
    pub fn new(cfg: &SiglipConfig, vb: VarBuilder) -> Result<Self> {
        if !cfg.vision_config.vision_use_head {
            return Err(Error::Options(
                "this SigLIP checkpoint has vision_use_head false, so it has no image embeddings: use a SiglipModel with a pooling head".into(),
            ));
        }
        let scalar = |name: &str| -> Result<f32> {
            Ok(vb.get(1, name)?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0])
        };
        Ok(Self {
            text_model: text::TextModel::new(&cfg.text_config, vb.pp("text_model"))?,
            vision_model: vision::VisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?,
            logit_scale: scalar("logit_scale")?,
            logit_bias: scalar("logit_bias")?,
            text_len: cfg.text_config.max_position_embeddings,
        })
    }
}

impl ImageTextEncoder for SiglipModel {
    fn embed_images(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision_model.forward(pixels)?)
    }

    fn embed_texts(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.text_model.forward(ids)?)
    }

    fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    fn logit_bias(&self) -> Option<f32> {
        Some(self.logit_bias)
    }

    fn scoring(&self) -> Scoring {
        Scoring::Sigmoid
    }

    // SigLIP was trained on text padded to a fixed length and pools the last position, so the
    // padding changes the embedding: always pad to the full length.
    fn text_padding(&self) -> TextPadding {
        TextPadding::MaxLength(self.text_len)
    }
}
