//! glance: caption, classify and label folders of images with Hugging Face vision–language
//! models, on candle.
//!
//! The crate is built in floors, each using only the ones below it: [`run`] (folder runs,
//! pipelines) → [`tasks`] (caption, classify, label: the API a CLI or server calls) →
//! [`generation`] (the decode loop) → [`models`] (one folder per family) → [`layers`] →
//! [`kernels`]. [`preprocess`], [`output`], [`load`], [`device`] and [`error`] sit at the bottom,
//! used from above; [`eval`] scores a run's output and uses tasks for CLIPScore. The `glance`
//! binary's `cli` sits on top of them all.

pub mod device;
pub mod error;
pub mod eval;
pub mod generation;
pub mod kernels;
pub mod layers;
pub mod load;
pub mod models;
pub mod output;
pub mod preprocess;
pub mod run;
pub mod serve;
pub mod tasks;
pub mod timings;

pub use error::{Error, Result};

/// Whether `GLANCE_TIMINGS` is set: see [`timings`].
pub fn timings_enabled() -> bool {
    timings::enabled()
}
