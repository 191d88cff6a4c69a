//! The result record of one input, and how its values turn into text (sidecars, captions, CSV cells).

use std::path::PathBuf;

use serde_json::{Map, Value};

/// One result per input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The input as displayed to the user (see `inputs::Input::display`).
    pub file: String,
    /// The image on disk; sidecars are written next to it (falls back to `file` when `None`).
    /// Not serialized.
    pub path: Option<PathBuf>,
    /// Task outputs in insertion order ("caption", "label", "score", "labels", "width", "height", ...).
    /// Keys `file` and `error` are reserved and not serialized from here.
    pub fields: Map<String, Value>,
    pub error: Option<String>,
}

impl Record {
    pub fn new(file: impl Into<String>) -> Self {
        Record {
            file: file.into(),
            ..Record::default()
        }
    }

    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    /// `{"file": .., <fields..>, "error": ..}`, `"error"` only when there is one.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::with_capacity(self.fields.len() + 2);
        obj.insert("file".into(), Value::String(self.file.clone()));
        for (k, v) in &self.fields {
            if k != "file" && k != "error" {
                obj.insert(k.clone(), v.clone());
            }
        }
        if let Some(e) = &self.error {
            obj.insert("error".into(), Value::String(e.clone()));
        }
        Value::Object(obj)
    }

    /// Inverse of [`Record::to_json`]; `None` unless `value` is an object with a string `file`.
    /// A null `error` counts as no error; a non-string one is kept as JSON text.
    pub fn from_json(value: &Value) -> Option<Record> {
        let obj = value.as_object()?;
        let file = obj.get("file")?.as_str()?.to_string();
        let mut rec = Record::new(file);
        for (k, v) in obj {
            match k.as_str() {
                "file" => {}
                "error" => {
                    rec.error = match v {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    }
                }
                _ => {
                    rec.fields.insert(k.clone(), v.clone());
                }
            }
        }
        Some(rec)
    }
}

/// The label written when no class is confident enough.
pub const UNKNOWN: &str = "unknown";

/// An f32 as the JSON number that prints like it (0.9, not 0.899999976158142).
/// A detection's `box` (`[x1, y1, x2, y2]` as Florence writes it, corners in either order) as
/// `[left, top, right, bottom]`; `None` when it is not four numbers.
pub fn detection_box(detection: &Value) -> Option<[f64; 4]> {
    let b = detection.get("box")?.as_array().filter(|b| b.len() == 4)?;
    let n: Vec<f64> = b.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect();
    Some([
        n[0].min(n[2]),
        n[1].min(n[3]),
        n[0].max(n[2]),
        n[1].max(n[3]),
    ])
}

pub fn number(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The text of a field for a sidecar or a caption: strings as-is, numbers and booleans printed, arrays joined
/// by ", " (an object with a string "label" gives its label), other objects as JSON; `None` for null.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(value_text)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Object(obj) => match obj.get("label") {
            Some(Value::String(label)) => Some(label.clone()),
            _ => Some(value.to_string()),
        },
    }
}

/// The CSV cell of `column` for `rec` (see the module docs).
pub fn csv_cell(rec: &Record, column: &str) -> String {
    match column {
        "file" => rec.file.clone(),
        "error" => rec.error.clone().unwrap_or_default(),
        _ => match rec.fields.get(column) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_json_round_trip_and_reserved_keys() {
        let rec = Record::new("a.jpg")
            .with_field("caption", "x")
            .with_field("file", "shadow")
            .with_field("score", 0.5)
            .with_error("late");
        let v = rec.to_json();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"file":"a.jpg","caption":"x","score":0.5,"error":"late"}"#
        );
        let back = Record::from_json(&v).unwrap();
        assert_eq!(back.file, "a.jpg");
        assert_eq!(back.error.as_deref(), Some("late"));
        assert_eq!(back.fields.keys().collect::<Vec<_>>(), ["caption", "score"]);
        assert!(Record::from_json(&json!({"file": 3})).is_none());
        assert!(Record::from_json(&json!({"file": "a", "error": null}))
            .unwrap()
            .is_ok());
    }

    #[test]
    fn text_and_cells() {
        assert_eq!(value_text(&json!("a")).as_deref(), Some("a"));
        assert_eq!(value_text(&json!(0.5)).as_deref(), Some("0.5"));
        assert_eq!(value_text(&json!(["a", "b"])).as_deref(), Some("a, b"));
        assert_eq!(
            value_text(&json!([{"label": "cat", "score": 1}, {"label": "dog"}])).as_deref(),
            Some("cat, dog")
        );
        assert_eq!(value_text(&json!(null)), None);
        let rec = Record::new("f")
            .with_field("n", 3)
            .with_field("s", "t")
            .with_field("o", json!({"a": [1]}));
        assert_eq!(csv_cell(&rec, "file"), "f");
        assert_eq!(csv_cell(&rec, "error"), "");
        assert_eq!(csv_cell(&rec, "n"), "3");
        assert_eq!(csv_cell(&rec, "s"), "t");
        assert_eq!(csv_cell(&rec, "o"), r#"{"a":[1]}"#);
        assert_eq!(csv_cell(&rec, "missing"), "");
    }
}
