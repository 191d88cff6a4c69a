//! The tiny Qwen3-VL as a chat model against transformers (tests/fixtures/
//! generate_qwen3_vl_chat.py): the checkpoint's own chat template rendered as
//! `apply_chat_template` renders it (with and without a system message), the image placeholder
//! expanded as the processor expands it, the same token ids from tokenizer.json, and the same
//! greedy reply, ids and decoded text.

mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use glance::load::chat_template::ChatTemplate;
use glance::load::hub::{ModelFiles, ModelSource};
use glance::models::qwen3_vl::{Prompt, Qwen3Vl, Qwen3VlConfig};
use glance::preprocess::patches::PatchProcessor;

#[test]
fn chat_prompts_and_replies_equal_transformers() {
    let dir = common::repo().join("tests/fixtures/qwen3-vl-tiny");
    let files = ModelFiles::new(ModelSource::Local(dir.clone())).unwrap();
    let template = ChatTemplate::from_files(&files).unwrap();
    let tokenizer = glance::load::load_tokenizer(&files).unwrap();
    let cfg: Qwen3VlConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = Qwen3Vl::new(&cfg, vb).unwrap();
    let proc = PatchProcessor::from_file(&dir.join("preprocessor_config.json")).unwrap();
    let text = std::fs::read_to_string(dir.join("chat_reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    for case in cases {
        let photo = case["photo"].as_str().unwrap();
        let rendered = template
            .render_image_prompt(case["system"].as_str(), case["prompt"].as_str().unwrap())
            .unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{photo}");

        let decoded =
            glance::preprocess::decode::decode(&common::shared_images().join(photo), u64::MAX)
                .unwrap();
        let patches = proc
            .apply(&decoded.rgb, proc.min_pixels, proc.max_pixels)
            .unwrap();
        let pads = "<|image_pad|>".repeat(patches.tokens(2));
        let expanded = rendered.replace("<|image_pad|>", &pads);
        let ids = tokenizer.encode(expanded, true).unwrap().get_ids().to_vec();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{photo}: prompt ids");

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
        let want_new: Vec<u32> = case["new"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(new[0], want_new, "{photo}: reply ids");
        let reply = tokenizer.decode(&new[0], true).unwrap();
        assert_eq!(reply, case["reply"].as_str().unwrap(), "{photo}: reply");
    }
    assert_eq!(cases.len(), 2);
}
