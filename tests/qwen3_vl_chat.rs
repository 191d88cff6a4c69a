//! The tiny Qwen3-VL as a chat model against transformers (tests/fixtures/
//! generate_qwen3_vl_chat.py): the checkpoint's own chat template rendered as
//! `apply_chat_template` renders it (with and without a system message), the image placeholder
//! expanded as the processor expands it, the same token ids from tokenizer.json, and the same
//! greedy reply, ids and decoded text.

mod common;

use glance::load::chat_template::ChatTemplate;
use glance::load::hub::{ModelFiles, ModelSource};
use glance::models::qwen3_vl::Prompt;

#[test]
fn chat_prompts_and_replies_equal_transformers() {
    let dir = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    let files = ModelFiles::new(ModelSource::Local(dir.clone())).unwrap();
    let template = ChatTemplate::from_files(&files).unwrap();
    let tokenizer = glance::load::load_tokenizer(&files).unwrap();
    let (model, proc) = common::qwen3_vl_tiny();
    let text = std::fs::read_to_string(dir.join("chat_reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    for case in cases {
        let photo = case["photo"].as_str().unwrap();
        let rendered = template
            .render_image_prompt(case["system"].as_str(), case["prompt"].as_str().unwrap())
            .unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{photo}");

        let patches = common::qwen_patches(&proc, photo);
        let pads = "<|image_pad|>".repeat(patches.tokens(2));
        let expanded = rendered.replace("<|image_pad|>", &pads);
        let ids = tokenizer.encode(expanded, true).unwrap().get_ids().to_vec();
        assert_eq!(ids, common::ids(&case["ids"]), "{photo}: prompt ids");

        let (new, _) = model
            .generate_greedy(
                &[Prompt {
                    ids,
                    images: vec![patches],
                }],
                12,
                &[2, 3],
            )
            .unwrap();
        assert_eq!(new[0], common::ids(&case["new"]), "{photo}: reply ids");
        let reply = tokenizer.decode(&new[0], true).unwrap();
        assert_eq!(reply, case["reply"].as_str().unwrap(), "{photo}: reply");
    }
    assert_eq!(cases.len(), 2);
}

/// `glance caption` on the tiny Qwen3-VL, JSON lines on standard output.
fn chat_caption(args: &[&str]) -> std::process::Output {
    let model = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    common::glance()
        .args(["caption", "-m"])
        .arg(&model)
        .args(args)
        .output()
        .unwrap()
}

fn photos(dir: &std::path::Path, names: &[&str]) {
    for n in names {
        std::fs::copy(common::shared_images().join(n), dir.join(n)).unwrap();
    }
}

/// The records of a run, by file name; a run with failed inputs exits non-zero but still writes
/// every record.
fn records_by_file(out: &std::process::Output) -> Vec<(String, serde_json::Value)> {
    assert!(
        out.status.code().is_some_and(|c| c < 2) && !out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::stdout_records(out)
        .into_iter()
        .map(|r| {
            let file = std::path::Path::new(r["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (file, r)
        })
        .collect()
}

#[test]
fn glance_caption_with_a_chat_model_replies_as_transformers() {
    let text = std::fs::read_to_string(
        common::repo().join("tests/fixtures/qwen3-vl-tiny/chat_reference.json"),
    )
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let photo = case["photo"].as_str().unwrap();
        photos(dir.path(), &[photo]);
        let mut args = vec![
            "--quiet",
            "--max-new-tokens",
            "12",
            "--prompt",
            case["prompt"].as_str().unwrap(),
        ];
        if let Some(system) = case["system"].as_str() {
            args.extend(["--system", system]);
        }
        args.push(dir.path().to_str().unwrap());
        let records = records_by_file(&chat_caption(&args));
        assert_eq!(records.len(), 1);
        let record = &records[0].1;
        let reply = case["reply"].as_str().unwrap().trim();
        assert_eq!(record["caption"], reply, "{photo}");
        // A reply of 12 tokens without an end-of-sequence token was cut at the limit.
        let new = common::ids(&case["new"]);
        let cut = new.len() == 12 && ![2, 3].contains(new.last().unwrap());
        assert_eq!(record["truncated"], cut, "{photo}");
    }
}

#[test]
fn chat_batches_equal_single_images_and_bad_images_become_error_records() {
    let dir = tempfile::tempdir().unwrap();
    // Three grids (8x12, 6x14 and a JPEG's), and a file that is not an image.
    photos(dir.path(), &["chelsea.png", "page.png", "rocket.jpg"]);
    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    let input = dir.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--quiet", "--max-new-tokens", "8"];
        args.extend_from_slice(extra);
        args.push(input);
        records_by_file(&chat_caption(&args))
    };
    let alone = run(&["--batch-size", "1"]);
    let batched = run(&["--batch-size", "4"]);
    assert_eq!(alone.len(), 4);
    assert_eq!(alone, batched);
    let broken = alone.iter().find(|(f, _)| f == "broken.png").unwrap();
    assert!(broken.1["error"].is_string(), "{:?}", broken.1);
    assert!(alone
        .iter()
        .filter(|(f, _)| f != "broken.png")
        .all(|(_, r)| r["caption"].is_string() && r["truncated"].is_boolean()));

    // Sampling: each image has its own stream, so batching changes nothing either, and a
    // different seed changes the replies.
    let sampled =
        |seed: &str, batch: &str| run(&["--do-sample", "--seed", seed, "--batch-size", batch]);
    let one = sampled("7", "1");
    assert_eq!(one, sampled("7", "4"));
    assert_ne!(one, sampled("8", "1"));
    assert_ne!(one, alone);
}

#[test]
fn the_pixel_budget_sets_the_image_tokens_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    photos(dir.path(), &["chelsea.png"]);
    let input = dir.path().to_str().unwrap();
    let stderr = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The checkpoint's own budget (25600 pixels) is below glance's cap: 8x12 patches, 24 tokens.
    let default = stderr(chat_caption(&["--max-new-tokens", "2", input]));
    assert!(
        default.contains("image tokens in the first batch: 24 "),
        "{default}"
    );
    let smaller = stderr(chat_caption(&[
        "--max-new-tokens",
        "2",
        "--max-pixels",
        "8192",
        input,
    ]));
    assert!(
        smaller.contains("image tokens in the first batch: 6 "),
        "{smaller}"
    );
    let out = chat_caption(&["--min-pixels", "9000", "--max-pixels", "8192", input]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--min-pixels 9000 is above --max-pixels 8192"),
        "{err}"
    );
}

#[test]
fn chat_prompts_come_from_presets_files_and_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    photos(dir.path(), &["chelsea.png"]);
    let input = dir.path().join("chelsea.png");
    let input = input.to_str().unwrap();
    let caption = |args: &[&str]| {
        let mut all = vec!["--quiet", "--max-new-tokens", "6"];
        all.extend_from_slice(args);
        all.push(input);
        records_by_file(&chat_caption(&all))[0].1["caption"].clone()
    };
    // The default instruction is the "caption" preset; a file holding its text is the same.
    let default = caption(&[]);
    let preset = dir.path().join("mine.txt");
    std::fs::write(&preset, "# my own\nDescribe this image in one sentence.\n").unwrap();
    assert_eq!(
        default,
        caption(&["--prompt-file", preset.to_str().unwrap()])
    );
    assert_eq!(default, caption(&["--prompt-file", "caption"]));
    assert_ne!(default, caption(&["--prompt-file", "tags"]));

    // A pipeline's caption stage runs the chat model with the same options.
    let model = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    let pipeline = dir.path().join("chat.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[[stage]]\ntask = \"caption\"\nmodel = {model:?}\nprompt_file = \"caption\"\nmax_new_tokens = 6\ngreedy = true\n"
        ),
    )
    .unwrap();
    let out = common::succeed(
        common::glance()
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .arg(input),
    );
    assert_eq!(common::stdout_records(&out)[0]["caption"], default);

    // Chat-only flags are refused for captioners, naming the flag.
    let out = common::glance()
        .args(["caption", "--system", "Be brief.", "-m"])
        .arg(common::blip_tiny())
        .arg(input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--system is for chat models"), "{err}");
}

