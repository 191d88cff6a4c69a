//! `glance caption` end to end through the real binary on the tiny BLIP fixture: output formats,
//! captions equal to transformers', bad inputs, sharding, stdin, resume after kill -9, offline
//! errors.

mod common;

use common::{glance, stdout_records};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// `glance caption` on the tiny model with 12 greedy tokens, as the reference's `greedy` case.
fn caption(args: &[&str]) -> Output {
    let model = common::blip_tiny();
    glance()
        .args(["caption", "--quiet", "--max-new-tokens", "12", "-m"])
        .arg(&model)
        .args(args)
        .output()
        .unwrap()
}

/// Copies some shared photos (PNG only: their pixels are bit-exact with transformers') into `dir`.
fn photos(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let dst = dir.join(n);
            std::fs::copy(common::shared_images().join(n), &dst).unwrap();
            dst
        })
        .collect()
}

const PNGS: &[&str] = &[
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "horse.png",
];

fn name_of(file: &str) -> String {
    Path::new(file)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn jsonl_captions_of_image_files_equal_transformers() {
    let dir = tempfile::tempdir().unwrap();
    photos(dir.path(), PNGS);
    let out = caption(&["--batch-size", "3", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = stdout_records(&out);
    let expected = common::blip_greedy_captions();
    assert_eq!(records.len(), PNGS.len());
    for rec in &records {
        let name = name_of(rec["file"].as_str().unwrap());
        assert_eq!(rec["caption"].as_str().unwrap(), expected[&name], "{name}");
        assert!(rec["width"].as_u64().unwrap() > 0);
    }
    // Deterministic order: sorted paths.
    let files: Vec<String> = records
        .iter()
        .map(|r| name_of(r["file"].as_str().unwrap()))
        .collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
}

#[test]
fn every_output_format_is_written_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = photos(dir.path(), &PNGS[..3]);
    let expected = common::blip_greedy_captions();
    let input = imgs[0].parent().unwrap().to_str().unwrap().to_string();

    let json = dir.path().join("out.json");
    assert!(caption(&["-o", json.to_str().unwrap(), &input])
        .status
        .success());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 3);

    let csv_path = dir.path().join("out.csv");
    assert!(caption(&["-o", csv_path.to_str().unwrap(), &input])
        .status
        .success());
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    assert_eq!(reader.headers().unwrap(), vec!["file", "caption", "error"]);
    for row in reader.records() {
        let row = row.unwrap();
        assert_eq!(&row[1], expected[&name_of(&row[0])]);
        assert_eq!(&row[2], "");
    }

    let coco = dir.path().join("captions.json");
    assert!(
        caption(&["--format", "coco", "-o", coco.to_str().unwrap(), &input])
            .status
            .success()
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&coco).unwrap()).unwrap();
    let images = doc["images"].as_array().unwrap();
    let annotations = doc["annotations"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(annotations.len(), 3);
    for (img, ann) in images.iter().zip(annotations) {
        assert_eq!(ann["image_id"], img["id"]);
        assert!(img["width"].as_u64().unwrap() > 0 && img["height"].as_u64().unwrap() > 0);
        assert_eq!(
            ann["caption"].as_str().unwrap(),
            expected[&name_of(img["file_name"].as_str().unwrap())]
        );
    }

    // Sidecars: written next to each image; existing ones follow --existing.
    let first_sidecar = imgs[0].with_extension("txt");
    std::fs::write(&first_sidecar, "hand written").unwrap();
    assert!(caption(&["--format", "txt", &input]).status.success());
    assert_eq!(
        std::fs::read_to_string(&first_sidecar).unwrap(),
        "hand written"
    );
    let second = std::fs::read_to_string(imgs[1].with_extension("txt")).unwrap();
    assert_eq!(second, expected[&name_of(imgs[1].to_str().unwrap())]);
    assert!(
        caption(&["--format", "txt", "--existing", "append", &input])
            .status
            .success()
    );
    let appended = std::fs::read_to_string(&first_sidecar).unwrap();
    assert_eq!(
        appended,
        format!(
            "hand written, {}",
            expected[&name_of(imgs[0].to_str().unwrap())]
        )
    );
}

#[test]
fn bad_inputs_become_error_records_and_the_rest_is_captioned() {
    let dir = tempfile::tempdir().unwrap();
    let good = photos(dir.path(), &["camera.png", "horse.png"]);
    std::fs::write(dir.path().join("empty.jpg"), b"").unwrap();
    std::fs::write(dir.path().join("notes.png"), b"this is not an image").unwrap();
    let png = std::fs::read(&good[0]).unwrap();
    std::fs::write(dir.path().join("truncated.png"), &png[..png.len() / 3]).unwrap();
    let mut corrupt = std::fs::read(common::shared_images().join("rocket.jpg")).unwrap();
    for b in corrupt.iter_mut().skip(600).take(4000) {
        *b = 0xAB;
    }
    corrupt.truncate(6000);
    std::fs::write(dir.path().join("corrupt.jpg"), &corrupt).unwrap();
    let missing = dir.path().join("does-not-exist.png");
    // The 512x512 photos stay under this limit; a 2000x2000 "bomb" does not.
    image::RgbImage::new(2000, 2000)
        .save(dir.path().join("bomb.png"))
        .unwrap();

    let out = caption(&[
        "--max-image-pixels",
        "1000000",
        dir.path().to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = stdout_records(&out);
    let by_name: HashMap<String, &serde_json::Value> = records
        .iter()
        .map(|r| (name_of(r["file"].as_str().unwrap()), r))
        .collect();
    assert_eq!(records.len(), 8, "{records:#?}");
    for ok in ["camera.png", "horse.png"] {
        assert!(by_name[ok]["caption"].is_string(), "{ok}: {}", by_name[ok]);
        assert!(by_name[ok].get("error").is_none());
    }
    for bad in [
        "empty.jpg",
        "notes.png",
        "truncated.png",
        "corrupt.jpg",
        "does-not-exist.png",
        "bomb.png",
    ] {
        let err = by_name[bad]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{bad} has no error"));
        assert!(!err.is_empty());
        assert!(by_name[bad].get("caption").is_none(), "{bad}");
    }
    assert!(by_name["bomb.png"]["error"]
        .as_str()
        .unwrap()
        .contains("decompression bomb"));
    assert!(by_name["empty.jpg"]["error"]
        .as_str()
        .unwrap()
        .contains("empty"));
}

#[test]
fn odd_but_valid_images_are_captioned() {
    let odd = common::repo().join("tests/fixtures/odd-images");
    let out = caption(&["--max-new-tokens", "3", odd.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = stdout_records(&out);
    assert_eq!(records.len(), 14);
    for rec in &records {
        assert!(rec.get("error").is_none(), "{rec}");
        assert!(rec["caption"].is_string());
    }
    let rotated = records
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with("rotated-exif.jpg"))
        .unwrap();
    // Stored 48x32 with EXIF orientation 6: displayed (and captioned) as 32x48.
    assert_eq!(
        (rotated["width"].as_u64(), rotated["height"].as_u64()),
        (Some(32), Some(48))
    );
}

#[test]
fn shards_partition_the_inputs_and_stdin_lists_paths() {
    let images = common::shared_images();
    let mut seen = Vec::new();
    for shard in ["1/3", "2/3", "3/3"] {
        let out = caption(&[
            "--max-new-tokens",
            "1",
            "--shard",
            shard,
            images.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        seen.extend(
            stdout_records(&out)
                .into_iter()
                .map(|r| r["file"].as_str().unwrap().to_string()),
        );
    }
    let all = stdout_records(&caption(&[
        "--max-new-tokens",
        "1",
        images.to_str().unwrap(),
    ]));
    let mut all: Vec<String> = all
        .iter()
        .map(|r| r["file"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    all.sort();
    assert_eq!(seen, all);

    let mut child = glance()
        .args(["caption", "--quiet", "--max-new-tokens", "1", "-m"])
        .arg(common::blip_tiny())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let list = format!(
        "{}\n{}\n",
        images.join("camera.png").display(),
        images.join("moon.png").display()
    );
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), list.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout_records(&out).len(), 2);
}

#[test]
fn killed_run_resumes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    // 40 inputs, batch 1: slow enough to be killed in the middle.
    for i in 0..40 {
        let src = common::shared_images().join(PNGS[i % PNGS.len()]);
        std::fs::copy(src, imgs.join(format!("img{i:02}.png"))).unwrap();
    }
    let out_file = dir.path().join("captions.jsonl");
    let mut child = glance()
        .args([
            "caption",
            "--quiet",
            "--batch-size",
            "1",
            "--max-new-tokens",
            "12",
            "-m",
        ])
        .arg(common::blip_tiny())
        .arg("-o")
        .arg(&out_file)
        .arg(&imgs)
        .spawn()
        .unwrap();
    // Kill as soon as a few records are on disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let lines = std::fs::read_to_string(&out_file)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 3 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = std::fs::read_to_string(&out_file).unwrap().lines().count();
    assert!(
        (3..40).contains(&before),
        "the run was killed midway ({before} records)"
    );
    // Simulate the worst case: a record cut in the middle of a line.
    let mut text = std::fs::read_to_string(&out_file).unwrap();
    text.push_str("{\"file\": \"half a rec");
    std::fs::write(&out_file, text).unwrap();

    let out = glance()
        .args([
            "caption",
            "--quiet",
            "--batch-size",
            "4",
            "--max-new-tokens",
            "12",
            "--resume",
            "-m",
        ])
        .arg(common::blip_tiny())
        .arg("-o")
        .arg(&out_file)
        .arg(&imgs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let files: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["file"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut unique = files.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(files.len(), 40, "every input once: {files:?}");
    assert_eq!(unique.len(), 40);
    let expected = common::blip_greedy_captions();
    for line in text.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let copy = name_of(rec["file"].as_str().unwrap());
        let i: usize = copy[3..5].parse().unwrap();
        assert_eq!(
            rec["caption"].as_str().unwrap(),
            expected[PNGS[i % PNGS.len()]]
        );
    }
}

#[test]
fn offline_and_not_cached_is_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let out = glance()
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .args(["caption", "-m", "Salesforce/blip-image-captioning-base"])
        .arg(common::shared_images().join("camera.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("HF_HUB_OFFLINE") && lines[0].contains("glance download"),
        "{stderr}"
    );
}

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#,
    )
    .unwrap();
    let out = glance()
        .args(["caption", "-m"])
        .arg(dir.path())
        .arg(common::shared_images().join("camera.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LlamaForCausalLM") && stderr.contains("BlipForConditionalGeneration"),
        "{stderr}"
    );
}

/// Lays out `model` as huggingface_hub's cache does: refs/main → snapshots/<commit>/files.
fn fake_hub_cache(cache: &Path, repo_id: &str, model: &Path) {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn hub_ids_load_from_the_python_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    fake_hub_cache(
        &home.path().join("hub"),
        "glance-test/blip-tiny",
        &common::blip_tiny(),
    );
    let image = common::shared_images().join("camera.png");
    let out = glance()
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .args([
            "caption",
            "--quiet",
            "--max-new-tokens",
            "12",
            "-m",
            "glance-test/blip-tiny",
        ])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = &stdout_records(&out)[0];
    assert_eq!(
        rec["caption"].as_str().unwrap(),
        common::blip_greedy_captions()["camera.png"]
    );

    // HF_HUB_CACHE takes precedence over HF_HOME.
    let cache = tempfile::tempdir().unwrap();
    fake_hub_cache(cache.path(), "glance-test/other", &common::blip_tiny());
    let out = glance()
        .env("HF_HOME", home.path())
        .env("HF_HUB_CACHE", cache.path())
        .args([
            "caption",
            "--quiet",
            "--max-new-tokens",
            "2",
            "-m",
            "glance-test/other",
        ])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// candle has no bf16 matmul on the CPU: `--dtype bf16` there without glance's kernel (here
/// turned off by `GLANCE_CANDLE_OPS`) stops before any image with one line saying what to use,
/// instead of writing an error record for every image.
#[test]
fn cpu_bf16_without_the_kernel_is_refused_up_front() {
    let out = glance()
        .env("GLANCE_CANDLE_OPS", "1")
        .args(["caption", "-m"])
        .arg(common::blip_tiny())
        .args(["--dtype", "bf16"])
        .arg(common::shared_images().join("camera.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--dtype bf16") && stderr.contains("f32"),
        "{stderr}"
    );
}

/// `--dtype bf16` on a CPU with AVX512-BF16: the model stays f32 and the linear layers run
/// glance's bf16 kernel. Rounding the matmul inputs to bf16 may flip a near-tie token, but a
/// kernel that computed the wrong product would change nearly every caption; on the 11 photos
/// 10 captions agree (measured when this was written).
#[test]
fn bf16_matmuls_agree_with_f32_on_most_captions() {
    let images = common::shared_images();
    if !glance::kernels::gemm_bf16::available() {
        let out = caption(&["--dtype", "bf16", images.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("AVX512-BF16"));
        eprintln!("no AVX512-BF16 on this CPU: --dtype bf16 is refused; not compared");
        return;
    }
    let run = |dtype: &str| {
        let out = caption(&["--dtype", dtype, images.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_records(&out)
    };
    let (f32_recs, bf16_recs) = (run("f32"), run("bf16"));
    assert_eq!(f32_recs.len(), 11);
    let same = f32_recs
        .iter()
        .zip(&bf16_recs)
        .filter(|(a, b)| a["caption"] == b["caption"])
        .count();
    eprintln!("bf16 matmuls: {same} of 11 captions equal to f32");
    assert!(same >= 9, "only {same} of 11 captions agree");
}
