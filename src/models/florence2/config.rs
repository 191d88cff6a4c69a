//! `config.json` of Florence-2 in both layouts on the Hub: the one transformers 5 writes
//! (`vision_config.model_type = "florence_vision"`, `embed_dim`, ...) and the original
//! remote-code one (`model_type = "davit"`, `dim_embed`, `visual_temporal_embedding`,
//! `image_pos_embed`), both read into the same structs.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::id_or;

/// Where a checkpoint keeps its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `Florence2ForConditionalGeneration` of transformers 5 (florence-community/*): image
    /// tokens in the prompt mark where the image features go.
    Native,
    /// microsoft/Florence-2-* and their fine-tunes: other tensor names, image features before
    /// the text.
    Original,
}

/// `Florence2VisionConfig` (DaViT), with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct DavitConfig {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_depths")]
    pub depths: Vec<usize>,
    #[serde(default = "d_patch_size")]
    pub patch_size: Vec<usize>,
    #[serde(default = "d_patch_stride")]
    pub patch_stride: Vec<usize>,
    #[serde(default = "d_patch_padding")]
    pub patch_padding: Vec<usize>,
    #[serde(default = "d_patch_prenorm")]
    pub patch_prenorm: Vec<bool>,
    #[serde(default = "d_embed_dim", alias = "dim_embed")]
    pub embed_dim: Vec<usize>,
    #[serde(default = "d_heads")]
    pub num_heads: Vec<usize>,
    #[serde(default = "d_heads")]
    pub num_groups: Vec<usize>,
    #[serde(default = "d_12")]
    pub window_size: usize,
    #[serde(default = "d_4f")]
    pub mlp_ratio: f64,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    #[serde(default = "d_1024")]
    pub projection_dim: usize,
    #[serde(default = "d_100")]
    pub max_temporal_embeddings: usize,
    #[serde(default = "d_50")]
    pub max_position_embeddings: usize,
}

/// The BART language model's `text_config`, with `BartConfig`'s defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct BartConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_1024")]
    pub d_model: usize,
    #[serde(default = "d_12")]
    pub encoder_layers: usize,
    #[serde(default = "d_12")]
    pub decoder_layers: usize,
    #[serde(default = "d_16")]
    pub encoder_attention_heads: usize,
    #[serde(default = "d_16")]
    pub decoder_attention_heads: usize,
    #[serde(default = "d_4096")]
    pub encoder_ffn_dim: usize,
    #[serde(default = "d_4096")]
    pub decoder_ffn_dim: usize,
    #[serde(default = "d_1024")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_gelu")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default, deserialize_with = "id_or::<_, 0>")]
    pub bos_token_id: u32,
    #[serde(default = "d_pad", deserialize_with = "id_or::<_, 1>")]
    pub pad_token_id: u32,
    #[serde(default = "d_eos", deserialize_with = "id_or::<_, 2>")]
    pub eos_token_id: u32,
    #[serde(default = "d_eos", deserialize_with = "id_or::<_, 2>")]
    pub decoder_start_token_id: u32,
}

