//! Everything a model is read from: Hub resolution and the shared cache ([`hub`]), weights
//! (safetensors mapped, `.bin` read) as candle tensors ([`weights`], [`alloc`]), and the JSON
//! configs and tokenizer beside them. The bottom floor: it uses only [`crate::error`].

pub mod alloc;
pub mod hub;
pub mod weights;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use hub::ModelFiles;

pub fn load_tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    let path = files.get("tokenizer.json")?;
    Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

pub fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, e))
}
