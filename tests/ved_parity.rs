//! Parity with transformers on tiny random `VisionEncoderDecoderModel` captioners and
//! `*ForImageClassification` models (tests/fixtures/*-tiny, written by
//! tests/fixtures/generate_ved.py): pixel values, encoder states, first-step logits, generated
//! token ids (greedy, min length, beams, length penalty, repetition penalty; unbatched and
//! batched), and classifier logits.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use glance::generation::GenerationParams;
use glance::load::hub::{ModelFiles, ModelSource};
use glance::tasks::caption::Captioner;
use glance::tasks::classify::{load_recognizer, Recognizer};

/// Pixel values in normalized units: bit-exact for PNGs and JPEGs alike (see blip_parity.rs).
const PNG_TOLERANCE: f32 = 1e-6;
const JPEG_TOLERANCE: f32 = PNG_TOLERANCE;
/// Encoder states and logits: max abs difference relative to the largest reference magnitude.
const FLOAT_TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures").join(name)
}

/// The captioning fixtures present (the CNN one is whichever the generator could make).
fn captioners() -> Vec<PathBuf> {
    let names = [
        "vit-gpt2-tiny",
        "vit-bert-tiny",
        "convnext-gpt2-tiny",
        "resnet-gpt2-tiny",
        "swin-gpt2-tiny",
    ];
    let found: Vec<PathBuf> = names
        .iter()
        .map(|n| fixture(n))
        .filter(|p| p.is_dir())
        .collect();
    assert!(!found.is_empty(), "captioning fixtures missing");
    found
}

fn load(dir: &Path) -> Captioner {
    let files = ModelFiles::new(ModelSource::Local(dir.to_path_buf())).unwrap();
    Captioner::load(&files, &Device::Cpu, DType::F32).unwrap()
}

fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    common::max_abs_diff(a, b) / common::max_abs(b).max(1.0)
}

fn check_pixels(dir: &Path, preprocess: &dyn Fn(&image::RgbImage) -> Tensor) {
    let reference = common::reference(dir);
    let expected = &common::reference_tensors(dir)["pixel_values"];
    for (i, name) in reference["images"].as_array().unwrap().iter().enumerate() {
        let name = name.as_str().unwrap();
        let decoded =
            glance::preprocess::decode::decode(&common::shared_images().join(name), u64::MAX)
                .unwrap();
        let ours = preprocess(&decoded.rgb);
        let diff = common::max_abs_diff(&ours, &expected.i(i).unwrap());
        let tolerance = if name.ends_with(".jpg") {
            JPEG_TOLERANCE
        } else {
            PNG_TOLERANCE
        };
        assert!(
            diff <= tolerance,
            "{}: {name}: pixel values differ by {diff}",
            dir.display()
        );
    }
}

#[test]
fn captioner_pixels_states_and_logits_match() {
    for dir in captioners() {
        let cap = load(&dir);
        check_pixels(&dir, &|rgb| {
            cap.pixels_to_tensor(&[cap.preprocessor().apply(rgb)])
                .unwrap()
                .i(0)
                .unwrap()
        });
        let tensors = common::reference_tensors(&dir);
        let states = cap.encode(&tensors["pixel_values"]).unwrap();
        let expected = tensors
            .get("encoder_hidden_states_projected")
            .unwrap_or(&tensors["encoder_last_hidden_state"]);
        let diff = relative_diff(&states, expected);
        eprintln!(
            "{}: encoder states max relative difference {diff:e}",
            dir.display()
        );
        assert!(
            diff < FLOAT_TOLERANCE,
            "{}: encoder states differ by {diff}",
            dir.display()
        );
        let logits = cap
            .first_step_logits(&states, &cap.prompt_ids(None).unwrap())
            .unwrap();
        let diff = relative_diff(&logits, &tensors["first_step_logits"]);
        eprintln!(
            "{}: first-step logits max relative difference {diff:e}",
            dir.display()
        );
        assert!(
            diff < FLOAT_TOLERANCE,
            "{}: logits differ by {diff}",
            dir.display()
        );
    }
}

/// The case's options; a case without `max_new_tokens` runs on the model's defaults
/// (`generation_config.json`), as `generate(pixel_values)` does.
fn case_params(case: &serde_json::Value, cap: &Captioner, prompt_len: usize) -> GenerationParams {
    let max_new_tokens = case["max_new_tokens"]
        .as_u64()
        .map_or_else(|| cap.default_max_new_tokens(prompt_len), |n| n as usize);
    GenerationParams {
        max_new_tokens,
        min_new_tokens: case["min_new_tokens"].as_u64().unwrap_or(0) as usize,
        num_beams: case["num_beams"].as_u64().unwrap_or(1) as usize,
        length_penalty: case["length_penalty"].as_f64().unwrap_or(1.0) as f32,
        repetition_penalty: case["repetition_penalty"].as_f64().unwrap_or(1.0) as f32,
        ..GenerationParams::default()
    }
}

