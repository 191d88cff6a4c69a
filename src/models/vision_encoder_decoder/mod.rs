//! `VisionEncoderDecoderModel` captioners (nlpconnect/vit-gpt2-image-captioning and friends): an
//! image encoder and a text decoder, each built from its own sub-config in `config.json`, with
//! the token rules from `generation_config.json`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::layers::linear::{linear, Linear};
use crate::models::blip::config::BlipTextConfig;
use crate::models::blip::text::TextDecoderModel;
use crate::models::gpt2::{Gpt2Config, Gpt2Decoder};
use crate::models::swin::{SwinConfig, SwinModel};
use crate::models::vit::{VitConfig, VitModel};
use crate::models::{CaptionParts, ImageEncoder, PromptStyle};
use crate::models::{StopTokens, TextDecoder};

/// Encoder families glance builds inside a vision encoder–decoder.
pub const ENCODERS: &[&str] = &["vit", "deit", "swin"];
/// Decoder families glance builds inside a vision encoder–decoder.
pub const DECODERS: &[&str] = &["gpt2", "bert"];

/// The composite `config.json`: sub-configs kept as JSON until their type is known.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionEncoderDecoderConfig {
    pub encoder: Value,
    pub decoder: Value,
    pub decoder_start_token_id: Option<u32>,
    pub eos_token_id: Option<Value>,
    pub pad_token_id: Option<u32>,
    pub max_length: Option<usize>,
}

/// The fields of `generation_config.json` the captioner uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    pub decoder_start_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    /// A number or a list.
    pub eos_token_id: Option<Value>,
    pub pad_token_id: Option<u32>,
    pub max_length: Option<usize>,
    pub num_beams: Option<usize>,
}

fn model_type(sub: &Value) -> &str {
    sub.get("model_type").and_then(Value::as_str).unwrap_or("")
}

fn ids(value: &Option<Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &str, model: &str) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| Error::Config {
        file: format!("config.json of {model} ({what})"),
        message: e.to_string(),
    })
}

enum Backbone {
    Vit(VitModel),
    Swin(SwinModel),
}

struct Encoder {
    backbone: Backbone,
    /// `enc_to_dec_proj`, present when encoder and decoder widths differ.
    proj: Option<Linear>,
}

impl ImageEncoder for Encoder {
    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = match &self.backbone {
            Backbone::Vit(m) => m.forward(pixels)?,
            Backbone::Swin(m) => m.forward(pixels)?,
        };
        Ok(match &self.proj {
            Some(p) => p.forward(&x)?,
            None => x,
        })
    }
}

/// Builds encoder and decoder from `encoder.*`, `decoder.*` (and `enc_to_dec_proj.*`).
// Matches VisionEncoderDecoderModel.forward: the decoder cross-attends to the encoder's
// last_hidden_state, projected when the widths differ and no cross_attention_hidden_size is set.
pub fn load(
    cfg: &VisionEncoderDecoderConfig,
    generation: &GenerationConfig,
    vb: VarBuilder,
    model: &str,
) -> Result<CaptionParts> {
    let (enc_type, dec_type) = (model_type(&cfg.encoder), model_type(&cfg.decoder));
    if !ENCODERS.contains(&enc_type) || !DECODERS.contains(&dec_type) {
        return Err(Error::Unsupported {
            model: model.to_string(),
            found: format!(
                "VisionEncoderDecoderModel with a {enc_type} encoder and a {dec_type} decoder"
            ),
            supported: vec![
                "vision encoder-decoder: vit, deit or swin encoder with a gpt2 or bert decoder",
            ],
        });
    }
    let (backbone, enc_width, image_size) = if enc_type == "swin" {
        let c: SwinConfig = parse(&cfg.encoder, "encoder", model)?;
        let m = SwinModel::new(&c, vb.pp("encoder"))?;
        (Backbone::Swin(m), c.hidden_size(), c.image_size)
    } else {
        let c: VitConfig = parse(&cfg.encoder, "encoder", model)?;
        let m = VitModel::new(&c, vb.pp("encoder"))?;
        (Backbone::Vit(m), c.hidden_size, c.image_size)
    };
    let dec = &cfg.decoder;
    let (decoder, dec_width, dec_eos): (Box<dyn TextDecoder>, usize, Vec<u32>) = match dec_type {
        "gpt2" => {
            let c: Gpt2Config = parse(dec, "decoder", model)?;
            let eos = c.eos_token_id.into_iter().collect();
            (
                Box::new(Gpt2Decoder::new(&c, vb.pp("decoder"))?),
                c.n_embd,
                eos,
            )
        }
        _ => {
            let mut c: BlipTextConfig = parse(dec, "decoder", model)?;
            c.encoder_hidden_size = c.hidden_size;
            let eos = ids(&dec.get("eos_token_id").cloned());
            (
                Box::new(TextDecoderModel::new(&c, true, vb.pp("decoder"))?),
                c.hidden_size,
                eos,
            )
        }
    };
    let cross_width = dec
        .get("cross_attention_hidden_size")
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let proj = if enc_width != dec_width && cross_width.is_none() {
        Some(linear(enc_width, dec_width, vb.pp("enc_to_dec_proj"))?)
    } else {
        None
    };
    let start = generation
        .decoder_start_token_id
        .or(cfg.decoder_start_token_id)
        .or(generation.bos_token_id)
        .ok_or_else(|| Error::Config {
            file: format!("config.json of {model}"),
            message: "no decoder_start_token_id (in generation_config.json or config.json)".into(),
        })?;
    let mut eos = ids(&generation.eos_token_id);
    if eos.is_empty() {
        eos = ids(&cfg.eos_token_id);
    }
    if eos.is_empty() {
        eos = dec_eos;
    }
    let pad = generation
        .pad_token_id
        .or(cfg.pad_token_id)
        .or(eos.first().copied())
        .unwrap_or(0);
    Ok(CaptionParts {
        encoder: Box::new(Encoder { backbone, proj }),
        decoder,
        prompt: PromptStyle::StartThenText { start },
        stop: StopTokens { eos, pad },
        default_max_length: generation.max_length.or(cfg.max_length).unwrap_or(20),
        default_num_beams: generation.num_beams,
        image_size: image_size as u32,
    })
}
