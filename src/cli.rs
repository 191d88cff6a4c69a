//! Command-line flags, grouped and flattened into each subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use glance::device::{DTypeChoice, DeviceChoice};
use glance::inputs::Shard;
use glance::output::{Existing, Format};

/// The model glance uses when --model is absent (see the README for why).
pub const DEFAULT_CAPTION_MODEL: &str = "Salesforce/blip-image-captioning-base";

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
    /// Fetch a model's files into the Hugging Face cache, for later offline use.
    Download(DownloadArgs),
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hub model id (e.g. Salesforce/blip-image-captioning-large) or a local directory in Hugging Face layout.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Hub revision: branch, tag or commit.
    #[arg(long)]
    pub revision: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// Where to run: auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Precision of the weights and activations: auto (f32 on CPU, bf16 on GPU), f32, f16 or bf16.
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
    /// Process only shard K of N (1-based): a deterministic 1/N of the inputs.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Refuse images with more pixels than this (decompression-bomb guard; PIL's limit by default).
    #[arg(long, default_value_t = glance::image_io::DEFAULT_MAX_IMAGE_PIXELS)]
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
}

#[derive(Args, Debug)]
pub struct GenerationArgs {
    /// Conditional captioning: the caption continues this text (and includes it).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Most new tokens per caption (default: the model's max_length, 20 for BLIP, minus the prompt).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Fewest new tokens before the caption may end.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Beam search with this many beams (1 = greedy).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Beam search length penalty: > 0 favours longer captions, < 0 shorter.
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f32,
    /// Sample instead of choosing the most likely token.
    #[arg(long)]
    pub do_sample: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Sample among the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Sample among the most likely tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed for sampling (each image gets its own stream derived from it and its path).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Penalise tokens already in the caption (> 1 discourages repetition).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Captions per image (sampling or beam search); the first is `caption`, all are in `captions`.
    #[arg(long, default_value_t = 1)]
    pub num_return_sequences: usize,
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
