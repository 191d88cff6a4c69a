//! Model families, chosen from `config.json`, and the narrow traits tasks use.

pub mod blip;
pub mod linear;
pub mod ops;
pub mod softmax;

use candle_core::Tensor;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::generation::{StopTokens, TextDecoder};

/// Turns preprocessed pixels `[batch, 3, H, W]` into features `[batch, positions, dim]`.
pub trait ImageEncoder: Send + Sync {
    fn encode(&self, pixels: &Tensor) -> Result<Tensor>;
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
}

/// `architectures` values glance supports, for error messages.
pub const SUPPORTED: &[&str] = &["BlipForConditionalGeneration"];

impl Architecture {
    /// Picks the implementation from `architectures` (or `model_type` when that is absent).
    pub fn from_config(config: &Value, model: &str) -> Result<Self> {
        let arch = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        let model_type = config.get("model_type").and_then(|m| m.as_str());
        let parse = |cfg: &Value| -> Result<blip::BlipConfig> {
            serde_json::from_value(cfg.clone()).map_err(|e| Error::Config {
                file: format!("config.json of {model}"),
                message: e.to_string(),
            })
        };
        match (arch, model_type) {
            (Some("BlipForConditionalGeneration"), _) | (None, Some("blip")) => {
                Ok(Self::Blip(Box::new(parse(config)?)))
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
    fn unknown_architecture_lists_supported_ones() {
        let cfg = serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama"});
        let err = Architecture::from_config(&cfg, "meta/llama")
            .unwrap_err()
            .to_string();
        assert!(err.contains("LlamaForCausalLM"), "{err}");
        assert!(err.contains("BlipForConditionalGeneration"), "{err}");
    }
}
