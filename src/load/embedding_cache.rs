//! Text embeddings kept on disk between runs, so that a label set (1,100 prompts with the default
//! eleven-template ensemble) is encoded once per model and not at the start of every run.
//!
//! One file per model identity (see [`ModelKey`]) under [`cache_dir`] (off unless a program
//! turns it on; the `glance` binary does): a header, then records of
//! a prompt's token ids, its embedding and a checksum. Entries are keyed by token ids, not text,
//! so a tokenizer change can never return another prompt's vector. A file is only ever replaced
//! whole (written beside it, then renamed), so readers never see half a file, and two runs
//! writing at once lose at most the other's additions — a miss next time, never a wrong value.
//! A record that fails its checksum ends the read: what follows is encoded again.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"GLNCTXT1";

static CACHE_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Turns the cache on for this process (`Some(dir)`) or keeps it off. Off until called: the
/// `glance` binary calls it with [`dir_from_env`]; a program using the library decides itself.
/// Only the first call counts.
pub fn set_cache_dir(dir: Option<PathBuf>) {
    let _ = CACHE_DIR.set(dir);
}

/// The directory [`set_cache_dir`] chose, if any.
pub fn cache_dir() -> Option<PathBuf> {
    CACHE_DIR.get().cloned().flatten()
}

/// Where the `glance` binary keeps embeddings: `GLANCE_CACHE` (`off` turns caching off), else
/// `glance/` in the Hugging Face home (`HF_HOME`, `~/.cache/huggingface`), beside the hub cache.
pub fn dir_from_env() -> Option<PathBuf> {
    match std::env::var_os("GLANCE_CACHE") {
        Some(v) if v == "off" || v == "0" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(super::hub::hf_home().join("glance")),
    }
}

/// What makes one model's embeddings differ from another's: every input the text tower's output
/// depends on. Built from the weight files' identities (canonical path — a hub blob's name is its
/// content hash — size and modification time; hashing gigabytes at every start would cost more
/// than it saves), the parsed config, the precision and the device kind, and glance's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKey(String);

impl ModelKey {
    pub fn new(
        weights: &[PathBuf],
        config: &serde_json::Value,
        precision: &str,
        device: &str,
    ) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(MAGIC);
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        for path in weights {
            let real = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
            let meta = std::fs::metadata(&real).map_err(|e| Error::io(&real, e))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.update(real.to_string_lossy().as_bytes());
            h.update(meta.len().to_le_bytes());
            h.update(mtime.to_le_bytes());
        }
        h.update(config.to_string().as_bytes());
        h.update(precision.as_bytes());
        h.update([0]);
        h.update(device.as_bytes());
        let digest = h.finalize();
        Ok(Self(
            digest[..16].iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The embeddings of one model, keyed by the prompts' token ids.
pub struct EmbeddingCache {
    path: PathBuf,
    /// The embeddings' width: the file's, else the first inserted one's.
    dim: Option<usize>,
    entries: HashMap<Vec<u32>, Vec<f32>>,
    /// Entries added since the file was read.
    added: usize,
}

impl EmbeddingCache {
    /// The cache of `key` in `dir`: empty when there is no file yet, or when the file is of
    /// another format.
    pub fn open(dir: &Path, key: &ModelKey) -> Self {
        let path = dir
            .join("text-embeddings")
            .join(format!("{}.bin", key.as_str()));
        let (dim, entries) = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes),
            Err(_) => (None, HashMap::new()),
        };
        Self {
            path,
            dim,
            entries,
            added: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, ids: &[u32]) -> Option<&[f32]> {
        self.entries.get(ids).map(Vec::as_slice)
    }

    /// Adds an entry. One of another width than the file's replaces everything read (the file
    /// cannot have been this model's).
    pub fn insert(&mut self, ids: Vec<u32>, values: Vec<f32>) {
        if self.dim != Some(values.len()) {
            self.entries.clear();
            self.dim = Some(values.len());
        }
        if self.entries.insert(ids, values).is_none() {
            self.added += 1;
        }
    }

    /// Writes the file again when entries were added: to a temporary file beside it, then
    /// renamed over it.
    pub fn save(&mut self) -> Result<()> {
        if self.added == 0 {
            return Ok(());
        }
        let dir = self
            .path
            .parent()
            .expect("the cache file is in a directory");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let dim = self.dim.unwrap_or(0);
        let mut bytes = Vec::with_capacity(16 + self.entries.len() * (dim * 4 + 64));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(dim as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (ids, values) in &self.entries {
            let start = bytes.len();
            bytes.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            ids.iter()
                .for_each(|i| bytes.extend_from_slice(&i.to_le_bytes()));
            values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
            let sum = checksum(&bytes[start..]);
            bytes.extend_from_slice(&sum.to_le_bytes());
        }
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            self.path.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&self.path, e));
        }
        self.added = 0;
        Ok(())
    }
}

