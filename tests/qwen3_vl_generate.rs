//! A whole tiny Qwen3-VL (tests/fixtures/generate_qwen3_vl.py: DeepStack, interleaved M-RoPE,
//! GQA with q/k norms, tied embeddings) against transformers' `generate`: prompts around three
//! shared photos of different grids and one without an image; greedy token ids identical alone
//! and in a left-padded batch, first-step logits within 1e-4 of the largest and far inside the
//! smallest top-1/top-2 margin.

mod common;

use glance::models::qwen3_vl::Prompt;
use glance::preprocess::patches::PatchProcessor;

fn prompt(p: &serde_json::Value, proc: &PatchProcessor) -> Prompt {
    let images = match p["photo"].as_str() {
        Some(photo) => vec![common::qwen_patches(proc, photo)],
        None => Vec::new(),
    };
    Prompt {
        ids: common::ids(&p["ids"]),
        images,
    }
}

#[test]
fn greedy_tokens_equal_transformers_alone_and_batched() {
    let (model, proc) = common::qwen3_vl_tiny();
    let reference = common::reference(&common::repo().join("tests/fixtures/qwen3-vl-tiny"));
    let eos = common::ids(&reference["eos"]);
    let max_new = reference["max_new_tokens"].as_u64().unwrap() as usize;
    let refs = reference["prompts"].as_array().unwrap();
    let prompts: Vec<Prompt> = refs.iter().map(|p| prompt(p, &proc)).collect();
    let mut same = 0;
    for (i, (p, r)) in prompts.iter().zip(refs).enumerate() {
        let one = Prompt {
            ids: p.ids.clone(),
            images: p.images.clone(),
        };
        let (out, first) = model.generate_greedy(&[one], max_new, &eos).unwrap();
        let want: Vec<f32> = r["first_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got: Vec<f32> = first.squeeze(0).unwrap().to_vec1().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let margin = r["min_margin"].as_f64().unwrap() as f32;
        eprintln!("prompt {i}: first logits max difference {diff:e} (largest {scale}, smallest margin {margin})");
        assert!(
            diff / scale < 1e-4 && diff < margin / 10.0,
            "prompt {i}: {diff}"
        );
        assert_eq!(out[0], common::ids(&r["alone"]), "prompt {i} alone");
        same += 1;
    }
    assert_eq!(same, 4);
    let (batched, _) = model.generate_greedy(&prompts, max_new, &eos).unwrap();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(
            batched[i],
            common::ids(&r["batched"]),
            "prompt {i} in the batch"
        );
    }
}
