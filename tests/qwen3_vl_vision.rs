//! Qwen3-VL's vision tower against transformers' Qwen3VLVisionModel (tests/fixtures/
//! generate_qwen3_vl_vision.py): three shared photos of different grids through glance's own
//! preprocessing (bit-exact, see qwen_patches.rs) in one batch; the merged embeddings and both
//! DeepStack features within 1e-4 of the largest value.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glance::models::qwen3_vl::vision::{VisionConfig, VisionTower};
use glance::preprocess::patches::PatchProcessor;

#[test]
fn vision_tower_equals_transformers() {
    let dir = common::repo().join("tests/fixtures/qwen3-vl-vision");
    let meta = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg: VisionConfig = serde_json::from_value(config["vision_config"].clone()).unwrap();
    let dev = Device::Cpu;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)
            .unwrap()
    };
    let tower = VisionTower::new(&cfg, vb.pp("model.visual")).unwrap();
    let proc = PatchProcessor::from_file(&dir.join("preprocessor_config.json")).unwrap();
    let mut values = Vec::new();
    let mut grids = Vec::new();
    for photo in meta["photos"].as_array().unwrap() {
        let p = common::qwen_patches(&proc, photo.as_str().unwrap());
        values.extend(p.values);
        grids.push(p.grid);
    }
    let expected: Vec<Vec<i64>> = tensors["grid_thw"].to_vec2().unwrap();
    let got: Vec<Vec<i64>> = grids
        .iter()
        .map(|&(t, h, w)| vec![t as i64, h as i64, w as i64])
        .collect();
    assert_eq!(got, expected);
    let rows = values.len() / 1536;
    let patches = Tensor::from_vec(values, (rows, 1536), &dev).unwrap();
    let out = tower.forward(&patches, &grids).unwrap();
    let check = |got: &Tensor, name: &str| {
        let want = &tensors[name];
        assert_eq!(got.dims(), want.dims(), "{name}");
        let diff = common::max_abs_diff(got, want) / common::max_abs(want);
        eprintln!("{name}: max relative difference {diff:e}");
        assert!(diff < 1e-4, "{name}: {diff}");
    };
    check(&out.embeds, "embeds");
    assert_eq!(out.deepstack.len(), 2);
    check(&out.deepstack[0], "deepstack0");
    check(&out.deepstack[1], "deepstack1");
}
