//! `SiglipConfig` as transformers writes it in `config.json`, with transformers' defaults for
//! fields a checkpoint leaves out (`SiglipTextConfig`, `SiglipVisionConfig`).

use candle_nn::Activation;
use serde::Deserialize;

use crate::layers::activation::HiddenAct;
use crate::models::clip::encoder::impl_encoder_shape;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SiglipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Also the length SigLIP text is padded to.
    pub max_position_embeddings: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// Output size of `head`; transformers uses `hidden_size` when it is null or absent.
    pub projection_size: Option<usize>,
}

impl Default for SiglipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 64,
            hidden_act: HiddenAct::Other(Activation::GeluPytorchTanh),
            layer_norm_eps: 1e-6,
            projection_size: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// Without the attention-pool head there are no image embeddings to compare.
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: HiddenAct::Other(Activation::GeluPytorchTanh),
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SiglipConfig {
    #[serde(default)]
    pub text_config: SiglipTextConfig,
    #[serde(default)]
    pub vision_config: SiglipVisionConfig,
}

impl_encoder_shape!(SiglipTextConfig, SiglipVisionConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_config_gets_transformers_defaults() {
        let cfg: SiglipConfig = serde_json::from_str(
            r#"{"model_type": "siglip", "text_config": {"bos_token_id": null, "projection_size": null},
                "vision_config": {"image_size": 384}}"#,
        )
        .unwrap();
        assert_eq!(cfg.text_config.max_position_embeddings, 64);
        assert_eq!(cfg.text_config.projection_size, None);
        assert_eq!(cfg.vision_config.image_size, 384);
        assert_eq!(cfg.vision_config.patch_size, 16);
        assert!(cfg.vision_config.vision_use_head);
        assert_eq!(cfg.vision_config.layer_norm_eps, 1e-6);
    }
}
