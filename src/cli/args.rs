//! Command-line flags, grouped and flattened into each subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use glance::device::{DTypeChoice, DeviceChoice};
use glance::output::{Existing, Format};
use glance::run::inputs::{ShardArg, ShardBy};

pub use glance::run::pipeline::{DEFAULT_CAPTION_MODEL, DEFAULT_ZERO_SHOT_MODEL};

#[derive(Parser, Debug)]
#[command(
    name = "glance",
    version,
    args_override_self = true,
    about = "Caption, classify and label folders of images with Hugging Face vision-language models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe each image in words with an image-captioning model (BLIP, ...).
    Caption(Box<CaptionArgs>),
    /// Sort each image into one of the classes you name, zero-shot (CLIP, SigLIP).
    Classify(Box<ClassifyArgs>),
    /// Tag each image with every word of a vocabulary that fits it, zero-shot (CLIP, SigLIP).
    Label(Box<LabelArgs>),
    /// Find objects, regions, phrases or text in each image, as boxes (Florence-2).
    Detect(Box<DetectArgs>),
    /// Run a pipeline file (or a shipped preset): several stages over each image in one pass.
    Run(Box<PipelineArgs>),
    /// Measure quality: caption metrics and CLIPScore, classification accuracy and F1.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Serve the models over HTTP: captions, classes, tags, boxes, embeddings and
    /// OpenAI-compatible chat, with dynamic batching and a web page at /.
    Serve(Box<ServeArgs>),
    /// Fetch a model's files into the Hugging Face cache, for later offline use.
    Download(DownloadArgs),
    /// Merge the outputs of a sharded job's tasks into one, in input order, checking with
    /// --inputs that every image appears exactly once.
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The parts: output files of the shards (any mix of jsonl, json, csv, coco, labelstudio).
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// The merged output; its format from --format or its extension.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// jsonl, json, csv, coco or labelstudio.
    #[arg(long)]
    pub format: Option<Format>,
    /// The inputs the job was given, written the same way (e.g. the same directory argument):
    /// the result follows their order, and images missing from every part or present twice are
    /// reported and fail the merge (exit 1).
    #[arg(long, num_args = 1.., value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Write the result even when images are missing or appear twice (one record each).
    #[arg(long)]
    pub allow_missing: bool,
    /// The record field a COCO part's captions are (caption, or a pipeline stage's).
    #[arg(long, default_value = "caption", value_name = "FIELD")]
    pub field: String,
    /// COCO: write each file_name relative to DIR (default: the directory the inputs share).
    #[arg(long, value_name = "DIR")]
    pub coco_root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hub model id (e.g. Salesforce/blip-image-captioning-large) or a local directory in Hugging Face layout.
    #[arg(long, short = 'm', conflicts_with = "pipeline")]
    pub model: Option<String>,
    /// Hub revision: branch, tag or commit.
    #[arg(long, conflicts_with = "pipeline")]
    pub revision: Option<String>,
    /// Run a pipeline preset (see pipelines/) or file instead; its stages bring their own models and options.
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// Where to run: auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Precision: auto (f32 on CPU, bf16 on GPU), f32, f16 or bf16. On a CPU with AVX512-BF16,
    /// bf16 runs the linear layers' matrix products in bf16 (f32 sums) and keeps everything else
    /// in f32: about twice as fast, captions and scores close to f32's but not identical. Other
    /// CPUs have no bf16 path and refuse it.
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeChoice,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Images, directories (searched recursively) or - to read paths from standard input.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 8)]
    pub batch_size: usize,
    /// Process only shard K of N (1-based), or `auto`: the shard of this Slurm array task
    /// (SLURM_ARRAY_TASK_ID/_MIN/_COUNT) or Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX).
    #[arg(long, value_name = "K/N|auto")]
    pub shard: Option<ShardArg>,
    /// How inputs go to shards: hash (of the path relative to its input directory: adding files
    /// moves none of the others) or position (exactly balanced for a fixed list).
    #[arg(long, default_value = "hash", value_name = "hash|position")]
    pub shard_by: ShardBy,
    /// With --shard auto in a Kubernetes Indexed Job: the number of shards (the Job's
    /// completions); GLANCE_SHARD_COUNT works too.
    #[arg(long, value_name = "N")]
    pub shard_count: Option<usize>,
    /// Refuse images with more pixels than this (decompression-bomb guard; PIL's limit by default).
    #[arg(long, default_value_t = glance::preprocess::decode::DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,
    /// No progress bar, no summary line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Output file (standard output when absent).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// jsonl, json, csv, coco or txt (sidecar files next to the images); inferred from -o's extension.
    #[arg(long)]
    pub format: Option<Format>,
    /// Extension of sidecar files with --format txt.
    #[arg(long, default_value = "txt")]
    pub sidecar_ext: String,
    /// What to do with sidecar files that already exist: skip, overwrite, append or prefix.
    #[arg(long, default_value = "skip")]
    pub existing: Existing,
    /// Continue an interrupted run: inputs already in the output file are skipped.
    #[arg(long)]
    pub resume: bool,
    /// Label Studio: name of the <Choices> control that receives labels.
    #[arg(long, default_value = "choice", value_name = "NAME")]
    pub ls_from_name: String,
    /// Label Studio: name of the <TextArea> control that receives captions.
    #[arg(long, default_value = "caption", value_name = "NAME")]
    pub ls_caption_name: String,
    /// Label Studio: name of the <Image> object the controls refer to.
    #[arg(long, default_value = "image", value_name = "NAME")]
    pub ls_to_name: String,
    /// Label Studio: put this in front of each file in data.image (e.g. /data/local-files/?d=).
    #[arg(long, default_value = "", value_name = "PREFIX")]
    pub ls_url_prefix: String,
    /// COCO: write each file_name relative to DIR (default: the directory the inputs share).
    #[arg(long, value_name = "DIR")]
    pub coco_root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SortArgs {
    /// Put each image into DIR/<label>/ (and DIR/unknown/); never overwrites a different file.
    #[arg(long, value_name = "DIR")]
    pub sort_into: Option<PathBuf>,
    /// With --sort-into: copy the images (the default).
    #[arg(long, requires = "sort_into", conflicts_with_all = ["move_files", "link"])]
    pub copy: bool,
    /// With --sort-into: move the images.
    #[arg(
        long = "move",
        id = "move_files",
        requires = "sort_into",
        conflicts_with = "link"
    )]
    pub move_files: bool,
    /// With --sort-into: make symbolic links to the images.
    #[arg(long, requires = "sort_into")]
    pub link: bool,
}

