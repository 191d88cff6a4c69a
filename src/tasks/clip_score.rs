//! CLIPScore and RefCLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric
//! for Image Captioning") with any CLIP or SigLIP checkpoint glance loads.
//!
//! CLIP-S(c, v) = w · max(cos(E_img(v), E_txt("A photo depicts " + c)), 0), w = 2.5;
//! RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and max(max_r cos(E_txt(c), E_txt(r)), 0),
//! every text with the same prefix. Matches `get_clip_score` / `get_refonlyclipscore` of the
//! authors' clipscore.py; w was calibrated for CLIP ViT-B/32, so scores of other models are
//! comparable with each other only.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::load::hub::ModelFiles;
use crate::preprocess::Preprocessor;
use crate::tasks::zero_shot::{l2_normalize, load_image_text, ImageTextModel};

/// The paper's rescaling weight.
pub const WEIGHT: f32 = 2.5;
/// The paper's text prefix, put in front of candidates and references alike.
pub const PREFIX: &str = "A photo depicts ";
/// Images per vision-tower pass.
pub const IMAGE_BATCH: usize = 32;
/// Captions whose references are compared in one product.
const REFERENCE_BATCH: usize = 256;

/// A CLIP/SigLIP model used as a judge of image–caption agreement.
pub struct ClipScorer {
    model: ImageTextModel,
}

impl ClipScorer {
    pub fn new(model: ImageTextModel) -> Self {
        Self { model }
    }

    /// Loads a CLIP or SigLIP checkpoint as the judge.
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self::new(load_image_text(files, device, dtype)?))
    }

    pub fn name(&self) -> &str {
        self.model.name()
    }

    /// The judge's own image processor.
    pub fn preprocessor(&self) -> &Preprocessor {
        self.model.preprocessor()
    }

    /// Normalized image embeddings `[n, dim]`, preprocessed with the judge's own processor.
    pub fn embed_images(&self, images: &[&RgbImage]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::Options("no images to score".into()));
        }
        let chunks = images
            .chunks(IMAGE_BATCH)
            .map(|chunk| {
                let pixels: Vec<Vec<f32>> = chunk
                    .par_iter()
                    .map(|img| self.preprocessor().apply(img))
                    .collect();
                self.embed_pixels(&pixels)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&chunks, 0)?)
    }

    /// Normalized image embeddings `[n, dim]` of pixels from [`Self::preprocessor`].
    pub fn embed_pixels(&self, pixels: &[impl AsRef<[f32]>]) -> Result<Tensor> {
        let tensor = self.model.pixels_to_tensor(pixels)?;
        l2_normalize(&self.model.embed_images(&tensor)?)
    }

    /// Normalized embeddings `[n, dim]` of captions, each with [`PREFIX`] in front.
    pub fn embed_captions(&self, captions: &[String]) -> Result<Tensor> {
        let prompts: Vec<String> = captions.iter().map(|c| format!("{PREFIX}{c}")).collect();
        l2_normalize(&self.model.encode_texts(&prompts)?)
    }
}

