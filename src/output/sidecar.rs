//! Sidecar sink: writes each successful record's text next to its image (`img.jpg` → `img.txt`).

use std::fs;
use std::io;

use anyhow::{bail, Context, Result};

use super::{missing_text_field, sidecar_path, value_text, write_atomic};
use super::{Existing, OutputOptions, Record, RecordSink, ResumeState, Summary};

pub(crate) struct SidecarSink {
    text_field: String,
    ext: String,
    existing: Existing,
    summary: Summary,
}

pub(crate) fn open(opts: &OutputOptions) -> (Box<dyn RecordSink + Send>, ResumeState) {
    let ext = opts.sidecar_ext.trim_start_matches('.').to_string();
    let state = ResumeState {
        skip_existing_sidecars: (opts.existing == Existing::Skip).then(|| ext.clone()),
        ..ResumeState::default()
    };
    let sink = SidecarSink {
        text_field: opts.text_field.clone(),
        ext,
        existing: opts.existing,
        summary: Summary::default(),
    };
    (Box::new(sink), state)
}

/// `first, second`, leaving out a blank side.
fn join(first: &str, second: &str) -> String {
    match (first.trim().is_empty(), second.trim().is_empty()) {
        (true, _) => second.trim().to_string(),
        (_, true) => first.trim().to_string(),
        _ => format!("{}, {}", first.trim(), second.trim()),
    }
}

impl RecordSink for SidecarSink {
    fn write(&mut self, rec: &Record) -> Result<()> {
        if !rec.is_ok() {
            self.summary.count(rec);
            return Ok(());
        }
        let text = match rec.fields.get(&self.text_field).and_then(value_text) {
            Some(text) => text,
            None => return Err(missing_text_field(rec, &self.text_field)),
        };
        let image = rec.path.clone().unwrap_or_else(|| rec.file.clone().into());
        let path = sidecar_path(&image, &self.ext);
        if path == image {
            bail!(
                "sidecar for '{}' would overwrite the input itself",
                rec.file
            );
        }
        let existing = match fs::read(&path) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot read '{}'", path.display()))
                )
            }
        };
        let content = match (existing, self.existing) {
            (None, _) | (Some(_), Existing::Overwrite) => text,
            (Some(_), Existing::Skip) => {
                self.summary.skipped += 1;
                return Ok(());
            }
            (Some(old), Existing::Append) => join(&old, &text),
            (Some(old), Existing::Prefix) => join(&text, &old),
        };
        write_atomic(&path, content.as_bytes(), false)
            .with_context(|| format!("cannot write sidecar '{}'", path.display()))?;
        self.summary.count(rec);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Summary> {
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{open_sink, Format};
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn opts(existing: Existing, field: &str) -> OutputOptions {
        OutputOptions {
            format: Format::Txt,
            existing,
            text_field: field.into(),
            ..OutputOptions::default()
        }
    }

    fn run(existing: Existing, image: &Path, rec: Record) -> Summary {
        let (mut sink, _) = open_sink(&opts(existing, "caption")).unwrap();
        sink.write(&rec.with_path(image)).unwrap();
        sink.finish().unwrap()
    }

    #[test]
    fn existing_policies() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("ünï cödé.jpg");
        let side = dir.path().join("ünï cödé.txt");
        let rec = || Record::new("x").with_field("caption", "new");

        assert_eq!(run(Existing::Skip, &image, rec()).written, 1);
        assert_eq!(fs::read_to_string(&side).unwrap(), "new");

        fs::write(&side, "old\n").unwrap();
        let s = run(Existing::Skip, &image, rec());
        assert_eq!((s.written, s.skipped), (0, 1));
        assert_eq!(fs::read_to_string(&side).unwrap(), "old\n");

        run(Existing::Append, &image, rec());
        assert_eq!(fs::read_to_string(&side).unwrap(), "old, new");
        run(
            Existing::Prefix,
            &image,
            Record::new("x").with_field("caption", "first"),
        );
        assert_eq!(fs::read_to_string(&side).unwrap(), "first, old, new");
        run(Existing::Overwrite, &image, rec());
        assert_eq!(fs::read_to_string(&side).unwrap(), "new");

        fs::write(&side, " \n").unwrap();
        run(Existing::Append, &image, rec());
        assert_eq!(fs::read_to_string(&side).unwrap(), "new");
        assert!(!dir.path().join("ünï cödé.txt.tmp").exists());
    }

    #[test]
    fn label_lists_errors_and_extension() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.PNG");
        let o = OutputOptions {
            sidecar_ext: ".caption".into(),
            ..opts(Existing::Skip, "labels")
        };
        let (mut sink, state) = open_sink(&o).unwrap();
        let labels = json!([{"label": "cat", "score": 0.9}, {"label": "sofa", "score": 0.4}]);
        sink.write(
            &Record::new("a.PNG")
                .with_path(&image)
                .with_field("labels", labels),
        )
        .unwrap();
        let other = dir.path().join("b.png");
        sink.write(
            &Record::new("b.png")
                .with_path(&other)
                .with_error("cannot decode"),
        )
        .unwrap();
        let tags = dir.path().join("c.png");
        sink.write(
            &Record::new("c.png")
                .with_path(&tags)
                .with_field("labels", json!(["x", "y"])),
        )
        .unwrap();
        let s = sink.finish().unwrap();
        assert_eq!((s.written, s.errors, s.skipped), (2, 1, 0));
        assert_eq!(s.failures[0].error, "cannot decode");
        assert_eq!(
            fs::read_to_string(dir.path().join("a.caption")).unwrap(),
            "cat, sofa"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("c.caption")).unwrap(),
            "x, y"
        );
        assert!(!dir.path().join("b.caption").exists());
        // With the skip policy, the runner can skip images whose sidecar exists.
        assert!(state.is_done("a.PNG", &image));
        assert!(!state.is_done("b.png", &other));
    }

    #[test]
    fn misuse_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let o = OutputOptions {
            path: Some(dir.path().join("out.txt")),
            ..opts(Existing::Skip, "caption")
        };
        let err = open_sink(&o).err().unwrap();
        assert!(err.to_string().contains("sidecar"), "{err}");
        let o = OutputOptions {
            resume: true,
            ..opts(Existing::Skip, "caption")
        };
        assert!(open_sink(&o).is_err());

        let (mut sink, _) = open_sink(&opts(Existing::Overwrite, "caption")).unwrap();
        let image = dir.path().join("notes.txt");
        let err = sink
            .write(
                &Record::new("notes.txt")
                    .with_path(&image)
                    .with_field("caption", "x"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("overwrite the input"), "{err}");
        let err = sink
            .write(&Record::new("a.jpg").with_field("label", "x"))
            .unwrap_err();
        assert!(err.to_string().contains("no 'caption' field"), "{err}");
    }
}
