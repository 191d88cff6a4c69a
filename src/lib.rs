//! glance: caption, classify and label folders of images with Hugging Face vision–language
//! models, on candle.

pub mod alloc;
pub mod caption;
pub mod classify;
pub mod device;
pub mod error;
pub mod eval;
pub mod generation;
pub mod hub;
pub mod image_io;
pub mod inputs;
pub mod models;
pub mod output;
pub mod pipeline;
pub mod preprocess;
pub mod prompts;
pub mod runner;
pub mod sort;
pub mod weights;
pub mod zero_shot;

pub use error::{Error, Result};

/// Whether `GLANCE_TIMINGS` is set (benches/bench.sh sets it): then glance prints how long model
/// load, label embedding and each batch's stages took, on stderr.
pub fn timings_enabled() -> bool {
    std::env::var_os("GLANCE_TIMINGS").is_some()
}
