//! One Qwen3-VL text decoder layer against transformers' (tests/fixtures/generate_qwen_layer.py):
//! random weights, a left-padded batch of two, a prefill of 6 positions and then 3 and 1 more
//! through the key/value cache; every output within 1e-4 of the largest value.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glance::layers::decoder::{padded_causal_mask, AttentionShape, DecoderLayer};
use glance::layers::rotary::{MRope, Rotary};

#[test]
fn decoder_layer_with_cache_equals_transformers() {
    let dir = common::repo().join("tests/fixtures/qwen-layer");
    let meta = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let n = |k: &str| meta[k].as_u64().unwrap() as usize;
    let dev = Device::Cpu;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)
            .unwrap()
    };
    let eps = meta["rms_norm_eps"].as_f64().unwrap();
    let shape = AttentionShape {
        hidden: n("hidden"),
        heads: n("heads"),
        kv_heads: n("kv_heads"),
        head_dim: n("head_dim"),
        qkv_bias: false,
        qk_norm: Some(eps),
    };
    let layer = DecoderLayer::new(shape, n("intermediate"), eps, vb.pp("layer")).unwrap();
    let rope = Rotary::new(
        n("head_dim"),
        meta["rope_theta"].as_f64().unwrap(),
        Some(MRope {
            section: [3, 3, 2],
            interleaved: true,
        }),
    )
    .unwrap();
    let positions = tensors["positions"].to_vec2::<i64>().unwrap();
    let valid: Vec<Vec<bool>> = tensors["valid"]
        .to_vec2::<u8>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v != 0).collect())
        .collect();
    let x = &tensors["x"];
    let mut cache = None;
    let mut start = 0;
    for (i, steps) in meta["steps"].as_array().unwrap().iter().enumerate() {
        let len = steps.as_u64().unwrap() as usize;
        let end = start + len;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for row in &positions {
            let p: Vec<[i64; 3]> = row[start..end].iter().map(|&p| [p; 3]).collect();
            let (c, s) = rope.cos_sin(&p, &dev).unwrap();
            cos.push(c);
            sin.push(s);
        }
        let cos = Tensor::stack(&cos, 0).unwrap();
        let sin = Tensor::stack(&sin, 0).unwrap();
        let seen: Vec<Vec<bool>> = valid.iter().map(|r| r[..end].to_vec()).collect();
        let mask = padded_causal_mask(&seen, len, DType::F32, &dev).unwrap();
        let out = layer
            .forward(
                &x.narrow(1, start, len).unwrap(),
                &cos,
                &sin,
                Some(&mask),
                &mut cache,
            )
            .unwrap();
        let want = &tensors[&format!("step{i}")];
        let diff = common::max_abs_diff(&out, want) / common::max_abs(want);
        eprintln!("step {i} ({len} positions): max relative difference {diff:e}");
        assert!(diff < 1e-4, "step {i}: {diff}");
        start = end;
    }
}