#[derive(Args, Debug)]
pub struct PromptArgs {
    /// One prompt template, {} standing for the label ("{}" alone: the label as written).
    #[arg(long, conflicts_with = "templates")]
    pub template: Option<String>,
    /// A template ensemble: a file with one template per line, or a shipped set (default, single).
    /// Default: the shipped "default" ensemble (prompts/README.md).
    #[arg(long, value_name = "FILE")]
    pub templates: Option<String>,
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub sort: SortArgs,
    /// The classes, comma-separated: --labels "cat,dog,bird" (zero-shot models; a closed-set
    /// classifier such as microsoft/resnet-50 uses its own).
    #[arg(long, conflicts_with = "labels_file")]
    pub labels: Option<String>,
    /// The classes, one per line (# comments and blank lines ignored).
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    /// How many of the best classes to list under "predictions".
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Score each class on its own (SigLIP: sigmoid probability; CLIP: cosine similarity) and list
    /// all that reach --threshold under "labels".
    #[arg(long)]
    pub multi_label: bool,
    /// With --multi-label: the score a class needs (default 0.1 for SigLIP, 0.25 for CLIP).
    #[arg(long, requires = "multi_label", allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// Below this best score the label is "unknown".
    #[arg(long, allow_negative_numbers = true)]
    pub min_score: Option<f32>,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The tags: a file with one per line, or a shipped vocabulary (everyday, coco); default
    /// everyday (a closed-set classifier uses its own classes).
    #[arg(long, value_name = "FILE")]
    pub vocab: Option<String>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    /// The score a tag needs (SigLIP: sigmoid probability, default 0.1; CLIP: cosine similarity, default 0.25).
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// At most this many tags per image, best first.
    #[arg(long, default_value_t = glance::tasks::classify::DEFAULT_MAX_TAGS)]
    pub max_tags: usize,
}

