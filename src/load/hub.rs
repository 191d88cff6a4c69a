//! Model resolution: a local directory in Hugging Face layout, or a Hub repo id fetched through
//! hf-hub into the cache shared with Python's `huggingface_hub`.
//!
//! Honours `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_ENDPOINT` and `HF_HUB_OFFLINE`, like the
//! Python client does.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// Where a model's files come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A directory holding `config.json` and friends.
    Local(PathBuf),
    /// A Hub repository, at a revision (branch, tag or commit).
    Hub { repo_id: String, revision: String },
}

impl ModelSource {
    /// A directory that exists, or anything shaped like a path (absolute, `./`, `../`, `~`, or
    /// more than one `/`), is local; anything else is taken as a Hub id (`org/name`).
    pub fn parse(model: &str, revision: Option<&str>) -> Self {
        let path = Path::new(model);
        let path_like = path.is_absolute()
            || model.starts_with('.')
            || model.starts_with('~')
            || model.contains('\\')
            || model.matches('/').count() > 1;
        if path.is_dir() || path_like {
            return Self::Local(path.to_path_buf());
        }
        Self::Hub {
            repo_id: model.to_string(),
            revision: revision.unwrap_or("main").to_string(),
        }
    }

    /// How the model is named in messages.
    pub fn name(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Hub { repo_id, revision } if revision == "main" => repo_id.clone(),
            Self::Hub { repo_id, revision } => format!("{repo_id}@{revision}"),
        }
    }
}

/// Resolves file names of one model to paths on disk, downloading on demand.
pub struct ModelFiles {
    source: ModelSource,
    hub: Option<HubRepo>,
}

struct HubRepo {
    cache: Cache,
    repo: Repo,
    /// `None` when `HF_HUB_OFFLINE` is set: only the cache is consulted.
    api: Option<Api>,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// `HF_HOME`, defaulting to `~/.cache/huggingface` as `huggingface_hub` does.
fn hf_home() -> PathBuf {
    if let Ok(home) = std::env::var("HF_HOME") {
        return PathBuf::from(home);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| ".".to_string());
            PathBuf::from(home).join(".cache")
        });
    base.join("huggingface")
}

/// The hub cache directory: `HF_HUB_CACHE`, else `$HF_HOME/hub`.
pub fn hub_cache_dir() -> PathBuf {
    match std::env::var("HF_HUB_CACHE") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => hf_home().join("hub"),
    }
}

