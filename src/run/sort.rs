//! `--sort-into DIR`: files each classified image into `DIR/<label>/` by copy, move or link. A
//! different file already holding the name is never overwritten (the newcomer becomes
//! `name-1.jpg`, `name-2.jpg`, …), and a source is only removed once its copy is complete.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use crate::output::{Record, RecordSink, Summary};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortMode {
    /// Copy the image (the default: the source folder is left as it was).
    #[default]
    Copy,
    /// Move it (a rename on the same file system, else copy, sync, then remove the source).
    Move,
    /// A symbolic link to the original's absolute path (a hard link on Windows).
    Link,
}

impl fmt::Display for SortMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SortMode::Copy => "copy",
            SortMode::Move => "move",
            SortMode::Link => "link",
        })
    }
}

/// Where and how to sort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortInto {
    pub dir: PathBuf,
    pub mode: SortMode,
}

/// A label as one safe directory name: path separators, NUL, control and Windows-reserved
/// characters become `_`; an empty, `.` or `..` name becomes `_`.
pub fn dir_name(label: &str) -> String {
    let cleaned: String = label
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_end_matches('.').trim();
    if trimmed.is_empty() || trimmed == "." || trimmed == ".." {
        "_".into()
    } else {
        trimmed.to_string()
    }
}

/// Puts `src` into `DIR/<label>/` and returns where it now is. Running it again for the same
/// image finds it already there (same file, a link to it, or for copy/move an identical copy)
/// and does nothing more, so an interrupted run can be resumed.
pub fn place(src: &Path, sort: &SortInto, label: &str) -> io::Result<PathBuf> {
    let folder = sort.dir.join(dir_name(label));
    fs::create_dir_all(&folder)?;
    let name = src
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let stem = Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = Path::new(name)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let src_real = fs::canonicalize(src)?;
    for n in 0u32.. {
        let candidate = if n == 0 {
            folder.join(name)
        } else {
            folder.join(format!("{stem}-{n}{ext}"))
        };
        match fs::symlink_metadata(&candidate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                transfer(src, &src_real, &candidate, sort.mode)?;
                return Ok(candidate);
            }
            Err(e) => return Err(e),
            Ok(meta) => {
                if already_there(&src_real, &candidate, &meta, sort.mode)? {
                    if sort.mode == SortMode::Move && fs::canonicalize(&candidate)? != src_real {
                        // An identical copy is in place (e.g. a move cut short): finish the move.
                        fs::remove_file(src)?;
                    }
                    return Ok(candidate);
                }
            }
        }
    }
    unreachable!("u32 names run out")
}

/// Whether `candidate` already is (or, for copy/move, holds exactly) the image.
fn already_there(
    src_real: &Path,
    candidate: &Path,
    meta: &fs::Metadata,
    mode: SortMode,
) -> io::Result<bool> {
    if fs::canonicalize(candidate).is_ok_and(|c| c == src_real) {
        return Ok(true);
    }
    if mode == SortMode::Link || !meta.is_file() {
        return Ok(false);
    }
    let src_meta = fs::metadata(src_real)?;
    if src_meta.len() != meta.len() {
        return Ok(false);
    }
    Ok(fs::read(src_real)? == fs::read(candidate)?)
}

fn transfer(src: &Path, src_real: &Path, dest: &Path, mode: SortMode) -> io::Result<()> {
    match mode {
        SortMode::Copy => copy_complete(src, dest),
        SortMode::Move => match fs::rename(src, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                copy_complete(src, dest)?;
                fs::remove_file(src)
            }
            Err(e) => Err(e),
        },
        SortMode::Link => link(src_real, dest),
    }
}

