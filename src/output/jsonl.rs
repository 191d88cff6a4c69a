//! JSONL sink: one record per line, flushed as it arrives; also the line writer behind the JSON/COCO journal.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::resume::{resume_jsonl, Kept};
use super::{
    read_if_exists, write_atomic, OutputOptions, Record, RecordSink, ResumeState, Summary,
};

/// Writes records as JSON lines to `out`, one `write_all` and flush per record.
pub(crate) struct LineWriter {
    out: Box<dyn Write + Send>,
    /// "standard output" or the quoted path, for error messages.
    name: String,
}

impl LineWriter {
    pub(crate) fn new(out: Box<dyn Write + Send>, name: String) -> Self {
        LineWriter { out, name }
    }

    pub(crate) fn write(&mut self, rec: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(&rec.to_json()).context("cannot serialize record")?;
        line.push(b'\n');
        self.out
            .write_all(&line)
            .and_then(|()| self.out.flush())
            .with_context(|| format!("cannot write to {}", self.name))
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write to {}", self.name))
    }
}

/// Opens `path` for JSON lines: appending to it, or truncating it.
pub(crate) fn lines_file(path: &Path, append: bool) -> Result<LineWriter> {
    let file = if append {
        OpenOptions::new().create(true).append(true).open(path)
    } else {
        fs::File::create(path)
    }
    .with_context(|| format!("cannot open output file '{}'", path.display()))?;
    Ok(LineWriter::new(
        Box::new(file),
        format!("'{}'", path.display()),
    ))
}

/// Repairs the JSON lines at `path` for resuming (see [`resume_jsonl`]), rewriting the file if needed, and
/// returns what was kept. A missing file keeps nothing.
pub(crate) fn repair_lines_file(path: &Path) -> Result<Kept> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(Kept::default());
    };
    let kept = resume_jsonl(&bytes, path)?;
    if kept.changed {
        write_atomic(path, &kept.content, true)
            .with_context(|| format!("cannot rewrite '{}' for resuming", path.display()))?;
    }
    Ok(kept)
}

pub(crate) struct JsonlSink {
    out: LineWriter,
    summary: Summary,
}

pub(crate) fn open(
    opts: &OutputOptions,
    stdout: Box<dyn Write + Send>,
) -> Result<(Box<dyn RecordSink + Send>, ResumeState)> {
    let (out, kept) = match &opts.path {
        Some(path) => {
            let kept = if opts.resume {
                repair_lines_file(path)?
            } else {
                Kept::default()
            };
            (lines_file(path, opts.resume)?, kept)
        }
        None => (
            LineWriter::new(stdout, "standard output".into()),
            Kept::default(),
        ),
    };
    let state = ResumeState {
        done: kept.records.into_iter().map(|r| r.file).collect(),
        ..ResumeState::default()
    };
    Ok((
        Box::new(JsonlSink {
            out,
            summary: Summary::default(),
        }),
        state,
    ))
}

impl RecordSink for JsonlSink {
    fn write(&mut self, rec: &Record) -> Result<()> {
        self.out.write(rec)?;
        self.summary.count(rec);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Summary> {
        self.out.flush()?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::SharedBuf;
    use super::super::{is_broken_pipe, open_sink, open_sink_with_stdout, Format};
    use super::*;
    use serde_json::{json, Value};
    use std::io;

    fn lines(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn opts(path: &Path, resume: bool) -> OutputOptions {
        OutputOptions {
            format: Format::Jsonl,
            path: Some(path.into()),
            resume,
            ..OutputOptions::default()
        }
    }

    #[test]
    fn writes_lines_to_stdout_in_field_order() {
        let buf = SharedBuf::default();
        let o = OutputOptions::default();
        let (mut sink, state) = open_sink_with_stdout(&o, Box::new(buf.clone())).unwrap();
        assert!(state.done.is_empty());
        let ok = Record::new("ümlaut 画像.jpg")
            .with_field("caption", "a cat")
            .with_field("width", 640);
        sink.write(&ok).unwrap();
        // Flushed per record: visible before finish.
        assert_eq!(buf.contents().iter().filter(|&&b| b == b'\n').count(), 1);
        sink.write(&Record::new("b.png").with_error("cannot decode"))
            .unwrap();
        let summary = sink.finish().unwrap();
        assert_eq!(
            (summary.written, summary.errors, summary.skipped),
            (1, 1, 0)
        );
        assert_eq!(summary.failures[0].file, "b.png");
        let text = String::from_utf8(buf.contents()).unwrap();
        assert!(text
            .starts_with("{\"file\":\"ümlaut 画像.jpg\",\"caption\":\"a cat\",\"width\":640}\n"));
        assert_eq!(
            lines(&text),
            [
                json!({"file": "ümlaut 画像.jpg", "caption": "a cat", "width": 640}),
                json!({"file": "b.png", "error": "cannot decode"})
            ]
        );
    }

    #[test]
    fn truncates_without_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        fs::write(&path, "{\"file\":\"old\"}\n").unwrap();
        let (mut sink, state) = open_sink(&opts(&path, false)).unwrap();
        assert!(state.done.is_empty());
        sink.write(&Record::new("new")).unwrap();
        sink.finish().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"file\":\"new\"}\n");
    }

    #[test]
    fn resume_yields_each_input_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        fs::write(
            &path,
            "{\"file\":\"a\",\"caption\":\"x\"}\n{\"file\":\"b\",\"error\":\"oom\"}\n{\"file\":\"c\",\"caption\":\"z\"}\n{\"file\":\"d\",\"cap",
        )
        .unwrap();
        let (mut sink, state) = open_sink(&opts(&path, true)).unwrap();
        let mut done: Vec<_> = state.done.iter().cloned().collect();
        done.sort();
        assert_eq!(done, ["a", "c"]);
        for f in ["a", "b", "c", "d"] {
            if !state.is_done(f, Path::new(f)) {
                sink.write(&Record::new(f).with_field("caption", "new"))
                    .unwrap();
            }
        }
        assert_eq!(sink.finish().unwrap().written, 2);
        let files: Vec<String> = lines(&fs::read_to_string(&path).unwrap())
            .iter()
            .map(|v| v["file"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(files, ["a", "c", "b", "d"]);
    }

    #[test]
    fn resume_of_missing_file_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let (sink, state) = open_sink(&opts(&path, true)).unwrap();
        assert!(state.done.is_empty());
        sink.finish().unwrap();
        assert!(path.exists());
    }

    #[test]
    fn broken_pipe_is_detected() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut sink, _) =
            open_sink_with_stdout(&OutputOptions::default(), Box::new(Closed)).unwrap();
        let err = sink.write(&Record::new("a")).unwrap_err();
        assert!(is_broken_pipe(&err), "{err:#}");
        assert!(err.to_string().contains("standard output"));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn unwritable_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/o.jsonl");
        let err = open_sink(&opts(&path, false)).err().unwrap();
        assert!(err.to_string().contains("o.jsonl"), "{err}");
    }
}
