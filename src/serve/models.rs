//! The models a server holds, what each can do, and the stage a request's options make of one.
//! A stage is what `glance caption` / `classify` / `label` / `detect` build from their flags, so a
//! request gets the CLI's record for the same image and options.

use std::sync::Arc;

use candle_core::{DType, Device};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::generation::{GenerationParams, Overrides};
use crate::load::hub::ModelFiles;
use crate::load::read_json;
use crate::models::Architecture;
use crate::preprocess::ImageProcessor;
use crate::tasks::caption::{CaptionStage, Captioner};
use crate::tasks::chat::{ChatCaptioner, ChatOptions, ChatStage};
use crate::tasks::classify::{load_recognizer, ClassifyStage, Mode, Recognizer};
use crate::tasks::detect::DetectStage;
use crate::tasks::zero_shot::ImageTextModel;
use crate::tasks::{Prepared, Stage, Usage};

/// What a request asks a model to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    Caption,
    Chat,
    Classify,
    Label,
    Detect,
    Embeddings,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Caption => "caption",
            Task::Chat => "chat",
            Task::Classify => "classify",
            Task::Label => "label",
            Task::Detect => "detect",
            Task::Embeddings => "embeddings",
        }
    }
}

/// A loaded model. The weights are shared (`Arc`) between the stages built over them; only the
/// model's own thread runs them.
#[derive(Clone)]
pub enum Model {
    Captioner(Arc<Captioner>),
    Chat(Arc<ChatCaptioner>),
    Recognizer(Recognizer),
}

impl Model {
    /// Loads whatever `config.json` names: a chat VLM, a captioner, or a classifier.
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        let config = read_json(&files.get("config.json")?)?;
        Ok(
            match Architecture::from_config(&config, &files.source().name())? {
                Architecture::Qwen3Vl(_) => {
                    Model::Chat(Arc::new(ChatCaptioner::load(files, device, dtype)?))
                }
                arch if arch.captions() => {
                    Model::Captioner(Arc::new(Captioner::load(files, device, dtype)?))
                }
                _ => Model::Recognizer(load_recognizer(files, device, dtype)?),
            },
        )
    }

    pub fn name(&self) -> &str {
        match self {
            Model::Captioner(m) => m.name(),
            Model::Chat(m) => m.name(),
            Model::Recognizer(m) => m.name(),
        }
    }

    /// The tokenizer of a text-generating model.
    pub fn tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        match self {
            Model::Captioner(m) => Some(m.tokenizer()),
            Model::Chat(m) => Some(m.tokenizer()),
            Model::Recognizer(_) => None,
        }
    }

    /// The tasks its architecture supports.
    pub fn tasks(&self) -> Vec<Task> {
        match self {
            Model::Captioner(m) if m.reads_tasks() => vec![Task::Caption, Task::Chat, Task::Detect],
            Model::Captioner(_) | Model::Chat(_) => vec![Task::Caption, Task::Chat],
            Model::Recognizer(Recognizer::ZeroShot(_)) => {
                vec![Task::Classify, Task::Label, Task::Embeddings]
            }
            Model::Recognizer(Recognizer::ClosedSet(_)) => vec![Task::Classify, Task::Label],
        }
    }

    /// The zero-shot model, for text embeddings.
    pub fn image_text(&self) -> Option<&Arc<ImageTextModel>> {
        match self {
            Model::Recognizer(Recognizer::ZeroShot(m)) => Some(m),
            _ => None,
        }
    }

    /// What the images of a request with `spec` need, made before they reach the model thread.
    pub fn processor(&self, spec: &Spec) -> Result<ImageProcessor> {
        Ok(match (self, spec) {
            (Model::Chat(m), Spec::Chat(options)) => {
                ImageProcessor::Patches(ChatStage::processor_for(m, options)?)
            }
            (Model::Captioner(m), _) => ImageProcessor::Fixed(m.preprocessor().clone()),
            (Model::Recognizer(Recognizer::ZeroShot(m)), _) => {
                ImageProcessor::Fixed(m.preprocessor().clone())
            }
            (Model::Recognizer(Recognizer::ClosedSet(m)), _) => {
                ImageProcessor::Fixed(m.preprocessor().clone())
            }
            (Model::Chat(_), _) => return Err(Error::Options("a chat model only captions".into())),
        })
    }

    /// The stage `spec` makes of this model, as the CLI makes it from the same options.
    pub fn stage(&self, spec: &Spec) -> Result<ServedStage> {
        Ok(match (self, spec) {
            (Model::Captioner(m), Spec::Caption { prompt, generation }) => {
                let params = GenerationParams::default().with(generation);
                ServedStage::Caption(Box::new(CaptionStage::new(
                    m.clone(),
                    prompt.as_deref(),
                    params,
                    generation.max_new_tokens,
                    generation.num_beams,
                )?))
            }
            (Model::Chat(m), Spec::Chat(options)) => {
                ServedStage::Chat(Box::new(ChatStage::new(m.clone(), options.clone())?))
            }
            (
                Model::Captioner(m),
                Spec::Detect {
                    task,
                    phrases,
                    generation,
                },
            ) => {
                let params = GenerationParams::default().with(generation);
                ServedStage::Other(Box::new(DetectStage::new(
                    m.clone(),
                    task,
                    phrases.clone(),
                    params,
                    generation.max_new_tokens,
                    generation.num_beams,
                )?))
            }
            (
                Model::Recognizer(r),
                Spec::Classify {
                    labels,
                    templates,
                    mode,
                },
            ) => {
                let name = match mode {
                    Mode::Classify { .. } => "classify",
                    Mode::Label { .. } => "label",
                };
                ServedStage::Other(Box::new(ClassifyStage::new(
                    r.clone(),
                    labels.clone(),
                    templates,
                    mode.clone(),
                    name,
                )?))
            }
            (Model::Recognizer(Recognizer::ZeroShot(m)), Spec::Embed) => {
                ServedStage::Other(Box::new(EmbedStage(m.clone())))
            }
            (model, spec) => {
                return Err(Error::Options(format!(
                    "{} cannot serve this request ({})",
                    model.name(),
                    spec.describe()
                )))
            }
        })
    }
}