#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// A pipeline file (TOML) or the name of a shipped preset (caption-tags, coco-annotate, sort-photos).
    pub pipeline: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub sort: SortArgs,
}

#[derive(Args, Debug)]
pub struct GenerationArgs {
    /// Chat models (Qwen3-VL): the instruction, default the "caption" preset. Captioners (BLIP,
    /// encoder–decoders): a prefix the caption continues (and includes).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Chat models: the instruction from a file, or a shipped preset by name: caption (one
    /// sentence), detailed, tags, training (prompts/README.md).
    #[arg(long, value_name = "FILE|NAME", conflicts_with = "prompt")]
    pub prompt_file: Option<String>,
    /// Chat models: a system message before the image and instruction.
    #[arg(long)]
    pub system: Option<String>,
    /// Chat models: resize larger images to at most this many pixels, keeping the aspect ratio
    /// (default 1048576, about 1k image tokens, or the model's own limit if lower; the
    /// checkpoints allow 16.7 M, about 16k tokens and much slower).
    #[arg(long, value_name = "N")]
    pub max_pixels: Option<u64>,
    /// Chat models: enlarge smaller images to at least this many pixels (default: the model's).
    #[arg(long, value_name = "N")]
    pub min_pixels: Option<u64>,
    /// Most new tokens per caption (default: the model's generation_config; max_length 20 in
    /// all for BLIP; 256 for chat models). Records of chat models say "truncated" when a reply
    /// reached it.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Fewest new tokens before the caption may end.
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    /// Beam search with this many beams (1 = greedy; default: the model's generation_config, else 1).
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// Beam search length penalty: > 0 favours longer captions, < 0 shorter.
    #[arg(long)]
    pub length_penalty: Option<f32>,
    /// Sample instead of choosing the most likely token (chat models sample by default when
    /// their generation_config says so, as Qwen3-VL's does).
    #[arg(long)]
    pub do_sample: bool,
    /// Always take the most likely token, whatever the model's generation_config says.
    #[arg(long, conflicts_with = "do_sample")]
    pub greedy: bool,
    /// Sampling temperature (default: the model's generation_config, else 1).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample among the K most likely tokens, 0 = all (default: the model's, else 50).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens holding this much probability (default: the model's,
    /// else 1).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed for sampling (each image gets its own stream derived from it and its path).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Penalise tokens already in the prompt and caption, > 1 discourages repetition (default:
    /// the model's, else 1).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Captions per image (sampling or beam search); the first is `caption`, all are in `captions`.
    #[arg(long, default_value_t = 1)]
    pub num_return_sequences: usize,
}

impl GenerationArgs {
    /// The choices the user made, over a model's defaults.
    pub fn overrides(&self) -> glance::generation::Overrides {
        glance::generation::Overrides {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            do_sample: self.do_sample.then_some(true),
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            num_return_sequences: Some(self.num_return_sequences),
            seed: Some(self.seed),
        }
    }
}

#[derive(Args, Debug)]
pub struct RerankArgs {
    /// Generate several candidates (--num-return-sequences N, or N beams) and keep the one the
    /// judge scores highest (CLIPScore); records get "clip_score", and "clip_scores" for all.
    #[arg(long, value_parser = ["clip"])]
    pub rerank: Option<String>,
    /// The judge for --rerank clip: a CLIP or SigLIP model (Hub id or local directory).
    #[arg(long, value_name = "MODEL", requires = "rerank", default_value = DEFAULT_ZERO_SHOT_MODEL)]
    pub clip_model: String,
    /// Hub revision of --clip-model.
    #[arg(long, requires = "rerank")]
    pub clip_revision: Option<String>,
}

