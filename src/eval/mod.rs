//! `glance eval`: caption metrics against COCO-style references, equal to the COCO caption
//! evaluation toolkit (pycocoevalcap), CLIPScore, and classification metrics with a heat-map.

pub mod captions;
pub mod classify;
pub mod heatmap;
pub mod metrics;
pub mod ptb;

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The last path component of a record's `file` (how predictions meet references and truth).
pub(crate) fn base_name(file: &str) -> String {
    Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string())
}

/// The records of a glance JSON-lines file, each with its `file`; blank lines are skipped and a
/// line that is not a JSON record with a `file` is an error naming the line.
pub(crate) fn read_records(path: &Path) -> Result<Vec<(String, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let rec: Value = serde_json::from_str(line).map_err(|e| {
                Error::config(path, format!("line {}: not a JSON record: {e}", i + 1))
            })?;
            let file = rec["file"]
                .as_str()
                .ok_or_else(|| Error::config(path, format!("line {}: no \"file\"", i + 1)))?
                .to_string();
            Ok((file, rec))
        })
        .collect()
}

/// Whether a record reports a failure (a non-null `error`).
pub(crate) fn is_error(rec: &Value) -> bool {
    rec.get("error").is_some_and(|e| !e.is_null())
}