/// Row-wise cosine similarities of two sets of normalized embeddings `[n, dim]`.
pub fn paired_cosines(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    Ok((a * b)?
        .sum(candle_core::D::Minus1)?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

/// CLIP-S from a cosine similarity.
pub fn clip_score(cosine: f32) -> f32 {
    WEIGHT * cosine.max(0.0)
}

/// RefCLIP-S from CLIP-S and the best cosine between the candidate and a reference.
pub fn ref_clip_score(clip_s: f32, best_ref_cosine: f32) -> f32 {
    let r = best_ref_cosine.max(0.0);
    if clip_s + r == 0.0 {
        0.0
    } else {
        2.0 * clip_s * r / (clip_s + r)
    }
}

/// Per-image scores of captions against their images and (optionally) references.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipScores {
    pub clip_score: Vec<f32>,
    /// Present when references were given.
    pub ref_clip_score: Option<Vec<f32>>,
}

impl ClipScorer {
    /// CLIP-S of `captions[i]` for `images[i]`, and RefCLIP-S against `references[i]` when given
    /// (each image needs at least one reference).
    pub fn score(
        &self,
        images: &[&RgbImage],
        captions: &[String],
        references: Option<&[Vec<String>]>,
    ) -> Result<ClipScores> {
        assert_eq!(images.len(), captions.len(), "one caption per image");
        self.score_embedded(&self.embed_images(images)?, captions, references)
    }

    /// [`Self::score`] for images already embedded with [`Self::embed_images`] or
    /// [`Self::embed_pixels`], `[n, dim]`.
    pub fn score_embedded(
        &self,
        img: &Tensor,
        captions: &[String],
        references: Option<&[Vec<String>]>,
    ) -> Result<ClipScores> {
        assert_eq!(img.dim(0)?, captions.len(), "one caption per image");
        let txt = self.embed_captions(captions)?;
        let clip_s: Vec<f32> = paired_cosines(img, &txt)?
            .into_iter()
            .map(clip_score)
            .collect();
        let Some(references) = references else {
            return Ok(ClipScores {
                clip_score: clip_s,
                ref_clip_score: None,
            });
        };
        assert_eq!(references.len(), captions.len(), "references per caption");
        if let Some(i) = references.iter().position(|r| r.is_empty()) {
            return Err(Error::Options(format!(
                "RefCLIPScore needs a reference for every caption; caption {i} has none"
            )));
        }
        let flat: Vec<String> = references.iter().flatten().cloned().collect();
        let refs = self.embed_captions(&flat)?;
        // Each caption against its own references: a block of captions at a time with the
        // references of that block, which follow one another in `refs`.
        let mut ref_s = Vec::with_capacity(captions.len());
        let mut start = 0;
        for (block, refs_of) in references.chunks(REFERENCE_BATCH).enumerate() {
            let count: usize = refs_of.iter().map(Vec::len).sum();
            let first = block * REFERENCE_BATCH;
            let sims: Vec<Vec<f32>> = txt
                .narrow(0, first, refs_of.len())?
                .matmul(&refs.narrow(0, start, count)?.t()?)?
                .to_dtype(DType::F32)?
                .to_vec2()?;
            let mut at = 0;
            for (i, r) in refs_of.iter().enumerate() {
                let best = sims[i][at..at + r.len()]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
                ref_s.push(ref_clip_score(clip_s[first + i], best));
                at += r.len();
            }
            start += count;
        }
        Ok(ClipScores {
            clip_score: clip_s,
            ref_clip_score: Some(ref_s),
        })
    }

    /// CLIP-S of several candidate captions per image, in order (the reranker's question):
    /// one vision pass for the images' `pixels` (from [`Self::preprocessor`]) and one text pass
    /// for all candidates.
    pub fn score_candidates(
        &self,
        pixels: &[&[f32]],
        candidates: &[Vec<String>],
    ) -> Result<Vec<Vec<f32>>> {
        assert_eq!(pixels.len(), candidates.len(), "candidates per image");
        let img = self.embed_pixels(pixels)?;
        let flat: Vec<String> = candidates.iter().flatten().cloned().collect();
        let txt = self.embed_captions(&flat)?;
        // [all candidates, images]: each image reads its own candidates' rows.
        let sims: Vec<Vec<f32>> = txt.matmul(&img.t()?)?.to_vec2()?;
        let mut start = 0;
        Ok(candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let scores = sims[start..start + c.len()]
                    .iter()
                    .map(|row| clip_score(row[i]))
                    .collect();
                start += c.len();
                scores
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_score_clips_negative_similarity_at_zero() {
        assert_eq!(clip_score(-0.3), 0.0);
        assert!((clip_score(0.3) - 0.75).abs() < 1e-6);
    }

    #[test]
    fn ref_clip_score_is_the_harmonic_mean_and_zero_when_both_are() {
        assert!((ref_clip_score(0.75, 0.5) - 0.6).abs() < 1e-6);
        assert_eq!(ref_clip_score(0.0, -0.2), 0.0);
        assert_eq!(ref_clip_score(0.8, -0.2), 0.0);
    }
}
