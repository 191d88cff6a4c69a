//! CSV sink: a header of the chosen columns, then one row per record, flushed as it arrives.

use std::fs::{self, OpenOptions};
use std::io::Write;

use anyhow::{bail, Context, Result};

use super::resume::{resume_csv, KeptCsv};
use super::{
    csv_cell, read_if_exists, write_atomic, OutputOptions, Record, RecordSink, ResumeState, Summary,
};

pub(crate) struct CsvSink {
    out: ::csv::Writer<Box<dyn Write + Send>>,
    columns: Vec<String>,
    name: String,
    summary: Summary,
}

pub(crate) fn open(
    opts: &OutputOptions,
    stdout: Box<dyn Write + Send>,
) -> Result<(Box<dyn RecordSink + Send>, ResumeState)> {
    if opts.csv_columns.is_empty() {
        bail!("csv output needs at least one column");
    }
    let columns = opts.csv_columns.clone();
    let mut kept = KeptCsv::default();
    let (out, name): (Box<dyn Write + Send>, String) = match &opts.path {
        None => (stdout, "standard output".into()),
        Some(path) => {
            let name = format!("'{}'", path.display());
            if opts.resume {
                if !columns.iter().any(|c| c == "file") {
                    bail!("cannot resume {name}: csv columns must include \"file\"");
                }
                if let Some(bytes) = read_if_exists(path)? {
                    kept = resume_csv(&bytes, path, &columns)?;
                    if kept.changed {
                        write_atomic(path, &kept.content, true)
                            .with_context(|| format!("cannot rewrite {name} for resuming"))?;
                    }
                }
            }
            let file = if opts.resume {
                OpenOptions::new().create(true).append(true).open(path)
            } else {
                fs::File::create(path)
            }
            .with_context(|| format!("cannot open output file {name}"))?;
            (Box::new(file), name)
        }
    };
    let out = ::csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    let mut sink = CsvSink {
        out,
        columns,
        name,
        summary: Summary::default(),
    };
    if !kept.has_header {
        let header = sink.columns.clone();
        sink.write_row(&header)?;
    }
    let state = ResumeState {
        done: kept.done.into_iter().collect(),
        ..ResumeState::default()
    };
    Ok((Box::new(sink), state))
}

impl CsvSink {
    fn write_row(&mut self, row: &[String]) -> Result<()> {
        self.out
            .write_record(row)
            .map_err(anyhow::Error::new)
            .and_then(|()| self.out.flush().map_err(anyhow::Error::new))
            .with_context(|| format!("cannot write to {}", self.name))
    }
}

impl RecordSink for CsvSink {
    fn write(&mut self, rec: &Record) -> Result<()> {
        let row: Vec<String> = self.columns.iter().map(|c| csv_cell(rec, c)).collect();
        self.write_row(&row)?;
        self.summary.count(rec);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Summary> {
        self.out
            .flush()
            .with_context(|| format!("cannot write to {}", self.name))?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::SharedBuf;
    use super::super::{is_broken_pipe, open_sink, open_sink_with_stdout, Format};
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn opts(path: Option<&Path>, columns: &[&str], resume: bool) -> OutputOptions {
        OutputOptions {
            format: Format::Csv,
            path: path.map(Into::into),
            csv_columns: cols(columns),
            resume,
            ..OutputOptions::default()
        }
    }

    fn read_rows(bytes: &[u8]) -> Vec<Vec<String>> {
        ::csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes)
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect()
    }

    #[test]
    fn columns_values_and_missing_fields() {
        let buf = SharedBuf::default();
        let o = opts(
            None,
            &["file", "caption", "score", "labels", "ok", "error"],
            false,
        );
        let (mut sink, _) = open_sink_with_stdout(&o, Box::new(buf.clone())).unwrap();
        let rec = Record::new("日本, \"語\".jpg")
            .with_field("caption", "a dog,\nrunning")
            .with_field("score", 0.25)
            .with_field("labels", json!([{"label": "dog", "score": 0.9}]))
            .with_field("ok", true);
        sink.write(&rec).unwrap();
        // Flushed per record.
        assert_eq!(read_rows(&buf.contents()).len(), 2);
        sink.write(
            &Record::new("b.png")
                .with_field("caption", json!(null))
                .with_error("cannot decode"),
        )
        .unwrap();
        let summary = sink.finish().unwrap();
        assert_eq!((summary.written, summary.errors), (1, 1));
        assert_eq!(
            read_rows(&buf.contents()),
            [
                cols(&["file", "caption", "score", "labels", "ok", "error"]),
                cols(&[
                    "日本, \"語\".jpg",
                    "a dog,\nrunning",
                    "0.25",
                    r#"[{"label":"dog","score":0.9}]"#,
                    "true",
                    ""
                ]),
                cols(&["b.png", "", "", "", "", "cannot decode"]),
            ]
        );
    }

    #[test]
    fn resume_drops_errors_and_cut_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        fs::write(&path, "file,caption,error\na,x,\nb,,oom\nc,z,\nd,\"cu").unwrap();
        let o = opts(Some(&path), &["file", "caption", "error"], true);
        let (mut sink, state) = open_sink(&o).unwrap();
        for f in ["a", "b", "c", "d"] {
            if !state.done.contains(f) {
                sink.write(&Record::new(f).with_field("caption", "new"))
                    .unwrap();
            }
        }
        sink.finish().unwrap();
        let rows = read_rows(&fs::read(&path).unwrap());
        let files: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(files, ["file", "a", "c", "b", "d"]);
        assert_eq!(rows[3], cols(&["b", "new", ""]));
    }

    #[test]
    fn resume_into_new_file_writes_header_and_mismatch_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.csv");
        let (mut sink, _) = open_sink(&opts(Some(&path), &["file", "label"], true)).unwrap();
        sink.write(&Record::new("a").with_field("label", "cat"))
            .unwrap();
        sink.finish().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "file,label\na,cat\n");
        let err = open_sink(&opts(Some(&path), &["file", "caption"], true))
            .err()
            .unwrap();
        assert!(err.to_string().contains("o.csv"), "{err}");
        let err = open_sink(&opts(Some(&path), &["caption"], true))
            .err()
            .unwrap();
        assert!(err.to_string().contains("\"file\""), "{err}");
        let err = open_sink(&opts(Some(&path), &[], false)).err().unwrap();
        assert!(err.to_string().contains("at least one column"));
    }

    #[test]
    fn broken_pipe_through_csv() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let err = open_sink_with_stdout(&opts(None, &["file"], false), Box::new(Closed))
            .err()
            .unwrap();
        assert!(is_broken_pipe(&err), "{err:#}");
    }
}