/// Copies through a temporary name in the destination folder, synced, then renamed into place:
/// `dest` never holds a partial image.
fn copy_complete(src: &Path, dest: &Path) -> io::Result<()> {
    let mut tmp_name = dest.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".glance-tmp");
    let tmp = dest.with_file_name(tmp_name);
    let result = (|| {
        fs::copy(src, &tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn link(src_real: &Path, dest: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(src_real, dest)
}

#[cfg(not(unix))]
fn link(src_real: &Path, dest: &Path) -> io::Result<()> {
    fs::hard_link(src_real, dest)
}

/// A sink that sorts each successful record's image by its `label` field (adding `sorted_to`)
/// before handing the record on. A failure to sort turns the record into an error record (the
/// image stays where it was), so a resumed run tries it again.
pub struct SortingSink {
    inner: Box<dyn RecordSink + Send>,
    sort: SortInto,
}

impl SortingSink {
    pub fn new(inner: Box<dyn RecordSink + Send>, sort: SortInto) -> Self {
        Self { inner, sort }
    }
}

impl RecordSink for SortingSink {
    fn write(&mut self, rec: &Record) -> Result<()> {
        let label = match rec.fields.get("label") {
            Some(Value::String(label)) if rec.is_ok() => label.clone(),
            _ => return self.inner.write(rec),
        };
        let src = rec.path.clone().unwrap_or_else(|| PathBuf::from(&rec.file));
        let mut rec = rec.clone();
        match place(&src, &self.sort, &label) {
            Ok(dest) => {
                rec.fields
                    .insert("sorted_to".into(), dest.display().to_string().into());
            }
            Err(e) => {
                rec.error = Some(format!(
                    "classified as '{label}' but could not {} it into '{}': {e}",
                    self.sort.mode,
                    self.sort.dir.display()
                ));
            }
        }
        self.inner.write(&rec)
    }

    fn finish(self: Box<Self>) -> Result<Summary> {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let src_dir = dir.path().join("in");
        fs::create_dir(&src_dir).unwrap();
        let img = src_dir.join("a.jpg");
        fs::write(&img, b"image bytes").unwrap();
        let out = dir.path().join("sorted");
        (dir, img, out)
    }

    #[test]
    fn label_directory_names_are_safe() {
        assert_eq!(dir_name("cat"), "cat");
        assert_eq!(dir_name("sea lion"), "sea lion");
        assert_eq!(dir_name("a/b\\c"), "a_b_c");
        assert_eq!(dir_name(".."), "_");
        assert_eq!(dir_name("  "), "_");
        assert_eq!(dir_name("what?"), "what_");
        assert_eq!(dir_name("etc."), "etc");
    }

    #[test]
    fn copy_keeps_the_source_and_is_idempotent() {
        let (_d, img, out) = setup();
        let sort = SortInto {
            dir: out.clone(),
            mode: SortMode::Copy,
        };
        let dest = place(&img, &sort, "cat").unwrap();
        assert_eq!(dest, out.join("cat/a.jpg"));
        assert_eq!(fs::read(&dest).unwrap(), b"image bytes");
        assert!(img.exists());
        assert_eq!(place(&img, &sort, "cat").unwrap(), dest);
        assert_eq!(fs::read_dir(out.join("cat")).unwrap().count(), 1);
    }

    #[test]
    fn a_different_file_with_the_same_name_is_never_overwritten() {
        let (_d, img, out) = setup();
        fs::create_dir_all(out.join("cat")).unwrap();
        fs::write(out.join("cat/a.jpg"), b"someone else").unwrap();
        fs::write(out.join("cat/a-1.jpg"), b"another").unwrap();
        for mode in [SortMode::Copy, SortMode::Link, SortMode::Move] {
            let sort = SortInto {
                dir: out.clone(),
                mode,
            };
            let dest = place(&img, &sort, "cat").unwrap();
            assert_eq!(dest, out.join("cat/a-2.jpg"), "{mode}");
            assert_eq!(fs::read(out.join("cat/a.jpg")).unwrap(), b"someone else");
            assert_eq!(fs::read(out.join("cat/a-1.jpg")).unwrap(), b"another");
            assert_eq!(fs::read(&dest).unwrap(), b"image bytes");
            if mode != SortMode::Move {
                fs::remove_file(&dest).unwrap();
            }
        }
        assert!(!img.exists());
    }

    #[test]
    fn move_and_link() {
        let (_d, img, out) = setup();
        let link = SortInto {
            dir: out.clone(),
            mode: SortMode::Link,
        };
        let dest = place(&img, &link, "dog").unwrap();
        assert!(fs::symlink_metadata(&dest)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&dest).unwrap(), b"image bytes");
        assert_eq!(
            place(&img, &link, "dog").unwrap(),
            dest,
            "a link to it counts"
        );
        let mv = SortInto {
            dir: out.clone(),
            mode: SortMode::Move,
        };
        let dest = place(&img, &mv, "cat").unwrap();
        assert!(!img.exists());
        assert_eq!(fs::read(&dest).unwrap(), b"image bytes");
        // Sorting the sorted file into the folder it is in does nothing.
        assert_eq!(place(&dest, &mv, "cat").unwrap(), dest);
        assert!(dest.exists());
    }

    #[test]
    fn a_failed_sort_becomes_an_error_record_and_keeps_the_image() {
        let (d, img, _) = setup();
        let blocker = d.path().join("blocked");
        fs::write(&blocker, b"a file where the folder should be").unwrap();
        let collected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Collect(std::sync::Arc<std::sync::Mutex<Vec<Record>>>);
        impl RecordSink for Collect {
            fn write(&mut self, rec: &Record) -> Result<()> {
                self.0.lock().unwrap().push(rec.clone());
                Ok(())
            }
            fn finish(self: Box<Self>) -> Result<Summary> {
                Ok(Summary::default())
            }
        }
        let mut sink = SortingSink::new(
            Box::new(Collect(collected.clone())),
            SortInto {
                dir: blocker,
                mode: SortMode::Move,
            },
        );
        let rec = Record::new("a.jpg")
            .with_path(img.clone())
            .with_field("label", "cat");
        sink.write(&rec).unwrap();
        let out = collected.lock().unwrap();
        let err = out[0].error.as_deref().unwrap();
        assert!(
            err.contains("classified as 'cat' but could not move"),
            "{err}"
        );
        assert!(img.exists());
    }
}
