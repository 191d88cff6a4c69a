//! Input discovery: turns command-line arguments into an ordered, deduplicated, optionally sharded list of images.
//!
//! Rules:
//! - A file argument is taken as-is, whatever its extension (the user named it; a file that is not an image
//!   fails later, at decoding, with an error record).
//! - A directory argument is walked recursively (following symbolic links, hidden entries included), keeping
//!   regular files whose extension is one of [`IMAGE_EXTENSIONS`] (case-insensitive). Its files are sorted by
//!   the bytes of their path.
//! - `-` reads newline-separated paths from standard input (empty lines skipped, a trailing `\r` trimmed);
//!   each is handled like an argument (a directory is walked).
//! - A path that does not exist (or cannot be read) becomes an [`InputError`]; the run goes on.
//! - Overall order: argument order, each directory's files sorted. A path met again (after making it absolute
//!   and dropping `.` components, without resolving symbolic links) is dropped: the first one is kept.
//! - Sharding `K/N` keeps the inputs at 0-based positions `i` (after deduplication) with `i % N == K - 1`.
//!   Errors are not sharded: they are all reported by shard 1 only, so that a set of N shards reports each
//!   error exactly once.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, BufRead};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use walkdir::WalkDir;

/// Extensions (lowercase, without the dot) kept when walking a directory.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "tga", "pnm", "ppm", "pgm", "pbm",
    "qoi", "ico", "avif", "hdr", "exr", "jfif",
];

/// What to process: the command-line arguments and an optional shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputSpec {
    pub args: Vec<String>,
    pub shard: Option<Shard>,
}

/// One shard of a run split over several processes: `index` is 1-based (`1..=count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// A malformed `--shard` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard {0:?}: shard must look like K/N with 1 <= K <= N")]
pub struct ShardParseError(pub String);

impl Shard {
    /// Whether the input at 0-based `position` belongs to this shard.
    pub fn keeps(&self, position: usize) -> bool {
        self.count > 0 && position % self.count == self.index.wrapping_sub(1)
    }
}

impl FromStr for Shard {
    type Err = ShardParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ShardParseError(s.to_string());
        let (k, n) = s.trim().split_once('/').ok_or_else(err)?;
        let index: usize = k.trim().parse().map_err(|_| err())?;
        let count: usize = n.trim().parse().map_err(|_| err())?;
        if index == 0 || count == 0 || index > count {
            return Err(err());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A file to process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The path as the user gave it, or as walked from the given directory (directory joined with the
    /// relative path). Lossy for non-UTF-8 paths; this is the `file` of the output record.
    pub display: String,
    /// The path on disk.
    pub path: PathBuf,
}

/// An argument that could not be used (it becomes an error record; the run goes on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    pub display: String,
    pub message: String,
}

/// Expands `spec.args` into the inputs to process and the errors to report (see the module docs).
/// `stdin` is read only if an argument is `-`. Fails only if standard input cannot be read.
pub fn collect_inputs(
    spec: &InputSpec,
    mut stdin: impl BufRead,
) -> Result<(Vec<Input>, Vec<InputError>)> {
    let mut found = Found::default();
    for arg in &spec.args {
        if arg == "-" {
            for line in read_path_lines(&mut stdin)? {
                found.add_arg(line.0, line.1);
            }
        } else {
            found.add_arg(arg.clone(), PathBuf::from(arg));
        }
    }
    let Found { inputs, errors, .. } = found;
    match spec.shard {
        None => Ok((inputs, errors)),
        Some(shard) => {
            let kept = inputs
                .into_iter()
                .enumerate()
                .filter(|(i, _)| shard.keeps(*i))
                .map(|(_, input)| input);
            let errors = if shard.index == 1 { errors } else { Vec::new() };
            Ok((kept.collect(), errors))
        }
    }
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(e))
    })
}

#[derive(Default)]
struct Found {
    inputs: Vec<Input>,
    errors: Vec<InputError>,
    seen: HashSet<PathBuf>,
    seen_errors: HashSet<String>,
    cwd: Option<PathBuf>,
}

