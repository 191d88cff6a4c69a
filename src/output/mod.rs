//! Result records and the sinks that store them: JSONL, CSV, JSON, COCO captions and `.txt` sidecars.
//!
//! # API
//! ```text
//! pub struct Record { file: String, path: Option<PathBuf>, fields: Map<String, Value>, error: Option<String> }
//! pub enum Format { Jsonl, Json, Csv, Coco, Txt }        // FromStr, Display, Format::from_path(&Path)
//! pub enum Existing { Skip, Overwrite, Append, Prefix }  // FromStr, Display; txt sidecars only
//! pub struct OutputOptions { format, path, csv_columns, text_field, sidecar_ext, existing, resume }  // Default
//! pub trait RecordSink { fn write(&mut self, &Record) -> Result<()>; fn finish(self: Box<Self>) -> Result<Summary>; }
//! pub fn open_sink(&OutputOptions) -> Result<(Box<dyn RecordSink + Send>, ResumeState)>          // stdout when no path
//! pub fn open_sink_with_stdout(&OutputOptions, Box<dyn Write + Send>) -> Result<(..)>  // same, stdout replaced
//! pub struct ResumeState { pub done: HashSet<String> }  // + is_done(file, image_path): the runner skips those
//! pub struct Summary { written, errors, skipped, failures: Vec<Failure> }
//! pub fn is_broken_pipe(&anyhow::Error) -> bool
//! pub fn sidecar_path(image: &Path, ext: &str) -> PathBuf; pub fn journal_path(output: &Path) -> PathBuf
//! pub fn value_text(&Value) -> Option<String>; pub fn csv_cell(&Record, column: &str) -> String
//! ```
//!
//! # Formats
//! - **JSONL**: one object per line, `{"file": .., <fields..>, "error": ..}` (`"error"` only on failure),
//!   written and flushed per record, to stdout too.
//! - **CSV**: a header row of `csv_columns`, then one row per record, flushed per record. Columns `file` and
//!   `error` come from the record, others from its fields: strings as-is, numbers and booleans as JSON prints
//!   them, arrays and objects as JSON text, missing or null as empty.
//! - **JSON**: a pretty-printed array of the JSONL objects, written at finish.
//! - **COCO captions**: `{"info", "images": [{id, file_name, width, height}], "annotations": [{id, image_id,
//!   caption}], "errors": [{file_name, error}]}`; ids from 1 in record order; width/height from the fields of
//!   those names (left out when missing); the caption text from `text_field` (an array of strings gives one
//!   annotation each). Written at finish.
//! - **Label Studio**: a JSON array of tasks `{"data": {"image", "file"}, "predictions": [{"model_version",
//!   "score", "result"}]}` with labels as a `choices` result and a caption as a `textarea` result (see
//!   `label_studio.rs`); failed records are left out. Written at finish, journaled like JSON.
//! - **YOLO** (detections): a directory of `<name>.txt` label files, `classes.txt`, `data.yaml` and
//!   `records.jsonl` (see `yolo.rs`), written at finish, journaled like JSON.
//! - **TXT sidecars**: for each successful record, the text of `text_field` is written to the image's path with
//!   its extension replaced by `sidecar_ext` (`/a/b/img.jpg` → `/a/b/img.txt`), atomically (tmp + rename),
//!   without a trailing newline, following [`Existing`] when the file exists. Error records write nothing and
//!   are returned in [`Summary::failures`]. There is no single output file, so `path` must be `None`.
//!
//! Every sink counts and lists failed records in its [`Summary`]. A successful record lacking `text_field`
//! is an error for the sidecar and COCO sinks (that is a misconfiguration: nothing useful would be written).
//!
//! # Crash safety and resume
//! JSON, COCO and Label Studio are whole documents: each record is also appended and flushed to a journal
//! `<FILE>.partial.jsonl` as it arrives; at finish the document goes to `<FILE>.tmp`, is synced and renamed
//! over `<FILE>`, and the journal is deleted. With stdout there is no journal.
//!
//! Without `resume`, an existing JSONL/CSV output is truncated at open; an existing JSON/COCO document is
//! replaced at finish. With `resume` (needs `path`), records already stored **without an error** are kept and
//! their `file` values returned in [`ResumeState::done`]; the runner must skip those inputs. Failed records are
//! dropped from the file (rewritten through tmp + rename), so the retried inputs appear exactly once:
//! - JSONL (and the journal): a last line that is not valid JSON, e.g. cut by a killed run, is dropped; an
//!   invalid line elsewhere is an error (the file is not ours or is damaged).
//! - CSV: the header must equal `csv_columns`, which must contain `file`; a cut last row is dropped; rows with
//!   a non-empty `error` column are dropped (without an `error` column every row counts as done).
//! - JSON/COCO: successful records of the finished document (if any) and of the journal are kept and written
//!   again into the final document, before the new ones.

mod coco;
mod csv;
mod json;
mod jsonl;
mod label_studio;
mod read;
mod record;
mod resume;
mod sidecar;
mod yolo;

