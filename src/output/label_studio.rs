//! Label Studio tasks JSON: one task per successful image with glance's results as `predictions`
//! (pre-annotations): labels as a `choices` result, a caption as a `textarea` result. Import it
//! in a project whose labeling config has a `<Choices name=FROM_NAME toName=TO_NAME>` and/or a
//! `<TextArea name=CAPTION_NAME toName=TO_NAME>` on an `<Image name=TO_NAME value="$image">`.

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::{detection_box, Record};

/// The control and object names of the target project's labeling config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelStudioOptions {
    /// `name` of the `<Choices>` control that receives labels.
    pub from_name: String,
    /// `name` of the `<TextArea>` control that receives captions.
    pub caption_name: String,
    /// `name` of the `<Image>` object both refer to.
    pub to_name: String,
    /// Put in front of each file in `data.image`, e.g. `/data/local-files/?d=` for Label Studio's
    /// local-files storage.
    pub url_prefix: String,
}

impl Default for LabelStudioOptions {
    fn default() -> Self {
        Self {
            from_name: "choice".into(),
            caption_name: "caption".into(),
            to_name: "image".into(),
            url_prefix: String::new(),
        }
    }
}

/// The choices of a record: every tag of `labels`, else its `label` unless that is "unknown".
fn choices(rec: &Record) -> Vec<String> {
    match (rec.fields.get("labels"), rec.fields.get("label")) {
        (Some(Value::Array(items)), _) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("label").and_then(Value::as_str).map(String::from),
                _ => None,
            })
            .collect(),
        (_, Some(Value::String(label))) if label != crate::output::UNKNOWN => vec![label.clone()],
        _ => Vec::new(),
    }
}

fn task(rec: &Record, opts: &LabelStudioOptions) -> Value {
    let mut result = Vec::new();
    let choices = choices(rec);
    if !choices.is_empty() {
        result.push(json!({
            "from_name": opts.from_name, "to_name": opts.to_name, "type": "choices",
            "value": {"choices": choices},
        }));
    }
    if let Some(Value::String(caption)) = rec.fields.get("caption") {
        result.push(json!({
            "from_name": opts.caption_name, "to_name": opts.to_name, "type": "textarea",
            "value": {"text": [caption]},
        }));
    }
    let found = rec.fields.get("detections").and_then(Value::as_array);
    let size = |k: &str| {
        rec.fields
            .get(k)
            .and_then(Value::as_f64)
            .filter(|v| *v > 0.0)
    };
    if let (Some(found), Some(w), Some(h)) = (found, size("width"), size("height")) {
        for d in found {
            let Some([x1, y1, x2, y2]) = detection_box(d) else {
                continue;
            };
            result.push(json!({
                "from_name": opts.from_name, "to_name": opts.to_name, "type": "rectanglelabels",
                "original_width": w, "original_height": h, "image_rotation": 0,
                "value": {
                    "x": x1 / w * 100.0, "y": y1 / h * 100.0,
                    "width": (x2 - x1) / w * 100.0, "height": (y2 - y1) / h * 100.0,
                    "rotation": 0, "rectanglelabels": [d["label"]],
                },
            }));
        }
    }
    let mut prediction = Map::new();
    prediction.insert("model_version".into(), "glance".into());
    if let Some(score) = rec.fields.get("score").filter(|s| s.is_number()) {
        prediction.insert("score".into(), score.clone());
    }
    prediction.insert("result".into(), result.into());
    json!({
        "data": {"image": format!("{}{}", opts.url_prefix, rec.file), "file": rec.file},
        "predictions": [prediction],
    })
}

/// The task list; failed records are left out (they are in the run's summary).
pub(crate) fn render(records: &[Record], opts: &LabelStudioOptions) -> Value {
    Value::Array(
        records
            .iter()
            .filter(|r| r.is_ok())
            .map(|r| task(r, opts))
            .collect(),
    )
}

