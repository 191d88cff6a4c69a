//! Pipeline files (`glance run pipelines/NAME.toml`): several stages — caption, classify, label —
//! run over each image in one pass (decoded once), their fields merged into one record.
//!
//! ```toml
//! [[stage]]
//! task = "caption"                      # caption | classify | label | detect
//! model = "Salesforce/blip-image-captioning-base"
//! num_beams = 3
//!
//! [[stage]]
//! task = "label"
//! model = "openai/clip-vit-base-patch32"
//! vocab = "everyday"                    # a shipped vocabulary or a file (relative to this file)
//! threshold = 0.25
//!
//! [output]
//! text_field = "caption"                # what --format txt / coco write
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::generation::{GenerationParams, Overrides};
use crate::load::hub::{ModelFiles, ModelSource};
use crate::load::read_json;
use crate::tasks::caption::{CaptionStage, Captioner};
use crate::tasks::chat::{is_chat_model, ChatCaptioner, ChatOptions, ChatStage};
use crate::tasks::classify::{default_threshold, load_recognizer, ClassifyStage, Mode, Recognizer};
use crate::tasks::prompts;
use crate::tasks::Stage;

/// The captioning model used when none is named.
pub const DEFAULT_CAPTION_MODEL: &str = "Salesforce/blip-image-captioning-base";
/// The image–text model used for classify and label when none is named.
pub const DEFAULT_ZERO_SHOT_MODEL: &str = "openai/clip-vit-base-patch32";
/// The detection model used when none is named: Florence-2-base in transformers 5's layout.
pub const DEFAULT_DETECT_MODEL: &str = "florence-community/Florence-2-base";

/// Presets shipped in `pipelines/` (compiled in, so `--pipeline NAME` works anywhere).
const PRESETS: &[(&str, &str)] = &[
    (
        "caption-tags",
        include_str!("../../pipelines/caption-tags.toml"),
    ),
    (
        "coco-annotate",
        include_str!("../../pipelines/coco-annotate.toml"),
    ),
    (
        "sort-photos",
        include_str!("../../pipelines/sort-photos.toml"),
    ),
];

/// A parsed pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "stage")]
    pub stages: Vec<StageSpec>,
    #[serde(default)]
    pub output: OutputSpec,
    /// Where relative paths in the file are taken from (the file's folder).
    #[serde(skip)]
    pub base: PathBuf,
    /// The file or preset it came from, for messages.
    #[serde(skip)]
    pub source: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The field `--format txt` sidecars and COCO captions hold (default: the first stage's).
    pub text_field: Option<String>,
    /// CSV columns (default: `file`, each stage's main fields, `error`).
    pub csv_columns: Option<Vec<String>>,
}

/// One stage; `name` (default: the task) prefixes its fields when an earlier stage took them.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum StageSpec {
    Caption {
        name: Option<String>,
        model: Option<String>,
        revision: Option<String>,
        #[serde(flatten)]
        options: CaptionSpec,
    },
    Classify {
        name: Option<String>,
        model: Option<String>,
        revision: Option<String>,
        #[serde(flatten)]
        labels: LabelSpec,
        #[serde(default = "default_top_k")]
        top_k: usize,
        #[serde(default)]
        multi_label: bool,
        threshold: Option<f32>,
        min_score: Option<f32>,
    },
    Label {
        name: Option<String>,
        model: Option<String>,
        revision: Option<String>,
        #[serde(flatten)]
        labels: LabelSpec,
        threshold: Option<f32>,
        #[serde(default = "default_max_tags")]
        max_tags: usize,
    },
    /// Boxes from Florence-2 (`glance detect`): `detect_task` is its `--task`.
    Detect {
        name: Option<String>,
        model: Option<String>,
        revision: Option<String>,
        #[serde(default = "default_detect_task")]
        detect_task: String,
        /// Phrases to find (`detect_task = "grounding"`).
        labels: Option<Vec<String>>,
        labels_file: Option<String>,
        max_new_tokens: Option<usize>,
        num_beams: Option<usize>,
    },
}

fn default_detect_task() -> String {
    "od".into()
}

fn default_top_k() -> usize {
    5
}

