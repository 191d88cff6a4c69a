//! Parity with transformers on a tiny random BLIP (tests/fixtures/blip-tiny, written by
//! tests/fixtures/generate_blip.py): pixel values, image features, logits, and generated token
//! ids for greedy, prompted, beam and repetition-penalty decoding, batched and unbatched.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use glance::generation::GenerationParams;
use glance::load::hub::{ModelFiles, ModelSource};
use glance::tasks::caption::Captioner;

fn captioner() -> Captioner {
    let files = ModelFiles::new(ModelSource::Local(common::blip_tiny())).unwrap();
    Captioner::load(&files, &Device::Cpu, DType::F32).unwrap()
}

fn case_params(case: &serde_json::Value) -> GenerationParams {
    GenerationParams {
        max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
        min_new_tokens: case["min_new_tokens"].as_u64().unwrap_or(0) as usize,
        num_beams: case["num_beams"].as_u64().unwrap() as usize,
        length_penalty: case["length_penalty"].as_f64().unwrap() as f32,
        repetition_penalty: case["repetition_penalty"].as_f64().unwrap() as f32,
        ..GenerationParams::default()
    }
}

/// Pixel values against the committed PIL-processor output, in normalized units: bit-exact for
/// PNGs and JPEGs alike (glance re-implements Pillow's fixed-point resampling and decodes JPEGs
/// with libjpeg-turbo set up as Pillow sets it up).
const PNG_TOLERANCE: f32 = 1e-6;
const JPEG_TOLERANCE: f32 = PNG_TOLERANCE;
/// Image features and logits, f32 on both sides: max abs difference relative to the largest
/// reference magnitude (the tiny model's scaled embeddings make logits reach the tens).
const FLOAT_TOLERANCE: f32 = 1e-4;

fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    common::max_abs_diff(a, b) / common::max_abs(b).max(1.0)
}

#[test]
fn preprocessing_matches_transformers_pil_processor() {
    let dir = common::blip_tiny();
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let expected = &tensors["pixel_values"];
    let cap = captioner();
    let images = common::shared_images();
    for (i, name) in reference["images"].as_array().unwrap().iter().enumerate() {
        let name = name.as_str().unwrap();
        let decoded = glance::preprocess::decode::decode(&images.join(name), u64::MAX).unwrap();
        let ours = cap
            .pixels_to_tensor(&[cap.preprocessor().apply(&decoded.rgb)])
            .unwrap();
        let diff = common::max_abs_diff(&ours.i(0).unwrap(), &expected.i(i).unwrap());
        let tolerance = if name.ends_with(".jpg") {
            JPEG_TOLERANCE
        } else {
            PNG_TOLERANCE
        };
        assert!(diff <= tolerance, "{name}: pixel values differ by {diff}");
    }
}

#[test]
fn preprocessing_at_blip_base_size_matches() {
    let dir = common::blip_tiny();
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let cfg: glance::preprocess::PreprocessorConfig = serde_json::from_value(serde_json::json!({
        "size": {"height": 384, "width": 384}, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]
    }))
    .unwrap();
    let p = glance::preprocess::Preprocessor::new(cfg).unwrap();
    let images = common::shared_images();
    for (i, name) in reference["preprocess_384"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let name = name.as_str().unwrap();
        let decoded = glance::preprocess::decode::decode(&images.join(name), u64::MAX).unwrap();
        let px = Tensor::from_vec(p.apply(&decoded.rgb), (3, 384, 384), &Device::Cpu).unwrap();
        let sub: Vec<Tensor> = (0..3)
            .map(|c| {
                let rows: Vec<Tensor> = (0..16).map(|y| px.i((c, y * 24)).unwrap()).collect();
                let plane = Tensor::stack(&rows, 0).unwrap();
                let cols: Vec<Tensor> = (0..16).map(|x| plane.i((.., x * 24)).unwrap()).collect();
                Tensor::stack(&cols, 1).unwrap()
            })
            .collect();
        let sub = Tensor::stack(&sub, 0).unwrap();
        let expected = tensors["pixel_values_384_sub"].i(i).unwrap();
        let tolerance = if name.ends_with(".jpg") {
            JPEG_TOLERANCE
        } else {
            PNG_TOLERANCE
        };
        let diff = common::max_abs_diff(&sub, &expected);
        assert!(
            diff <= tolerance,
            "{name} at 384: pixel values differ by {diff}"
        );
    }
}

#[test]
fn image_features_and_first_logits_match() {
    let dir = common::blip_tiny();
    let tensors = common::reference_tensors(&dir);
    let cap = captioner();
    let features = cap.encode(&tensors["pixel_values"]).unwrap();
    let diff = relative_diff(&features, &tensors["image_embeds"]);
    eprintln!("image_embeds: max relative difference {diff:e}");
    assert!(
        diff < FLOAT_TOLERANCE,
        "image_embeds differ by {diff} (relative)"
    );
    let logits = glance_first_logits(&cap, &tensors["image_embeds"]);
    let diff = relative_diff(&logits, &tensors["first_step_logits"]);
    eprintln!("first-step logits: max relative difference {diff:e}");
    assert!(
        diff < FLOAT_TOLERANCE,
        "first-step logits differ by {diff} (relative)"
    );
}

