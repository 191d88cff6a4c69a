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
//! - Sharding `K/N` splits the inputs (after deduplication) over N shards. By hash (the default,
//!   [`ShardBy::Hash`]), an input belongs to shard `FNV-1a(key) % N + 1`, where the key is its path
//!   relative to the directory argument it was found in (a file argument: the path as given), so
//!   adding files to a collection moves none of the others to another shard, and a shard retried
//!   later takes the same files. By position ([`ShardBy::Position`]), shard K keeps the 0-based
//!   positions `i` with `i % N == K - 1`: exactly balanced, but any new file shifts the rest.
//!   Errors are not sharded: they are all reported by shard 1 only, so that a set of N shards reports
//!   each error exactly once.

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
    pub shard_by: ShardBy,
}

/// How inputs are assigned to shards (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardBy {
    /// By a hash of the path relative to its input root: stable when files are added.
    #[default]
    Hash,
    /// By position in the sorted input list: exactly balanced for a fixed list.
    Position,
}

impl FromStr for ShardBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hash" => Ok(Self::Hash),
            "position" => Ok(Self::Position),
            other => Err(format!(
                "--shard-by must be hash or position, not {other:?}"
            )),
        }
    }
}

/// `--shard`: `K/N`, or `auto` for the scheduler's task (see [`Shard::from_env`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardArg {
    Fixed(Shard),
    Auto,
}

impl FromStr for ShardArg {
    type Err = ShardParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            other => other.parse().map(Self::Fixed),
        }
    }
}

/// One shard of a run split over several processes: `index` is 1-based (`1..=count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// A malformed `--shard` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard {0:?}: shard must look like K/N with 1 <= K <= N, or auto")]
pub struct ShardParseError(pub String);

