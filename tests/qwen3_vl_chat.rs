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
