//! Florence-2 (`Florence2ForConditionalGeneration`): a DaViT vision tower whose last stage,
//! projected, goes before the task prompt into a BART encoder; a BART decoder writes the answer
//! (a caption, or text with `<loc_N>` location tokens that [`processor`] turns into boxes).
//!
//! Both Hub layouts load: transformers 5's native one and the original remote-code one
//! (microsoft/Florence-2-*, fine-tunes such as MiaoshouAI's PromptGen), whose tensor names are
//! mapped at load ([`config::original_name`]).

pub mod bart;
pub mod config;
pub mod davit;
pub mod processor;

use candle_core::{Module, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use crate::error::Result;
use crate::models::vision_encoder_decoder::GenerationConfig;
use crate::models::{CaptionParts, ImageEncoder, PromptStyle, StopTokens};
use bart::{BartDecoder, BartEncoder};
pub use config::{Florence2Config, Layout};
use davit::{Davit, Projector};

/// The image size of every released Florence-2, for checkpoints without a preprocessor config.
const IMAGE_SIZE: u32 = 768;
/// Florence-2's answers (a paragraph, a list of boxes) run long: every model card, taggui and
/// kohya's script generate up to 1024 new tokens, whatever `generation_config.json`'s
/// `max_length` says, so glance does too (`--max-new-tokens` changes it).
const DEFAULT_MAX_LENGTH: usize = 1025;

/// The image tokens and the task prompt, through the BART encoder.
pub struct Florence2Encoder {
    vision: Davit,
    projector: Projector,
    shared: Embedding,
    embed_scale: f64,
    encoder: BartEncoder,
    /// `<s>` and `</s>`, the prompt's frame when none is given.
    bos: u32,
    eos: u32,
}

impl Florence2Encoder {
    /// Image tokens `[b, 1 + h·w, d]`: the vision tower's last stage through the projector.
    /// The tower runs one image at a time: its first stage holds 36,864 tokens an image at 768²
    /// (a 600 MB MLP activation each), so a batch of 8 would need gigabytes at once, and its
    /// matmuls are as large as a GEMM wants with one image.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let images = (0..pixels.dim(0)?)
            .map(|i| {
                let (tokens, size) = self.vision.forward(&pixels.narrow(0, i, 1)?)?;
                self.projector.forward(&tokens, size)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&images, 0)?)
    }
}

impl ImageEncoder for Florence2Encoder {
    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        self.encode_with_prompt(pixels, &[self.bos, self.eos])
    }

    /// `prompt`: the task prompt's ids, `<s>` and `</s>` included; the image tokens go before
    /// it, where the native processor puts its `<image>` placeholders.
    fn encode_with_prompt(&self, pixels: &Tensor, prompt: &[u32]) -> Result<Tensor> {
        let image = self.image_features(pixels)?;
        let b = image.dim(0)?;
        let ids = Tensor::new(prompt, image.device())?.unsqueeze(0)?;
        let mut text = self.shared.forward(&ids)?;
        if self.embed_scale != 1.0 {
            text = (text * self.embed_scale)?;
        }
        let (_, n, d) = text.dims3()?;
        let text = text.broadcast_as((b, n, d))?.to_dtype(image.dtype())?;
        let embeds = Tensor::cat(&[&image, &text], 1)?;
        Ok(self.encoder.forward(&embeds)?)
    }
}

/// Builds the model from either layout's tensors (`vb` at the checkpoint's root).
pub fn load(
    cfg: &Florence2Config,
    generation: &GenerationConfig,
    vb: VarBuilder,
) -> Result<CaptionParts> {
    let vb = match cfg.layout {
        Layout::Native => vb,
        Layout::Original => vb.rename_f(config::original_name),
    };
    let (v, t) = (&cfg.vision, &cfg.text);
    let c = *v.embed_dim.last().unwrap_or(&0);
    let vision = Davit::new(v, vb.pp("model.vision_tower"))?;
    let projector_vb = vb.pp("model.multi_modal_projector");
    // The original stores the projection as a bare `[in, out]` parameter.
    let projection = match cfg.layout {
        Layout::Native => projector_vb.get((v.projection_dim, c), "image_projection.weight")?,
        Layout::Original => projector_vb
            .get((c, v.projection_dim), "image_projection.weight")?
            .t()?
            .contiguous()?,
    };
    let projector = Projector::new(v, projection, projector_vb)?;
    let lm = vb.pp("model.language_model");
    let shared = embedding(t.vocab_size, t.d_model, lm.pp("shared"))?;
    let encoder = BartEncoder::new(t, lm.pp("encoder"))?;
    let lm_head = match vb.contains_tensor("lm_head.weight") {
        true => vb.get((t.vocab_size, t.d_model), "lm_head.weight")?,
        false => shared.embeddings().clone(),
    };
    let final_logits_bias = match vb.contains_tensor("final_logits_bias") {
        true => Some(vb.get((1, t.vocab_size), "final_logits_bias")?.squeeze(0)?),
        false => None,
    };
    let decoder = BartDecoder::new(
        t,
        shared.clone(),
        lm_head,
        final_logits_bias,
        lm.pp("decoder"),
    )?;
    let start = generation
        .decoder_start_token_id
        .unwrap_or(t.decoder_start_token_id);
    let eos = match generation.eos_token_id.as_ref().and_then(|e| e.as_u64()) {
        Some(e) => e as u32,
        None => t.eos_token_id,
    };
    let bos = generation.bos_token_id.unwrap_or(t.bos_token_id);
    Ok(CaptionParts {
        encoder: Box::new(Florence2Encoder {
            vision,
            projector,
            shared,
            embed_scale: bart::embed_scale(t),
            encoder,
            bos,
            eos,
        }),
        decoder: Box::new(decoder),
        prompt: PromptStyle::Task { start, bos, eos },
        stop: StopTokens {
            eos: vec![eos],
            pad: generation.pad_token_id.unwrap_or(t.pad_token_id),
        },
        default_max_length: DEFAULT_MAX_LENGTH,
        default_num_beams: generation.num_beams,
        image_size: IMAGE_SIZE,
    })
}
