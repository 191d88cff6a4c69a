//! `glance eval classify` against scikit-learn (eval/classify/expected.json, written by
//! eval/classify/make_expected.py): accuracy, top-k, per-class and averaged precision / recall /
//! F1 and the confusion matrix within 1e-9; ground truth from a CSV and from class folders; the
//! heat-map picture.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use glance::eval::classify::normalize_label;
use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

fn glance(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glance"))
        .env("GLANCE_CACHE", "off")
        .current_dir(common::repo())
        .args(args)
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> Value {
    let out = glance(args);
    assert!(
        out.status.success(),
        "glance {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close(what: &str, got: &Value, want: &Value) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    assert!(
        (g - w).abs() <= TOLERANCE,
        "{what}: glance {g}, sklearn {w}"
    );
}

fn strings(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    s.sort();
    s
}

#[test]
fn metrics_match_scikit_learn() {
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("eval/classify/expected.json")).unwrap(),
    )
    .unwrap();
    let got = json(&[
        "eval",
        "classify",
        "--format",
        "json",
        "--top-k",
        "3",
        "--predictions",
        "eval/classify/predictions.jsonl",
        "--truth",
        "eval/classify/truth.csv",
    ]);
    close("accuracy", &got["accuracy"], &exp["accuracy"]);
    close("top-3", &got["top_k_accuracy"], &exp["top_k_accuracy"]);
    for avg in ["macro", "weighted"] {
        for m in ["precision", "recall", "f1"] {
            close(
                &format!("{avg} {m}"),
                &got[format!("{avg}_{m}")],
                &exp[avg][m],
            );
        }
    }
    let per_class = got["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), exp["per_class"].as_object().unwrap().len());
    for c in per_class {
        let key = normalize_label(c["label"].as_str().unwrap());
        let want = &exp["per_class"][&key];
        for m in ["precision", "recall", "f1"] {
            close(&format!("{key} {m}"), &c[m], &want[m]);
        }
        assert_eq!(c["support"], want["support"], "{key} support");
    }
    // The same matrix, whatever the order of the classes.
    let labels: Vec<String> = got["confusion_matrix"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| normalize_label(l.as_str().unwrap()))
        .collect();
    let want_labels = strings(&exp["confusion_labels"]);
    let pos = |l: &String| want_labels.iter().position(|w| w == l).unwrap();
    let matrix = &got["confusion_matrix"]["matrix"];
    for (i, li) in labels.iter().enumerate() {
        for (j, lj) in labels.iter().enumerate() {
            assert_eq!(
                matrix[i][j],
                exp["confusion_matrix"][pos(li)][pos(lj)],
                "confusion[{li}][{lj}]"
            );
        }
    }
    assert_eq!(got["images_scored"], exp["images_scored"]);
    for key in [
        "missing_predictions",
        "unmatched_predictions",
        "failed_predictions",
    ] {
        assert_eq!(strings(&got[key]), strings(&exp[key]), "{key}");
    }
}

#[test]
fn table_and_heat_map() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("confusion.png");
    let out = glance(&[
        "eval",
        "classify",
        "--predictions",
        "eval/classify/predictions.jsonl",
        "--truth",
        "eval/classify/truth.csv",
        "--heatmap",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "accuracy",
        "top-5 accuracy",
        "macro avg",
        "golden_retriever",
        "confusion matrix",
        "without a prediction (1): img_008.jpg",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }
    let img = image::open(&png).unwrap().to_rgb8();
    assert!(img.width() > 200 && img.height() > 200);
}

fn write_image(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::new(4, 4).save(path).unwrap();
}

#[test]
fn truth_from_class_folders_matches_by_path_where_names_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("truth");
    // The same file name in two classes: only the path can tell them apart.
    for (class, file) in [
        ("cat", "a.png"),
        ("dog", "a.png"),
        ("dog", "b.png"),
        ("cat", "sub/c.png"),
    ] {
        write_image(&root.join(class).join(file));
    }
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    let rec = |file: &Path, label: &str, ranked: &[&str]| {
        let preds: Vec<Value> = ranked
            .iter()
            .map(|l| serde_json::json!({"label": l, "score": 0.5}))
            .collect();
        serde_json::json!({"file": file, "label": label, "score": 0.5, "predictions": preds})
            .to_string()
    };
    let lines = [
        rec(&root.join("cat/a.png"), "cat", &["cat", "dog"]),
        rec(&root.join("dog/a.png"), "cat", &["cat", "dog"]),
        rec(&root.join("dog/b.png"), "Dog", &["Dog", "cat"]),
        rec(Path::new("elsewhere/a.png"), "dog", &["dog"]),
    ];
    let preds = dir.path().join("preds.jsonl");
    std::fs::write(&preds, lines.join("\n")).unwrap();
    let got = json(&[
        "eval",
        "classify",
        "--format",
        "json",
        "--top-k",
        "2",
        "--predictions",
        preds.to_str().unwrap(),
        "--truth",
        root.to_str().unwrap(),
    ]);
    assert_eq!(got["images_scored"], 3);
    close("accuracy", &got["accuracy"], &serde_json::json!(2.0 / 3.0));
    close("top-2", &got["top_k_accuracy"], &serde_json::json!(1.0));
    assert_eq!(
        got["confusion_matrix"]["labels"],
        serde_json::json!(["cat", "dog"])
    );
    assert_eq!(
        got["confusion_matrix"]["matrix"],
        serde_json::json!([[1, 0], [1, 1]])
    );
    assert_eq!(
        got["missing_predictions"],
        serde_json::json!(["cat/sub/c.png"])
    );
    let unmatched = got["unmatched_predictions"][0].as_str().unwrap();
    assert!(unmatched.contains("not unique"), "{unmatched}");
}

#[test]
fn a_csv_without_a_label_column_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("truth.csv");
    std::fs::write(&csv, "file,class\na.png,cat\n").unwrap();
    let out = glance(&[
        "eval",
        "classify",
        "--predictions",
        "eval/classify/predictions.jsonl",
        "--truth",
        csv.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truth.csv") && err.contains("\"label\""),
        "{err}"
    );
}
