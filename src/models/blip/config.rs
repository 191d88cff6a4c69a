//! `BlipConfig` as transformers writes it in `config.json`, with transformers' defaults for
//! fields a checkpoint leaves out.

use candle_nn::Activation;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct BlipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    #[serde(default = "d_768")]
    pub encoder_hidden_size: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_8")]
    pub num_attention_heads: usize,
    #[serde(default = "d_512")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: Activation,
    #[serde(default = "d_eps_text")]
    pub layer_norm_eps: f64,
    // Configs written by transformers 4.x may hold `null` for any id (a BERT decoder's
    // `"sep_token_id": null`): the default then, as for a missing key.
    #[serde(
        default = "d_bos",
        deserialize_with = "crate::models::id_or::<_, 30522>"
    )]
    pub bos_token_id: u32,
    #[serde(default, deserialize_with = "crate::models::id_or::<_, 0>")]
    pub pad_token_id: u32,
    #[serde(default = "d_sep", deserialize_with = "crate::models::id_or::<_, 102>")]
    pub sep_token_id: u32,
    /// transformers ties the LM head to the word embeddings unless told otherwise.
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// `generation_config`-style default total length, used when no --max-new-tokens is given.
    pub max_length: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlipVisionConfig {
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    #[serde(default = "d_384")]
    pub image_size: usize,
    #[serde(default = "d_16")]
    pub patch_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: Activation,
    #[serde(default = "d_eps_vision")]
    pub layer_norm_eps: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    pub text_config: BlipTextConfig,
    pub vision_config: BlipVisionConfig,
    pub tie_word_embeddings: Option<bool>,
}

fn d_vocab() -> usize {
    30524
}
fn d_768() -> usize {
    768
}
fn d_3072() -> usize {
    3072
}
fn d_12() -> usize {
    12
}
fn d_8() -> usize {
    8
}
fn d_512() -> usize {
    512
}
fn d_384() -> usize {
    384
}
fn d_16() -> usize {
    16
}
fn d_gelu() -> Activation {
    Activation::Gelu
}
fn d_eps_text() -> f64 {
    1e-12
}
fn d_eps_vision() -> f64 {
    1e-5
}
fn d_bos() -> u32 {
    30522
}
fn d_sep() -> u32 {
    102
}
fn d_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_config_gets_transformers_defaults() {
        let cfg: BlipConfig = serde_json::from_str(
            r#"{"architectures": ["BlipForConditionalGeneration"], "model_type": "blip",
                "text_config": {"num_attention_heads": 12}, "vision_config": {"hidden_size": 1024}}"#,
        )
        .unwrap();
        assert_eq!(cfg.text_config.bos_token_id, 30522);
        assert_eq!(cfg.text_config.sep_token_id, 102);
        assert_eq!(cfg.text_config.num_attention_heads, 12);
        assert_eq!(cfg.vision_config.hidden_size, 1024);
        assert_eq!(cfg.vision_config.image_size, 384);
    }

    #[test]
    fn null_token_ids_of_transformers_4_configs_get_the_defaults() {
        let cfg: BlipTextConfig = serde_json::from_str(
            r#"{"bos_token_id": null, "sep_token_id": null, "pad_token_id": null}"#,
        )
        .unwrap();
        assert_eq!(
            (cfg.bos_token_id, cfg.sep_token_id, cfg.pad_token_id),
            (30522, 102, 0)
        );
    }
}