fn default_max_tags() -> usize {
    crate::tasks::classify::DEFAULT_MAX_TAGS
}

/// Where the labels and templates of a zero-shot stage come from.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LabelSpec {
    /// Labels written out.
    pub labels: Option<Vec<String>>,
    /// A file of labels, one per line.
    pub labels_file: Option<String>,
    /// A vocabulary: shipped name or file.
    pub vocab: Option<String>,
    /// One template with `{}` for the label.
    pub template: Option<String>,
    /// A template set: shipped name or file.
    pub templates: Option<String>,
}

/// Decoding options of a caption stage (the `glance caption` flags, snake_case).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CaptionSpec {
    pub prompt: Option<String>,
    /// Chat models: an instruction file (relative to the pipeline file) or a shipped preset.
    pub prompt_file: Option<String>,
    /// Chat models: a system message.
    pub system: Option<String>,
    /// Chat models: the pixel budget per image.
    pub max_pixels: Option<u64>,
    pub min_pixels: Option<u64>,
    /// Chat models: the most likely token, whatever the checkpoint's sampling settings.
    pub greedy: Option<bool>,
    /// The decoding options, named as the `glance caption` flags.
    #[serde(flatten)]
    pub generation: Overrides,
    /// "clip": keep the candidate `clip_model` scores highest.
    pub rerank: Option<String>,
    /// The judge of `rerank` (default: the zero-shot default model).
    pub clip_model: Option<String>,
}

impl CaptionSpec {
    /// The options over transformers' defaults (captioners).
    pub fn params(&self) -> GenerationParams {
        GenerationParams::default().with(&self.generation)
    }

    /// The options of a chat-model stage; `base` is the pipeline file's folder.
    fn chat_options(&self, base: &Path) -> Result<ChatOptions> {
        // A prompt file is found relative to the pipeline file first.
        let file = self
            .prompt_file
            .as_deref()
            .map(|spec| resolve(base, spec).to_string_lossy().into_owned());
        let instruction = prompts::choose_instruction(self.prompt.as_deref(), file.as_deref())?;
        Ok(ChatOptions {
            instruction,
            system: self.system.clone(),
            min_pixels: self.min_pixels,
            max_pixels: self.max_pixels,
            generation: self.generation.clone(),
            greedy: self.greedy.unwrap_or(false),
            quiet: true,
        })
    }
}

impl LabelSpec {
    /// Whether no labels, labels file or vocabulary is given.
    pub fn is_empty(&self) -> bool {
        self.labels.is_none() && self.labels_file.is_none() && self.vocab.is_none()
    }

    /// The label list: exactly one of `labels`, `labels_file`, `vocab` (for `label` stages, the
    /// shipped default vocabulary when none is given).
    pub fn labels(&self, base: &Path, default_vocab: Option<&str>) -> Result<Vec<String>> {
        let given = [
            self.labels.is_some(),
            self.labels_file.is_some(),
            self.vocab.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Error::Options(
                "give only one of labels, labels_file and vocab".into(),
            ));
        }
        let labels = if let Some(labels) = &self.labels {
            let labels: Vec<String> = labels.iter().map(|l| l.trim().to_string()).collect();
            prompts::check_labels(&labels, "labels")?;
            labels
        } else if let Some(file) = &self.labels_file {
            let path = resolve(base, file);
            let labels = prompts::read_list(&path)?;
            prompts::check_labels(&labels, &path.display().to_string())?;
            labels
        } else if let Some(vocab) = self.vocab.as_deref().or(default_vocab) {
            prompts::vocab(&resolve(base, vocab).to_string_lossy())?
        } else {
            return Err(Error::Options(
                "no labels: give labels, labels_file or vocab".into(),
            ));
        };
        Ok(labels)
    }

    /// The templates: `template`, else `templates` (next to the pipeline file when there), else
    /// none: the model's default.
    pub fn templates(&self, base: &Path) -> Result<Vec<String>> {
        let set = self
            .templates
            .as_deref()
            .map(|t| resolve(base, t).to_string_lossy().into_owned());
        prompts::choose_templates(self.template.as_deref(), set.as_deref())
    }
}

