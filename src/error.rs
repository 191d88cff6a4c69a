//! The library's error type: what went wrong, naming the model, file or input involved.

use std::path::Path;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{model}: {file} is not in the local cache and HF_HUB_OFFLINE is set: run 'glance download {model}' where the Hub is reachable, or pass a local directory"
    )]
    Offline { model: String, file: String },

    #[error(
        "{model}: could not fetch {file} from the Hub ({message}): check the network or HF_ENDPOINT, run 'glance download {model}' where the Hub is reachable, or pass a local directory"
    )]
    Network {
        model: String,
        file: String,
        message: String,
    },

    #[error("{model}: {message}")]
    Hub { model: String, message: String },

    #[error("{model}: the model has no {file}")]
    MissingFile { model: String, file: String },

    #[error("{file}: {message}")]
    Config { file: String, message: String },

    #[error(
        "{model}: unsupported architecture {found}; supported: {}",
        supported.join(", ")
    )]
    Unsupported {
        model: String,
        found: String,
        supported: Vec<&'static str>,
    },

    #[error("{model} is {kind}: use glance {command}")]
    WrongTask {
        model: String,
        kind: &'static str,
        command: &'static str,
    },

    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },

    #[error("{0}")]
    Image(String),

    #[error("invalid option: {0}")]
    Options(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn json(path: &Path, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn config(path: &Path, message: impl Into<String>) -> Self {
        Self::Config {
            file: path.display().to_string(),
            message: message.into(),
        }
    }
}