pub use json::journal_path;
pub use label_studio::LabelStudioOptions;
pub use read::{read_records, Part};
pub use record::{csv_cell, detection_box, number, value_text, Record, UNKNOWN};

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};

/// A bad `--format` / `--existing` value, or an output path whose format cannot be inferred.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Json,
    Csv,
    Coco,
    Txt,
    LabelStudio,
    /// Detection boxes as a YOLO label directory (`--format yolo -o DIR`).
    Yolo,
}

const FORMAT_NAMES: &str = "jsonl, json, csv, coco, txt, labelstudio, yolo";

impl Format {
    /// Infers the format from an output path's extension: `.jsonl`/`.ndjson`, `.json`, `.csv`, `.txt`.
    /// COCO is never inferred (it is JSON too): ask for it explicitly.
    pub fn from_path(path: &Path) -> Result<Format, OptionError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "txt" => Ok(Format::Txt),
            _ => Err(OptionError(format!(
                "cannot tell the output format of '{}' from its extension; choose one of {FORMAT_NAMES}",
                path.display()
            ))),
        }
    }
}

impl FromStr for Format {
    type Err = OptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "coco" => Ok(Format::Coco),
            "txt" | "sidecar" => Ok(Format::Txt),
            "labelstudio" | "label-studio" | "ls" => Ok(Format::LabelStudio),
            "yolo" => Ok(Format::Yolo),
            _ => Err(OptionError(format!(
                "unknown output format '{s}'; choose one of {FORMAT_NAMES}"
            ))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jsonl => "jsonl",
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Coco => "coco",
            Format::Txt => "txt",
            Format::LabelStudio => "labelstudio",
            Format::Yolo => "yolo",
        })
    }
}

/// What to do with a sidecar file that already exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Existing {
    /// Leave it alone (counted in [`Summary::skipped`]).
    #[default]
    Skip,
    Overwrite,
    /// `existing + ", " + new` (just `new` when the existing text is blank).
    Append,
    /// `new + ", " + existing` (just `new` when the existing text is blank).
    Prefix,
}

impl FromStr for Existing {
    type Err = OptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "skip" => Ok(Existing::Skip),
            "overwrite" => Ok(Existing::Overwrite),
            "append" => Ok(Existing::Append),
            "prefix" => Ok(Existing::Prefix),
            _ => Err(OptionError(format!(
                "unknown policy for existing files '{s}'; choose one of skip, overwrite, append, prefix"
            ))),
        }
    }
}

impl fmt::Display for Existing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Existing::Skip => "skip",
            Existing::Overwrite => "overwrite",
            Existing::Append => "append",
            Existing::Prefix => "prefix",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputOptions {
    pub format: Format,
    /// `None` = standard output (not allowed with `Txt`).
    pub path: Option<PathBuf>,
    /// CSV columns, e.g. `["file", "caption", "error"]`.
    pub csv_columns: Vec<String>,
    /// The field a sidecar (or a COCO caption) holds, e.g. "caption" or "labels".
    pub text_field: String,
    /// Sidecar extension without the dot, "txt" by default.
    pub sidecar_ext: String,
    pub existing: Existing,
    pub resume: bool,
    /// Control names for `Format::LabelStudio`.
    pub label_studio: LabelStudioOptions,
    /// `Format::Coco`: each `file_name` is relative to this directory; `None`, to the
    /// directory the successful records' files share.
    pub coco_root: Option<PathBuf>,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            format: Format::Jsonl,
            path: None,
            csv_columns: vec!["file".into(), "caption".into(), "error".into()],
            text_field: "caption".into(),
            sidecar_ext: "txt".into(),
            existing: Existing::Skip,
            resume: false,
            label_studio: LabelStudioOptions::default(),
            coco_root: None,
        }
    }
}

/// A record that failed (its `error`), as reported by [`Summary::failures`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub file: String,
    pub error: String,
}

/// What a sink did during this run (records kept from a previous run are not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Successful records stored.
    pub written: usize,
    /// Records with an error (stored too, except by the sidecar sink).
    pub errors: usize,
    /// Sidecars left alone because they existed (`Existing::Skip`).
    pub skipped: usize,
    /// The failed records, in order.
    pub failures: Vec<Failure>,
}

impl Summary {
    pub(crate) fn count(&mut self, rec: &Record) {
        match &rec.error {
            None => self.written += 1,
            Some(e) => {
                self.errors += 1;
                self.failures.push(Failure {
                    file: rec.file.clone(),
                    error: e.clone(),
                });
            }
        }
    }
}

pub trait RecordSink {
    /// Stores one record. An error here should stop the run (see [`is_broken_pipe`] for a closed stdout).
    fn write(&mut self, rec: &Record) -> Result<()>;
    /// Completes the output (whole documents are written here) and reports what was done.
    fn finish(self: Box<Self>) -> Result<Summary>;
}

/// What a previous run already did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumeState {
    /// `file` values of records already stored without error: the runner skips them.
    pub done: HashSet<String>,
    /// For txt sidecars with `Existing::Skip`: the sidecar extension, whose existing files mean "done".
    skip_existing_sidecars: Option<String>,
}

