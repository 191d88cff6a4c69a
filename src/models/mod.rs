//! Model families, chosen from `config.json`, and the narrow traits tasks use.

pub mod blip;
pub mod clip;
pub mod linear;
pub mod ops;
pub mod siglip;
pub mod softmax;

use candle_core::Tensor;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::generation::{StopTokens, TextDecoder};

/// Turns preprocessed pixels `[batch, 3, H, W]` into features `[batch, positions, dim]`.
pub trait ImageEncoder: Send + Sync {
    fn encode(&self, pixels: &Tensor) -> Result<Tensor>;
}

/// How similarities become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// CLIP: a distribution over the labels, `softmax(exp(scale) * cos)`.
    Softmax,
    /// SigLIP: an independent probability per label, `sigmoid(exp(scale) * cos + bias)`.
    Sigmoid,
}

/// How a batch of prompts is padded (with the tokenizer's pad token) before `embed_texts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPadding {
    /// To the longest prompt of the batch, truncating at `max_len` tokens.
    Longest { max_len: usize },
    /// Always to exactly this many tokens (truncating longer prompts).
    MaxLength(usize),
}

/// Contrastive image–text models (CLIP, SigLIP): embeddings in a shared space and how to turn
/// similarities into scores.
pub trait ImageTextEncoder: Send + Sync {
    /// Pixels `[b, 3, H, W]` to projected, un-normalized embeddings `[b, dim]`.
    fn embed_images(&self, pixels: &Tensor) -> Result<Tensor>;
    /// Padded u32 ids `[n, len]` to projected, un-normalized embeddings `[n, dim]`.
    fn embed_texts(&self, ids: &Tensor) -> Result<Tensor>;
    /// The learned temperature, before `exp`.
    fn logit_scale(&self) -> f32;
    /// The learned logit offset (SigLIP only).
    fn logit_bias(&self) -> Option<f32>;
    fn scoring(&self) -> Scoring;
    fn text_padding(&self) -> TextPadding;
}

/// How a text prompt becomes the decoder's first tokens.
#[derive(Debug, Clone)]
pub enum PromptStyle {
    /// BLIP: tokenize with special tokens, replace the first ([CLS]) by `bos`, drop the last
    /// ([SEP]); no prompt means `[bos]`.
    ReplaceFirstDropLast { bos: u32 },
}

/// What a captioning architecture contributes: an encoder, a decoder and its token rules.
pub struct CaptionParts {
    pub encoder: Box<dyn ImageEncoder>,
    pub decoder: Box<dyn TextDecoder>,
    pub prompt: PromptStyle,
    pub stop: StopTokens,
    /// Total length (prompt included) transformers generates when no length is given.
    pub default_max_length: usize,
    /// The input size the encoder was trained at, for models without a preprocessor config.
    pub image_size: u32,
}

/// The architectures glance can run, from `config.json`.
#[derive(Debug, Clone)]
pub enum Architecture {
    Blip(Box<blip::BlipConfig>),
    Clip(Box<clip::ClipConfig>),
    Siglip(Box<siglip::SiglipConfig>),
}

/// `architectures` values glance supports, for error messages.
pub const SUPPORTED: &[&str] = &["BlipForConditionalGeneration", "CLIPModel", "SiglipModel"];

impl Architecture {
    /// Picks the implementation from `architectures` (or `model_type` when that is absent).
    pub fn from_config(config: &Value, model: &str) -> Result<Self> {
        let arch = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        let model_type = config.get("model_type").and_then(|m| m.as_str());
        fn parse<T: serde::de::DeserializeOwned>(cfg: &Value, model: &str) -> Result<Box<T>> {
            serde_json::from_value(cfg.clone()).map_err(|e| Error::Config {
                file: format!("config.json of {model}"),
                message: e.to_string(),
            })
        }
        match (arch, model_type) {
            (Some("BlipForConditionalGeneration"), _) | (None, Some("blip")) => {
                Ok(Self::Blip(parse(config, model)?))
            }
            (Some("CLIPModel"), _) | (None, Some("clip")) => Ok(Self::Clip(parse(config, model)?)),
            (Some("SiglipModel"), _) | (None, Some("siglip")) => {
                Ok(Self::Siglip(parse(config, model)?))
            }
            (found, model_type) => Err(Error::Unsupported {
                model: model.to_string(),
                found: found
                    .or(model_type)
                    .unwrap_or("(no architectures or model_type)")
                    .to_string(),
                supported: SUPPORTED.to_vec(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blip_is_selected_from_architectures() {
        let cfg = serde_json::json!({"architectures": ["BlipForConditionalGeneration"], "text_config": {}, "vision_config": {}});
        assert!(matches!(
            Architecture::from_config(&cfg, "m").unwrap(),
            Architecture::Blip(_)
        ));
    }

    #[test]
    fn blip_is_selected_from_model_type_alone() {
        let cfg = serde_json::json!({"model_type": "blip", "text_config": {}, "vision_config": {}});
        assert!(matches!(
            Architecture::from_config(&cfg, "m").unwrap(),
            Architecture::Blip(_)
        ));
    }

    #[test]
    fn clip_and_siglip_are_selected() {
        let cfg = serde_json::json!({"architectures": ["CLIPModel"], "model_type": "clip"});
        assert!(matches!(
            Architecture::from_config(&cfg, "m").unwrap(),
            Architecture::Clip(_)
        ));
        let cfg = serde_json::json!({"model_type": "siglip", "text_config": {}});
        assert!(matches!(
            Architecture::from_config(&cfg, "m").unwrap(),
            Architecture::Siglip(_)
        ));
    }

    #[test]
    fn unknown_architecture_lists_supported_ones() {
        let cfg = serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama"});
        let err = Architecture::from_config(&cfg, "meta/llama")
            .unwrap_err()
            .to_string();
        assert!(err.contains("LlamaForCausalLM"), "{err}");
        assert!(err.contains("BlipForConditionalGeneration"), "{err}");
    }
}
