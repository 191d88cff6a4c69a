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
    repo: Repo,
    /// `models--ORG--NAME` in the cache: `refs/`, `snapshots/`, `blobs/`, `.no_exist/`.
    dir: PathBuf,
    /// `None` when `HF_HUB_OFFLINE` is set: only the cache is consulted.
    api: Option<Api>,
}

/// Where one file of a model stands.
enum Resolved {
    Found(PathBuf),
    /// The model has no such file: a local directory without it, a 404 from the Hub, or the
    /// `.no_exist` marker `huggingface_hub` (or glance) left after such a 404.
    Absent,
    /// Offline, the cached snapshot lacks the file and nothing says the repo has none.
    NotCached,
}

impl HubRepo {
    /// The commit the revision points to in the cache: `refs/<revision>`, or the revision
    /// itself when it is a commit hash with a snapshot (as `huggingface_hub` resolves it).
    fn commit(&self) -> Option<String> {
        let revision = self.repo.revision();
        if let Ok(commit) = std::fs::read_to_string(self.dir.join("refs").join(revision)) {
            return Some(commit.trim().to_string());
        }
        let is_hash = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        (is_hash && self.dir.join("snapshots").join(revision).is_dir())
            .then(|| revision.to_string())
    }

    /// What the cache says of `file` at `commit`: its path, `Absent` where a `.no_exist`
    /// marker stands, else `NotCached`.
    fn cached(&self, commit: &str, file: &str) -> Resolved {
        let path = self.dir.join("snapshots").join(commit).join(file);
        if path.exists() {
            Resolved::Found(path)
        } else if self.dir.join(".no_exist").join(commit).join(file).is_file() {
            Resolved::Absent
        } else {
            Resolved::NotCached
        }
    }

    /// Records that the repo has no `file` at the cached commit, the empty marker file
    /// `huggingface_hub` writes (`.no_exist/<commit>/<file>`), so that offline runs of either
    /// tool move on to the next candidate. Best effort: a read-only cache just goes unmarked.
    fn mark_absent(&self, file: &str) {
        let Some(commit) = self.commit() else { return };
        let marker = self.dir.join(".no_exist").join(commit).join(file);
        if let Some(parent) = marker.parent() {
            let _ = std::fs::create_dir_all(parent).and_then(|_| std::fs::write(&marker, b""));
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// `HF_HOME`, defaulting to `~/.cache/huggingface` as `huggingface_hub` does.
pub(crate) fn hf_home() -> PathBuf {
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
                let cache_dir = hub_cache_dir();
                let cache = Cache::new(cache_dir.clone());
                let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, revision.clone());
                let dir = cache_dir.join(repo.folder_name());
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
                Some(HubRepo { repo, dir, api })
            }
        };
        Ok(Self { source, hub })
    }

    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The path of `file`, or `None` when the model does not have it.
    ///
    /// Hub: the cache first, then a download; a missing file (404) is `None` and leaves a
    /// `.no_exist` marker, a network failure is an error that says how to work offline. Offline
    /// (`HF_HUB_OFFLINE`), a file the cached snapshot lacks is `None` too, so that optional files
    /// and weight formats the repo never had fall through to the next candidate.
    pub fn get_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        Ok(match self.resolve(file)? {
            Resolved::Found(path) => Some(path),
            Resolved::Absent | Resolved::NotCached => None,
        })
    }

    /// The path of `file`, which the model must have: an error naming the file when the repo
    /// has none, or (offline) when the cache lacks it.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        self.first_of(&[file]).map(|(_, path)| path)
    }

    /// The first of `candidates` the model has, with its name: an error naming them all when
    /// it has none (offline, the download advice when the cache may just lack them).
    pub fn first_of<'a>(&self, candidates: &[&'a str]) -> Result<(&'a str, PathBuf)> {
        let mut not_cached = false;
        for &file in candidates {
            match self.resolve(file)? {
                Resolved::Found(path) => return Ok((file, path)),
                Resolved::Absent => {}
                Resolved::NotCached => not_cached = true,
            }
        }
        let file = match candidates.split_first() {
            Some((first, [])) => first.to_string(),
            Some((first, rest)) => format!("{first} (or {})", rest.join(", ")),
            None => String::new(),
        };
        let model = self.source.name();
        Err(match not_cached {
            true => Error::Offline { model, file },
            false => Error::MissingFile { model, file },
        })
    }

    fn resolve(&self, file: &str) -> Result<Resolved> {
        let hub = match (&self.source, &self.hub) {
            (ModelSource::Local(dir), _) => {
                let path = dir.join(file);
                return Ok(match path.is_file() {
                    true => Resolved::Found(path),
                    false => Resolved::Absent,
                });
            }
            (_, Some(hub)) => hub,
            (_, None) => unreachable!("hub sources always carry a hub repo"),
        };
        let cached = hub.commit().map(|commit| hub.cached(&commit, file));
        if let Some(Resolved::Found(path)) = cached {
            return Ok(Resolved::Found(path));
        }
        let Some(api) = &hub.api else {
            // Offline: without a snapshot of this revision nothing can be said of any file.
            return match cached {
                Some(resolved) => Ok(resolved),
                None => Err(Error::Offline {
                    model: self.source.name(),
                    file: file.to_string(),
                }),
            };
        };
        match api.repo(hub.repo.clone()).download(file) {
            Ok(path) => Ok(Resolved::Found(path)),
            Err(err) => {
                let message = err.to_string();
                if message.contains("404") || message.contains("Not Found") {
                    hub.mark_absent(file);
                    Ok(Resolved::Absent)
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

    /// Weight files, in transformers' order of preference: `model.safetensors`, the shards of
    /// `model.safetensors.index.json`, `pytorch_model.bin`, the shards of
    /// `pytorch_model.bin.index.json`.
    pub fn weights(&self) -> Result<Weights> {
        let (file, path) = self.first_of(&[
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        ])?;
        let paths = match file.ends_with(".index.json") {
            false => vec![path],
            true => shard_names(&path)?
                .iter()
                .map(|s| self.get(s))
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(match file.starts_with("model.safetensors") {
            true => Weights::Safetensors(paths),
            false => Weights::PyTorch(paths),
        })
    }
}

/// The weight files of a model.
#[derive(Debug, Clone)]
pub enum Weights {
    Safetensors(Vec<PathBuf>),
    /// `pytorch_model.bin`, or its shards.
    PyTorch(Vec<PathBuf>),
}

/// The distinct shard file names of a `*.index.json`, in a stable order.
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
        "processor_config.json",
        "tokenizer.json",
        "spiece.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        paths.extend(files.get_optional(optional)?);
    }
    match files.weights()? {
        Weights::Safetensors(p) | Weights::PyTorch(p) => paths.extend(p),
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