#[derive(Args, Debug)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub generation: GenerationArgs,
    #[command(flatten)]
    pub rerank: RerankArgs,
    /// Florence-2: caption, detailed, more-detailed (the default) or ocr. --prompt "<TASK>"
    /// passes a task token as it is (a fine-tune's own, e.g. <GENERATE_TAGS>).
    #[arg(long, conflicts_with = "prompt")]
    pub task: Option<String>,
}

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// od (objects with category names), dense-region (regions with descriptions), grounding
    /// (boxes for each phrase of --labels) or ocr-region (text with its quadrilateral).
    #[arg(long, default_value = "od")]
    pub task: String,
    /// The phrases to find, comma-separated (--task grounding).
    #[arg(long, conflicts_with = "labels_file")]
    pub labels: Option<String>,
    /// The phrases to find, one per line (--task grounding).
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,
    /// Also write a copy of each image with its boxes and labels drawn into DIR.
    #[arg(long, value_name = "DIR")]
    pub draw: Option<PathBuf>,
    /// Most new tokens per image (default 1024).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Fewest new tokens before the answer may end (benchmarks pin lengths with it).
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    /// Beams (default: the model's generation_config, 3 for Florence-2).
    #[arg(long)]
    pub num_beams: Option<usize>,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Hub model id.
    #[arg(default_value = DEFAULT_CAPTION_MODEL)]
    pub model: String,
    /// Hub revision: branch, tag or commit.
    #[arg(long)]
    pub revision: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// BLEU-1..4, ROUGE-L and CIDEr-D of caption records against COCO captions references, as the
    /// COCO caption evaluation toolkit computes them; CLIPScore and RefCLIPScore with --clip-model.
    Captions(Box<EvalCaptionsArgs>),
    /// Accuracy (top-1, top-k), per-class and macro precision/recall/F1 and a confusion matrix of
    /// classify records against ground truth (a folder per class, or a CSV of file,label).
    Classify(EvalClassifyArgs),
}

#[derive(Args, Debug)]
pub struct EvalCaptionsArgs {
    /// glance caption records (JSONL with "file" and "caption").
    #[arg(long)]
    pub predictions: PathBuf,
    /// COCO captions JSON (images with file_name, annotations with caption), matched by file name.
    #[arg(long, required_unless_present = "clip_model")]
    pub references: Option<PathBuf>,
    /// json (one object) or table.
    #[arg(long, default_value = "table", value_parser = ["json", "table"])]
    pub format: String,
    /// Also compute CLIPScore (and RefCLIPScore, with --references) with this CLIP or SigLIP model
    /// (Hub id or local directory).
    #[arg(long, value_name = "MODEL")]
    pub clip_model: Option<String>,
    /// Hub revision of --clip-model.
    #[arg(long, requires = "clip_model")]
    pub clip_revision: Option<String>,
    /// Folder holding the images, found by file name (default: each record's "file" as written,
    /// relative to the working directory or the predictions file).
    #[arg(long, value_name = "DIR", requires = "clip_model")]
    pub images: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct EvalClassifyArgs {
    /// glance classify records (JSONL with "file", "label" and "predictions").
    #[arg(long)]
    pub predictions: PathBuf,
    /// Ground truth: a folder with one sub-folder of images per class, or a CSV with columns
    /// file,label.
    #[arg(long, value_name = "DIR|CSV")]
    pub truth: PathBuf,
    /// Also report top-K accuracy (from the records' "predictions" lists).
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// json (one object) or table.
    #[arg(long, default_value = "table", value_parser = ["json", "table"])]
    pub format: String,
    /// Draw the confusion matrix as a PNG heat-map here.
    #[arg(long, value_name = "PNG")]
    pub heatmap: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model to serve (Hub id or local directory); repeat for several. Each serves the tasks
    /// its architecture can do; a request names one with "model" when several could.
    #[arg(long, short = 'm', required = true)]
    pub model: Vec<String>,
    /// Hub revision, for every --model.
    #[arg(long)]
    pub revision: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0 picks a free one; the ready line says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Images per forward pass, at most; a batch is whatever queued while the model was busy.
    #[arg(long, default_value_t = 8)]
    pub max_batch_size: usize,
    /// Images queued or running at once, all models together; beyond it requests get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// The largest request body (413 beyond it).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Images above this many pixels are refused (a per-image error).
    #[arg(long, default_value_t = glance::preprocess::decode::DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,
    /// Requests must send "Authorization: Bearer KEY" (/ and /health excepted).
    #[arg(long, env = "GLANCE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Fetch http(s):// image URLs (at most 20 MB, 10 s and 3 redirects; never private,
    /// loopback or link-local addresses).
    #[arg(long)]
    pub allow_url_fetch: bool,
    /// Seconds a whole request may take (408 beyond it).
    #[arg(long, default_value_t = 300)]
    pub request_timeout: u64,
}
