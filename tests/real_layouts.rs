//! Checkpoints laid out as people download them: `pytorch_model.bin` weights (single and
//! sharded, the format of the default models' Hub repos) and a Hugging Face cache made the way
//! Python's `huggingface_hub` makes it (blobs, snapshots of symlinks, `refs/main`, `.no_exist`
//! markers), used offline with no `--model`.

mod common;

use std::path::{Path, PathBuf};

use common::{glance, repo, shared_images, stdout_records};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// `dir` filled with `files` (name → source path).
fn model_dir(dir: &Path, files: &[(&str, PathBuf)]) {
    for (name, src) in files {
        std::fs::copy(src, dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
}

/// The given files of a fixture directory.
fn from_fixture(fixture_name: &str, names: &[&'static str]) -> Files {
    names
        .iter()
        .map(|n| (*n, fixture(fixture_name).join(n)))
        .collect()
}

/// A model's files: name in the repo → where the test takes it from.
type Files = Vec<(&'static str, PathBuf)>;

/// A few shared photos, PNG and JPEG.
fn images() -> Vec<PathBuf> {
    ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"]
        .iter()
        .map(|n| shared_images().join(n))
        .collect()
}

fn run_ok(args: &[&str], images: &[PathBuf], env: &[(&str, &Path)]) -> Vec<Value> {
    let mut cmd = glance();
    cmd.args(args).args(images).arg("-q");
    for (k, v) in env {
        cmd.env(k, v);
    }
    stdout_records(&common::succeed(&mut cmd))
}

/// Records without `file`, for comparing runs over the same images in the same order.
fn results(records: Vec<Value>) -> Vec<Value> {
    records
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("file");
            r
        })
        .collect()
}

const BLIP_FILES: &[&str] = &[
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];
const CLIP_FILES: &[&str] = &[
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

#[test]
fn pytorch_bin_captions_equal_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = from_fixture("blip-tiny", BLIP_FILES);
    files.push((
        "generation_config.json",
        fixture("blip-tiny/generation_config.json"),
    ));
    files.push((
        "pytorch_model.bin",
        fixture("bin/blip-tiny/pytorch_model.bin"),
    ));
    model_dir(dir.path(), &files);
    let args = |m: &Path| vec!["caption".to_string(), "-m".into(), m.display().to_string()];
    let from_bin = run_ok(
        &args(dir.path())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &images(),
        &[],
    );
    let from_safetensors = run_ok(
        &args(&fixture("blip-tiny"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &images(),
        &[],
    );
    assert_eq!(from_bin.len(), 4);
    assert!(
        from_bin.iter().all(|r| r["caption"].is_string()),
        "{from_bin:?}"
    );
    assert_eq!(results(from_bin), results(from_safetensors));
}

#[test]
fn pytorch_bin_scores_equal_safetensors_single_and_sharded() {
    let classify = |m: &Path| {
        run_ok(
            &[
                "classify",
                "-m",
                m.to_str().unwrap(),
                "--labels",
                "cat,coffee,rocket,person,dog",
                "--top-k",
                "5",
            ],
            &images(),
            &[],
        )
    };
    let want = results(classify(&fixture("clip-tiny")));
    let single = tempfile::tempdir().unwrap();
    let mut files = from_fixture("clip-tiny", CLIP_FILES);
    files.push((
        "pytorch_model.bin",
        fixture("bin/clip-tiny/pytorch_model.bin"),
    ));
    model_dir(single.path(), &files);
    assert_eq!(results(classify(single.path())), want);

    let sharded = tempfile::tempdir().unwrap();
    let mut files = from_fixture("clip-tiny", CLIP_FILES);
    for shard in [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    ] {
        files.push((shard, fixture("bin/clip-tiny-sharded").join(shard)));
    }
    model_dir(sharded.path(), &files);
    assert_eq!(results(classify(sharded.path())), want);
}

/// The commit every fake snapshot is at.
const COMMIT: &str = "82a9cbfa0e3a0e5ef3e8c2bc1b05d3b1b2c7e3f1";

/// A cache entry as `huggingface_hub` writes it under `hub/`: the files as blobs named by a
/// content hash, `snapshots/<commit>/<file>` relative symlinks to them, `refs/main`, and an
/// empty `.no_exist/<commit>/<file>` for each file the repo was found not to have.
fn python_cache(hub: &Path, repo_id: &str, files: &[(&str, PathBuf)], absent: &[&str]) {
    let dir = hub.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshot = dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), COMMIT).unwrap();
    for (name, src) in files {
        let bytes = std::fs::read(src).unwrap();
        // FNV-1a, enough to give distinct files distinct blob names here.
        let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let blob = format!("{hash:016x}{:024x}", bytes.len());
        std::fs::write(dir.join("blobs").join(&blob), &bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(name))
            .unwrap();
    }
    let markers = dir.join(".no_exist").join(COMMIT);
    std::fs::create_dir_all(&markers).unwrap();
    for name in absent {
        std::fs::write(markers.join(name), b"").unwrap();
    }
}

/// What transformers leaves behind after loading each default model from the Hub: the files
/// the repo has and the loaders read, and markers for those it probed and the repo lacks (no
/// `model.safetensors` on `main` for either; no `generation_config.json` for BLIP).
fn default_models_cache(home: &Path) -> (Files, Files) {
    let hub = home.join("hub");
    let mut blip = from_fixture("blip-tiny", BLIP_FILES);
    blip.push((
        "pytorch_model.bin",
        fixture("bin/blip-tiny/pytorch_model.bin"),
    ));
    let probed = [
        "model.safetensors",
        "model.safetensors.index.json",
        "generation_config.json",
        "processor_config.json",
        "chat_template.json",
        "added_tokens.json",
    ];
    python_cache(
        &hub,
        "Salesforce/blip-image-captioning-base",
        &blip,
        &probed,
    );
    let mut clip = from_fixture("clip-tiny", CLIP_FILES);
    clip.push((
        "pytorch_model.bin",
        fixture("bin/clip-tiny/pytorch_model.bin"),
    ));
    python_cache(&hub, "openai/clip-vit-base-patch32", &clip, &probed);
    (blip, clip)
}

#[cfg(unix)]
#[test]
fn default_models_run_offline_from_a_python_made_cache() {
    let home = tempfile::tempdir().unwrap();
    let (blip, clip) = default_models_cache(home.path());
    let env = [("HF_HOME", home.path())];
    // The same files as plain directories, to compare with.
    let blip_dir = tempfile::tempdir().unwrap();
    model_dir(blip_dir.path(), &blip);
    let clip_dir = tempfile::tempdir().unwrap();
    model_dir(clip_dir.path(), &clip);

    let captions = run_ok(&["caption"], &images(), &env);
    assert_eq!(captions.len(), 4);
    assert!(
        captions.iter().all(|r| r["caption"].is_string()),
        "{captions:?}"
    );
    let want = run_ok(
        &["caption", "-m", blip_dir.path().to_str().unwrap()],
        &images(),
        &[],
    );
    assert_eq!(results(captions), results(want));

    let labels = ["--labels", "cat,coffee,rocket,person"];
    let classes = run_ok(&[&["classify"][..], &labels].concat(), &images(), &env);
    let clip_path = clip_dir.path().to_str().unwrap();
    let want = run_ok(
        &[&["classify", "-m", clip_path][..], &labels].concat(),
        &images(),
        &[],
    );
    assert!(
        classes.iter().all(|r| r["label"].is_string()),
        "{classes:?}"
    );
    assert_eq!(results(classes), results(want));

    let tags = run_ok(&["label"], &images(), &env);
    let want = run_ok(&["label", "-m", clip_path], &images(), &[]);
    assert!(tags.iter().all(|r| r["labels"].is_array()), "{tags:?}");
    assert_eq!(results(tags), results(want));

    // A commit hash as the revision resolves to its snapshot, as in huggingface_hub.
    let pinned = run_ok(&["caption", "--revision", COMMIT], &images()[..1], &env);
    assert_eq!(pinned[0]["caption"], captions_of(&images()[..1], &env)[0]);
}

fn captions_of(images: &[PathBuf], env: &[(&str, &Path)]) -> Vec<Value> {
    run_ok(&["caption"], images, env)
        .into_iter()
        .map(|r| r["caption"].clone())
        .collect()
}

#[cfg(unix)]
#[test]
fn offline_cache_without_a_required_file_names_it() {
    let home = tempfile::tempdir().unwrap();
    let hub = home.path().join("hub");
    let mut blip = from_fixture("blip-tiny", &["config.json", "preprocessor_config.json"]);
    blip.push((
        "pytorch_model.bin",
        fixture("bin/blip-tiny/pytorch_model.bin"),
    ));
    python_cache(
        &hub,
        "Salesforce/blip-image-captioning-base",
        &blip,
        &["model.safetensors"],
    );
    let caption = |home: &Path| {
        glance()
            .env("HF_HOME", home)
            .arg("caption")
            .arg(shared_images().join("chelsea.png"))
            .output()
            .unwrap()
    };
    // Not cached and not known to be absent: the cache is incomplete, so downloading helps.
    let out = caption(home.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("glance download"),
        "{err}"
    );

    // Known to be absent: the repo has no such file, and downloading would not help.
    let markers = hub.join(format!(
        "models--Salesforce--blip-image-captioning-base/.no_exist/{COMMIT}"
    ));
    std::fs::write(markers.join("tokenizer.json"), b"").unwrap();
    let out = caption(home.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has no tokenizer.json") && !err.contains("glance download"),
        "{err}"
    );

    // No snapshot at all: nothing to go on but the advice to download.
    let empty = tempfile::tempdir().unwrap();
    let out = caption(empty.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("glance download"), "{err}");
}

/// A copy of a fixture directory whose `config.json` is changed by `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    dir
}

#[test]
fn transformers_4_configs_with_null_token_ids_load() {
    // A ViT+BERT captioner saved by transformers 4.x: its BERT decoder config holds nulls.
    let dir = edited_copy("vit-bert-tiny", |c| {
        for key in ["bos_token_id", "sep_token_id", "decoder_start_token_id"] {
            c["decoder"][key] = Value::Null;
        }
        c["decoder"]["pad_token_id"] = Value::Null;
    });
    let caption = |m: &Path| run_ok(&["caption", "-m", m.to_str().unwrap()], &images(), &[]);
    let got = caption(dir.path());
    assert!(got.iter().all(|r| r["caption"].is_string()), "{got:?}");
    assert_eq!(results(got), results(caption(&fixture("vit-bert-tiny"))));
}

#[test]
fn safetensors_with_bool_buffers_load() {
    // GPT-2 checkpoints saved by transformers ≈4.2x–4.30 and converted later carry BOOL causal
    // mask buffers (`attn.bias`) that nothing reads.
    let dir = edited_copy("vit-gpt2-tiny", |_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n = 8;
    let mask: Vec<u8> = (0..n * n).map(|i| u8::from(i % n <= i / n)).collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.tensors().into_iter().collect();
    for layer in 0..2 {
        views.push((
            format!("decoder.transformer.h.{layer}.attn.bias"),
            safetensors::tensor::TensorView::new(safetensors::Dtype::BOOL, vec![1, 1, n, n], &mask)
                .unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let caption = |m: &Path| run_ok(&["caption", "-m", m.to_str().unwrap()], &images(), &[]);
    let got = caption(dir.path());
    assert!(got.iter().all(|r| r["caption"].is_string()), "{got:?}");
    assert_eq!(results(got), results(caption(&fixture("vit-gpt2-tiny"))));
}

#[test]
fn clip_tokenizer_without_a_pad_token_still_classifies() {
    let dir = edited_copy("clip-tiny", |_| {});
    let path = dir.path().join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("pad_token");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let classify = |m: &Path| {
        let labels = "cat,a cup of hot coffee,rocket,person on the moon";
        let args = [
            "classify",
            "-m",
            m.to_str().unwrap(),
            "--labels",
            labels,
            "--top-k",
            "4",
        ];
        run_ok(&args, &images(), &[])
    };
    assert_eq!(
        results(classify(dir.path())),
        results(classify(&fixture("clip-tiny")))
    );
}

#[test]
fn bare_size_means_square_or_shortest_edge_by_processor_type() {
    // Legacy `"size": N` configs on non-square photos: N×N for DeiT, ViT and BLIP, the
    // shortest edge for CLIP and ConvNeXt, as each transformers processor reads it.
    let dir = fixture("preprocess");
    let reference = candle_core::safetensors::load(
        dir.join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut checked = 0;
    for name in [
        "deit",
        "deit-legacy-extractor",
        "vit",
        "blip",
        "clip",
        "convnext",
    ] {
        let cfg =
            glance::preprocess::PreprocessorConfig::from_file(&dir.join(format!("{name}.json")))
                .unwrap();
        let pre = glance::preprocess::Preprocessor::new(cfg).unwrap();
        for photo in ["chelsea.png", "coffee.png", "motorcycle_left.png"] {
            let image =
                glance::preprocess::decode::decode(&shared_images().join(photo), u64::MAX).unwrap();
            let ours = pre.apply(&image.rgb);
            let want = reference[&format!("{name}/{photo}")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(ours.len(), want.len(), "{name} {photo}");
            let diff = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-6, "{name} on {photo}: pixels differ by {diff}");
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}

/// siglip-tiny's weights and configs with the tokenizer of tests/fixtures/siglip-spiece: a
/// `spiece.model` and no `tokenizer.json`, as google/siglip-* repos ship.
fn siglip_from_spiece() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut files = from_fixture(
        "siglip-tiny",
        &[
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
        ],
    );
    files.extend(from_fixture(
        "siglip-spiece",
        &["spiece.model", "tokenizer_config.json"],
    ));
    model_dir(dir.path(), &files);
    dir
}

fn siglip_spiece_reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("siglip-spiece/reference.json")).unwrap())
        .unwrap()
}

#[test]
fn siglip_spiece_model_tokenizes_like_siglip_tokenizer() {
    let dir = siglip_from_spiece();
    let files = glance::load::hub::ModelFiles::new(glance::load::hub::ModelSource::Local(
        dir.path().to_path_buf(),
    ))
    .unwrap();
    let tokenizer = glance::load::load_text_tokenizer(&files).unwrap();
    let reference = siglip_spiece_reference();
    let mut mismatches = Vec::new();
    let cases = reference["tricky"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tokenizer.encode_batch(&[text.to_string()]).unwrap()[0]
            .get_ids()
            .to_vec();
        if got != want {
            mismatches.push(format!(
                "{text:?}: glance {got:?}, SiglipTokenizer {want:?}"
            ));
        }
    }
    eprintln!(
        "{} of {} strings tokenized alike",
        cases.len() - mismatches.len(),
        cases.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn siglip_from_spiece_scores_equal_transformers() {
    let dir = siglip_from_spiece();
    let reference = siglip_spiece_reference();
    let labels: Vec<String> = serde_json::from_value(reference["labels"].clone()).unwrap();
    let template = reference["template"].as_str().unwrap();
    // The ids SiglipProcessor pads to the text tower's 16 positions.
    let files = glance::load::hub::ModelFiles::new(glance::load::hub::ModelSource::Local(
        dir.path().to_path_buf(),
    ))
    .unwrap();
    let model = glance::tasks::zero_shot::load_image_text(
        &files,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let prompts: Vec<String> = labels.iter().map(|l| template.replace("{}", l)).collect();
    let want: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
    assert_eq!(model.tokenize(&prompts).unwrap(), want);

    // Through the CLI, on the PNG photos (JPEG decoders differ from Pillow's).
    let names: Vec<String> = serde_json::from_value(reference["images"].clone()).unwrap();
    let pngs: Vec<(usize, PathBuf)> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.ends_with(".png"))
        .map(|(i, n)| (i, shared_images().join(n)))
        .collect();
    let paths: Vec<PathBuf> = pngs.iter().map(|(_, p)| p.clone()).collect();
    let records = run_ok(
        &[
            "classify",
            "-m",
            dir.path().to_str().unwrap(),
            "--labels",
            &labels.join(","),
            "--template",
            template,
            "--top-k",
            &labels.len().to_string(),
        ],
        &paths,
        &[],
    );
    let mut worst = 0f64;
    for ((i, _), rec) in pngs.iter().zip(&records) {
        for p in rec["predictions"].as_array().unwrap() {
            let label = p["label"].as_str().unwrap();
            let j = labels.iter().position(|l| l == label).unwrap();
            let want = reference["probs"][*i][j].as_f64().unwrap();
            worst = worst.max((p["score"].as_f64().unwrap() - want).abs());
        }
        assert_eq!(rec["predictions"].as_array().unwrap().len(), labels.len());
    }
    assert!(worst < 1e-5, "scores differ from transformers' by {worst}");
}

#[test]
fn jpeg_pixels_equal_pillows() {
    // tests/fixtures/generate_jpegs.py: every JPEG layout Pillow writes, and its pixels after
    // exif_transpose and convert("RGB").
    let dir = fixture("jpeg");
    let reference = candle_core::safetensors::load(
        dir.join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = reference.keys().collect();
    names.sort();
    assert_eq!(names.len(), 12);
    for name in names {
        let want = &reference[name];
        let (h, w, _) = want.dims3().unwrap();
        let decoded =
            glance::preprocess::decode::decode(&dir.join(format!("{name}.jpg")), u64::MAX).unwrap();
        assert_eq!(
            (decoded.height as usize, decoded.width as usize),
            (h, w),
            "{name}"
        );
        let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let differ = decoded
            .rgb
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differ,
            0,
            "{name}: {differ} of {} bytes differ from Pillow's",
            want.len()
        );
    }
}

#[test]
fn a_truncated_jpeg_is_an_error_record() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(shared_images().join("rocket.jpg")).unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = glance::preprocess::decode::decode(&cut, u64::MAX)
        .err()
        .unwrap();
    assert!(err.contains("truncated"), "{err}");
}

/// A Hub on 127.0.0.1 serving `files` of one repo the way the Hub's resolve endpoint answers
/// hf-hub (an etag, the commit, byte ranges), 404 for anything else. Answers at most `limit`
/// requests, then stops.
fn fake_hub(files: Vec<(&'static str, PathBuf)>, limit: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(limit) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            // "bytes=0-0" (hf-hub's metadata probe) or "bytes=N-" (the download).
            let mut range: (usize, Option<usize>) = (0, None);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line
                    .to_ascii_lowercase()
                    .trim()
                    .strip_prefix("range: bytes=")
                {
                    let (a, b) = r.split_once('-').unwrap();
                    range = (a.parse().unwrap(), b.parse().ok());
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or_default();
            let file = path.rsplit("/resolve/main/").next().unwrap_or_default();
            let response = match files.iter().find(|(name, _)| *name == file) {
                None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_vec(),
                Some((_, src)) => {
                    let bytes = std::fs::read(src).unwrap();
                    let end = range.1.unwrap_or(bytes.len() - 1).min(bytes.len() - 1);
                    let body = &bytes[range.0..=end];
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\netag: \"{:016x}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-range: bytes {}-{end}/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        bytes.len() * 1_000_003 + file.len(),
                        range.0,
                        bytes.len(),
                        body.len()
                    );
                    [head.into_bytes(), body.to_vec()].concat()
                }
            };
            let _ = stream.write_all(&response);
        }
    });
    address
}

#[cfg(unix)]
#[test]
fn glance_download_leaves_no_exist_markers_for_offline_runs() {
    let home = tempfile::tempdir().unwrap();
    let mut files = from_fixture("blip-tiny", BLIP_FILES);
    files.push((
        "pytorch_model.bin",
        fixture("bin/blip-tiny/pytorch_model.bin"),
    ));
    let hub = fake_hub(files, 64);
    common::succeed(
        glance()
            .env_remove("HF_HUB_OFFLINE")
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", &hub)
            .args(["download", "Salesforce/blip-image-captioning-base"]),
    );
    let repo = home
        .path()
        .join("hub/models--Salesforce--blip-image-captioning-base");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    // The files the repo lacks are marked as huggingface_hub marks them.
    for absent in [
        "model.safetensors",
        "model.safetensors.index.json",
        "generation_config.json",
    ] {
        let marker = repo.join(".no_exist").join(COMMIT).join(absent);
        assert!(marker.is_file(), "no marker for {absent}");
        assert_eq!(std::fs::metadata(&marker).unwrap().len(), 0);
    }
    assert!(repo
        .join("snapshots")
        .join(COMMIT)
        .join("pytorch_model.bin")
        .is_file());
    // Offline, the markered cache serves the default model.
    let captions = run_ok(&["caption"], &images()[..2], &[("HF_HOME", home.path())]);
    assert!(
        captions.iter().all(|r| r["caption"].is_string()),
        "{captions:?}"
    );
}