/// FNV-1a, 64 bits: enough to notice a torn or damaged record.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The width and records of a cache file, up to the first record that is cut short or fails its
/// checksum.
fn parse(bytes: &[u8]) -> (Option<usize>, HashMap<Vec<u32>, Vec<f32>>) {
    let mut entries = HashMap::new();
    let word = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let dim = match (bytes.get(..8), word(8)) {
        (Some(magic), Some(dim)) if magic == MAGIC && dim > 0 => dim as usize,
        _ => return (None, entries),
    };
    let count = word(12).unwrap_or(0) as usize;
    let mut at = 16;
    for _ in 0..count {
        let Some(n) = word(at).map(|n| n as usize) else {
            break;
        };
        let end = at + 4 + 4 * (n + dim);
        let Some(record) = bytes.get(at..end) else {
            break;
        };
        let Some(sum) = bytes.get(end..end + 8) else {
            break;
        };
        if checksum(record) != u64::from_le_bytes(sum.try_into().unwrap()) {
            break;
        }
        let values = |from: usize, len: usize| {
            record[from..from + 4 * len]
                .chunks_exact(4)
                .map(|c| c.try_into().unwrap())
        };
        let ids = values(4, n).map(u32::from_le_bytes).collect();
        let embedding = values(4 + 4 * n, dim).map(f32::from_le_bytes).collect();
        entries.insert(ids, embedding);
        at = end + 8;
    }
    (Some(dim), entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path) -> ModelKey {
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            std::fs::write(&weights, b"weights").unwrap();
        }
        ModelKey::new(&[weights], &serde_json::json!({}), "f32", "cpu").unwrap()
    }

    #[test]
    fn entries_survive_a_save_and_damage_ends_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path());
        let mut cache = EmbeddingCache::open(dir.path(), &key);
        assert!(cache.is_empty());
        cache.insert(vec![1, 2, 3], vec![0.5, -1.0, f32::MIN_POSITIVE]);
        cache.insert(vec![7], vec![1.0, 2.0, 3.0]);
        cache.save().unwrap();
        let again = EmbeddingCache::open(dir.path(), &key);
        assert_eq!(again.len(), 2);
        assert_eq!(
            again.get(&[1, 2, 3]).unwrap(),
            &[0.5, -1.0, f32::MIN_POSITIVE]
        );
        assert_eq!(again.get(&[7]).unwrap(), &[1.0, 2.0, 3.0]);
        assert!(again.get(&[1, 2]).is_none());
        // An entry of another width cannot be this model's: what was read goes.
        let mut other = EmbeddingCache::open(dir.path(), &key);
        other.insert(vec![9], vec![1.0; 4]);
        assert_eq!(other.len(), 1);

        // A flipped byte in the last record: the records before it are kept.
        let mut bytes = std::fs::read(again.path()).unwrap();
        let n = bytes.len();
        bytes[n - 12] ^= 1;
        std::fs::write(again.path(), &bytes).unwrap();
        assert_eq!(EmbeddingCache::open(dir.path(), &key).len(), 1);
        // Cut short: likewise.
        std::fs::write(again.path(), &bytes[..n - 10]).unwrap();
        assert_eq!(EmbeddingCache::open(dir.path(), &key).len(), 1);
        std::fs::write(again.path(), b"garbage").unwrap();
        assert!(EmbeddingCache::open(dir.path(), &key).is_empty());
    }

    #[test]
    fn the_key_follows_the_weights_config_precision_and_device() {
        let dir = tempfile::tempdir().unwrap();
        let a = key(dir.path());
        assert_eq!(a, key(dir.path()));
        let weights = [dir.path().join("model.safetensors")];
        let config = serde_json::json!({});
        assert_ne!(a, ModelKey::new(&weights, &config, "bf16", "cpu").unwrap());
        assert_ne!(a, ModelKey::new(&weights, &config, "f32", "cuda").unwrap());
        let config = serde_json::json!({"x": 1});
        let b = ModelKey::new(&weights, &config, "f32", "cpu").unwrap();
        assert_ne!(a, b);
        std::fs::write(&weights[0], b"other weights").unwrap();
        assert_ne!(b, ModelKey::new(&weights, &config, "f32", "cpu").unwrap());
    }
}