const COMMON_KEYS: &[&str] = &["task", "name", "model", "revision"];
const LABEL_KEYS: &[&str] = &["labels", "labels_file", "vocab", "template", "templates"];

/// Unknown keys in a `[[stage]]` are errors (a misspelt option must not be ignored); serde cannot
/// say so through the flattened option groups, so the keys are checked here.
fn check_stage_keys(doc: &toml::Table) -> std::result::Result<(), String> {
    let Some(toml::Value::Array(stages)) = doc.get("stage") else {
        return Ok(());
    };
    for (i, stage) in stages.iter().enumerate() {
        let Some(table) = stage.as_table() else {
            continue;
        };
        let task = table
            .get("task")
            .and_then(toml::Value::as_str)
            .unwrap_or("");
        let own: &[&str] = match task {
            "caption" => &[
                "prompt",
                "prompt_file",
                "system",
                "max_pixels",
                "min_pixels",
                "greedy",
                "max_new_tokens",
                "min_new_tokens",
                "num_beams",
                "length_penalty",
                "do_sample",
                "temperature",
                "top_k",
                "top_p",
                "seed",
                "repetition_penalty",
                "num_return_sequences",
                "rerank",
                "clip_model",
            ],
            "classify" => &["top_k", "multi_label", "threshold", "min_score"],
            "label" => &["threshold", "max_tags"],
            "detect" => &[
                "detect_task",
                "labels",
                "labels_file",
                "max_new_tokens",
                "num_beams",
            ],
            _ => continue, // serde names the bad task
        };
        for key in table.keys() {
            let known = COMMON_KEYS.contains(&key.as_str())
                || own.contains(&key.as_str())
                || (!matches!(task, "caption" | "detect") && LABEL_KEYS.contains(&key.as_str()));
            if !known {
                return Err(format!(
                    "stage {} ({task}) has an unknown option '{key}'",
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// `name` relative to `base` when that file exists there, else as given (a shipped name, or a
/// path relative to the working directory).
fn resolve(base: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_relative() && base.join(p).exists() {
        base.join(p)
    } else {
        p.to_path_buf()
    }
}

impl Pipeline {
    /// Parses pipeline text; `base` is the folder relative paths start from.
    pub fn parse(text: &str, base: &Path, source: &str) -> Result<Pipeline> {
        let bad = |m: String| Error::Options(format!("pipeline {source}: {m}"));
        let value: toml::Table = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        check_stage_keys(&value).map_err(bad)?;
        let mut p: Pipeline = value
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        if p.stages.is_empty() {
            return Err(Error::Options(format!(
                "pipeline {source} has no [[stage]]"
            )));
        }
        p.base = base.to_path_buf();
        p.source = source.to_string();
        Ok(p)
    }

    /// A pipeline file, or else a shipped preset of that name.
    pub fn load(spec: &str) -> Result<Pipeline> {
        let path = Path::new(spec);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let base = path.parent().unwrap_or(Path::new("."));
            return Self::parse(&text, base, &path.display().to_string());
        }
        Self::preset(spec)
    }

    /// A shipped preset by name.
    pub fn preset(name: &str) -> Result<Pipeline> {
        match PRESETS.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => Self::parse(text, Path::new("."), &format!("preset '{name}'")),
            None => Err(Error::Options(format!(
                "no pipeline file or preset '{name}'; presets: {}",
                preset_names().join(", ")
            ))),
        }
    }

    /// Each stage's name (its `name`, else its task).
    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(StageSpec::name).collect()
    }

    /// The field sidecars and COCO captions hold: `[output] text_field`, else the first stage's
    /// main field.
    pub fn text_field(&self) -> String {
        self.output
            .text_field
            .clone()
            .unwrap_or_else(|| self.stages[0].fields()[0].to_string())
    }

    /// CSV columns: `[output] csv_columns`, else `file`, each stage's main fields (prefixed by
    /// the stage name where an earlier stage has the same field, as in the records), `error`.
    pub fn csv_columns(&self) -> Vec<String> {
        if let Some(cols) = &self.output.csv_columns {
            return cols.clone();
        }
        let mut cols = vec!["file".to_string()];
        for stage in &self.stages {
            for f in stage.fields() {
                let col = if cols.iter().any(|c| c == f) {
                    format!("{}_{f}", stage.name())
                } else {
                    f.to_string()
                };
                cols.push(col);
            }
        }
        cols.push("error".into());
        cols
    }

    /// Loads every stage's model (text prompts are embedded here, once).
    pub fn build(&self, device: &Device, dtype: DType) -> Result<Vec<Box<dyn Stage>>> {
        self.stages
            .iter()
            .map(|s| s.build(&self.base, device, dtype))
            .collect()
    }
}

/// Names of the shipped presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

fn model_files(
    model: &Option<String>,
    revision: &Option<String>,
    default: &str,
) -> Result<ModelFiles> {
    let model = model.as_deref().unwrap_or(default);
    ModelFiles::new(ModelSource::parse(model, revision.as_deref()))
}

impl StageSpec {
    pub fn name(&self) -> String {
        let (name, task) = match self {
            StageSpec::Caption { name, .. } => (name, "caption"),
            StageSpec::Classify { name, .. } => (name, "classify"),
            StageSpec::Label { name, .. } => (name, "label"),
            StageSpec::Detect { name, .. } => (name, "detect"),
        };
        name.clone().unwrap_or_else(|| task.to_string())
    }

    /// The fields that matter in a table, first the one a sidecar would hold.
    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            StageSpec::Caption { .. } => &["caption"],
            StageSpec::Classify { .. } => &["label", "score"],
            StageSpec::Label { .. } => &["labels"],
            StageSpec::Detect { .. } => &["detections"],
        }
    }

    pub fn build(&self, base: &Path, device: &Device, dtype: DType) -> Result<Box<dyn Stage>> {
        match self {
            StageSpec::Caption {
                model,
                revision,
                options,
                ..
            } => {
                let files = model_files(model, revision, DEFAULT_CAPTION_MODEL)?;
                if is_chat_model(&read_json(&files.get("config.json")?)?) {
                    if options.rerank.is_some() {
                        return Err(Error::Options(format!(
                            "stage {}: rerank works with captioners, not yet with chat models",
                            self.name()
                        )));
                    }
                    let captioner = ChatCaptioner::load(&files, device, dtype)?;
                    let mut stage = ChatStage::new(captioner, options.chat_options(base)?)?;
                    stage.name = self.name();
                    return Ok(Box::new(stage));
                }
                let chat_only = [
                    ("prompt_file", options.prompt_file.is_some()),
                    ("system", options.system.is_some()),
                    ("max_pixels", options.max_pixels.is_some()),
                    ("min_pixels", options.min_pixels.is_some()),
                ];
                if let Some((key, _)) = chat_only.iter().find(|(_, given)| *given) {
                    return Err(Error::Options(format!(
                        "stage {}: {key} is for chat models (Qwen3-VL), not {}",
                        self.name(),
                        files.source().name()
                    )));
                }
                let captioner = Captioner::load(&files, device, dtype)?;
                let mut stage = CaptionStage::new(
                    captioner,
                    options.prompt.as_deref(),
                    options.params(),
                    options.generation.max_new_tokens,
                    options.generation.num_beams,
                )?;
                match options.rerank.as_deref() {
                    None => {}
                    Some("clip") => {
                        let judge_files =
                            model_files(&options.clip_model, &None, DEFAULT_ZERO_SHOT_MODEL)?;
                        let judge = crate::tasks::clip_score::ClipScorer::load(
                            &judge_files,
                            device,
                            dtype,
                        )?;
                        stage = stage.rerank_with(judge)?;
                    }
                    Some(other) => {
                        return Err(Error::Options(format!(
                            "stage {}: rerank = {other:?}; the only reranker is \"clip\"",
                            self.name()
                        )))
                    }
                }
                stage.name = self.name();
                Ok(Box::new(stage))
            }
            StageSpec::Classify {
                model,
                revision,
                labels,
                top_k,
                multi_label,
                threshold,
                min_score,
                ..
            } => {
                let files = model_files(model, revision, DEFAULT_ZERO_SHOT_MODEL)?;
                let m = load_recognizer(&files, device, dtype)?;
                let mode = Mode::Classify {
                    top_k: *top_k,
                    min_score: *min_score,
                    multi_label: multi_label
                        .then(|| threshold.unwrap_or_else(|| default_threshold(&m))),
                };
                let given = labels.labels(base, None);
                let classes = match (&m, given) {
                    (Recognizer::ClosedSet(_), Err(_)) if labels.is_empty() => None,
                    (_, given) => Some(given?),
                };
                let stage =
                    ClassifyStage::new(m, classes, &labels.templates(base)?, mode, self.name())?;
                Ok(Box::new(stage))
            }
            StageSpec::Label {
                model,
                revision,
                labels,
                threshold,
                max_tags,
                ..
            } => {
                let files = model_files(model, revision, DEFAULT_ZERO_SHOT_MODEL)?;
                let m = load_recognizer(&files, device, dtype)?;
                let mode = Mode::Label {
                    threshold: threshold.unwrap_or_else(|| default_threshold(&m)),
                    max_tags: *max_tags,
                };
                let tags = match &m {
                    Recognizer::ClosedSet(_) if labels.is_empty() => None,
                    _ => Some(labels.labels(base, Some(prompts::DEFAULT_VOCAB))?),
                };
                let stage =
                    ClassifyStage::new(m, tags, &labels.templates(base)?, mode, self.name())?;
                Ok(Box::new(stage))
            }
            StageSpec::Detect {
                model,
                revision,
                detect_task,
                labels,
                labels_file,
                max_new_tokens,
                num_beams,
                ..
            } => {
                let files = model_files(model, revision, DEFAULT_DETECT_MODEL)?;
                let phrases = match (labels, labels_file) {
                    (Some(l), _) => Some(l.clone()),
                    (None, Some(f)) => Some(prompts::read_list(&resolve(base, f))?),
                    (None, None) => None,
                };
                let captioner = Captioner::load(&files, device, dtype)?;
                let mut stage = crate::tasks::detect::DetectStage::new(
                    captioner,
                    detect_task,
                    phrases,
                    GenerationParams::default(),
                    *max_new_tokens,
                    *num_beams,
                )?;
                stage.name = self.name();
                Ok(Box::new(stage))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for name in preset_names() {
            let p = Pipeline::preset(name).unwrap();
            assert!(!p.stages.is_empty(), "{name}");
            assert!(p.csv_columns().contains(&"file".to_string()));
        }
        let err = Pipeline::preset("nope").unwrap_err().to_string();
        assert!(err.contains("caption-tags"), "{err}");
    }

    #[test]
    fn stages_columns_and_collisions() {
        let p = Pipeline::parse(
            r#"
            [[stage]]
            task = "classify"
            labels = ["indoor", "outdoor"]
            [[stage]]
            task = "classify"
            name = "season"
            labels = ["summer", "winter"]
            template = "a photo taken in {}."
            [[stage]]
            task = "caption"
            num_beams = 3
            "#,
            Path::new("."),
            "test",
        )
        .unwrap();
        assert_eq!(p.stage_names(), ["classify", "season", "caption"]);
        assert_eq!(
            p.csv_columns(),
            [
                "file",
                "label",
                "score",
                "season_label",
                "season_score",
                "caption",
                "error"
            ]
        );
        assert_eq!(p.text_field(), "label");
        let StageSpec::Caption { options, .. } = &p.stages[2] else {
            panic!()
        };
        assert_eq!(options.params().num_beams, 3);
    }

    #[test]
    fn bad_pipelines_are_explained() {
        let err = Pipeline::parse("[[stage]]\ntask = \"dance\"\n", Path::new("."), "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml") && err.contains("dance"), "{err}");
        let err = Pipeline::parse(
            "[[stage]]\ntask = \"label\"\nthreshhold = 0.2\n",
            Path::new("."),
            "p.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("threshhold"), "{err}");
        assert!(Pipeline::parse("", Path::new("."), "p.toml").is_err());
        let spec = LabelSpec {
            labels: Some(vec!["a".into()]),
            vocab: Some("coco".into()),
            ..LabelSpec::default()
        };
        assert!(spec.labels(Path::new("."), None).is_err());
    }
}
