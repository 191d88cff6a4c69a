//! BLIP image captioning (`BlipForConditionalGeneration`, Salesforce/blip-image-captioning-*).

pub mod config;
pub(crate) mod text;
mod vision;

use candle_core::Tensor;
use candle_nn::VarBuilder;

pub use config::BlipConfig;

use crate::error::Result;
use crate::models::StopTokens;
use crate::models::{CaptionParts, ImageEncoder, PromptStyle};

impl ImageEncoder for vision::VisionModel {
    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.forward(pixels)?)
    }
}

/// Builds encoder and decoder from `vision_model.*` and `text_decoder.*` tensors.
// Matches BlipForConditionalGeneration.generate: the prompt's [CLS] becomes bos, its trailing
// [SEP] is dropped, generation stops at sep_token_id and pads with pad_token_id.
pub fn load(cfg: &BlipConfig, vb: VarBuilder) -> Result<CaptionParts> {
    let encoder = vision::VisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?;
    let decoder = text::TextDecoderModel::new(&cfg.text_config, false, vb.pp("text_decoder"))?;
    let t = &cfg.text_config;
    Ok(CaptionParts {
        encoder: Box::new(encoder),
        decoder: Box::new(decoder),
        prompt: PromptStyle::ReplaceFirstDropLast {
            bos: t.bos_token_id,
        },
        stop: StopTokens {
            eos: vec![t.sep_token_id],
            pad: t.pad_token_id,
        },
        default_max_length: t.max_length.unwrap_or(20),
        default_num_beams: None,
        image_size: cfg.vision_config.image_size as u32,
    })
}
