//! YOLO annotations: a directory with one `<name>.txt` per image (`class cx cy w h` per box,
//! normalised to the image's size; empty for an image without boxes), mirroring the images'
//! folders under the directory they share, plus `classes.txt` (one name per line, class ids in
//! order) and `data.yaml` (`nc`, `names`). Classes are numbered in order of first appearance.
//! `records.jsonl` keeps the records themselves, for resume.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use super::coco::{common_dir, relative_name};
use super::{detection_box, write_atomic, Record};

/// The records file inside a YOLO directory.
pub(crate) fn records_path(dir: &Path) -> PathBuf {
    dir.join("records.jsonl")
}

/// `[left, top, right, bottom]` in pixels to YOLO's normalised centre and size.
fn normalised([x1, y1, x2, y2]: [f64; 4], width: f64, height: f64) -> [f64; 4] {
    [
        (x1 + x2) / 2.0 / width,
        (y1 + y2) / 2.0 / height,
        (x2 - x1) / width,
        (y2 - y1) / height,
    ]
}

/// Writes the directory for `records` (failed ones are left out).
pub(crate) fn write(dir: &Path, records: &[Record], root: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the YOLO directory '{}'", dir.display()))?;
    let ok: Vec<&Record> = records.iter().filter(|r| r.is_ok()).collect();
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => common_dir(ok.iter().map(|r| r.file.as_str())),
    };
    let mut classes: Vec<String> = Vec::new();
    let mut written = HashSet::new();
    for rec in &ok {
        let width = rec
            .fields
            .get("width")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        let height = rec
            .fields
            .get("height")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        let mut lines = String::new();
        let found = rec.fields.get("detections").and_then(Value::as_array);
        for d in found.into_iter().flatten() {
            let Some(b) = detection_box(d) else {
                continue;
            };
            let label = d["label"].as_str().unwrap_or_default();
            let class = match classes.iter().position(|c| c == label) {
                Some(i) => i,
                None => {
                    classes.push(label.to_string());
                    classes.len() - 1
                }
            };
            let [cx, cy, w, h] = normalised(b, width, height);
            lines.push_str(&format!("{class} {cx:.6} {cy:.6} {w:.6} {h:.6}\n"));
        }
        let name = Path::new(&relative_name(&rec.file, &root)).with_extension("txt");
        // A file outside the root keeps only its name.
        let name = match name.is_absolute() || name.starts_with("..") {
            true => PathBuf::from(name.file_name().unwrap_or_default()),
            false => name,
        };
        if !written.insert(name.clone()) {
            anyhow::bail!(
                "two images would share the YOLO label file '{}' ({}): give them distinct names",
                name.display(),
                rec.file
            );
        }
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create '{}'", parent.display()))?;
        }
        write_atomic(&path, lines.as_bytes(), false)
            .with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    let mut names = String::new();
    for c in &classes {
        names.push_str(c);
        names.push('\n');
    }
    write_atomic(&dir.join("classes.txt"), names.as_bytes(), false)
        .with_context(|| format!("cannot write '{}'", dir.join("classes.txt").display()))?;
    let mut yaml = format!(
        "# written by glance: class ids as in classes.txt\npath: {}\nnc: {}\nnames:\n",
        yaml_string(
            &root
                .canonicalize()
                .unwrap_or(root.clone())
                .to_string_lossy()
        ),
        classes.len()
    );
    for (i, c) in classes.iter().enumerate() {
        yaml.push_str(&format!("  {i}: {}\n", yaml_string(c)));
    }
    write_atomic(&dir.join("data.yaml"), yaml.as_bytes(), false)
        .with_context(|| format!("cannot write '{}'", dir.join("data.yaml").display()))?;
    let mut jsonl = Vec::new();
    for rec in records {
        jsonl.extend(serde_json::to_vec(&rec.to_json())?);
        jsonl.push(b'\n');
    }
    write_atomic(&records_path(dir), &jsonl, true)
        .with_context(|| format!("cannot write '{}'", records_path(dir).display()))?;
    Ok(())
}

/// A YAML double-quoted scalar.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_become_normalised_centres_and_classes_follow_first_appearance() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |file: &str, found: Value| {
            Record::new(file)
                .with_field("width", 200)
                .with_field("height", 100)
                .with_field("detections", found)
        };
        let records = vec![
            rec(
                "photos/a.jpg",
                serde_json::json!([{"label": "dog", "box": [20, 10, 60, 50]},
                                   {"label": "cat", "box": [100, 0, 200, 100]}]),
            ),
            rec(
                "photos/sub/b.png",
                serde_json::json!([{"label": "cat", "box": [60, 50, 20, 10]}]),
            ),
            rec("photos/c.jpg", serde_json::json!([])),
            Record::new("photos/d.jpg").with_error("broken"),
        ];
        write(dir.path(), &records, None).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(
            read("a.txt"),
            "0 0.200000 0.300000 0.200000 0.400000\n1 0.750000 0.500000 0.500000 1.000000\n"
        );
        assert_eq!(read("sub/b.txt"), "1 0.200000 0.300000 0.200000 0.400000\n");
        assert_eq!(read("c.txt"), "");
        assert!(!dir.path().join("d.txt").exists());
        assert_eq!(read("classes.txt"), "dog\ncat\n");
        assert!(read("data.yaml").contains("nc: 2\nnames:\n  0: \"dog\"\n  1: \"cat\"\n"));
    }
}