/// Records back from a task list written by [`render`] (for resume): `labels` from the choices,
/// `caption` from the text area, `score` from the prediction; rendering them again gives the same
/// tasks.
pub(crate) fn parse(doc: &Value) -> Result<Vec<Record>> {
    let Some(tasks) = doc.as_array() else {
        bail!("not a Label Studio task list: not a JSON array");
    };
    let mut records = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let Some(file) = task.pointer("/data/file").and_then(Value::as_str) else {
            bail!("task {} has no data.file (not written by glance)", i + 1);
        };
        let mut rec = Record::new(file);
        let prediction = task.pointer("/predictions/0");
        if let Some(score) = prediction.and_then(|p| p.get("score")) {
            rec.fields.insert("score".into(), score.clone());
        }
        let results = prediction
            .and_then(|p| p.get("result"))
            .and_then(Value::as_array);
        for result in results.into_iter().flatten() {
            match result.get("type").and_then(Value::as_str) {
                Some("choices") => {
                    let labels: Vec<Value> = result
                        .pointer("/value/choices")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|c| json!({"label": c}))
                        .collect();
                    rec.fields.insert("labels".into(), labels.into());
                }
                Some("textarea") => {
                    if let Some(text) = result.pointer("/value/text/0") {
                        rec.fields.insert("caption".into(), text.clone());
                    }
                }
                Some("rectanglelabels") => {
                    let n = |p: &str| result.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
                    let (w, h) = (n("/original_width"), n("/original_height"));
                    let (x, y) = (n("/value/x") * w / 100.0, n("/value/y") * h / 100.0);
                    let (bw, bh) = (
                        n("/value/width") * w / 100.0,
                        n("/value/height") * h / 100.0,
                    );
                    // Boxes are whole pixels: rounding undoes the percentages exactly.
                    let b = [x.round(), y.round(), (x + bw).round(), (y + bh).round()];
                    let label = result
                        .pointer("/value/rectanglelabels/0")
                        .cloned()
                        .unwrap_or_default();
                    rec.fields.insert("width".into(), json!(w as i64));
                    rec.fields.insert("height".into(), json!(h as i64));
                    let entry = rec
                        .fields
                        .entry("detections")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(list) = entry {
                        list.push(json!({"label": label, "box": b.map(|v| v as i64)}));
                    }
                }
                _ => {}
            }
        }
        records.push(rec);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_with_choices_and_textarea_round_trip() {
        let opts = LabelStudioOptions {
            url_prefix: "/data/local-files/?d=".into(),
            ..LabelStudioOptions::default()
        };
        let records = vec![
            Record::new("a.jpg")
                .with_field("caption", "a cat on a mat")
                .with_field(
                    "labels",
                    json!([{"label": "cat", "score": 0.4}, {"label": "mat", "score": 0.2}]),
                ),
            Record::new("b.jpg").with_error("not an image"),
            Record::new("c.jpg")
                .with_field("label", "unknown")
                .with_field("score", 0.1),
            Record::new("d.jpg")
                .with_field("label", "dog")
                .with_field("score", 0.8),
        ];
        let doc = render(&records, &opts);
        assert_eq!(
            doc[0],
            json!({
                "data": {"image": "/data/local-files/?d=a.jpg", "file": "a.jpg"},
                "predictions": [{"model_version": "glance", "result": [
                    {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["cat", "mat"]}},
                    {"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": ["a cat on a mat"]}},
                ]}],
            })
        );
        assert_eq!(doc.as_array().unwrap().len(), 3, "the error is left out");
        assert_eq!(
            doc[1]["predictions"][0]["result"],
            json!([]),
            "unknown is no choice"
        );
        assert_eq!(doc[2]["predictions"][0]["score"], json!(0.8));
        let back = parse(&doc).unwrap();
        assert_eq!(render(&back, &opts), doc);
        assert!(parse(&json!([{"data": {}}])).is_err());
    }

    #[test]
    fn boxes_become_rectangles_in_percent_and_back() {
        let opts = LabelStudioOptions::default();
        let records = vec![Record::new("a.jpg")
            .with_field("width", 451)
            .with_field("height", 300)
            .with_field(
                "detections",
                json!([{"label": "cat", "box": [193, 128, 333, 160]}, {"label": "ear", "box": [241, 160, 193, 128]}]),
            )];
        let doc = render(&records, &opts);
        let r = &doc[0]["predictions"][0]["result"][1];
        assert_eq!(r["type"], "rectanglelabels");
        assert_eq!(r["value"]["rectanglelabels"], json!(["ear"]));
        assert!((r["value"]["x"].as_f64().unwrap() - 193.0 / 451.0 * 100.0).abs() < 1e-9);
        assert!((r["value"]["height"].as_f64().unwrap() - 32.0 / 300.0 * 100.0).abs() < 1e-9);
        let back = parse(&doc).unwrap();
        assert_eq!(render(&back, &opts), doc);
    }
}