fn d_3() -> usize {
    3
}
fn d_depths() -> Vec<usize> {
    vec![1, 1, 9, 1]
}
fn d_patch_size() -> Vec<usize> {
    vec![7, 3, 3, 3]
}
fn d_patch_stride() -> Vec<usize> {
    vec![4, 2, 2, 2]
}
fn d_patch_padding() -> Vec<usize> {
    vec![3, 1, 1, 1]
}
fn d_patch_prenorm() -> Vec<bool> {
    vec![false, true, true, true]
}
fn d_embed_dim() -> Vec<usize> {
    vec![128, 256, 512, 1024]
}
fn d_heads() -> Vec<usize> {
    vec![4, 8, 16, 32]
}
fn d_12() -> usize {
    12
}
fn d_16() -> usize {
    16
}
fn d_4f() -> f64 {
    4.0
}
fn d_true() -> bool {
    true
}
fn d_1024() -> usize {
    1024
}
fn d_4096() -> usize {
    4096
}
fn d_100() -> usize {
    100
}
fn d_50() -> usize {
    50
}
fn d_vocab() -> usize {
    50265
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_pad() -> u32 {
    1
}
fn d_eos() -> u32 {
    2
}

/// A Florence-2 `config.json`, either layout.
#[derive(Debug, Clone)]
pub struct Florence2Config {
    pub vision: DavitConfig,
    pub text: BartConfig,
    /// The `<image>` placeholder of the native layout; the original has none.
    pub image_token_id: Option<u32>,
    pub layout: Layout,
}

impl Florence2Config {
    pub fn from_json(config: &Value, model: &str) -> Result<Self> {
        let bad = |message: String| Error::Config {
            file: format!("config.json of {model}"),
            message,
        };
        let vision_json = config
            .get("vision_config")
            .filter(|v| v.is_object())
            .ok_or_else(|| bad("Florence-2 needs a vision_config".into()))?;
        let text_json = config
            .get("text_config")
            .filter(|v| v.is_object())
            .ok_or_else(|| bad("Florence-2 needs a text_config".into()))?;
        let original = vision_json.get("model_type").and_then(Value::as_str) == Some("davit")
            || vision_json.get("dim_embed").is_some();
        // Nulls (transformers 4 configs) mean "the default", as a missing key does.
        let strip = |v: &Value| -> Value {
            match v {
                Value::Object(map) => Value::Object(
                    map.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                other => other.clone(),
            }
        };
        let mut vision_json = strip(vision_json);
        if original {
            // The original nests two sizes in dicts, and may keep projection_dim at the top.
            let nested = |outer: &str, inner: &str| -> Option<Value> {
                vision_json.get(outer)?.get(inner).cloned()
            };
            let temporal = nested("visual_temporal_embedding", "max_temporal_embeddings");
            let positions = nested("image_pos_embed", "max_pos_embeddings");
            let map = vision_json.as_object_mut().expect("an object");
            if let Some(t) = temporal {
                map.insert("max_temporal_embeddings".into(), t);
            }
            if let Some(p) = positions {
                map.insert("max_position_embeddings".into(), p);
            }
            if !map.contains_key("projection_dim") {
                if let Some(p) = config.get("projection_dim").filter(|p| !p.is_null()) {
                    map.insert("projection_dim".into(), p.clone());
                }
            }
        }
        let vision: DavitConfig =
            serde_json::from_value(vision_json).map_err(|e| bad(format!("vision_config: {e}")))?;
        let text: BartConfig = serde_json::from_value(strip(text_json))
            .map_err(|e| bad(format!("text_config: {e}")))?;
        if vision.projection_dim != text.d_model {
            return Err(bad(format!(
                "the image projection gives {} values per token, the language model takes {}",
                vision.projection_dim, text.d_model
            )));
        }
        if !text.d_model.is_multiple_of(text.encoder_attention_heads)
            || !text.d_model.is_multiple_of(text.decoder_attention_heads)
        {
            return Err(bad(format!(
                "d_model {} is not a multiple of the attention heads",
                text.d_model
            )));
        }
        let image_token_id = config
            .get("image_token_id")
            .and_then(Value::as_u64)
            .map(|n| n as u32);
        Ok(Self {
            vision,
            text,
            image_token_id: if original { None } else { image_token_id },
            layout: if original {
                Layout::Original
            } else {
                Layout::Native
            },
        })
    }
}

/// The original checkpoints' name of a tensor named as transformers 5 names it (the inverse of
/// transformers' `convert_florence2_original_pytorch_to_hf.py`).
pub fn original_name(native: &str) -> String {
    if native == "lm_head.weight" {
        return "language_model.lm_head.weight".into();
    }
    if native == "final_logits_bias" {
        return "language_model.final_logits_bias".into();
    }
    if let Some(rest) = native.strip_prefix("model.language_model.") {
        return format!("language_model.model.{rest}");
    }
    if let Some(rest) = native.strip_prefix("model.multi_modal_projector.") {
        return match rest {
            "image_projection.weight" => "image_projection".into(),
            other => other.replace("image_position_embed.", "image_pos_embed."),
        };
    }
    let Some(rest) = native.strip_prefix("model.") else {
        return native.to_string();
    };
    let mut name = rest.to_string();
    if let Some(stage) = name
        .strip_prefix("vision_tower.convs.")
        .and_then(|r| r.split_once(".conv."))
    {
        name = format!("vision_tower.convs.{}.proj.{}", stage.0, stage.1);
    }
    for (block, attn) in [
        ("spatial_block", "window_attn"),
        ("channel_block", "channel_attn"),
    ] {
        for (from, to) in [
            ("conv1.", "conv1.fn.dw."),
            ("conv2.", "conv2.fn.dw."),
            ("norm1.", &format!("{attn}.norm.")),
            (&format!("{attn}.qkv."), &format!("{attn}.fn.qkv.")),
            (&format!("{attn}.proj."), &format!("{attn}.fn.proj.")),
            ("norm2.", "ffn.norm."),
            ("ffn.fc1.", "ffn.fn.net.fc1."),
            ("ffn.fc2.", "ffn.fn.net.fc2."),
        ] {
            let from = format!("{block}.{from}");
            if name.contains(&from) {
                name = name.replace(&from, &format!("{block}.{to}"));
                break;
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_follow_the_conversion_script() {
        for (native, original) in [
            (
                "model.vision_tower.convs.0.conv.weight",
                "vision_tower.convs.0.proj.weight",
            ),
            (
                "model.vision_tower.convs.2.norm.bias",
                "vision_tower.convs.2.norm.bias",
            ),
            (
                "model.vision_tower.blocks.2.3.spatial_block.conv1.weight",
                "vision_tower.blocks.2.3.spatial_block.conv1.fn.dw.weight",
            ),
            (
                "model.vision_tower.blocks.0.0.spatial_block.norm1.bias",
                "vision_tower.blocks.0.0.spatial_block.window_attn.norm.bias",
            ),
            (
                "model.vision_tower.blocks.0.0.channel_block.channel_attn.qkv.weight",
                "vision_tower.blocks.0.0.channel_block.channel_attn.fn.qkv.weight",
            ),
            (
                "model.vision_tower.blocks.1.0.channel_block.norm2.weight",
                "vision_tower.blocks.1.0.channel_block.ffn.norm.weight",
            ),
            (
                "model.vision_tower.blocks.1.0.spatial_block.ffn.fc2.bias",
                "vision_tower.blocks.1.0.spatial_block.ffn.fn.net.fc2.bias",
            ),
            (
                "model.multi_modal_projector.image_projection.weight",
                "image_projection",
            ),
            (
                "model.multi_modal_projector.image_position_embed.row_embeddings.weight",
                "image_pos_embed.row_embeddings.weight",
            ),
            (
                "model.language_model.encoder.layers.0.fc1.weight",
                "language_model.model.encoder.layers.0.fc1.weight",
            ),
            ("lm_head.weight", "language_model.lm_head.weight"),
        ] {
            assert_eq!(original_name(native), original, "{native}");
        }
    }

    #[test]
    fn both_layouts_read_the_same_sizes() {
        let native = serde_json::json!({
            "image_token_id": 51289,
            "vision_config": {"model_type": "florence_vision", "embed_dim": [8, 16], "depths": [1, 1],
                "num_heads": [1, 2], "num_groups": [1, 2], "patch_size": [7, 3], "patch_stride": [4, 2],
                "patch_padding": [3, 1], "patch_prenorm": [false, true], "projection_dim": 32,
                "max_temporal_embeddings": 10, "max_position_embeddings": 20},
            "text_config": {"d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
                "bos_token_id": null}
        });
        let original = serde_json::json!({
            "projection_dim": 32,
            "vision_config": {"model_type": "davit", "dim_embed": [8, 16], "depths": [1, 1],
                "num_heads": [1, 2], "num_groups": [1, 2], "patch_size": [7, 3], "patch_stride": [4, 2],
                "patch_padding": [3, 1], "patch_prenorm": [false, true],
                "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 10},
                "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 20}},
            "text_config": {"d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 4}
        });
        let a = Florence2Config::from_json(&native, "m").unwrap();
        let b = Florence2Config::from_json(&original, "m").unwrap();
        assert_eq!((a.layout, b.layout), (Layout::Native, Layout::Original));
        assert_eq!((a.image_token_id, b.image_token_id), (Some(51289), None));
        for c in [&a, &b] {
            assert_eq!(c.vision.embed_dim, vec![8, 16]);
            assert_eq!(c.vision.max_temporal_embeddings, 10);
            assert_eq!(c.vision.max_position_embeddings, 20);
            assert_eq!(c.vision.projection_dim, 32);
            assert_eq!(c.text.bos_token_id, 0);
        }
    }
}