/// `HF_TOKEN`, else the token file `huggingface-cli login` writes.
fn hf_token() -> Option<String> {
    if let Ok(token) = std::env::var("HF_TOKEN") {
        if !token.trim().is_empty() {
            return Some(token.trim().to_string());
        }
    }
    let path = std::env::var("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| hf_home().join("token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

impl ModelFiles {
    pub fn new(source: ModelSource) -> Result<Self> {
        let hub = match &source {
            ModelSource::Local(dir) if !dir.is_dir() => {
                return Err(Error::Config {
                    file: dir.display().to_string(),
                    message: "no such model directory (for a Hub model, use its id, e.g. Salesforce/blip-image-captioning-base)".into(),
                });
            }
            ModelSource::Local(_) => None,
            ModelSource::Hub { repo_id, revision } => {
                let cache = Cache::new(hub_cache_dir());
                let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, revision.clone());
                let api = if env_flag("HF_HUB_OFFLINE") {
                    None
                } else {
                    let mut builder = ApiBuilder::from_cache(cache.clone())
                        .with_token(hf_token())
                        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                        .with_retries(1);
                    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
                    }
                    Some(builder.build().map_err(|e| Error::Hub {
                        model: source.name(),
                        message: e.to_string(),
                    })?)
                };
                Some(HubRepo { cache, repo, api })
            }
        };
        Ok(Self { source, hub })
    }

    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The path of `file`, or `None` when the model does not have it.
    ///
    /// Hub: the cache first, then a download; a missing file (404) is `None`, a network failure
    /// is an error that says how to work offline.
    pub fn get_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        let hub = match (&self.source, &self.hub) {
            (ModelSource::Local(dir), _) => {
                let path = dir.join(file);
                return Ok(path.is_file().then_some(path));
            }
            (_, Some(hub)) => hub,
            (_, None) => unreachable!("hub sources always carry a hub repo"),
        };
        if let Some(path) = hub.cache.repo(hub.repo.clone()).get(file) {
            return Ok(Some(path));
        }
        let Some(api) = &hub.api else {
            return Err(Error::Offline {
                model: self.source.name(),
                file: file.to_string(),
            });
        };
        match api.repo(hub.repo.clone()).download(file) {
            Ok(path) => Ok(Some(path)),
            Err(err) => {
                let message = err.to_string();
                if message.contains("404") || message.contains("Not Found") {
                    Ok(None)
                } else if message.contains("401") || message.contains("403") {
                    Err(Error::Hub {
                        model: self.source.name(),
                        message: format!(
                            "access denied fetching {file} ({message}): set HF_TOKEN to a token that can read this repo"
                        ),
                    })
                } else {
                    Err(Error::Network {
                        model: self.source.name(),
                        file: file.to_string(),
                        message,
                    })
                }
            }
        }
    }

    /// The path of `file`, which the model must have.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        self.get_optional(file)?.ok_or_else(|| Error::MissingFile {
            model: self.source.name(),
            file: file.to_string(),
        })
    }

    /// Weight files: `model.safetensors`, the shards listed in `model.safetensors.index.json`,
    /// or `pytorch_model.bin` when that is all the repo has.
    pub fn weights(&self) -> Result<Weights> {
        if let Some(path) = self.get_optional("model.safetensors")? {
            return Ok(Weights::Safetensors(vec![path]));
        }
        if let Some(index) = self.get_optional("model.safetensors.index.json")? {
            let shards = shard_names(&index)?;
            let paths = shards
                .iter()
                .map(|s| self.get(s))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Weights::Safetensors(paths));
        }
        if let Some(path) = self.get_optional("pytorch_model.bin")? {
            return Ok(Weights::PyTorch(path));
        }
        Err(Error::MissingFile {
            model: self.source.name(),
            file: "model.safetensors (or model.safetensors.index.json, pytorch_model.bin)".into(),
        })
    }
}

/// The weight files of a model.
#[derive(Debug, Clone)]
pub enum Weights {
    Safetensors(Vec<PathBuf>),
    PyTorch(PathBuf),
}

/// The distinct shard file names of a `model.safetensors.index.json`, in a stable order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(index, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            file: index.display().to_string(),
            message: "no weight_map object".into(),
        })?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Fetches every file a model needs into the cache (`glance download`).
pub fn download(files: &ModelFiles) -> Result<Vec<PathBuf>> {
    let mut paths = vec![files.get("config.json")?];
    for optional in [
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        paths.extend(files.get_optional(optional)?);
    }
    match files.weights()? {
        Weights::Safetensors(p) => paths.extend(p),
        Weights::PyTorch(p) => paths.push(p),
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_directory_is_local_and_anything_else_is_hub() {
        let dir = tempfile::tempdir().unwrap();
        let local = ModelSource::parse(dir.path().to_str().unwrap(), None);
        assert!(matches!(local, ModelSource::Local(_)));
        let hub = ModelSource::parse("Salesforce/blip-image-captioning-base", Some("v1"));
        assert_eq!(hub.name(), "Salesforce/blip-image-captioning-base@v1");
        assert!(matches!(
            ModelSource::parse("/no/such/model", None),
            ModelSource::Local(_)
        ));
        assert!(matches!(
            ModelSource::parse("./model", None),
            ModelSource::Local(_)
        ));
        let missing = ModelFiles::new(ModelSource::parse("/no/such/model", None))
            .err()
            .unwrap();
        assert!(
            missing.to_string().contains("no such model directory"),
            "{missing}"
        );
    }

    #[test]
    fn shard_names_are_deduplicated_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(
            &index,
            r#"{"metadata":{},"weight_map":{"a":"model-00002-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            shard_names(&index).unwrap(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
    }
}