impl Found {
    fn add_arg(&mut self, display: String, path: PathBuf) {
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => self.walk(&path),
            Ok(_) => self.push(display, path),
            Err(e) => {
                let message = describe_access_error(&path, &e);
                self.push_error(display, message);
            }
        }
    }

    fn walk(&mut self, root: &Path) {
        let mut files = Vec::new();
        for entry in WalkDir::new(root).follow_links(true) {
            match entry {
                Ok(entry) => {
                    if entry.file_type().is_file() && has_image_extension(entry.path()) {
                        files.push(entry.into_path());
                    }
                }
                Err(err) => {
                    let path = err.path().unwrap_or(root).to_path_buf();
                    let message = if let Some(ancestor) = err.loop_ancestor() {
                        format!("filesystem loop: links back to {}", ancestor.display())
                    } else if let Some(io_err) = err.io_error() {
                        if io_err.kind() == io::ErrorKind::NotFound && !has_image_extension(&path) {
                            // A dangling link that would not have been kept anyway.
                            continue;
                        }
                        describe_access_error(&path, io_err)
                    } else {
                        err.to_string()
                    };
                    self.push_error(path.to_string_lossy().into_owned(), message);
                }
            }
        }
        files.sort_by(|a, b| {
            a.as_os_str()
                .as_encoded_bytes()
                .cmp(b.as_os_str().as_encoded_bytes())
        });
        for path in files {
            self.push(path.to_string_lossy().into_owned(), path);
        }
    }

    fn push(&mut self, display: String, path: PathBuf) {
        let key = self.dedup_key(&path);
        if self.seen.insert(key) {
            self.inputs.push(Input { display, path });
        }
    }

    fn push_error(&mut self, display: String, message: String) {
        if self.seen_errors.insert(display.clone()) {
            self.errors.push(InputError { display, message });
        }
    }

    /// Absolute, without `.` components; `..` and symbolic links are left alone.
    fn dedup_key(&mut self, path: &Path) -> PathBuf {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            if self.cwd.is_none() {
                self.cwd = Some(std::env::current_dir().unwrap_or_default());
            }
            self.cwd.as_deref().unwrap_or(Path::new("")).join(path)
        };
        absolute
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    }
}

fn describe_access_error(path: &Path, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound if fs::symlink_metadata(path).is_ok() => {
            "broken symbolic link".to_string()
        }
        io::ErrorKind::NotFound => "no such file or directory".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot access: {err}"),
    }
}

/// Reads the non-empty lines of `reader` as `(display, path)` pairs; a trailing `\r` is trimmed.
fn read_path_lines(reader: &mut impl BufRead) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .context("cannot read paths from standard input")?;
        if n == 0 {
            break;
        }
        let mut line: &[u8] = &buf;
        while let Some((last, rest)) = line.split_last() {
            if *last == b'\n' || *last == b'\r' {
                line = rest;
            } else {
                break;
            }
        }
        if line.is_empty() {
            continue;
        }
        out.push((
            String::from_utf8_lossy(line).into_owned(),
            bytes_to_path(line),
        ));
    }
    Ok(out)
}