#[test]
fn chat_captions_go_to_sidecars_csv_and_resume_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    photos(dir.path(), &["chelsea.png", "page.png"]);
    let input = dir.path().to_str().unwrap();
    let model = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    let run = |args: &[&str]| {
        common::succeed(
            common::glance()
                .args(["caption", "--quiet", "--max-new-tokens", "6", "-m"])
                .arg(&model)
                .args(args)
                .arg(input),
        )
    };
    // JSON lines first: the reference captions.
    let jsonl = dir.path().join("out.jsonl");
    run(&["-o", jsonl.to_str().unwrap()]);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let first: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(first.len(), 2);

    // A new image, then --resume: only it is captioned, once.
    photos(dir.path(), &["rocket.jpg"]);
    run(&["-o", jsonl.to_str().unwrap(), "--resume"]);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let all: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), 3, "{text}");
    assert_eq!(all[..2], first[..]);
    assert!(all[2]["file"].as_str().unwrap().ends_with("rocket.jpg"));

    // Sidecars hold the same captions; CSV has them under "caption".
    run(&["--format", "txt"]);
    for record in &all {
        let image = std::path::Path::new(record["file"].as_str().unwrap());
        let sidecar = std::fs::read_to_string(image.with_extension("txt")).unwrap();
        assert_eq!(sidecar.trim_end(), record["caption"].as_str().unwrap());
    }
    let csv = dir.path().join("out.csv");
    run(&["-o", csv.to_str().unwrap()]);
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let headers = reader.headers().unwrap().clone();
    let column = headers.iter().position(|h| h == "caption").unwrap();
    let mut captions: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[column].to_string())
        .collect();
    let mut expected: Vec<String> = all
        .iter()
        .map(|r| r["caption"].as_str().unwrap().to_string())
        .collect();
    captions.sort();
    expected.sort();
    assert_eq!(captions, expected);
}

