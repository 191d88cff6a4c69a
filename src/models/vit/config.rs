//! `ViTConfig` / `DeiTConfig` as transformers writes them, with transformers' defaults.

use serde::Deserialize;

use crate::layers::activation::HiddenAct;

#[derive(Debug, Clone, Deserialize)]
pub struct VitConfig {
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: HiddenAct,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_224")]
    pub image_size: usize,
    #[serde(default = "d_16")]
    pub patch_size: usize,
    #[serde(default = "d_3")]
    pub num_channels: usize,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// "vit" or "deit" (DeiT adds a distillation token).
    #[serde(default = "d_vit")]
    pub model_type: String,
}

impl VitConfig {
    /// DeiT's embeddings carry a distillation token after the class token.
    pub fn has_distillation_token(&self) -> bool {
        self.model_type == "deit"
    }
}

fn d_768() -> usize {
    768
}
fn d_12() -> usize {
    12
}
fn d_3072() -> usize {
    3072
}
fn d_gelu() -> HiddenAct {
    HiddenAct::Other(candle_nn::Activation::Gelu)
}
fn d_eps() -> f64 {
    1e-12
}
fn d_224() -> usize {
    224
}
fn d_16() -> usize {
    16
}
fn d_3() -> usize {
    3
}
fn d_true() -> bool {
    true
}
fn d_vit() -> String {
    "vit".into()
}
