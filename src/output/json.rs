//! Whole-document sinks (JSON array, COCO captions): records are kept in memory and journaled to
//! `<FILE>.partial.jsonl`; the document is written atomically at finish.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::jsonl::{lines_file, repair_lines_file, LineWriter};
use super::LabelStudioOptions;
use super::{coco, label_studio, read_if_exists, with_suffix, write_atomic, yolo};
use super::{Format, OutputOptions, Record, RecordSink, ResumeState, Summary};

/// The journal beside a whole-document output.
pub fn journal_path(output: &Path) -> PathBuf {
    with_suffix(output, ".partial.jsonl")
}

enum Target {
    Stdout(Box<dyn Write + Send>),
    File { path: PathBuf, journal: LineWriter },
}

pub(crate) struct DocumentSink {
    format: Format,
    text_field: String,
    label_studio: LabelStudioOptions,
    coco_root: Option<PathBuf>,
    target: Target,
    /// Records kept from an earlier run, then this run's, in order.
    records: Vec<Record>,
    summary: Summary,
}

pub(crate) fn open(
    opts: &OutputOptions,
    stdout: Box<dyn Write + Send>,
) -> Result<(Box<dyn RecordSink + Send>, ResumeState)> {
    let mut records = Vec::new();
    let target = match &opts.path {
        None => Target::Stdout(stdout),
        Some(path) => {
            let journal = journal_path(path);
            if opts.resume {
                records = load_document(path, opts)?;
                let mut seen: HashSet<String> = records.iter().map(|r| r.file.clone()).collect();
                for rec in repair_lines_file(&journal)?.records {
                    if seen.insert(rec.file.clone()) {
                        records.push(rec);
                    }
                }
                // Make the journal hold everything kept, so that a crash from now on loses nothing.
                let mut content = Vec::new();
                for rec in &records {
                    content.extend(
                        serde_json::to_vec(&rec.to_json()).context("cannot serialize record")?,
                    );
                    content.push(b'\n');
                }
                write_atomic(&journal, &content, true)
                    .with_context(|| format!("cannot write journal '{}'", journal.display()))?;
            }
            Target::File {
                path: path.clone(),
                journal: lines_file(&journal, opts.resume)?,
            }
        }
    };
    let state = ResumeState {
        done: records.iter().map(|r| r.file.clone()).collect(),
        ..ResumeState::default()
    };
    let sink = DocumentSink {
        format: opts.format,
        text_field: opts.text_field.clone(),
        label_studio: opts.label_studio.clone(),
        coco_root: opts.coco_root.clone(),
        target,
        records,
        summary: Summary::default(),
    };
    Ok((Box::new(sink), state))
}

/// Successful records of a finished document at `path`, if it exists.
fn load_document(path: &Path, opts: &OutputOptions) -> Result<Vec<Record>> {
    if opts.format == Format::Yolo {
        let records = repair_lines_file(&yolo::records_path(path))?.records;
        let mut seen = HashSet::new();
        return Ok(records
            .into_iter()
            .filter(|r| r.is_ok() && seen.insert(r.file.clone()))
            .collect());
    }
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(Vec::new());
    };
    let value: Value = serde_json::from_slice(&bytes).with_context(|| {
        format!("cannot resume from '{}': not a valid JSON document; move it away or run without resume", path.display())
    })?;
    let records = match opts.format {
        Format::Coco => coco::parse(&value, &opts.text_field)
            .with_context(|| format!("cannot resume from '{}'", path.display()))?,
        Format::LabelStudio => label_studio::parse(&value)
            .with_context(|| format!("cannot resume from '{}'", path.display()))?,
        _ => {
            let Value::Array(items) = value else {
                bail!(
                    "cannot resume from '{}': not a JSON array of records",
                    path.display()
                );
            };
            let mut records = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Some(rec) = Record::from_json(item) else {
                    bail!(
                        "cannot resume from '{}': item {} is not a record with a \"file\"",
                        path.display(),
                        i + 1
                    );
                };
                records.push(rec);
            }
            records
        }
    };
    let mut seen = HashSet::new();
    Ok(records
        .into_iter()
        .filter(|r| r.is_ok() && seen.insert(r.file.clone()))
        .collect())
}

