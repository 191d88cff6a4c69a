//! Parity with transformers on tiny random CLIP and SigLIP models (tests/fixtures/clip-tiny,
//! clip-tiny-legacy-eos and siglip-tiny, written by tests/fixtures/generate_clip.py): token ids,
//! pixel values, image and text embeddings, logits, probabilities and top-1 labels.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use glance::load::hub::{ModelFiles, ModelSource};
use glance::tasks::zero_shot::{load_image_text, ImageTextModel};

/// Pixel values in normalized units: bit-exact for PNGs and JPEGs alike (see blip_parity.rs).
const PNG_TOLERANCE: f32 = 1e-6;
const JPEG_TOLERANCE: f32 = PNG_TOLERANCE;
/// Embeddings and logits: max abs difference relative to the largest reference magnitude.
const FLOAT_TOLERANCE: f32 = 1e-4;
/// Probabilities: max abs difference.
const PROB_TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures").join(name)
}

fn load(dir: &Path) -> ImageTextModel {
    let files = ModelFiles::new(ModelSource::Local(dir.to_path_buf())).unwrap();
    load_image_text(&files, &Device::Cpu, DType::F32).unwrap()
}

fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    common::max_abs_diff(a, b) / common::max_abs(b).max(1.0)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn ids_tensor(rows: &[Vec<u32>]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn check_input_ids(name: &str) {
    let dir = fixture(name);
    let reference = common::reference(&dir);
    let model = load(&dir);
    let ours = model.tokenize(&strings(&reference["prompts"])).unwrap();
    assert_eq!(ours, ids(&reference["input_ids"]), "{name}: input_ids");
    if let Some(inputs) = reference["ensemble"]["inputs"].as_array() {
        for input in inputs {
            let template = input["template"].as_str().unwrap();
            let prompts: Vec<String> = strings(&reference["labels"])
                .iter()
                .map(|l| template.replace("{}", l))
                .collect();
            let ours = model.tokenize(&prompts).unwrap();
            assert_eq!(ours, ids(&input["input_ids"]), "{name}: {template}");
        }
    }
}

fn check_pixels(name: &str) {
    let dir = fixture(name);
    let reference = common::reference(&dir);
    let expected = &common::reference_tensors(&dir)["pixel_values"];
    let model = load(&dir);
    let images = common::shared_images();
    let mut worst = (0f32, 0f32);
    for (i, image) in strings(&reference["images"]).iter().enumerate() {
        let decoded = glance::preprocess::decode::decode(&images.join(image), u64::MAX).unwrap();
        let ours = model
            .pixels_to_tensor(&[model.preprocessor().apply(&decoded.rgb)])
            .unwrap();
        let diff = common::max_abs_diff(&ours.i(0).unwrap(), &expected.i(i).unwrap());
        let (tolerance, slot) = if image.ends_with(".jpg") {
            (JPEG_TOLERANCE, &mut worst.1)
        } else {
            (PNG_TOLERANCE, &mut worst.0)
        };
        *slot = slot.max(diff);
        assert!(
            diff <= tolerance,
            "{name} {image}: pixel values differ by {diff}"
        );
    }
    eprintln!(
        "{name}: pixel values max abs difference png {:e}, jpeg {:e}",
        worst.0, worst.1
    );
}

fn argmax_rows(t: &Tensor) -> Vec<u32> {
    t.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

/// Embeddings from the reference pixel values and token ids, then logits, probabilities, top-1.
fn check_embeddings_and_scores(name: &str) {
    let dir = fixture(name);
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let model = load(&dir);

    let image_embeds = model.embed_images(&tensors["pixel_values"]).unwrap();
    let diff = relative_diff(&image_embeds, &tensors["image_embeds"]);
    eprintln!("{name}: image_embeds max relative difference {diff:e}");
    assert!(
        diff < FLOAT_TOLERANCE,
        "{name}: image_embeds differ by {diff}"
    );

    let text_embeds = model.encode_texts(&strings(&reference["prompts"])).unwrap();
    let diff = relative_diff(&text_embeds, &tensors["text_embeds"]);
    eprintln!("{name}: text_embeds max relative difference {diff:e}");
    assert!(
        diff < FLOAT_TOLERANCE,
        "{name}: text_embeds differ by {diff}"
    );

    let logits = model.logits(&image_embeds, &text_embeds).unwrap();
    let diff = relative_diff(&logits, &tensors["logits_per_image"]);
    eprintln!("{name}: logits_per_image max relative difference {diff:e}");
    assert!(diff < FLOAT_TOLERANCE, "{name}: logits differ by {diff}");

    let probs = model.scores(&image_embeds, &text_embeds).unwrap();
    let diff = common::max_abs_diff(&probs, &tensors["probs"]);
    eprintln!("{name}: probs max abs difference {diff:e}");
    assert!(diff < PROB_TOLERANCE, "{name}: probs differ by {diff}");

    let expected: Vec<u32> = serde_json::from_value(reference["margins"]["top1"].clone()).unwrap();
    assert_eq!(argmax_rows(&probs), expected, "{name}: top-1 labels");
    assert_eq!(
        argmax_rows(&tensors["probs"]),
        expected,
        "{name}: reference top-1"
    );
}

/// The template ensemble: normalized per-template embeddings averaged, then re-normalized.
fn check_ensemble(name: &str) {
    let dir = fixture(name);
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let model = load(&dir);
    let labels = strings(&reference["labels"]);
    let templates = strings(&reference["ensemble"]["templates"]);
    let (ensemble, _) = model.ensemble_text_embeds(&labels, &templates).unwrap();
    let diff = relative_diff(&ensemble, &tensors["ensemble_text_embeds"]);
    eprintln!("{name}: ensemble_text_embeds max relative difference {diff:e}");
    assert!(
        diff < FLOAT_TOLERANCE,
        "{name}: ensemble embeds differ by {diff}"
    );
    let image_embeds = model.embed_images(&tensors["pixel_values"]).unwrap();
    let probs = model.scores(&image_embeds, &ensemble).unwrap();
    let diff = common::max_abs_diff(&probs, &tensors["ensemble_probs"]);
    eprintln!("{name}: ensemble_probs max abs difference {diff:e}");
    assert!(
        diff < PROB_TOLERANCE,
        "{name}: ensemble probs differ by {diff}"
    );
    assert_eq!(argmax_rows(&probs), argmax_rows(&tensors["ensemble_probs"]));
}

/// Ids without bos/eos, where the legacy (argmax id) and modern (first eos) rules pool
/// different positions.
fn check_probe_pooling(name: &str) {
    let dir = fixture(name);
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let model = load(&dir);
    let probe = ids_tensor(&ids(&reference["probe"]["probe_input_ids"]));
    let ours = model.encoder().embed_texts(&probe).unwrap();
    let diff = relative_diff(&ours, &tensors["probe_text_embeds"]);
    eprintln!("{name}: probe_text_embeds max relative difference {diff:e}");
    assert!(
        diff < FLOAT_TOLERANCE,
        "{name}: probe embeds differ by {diff}"
    );
}

#[test]
fn clip_input_ids_match_transformers_tokenizer() {
    check_input_ids("clip-tiny");
    check_input_ids("clip-tiny-legacy-eos");
}

#[test]
fn siglip_input_ids_pad_to_max_length_like_transformers() {
    check_input_ids("siglip-tiny");
}

#[test]
fn clip_preprocessing_matches_transformers_pil_processor() {
    check_pixels("clip-tiny");
    check_pixels("clip-tiny-legacy-eos");
}

#[test]
fn siglip_preprocessing_matches_transformers_pil_processor() {
    check_pixels("siglip-tiny");
}

#[test]
fn clip_embeddings_logits_and_probs_match() {
    check_embeddings_and_scores("clip-tiny");
}

#[test]
fn clip_legacy_eos_embeddings_logits_and_probs_match() {
    check_embeddings_and_scores("clip-tiny-legacy-eos");
}

#[test]
fn siglip_embeddings_logits_and_probs_match() {
    check_embeddings_and_scores("siglip-tiny");
}

#[test]
fn clip_template_ensemble_matches() {
    check_ensemble("clip-tiny");
    check_ensemble("clip-tiny-legacy-eos");
}

#[test]
fn clip_pools_first_eos_in_modern_configs() {
    check_probe_pooling("clip-tiny");
}

#[test]
fn clip_pools_argmax_id_in_legacy_eos_configs() {
    check_probe_pooling("clip-tiny-legacy-eos");
}

#[test]
fn siglip_text_attends_to_padding() {
    // A model that masked the padding would give these instead; they must differ clearly.
    let dir = fixture("siglip-tiny");
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let model = load(&dir);
    let ours = model.encode_texts(&strings(&reference["prompts"])).unwrap();
    let diff = common::max_abs_diff(&ours, &tensors["text_embeds_masked"]);
    assert!(diff > 0.1, "text embeds look masked: {diff}");
}

#[test]
fn captioner_rejects_image_text_models() {
    let files = ModelFiles::new(ModelSource::Local(fixture("clip-tiny"))).unwrap();
    let err = glance::tasks::caption::Captioner::load(&files, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("image-text model: use glance classify"),
        "{err}"
    );
}

#[test]
fn long_clip_prompts_truncate_to_max_positions_keeping_eos() {
    let model = load(&fixture("clip-tiny"));
    let long = vec!["a photo of a cat ".repeat(40), "a cat".to_string()];
    let ids = model.tokenize(&long).unwrap();
    assert_eq!(ids[0].len(), 77);
    assert_eq!(ids[1].len(), 77, "padded to the longest row");
    let eos = ids[1][3]; // [bos, a, cat, eos, pad…]
    assert_eq!(ids[0][76], eos, "truncation keeps the end-of-text token");
    let embeds = model.encode_texts(&long).unwrap();
    assert_eq!(embeds.dims(), &[2, 16]);
}

/// Every test above again with candle's ops only: the path `--device cuda` takes.
#[test]
fn parity_holds_with_candle_ops_only() {
    common::rerun_with_candle_ops_only();
}
