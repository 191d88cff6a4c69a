//! Everything a model is read from: Hub resolution and the shared cache ([`hub`]), weights
//! (safetensors mapped, `.bin` read) as candle tensors ([`weights`], [`alloc`]), and the JSON
//! configs and tokenizer beside them. The bottom floor: it uses only [`crate::error`].

pub mod alloc;
pub mod chat_template;
pub mod embedding_cache;
pub mod hub;
pub mod spiece;
pub mod weights;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use hub::ModelFiles;

/// The model's `tokenizer.json`.
pub fn load_tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    tokenizer_json(&files.get("tokenizer.json")?)
}

fn tokenizer_json(path: &std::path::Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A text tower's tokenizer and the one step its texts take before it.
pub struct TextTokenizer {
    pub tokenizer: Tokenizer,
    /// Built from a SigLIP `spiece.model`: each text starts with `▁`, as
    /// `SiglipTokenizer.tokenize` prefixes it, which a `tokenizers` pipeline cannot do for the
    /// first piece of text only once white space or punctuation before it is gone.
    spiece: bool,
}

impl TextTokenizer {
    /// `text` as the tokenizer must be given it.
    pub fn prepare(&self, text: &str) -> String {
        match self.spiece {
            true => format!("▁{}", text.replace('▁', " ")),
            false => text.to_string(),
        }
    }

    /// [`Self::prepare`], then `Tokenizer::encode_batch` with special tokens.
    pub fn encode_batch(&self, texts: &[String]) -> tokenizers::Result<Vec<tokenizers::Encoding>> {
        let texts: Vec<String> = texts.iter().map(|t| self.prepare(t)).collect();
        self.tokenizer.encode_batch(texts, true)
    }
}

/// A special token's text as `tokenizer_config.json` writes it: a string, or an `AddedToken`
/// object `{"content": ...}`.
pub(crate) fn special_token(v: &serde_json::Value) -> Option<&str> {
    v.as_str().or_else(|| v["content"].as_str())
}

/// The tokenizer of an image–text model: `tokenizer.json`, else a SigLIP `spiece.model` (see
/// [`spiece`]) with `tokenizer_config.json`'s special tokens.
pub fn load_text_tokenizer(files: &ModelFiles) -> Result<TextTokenizer> {
    let (file, path) = files.first_of(&["tokenizer.json", "spiece.model"])?;
    let config = match files.get_optional("tokenizer_config.json")? {
        Some(p) => read_json(&p)?,
        None => serde_json::Value::Null,
    };
    if file == "tokenizer.json" {
        let mut tokenizer = tokenizer_json(&path)?;
        // Matches Siglip2Tokenizer: the Gemma tokenizer with lowercasing in front, as SigLIP 2
        // was trained. (The Hub's SigLIP 2 repos name GemmaTokenizer, which does not lowercase.)
        if config["tokenizer_class"] == "Siglip2Tokenizer" {
            let lowercase = tokenizers::NormalizerWrapper::from(tokenizers::normalizers::Lowercase);
            let steps = match tokenizer.get_normalizer().cloned() {
                Some(existing) => vec![lowercase, existing],
                None => vec![lowercase],
            };
            tokenizer
                .with_normalizer(Some(tokenizers::normalizers::Sequence::new(steps)))
                .map_err(|e| Error::Tokenizer {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        return Ok(TextTokenizer {
            tokenizer,
            spiece: false,
        });
    }
    let class = config["tokenizer_class"]
        .as_str()
        .unwrap_or("SiglipTokenizer");
    if class != "SiglipTokenizer" {
        return Err(Error::Tokenizer {
            path: path.display().to_string(),
            message: format!(
                "a spiece.model of a {class} is not supported (only SiglipTokenizer's): give the model a tokenizer.json"
            ),
        });
    }
    let token = |key: &str, default: &'static str| -> String {
        special_token(&config[key]).unwrap_or(default).to_string()
    };
    let tokenizer = spiece::siglip_tokenizer(
        &path,
        &token("eos_token", "</s>"),
        &token("unk_token", "<unk>"),
        &token("pad_token", "</s>"),
        config["do_lower_case"].as_bool().unwrap_or(true),
    )?;
    Ok(TextTokenizer {
        tokenizer,
        spiece: true,
    })
}

pub fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub::ModelSource;

    #[test]
    fn siglip2_tokenizer_class_lowercases_and_gemma_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"cat": 0, "Cat": 1, "<unk>": 2}, "unk_token": "<unk>"}
        });
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let ids = |class: &str| {
            let config = serde_json::json!({ "tokenizer_class": class });
            std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
            let files = ModelFiles::new(ModelSource::Local(dir.path().to_path_buf())).unwrap();
            let t = load_text_tokenizer(&files).unwrap();
            t.encode_batch(&["Cat".to_string()]).unwrap()[0]
                .get_ids()
                .to_vec()
        };
        assert_eq!(ids("Siglip2Tokenizer"), [0]);
        assert_eq!(ids("GemmaTokenizer"), [1]);
    }
}
