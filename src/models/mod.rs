//! Model families, chosen from `config.json` ([`Architecture`]), and the narrow traits tasks and
//! the decode loop use. One folder per family, built from [`crate::layers`]; a family knows
//! nothing of tasks, runs or the CLI.

pub mod blip;
pub mod clip;
pub mod convnext;
pub mod florence2;
pub mod gpt2;
pub mod qwen3_vl;
pub mod resnet;
pub mod siglip;
pub mod swin;
pub mod vision_encoder_decoder;
pub mod vit;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::layers::kv_cache::KvCache;

/// A token id that configs written by transformers 4.x may hold as `null`: `DEFAULT` then,
/// the value transformers gives a missing key.
pub(crate) fn id_or<'de, D: serde::Deserializer<'de>, const DEFAULT: u32>(
    d: D,
) -> std::result::Result<u32, D::Error> {
    Ok(<Option<u32> as serde::Deserialize>::deserialize(d)?.unwrap_or(DEFAULT))
}

/// Turns preprocessed pixels `[batch, 3, H, W]` into features `[batch, positions, dim]`.
pub trait ImageEncoder: Send + Sync {
    fn encode(&self, pixels: &Tensor) -> Result<Tensor>;

    /// Encoders that read a text prompt with the image (Florence-2's task prompt) take its ids
    /// here; the others ignore them.
    fn encode_with_prompt(&self, pixels: &Tensor, prompt: &[u32]) -> Result<Tensor> {
        let _ = prompt;
        self.encode(pixels)
    }
}

/// What a text decoder provides to the decode loop.
pub trait TextDecoder: Send + Sync {
    /// A fresh cache for a batch of encoder outputs `[rows, positions, dim]`.
    fn new_cache(&self, encoder_hidden: &Tensor) -> Result<KvCache>;

    /// Feeds `ids` `[rows, n]` after the cached positions and returns the logits of the last
    /// position, `[rows, vocab]`.
    fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor>;

    fn device(&self) -> &Device;
}

/// Token ids that end or pad a sequence.
#[derive(Debug, Clone)]
pub struct StopTokens {
    pub eos: Vec<u32>,
    pub pad: u32,
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

/// Closed-set image classifiers (`*ForImageClassification`): pixels to one logit per class of
/// the model's `id2label`.
pub trait ImageClassifier: Send + Sync {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor>;
}

impl ImageClassifier for vit::VitClassifier {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.forward(pixels)?)
    }
}

impl ImageClassifier for resnet::ResNetClassifier {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.forward(pixels)?)
    }
}

impl ImageClassifier for convnext::ConvNextClassifier {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.forward(pixels)?)
    }
}

/// The backbone of an image classifier.
#[derive(Debug, Clone)]
pub enum ClassifierBackbone {
    Vit(vit::VitConfig),
    ResNet(resnet::ResNetConfig),
    ConvNext(convnext::ConvNextConfig),
}

/// An `*ForImageClassification` config: the backbone, the class names in id order and whether
/// classes are exclusive (softmax) or independent (sigmoid, `multi_label_classification`).
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    pub backbone: ClassifierBackbone,
    pub labels: Vec<String>,
    pub multi_label: bool,
}

impl ClassifierConfig {
    fn parse(config: &Value, backbone: ClassifierBackbone, model: &str) -> Result<Self> {
        let bad = |m: String| Error::Config {
            file: format!("config.json of {model}"),
            message: m,
        };
        let map = config
            .get("id2label")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("an image classifier needs id2label".into()))?;
        let mut labels = vec![String::new(); map.len()];
        for (id, label) in map {
            let i: usize = id
                .parse()
                .ok()
                .filter(|i| *i < labels.len())
                .ok_or_else(|| bad(format!("id2label has a bad id {id:?}")))?;
            labels[i] = label.as_str().unwrap_or_default().to_string();
        }
        let multi_label = config.get("problem_type").and_then(Value::as_str)
            == Some("multi_label_classification");
        Ok(Self {
            backbone,
            labels,
            multi_label,
        })
    }

    /// Builds the classifier from the checkpoint's tensors.
    pub fn build(&self, vb: candle_nn::VarBuilder) -> Result<Box<dyn ImageClassifier>> {
        let n = self.labels.len();
        Ok(match &self.backbone {
            ClassifierBackbone::Vit(c) => Box::new(vit::VitClassifier::new(c, n, vb)?),
            ClassifierBackbone::ResNet(c) => Box::new(resnet::ResNetClassifier::new(c, n, vb)?),
            ClassifierBackbone::ConvNext(c) => {
                Box::new(convnext::ConvNextClassifier::new(c, n, vb)?)
            }
        })
    }

    /// The input size for models without a preprocessor config.
    pub fn image_size(&self) -> u32 {
        match &self.backbone {
            ClassifierBackbone::Vit(c) => c.image_size as u32,
            _ => 224,
        }
    }
}

