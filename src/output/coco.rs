//! COCO captions document: rendering records into `{"info", "images", "annotations", "errors"}` and reading
//! one back for resume.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::{detection_box, missing_text_field, value_text, Record};

/// The captions of a record: one per string of an array, else the field's text.
fn captions(rec: &Record, text_field: &str) -> Vec<String> {
    match rec.fields.get(text_field) {
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(value) => value_text(value).into_iter().collect(),
        None => Vec::new(),
    }
}

/// A successful record must carry the caption field.
pub(crate) fn check(rec: &Record, text_field: &str) -> Result<()> {
    match rec.fields.get(text_field) {
        None | Some(Value::Null) => Err(missing_text_field(rec, text_field)),
        Some(_) => Ok(()),
    }
}

/// The directory every path in `files` lies in, lexically (`photos` for `photos/a/1.jpg` and
/// `photos/b/2.jpg`); empty when they share none.
pub(crate) fn common_dir<'a>(files: impl Iterator<Item = &'a str>) -> PathBuf {
    let mut common: Option<Vec<Component>> = None;
    for file in files {
        let parent: Vec<Component> = Path::new(file)
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        common = Some(match common {
            None => parent,
            Some(c) => c
                .into_iter()
                .zip(parent)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    common.unwrap_or_default().iter().collect()
}

/// `file` relative to `root` with `/` between components, as COCO tools join it to their image
/// root; the path as given when it is not under `root` (lexically, nor once both are resolved).
pub(crate) fn relative_name(file: &str, root: &Path) -> String {
    let path = Path::new(file);
    let rel = path.strip_prefix(root).map(Path::to_path_buf).or_else(|_| {
        let (p, r) = (path.canonicalize()?, root.canonicalize()?);
        p.strip_prefix(&r)
            .map(Path::to_path_buf)
            .map_err(|_| std::io::Error::other("not under the root"))
    });
    match rel {
        Ok(rel) if !rel.as_os_str().is_empty() => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        _ => file.to_string(),
    }
}

/// The document for `records`: ids from 1 in record order; failed records go under "errors".
/// Each image's `file_name` is relative to `root` (default: the directory the files share);
/// `path` keeps the file as the run named it, where that differs.
pub(crate) fn render(records: &[Record], text_field: &str, root: Option<&Path>) -> Value {
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => common_dir(
            records
                .iter()
                .filter(|r| r.is_ok())
                .map(|r| r.file.as_str()),
        ),
    };
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut errors = Vec::new();
    // Detection records make an instances document: one category per label, in order of
    // first appearance, and a box annotation per detection.
    let detections = text_field == "detections";
    let mut categories: Vec<String> = Vec::new();
    for rec in records {
        if let Some(error) = &rec.error {
            errors.push(json!({"file_name": rec.file, "error": error}));
            continue;
        }
        let image_id = images.len() + 1;
        let mut image = Map::new();
        image.insert("id".into(), image_id.into());
        let name = relative_name(&rec.file, &root);
        if name != rec.file {
            image.insert("path".into(), rec.file.clone().into());
        }
        image.insert("file_name".into(), name.into());
        for key in ["width", "height"] {
            if let Some(v) = rec.fields.get(key).filter(|v| !v.is_null()) {
                image.insert(key.into(), v.clone());
            }
        }
        images.push(Value::Object(image));
        if detections {
            let found = rec.fields.get(text_field).and_then(Value::as_array);
            for d in found.into_iter().flatten() {
                let label = d["label"].as_str().unwrap_or_default().to_string();
                let Some(b) = detection_box(d) else {
                    continue;
                };
                let category = match categories.iter().position(|c| *c == label) {
                    Some(i) => i + 1,
                    None => {
                        categories.push(label);
                        categories.len()
                    }
                };
                // COCO boxes are [left, top, width, height], in whole pixels as Florence's are.
                let [x, y, right, bottom] = b.map(|v| v as i64);
                let (w, h) = (right - x, bottom - y);
                let mut a = json!({
                    "id": annotations.len() + 1, "image_id": image_id, "category_id": category,
                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                });
                if let Some(polygon) = d.get("polygon") {
                    a["segmentation"] = json!([polygon]);
                }
                annotations.push(a);
            }
            continue;
        }
        for caption in captions(rec, text_field) {
            annotations.push(
                json!({"id": annotations.len() + 1, "image_id": image_id, "caption": caption}),
            );
        }
    }
    let mut doc = json!({
        "info": info(if detections { "detections" } else { "captions" }),
        "images": images,
        "annotations": annotations,
        "errors": errors,
    });
    if detections {
        doc["categories"] = categories
            .iter()
            .enumerate()
            .map(|(i, name)| json!({"id": i + 1, "name": name}))
            .collect();
    }
    doc
}

fn info(what: &str) -> Value {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    json!({
        "description": format!("{what} generated by glance"),
        "version": env!("CARGO_PKG_VERSION"),
        "year": year,
        "date_created": format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", t / 3600, t / 60 % 60, t % 60
        ),
    })
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The successful records of a COCO captions document: file name, the caption(s) under `text_field` (a
/// string, or an array when an image has several), width and height. Entries under "errors" are left out.
pub(crate) fn parse(doc: &Value, text_field: &str) -> Result<Vec<Record>> {
    let Some(images) = doc.get("images").and_then(Value::as_array) else {
        bail!("not a COCO captions document: no \"images\" array");
    };
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(annotations) = doc.get("annotations").and_then(Value::as_array) {
        for ann in annotations {
            if let (Some(id), Some(caption)) = (
                ann.get("image_id"),
                ann.get("caption").and_then(Value::as_str),
            ) {
                by_id
                    .entry(id.to_string())
                    .or_default()
                    .push(caption.to_string());
            }
        }
    }
    if text_field == "detections" {
        return parse_instances(doc, images);
    }
    let mut records = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let mut rec = image_record(image, i)?;
        let caps = image
            .get("id")
            .and_then(|id| by_id.remove(&id.to_string()))
            .unwrap_or_default();
        match caps.len() {
            0 => {}
            1 => {
                rec.fields.insert(
                    text_field.into(),
                    caps.into_iter().next().unwrap_or_default().into(),
                );
            }
            _ => {
                rec.fields.insert(text_field.into(), caps.into());
            }
        }
        records.push(rec);
    }
    Ok(records)
}

/// The record of the `i`-th image entry: its file (`path`, the file as the run named it and what
/// resuming matches, else `file_name`) and its size.
fn image_record(image: &Value, i: usize) -> Result<Record> {
    let Some(file) = ["path", "file_name"]
        .iter()
        .find_map(|k| image.get(*k).and_then(Value::as_str))
    else {
        bail!("image {} has no \"file_name\"", i + 1);
    };
    let mut rec = Record::new(file);
    for key in ["width", "height"] {
        if let Some(v) = image.get(key) {
            rec.fields.insert(key.into(), v.clone());
        }
    }
    Ok(rec)
}

/// Detection records back from an instances document written by [`render`]: boxes as
/// `[x, y, x + w, y + h]`, which render to the same annotations.
fn parse_instances(doc: &Value, images: &[Value]) -> Result<Vec<Record>> {
    let mut names: HashMap<String, String> = HashMap::new();
    for c in doc
        .get("categories")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(id), Some(name)) = (c.get("id"), c.get("name").and_then(Value::as_str)) {
            names.insert(id.to_string(), name.to_string());
        }
    }
    let mut by_image: HashMap<String, Vec<Value>> = HashMap::new();
    for a in doc
        .get("annotations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(image), Some(b)) = (a.get("image_id"), a.get("bbox").and_then(Value::as_array))
        else {
            continue;
        };
        let n: Vec<i64> = b.iter().map(|v| v.as_f64().unwrap_or(0.0) as i64).collect();
        if n.len() != 4 {
            continue;
        }
        let label = a
            .get("category_id")
            .and_then(|c| names.get(&c.to_string()))
            .cloned()
            .unwrap_or_default();
        let mut d = json!({"label": label, "box": [n[0], n[1], n[0] + n[2], n[1] + n[3]]});
        if let Some(polygon) = a.pointer("/segmentation/0") {
            d["polygon"] = polygon.clone();
        }
        by_image.entry(image.to_string()).or_default().push(d);
    }
    let mut records = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let mut rec = image_record(image, i)?;
        let found = image
            .get("id")
            .and_then(|id| by_image.remove(&id.to_string()))
            .unwrap_or_default();
        rec.fields.insert("detections".into(), found.into());
        records.push(rec);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::super::{open_sink, Format, OutputOptions, RecordSink};
    use super::*;
    use std::fs;
    use std::path::Path;

    fn opts(path: &Path, resume: bool) -> OutputOptions {
        OutputOptions {
            format: Format::Coco,
            path: Some(path.into()),
            resume,
            ..OutputOptions::default()
        }
    }

    fn write_all(sink: &mut Box<dyn RecordSink + Send>, records: &[Record]) {
        for r in records {
            sink.write(r).unwrap();
        }
    }

    #[test]
    fn detection_records_make_an_instances_document_that_resumes_to_itself() {
        let records = vec![
            Record::new("p/a.jpg")
                .with_field("width", 200)
                .with_field("height", 100)
                .with_field(
                    "detections",
                    json!([{"label": "dog", "box": [10, 20, 50, 60]},
                           {"label": "text", "box": [1, 2, 9, 8], "polygon": [1, 2, 9, 2, 9, 8, 1, 8]},
                           {"label": "dog", "box": [90, 80, 70, 60]}]),
                ),
            Record::new("p/b.jpg").with_error("broken"),
            Record::new("p/c.jpg")
                .with_field("width", 5)
                .with_field("height", 5)
                .with_field("detections", json!([])),
        ];
        let doc = render(&records, "detections", None);
        assert_eq!(
            doc["categories"],
            json!([{"id": 1, "name": "dog"}, {"id": 2, "name": "text"}])
        );
        let a = &doc["annotations"];
        assert_eq!(a[0]["bbox"], json!([10, 20, 40, 40]));
        assert_eq!(a[0]["area"], json!(1600));
        assert_eq!(a[1]["segmentation"], json!([[1, 2, 9, 2, 9, 8, 1, 8]]));
        assert_eq!(a[2]["bbox"], json!([70, 60, 20, 20]), "reversed corners");
        assert_eq!(a[2]["category_id"], json!(1));
        assert_eq!(doc["errors"][0]["file_name"], "p/b.jpg");
        let back = parse(&doc, "detections").unwrap();
        assert_eq!(back.len(), 2);
        let mut again = render(&back, "detections", None);
        again["info"] = doc["info"].clone();
        let mut expected = doc.clone();
        expected["errors"] = json!([]);
        assert_eq!(again, expected);
    }

    #[test]
    fn ids_images_annotations_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions.json");
        let (mut sink, _) = open_sink(&opts(&path, false)).unwrap();
        write_all(
            &mut sink,
            &[
                Record::new("a.jpg")
                    .with_field("caption", "a cat")
                    .with_field("width", 640)
                    .with_field("height", 480),
                Record::new("b.jpg").with_error("cannot decode"),
                Record::new("ç.jpg")
                    .with_field("caption", json!(["one", "two"]))
                    .with_field("width", 10),
            ],
        );
        let summary = sink.finish().unwrap();
        assert_eq!((summary.written, summary.errors), (2, 1));
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            doc["images"],
            json!([
                {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
                {"id": 2, "file_name": "ç.jpg", "width": 10}
            ])
        );
        assert_eq!(
            doc["annotations"],
            json!([
                {"id": 1, "image_id": 1, "caption": "a cat"},
                {"id": 2, "image_id": 2, "caption": "one"},
                {"id": 3, "image_id": 2, "caption": "two"}
            ])
        );
        assert_eq!(
            doc["errors"],
            json!([{"file_name": "b.jpg", "error": "cannot decode"}])
        );
        assert!(doc["info"]["date_created"].as_str().unwrap().ends_with('Z'));
        // Read back: the successful records, as they were.
        let back = parse(&doc, "caption").unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[0],
            Record::new("a.jpg")
                .with_field("caption", "a cat")
                .with_field("width", 640)
                .with_field("height", 480)
        );
        assert_eq!(back[1].fields["caption"], json!(["one", "two"]));
    }

    #[test]
    fn resume_retries_errors_and_renumbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions.json");
        let (mut sink, _) = open_sink(&opts(&path, false)).unwrap();
        write_all(
            &mut sink,
            &[
                Record::new("a").with_field("caption", "x"),
                Record::new("b").with_error("oom"),
            ],
        );
        sink.finish().unwrap();
        let (mut sink, state) = open_sink(&opts(&path, true)).unwrap();
        assert!(state.done.contains("a") && !state.done.contains("b"));
        write_all(&mut sink, &[Record::new("b").with_field("caption", "y")]);
        sink.finish().unwrap();
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let names: Vec<&str> = doc["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["file_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            doc["annotations"][1],
            json!({"id": 2, "image_id": 2, "caption": "y"})
        );
        assert_eq!(doc["errors"], json!([]));
    }

    #[test]
    fn missing_caption_field_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, _) = open_sink(&opts(&dir.path().join("c.json"), false)).unwrap();
        let err = sink
            .write(&Record::new("a.jpg").with_field("label", "cat"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "record for 'a.jpg' has no 'caption' field to write (it has: label)"
        );
        // Failed records need no caption.
        sink.write(&Record::new("b.jpg").with_error("x")).unwrap();
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn file_names_are_relative_to_the_shared_or_given_root() {
        let rec = |file: &str| {
            let mut r = Record::new(file);
            r.fields.insert("caption".into(), "x".into());
            r
        };
        let records = [
            rec("../shared/images/a/1.jpg"),
            rec("../shared/images/b/2.jpg"),
        ];
        let doc = render(&records, "caption", None);
        let images = doc["images"].as_array().unwrap();
        assert_eq!(images[0]["file_name"], "a/1.jpg");
        assert_eq!(images[1]["file_name"], "b/2.jpg");
        assert_eq!(images[1]["path"], "../shared/images/b/2.jpg");
        // Resuming matches the path as the run named it.
        let back: Vec<String> = parse(&doc, "caption")
            .unwrap()
            .into_iter()
            .map(|r| r.file)
            .collect();
        assert_eq!(
            back,
            ["../shared/images/a/1.jpg", "../shared/images/b/2.jpg"]
        );
        let doc = render(&records, "caption", Some(Path::new("../shared")));
        assert_eq!(doc["images"][0]["file_name"], "images/a/1.jpg");
        // Not under the root: the path as given.
        let doc = render(&records, "caption", Some(Path::new("/elsewhere")));
        assert_eq!(doc["images"][0]["file_name"], "../shared/images/a/1.jpg");
        assert!(doc["images"][0].get("path").is_none());
        assert_eq!(
            common_dir(["a.jpg", "/abs/b.jpg"].into_iter()),
            PathBuf::new()
        );
    }
}
