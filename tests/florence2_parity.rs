//! Parity with transformers on a tiny random Florence-2 (tests/fixtures/florence2-tiny, written
//! by tests/fixtures/generate_florence2.py), in transformers 5's layout and in the original
//! remote-code layout (same weights, other names, `pytorch_model.bin`): pixel values, encoder
//! states, first-step logits, the encoder's prompt ids, generated token ids for every task
//! (greedy and 3 beams with the checkpoint's rules; unbatched and batched), decoded text, and
//! the boxes, quadrilaterals and labels `post_process_generation` reads from them.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp};
use glance::generation::GenerationParams;
use glance::load::hub::{ModelFiles, ModelSource};
use glance::models::florence2::processor::{self, Answer, Region};
use glance::tasks::caption::{CaptionStage, Captioner};

/// Encoder states and logits: max abs difference relative to the largest reference magnitude.
const FLOAT_TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures").join(name)
}

fn native() -> PathBuf {
    fixture("florence2-tiny")
}

fn load(dir: &Path) -> Captioner {
    let files = ModelFiles::new(ModelSource::Local(dir.to_path_buf())).unwrap();
    Captioner::load(&files, &Device::Cpu, DType::F32).unwrap()
}

fn layouts() -> [PathBuf; 2] {
    [native(), fixture("florence2-tiny-original")]
}

#[test]
fn pixels_prompt_ids_states_and_logits_match_in_both_layouts() {
    let reference = common::reference(&native());
    let tensors = common::reference_tensors(&native());
    let image_token = reference["image_token_id"].as_u64().unwrap() as u32;
    let od_ids: Vec<u32> = common::ids(&reference["od_input_ids"])
        .into_iter()
        .filter(|&t| t != image_token)
        .collect();
    for dir in layouts() {
        let cap = load(&dir);
        for (i, name) in reference["images"].as_array().unwrap().iter().enumerate() {
            let path = common::shared_images().join(name.as_str().unwrap());
            let decoded = glance::preprocess::decode::decode(&path, u64::MAX).unwrap();
            let ours = cap
                .pixels_to_tensor(&[cap.preprocessor().apply(&decoded.rgb)])
                .unwrap();
            let diff =
                common::max_abs_diff(&ours.i(0).unwrap(), &tensors["pixel_values"].i(i).unwrap());
            assert!(
                diff <= 1e-6,
                "{}: {name}: pixels differ by {diff}",
                dir.display()
            );
        }
        let ids = cap.encoder_ids(Some("<OD>")).unwrap().unwrap();
        assert_eq!(ids, od_ids, "{}: the encoder's prompt", dir.display());
        let states = cap
            .encode_prompted(&tensors["pixel_values"], Some(&ids))
            .unwrap();
        let expected = &tensors["encoder_last_hidden_state"];
        let diff = common::max_abs_diff(&states, expected) / common::max_abs(expected).max(1.0);
        eprintln!(
            "{}: encoder states differ by {diff:e} (relative)",
            dir.display()
        );
        assert!(
            diff < FLOAT_TOLERANCE,
            "{}: encoder states differ by {diff}",
            dir.display()
        );
        let logits = cap.first_step_logits(&states, &[2]).unwrap();
        let expected = &tensors["first_step_logits"];
        let diff = common::max_abs_diff(&logits, expected) / common::max_abs(expected).max(1.0);
        assert!(
            diff < FLOAT_TOLERANCE,
            "{}: logits differ by {diff}",
            dir.display()
        );
    }
}

/// What `post_process_generation` returned, as regions (or the text for text tasks).
fn expected_regions(task: &str, parsed: &serde_json::Value) -> Vec<Region> {
    let numbers = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_i64().unwrap())
            .collect()
    };
    let labels = parsed["labels"].as_array().unwrap();
    match Answer::of(task) {
        Answer::Ocr => parsed["quad_boxes"]
            .as_array()
            .unwrap()
            .iter()
            .zip(labels)
            .map(|(q, l)| {
                let q = numbers(q);
                let (xs, ys): (Vec<i64>, Vec<i64>) = q.chunks(2).map(|p| (p[0], p[1])).unzip();
                Region {
                    label: l.as_str().unwrap().to_string(),
                    bbox: [
                        *xs.iter().min().unwrap(),
                        *ys.iter().min().unwrap(),
                        *xs.iter().max().unwrap(),
                        *ys.iter().max().unwrap(),
                    ],
                    polygon: Some(q),
                }
            })
            .collect(),
        _ => parsed["bboxes"]
            .as_array()
            .unwrap()
            .iter()
            .zip(labels)
            .map(|(b, l)| Region {
                label: l.as_str().unwrap().to_string(),
                bbox: numbers(b).try_into().unwrap(),
                polygon: None,
            })
            .collect(),
    }
}

