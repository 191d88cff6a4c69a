//! glance: caption, classify and label folders of images with Hugging Face vision–language
//! models, on candle.

pub mod caption;
pub mod device;
pub mod error;
pub mod generation;
pub mod hub;
pub mod image_io;
pub mod inputs;
pub mod models;
pub mod output;
pub mod preprocess;
pub mod runner;
pub mod weights;
pub mod zero_shot;

pub use error::{Error, Result};
