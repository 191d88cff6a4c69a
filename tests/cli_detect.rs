//! `glance detect` and `glance caption --task` with the tiny Florence-2 end to end: the boxes the
//! CLI writes equal what transformers' `post_process_generation` read from its own generation
//! (tests/fixtures/florence2-tiny/reference.json), in every output format, drawn, resumed, and
//! alongside a broken image.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn florence() -> PathBuf {
    common::repo().join("tests/fixtures/florence2-tiny")
}

/// The reference case for `task` with `beams` beams.
fn case(task: &str, beams: u64) -> Value {
    let reference = common::reference(&florence());
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["task"] == task && c["num_beams"] == beams)
        .unwrap()
        .clone()
}

fn detect(args: &[&str]) -> std::process::Output {
    let images = common::shared_images();
    let mut cmd = common::glance();
    cmd.arg("detect")
        .arg("-m")
        .arg(florence())
        .args(["--max-new-tokens", "24", "-q"])
        .args(args)
        .arg(&images);
    cmd.output().unwrap()
}

fn by_file(records: &[Value]) -> std::collections::HashMap<String, Value> {
    records
        .iter()
        .map(|r| {
            let name = Path::new(r["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            (name, r.clone())
        })
        .collect()
}

/// transformers' boxes and labels for one reference row, as `detections`.
fn expected_detections(row: &Value) -> Value {
    let parsed = &row["parsed"];
    let boxes = parsed["bboxes"].as_array().unwrap();
    let labels = parsed["labels"].as_array().unwrap();
    boxes
        .iter()
        .zip(labels)
        .map(|(b, l)| serde_json::json!({"label": l, "box": b}))
        .collect()
}

#[test]
fn detections_equal_transformers_post_processing() {
    let out = common::succeed(&mut {
        let mut c = common::glance();
        c.arg("detect")
            .arg("-m")
            .arg(florence())
            .args(["--max-new-tokens", "24", "-q"])
            .arg(common::shared_images());
        c
    });
    let records = by_file(&common::stdout_records(&out));
    let od = case("<OD>", 3);
    let mut boxes = 0;
    for row in od["rows"].as_array().unwrap() {
        let name = row["image"].as_str().unwrap();
        let rec = &records[name];
        assert_eq!(rec["width"], row["size"][0], "{name}");
        assert_eq!(rec["height"], row["size"][1], "{name}");
        assert_eq!(rec["detections"], expected_detections(row), "{name}");
        boxes += rec["detections"].as_array().unwrap().len();
    }
    assert!(boxes > 10, "only {boxes} boxes: the comparison says little");
    eprintln!(
        "{boxes} boxes on {} photos equal transformers'",
        records.len()
    );
}

#[test]
fn ocr_regions_carry_their_quadrilaterals() {
    let out = detect(&["--task", "ocr-region", "--num-beams", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = by_file(&common::stdout_records(&out));
    let mut regions = 0;
    for row in case("<OCR_WITH_REGION>", 1)["rows"].as_array().unwrap() {
        let got = records[row["image"].as_str().unwrap()]["detections"]
            .as_array()
            .unwrap()
            .clone();
        let quads = row["parsed"]["quad_boxes"].as_array().unwrap();
        assert_eq!(got.len(), quads.len());
        for (d, q) in got.iter().zip(quads) {
            assert_eq!(&d["polygon"], q);
            regions += 1;
        }
    }
    assert!(regions > 0);
}

#[test]
fn grounding_labels_boxes_with_the_phrases_asked_for() {
    let out = detect(&["--task", "grounding", "--labels", "a dog,a cat"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = common::stdout_records(&out);
    let labels: std::collections::HashSet<String> = records
        .iter()
        .flat_map(|r| r["detections"].as_array().unwrap().clone())
        .map(|d| d["label"].as_str().unwrap().to_string())
        .collect();
    assert!(!labels.is_empty());
    assert!(
        labels.iter().all(|l| l == "a dog" || l == "a cat"),
        "{labels:?}"
    );
    let out = detect(&["--task", "grounding"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--labels"));
    let out = detect(&["--task", "od", "--labels", "a dog"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn coco_yolo_and_label_studio_hold_the_same_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("d.jsonl");
    let coco = dir.path().join("d.json");
    let yolo = dir.path().join("yolo");
    let ls = dir.path().join("ls.json");
    for (format, path) in [
        ("jsonl", &jsonl),
        ("coco", &coco),
        ("yolo", &yolo),
        ("labelstudio", &ls),
    ] {
        let out = detect(&["--format", format, "-o", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let records: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&coco).unwrap()).unwrap();
    let categories: Vec<&str> = doc["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let annotations = doc["annotations"].as_array().unwrap();
    let images = doc["images"].as_array().unwrap();
    assert_eq!(images.len(), records.len());
    let mut k = 0;
    let yolo_classes: Vec<String> = std::fs::read_to_string(yolo.join("classes.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let tasks: Value = serde_json::from_str(&std::fs::read_to_string(&ls).unwrap()).unwrap();
    for (i, rec) in records.iter().enumerate() {
        let (w, h) = (
            rec["width"].as_f64().unwrap(),
            rec["height"].as_f64().unwrap(),
        );
        assert_eq!(images[i]["width"], rec["width"]);
        let stem = Path::new(rec["file"].as_str().unwrap())
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let lines: Vec<String> = std::fs::read_to_string(yolo.join(format!("{stem}.txt")))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let found = rec["detections"].as_array().unwrap();
        assert_eq!(lines.len(), found.len(), "{stem}: one YOLO line per box");
        let rects: Vec<&Value> = tasks[i]["predictions"][0]["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "rectanglelabels")
            .collect();
        assert_eq!(rects.len(), found.len(), "{stem}: one rectangle per box");
        for ((d, line), rect) in found.iter().zip(&lines).zip(rects) {
            let b: Vec<f64> = d["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let (x1, x2, y1, y2) = (
                b[0].min(b[2]),
                b[0].max(b[2]),
                b[1].min(b[3]),
                b[1].max(b[3]),
            );
            let a = &annotations[k];
            k += 1;
            assert_eq!(a["image_id"], images[i]["id"]);
            assert_eq!(a["iscrowd"], 0);
            let whole = |v: f64| v as i64;
            assert_eq!(
                a["bbox"],
                serde_json::json!([whole(x1), whole(y1), whole(x2 - x1), whole(y2 - y1)])
            );
            assert_eq!(a["area"].as_f64().unwrap(), (x2 - x1) * (y2 - y1));
            let category = categories[a["category_id"].as_u64().unwrap() as usize - 1];
            assert_eq!(category, d["label"].as_str().unwrap());
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(
                yolo_classes[parts[0].parse::<usize>().unwrap()],
                d["label"].as_str().unwrap()
            );
            let n: Vec<f64> = parts[1..].iter().map(|p| p.parse().unwrap()).collect();
            for (got, want) in n.iter().zip([
                (x1 + x2) / 2.0 / w,
                (y1 + y2) / 2.0 / h,
                (x2 - x1) / w,
                (y2 - y1) / h,
            ]) {
                assert!((got - want).abs() < 1e-6, "{stem}: {line}");
            }
            assert!((rect["value"]["x"].as_f64().unwrap() - x1 / w * 100.0).abs() < 1e-9);
            assert_eq!(rect["value"]["rectanglelabels"][0], d["label"]);
        }
    }
    assert_eq!(k, annotations.len());
    let yaml = std::fs::read_to_string(yolo.join("data.yaml")).unwrap();
    assert!(
        yaml.contains(&format!("nc: {}", yolo_classes.len())),
        "{yaml}"
    );
}

#[test]
fn drawn_copies_have_the_box_edges_in_the_label_colour() {
    let dir = tempfile::tempdir().unwrap();
    let out = detect(&["--draw", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut checked = 0;
    for rec in common::stdout_records(&out) {
        let name = Path::new(rec["file"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_owned();
        let drawn = image::open(dir.path().join(&name)).unwrap().to_rgb8();
        assert_eq!(
            (drawn.width(), drawn.height()),
            (
                rec["width"].as_u64().unwrap() as u32,
                rec["height"].as_u64().unwrap() as u32
            )
        );
        // The last box is drawn over the others: its bottom edge keeps its colour.
        let Some(d) = rec["detections"].as_array().unwrap().last() else {
            continue;
        };
        let b: Vec<i64> = d["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let (x1, x2, y1, y2) = (
            b[0].min(b[2]),
            b[0].max(b[2]),
            b[1].min(b[3]),
            b[1].max(b[3]),
        );
        if y2 - y1 < 30 || y2 >= drawn.height() as i64 || x2 >= drawn.width() as i64 {
            continue;
        }
        let color = glance::run::draw::color_of(d["label"].as_str().unwrap());
        let x = (x1 + x2) / 2;
        if name.to_string_lossy().ends_with(".png") {
            assert_eq!(
                *drawn.get_pixel(x as u32, y2 as u32),
                color,
                "{name:?} bottom edge"
            );
            assert_eq!(
                *drawn.get_pixel(x1 as u32, (y1 + y2) as u32 / 2),
                color,
                "{name:?} left edge"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no box edge was checked");
}

#[test]
fn a_broken_image_is_an_error_record_and_a_resumed_run_adds_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("in");
    std::fs::create_dir(&images).unwrap();
    for name in ["chelsea.png", "moon.png", "coffee.png"] {
        std::fs::copy(common::shared_images().join(name), images.join(name)).unwrap();
    }
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let out_path = dir.path().join("d.jsonl");
    let run = |extra: &[&str]| {
        let mut c = common::glance();
        c.arg("detect")
            .arg("-m")
            .arg(florence())
            .args(["--max-new-tokens", "12", "-q", "-o"])
            .arg(&out_path)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[
        images.join("chelsea.png").to_str().unwrap(),
        images.join("broken.png").to_str().unwrap(),
    ]);
    assert_eq!(
        first.status.code(),
        Some(1),
        "a failed image makes exit code 1"
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        text.contains("broken.png") && text.contains("\"error\""),
        "{text}"
    );
    let second = run(&["--resume", images.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    let records: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let files: Vec<&str> = records
        .iter()
        .map(|r| r["file"].as_str().unwrap())
        .collect();
    assert_eq!(records.len(), 4, "{files:?}");
    let unique: std::collections::HashSet<&str> = files.iter().copied().collect();
    assert_eq!(unique.len(), 4, "{files:?}");
}

#[test]
fn caption_task_names_and_raw_task_tokens() {
    let chelsea = common::shared_images().join("chelsea.png");
    let row = |task: &str| -> Value {
        case(task, 3)["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["image"] == "chelsea.png")
            .unwrap()
            .clone()
    };
    for (flag, value, task) in [
        ("--task", "caption", "<CAPTION>"),
        ("--task", "ocr", "<OCR>"),
        ("--prompt", "<DETAILED_CAPTION>", "<DETAILED_CAPTION>"),
    ] {
        let out = common::succeed(
            common::glance()
                .arg("caption")
                .arg("-m")
                .arg(florence())
                .args([flag, value, "--max-new-tokens", "24", "-q"])
                .arg(&chelsea),
        );
        let rec = &common::stdout_records(&out)[0];
        assert_eq!(
            rec["caption"],
            row(task)["text"].as_str().unwrap().trim(),
            "{flag} {value}"
        );
    }
    // The default task is more-detailed.
    let out = common::succeed(
        common::glance()
            .arg("caption")
            .arg("-m")
            .arg(florence())
            .args(["--max-new-tokens", "24", "-q"])
            .arg(&chelsea),
    );
    assert_eq!(
        common::stdout_records(&out)[0]["caption"],
        row("<MORE_DETAILED_CAPTION>")["text"]
            .as_str()
            .unwrap()
            .trim()
    );
    let out = common::glance()
        .arg("caption")
        .arg("-m")
        .arg(common::blip_tiny())
        .args(["--task", "caption"])
        .arg(&chelsea)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--task is for Florence-2"));
    let out = common::glance()
        .arg("detect")
        .arg("-m")
        .arg(common::blip_tiny())
        .arg(&chelsea)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Florence-2"));
}

#[test]
fn a_pipeline_captions_and_boxes_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let model = florence();
    std::fs::write(
        &file,
        format!(
            "[[stage]]\ntask = \"caption\"\nmodel = {m:?}\nprompt = \"<CAPTION>\"\nmax_new_tokens = 24\n\n\
             [[stage]]\ntask = \"detect\"\nmodel = {m:?}\ndetect_task = \"od\"\nmax_new_tokens = 24\n",
            m = model.to_str().unwrap()
        ),
    )
    .unwrap();
    let chelsea = common::shared_images().join("chelsea.png");
    let out = common::succeed(
        common::glance()
            .arg("run")
            .arg(&file)
            .arg("-q")
            .arg(&chelsea),
    );
    let rec = &common::stdout_records(&out)[0];
    let od = case("<OD>", 3);
    let row = od["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["image"] == "chelsea.png")
        .unwrap();
    assert_eq!(rec["detections"], expected_detections(row));
    let caption_row = case("<CAPTION>", 3);
    let caption = caption_row["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["image"] == "chelsea.png")
        .unwrap();
    assert_eq!(rec["caption"], caption["text"].as_str().unwrap().trim());
}