impl ResumeState {
    /// Whether the input can be skipped: its `file` is in `done`, or (txt sidecars with `Existing::Skip`) its
    /// sidecar already exists. Inputs skipped here are not counted by the sink.
    pub fn is_done(&self, file: &str, image_path: &Path) -> bool {
        self.done.contains(file)
            || self.skip_existing_sidecars.as_deref().is_some_and(|ext| {
                let sidecar = sidecar_path(image_path, ext);
                sidecar != image_path && sidecar.exists()
            })
    }
}

/// Opens the sink described by `opts`, writing to standard output when `opts.path` is `None`.
pub fn open_sink(opts: &OutputOptions) -> Result<(Box<dyn RecordSink + Send>, ResumeState)> {
    open_sink_with_stdout(opts, Box::new(io::stdout()))
}

/// Like [`open_sink`], with `stdout` used in place of standard output.
pub fn open_sink_with_stdout(
    opts: &OutputOptions,
    stdout: Box<dyn Write + Send>,
) -> Result<(Box<dyn RecordSink + Send>, ResumeState)> {
    if opts.format == Format::Txt {
        if let Some(path) = &opts.path {
            bail!(
                "txt format writes sidecar files next to the images; it takes no output file (got '{}')",
                path.display()
            );
        }
        if opts.resume {
            bail!("resume needs an output file; txt sidecars are skipped when they exist with the skip policy");
        }
        return Ok(sidecar::open(opts));
    }
    if opts.resume && opts.path.is_none() {
        bail!("resume needs an output file, not standard output");
    }
    if opts.format == Format::Yolo && opts.path.is_none() {
        bail!("yolo writes a directory of label files: give it with -o DIR");
    }
    match opts.format {
        Format::Jsonl => jsonl::open(opts, stdout),
        Format::Csv => csv::open(opts, stdout),
        Format::Json | Format::Coco | Format::LabelStudio | Format::Yolo => {
            json::open(opts, stdout)
        }
        Format::Txt => Ok(sidecar::open(opts)),
    }
}

/// Whether `err` comes from writing to a closed pipe (e.g. `glance ... | head`): the caller should then stop
/// quietly.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(io_err) = cause.downcast_ref::<io::Error>() {
            return io_err.kind() == io::ErrorKind::BrokenPipe;
        }
        if let Some(csv_err) = cause.downcast_ref::<::csv::Error>() {
            return matches!(csv_err.kind(), ::csv::ErrorKind::Io(e) if e.kind() == io::ErrorKind::BrokenPipe);
        }
        false
    })
}

/// The sidecar of `image`: same path, extension replaced by `ext`.
pub fn sidecar_path(image: &Path, ext: &str) -> PathBuf {
    image.with_extension(ext)
}

/// The error for a successful record that lacks the field a sidecar or caption needs.
pub(crate) fn missing_text_field(rec: &Record, field: &str) -> anyhow::Error {
    let available: Vec<&str> = rec.fields.keys().map(String::as_str).collect();
    anyhow::anyhow!(
        "record for '{}' has no '{}' field to write (it has: {})",
        rec.file,
        field,
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        }
    )
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `bytes` to `<path>.tmp`, optionally syncs it, then renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads `path`, `None` when it does not exist.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read '{}'", path.display()))),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::io::{self, Write};
    use std::sync::{Arc, Mutex};

    /// A cloneable in-memory stand-in for standard output.
    #[derive(Clone, Default)]
    pub(crate) struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl SharedBuf {
        pub(crate) fn contents(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_parsing_and_inference() {
        assert_eq!("JSONL".parse::<Format>().unwrap(), Format::Jsonl);
        assert_eq!("coco".parse::<Format>().unwrap(), Format::Coco);
        assert_eq!("sidecar".parse::<Format>().unwrap(), Format::Txt);
        let err = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("jsonl, json, csv, coco, txt"), "{err}");
        for (name, format) in [
            ("o.jsonl", Format::Jsonl),
            ("o.NDJSON", Format::Jsonl),
            ("dir/o.json", Format::Json),
            ("o.csv", Format::Csv),
            ("o.txt", Format::Txt),
        ] {
            assert_eq!(
                Format::from_path(Path::new(name)).unwrap(),
                format,
                "{name}"
            );
            assert_eq!(format.to_string().parse::<Format>().unwrap(), format);
        }
        let err = Format::from_path(Path::new("out.xml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'out.xml'") && err.contains("coco"), "{err}");
        assert!(Format::from_path(Path::new("out")).is_err());
        assert_eq!("Prefix".parse::<Existing>().unwrap(), Existing::Prefix);
        assert!("merge"
            .parse::<Existing>()
            .unwrap_err()
            .to_string()
            .contains("skip, overwrite"));
    }

    #[test]
    fn resume_needs_a_file() {
        let opts = OutputOptions {
            resume: true,
            ..OutputOptions::default()
        };
        let err = open_sink_with_stdout(&opts, Box::new(io::sink()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("resume needs an output file"));
    }

    #[test]
    fn broken_pipe_helper() {
        let err =
            anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("cannot write");
        assert!(is_broken_pipe(&err));
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!is_broken_pipe(&err));
    }
}