fn check_cases(batch_sizes: &[usize]) {
    let mut report = Vec::new();
    for dir in captioners() {
        let reference = common::reference(&dir);
        let pixels = common::reference_tensors(&dir)["pixel_values"].clone();
        let n = pixels.dim(0).unwrap();
        let cap = load(&dir);
        let stop = cap.stop_tokens().clone();
        let prompt = cap.prompt_ids(None).unwrap();
        let (mut total, mut mismatches) = (0, Vec::new());
        for case in reference["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let params = case_params(case, &cap, prompt.len());
            for &bs in batch_sizes {
                for start in (0..n).step_by(bs) {
                    let len = bs.min(n - start);
                    let batch = pixels.narrow(0, start, len).unwrap();
                    let got = cap
                        .caption(&batch, &prompt, &params, &vec![0; len])
                        .unwrap();
                    for (j, caps) in got.iter().enumerate() {
                        let i = start + j;
                        let expected: Vec<u32> =
                            serde_json::from_value(case["sequences"][i].clone()).unwrap();
                        let expected = common::strip_padding(&expected, stop.pad, &stop.eos);
                        total += 1;
                        let generated = &caps[0].tokens[prompt.len()..];
                        if generated != expected.as_slice() {
                            mismatches.push(format!("{name} batch {bs} image {i}: got {generated:?}, transformers {expected:?}"));
                        } else {
                            assert_eq!(
                                caps[0].text,
                                case["captions"][i].as_str().unwrap(),
                                "{name} image {i} text"
                            );
                        }
                    }
                }
            }
        }
        report.push(format!(
            "{}: {} of {total} identical",
            dir.display(),
            total - mismatches.len()
        ));
        assert!(
            mismatches.is_empty(),
            "{}:\n{}",
            dir.display(),
            mismatches.join("\n")
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn captions_match_transformers_unbatched() {
    check_cases(&[1]);
}

#[test]
fn batched_captions_match_transformers() {
    check_cases(&[4, 11]);
}

#[test]
fn classifier_pixels_and_logits_match() {
    for name in ["vit-cls-tiny", "resnet-cls-tiny", "convnext-cls-tiny"] {
        let dir = fixture(name);
        let files = ModelFiles::new(ModelSource::Local(dir.clone())).unwrap();
        let Recognizer::ClosedSet(model) =
            load_recognizer(&files, &Device::Cpu, DType::F32).unwrap()
        else {
            panic!("{name} should load as a closed-set classifier");
        };
        check_pixels(&dir, &|rgb| {
            let (h, w) = model.preprocessor().output_size();
            Tensor::from_vec(
                model.preprocessor().apply(rgb),
                (3, h as usize, w as usize),
                &Device::Cpu,
            )
            .unwrap()
        });
        let reference = common::reference(&dir);
        let tensors = common::reference_tensors(&dir);
        let expected = &tensors["logits"];
        let pixels: Vec<Vec<f32>> = (0..expected.dim(0).unwrap())
            .map(|i| {
                tensors["pixel_values"]
                    .i(i)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        let slices: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
        let logits = model.logits(&slices).unwrap();
        let diff = relative_diff(&logits, expected);
        eprintln!("{name}: logits max relative difference {diff:e}");
        assert!(diff < FLOAT_TOLERANCE, "{name}: logits differ by {diff}");
        let labels: Vec<String> = (0..model.labels().len())
            .map(|i| {
                reference["id2label"][i.to_string()]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(model.labels(), labels.as_slice(), "{name}: id2label order");
        let top1: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        let want: Vec<u32> = serde_json::from_value(reference["top1"].clone()).unwrap();
        assert_eq!(top1, want, "{name}: top-1 classes");
    }
}

/// Every test above again with candle's ops only: the path `--device cuda` takes.
#[test]
fn parity_holds_with_candle_ops_only() {
    common::rerun_with_candle_ops_only();
}

/// A copy of a fixture whose `generation_config.json` also sets `rules`.
fn with_rules(dir: &Path, rules: &serde_json::Value) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = copy.path().join("generation_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in rules.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(&path, config.to_string()).unwrap();
    copy
}

#[test]
fn generation_config_token_rules_match_transformers() {
    // tests/fixtures/generate_rules.py: bad words, no-repeat n-grams, suppressed and forced
    // tokens set in generation_config.json, each changing some of transformers' captions.
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("rules/reference.json")).unwrap())
            .unwrap();
    let (mut total, mut mismatches) = (0, Vec::new());
    for model in reference["models"].as_array().unwrap() {
        let src = fixture(model["fixture"].as_str().unwrap());
        let pixels = common::reference_tensors(&src)["pixel_values"].clone();
        let n = pixels.dim(0).unwrap();
        let (pad, eos): (u32, Vec<u32>) = (
            serde_json::from_value(model["pad_token_id"].clone()).unwrap(),
            serde_json::from_value(model["eos_token_id"].clone()).unwrap(),
        );
        for set in model["rule_sets"].as_array().unwrap() {
            let dir = with_rules(&src, &set["rules"]);
            let cap = load(dir.path());
            let prompt = cap.prompt_ids(None).unwrap();
            for case in set["cases"].as_array().unwrap() {
                let params = GenerationParams {
                    max_new_tokens: model["max_new_tokens"].as_u64().unwrap() as usize,
                    num_beams: case["num_beams"].as_u64().unwrap() as usize,
                    ..GenerationParams::default()
                };
                for (bs, starts) in [(1, 1), (n, n)] {
                    for start in (0..n).step_by(starts) {
                        let len = bs.min(n - start);
                        let batch = pixels.narrow(0, start, len).unwrap();
                        let got = cap
                            .caption(&batch, &prompt, &params, &vec![0; len])
                            .unwrap();
                        for (j, caps) in got.iter().enumerate() {
                            let i = start + j;
                            let want: Vec<u32> =
                                serde_json::from_value(case["sequences"][i].clone()).unwrap();
                            // The prompt, then the new tokens up to the first eos.
                            let p = prompt.len();
                            let want = [&want[..p], &common::strip_padding(&want[p..], pad, &eos)]
                                .concat();
                            total += 1;
                            if caps[0].tokens != want {
                                mismatches.push(format!(
                                    "{} {} beams {} batch {bs} image {i}: got {:?}, transformers {want:?}",
                                    model["fixture"], set["name"], case["num_beams"], caps[0].tokens
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "token rules: {} of {total} identical",
        total - mismatches.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
