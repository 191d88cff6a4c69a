//! `CLIPConfig` as transformers writes it in `config.json`, with transformers' defaults for
//! fields a checkpoint leaves out (`CLIPTextConfig`, `CLIPVisionConfig`).

use serde::Deserialize;

use super::encoder::impl_encoder_shape;
use crate::layers::activation::HiddenAct;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// Selects the pooling rule: 2 (old openai configs) pools at `argmax(input_ids)`.
    #[serde(deserialize_with = "crate::models::id_or::<_, 49407>")]
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    #[serde(default)]
    pub text_config: ClipTextConfig,
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    /// Output size of `text_projection` and `visual_projection`.
    #[serde(default = "d_projection")]
    pub projection_dim: usize,
}

fn d_projection() -> usize {
    512
}

impl_encoder_shape!(ClipTextConfig, ClipVisionConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_config_gets_transformers_defaults() {
        let cfg: ClipConfig = serde_json::from_str(
            r#"{"model_type": "clip", "text_config": {"hidden_act": "gelu"}, "vision_config": {"patch_size": 14}}"#,
        )
        .unwrap();
        assert_eq!(cfg.projection_dim, 512);
        assert_eq!(cfg.text_config.eos_token_id, 49407);
        assert_eq!(
            cfg.text_config.hidden_act,
            HiddenAct::Other(candle_nn::Activation::Gelu)
        );
        assert_eq!(cfg.vision_config.patch_size, 14);
        assert_eq!(cfg.vision_config.hidden_act, HiddenAct::QuickGelu);
    }
}
