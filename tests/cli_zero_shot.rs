//! `glance classify`, `glance label` and `glance run` end to end through the real binary on the
//! tiny CLIP / SigLIP / BLIP fixtures: scores equal to transformers' (tests/fixtures/*/reference),
//! template ensembles, multi-label thresholds, unknown, sort-into with copy/move/link and name
//! clashes, every output format, and a two-stage pipeline file.

mod common;

use common::{glance, stdout_records, succeed};

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// Scores through the CLI against transformers' probabilities (max abs difference). The records
/// print f32 values in shortest form, so this is the parity tolerance of tests/clip_parity.rs.
const SCORE_TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures").join(name)
}

/// The fixture's images that are PNGs (pixel-exact with PIL) and their row in the reference.
fn png_rows(reference: &Value) -> Vec<(usize, String)> {
    reference["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, n)| (i, n.as_str().unwrap().to_string()))
        .filter(|(_, n)| n.ends_with(".png"))
        .collect()
}

/// A folder with copies of the fixture's PNG photos.
fn photo_dir(reference: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (_, name) in png_rows(reference) {
        fs::copy(common::shared_images().join(&name), dir.path().join(&name)).unwrap();
    }
    dir
}

fn labels(reference: &Value) -> Vec<String> {
    reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// A reference tensor as rows of f64.
fn rows(dir: &Path, name: &str) -> Vec<Vec<f64>> {
    let t = &common::reference_tensors(dir)[name];
    t.to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

fn by_name(records: Vec<Value>) -> HashMap<String, Value> {
    records
        .into_iter()
        .map(|r| {
            let name = Path::new(r["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, r)
        })
        .collect()
}

/// Checks `label`, `score` and the sorted `predictions` of each record against reference
/// probabilities; returns how many images were compared.
fn check_classify(
    records: &HashMap<String, Value>,
    reference: &Value,
    probs: &[Vec<f64>],
    top_k: usize,
) -> usize {
    let labels = labels(reference);
    let mut compared = 0;
    for (row, name) in png_rows(reference) {
        let rec = &records[&name];
        let p = &probs[row];
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
        assert_eq!(rec["label"], labels[order[0]], "{name}");
        let score = rec["score"].as_f64().unwrap();
        assert!(
            (score - p[order[0]]).abs() < SCORE_TOLERANCE,
            "{name}: {score} vs {}",
            p[order[0]]
        );
        let preds = rec["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), top_k, "{name}");
        for (pred, &i) in preds.iter().zip(&order) {
            let s = pred["score"].as_f64().unwrap();
            assert!(
                (s - p[i]).abs() < SCORE_TOLERANCE,
                "{name} {}: {s} vs {}",
                labels[i],
                p[i]
            );
            // Labels with (near-)equal scores may swap places; their scores must still agree.
            if pred["label"] != labels[i] {
                let j = labels.iter().position(|l| *l == pred["label"]).unwrap();
                assert!((p[j] - p[i]).abs() < SCORE_TOLERANCE, "{name}: order");
            }
        }
        compared += 1;
    }
    compared
}

#[test]
fn classify_matches_transformers() {
    let dir = fixture("clip-tiny");
    let reference = common::reference(&dir);
    let photos = photo_dir(&reference);
    let out = succeed(
        glance()
            .args([
                "classify",
                "--quiet",
                "--top-k",
                "3",
                "--template",
                "a photo of a {}.",
                "-b",
                "4",
                "-m",
            ])
            .arg(&dir)
            .arg("--labels")
            .arg(labels(&reference).join(","))
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    let n = check_classify(&records, &reference, &rows(&dir, "probs"), 3);
    assert_eq!(n, 9);
    let keys: Vec<&String> = records["horse.png"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["file", "label", "score", "predictions", "width", "height"]
    );
}

/// The reference's ensemble templates written to `dir/templates.txt` (after a comment line),
/// with the templates.
fn templates_file(reference: &Value, dir: &Path) -> (PathBuf, Vec<String>) {
    let path = dir.join("templates.txt");
    let lines: Vec<String> = reference["ensemble"]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    fs::write(&path, format!("# three\n{}\n", lines.join("\n"))).unwrap();
    (path, lines)
}

#[test]
fn template_ensemble_from_a_file_matches_transformers() {
    let dir = fixture("clip-tiny");
    let reference = common::reference(&dir);
    let photos = photo_dir(&reference);
    let (templates, _) = templates_file(&reference, photos.path());
    let labels_file = photos.path().join("labels.txt");
    fs::write(&labels_file, labels(&reference).join("\n")).unwrap();
    let out = succeed(
        glance()
            .args(["classify", "--quiet", "-m"])
            .arg(&dir)
            .arg("--labels-file")
            .arg(&labels_file)
            .arg("--templates")
            .arg(&templates)
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    assert_eq!(
        check_classify(&records, &reference, &rows(&dir, "ensemble_probs"), 5),
        9
    );
}

/// Cosine similarities of the reference's image and text embeddings.
fn cosines(dir: &Path) -> Vec<Vec<f64>> {
    let norm = |v: &Vec<f64>| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<f64>>()
    };
    let images: Vec<Vec<f64>> = rows(dir, "image_embeds").iter().map(norm).collect();
    let texts: Vec<Vec<f64>> = rows(dir, "text_embeds").iter().map(norm).collect();
    images
        .iter()
        .map(|i| {
            texts
                .iter()
                .map(|t| i.iter().zip(t).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

/// The labels at or above `threshold` (best first, at most `max`), with scores, for one row;
/// `None` when a score is too close to the threshold to decide.
fn expected_tags(
    labels: &[String],
    scores: &[f64],
    threshold: f64,
    max: usize,
) -> Option<Vec<(String, f64)>> {
    if scores.iter().any(|s| (s - threshold).abs() < 1e-4) {
        return None;
    }
    let mut tags: Vec<(String, f64)> = labels
        .iter()
        .cloned()
        .zip(scores.iter().copied())
        .filter(|(_, s)| *s >= threshold)
        .collect();
    tags.sort_by(|a, b| b.1.total_cmp(&a.1));
    tags.truncate(max);
    Some(tags)
}

fn check_tags(rec: &Value, expected: &[(String, f64)], name: &str) {
    let got = rec["labels"].as_array().unwrap();
    assert_eq!(got.len(), expected.len(), "{name}: {got:?} vs {expected:?}");
    for (g, (label, score)) in got.iter().zip(expected) {
        assert_eq!(g["label"], label.as_str(), "{name}");
        assert!(
            (g["score"].as_f64().unwrap() - score).abs() < SCORE_TOLERANCE,
            "{name}"
        );
    }
}

#[test]
fn multi_label_thresholds_siglip_sigmoid_and_clip_cosine() {
    for (fixture_name, threshold, expected_scores) in [
        ("siglip-tiny", 0.2, None),
        ("clip-tiny", 0.3, Some(cosines(&fixture("clip-tiny")))),
    ] {
        let dir = fixture(fixture_name);
        let reference = common::reference(&dir);
        let scores = expected_scores.unwrap_or_else(|| rows(&dir, "probs"));
        let labels = labels(&reference);
        let photos = photo_dir(&reference);
        let out = succeed(
            glance()
                .args([
                    "classify",
                    "--quiet",
                    "--multi-label",
                    "--template",
                    "a photo of a {}.",
                    "-m",
                ])
                .arg(&dir)
                .arg("--threshold")
                .arg(threshold.to_string())
                .arg("--labels")
                .arg(labels.join(","))
                .arg(photos.path()),
        );
        let records = by_name(stdout_records(&out));
        let mut checked = 0;
        let mut tagged = 0;
        for (row, name) in png_rows(&reference) {
            let Some(expected) = expected_tags(&labels, &scores[row], threshold, usize::MAX) else {
                continue;
            };
            let rec = &records[&name];
            check_tags(rec, &expected, &name);
            let top = rec["predictions"][0]["label"].clone();
            let want = if expected.is_empty() {
                Value::from("unknown")
            } else {
                top
            };
            assert_eq!(rec["label"], want, "{fixture_name} {name}");
            checked += 1;
            tagged += usize::from(!expected.is_empty());
        }
        assert!(
            checked >= 7 && tagged >= 2,
            "{fixture_name}: only {checked} images / {tagged} tagged"
        );
    }
}

#[test]
fn label_takes_a_vocabulary_and_caps_the_tags() {
    let dir = fixture("siglip-tiny");
    let reference = common::reference(&dir);
    let labels = labels(&reference);
    let photos = photo_dir(&reference);
    let vocab = photos.path().join("vocab.txt");
    fs::write(&vocab, format!("# tags\n{}\n", labels.join("\n"))).unwrap();
    let out = succeed(
        glance()
            .args([
                "label",
                "--quiet",
                "--threshold",
                "0.05",
                "--max-tags",
                "2",
                "--template",
                "a photo of a {}.",
                "-m",
            ])
            .arg(&dir)
            .arg("--vocab")
            .arg(&vocab)
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    let probs = rows(&dir, "probs");
    for (row, name) in png_rows(&reference) {
        if let Some(expected) = expected_tags(&labels, &probs[row], 0.05, 2) {
            check_tags(&records[&name], &expected, &name);
            let keys: Vec<&String> = records[&name].as_object().unwrap().keys().collect();
            assert_eq!(keys, ["file", "labels", "width", "height"]);
        }
    }
}

#[test]
fn min_score_makes_unknown() {
    let dir = fixture("clip-tiny");
    let reference = common::reference(&dir);
    let photos = photo_dir(&reference);
    let out = succeed(
        glance()
            .args([
                "classify",
                "--quiet",
                "--min-score",
                "0.9",
                "--template",
                "a photo of a {}.",
                "-m",
            ])
            .arg(&dir)
            .arg("--labels")
            .arg(labels(&reference).join(","))
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    let probs = rows(&dir, "probs");
    let mut unknown = 0;
    for (row, name) in png_rows(&reference) {
        let best = probs[row].iter().copied().fold(f64::MIN, f64::max);
        let rec = &records[&name];
        if best < 0.9 {
            assert_eq!(rec["label"], "unknown", "{name}");
            unknown += 1;
        } else {
            assert_ne!(rec["label"], "unknown", "{name}");
        }
        assert_eq!(rec["predictions"].as_array().unwrap().len(), 5);
    }
    assert!(unknown >= 2, "the fixture has uncertain images");
}

/// classify with --sort-into for each mode: images end up in DIR/<label>/, a different file
/// holding the name is kept, a broken image stays where it is as an error record.
#[test]
fn sort_into_copy_move_link_with_name_clashes() {
    let dir = fixture("clip-tiny");
    let reference = common::reference(&dir);
    let expected: HashMap<String, String> = reference["margins"]["top1_labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    for mode in ["--copy", "--move", "--link"] {
        let photos = photo_dir(&reference);
        let broken = photos.path().join("broken.png");
        fs::write(&broken, b"not a png").unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let sorted = out_dir.path().join("sorted");
        // A different file already named like one of the images, in the folder it will go to.
        let clash = sorted.join(&expected["horse.png"]).join("horse.png");
        fs::create_dir_all(clash.parent().unwrap()).unwrap();
        fs::write(&clash, b"someone else's horse").unwrap();
        let out = glance()
            .args([
                "classify",
                "--quiet",
                "--template",
                "a photo of a {}.",
                "-m",
            ])
            .arg(&dir)
            .arg("--labels")
            .arg(labels(&reference).join(","))
            .arg("--sort-into")
            .arg(&sorted)
            .arg(mode)
            .arg(photos.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{mode}: the broken image fails");
        let records = by_name(stdout_records(&out));
        assert!(records["broken.png"]["error"].is_string());
        assert!(broken.exists(), "{mode}: a failed image is left in place");
        for (_, name) in png_rows(&reference) {
            let label = &expected[&name];
            let want = if name == "horse.png" {
                "horse-1.png"
            } else {
                name.as_str()
            };
            let dest = sorted.join(label).join(want);
            assert_eq!(
                records[&name]["sorted_to"],
                dest.display().to_string(),
                "{mode} {name}"
            );
            let original = common::shared_images().join(&name);
            assert_eq!(
                fs::read(&dest).unwrap(),
                fs::read(&original).unwrap(),
                "{mode} {name}"
            );
            let source = photos.path().join(&name);
            match mode {
                "--move" => assert!(!source.exists(), "{name} moved"),
                "--link" => {
                    assert!(fs::symlink_metadata(&dest)
                        .unwrap()
                        .file_type()
                        .is_symlink());
                    assert!(source.exists());
                }
                _ => assert!(source.exists() && fs::symlink_metadata(&dest).unwrap().is_file()),
            }
        }
        assert_eq!(fs::read(&clash).unwrap(), b"someone else's horse", "{mode}");
    }
}

#[test]
fn output_formats_csv_json_labelstudio_and_sidecars() {
    let dir = fixture("clip-tiny");
    let reference = common::reference(&dir);
    let labels = labels(&reference).join(",");
    let photos = photo_dir(&reference);
    let out_dir = tempfile::tempdir().unwrap();
    let classify = |extra: &[&str]| {
        let mut cmd = glance();
        cmd.args([
            "classify",
            "--quiet",
            "--template",
            "a photo of a {}.",
            "--labels",
            &labels,
            "-m",
        ])
        .arg(&dir)
        .args(extra)
        .arg(photos.path());
        succeed(&mut cmd)
    };
    // CSV: file,label,score,error.
    let csv_path = out_dir.path().join("c.csv");
    classify(&["-o", csv_path.to_str().unwrap()]);
    let csv = fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("file,label,score,error"));
    assert_eq!(lines.count(), 9);
    assert!(csv.contains("horse.png,motorcycle,"), "{csv}");
    // JSON array.
    let json_path = out_dir.path().join("c.json");
    classify(&["-o", json_path.to_str().unwrap()]);
    let doc: Value = serde_json::from_str(&fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 9);
    assert!(doc[0]["predictions"].is_array());
    // Label Studio tasks from glance label, with the control names configured.
    let ls_path = out_dir.path().join("tasks.json");
    let vocab = out_dir.path().join("v.txt");
    fs::write(&vocab, labels.replace(',', "\n")).unwrap();
    let mut cmd = glance();
    cmd.args([
        "label",
        "--quiet",
        "--template",
        "a photo of a {}.",
        "--threshold",
        "0.3",
        "-m",
    ])
    .arg(&dir)
    .arg("--vocab")
    .arg(&vocab)
    .args([
        "--format",
        "labelstudio",
        "--ls-from-name",
        "tags",
        "--ls-to-name",
        "img",
    ])
    .args(["--ls-url-prefix", "/data/local-files/?d=", "-o"])
    .arg(&ls_path)
    .arg(photos.path());
    succeed(&mut cmd);
    let tasks: Value = serde_json::from_str(&fs::read_to_string(&ls_path).unwrap()).unwrap();
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 9);
    let with_choices = tasks
        .iter()
        .filter(|t| !t["predictions"][0]["result"].as_array().unwrap().is_empty())
        .count();
    assert!(with_choices >= 2);
    for t in tasks {
        let file = t["data"]["file"].as_str().unwrap();
        assert_eq!(t["data"]["image"], format!("/data/local-files/?d={file}"));
        for r in t["predictions"][0]["result"].as_array().unwrap() {
            assert_eq!(r["from_name"], "tags");
            assert_eq!(r["to_name"], "img");
            assert_eq!(r["type"], "choices");
        }
    }
    // Sidecars: tags joined by ", "; an existing one is extended with --existing append.
    let sidecar = photos.path().join("horse.txt");
    fs::write(&sidecar, "my tag").unwrap();
    let mut cmd = glance();
    cmd.args([
        "label",
        "--quiet",
        "--template",
        "a photo of a {}.",
        "--threshold",
        "-1",
        "--max-tags",
        "2",
        "-m",
    ])
    .arg(&dir)
    .arg("--vocab")
    .arg(&vocab)
    .args(["--format", "txt", "--existing", "append"])
    .arg(photos.path());
    succeed(&mut cmd);
    let text = fs::read_to_string(&sidecar).unwrap();
    let tags: Vec<&str> = text.split(", ").collect();
    assert_eq!(tags.len(), 3, "{text}");
    assert_eq!(tags[0], "my tag");
    let cosine = cosines(&dir);
    let row = png_rows(&reference)
        .into_iter()
        .find(|(_, n)| n == "horse.png")
        .unwrap()
        .0;
    let expected = expected_tags(
        &labels.split(',').map(String::from).collect::<Vec<_>>(),
        &cosine[row],
        -1.0,
        2,
    )
    .unwrap();
    assert_eq!(tags[1], expected[0].0);
    assert_eq!(tags[2], expected[1].0);
    assert_eq!(
        fs::read_to_string(photos.path().join("chelsea.txt"))
            .unwrap()
            .split(", ")
            .count(),
        2
    );
}

#[test]
fn two_stage_pipeline_merges_caption_and_classify() {
    let clip = fixture("clip-tiny");
    let reference = common::reference(&clip);
    let photos = photo_dir(&reference);
    let work = tempfile::tempdir().unwrap();
    fs::write(
        work.path().join("labels.txt"),
        labels(&reference).join("\n"),
    )
    .unwrap();
    let pipeline = work.path().join("p.toml");
    fs::write(
        &pipeline,
        format!(
            "description = \"test\"\n\n[[stage]]\ntask = \"caption\"\nmodel = {:?}\nmax_new_tokens = 12\n\n\
             [[stage]]\ntask = \"classify\"\nmodel = {:?}\nlabels_file = \"labels.txt\"\ntemplate = \"a photo of a {{}}.\"\ntop_k = 2\n",
            common::blip_tiny().display().to_string(),
            clip.display().to_string()
        ),
    )
    .unwrap();
    let out = succeed(
        glance()
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    let captions = common::blip_greedy_captions();
    let probs = rows(&clip, "probs");
    assert_eq!(check_classify(&records, &reference, &probs, 2), 9);
    for (_, name) in png_rows(&reference) {
        let rec = &records[&name];
        assert_eq!(rec["caption"], captions[&name], "{name}");
        let keys: Vec<&String> = rec.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "file",
                "caption",
                "label",
                "score",
                "predictions",
                "width",
                "height"
            ]
        );
    }
    // The same file through --pipeline, as CSV with the pipeline's columns.
    let csv_path = work.path().join("o.csv");
    let mut cmd = glance();
    cmd.args(["classify", "--quiet", "--pipeline"])
        .arg(&pipeline)
        .arg("-o")
        .arg(&csv_path)
        .arg(photos.path());
    succeed(&mut cmd);
    let csv = fs::read_to_string(&csv_path).unwrap();
    assert!(csv.starts_with("file,caption,label,score,error\n"), "{csv}");
    assert_eq!(csv.lines().count(), 10);
}

#[test]
fn bad_zero_shot_options_are_named() {
    let dir = fixture("clip-tiny");
    let images = common::shared_images();
    let cases: &[(&[&str], &str)] = &[
        (&["classify", "--labels", "cat,cat"], "'cat' appears twice"),
        (
            &["classify", "--labels", "cat", "--template", "a photo"],
            "has no {}",
        ),
        (
            &["label", "--vocab", "nonesuch"],
            "'nonesuch' is neither a file nor a shipped one",
        ),
        (
            &["run", "nonesuch"],
            "no pipeline file or preset 'nonesuch'",
        ),
    ];
    for (args, message) in cases {
        let mut cmd = glance();
        cmd.args(*args).arg("-m").arg(&dir).arg(&images);
        if args[0] == "run" {
            cmd = glance();
            cmd.args(*args).arg(&images);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // A captioning model given to classify says which command to use.
    let out = glance()
        .args(["classify", "--labels", "cat", "-m"])
        .arg(common::blip_tiny())
        .arg(&images)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use glance caption"), "{err}");
}

/// A closed-set classifier needs no labels: its id2label classes and softmax probabilities, equal
/// to transformers' logits (tests/fixtures/resnet-cls-tiny), sort images like zero-shot ones.
#[test]
fn closed_set_classifier_uses_its_own_classes() {
    let dir = fixture("resnet-cls-tiny");
    let reference = common::reference(&dir);
    let photos = photo_dir(&reference);
    let sorted = tempfile::tempdir().unwrap();
    let out = succeed(
        glance()
            .args(["classify", "--quiet", "--top-k", "2", "-m"])
            .arg(&dir)
            .arg("--sort-into")
            .arg(sorted.path())
            .arg("--link")
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    let logits = rows(&dir, "logits");
    for (row, name) in png_rows(&reference) {
        let l = &logits[row];
        let max = l.iter().copied().fold(f64::MIN, f64::max);
        let sum: f64 = l.iter().map(|x| (x - max).exp()).sum();
        let best = l.iter().position(|x| *x == max).unwrap();
        let label = reference["id2label"][best.to_string()].as_str().unwrap();
        let rec = &records[&name];
        assert_eq!(rec["label"], label, "{name}");
        assert!(
            (rec["score"].as_f64().unwrap() - 1.0 / sum).abs() < SCORE_TOLERANCE,
            "{name}"
        );
        assert_eq!(rec["predictions"].as_array().unwrap().len(), 2);
        assert!(sorted
            .path()
            .join(glance::run::sort::dir_name(label))
            .join(&name)
            .exists());
    }
    // Labels are for zero-shot models only.
    let out = glance()
        .args(["classify", "--labels", "cat,dog", "-m"])
        .arg(&dir)
        .arg(photos.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("its own") && err.contains("id2label"), "{err}");
}

/// `glance caption` picks a vision encoder–decoder from config.json and writes transformers'
/// greedy captions (tests/fixtures/vit-gpt2-tiny).
#[test]
fn caption_runs_a_vision_encoder_decoder() {
    let dir = fixture("vit-gpt2-tiny");
    let reference = common::reference(&dir);
    let photos = photo_dir(&reference);
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "greedy")
        .unwrap()
        .clone();
    let max_new = case["max_new_tokens"].to_string();
    let out = succeed(
        glance()
            .args([
                "caption",
                "--quiet",
                "--max-new-tokens",
                &max_new,
                "-b",
                "3",
                "-m",
            ])
            .arg(&dir)
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    for (row, name) in png_rows(&reference) {
        assert_eq!(records[&name]["caption"], case["captions"][row], "{name}");
    }
}

/// `glance label` with a closed-set classifier tags each image with its classes whose softmax
/// probability reaches the threshold (tests/fixtures/vit-cls-tiny).
#[test]
fn label_with_a_closed_set_classifier() {
    let dir = fixture("vit-cls-tiny");
    let reference = common::reference(&dir);
    let photos = photo_dir(&reference);
    let out = succeed(
        glance()
            .args(["label", "--quiet", "--threshold", "0.2", "-m"])
            .arg(&dir)
            .arg(photos.path()),
    );
    let records = by_name(stdout_records(&out));
    let probs = rows(&dir, "probs");
    let classes: Vec<String> = (0..probs[0].len())
        .map(|i| {
            reference["id2label"][i.to_string()]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut tagged = 0;
    for (row, name) in png_rows(&reference) {
        if let Some(expected) = expected_tags(&classes, &probs[row], 0.2, 20) {
            check_tags(&records[&name], &expected, &name);
            tagged += usize::from(!expected.is_empty());
        }
    }
    assert!(tagged >= 3);
}

#[test]
fn label_prompts_are_encoded_once_and_then_read_from_the_cache() {
    let dir = fixture("clip-tiny");
    let reference = common::reference(&dir);
    let photos = photo_dir(&reference);
    let cache = tempfile::tempdir().unwrap();
    let (templates, lines) = templates_file(&reference, photos.path());
    let labels = labels(&reference);
    let classify = |labels: &[String]| {
        succeed(
            glance()
                .env("GLANCE_CACHE", cache.path())
                .args(["classify", "-m"])
                .arg(&dir)
                .arg("--labels")
                .arg(labels.join(","))
                .arg("--templates")
                .arg(&templates)
                .arg(photos.path()),
        )
    };
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let prompts = labels.len() * lines.len();

    let first = classify(&labels);
    assert!(
        stderr(&first).contains(&format!("({prompts} prompts encoded in")),
        "{}",
        stderr(&first)
    );
    let files: Vec<_> = fs::read_dir(cache.path().join("text-embeddings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let f32_file = files[0].clone();

    let second = classify(&labels);
    assert!(
        stderr(&second).contains(&format!("({prompts} prompts from the cache in")),
        "{}",
        stderr(&second)
    );
    // The same bytes out, and still transformers' probabilities.
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&second.stdout)
    );
    let records = by_name(stdout_records(&second));
    assert_eq!(
        check_classify(&records, &reference, &rows(&dir, "ensemble_probs"), 5),
        9
    );

    // `--dtype bf16` on the CPU loads f32 weights too, but its embeddings are not the f32 ones:
    // they must not come from (or go to) the f32 entries.
    let bf16 = glance()
        .env("GLANCE_CACHE", cache.path())
        .args(["classify", "--dtype", "bf16", "-m"])
        .arg(&dir)
        .arg("--labels")
        .arg(labels.join(","))
        .arg("--templates")
        .arg(&templates)
        .arg(photos.path())
        .output()
        .unwrap();
    if bf16.status.success() {
        assert!(
            stderr(&bf16).contains(&format!("({prompts} prompts encoded in")),
            "{}",
            stderr(&bf16)
        );
    } else {
        assert!(stderr(&bf16).contains("AVX512-BF16"), "{}", stderr(&bf16));
    }

    // One label more: only its prompts are encoded.
    let mut more = labels.clone();
    more.push("kaleidoscope".into());
    let third = classify(&more);
    assert!(
        stderr(&third).contains(&format!(
            "({prompts} prompts from the cache, {} encoded, in",
            lines.len()
        )),
        "{}",
        stderr(&third)
    );

    // A damaged file is read up to the damage and the rest encoded again. (In other batches
    // than the first run's, so the last bits of a score may differ: the matmul kernels depend
    // on the batch's size.)
    let mut bytes = fs::read(&f32_file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    fs::write(&f32_file, &bytes).unwrap();
    let fourth = classify(&labels);
    assert!(stderr(&fourth).contains("encoded"), "{}", stderr(&fourth));
    let records = by_name(stdout_records(&fourth));
    assert_eq!(
        check_classify(&records, &reference, &rows(&dir, "ensemble_probs"), 5),
        9
    );
}

#[test]
fn default_templates_are_the_ensemble_for_clip_and_the_model_card_one_for_siglip() {
    let reference = common::reference(&fixture("clip-tiny"));
    let photos = photo_dir(&reference);
    let labels = labels(&reference).join(",");
    let classify = |model: &str, extra: &[&str]| {
        succeed(
            glance()
                .args(["classify", "-m"])
                .arg(fixture(model))
                .args(["--labels", &labels])
                .args(extra)
                .arg(photos.path()),
        )
    };
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let clip = classify("clip-tiny", &[]);
    assert!(
        stderr(&clip).contains(" x 11 templates ("),
        "{}",
        stderr(&clip)
    );
    let siglip = classify("siglip-tiny", &[]);
    assert!(
        stderr(&siglip).contains(" x 1 template ("),
        "{}",
        stderr(&siglip)
    );
    let named = classify("siglip-tiny", &["--template", "This is a photo of {}."]);
    assert_eq!(
        String::from_utf8_lossy(&siglip.stdout),
        String::from_utf8_lossy(&named.stdout)
    );
    // The ensemble stays one flag away.
    let ensemble = classify("siglip-tiny", &["--templates", "default"]);
    assert!(
        stderr(&ensemble).contains(" x 11 templates ("),
        "{}",
        stderr(&ensemble)
    );
}
