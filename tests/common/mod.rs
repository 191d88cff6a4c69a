//! Helpers shared by integration tests: fixture paths and the committed reference outputs.
#![allow(dead_code)]

pub mod server;

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `glance` binary under test, offline (no Hub access, no token from the environment).
pub fn glance() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_glance"));
    // Label embeddings are not kept between tests: each run encodes its prompts (the cache has
    // its own tests, which point GLANCE_CACHE at a directory of their own).
    cmd.env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_TOKEN")
        .env("GLANCE_CACHE", "off");
    cmd
}

/// The JSON-lines records a run printed on stdout.
pub fn stdout_records(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL line {l:?}: {e}")))
        .collect()
}

pub fn blip_tiny() -> PathBuf {
    repo().join("tests/fixtures/blip-tiny")
}

/// The real photos CI places beside the repository.
pub fn shared_images() -> PathBuf {
    let dir = repo().join("../shared/images");
    assert!(
        dir.is_dir(),
        "tests need ../shared/images beside the repository ({})",
        dir.display()
    );
    dir
}

pub fn reference(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn reference_tensors(
    dir: &std::path::Path,
) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
}

/// The largest absolute value in a tensor.
pub fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// transformers pads finished sequences; glance returns them unpadded: cut after the first eos,
/// else drop trailing pads.
pub fn strip_padding(seq: &[u32], pad: u32, eos: &[u32]) -> Vec<u32> {
    match seq.iter().position(|t| eos.contains(t)) {
        Some(end) => seq[..=end].to_vec(),
        None => {
            let mut s = seq.to_vec();
            while s.last() == Some(&pad) {
                s.pop();
            }
            s
        }
    }
}

/// transformers' greedy captions (12 new tokens) of the tiny BLIP, by image name.
pub fn blip_greedy_captions() -> std::collections::HashMap<String, String> {
    let reference = reference(&blip_tiny());
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "greedy")
        .unwrap();
    reference["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(case["captions"].as_array().unwrap())
        .map(|(n, c)| {
            (
                n.as_str().unwrap().to_string(),
                c.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs every test of this test binary again in a child process with `GLANCE_CANDLE_OPS=1`, so
/// that glance's own CPU kernels stay off and every op goes through candle, as on a GPU: the
/// parity checks then hold the GPU's code path to transformers' outputs on any machine. In the
/// child (or when the variable is already set) it returns at once.
pub fn rerun_with_candle_ops_only() {
    if !glance::kernels::own_kernels() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("GLANCE_CANDLE_OPS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the tests failed with GLANCE_CANDLE_OPS=1 (candle's ops only):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "GLANCE_CANDLE_OPS=1: {}",
        summary
            .lines()
            .filter(|l| l.starts_with("test result"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Runs `cmd` and checks that it succeeded (the message holds the command and its stderr).
pub fn succeed(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A shared photo as a Qwen-VL processor's patches (glance's decoding, then `proc`).
pub fn qwen_patches(
    proc: &glance::preprocess::patches::PatchProcessor,
    photo: &str,
) -> glance::preprocess::patches::Patches {
    let decoded =
        glance::preprocess::decode::decode(&shared_images().join(photo), u64::MAX).unwrap();
    proc.apply(&decoded.rgb, proc.min_pixels, proc.max_pixels)
        .unwrap()
}

/// The tiny Qwen3-VL of tests/fixtures/qwen3-vl-tiny and its image processor.
pub fn qwen3_vl_tiny() -> (
    glance::models::qwen3_vl::Qwen3Vl,
    glance::preprocess::patches::PatchProcessor,
) {
    let dir = repo().join("tests/fixtures/qwen3-vl-tiny");
    let cfg: glance::models::qwen3_vl::Qwen3VlConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let model = glance::models::qwen3_vl::Qwen3Vl::new(&cfg, vb).unwrap();
    let proc = glance::preprocess::patches::PatchProcessor::from_file(
        &dir.join("preprocessor_config.json"),
    )
    .unwrap();
    (model, proc)
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}