/// A request's options, resolved: equal specs share batches and a cached stage.
#[derive(Debug, Clone)]
pub enum Spec {
    /// A captioner's caption: the prompt (or Florence-2 task token) and decoding options.
    Caption {
        prompt: Option<String>,
        generation: Overrides,
    },
    Chat(ChatOptions),
    Detect {
        task: String,
        phrases: Option<Vec<String>>,
        generation: Overrides,
    },
    /// Classes or tags: `labels` is `None` for a closed-set classifier's own classes.
    Classify {
        labels: Option<Vec<String>>,
        templates: Vec<String>,
        mode: Mode,
    },
    /// Image embeddings.
    Embed,
}

impl Spec {
    /// The key batches and the stage cache group by: every option is in it.
    pub fn key(&self) -> String {
        format!("{self:?}")
    }

    fn describe(&self) -> &'static str {
        match self {
            Spec::Caption { .. } => "caption",
            Spec::Chat(_) => "chat",
            Spec::Detect { .. } => "detect",
            Spec::Classify {
                mode: Mode::Label { .. },
                ..
            } => "label",
            Spec::Classify { .. } => "classify",
            Spec::Embed => "embeddings",
        }
    }
}

/// One image's fields, and its token counts where the stage generates text.
pub type Counted = (Map<String, Value>, Option<Usage>);

/// A built stage. Captions report their token counts (a chat completion's `usage`).
pub enum ServedStage {
    Caption(Box<CaptionStage>),
    Chat(Box<ChatStage>),
    Other(Box<dyn Stage>),
}

impl ServedStage {
    pub fn run(&mut self, batch: &[Prepared]) -> Result<Vec<Counted>> {
        let some = |out: Vec<(Map<String, Value>, Usage)>| {
            out.into_iter().map(|(f, u)| (f, Some(u))).collect()
        };
        Ok(match self {
            ServedStage::Caption(s) => some(s.run_counted(batch, &[0])?),
            ServedStage::Chat(s) => some(s.run_counted(batch, &[0])?),
            ServedStage::Other(s) => s.run(batch, &[0])?.into_iter().map(|f| (f, None)).collect(),
        })
    }
}

/// Image embeddings as a stage: field `embedding`, L2-normalised (what the model's similarity
/// compares).
struct EmbedStage(Arc<ImageTextModel>);

impl Stage for EmbedStage {
    fn name(&self) -> &str {
        "embed"
    }

    fn preprocessors(&self) -> Vec<ImageProcessor> {
        vec![ImageProcessor::Fixed(self.0.preprocessor().clone())]
    }

    fn run(&mut self, batch: &[Prepared], pixels: &[usize]) -> Result<Vec<Map<String, Value>>> {
        let values: Vec<&[f32]> = batch.iter().map(|p| p.pixels[pixels[0]].values()).collect();
        let embeds = self.0.embed_images(&self.0.pixels_to_tensor(&values)?)?;
        let rows = crate::tasks::zero_shot::l2_normalize(&embeds)?.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut fields = Map::new();
                fields.insert("embedding".into(), Value::from(row));
                fields
            })
            .collect())
    }
}

/// Text embeddings of `texts`, L2-normalised like the image ones.
pub fn embed_texts(model: &ImageTextModel, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let embeds = model.encode_texts(texts)?;
    Ok(crate::tasks::zero_shot::l2_normalize(&embeds)?.to_vec2::<f32>()?)
}