/// FNV-1a, 64 bits: a hash that is the same on every machine and in every version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Shard {
    /// Whether the input at 0-based `position`, with the shard key `key`, belongs to this shard.
    pub fn keeps(&self, position: usize, key: &str, by: ShardBy) -> bool {
        if self.count == 0 {
            return false;
        }
        let slot = match by {
            ShardBy::Position => position % self.count,
            ShardBy::Hash => (fnv1a(key.as_bytes()) % self.count as u64) as usize,
        };
        slot == self.index.wrapping_sub(1)
    }

    /// The shard of this task of a scheduler, from its environment (`var` reads a variable):
    /// a Slurm job array (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`,
    /// and `SLURM_ARRAY_TASK_STEP` for arrays like `0-30:10`) or a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`, 0-based, with the count from `count`, else
    /// `GLANCE_SHARD_COUNT`, since the Job does not expose its completions).
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
        count: Option<usize>,
    ) -> Result<Shard, String> {
        let number = |name: &str| -> Result<Option<usize>, String> {
            match var(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}={v:?} is not a whole number")),
            }
        };
        let shard = |index: usize, count: usize, from: &str| {
            if count == 0 || index == 0 || index > count {
                return Err(format!(
                    "{from} gives shard {index} of {count}, which does not exist"
                ));
            }
            Ok(Shard { index, count })
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let total = match count {
                Some(n) => n,
                None => number("SLURM_ARRAY_TASK_COUNT")?
                    .ok_or("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?,
            };
            if id < min || (id - min) % step != 0 {
                return Err(format!(
                    "SLURM_ARRAY_TASK_ID={id} is not in the array {min}..:{step}"
                ));
            }
            return shard((id - min) / step + 1, total, "the Slurm array");
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let total = match count {
                Some(n) => n,
                None => number("GLANCE_SHARD_COUNT")?.ok_or(
                    "JOB_COMPLETION_INDEX is set, but not the number of shards: give --shard-count N or GLANCE_SHARD_COUNT (the Job's completions)",
                )?,
            };
            return shard(index + 1, total, "the Kubernetes Indexed Job");
        }
        Err("--shard auto: neither a Slurm array task (SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed Job (JOB_COMPLETION_INDEX) is running this; give --shard K/N".into())
    }

    /// The shard for `-o`'s `{shard}`: K zero-padded to N's width (`03` of 12), so the files sort.
    pub fn label(&self) -> String {
        let width = self.count.to_string().len();
        format!("{:0width$}", self.index)
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
    /// What hash sharding hashes: the path relative to the directory argument it was found in
    /// (`/` between components), or for a file argument the path as given.
    pub key: String,
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
                .filter(|(i, input)| shard.keeps(*i, &input.key, spec.shard_by))
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
            Ok(_) => {
                let key = display.clone();
                self.push(display, path, key)
            }
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
            let key = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            self.push(path.to_string_lossy().into_owned(), path, key);
        }
    }

    fn push(&mut self, display: String, path: PathBuf, key: String) {
        let seen = self.dedup_key(&path);
        if self.seen.insert(seen) {
            self.inputs.push(Input { display, path, key });
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
            ..InputSpec::default()
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
        for by in [ShardBy::Hash, ShardBy::Position] {
            let mut all = Vec::new();
            for k in 1..=3 {
                let spec = InputSpec {
                    args: vec![d.clone(), missing.clone()],
                    shard: Some(Shard { index: k, count: 3 }),
                    shard_by: by,
                };
                let (inputs, errors) = collect_inputs(&spec, Cursor::new("")).unwrap();
                assert_eq!(errors.len(), usize::from(k == 1));
                all.extend(displays(&inputs));
            }
            all.sort();
            let expected: Vec<String> = (0..7).map(|i| format!("{d}/{i}.png")).collect();
            assert_eq!(all, expected, "{by:?}");
        }
    }

    /// Which shard of `count` each input of `dir` goes to, by file name.
    fn assignment(
        dir: &Path,
        count: usize,
        by: ShardBy,
    ) -> std::collections::HashMap<String, usize> {
        let mut out = std::collections::HashMap::new();
        for index in 1..=count {
            let spec = InputSpec {
                args: vec![dir.to_str().unwrap().to_string()],
                shard: Some(Shard { index, count }),
                shard_by: by,
            };
            for input in collect_inputs(&spec, Cursor::new("")).unwrap().0 {
                let name = input
                    .path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert!(out.insert(name, index).is_none(), "an input in two shards");
            }
        }
        out
    }

    #[test]
    fn hash_sharding_moves_no_file_when_files_are_added() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            touch(&dir.path().join(format!("b{i:02}.png")));
        }
        let before = assignment(dir.path(), 4, ShardBy::Hash);
        for i in 0..40 {
            // New files sort before, between and after the old ones.
            touch(&dir.path().join(format!("a{i:02}.png")));
            touch(&dir.path().join(format!("b{i:02}x.png")));
        }
        let after = assignment(dir.path(), 4, ShardBy::Hash);
        assert_eq!(after.len(), 120);
        assert!(before.iter().all(|(name, shard)| after[name] == *shard));
        // Every shard gets some of them; by position the old files move.
        assert!((1..=4).all(|k| before.values().any(|&s| s == k)));
        let by_position = assignment(dir.path(), 4, ShardBy::Position);
        assert!(before.keys().any(|n| by_position[n] != before[n]));
    }

    #[test]
    fn hash_keys_are_relative_to_the_input_root() {
        // The same collection under two roots is split the same way.
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for root in [a.path(), b.path().join("deeper/copy").as_path()] {
            for i in 0..20 {
                touch(&root.join(format!("sub/{i}.jpg")));
            }
        }
        assert_eq!(
            assignment(a.path(), 3, ShardBy::Hash),
            assignment(&b.path().join("deeper/copy"), 3, ShardBy::Hash)
        );
    }

    #[test]
    fn shard_auto_reads_slurm_and_kubernetes_variables() {
        let env = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_env(slurm, None),
            Ok(Shard { index: 3, count: 4 })
        );
        // --array=0-30:10 is tasks 0, 10, 20, 30.
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "20"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_env(stepped, None),
            Ok(Shard { index: 3, count: 4 })
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "0"), ("GLANCE_SHARD_COUNT", "8")]);
        assert_eq!(Shard::from_env(k8s, None), Ok(Shard { index: 1, count: 8 }));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "7")]);
        assert_eq!(
            Shard::from_env(&k8s, Some(8)),
            Ok(Shard { index: 8, count: 8 })
        );
        let err = Shard::from_env(&k8s, None).unwrap_err();
        assert!(err.contains("--shard-count"), "{err}");
        assert!(Shard::from_env(&k8s, Some(4))
            .unwrap_err()
            .contains("does not exist"));
        let err = Shard::from_env(env(&[]), None).unwrap_err();
        assert!(err.contains("SLURM_ARRAY_TASK_ID") && err.contains("JOB_COMPLETION_INDEX"));
        let bad = env(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ]);
        assert!(Shard::from_env(bad, None)
            .unwrap_err()
            .contains("not a whole number"));
        assert_eq!("auto".parse::<ShardArg>(), Ok(ShardArg::Auto));
        assert_eq!(
            Shard {
                index: 3,
                count: 12
            }
            .label(),
            "03"
        );
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
