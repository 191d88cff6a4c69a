//! Reading a finished output file back into records, whatever its format: what `glance merge`
//! does with the parts that the shards of a job wrote.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{coco, label_studio, Format, Record};

/// The records of one output file, in file order.
pub struct Part {
    pub records: Vec<Record>,
    /// A CSV part's header.
    pub csv_columns: Option<Vec<String>>,
}

/// Reads `path` as `format`. A JSONL file's cut last line (a task killed mid-write and never
/// resumed) is left out, so that image counts as missing; any other damage is an error naming
/// the file. COCO captions come back under `text_field`, COCO's `errors` as error records.
pub fn read_records(path: &Path, format: Format, text_field: &str) -> Result<Part> {
    if format == Format::Yolo {
        // A YOLO directory keeps its records beside the label files.
        return read_records(&super::yolo::records_path(path), Format::Jsonl, text_field);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let what = |m: &str| format!("{}: {m}", path.display());
    let mut csv_columns = None;
    let records = match format {
        Format::Jsonl => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let mut records = Vec::with_capacity(lines.len());
            for (i, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| Record::from_json(&v))
                {
                    Some(rec) => records.push(rec),
                    None if i + 1 == lines.len() && !text.ends_with('\n') => {}
                    None => bail!(what(&format!("line {} is not a record", i + 1))),
                }
            }
            records
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(&bytes[..]);
            let header: Vec<String> = reader
                .headers()
                .with_context(|| what("no CSV header"))?
                .iter()
                .map(str::to_string)
                .collect();
            let Some(file_col) = header.iter().position(|c| c == "file") else {
                bail!(what("the CSV has no file column"));
            };
            let mut records = Vec::new();
            for (i, row) in reader.records().enumerate() {
                let row = row.with_context(|| what(&format!("row {} is damaged", i + 2)))?;
                let mut rec = Record::new(&row[file_col]);
                for (column, cell) in header.iter().zip(row.iter()) {
                    match column.as_str() {
                        "file" => {}
                        "error" if !cell.is_empty() => rec.error = Some(cell.to_string()),
                        _ if !cell.is_empty() => {
                            rec.fields.insert(column.clone(), cell.into());
                        }
                        _ => {}
                    }
                }
                records.push(rec);
            }
            csv_columns = Some(header);
            records
        }
        Format::Json | Format::Coco | Format::LabelStudio => {
            let doc: Value = serde_json::from_slice(&bytes)
                .with_context(|| what("not a JSON document (a shard still running?)"))?;
            let format = match (format, &doc) {
                (Format::Json, Value::Object(o)) if o.contains_key("images") => Format::Coco,
                (Format::Json, Value::Array(items))
                    if items.first().is_some_and(|t| t.get("data").is_some()) =>
                {
                    Format::LabelStudio
                }
                (f, _) => f,
            };
            match format {
                Format::Coco => {
                    let mut records =
                        coco::parse(&doc, text_field).with_context(|| what("COCO"))?;
                    for e in doc["errors"].as_array().into_iter().flatten() {
                        if let (Some(file), Some(error)) =
                            (e["file_name"].as_str(), e["error"].as_str())
                        {
                            records.push(Record::new(file).with_error(error));
                        }
                    }
                    records
                }
                Format::LabelStudio => {
                    label_studio::parse(&doc).with_context(|| what("Label Studio"))?
                }
                _ => {
                    let Value::Array(items) = doc else {
                        bail!(what("not a JSON array of records"));
                    };
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            Record::from_json(v)
                                .with_context(|| what(&format!("item {} is not a record", i + 1)))
                        })
                        .collect::<Result<Vec<_>>>()?
                }
            }
        }
        Format::Yolo => bail!(what("a YOLO directory is read through its records.jsonl")),
        Format::Txt => {
            bail!("sidecar .txt outputs lie beside the images: there is nothing to merge")
        }
    };
    Ok(Part {
        records,
        csv_columns,
    })
}