#[test]
fn hub_layout_of_qwen3_vl_gives_the_same_replies() {
    // The Hub's Qwen3-VL repositories were written by transformers 4.57: `rope_scaling` and a
    // separate `rope_theta` in text_config, nothing about rotary in vision_config, `null`s
    // where 5 writes nothing, and the chat template in chat_template.json.
    let fixture = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    let hub = tempfile::tempdir().unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture.join(f), hub.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    let text = config["text_config"].as_object_mut().unwrap();
    let mut rope = text.remove("rope_parameters").unwrap();
    let theta = rope.as_object_mut().unwrap().remove("rope_theta").unwrap();
    text.insert("rope_scaling".into(), rope);
    text.insert("rope_theta".into(), theta);
    text.insert("pad_token_id".into(), serde_json::Value::Null);
    config["vision_config"]
        .as_object_mut()
        .unwrap()
        .remove("rope_parameters");
    config["transformers_version"] = "4.57.0.dev0".into();
    std::fs::write(hub.path().join("config.json"), config.to_string()).unwrap();
    let template = std::fs::read_to_string(fixture.join("chat_template.jinja")).unwrap();
    std::fs::write(
        hub.path().join("chat_template.json"),
        serde_json::json!({ "chat_template": template }).to_string(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    photos(dir.path(), &["chelsea.png", "page.png"]);
    let caption = |model: &std::path::Path| {
        let out = common::succeed(
            common::glance()
                .args(["caption", "--quiet", "--max-new-tokens", "10", "-m"])
                .arg(model)
                .arg(dir.path()),
        );
        common::stdout_records(&out)
    };
    assert_eq!(caption(hub.path()), caption(&fixture));
}

#[test]
fn a_bf16_checkpoint_runs_in_f32_with_its_exact_values() {
    // The Hub's Qwen3-VL weights are bf16. glance reads them into f32 in one pass from the
    // file's mapping; candle's own loader and conversion must give the same reply, bit for bit
    // (a bf16 value is exact in f32).
    let fixture = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    let bf16 = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "model.safetensors" {
            std::fs::copy(&path, bf16.path().join(name)).unwrap();
        }
    }
    let tensors = candle_core::safetensors::load(
        fixture.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(candle_core::DType::BF16).unwrap()))
        .collect();
    let weights = bf16.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).unwrap();

    let dir = tempfile::tempdir().unwrap();
    photos(dir.path(), &["chelsea.png"]);
    let prompt = "Describe this image.";
    let out = common::succeed(
        common::glance()
            .args([
                "caption",
                "--quiet",
                "--max-new-tokens",
                "10",
                "--prompt",
                prompt,
                "-m",
            ])
            .arg(bf16.path())
            .arg(dir.path()),
    );
    let caption = common::stdout_records(&out)[0]["caption"].clone();

    let files = ModelFiles::new(ModelSource::Local(bf16.path().to_path_buf())).unwrap();
    let template = ChatTemplate::from_files(&files).unwrap();
    let tokenizer = glance::load::load_tokenizer(&files).unwrap();
    let (_, proc) = common::qwen3_vl_tiny();
    let cfg: glance::models::qwen3_vl::Qwen3VlConfig =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[weights],
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let model = glance::models::qwen3_vl::Qwen3Vl::new(&cfg, vb).unwrap();
    let patches = common::qwen_patches(&proc, "chelsea.png");
    let rendered = template.render_image_prompt(None, prompt).unwrap();
    let expanded = rendered.replace("<|image_pad|>", &"<|image_pad|>".repeat(patches.tokens(2)));
    let ids = tokenizer.encode(expanded, true).unwrap().get_ids().to_vec();
    let (new, _) = model
        .generate_greedy(
            &[Prompt {
                ids,
                images: vec![patches],
            }],
            10,
            &[2, 3],
        )
        .unwrap();
    let reply = tokenizer.decode(&new[0], true).unwrap();
    assert_eq!(caption, reply.trim());
}