/// The banned grounding phrases of the fixture's processor config.
fn processor_banned() -> Vec<String> {
    let text = std::fs::read_to_string(native().join("processor_config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["post_processor_config"]["phrase_grounding"]["banned_grounding_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn raw_text(cap: &Captioner, tokens: &[u32]) -> String {
    cap.tokenizer().decode(tokens, false).unwrap()
}

fn check_parsed(task: &str, raw: &str, size: (u32, u32), parsed: &serde_json::Value, what: &str) {
    match Answer::of(task) {
        Answer::Text => assert_eq!(
            processor::pure_text(raw),
            parsed.as_str().unwrap(),
            "{what}: text"
        ),
        answer => assert_eq!(
            processor::parse(raw, answer, size, &processor_banned()),
            expected_regions(task, parsed),
            "{what}: regions of {raw:?}"
        ),
    }
}

fn check_generation(batch: usize) {
    let reference = common::reference(&native());
    let pixels = common::reference_tensors(&native())["pixel_values"].clone();
    let n = pixels.dim(0).unwrap();
    let mut report = Vec::new();
    for dir in layouts() {
        let (mut total, mut mismatches) = (0, Vec::new());
        for case in reference["cases"].as_array().unwrap() {
            let task = case["task"].as_str().unwrap();
            let prompt = case["prompt"].as_str().unwrap();
            let beams = case["num_beams"].as_u64().unwrap() as usize;
            let stage = CaptionStage::new(
                load(&dir),
                Some(prompt),
                GenerationParams::default(),
                case["max_new_tokens"].as_u64().map(|n| n as usize),
                Some(beams),
            )
            .unwrap();
            let what = format!("{} {prompt} beams {beams} batch {batch}", dir.display());
            for start in (0..n).step_by(batch) {
                let len = batch.min(n - start);
                let got = stage
                    .captioner
                    .caption_prompted(
                        &pixels.narrow(0, start, len).unwrap(),
                        stage.encoder_ids.as_deref(),
                        &stage.prompt_ids,
                        &stage.params,
                        &vec![0; len],
                    )
                    .unwrap();
                for (j, caps) in got.iter().enumerate() {
                    let row = &case["rows"][start + j];
                    let expected = common::ids(&row["ids"]);
                    total += 1;
                    let tokens = &caps[0].tokens;
                    if tokens[1..] != expected[..] {
                        mismatches.push(format!(
                            "{what} image {}: got {:?}, transformers {expected:?}",
                            start + j,
                            &tokens[1..]
                        ));
                        continue;
                    }
                    assert_eq!(caps[0].text, row["text"].as_str().unwrap().trim(), "{what}");
                    let raw = raw_text(&stage.captioner, tokens);
                    assert_eq!(raw, row["raw"].as_str().unwrap(), "{what}: raw text");
                    let size = common::ids(&row["size"]);
                    check_parsed(task, &raw, (size[0], size[1]), &row["parsed"], &what);
                }
            }
        }
        report.push(format!(
            "{}: {} of {total} identical",
            dir.display(),
            total - mismatches.len()
        ));
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn every_task_generates_what_transformers_does_unbatched() {
    check_generation(1);
}

#[test]
fn every_task_generates_what_transformers_does_batched() {
    check_generation(4);
}

#[test]
fn parsed_regions_equal_post_process_generation() {
    let reference = common::reference(&native());
    let cap = load(&native());
    let mut checked = 0;
    for case in reference["parse_cases"].as_array().unwrap() {
        let task = case["task"].as_str().unwrap();
        if !matches!(
            task,
            "<OD>"
                | "<DENSE_REGION_CAPTION>"
                | "<OCR_WITH_REGION>"
                | "<CAPTION_TO_PHRASE_GROUNDING>"
                | "<REGION_PROPOSAL>"
                | "<CAPTION>"
        ) {
            continue;
        }
        let raw = raw_text(&cap, &common::ids(&case["ids"]));
        assert_eq!(raw, case["raw"].as_str().unwrap());
        let size = common::ids(&case["size"]);
        check_parsed(task, &raw, (size[0], size[1]), &case["parsed"], task);
        checked += 1;
    }
    eprintln!("{checked} parse cases equal transformers'");
    assert!(checked >= 16, "only {checked} parse cases checked");
}