impl DocumentSink {
    fn render(&self) -> Result<Vec<u8>> {
        let doc = match self.format {
            Format::Coco => {
                coco::render(&self.records, &self.text_field, self.coco_root.as_deref())
            }
            Format::LabelStudio => label_studio::render(&self.records, &self.label_studio),
            _ => Value::Array(self.records.iter().map(Record::to_json).collect()),
        };
        let mut bytes = serde_json::to_vec_pretty(&doc).context("cannot serialize document")?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

impl RecordSink for DocumentSink {
    fn write(&mut self, rec: &Record) -> Result<()> {
        if self.format == Format::Coco && rec.is_ok() {
            coco::check(rec, &self.text_field)?;
        }
        if let Target::File { journal, .. } = &mut self.target {
            journal.write(rec)?;
        }
        self.records.push(rec.clone());
        self.summary.count(rec);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Summary> {
        if self.format == Format::Yolo {
            if let Target::File { path, journal } = &mut self.target {
                journal.flush()?;
                yolo::write(path, &self.records, self.coco_root.as_deref())?;
                let journal = journal_path(path);
                if journal.exists() {
                    fs::remove_file(&journal).with_context(|| {
                        format!("cannot remove journal '{}'", journal.display())
                    })?;
                }
            }
            return Ok(self.summary);
        }
        let bytes = self.render()?;
        match &mut self.target {
            Target::Stdout(out) => out
                .write_all(&bytes)
                .and_then(|()| out.flush())
                .context("cannot write to standard output")?,
            Target::File { path, journal } => {
                journal.flush()?;
                write_atomic(path, &bytes, true)
                    .with_context(|| format!("cannot write output file '{}'", path.display()))?;
                let journal = journal_path(path);
                match fs::remove_file(&journal) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("cannot remove journal '{}'", journal.display())))
                    }
                }
            }
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::SharedBuf;
    use super::super::{open_sink, open_sink_with_stdout};
    use super::*;
    use serde_json::json;

    fn opts(path: Option<&Path>, resume: bool) -> OutputOptions {
        OutputOptions {
            format: Format::Json,
            path: path.map(Into::into),
            resume,
            ..OutputOptions::default()
        }
    }

    fn files(doc: &Value) -> Vec<&str> {
        doc.as_array()
            .unwrap()
            .iter()
            .map(|r| r["file"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn pretty_array_on_stdout_at_finish() {
        let buf = SharedBuf::default();
        let (mut sink, _) =
            open_sink_with_stdout(&opts(None, false), Box::new(buf.clone())).unwrap();
        sink.write(
            &Record::new("é.jpg")
                .with_field("label", "cat")
                .with_field("score", 0.5),
        )
        .unwrap();
        sink.write(&Record::new("b.jpg").with_error("bad")).unwrap();
        assert!(buf.contents().is_empty());
        sink.finish().unwrap();
        let text = String::from_utf8(buf.contents()).unwrap();
        assert!(
            text.contains("\n  {\n    \"file\": \"é.jpg\",\n    \"label\": \"cat\""),
            "{text}"
        );
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc,
            json!([{"file": "é.jpg", "label": "cat", "score": 0.5}, {"file": "b.jpg", "error": "bad"}])
        );
    }

    #[test]
    fn journal_then_atomic_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.json");
        let journal = journal_path(&path);
        fs::write(&path, "old").unwrap();
        let (mut sink, _) = open_sink(&opts(Some(&path), false)).unwrap();
        sink.write(&Record::new("a").with_field("caption", "x"))
            .unwrap();
        assert_eq!(
            fs::read_to_string(&journal).unwrap(),
            "{\"file\":\"a\",\"caption\":\"x\"}\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        sink.finish().unwrap();
        assert!(!journal.exists());
        assert!(!with_suffix(&path, ".tmp").exists());
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(files(&doc), ["a"]);
    }

    #[test]
    fn resume_after_crash_and_after_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.json");
        // First run: finished with a and an error for b.
        let (mut sink, _) = open_sink(&opts(Some(&path), false)).unwrap();
        sink.write(&Record::new("a").with_field("caption", "x"))
            .unwrap();
        sink.write(&Record::new("b").with_error("oom")).unwrap();
        sink.finish().unwrap();
        // Second run: retries b, does c, then "crashes" mid-line on d (the sink is dropped without finish).
        let (mut sink, state) = open_sink(&opts(Some(&path), true)).unwrap();
        assert_eq!(state.done.len(), 1);
        assert!(state.done.contains("a"));
        sink.write(&Record::new("b").with_field("caption", "y"))
            .unwrap();
        sink.write(&Record::new("c").with_error("still bad"))
            .unwrap();
        drop(sink);
        let mut j = fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&path))
            .unwrap();
        j.write_all(b"{\"file\":\"d\",\"capt").unwrap();
        // Third run: a and b are done; c and d are retried.
        let (mut sink, state) = open_sink(&opts(Some(&path), true)).unwrap();
        let mut done: Vec<_> = state.done.iter().cloned().collect();
        done.sort();
        assert_eq!(done, ["a", "b"]);
        for f in ["c", "d"] {
            sink.write(&Record::new(f).with_field("caption", "z"))
                .unwrap();
        }
        let summary = sink.finish().unwrap();
        assert_eq!(summary.written, 2);
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(files(&doc), ["a", "b", "c", "d"]);
        assert!(!journal_path(&path).exists());
    }

    #[test]
    fn resume_rejects_a_foreign_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.json");
        fs::write(&path, "{\"not\": \"an array\"}").unwrap();
        let err = open_sink(&opts(Some(&path), true)).err().unwrap();
        assert!(err.to_string().contains("o.json"), "{err}");
        fs::write(&path, "[1, 2").unwrap();
        let err = open_sink(&opts(Some(&path), true)).err().unwrap();
        assert!(
            err.to_string().contains("not a valid JSON document"),
            "{err}"
        );
    }
}