/// `--dtype bf16` on a CPU with AVX512-BF16: the tiny model's embeddings are tied to its head,
/// so the prompt's embeddings are read back from the head's bf16-packed weights (no table of
/// their own). Rounding to bf16 may flip a near-tie token late in a reply, but an embedding
/// read from the wrong rows changes every reply from its first token.
#[test]
fn bf16_replies_with_a_tied_table_start_as_the_f32_ones() {
    if !glance::kernels::gemm_bf16::available() {
        eprintln!("no AVX512-BF16 on this CPU: not compared");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    photos(
        dir.path(),
        &["chelsea.png", "page.png", "rocket.jpg", "coffee.png"],
    );
    let run = |dtype: &str| {
        let args = [
            "--quiet",
            "--greedy",
            "--max-new-tokens",
            "8",
            "--dtype",
            dtype,
        ];
        let mut args = args.to_vec();
        args.push(dir.path().to_str().unwrap());
        records_by_file(&chat_caption(&args))
    };
    let (f32_recs, bf16_recs) = (run("f32"), run("bf16"));
    assert_eq!(f32_recs.len(), 4);
    let first_word = |r: &serde_json::Value| {
        let caption = r["caption"].as_str().unwrap_or_default().to_string();
        caption.split_whitespace().next().map(str::to_string)
    };
    let same = f32_recs
        .iter()
        .zip(&bf16_recs)
        .filter(|((fa, a), (fb, b))| {
            fa == fb && first_word(a).is_some() && first_word(a) == first_word(b)
        })
        .count();
    eprintln!("bf16: {same} of 4 replies start as in f32");
    assert!(
        same >= 3,
        "only {same} of 4 bf16 replies start as in f32: {f32_recs:?} {bf16_recs:?}"
    );
}

/// `--dtype bf16` with a bf16 checkpoint packs its layers from the bf16 values as stored (no f32
/// copy on the way): the replies equal, byte for byte, those of the same numbers stored as f32,
/// which are rounded as they are packed. A pair or half put in the wrong place by the bf16
/// packing would change them.
#[test]
fn a_bf16_checkpoint_packs_as_stored_to_the_replies_of_its_f32_values() {
    use candle_core::{DType, Device};
    if !glance::kernels::gemm_bf16::available() {
        eprintln!("no AVX512-BF16 on this CPU: not compared");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    photos(&images, &["chelsea.png", "page.png", "rocket.jpg"]);
    let fixture = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    let tensors =
        candle_core::safetensors::load(fixture.join("model.safetensors"), &Device::Cpu).unwrap();
    let run = |name: &str, dtype: DType| {
        let model = dir.path().join(name);
        std::fs::create_dir(&model).unwrap();
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() != "model.safetensors" {
                std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
            }
        }
        let stored: std::collections::HashMap<String, candle_core::Tensor> = tensors
            .iter()
            .map(|(k, t)| {
                let t = t.to_dtype(DType::BF16).unwrap().to_dtype(dtype).unwrap();
                (k.clone(), t)
            })
            .collect();
        candle_core::safetensors::save(&stored, model.join("model.safetensors")).unwrap();
        let out = common::glance()
            .args(["caption", "-m"])
            .arg(&model)
            .args([
                "--quiet",
                "--greedy",
                "--max-new-tokens",
                "8",
                "--dtype",
                "bf16",
            ])
            .arg(&images)
            .output()
            .unwrap();
        records_by_file(&out)
            .into_iter()
            .map(|(file, r)| (file, r["caption"].clone()))
            .collect::<Vec<_>>()
    };
    let (wide, narrow) = (run("f32-file", DType::F32), run("bf16-file", DType::BF16));
    assert_eq!(wide.len(), 3);
    assert!(wide
        .iter()
        .all(|(_, c)| c.as_str().is_some_and(|c| !c.is_empty())));
    assert_eq!(wide, narrow);
}
