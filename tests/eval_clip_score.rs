//! CLIPScore / RefCLIPScore against transformers (eval/captions/expected_clipscore.json, written
//! by eval/captions/make_clipscore.py with the tiny CLIP and SigLIP fixtures on the shared
//! photos): per-image cosines within 1e-5 (PNGs and JPEGs decode as PIL decodes them), mean
//! scores within 1e-4; and CLIP reranking of caption candidates, whose recorded scores must
//! be what `glance eval captions` computes.

mod common;

use std::process::Command;

use candle_core::{DType, Device};
use glance::load::hub::{ModelFiles, ModelSource};
use glance::tasks::clip_score::{paired_cosines, ClipScorer};
use serde_json::Value;

/// Mean scores against transformers' float32 (absolute).
const TOLERANCE: f64 = 1e-4;
/// Per-image cosines (absolute): PNGs and JPEGs decode bit-exactly.
const PNG_COSINE_TOLERANCE: f64 = 1e-5;
const JPEG_COSINE_TOLERANCE: f64 = PNG_COSINE_TOLERANCE;

fn expected() -> Value {
    let path = common::repo().join("eval/captions/expected_clipscore.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn judge(name: &str) -> ClipScorer {
    let dir = common::repo().join("tests/fixtures").join(name);
    let files = ModelFiles::new(ModelSource::Local(dir)).unwrap();
    ClipScorer::load(&files, &Device::Cpu, DType::F32).unwrap()
}

fn glance(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_glance"))
        .env("GLANCE_CACHE", "off")
        .current_dir(common::repo())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "glance {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `glance eval captions --format json` of `predictions` with the fixture judge `judge`, the
/// images found in the shared photos, and `references` when given.
fn eval_with_judge(predictions: &str, judge: &str, references: Option<&str>) -> Value {
    let model = format!("tests/fixtures/{judge}");
    let images = common::shared_images();
    let mut args = vec![
        "eval",
        "captions",
        "--format",
        "json",
        "--predictions",
        predictions,
        "--clip-model",
        &model,
        "--images",
        images.to_str().unwrap(),
    ];
    if let Some(r) = references {
        args.extend(["--references", r]);
    }
    glance(&args)
}

fn predictions() -> std::collections::BTreeMap<String, String> {
    let path = common::repo().join("eval/captions/predictions.jsonl");
    glance::eval::captions::read_predictions(&path)
        .unwrap()
        .captions
}

fn check_cosines(name: &str) {
    let exp = expected();
    let images_dir = common::shared_images();
    let names: Vec<String> = exp["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let preds = predictions();
    let images: Vec<image::RgbImage> = names
        .iter()
        .map(|n| {
            glance::preprocess::decode::decode(&images_dir.join(n), u64::MAX)
                .unwrap()
                .rgb
        })
        .collect();
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let captions: Vec<String> = names.iter().map(|n| preds[n].clone()).collect();
    let scorer = judge(name);
    let cos = paired_cosines(
        &scorer.embed_images(&refs).unwrap(),
        &scorer.embed_captions(&captions).unwrap(),
    )
    .unwrap();
    let per_image = &exp["judges"][name]["per_image"];
    for (n, c) in names.iter().zip(cos) {
        let want = per_image[n]["cosine"].as_f64().unwrap();
        eprintln!("{name} {n}: cosine glance {c:.6} transformers {want:.6}");
        let tolerance = if n.ends_with(".jpg") {
            JPEG_COSINE_TOLERANCE
        } else {
            PNG_COSINE_TOLERANCE
        };
        assert!(
            (f64::from(c) - want).abs() <= tolerance,
            "{name} {n}: cosine {c} vs {want}"
        );
    }
}

#[test]
fn clip_cosines_match_transformers() {
    check_cosines("clip-tiny");
}

#[test]
fn siglip_cosines_match_transformers() {
    check_cosines("siglip-tiny");
}

fn check_cli_means(name: &str) {
    let exp = expected();
    let got = eval_with_judge(
        "eval/captions/predictions.jsonl",
        name,
        Some("eval/captions/references.json"),
    );
    let want = &exp["judges"][name];
    for key in ["clip_score", "ref_clip_score"] {
        let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
        eprintln!("{name} {key}: glance {g} transformers {w}");
        assert!((g - w).abs() <= TOLERANCE, "{name} {key}: {g} vs {w}");
    }
    assert_eq!(
        got["clip_images_scored"].as_u64().unwrap() as usize,
        exp["images"].as_array().unwrap().len()
    );
    let unreadable: Vec<&str> = got["unreadable_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        unreadable.len(),
        exp["unreadable"].as_array().unwrap().len()
    );
    for n in exp["unreadable"].as_array().unwrap() {
        assert!(
            unreadable.iter().any(|u| u.contains(n.as_str().unwrap())),
            "{n} not reported among {unreadable:?}"
        );
    }
    // The n-gram metrics are still there.
    assert!(got["cider"].is_number() && got["bleu_4"].is_number());
}

#[test]
fn clip_score_and_ref_clip_score_match_transformers() {
    check_cli_means("clip-tiny");
}

#[test]
fn siglip_judge_scores_match_transformers() {
    check_cli_means("siglip-tiny");
}

#[test]
fn clip_score_without_references_scores_every_prediction_with_an_image() {
    let got = eval_with_judge("eval/captions/predictions.jsonl", "clip-tiny", None);
    assert!(got.get("ref_clip_score").is_none() && got.get("cider").is_none());
    // selfie.jpg has no reference but is a prediction; it is not among the photos either.
    let unreadable = got["unreadable_images"].as_array().unwrap();
    assert!(unreadable
        .iter()
        .any(|u| u.as_str().unwrap().contains("selfie.jpg")));
    assert_eq!(
        got["clip_images_scored"],
        expected()["images"].as_array().unwrap().len()
    );
}

#[test]
fn eval_captions_needs_references_or_a_judge() {
    let out = Command::new(env!("CARGO_BIN_EXE_glance"))
        .env("GLANCE_CACHE", "off")
        .current_dir(common::repo())
        .args([
            "eval",
            "captions",
            "--predictions",
            "eval/captions/predictions.jsonl",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--references"));
}

/// Captions the shared photos with BLIP beam search, reranked by the tiny CLIP judge.
fn rerank_run(extra: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("reranked.jsonl");
    let images = common::shared_images();
    let mut args: Vec<String> = [
        "caption",
        "-q",
        "-m",
        "tests/fixtures/blip-tiny",
        "--rerank",
        "clip",
        "--clip-model",
        "tests/fixtures/clip-tiny",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out_path.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(images.display().to_string());
    let status = Command::new(env!("CARGO_BIN_EXE_glance"))
        .env("GLANCE_CACHE", "off")
        .current_dir(common::repo())
        .args(&args)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out_path).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (dir, out_path, records)
}

#[test]
fn rerank_keeps_the_candidate_the_judge_scores_highest() {
    let (_dir, _, records) = rerank_run(&["--num-beams", "4"]);
    assert_eq!(records.len(), 11);
    let mut changed = 0;
    for r in &records {
        let captions = r["captions"].as_array().unwrap();
        let scores: Vec<f64> = r["clip_scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(captions.len(), 4, "{r}");
        assert_eq!(scores.len(), 4);
        assert_eq!(r["scores"].as_array().unwrap().len(), 4, "beam scores kept");
        let best = (0..4).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        assert_eq!(r["caption"], captions[best], "{r}");
        assert_eq!(r["clip_score"].as_f64().unwrap(), scores[best]);
        assert_eq!(
            r["score"], r["scores"][best],
            "the chosen caption's beam score"
        );
        changed += usize::from(best != 0);
    }
    eprintln!("reranking changed {changed} of {} captions", records.len());
}

#[test]
fn recorded_clip_scores_are_what_eval_computes() {
    let (_dir, path, records) = rerank_run(&["--num-beams", "3"]);
    let mean = records
        .iter()
        .map(|r| r["clip_score"].as_f64().unwrap())
        .sum::<f64>()
        / records.len() as f64;
    let got = eval_with_judge(path.to_str().unwrap(), "clip-tiny", None);
    assert_eq!(got["clip_images_scored"], 11);
    let eval_mean = got["clip_score"].as_f64().unwrap();
    assert!(
        (eval_mean - mean).abs() < 1e-5,
        "records say {mean}, eval says {eval_mean}"
    );
}

#[test]
fn rerank_with_greedy_decoding_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_glance"))
        .env("GLANCE_CACHE", "off")
        .current_dir(common::repo())
        .args([
            "caption",
            "-q",
            "-m",
            "tests/fixtures/blip-tiny",
            "--num-beams",
            "1",
            "--rerank",
            "clip",
            "--clip-model",
            "tests/fixtures/clip-tiny",
        ])
        .arg(common::shared_images().join("chelsea.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("several candidates"));
}

#[test]
fn a_pipeline_caption_stage_can_rerank() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::repo();
    let file = dir.path().join("rerank.toml");
    std::fs::write(
        &file,
        format!(
            "[[stage]]\ntask = \"caption\"\nmodel = \"{}\"\nnum_beams = 3\nrerank = \"clip\"\nclip_model = \"{}\"\n",
            repo.join("tests/fixtures/blip-tiny").display(),
            repo.join("tests/fixtures/clip-tiny").display()
        ),
    )
    .unwrap();
    let image = common::shared_images().join("coffee.png");
    let rec = glance(&["run", "-q", file.to_str().unwrap(), image.to_str().unwrap()]);
    assert_eq!(rec["clip_scores"].as_array().unwrap().len(), 3, "{rec}");
    assert!(rec["clip_score"].is_number());
}

/// RefCLIP-S compares each caption with its own references, in blocks of captions: across block
/// boundaries (600 captions with one to three references each) every score must equal the
/// definition computed caption by caption.
#[test]
fn ref_clip_score_is_per_caption_across_blocks() {
    use glance::tasks::clip_score::{clip_score, ref_clip_score};
    let scorer = judge("clip-tiny");
    let image =
        glance::preprocess::decode::decode(&common::shared_images().join("chelsea.png"), u64::MAX)
            .unwrap()
            .rgb;
    let words = ["cat", "dog", "car", "a person", "a cup", "rocket", "coffee"];
    let n = 600;
    let captions: Vec<String> = (0..n).map(|i| format!("{} {i}", words[i % 7])).collect();
    let references: Vec<Vec<String>> = (0..n)
        .map(|i| {
            (0..1 + i % 3)
                .map(|j| format!("{} {}", words[(i + j + 1) % 7], i * j))
                .collect()
        })
        .collect();
    let images = vec![&image; n];
    let scores = scorer.score(&images, &captions, Some(&references)).unwrap();
    let img = scorer.embed_images(&[&image]).unwrap();
    for i in [0, 1, 255, 256, 257, 511, 512, 599] {
        let txt = scorer.embed_captions(&captions[i..=i]).unwrap();
        let refs = scorer.embed_captions(&references[i]).unwrap();
        let clip_s = clip_score(paired_cosines(&img, &txt).unwrap()[0]);
        let best = refs
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| {
                let r = candle_core::Tensor::new(r.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                paired_cosines(&txt, &r).unwrap()[0]
            })
            .fold(f32::NEG_INFINITY, f32::max);
        let want = ref_clip_score(clip_s, best);
        let got = scores.ref_clip_score.as_ref().unwrap()[i];
        assert!((got - want).abs() < 1e-5, "caption {i}: {got} vs {want}");
        assert!((scores.clip_score[i] - clip_s).abs() < 1e-5, "caption {i}");
    }
}