/// How a text prompt becomes the decoder's first tokens.
#[derive(Debug, Clone)]
pub enum PromptStyle {
    /// BLIP: tokenize with special tokens, replace the first ([CLS]) by `bos`, drop the last
    /// ([SEP]); no prompt means `[bos]`.
    ReplaceFirstDropLast { bos: u32 },
    /// Vision encoder–decoders: `decoder_start_token_id`, then the prompt's tokens without
    /// special tokens.
    StartThenText { start: u32 },
    /// Florence-2: the prompt is a task the encoder reads, as `bos`, its text, `eos`; the
    /// decoder starts from `start` alone.
    Task { start: u32, bos: u32, eos: u32 },
}

/// What a captioning architecture contributes: an encoder, a decoder and its token rules.
pub struct CaptionParts {
    pub encoder: Box<dyn ImageEncoder>,
    pub decoder: Box<dyn TextDecoder>,
    pub prompt: PromptStyle,
    pub stop: StopTokens,
    /// Total length (prompt included) transformers generates when no length is given.
    pub default_max_length: usize,
    /// `generation_config.json`'s `num_beams`, used when the user asks for none.
    pub default_num_beams: Option<usize>,
    /// The input size the encoder was trained at, for models without a preprocessor config.
    pub image_size: u32,
}

/// The architectures glance can run, from `config.json`.
#[derive(Debug, Clone)]
pub enum Architecture {
    Blip(Box<blip::BlipConfig>),
    Clip(Box<clip::ClipConfig>),
    Siglip(Box<siglip::SiglipConfig>),
    VisionEncoderDecoder(Box<vision_encoder_decoder::VisionEncoderDecoderConfig>),
    ImageClassifier(Box<ClassifierConfig>),
    /// An instruction-following vision–language model (run by [`crate::tasks::chat`]).
    Qwen3Vl(Box<qwen3_vl::Qwen3VlConfig>),
    /// Florence-2: captions and, through its location tokens, boxes.
    Florence2(Box<florence2::Florence2Config>),
}

/// `architectures` values glance supports, for error messages.
pub const SUPPORTED: &[&str] = &[
    "BlipForConditionalGeneration",
    "VisionEncoderDecoderModel",
    "CLIPModel",
    "SiglipModel",
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "ResNetForImageClassification",
    "ConvNextForImageClassification",
    "Qwen3VLForConditionalGeneration",
    "Florence2ForConditionalGeneration",
];

impl Architecture {
    /// Whether `Captioner` runs it (a vision encoder feeding a text decoder).
    pub fn captions(&self) -> bool {
        matches!(
            self,
            Self::Blip(_) | Self::VisionEncoderDecoder(_) | Self::Florence2(_)
        )
    }

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
            (Some("VisionEncoderDecoderModel"), _) | (None, Some("vision-encoder-decoder")) => {
                Ok(Self::VisionEncoderDecoder(parse(config, model)?))
            }
            (
                Some(
                    "ViTForImageClassification"
                    | "DeiTForImageClassification"
                    | "DeiTForImageClassificationWithTeacher",
                ),
                _,
            ) => {
                let backbone = ClassifierBackbone::Vit(*parse(config, model)?);
                Ok(Self::ImageClassifier(Box::new(ClassifierConfig::parse(
                    config, backbone, model,
                )?)))
            }
            (Some("ResNetForImageClassification"), _) => {
                let backbone = ClassifierBackbone::ResNet(*parse(config, model)?);
                Ok(Self::ImageClassifier(Box::new(ClassifierConfig::parse(
                    config, backbone, model,
                )?)))
            }
            (Some("Qwen3VLForConditionalGeneration"), _) | (None, Some("qwen3_vl")) => {
                Ok(Self::Qwen3Vl(parse(config, model)?))
            }
            (Some("Florence2ForConditionalGeneration"), _) | (None, Some("florence2")) => {
                Ok(Self::Florence2(Box::new(
                    florence2::Florence2Config::from_json(config, model)?,
                )))
            }
            (Some("ConvNextForImageClassification"), _) => {
                let backbone = ClassifierBackbone::ConvNext(*parse(config, model)?);
                Ok(Self::ImageClassifier(Box::new(ClassifierConfig::parse(
                    config, backbone, model,
                )?)))
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
