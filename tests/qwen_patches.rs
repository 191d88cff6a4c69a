//! Qwen-VL image input against transformers' `Qwen2VLImageProcessorPil` on the shared photos: the
//! same resized size and grid, and pixel values equal to the last bit (SHA-256 of the float32
//! bytes), for Qwen3-VL's config scaled down and up and Qwen2-VL's legacy keys. References come
//! from tests/fixtures/generate_qwen_patches.py.

mod common;

use glance::preprocess::patches::PatchProcessor;
use sha2::{Digest, Sha256};

fn check(case: &str) -> usize {
    let dir = common::repo()
        .join("tests/fixtures/qwen-patches")
        .join(case);
    let reference = common::reference(&dir);
    let proc = PatchProcessor::from_file(&dir.join("preprocessor_config.json")).unwrap();
    let mut compared = 0;
    for r in reference["images"].as_array().unwrap() {
        let file = r["file"].as_str().unwrap();
        let patches = common::qwen_patches(&proc, file);
        let grid: Vec<usize> = r["grid_thw"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            [patches.grid.0, patches.grid.1, patches.grid.2],
            grid[..],
            "{case} {file}"
        );
        let shape = r["shape"].as_array().unwrap();
        let row = shape[1].as_u64().unwrap() as usize;
        assert_eq!(
            patches.values.len(),
            grid[1] * grid[2] * row,
            "{case} {file}"
        );
        let first: Vec<f32> = r["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            patches.values[..first.len()],
            first[..],
            "{case} {file}: first values"
        );
        let bytes: Vec<u8> = patches
            .values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let sum: f64 = patches.values.iter().map(|&v| f64::from(v)).sum();
        assert_eq!(
            sha,
            r["sha256"].as_str().unwrap(),
            "{case} {file}: pixel values differ (sum {sum} vs {})",
            r["sum"]
        );
        compared += 1;
    }
    compared
}

#[test]
fn qwen3_config_scaled_down_equals_transformers() {
    assert_eq!(check("qwen3-small"), 11);
}

#[test]
fn qwen3_config_scaled_up_equals_transformers() {
    assert_eq!(check("qwen3-upscaled"), 11);
}

#[test]
fn qwen2_legacy_keys_equal_transformers() {
    assert_eq!(check("qwen2-legacy"), 11);
}
