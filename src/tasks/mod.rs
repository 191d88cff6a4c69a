//! The tasks: a loaded model that turns a batch of preprocessed images into record fields —
//! captions ([`caption`]), zero-shot and closed-set classes and tags ([`classify`] over
//! [`zero_shot`] and closed-set classifiers), CLIPScore ([`clip_score`]), boxes ([`detect`]). This is the API the
//! folder runner, pipelines and a server call; tasks use models, generation, preprocessing,
//! loading and output's record values, never the runner or the CLI.

pub mod caption;
pub mod chat;
pub mod classify;
pub mod clip_score;
pub mod detect;
pub mod prompts;
pub mod zero_shot;

use serde_json::{Map, Value};

use crate::preprocess::{ImageProcessor, Pixels};

/// One image ready for the stages: its pixels for each distinct preprocessor of the run. The
/// decoded image itself is dropped once they are made: a 12-megapixel photo is 36 MB of RGB
/// against 0.6 MB of pixels at 224².
pub struct Prepared {
    /// The image's name (the record's `file` in a folder run): per-image seeds derive from it.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// One per image processor of the run; a stage learns which are its own from the indices
    /// [`Stage::run`] gets.
    pub pixels: Vec<Pixels>,
}

impl Prepared {
    /// `image`'s pixels for each of `processors`, or why one of them cannot take it.
    pub fn new(
        name: String,
        image: &crate::preprocess::decode::Decoded,
        processors: &[ImageProcessor],
    ) -> Result<Self, String> {
        let pixels = processors
            .iter()
            .map(|p| p.apply(&image.rgb))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            name,
            width: image.width,
            height: image.height,
            pixels,
        })
    }
}

/// The tokens one image's text took: what a server reports as `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The prompt's tokens, image tokens included where the model reads them as tokens.
    pub prompt_tokens: usize,
    /// New tokens of the (first) reply, end-of-sequence included when reached.
    pub completion_tokens: usize,
    /// The reply ended at the token limit.
    pub truncated: bool,
}

/// A step of a run: turns a batch of prepared images into record fields, one map per image.
pub trait Stage: Send {
    /// The stage's name ("caption", "classify", "label" or a pipeline's own): a field another stage
    /// already wrote is stored as `<name>_<field>` instead.
    fn name(&self) -> &str;
    /// The image processors whose pixels the stage reads: its model's, and a judge's where it
    /// has one (a caption stage that reranks).
    fn preprocessors(&self) -> Vec<ImageProcessor>;
    /// `pixels[k]` is the `Prepared::pixels` entry made by the stage's `k`-th preprocessor.
    fn run(
        &mut self,
        batch: &[Prepared],
        pixels: &[usize],
    ) -> crate::Result<Vec<Map<String, Value>>>;
}