fn glance_first_logits(cap: &Captioner, features: &Tensor) -> Tensor {
    cap.first_step_logits(features, &cap.prompt_ids(None).unwrap())
        .unwrap()
}

/// Runs every reference case at each batch size; every sequence must equal transformers'.
fn check_cases(batch_sizes: &[usize]) {
    let dir = common::blip_tiny();
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let pixels = &tensors["pixel_values"];
    let n = pixels.dim(0).unwrap();
    let cap = captioner();
    let stop = cap.stop_tokens().clone();
    let mut mismatches = Vec::new();
    let mut total = 0;
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let params = case_params(case);
        let prompt_ids = cap.prompt_ids(case["prompt"].as_str()).unwrap();
        for &bs in batch_sizes {
            let mut start = 0;
            while start < n {
                let len = bs.min(n - start);
                let batch = pixels.narrow(0, start, len).unwrap();
                let seeds = vec![0; len];
                let got = cap.caption(&batch, &prompt_ids, &params, &seeds).unwrap();
                for (j, caps) in got.iter().enumerate() {
                    let i = start + j;
                    let expected: Vec<u32> = case["sequences"][i]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_u64().unwrap() as u32)
                        .collect();
                    let expected = common::strip_padding(&expected, stop.pad, &stop.eos);
                    total += 1;
                    if caps[0].tokens != expected {
                        mismatches.push(format!(
                            "{name} batch {bs} image {i}: got {:?}, transformers {:?}",
                            caps[0].tokens, expected
                        ));
                    } else {
                        assert_eq!(
                            caps[0].text,
                            case["captions"][i].as_str().unwrap(),
                            "{name} image {i} text"
                        );
                    }
                }
                start += len;
            }
        }
    }
    eprintln!(
        "{} of {total} sequences identical to transformers",
        total - mismatches.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn captions_match_transformers_unbatched() {
    check_cases(&[1]);
}

#[test]
fn batched_captions_equal_unbatched_and_transformers() {
    check_cases(&[4, 11]);
}

#[test]
fn prompt_keeps_bos_and_drops_trailing_sep() {
    let dir = common::blip_tiny();
    let reference = common::reference(&dir);
    let cap = captioner();
    let ids = cap.prompt_ids(Some("a photography of")).unwrap();
    let mut expected: Vec<u32> = reference["prompt_input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    expected[0] = reference["special_tokens"]["bos_dec"].as_u64().unwrap() as u32;
    expected.pop();
    assert_eq!(ids, expected);
}

/// Sampling cannot be compared with transformers (different random streams), but it must be
/// reproducible for a seed and independent of how images are batched — including when the
/// samples of one image finish at different steps.
#[test]
fn sampling_is_reproducible_and_independent_of_batching() {
    let tensors = common::reference_tensors(&common::blip_tiny());
    let pixels = &tensors["pixel_values"];
    let n = pixels.dim(0).unwrap();
    let cap = captioner();
    let prompt = cap.prompt_ids(None).unwrap();
    let params = GenerationParams {
        do_sample: true,
        num_return_sequences: 3,
        max_new_tokens: 12,
        top_k: 20,
        top_p: 0.9,
        temperature: 1.5,
        ..GenerationParams::default()
    };
    let seeds: Vec<u64> = (0..n as u64).map(|i| 1000 + i).collect();
    let batched = cap.caption(pixels, &prompt, &params, &seeds).unwrap();
    let mut lengths = std::collections::HashSet::new();
    for i in 0..n {
        let one = cap
            .caption(
                &pixels.narrow(0, i, 1).unwrap(),
                &prompt,
                &params,
                &seeds[i..=i],
            )
            .unwrap();
        assert_eq!(one[0], batched[i], "image {i}");
        lengths.extend(batched[i].iter().map(|c| c.tokens.len()));
    }
    assert!(
        lengths.len() > 1,
        "samples should end at different steps to exercise ragged batches"
    );
    let reseeded: Vec<u64> = seeds.iter().map(|s| s + 1).collect();
    assert_ne!(
        cap.caption(pixels, &prompt, &params, &reseeded).unwrap(),
        batched
    );
}

/// A checkpoint split into shards with `model.safetensors.index.json` loads to the same model.
#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let src = common::blip_tiny();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let subset: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&subset, dir.path().join(shard)).unwrap();
        for n in part.iter() {
            weight_map.insert((*n).clone(), shard.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let files = ModelFiles::new(ModelSource::Local(dir.path().to_path_buf())).unwrap();
    let sharded = Captioner::load(&files, &Device::Cpu, DType::F32).unwrap();
    let pixels = &common::reference_tensors(&src)["pixel_values"];
    let params = GenerationParams {
        max_new_tokens: 12,
        ..GenerationParams::default()
    };
    let prompt = sharded.prompt_ids(None).unwrap();
    let seeds = vec![0; pixels.dim(0).unwrap()];
    assert_eq!(
        sharded.caption(pixels, &prompt, &params, &seeds).unwrap(),
        captioner()
            .caption(pixels, &prompt, &params, &seeds)
            .unwrap()
    );
}

/// Every test above again with candle's ops only: the path `--device cuda` takes.
#[test]
fn parity_holds_with_candle_ops_only() {
    common::rerun_with_candle_ops_only();
}
