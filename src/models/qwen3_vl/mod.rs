//! Qwen3-VL (`Qwen3VLForConditionalGeneration`): a vision tower with DeepStack features and a
//! Qwen3 language model with interleaved M-RoPE. Work in progress: the vision tower is here and
//! equal to transformers'; the language model and its decode loop come next.

pub mod vision;