#[cfg(unix)]
fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    fn spec(args: &[&str]) -> InputSpec {
        InputSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            shard: None,
        }
    }

    fn displays(inputs: &[Input]) -> Vec<String> {
        inputs.iter().map(|i| i.display.clone()).collect()
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
        assert_eq!(
            " 3/3 ".parse::<Shard>().unwrap(),
            Shard { index: 3, count: 3 }
        );
        for bad in ["0/3", "4/3", "1/0", "3", "a/b", "1/2/3", "", "-1/2"] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(
                err.to_string()
                    .contains("shard must look like K/N with 1 <= K <= N"),
                "{bad}"
            );
        }
        assert_eq!(Shard { index: 2, count: 5 }.to_string(), "2/5");
    }

    #[test]
    fn walks_filters_sorts_and_keeps_named_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("photos/b.JPG"));
        touch(&root.join("photos/a.png"));
        touch(&root.join("photos/notes.txt"));
        touch(&root.join("photos/.hidden/c.webp"));
        touch(&root.join("photos/sub/d.jfif"));
        touch(&root.join("photos-x.gif")); // sorts before "photos/" bytewise ('-' < '/')
        touch(&root.join("readme.md"));
        let photos = root.join("photos");
        let named = root.join("readme.md");
        let args = [photos.to_str().unwrap(), named.to_str().unwrap()];
        let (inputs, errors) = collect_inputs(&spec(&args), Cursor::new("")).unwrap();
        assert!(errors.is_empty());
        let p = photos.to_str().unwrap();
        assert_eq!(
            displays(&inputs),
            vec![
                format!("{p}/.hidden/c.webp"),
                format!("{p}/a.png"),
                format!("{p}/b.JPG"),
                format!("{p}/sub/d.jfif"),
                named.to_str().unwrap().to_string(),
            ]
        );
        assert_eq!(inputs[1].path, photos.join("a.png"));
    }

    #[test]
    fn missing_paths_become_errors_and_duplicates_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        touch(&a);
        let a_dot = format!("{}/./a.png", dir.path().display());
        let missing = dir.path().join("nope.jpg");
        let args = [
            a.to_str().unwrap(),
            missing.to_str().unwrap(),
            &a_dot,
            dir.path().to_str().unwrap(),
        ];
        let (inputs, errors) = collect_inputs(&spec(&args), Cursor::new("")).unwrap();
        assert_eq!(displays(&inputs), vec![a.to_str().unwrap().to_string()]);
        assert_eq!(
            errors,
            vec![InputError {
                display: missing.to_str().unwrap().to_string(),
                message: "no such file or directory".into()
            }]
        );
    }

    #[test]
    fn stdin_paths() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("å b.png");
        let c = dir.path().join("c.jpg");
        touch(&a);
        touch(&c);
        let text = format!("{}\r\n\n{}\n", a.display(), c.display());
        let (inputs, errors) = collect_inputs(&spec(&["-"]), Cursor::new(text)).unwrap();
        assert!(errors.is_empty());
        assert_eq!(
            displays(&inputs),
            vec![a.to_str().unwrap(), c.to_str().unwrap()]
        );
    }

    #[test]
    fn sharding_partitions_inputs_and_errors_go_to_shard_one() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..7 {
            touch(&dir.path().join(format!("{i}.png")));
        }
        let d = dir.path().to_str().unwrap().to_string();
        let missing = format!("{d}/missing.png");
        let mut all = Vec::new();
        for k in 1..=3 {
            let spec = InputSpec {
                args: vec![d.clone(), missing.clone()],
                shard: Some(Shard { index: k, count: 3 }),
            };
            let (inputs, errors) = collect_inputs(&spec, Cursor::new("")).unwrap();
            assert_eq!(errors.len(), usize::from(k == 1));
            all.extend(displays(&inputs));
        }
        all.sort();
        let expected: Vec<String> = (0..7).map(|i| format!("{d}/{i}.png")).collect();
        assert_eq!(all, expected);
    }

    #[cfg(unix)]
    #[test]
    fn follows_symlinks_and_reports_loops() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        touch(&real.join("x.png"));
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&real, tree.join("link")).unwrap();
        std::os::unix::fs::symlink(&tree, tree.join("loop")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.png"), tree.join("dangling.png")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.txt"), tree.join("dangling.txt")).unwrap();
        let (inputs, errors) =
            collect_inputs(&spec(&[tree.to_str().unwrap()]), Cursor::new("")).unwrap();
        assert_eq!(
            displays(&inputs),
            vec![format!("{}/link/x.png", tree.display())]
        );
        let mut messages: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
        messages.sort();
        assert_eq!(messages.len(), 2, "{errors:?}");
        assert_eq!(messages[0], "broken symbolic link");
        assert!(messages[1].starts_with("filesystem loop"));
    }

    #[test]
    fn unreadable_stdin_is_an_error() {
        struct Failing;
        impl io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let err = collect_inputs(&spec(&["-"]), io::BufReader::new(Failing)).unwrap_err();
        assert!(err.to_string().contains("standard input"));
    }
}
