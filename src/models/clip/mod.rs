//! CLIP contrastive image–text model (`CLIPModel`, openai/clip-vit-*): two towers projected into
//! a shared space, scored with a softmax over labels.

pub mod config;
pub(crate) mod encoder;
pub(crate) mod text;
mod vision;

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

pub use config::ClipConfig;

use crate::error::Result;
use crate::layers::linear::{linear_no_bias, Linear};
use crate::models::{ImageTextEncoder, Scoring, TextPadding};

pub struct ClipModel {
    text_model: text::TextModel,
    vision_model: vision::VisionModel,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: f32,
    max_text_len: usize,
}

impl ClipModel {
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        let logit_scale = vb
            .get((), "logit_scale")?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(Self {
            text_model: text::TextModel::new(t, vb.pp("text_model"))?,
            vision_model: vision::VisionModel::new(v, vb.pp("vision_model"))?,
            text_projection: linear_no_bias(
                t.hidden_size,
                cfg.projection_dim,
                vb.pp("text_projection"),
            )?,
            visual_projection: linear_no_bias(
                v.hidden_size,
                cfg.projection_dim,
                vb.pp("visual_projection"),
            )?,
            logit_scale,
            max_text_len: t.max_position_embeddings,
        })
    }
}

impl ImageTextEncoder for ClipModel {
    fn embed_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.vision_model.forward(pixels)?;
        Ok(self.visual_projection.forward(&pooled)?)
    }

    fn embed_texts(&self, ids: &Tensor) -> Result<Tensor> {
        let pooled = self.text_model.forward(ids)?;
        Ok(self.text_projection.forward(&pooled)?)
    }

    fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    fn logit_bias(&self) -> Option<f32> {
        None
    }

    fn scoring(&self) -> Scoring {
        Scoring::Softmax
    }

    // Matches CLIPProcessor(padding=True, truncation=True): the causal mask keeps padding from
    // reaching the pooled position, so padding to the longest prompt is enough.
    fn text_padding(&self) -> TextPadding {
        TextPadding::Longest {
            max_len: self.max_text_len,
        }
    }
}
