//! Resume support: repairs a JSONL or CSV output left by an earlier (possibly killed) run and keeps its
//! successful records.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use super::Record;

/// What survives of an earlier output.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// Successful records, first occurrence of each `file`, in file order.
    pub records: Vec<Record>,
    /// The repaired file content (only the kept lines/rows, each newline-terminated).
    pub content: Vec<u8>,
    /// Whether `content` differs from the file (it must then be rewritten before appending).
    pub changed: bool,
}

/// Scans JSONL `bytes`: blank lines, error records and repeated files are dropped; a last line that is not
/// a valid record (cut by a crash) is dropped; an invalid line elsewhere is an error naming `name`.
pub(crate) fn resume_jsonl(bytes: &[u8], name: &Path) -> Result<Kept> {
    let mut kept = Kept::default();
    let mut seen = HashSet::new();
    let mut pos = 0;
    let mut line_no = 0;
    while pos < bytes.len() {
        line_no += 1;
        let (line, next, terminated) = match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&bytes[pos..pos + i], pos + i + 1, true),
            None => (&bytes[pos..], bytes.len(), false),
        };
        let is_last = next >= bytes.len();
        pos = next;
        let (line, had_cr) = match line.strip_suffix(b"\r") {
            Some(stripped) => (stripped, true),
            None => (line, false),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            kept.changed = true;
            continue;
        }
        let parsed = serde_json::from_slice::<Value>(line);
        let record = parsed.as_ref().ok().and_then(Record::from_json);
        let Some(record) = record else {
            if is_last {
                kept.changed = true;
                continue;
            }
            let why = match parsed {
                Err(e) => e.to_string(),
                Ok(_) => "not an object with a \"file\" string".to_string(),
            };
            bail!(
                "cannot resume from '{}': line {line_no} is not a valid record ({why}); fix or remove it",
                name.display()
            );
        };
        if !record.is_ok() || !seen.insert(record.file.clone()) {
            kept.changed = true;
            continue;
        }
        if !terminated || had_cr {
            kept.changed = true; // written back newline-terminated, with "\n"
        }
        kept.content.extend_from_slice(line);
        kept.content.push(b'\n');
        kept.records.push(record);
    }
    Ok(kept)
}

/// What survives of an earlier CSV output.
#[derive(Debug, Default)]
pub(crate) struct KeptCsv {
    /// `file` cells of the kept rows.
    pub done: Vec<String>,
    /// Header (if any was found) and kept rows, each newline-terminated.
    pub content: Vec<u8>,
    /// Whether a header row is present in `content`.
    pub has_header: bool,
    pub changed: bool,
}

/// Scans CSV `bytes` written with `columns`: the header must match; a cut last row is dropped; rows with a
/// non-empty `error` column and repeated files are dropped. `columns` must contain "file".
pub(crate) fn resume_csv(bytes: &[u8], name: &Path, columns: &[String]) -> Result<KeptCsv> {
    let Some(file_col) = columns.iter().position(|c| c == "file") else {
        bail!(
            "cannot resume '{}': csv columns must include \"file\"",
            name.display()
        );
    };
    let error_col = columns.iter().position(|c| c == "error");
    let mut rdr = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    // (start, end, record) of every row; `end` is the start of the next row.
    let mut rows = Vec::new();
    let mut record = ::csv::ByteRecord::new();
    loop {
        let start = rdr.position().byte() as usize;
        match rdr.read_byte_record(&mut record) {
            Ok(true) => rows.push((start, record.clone())),
            Ok(false) => break,
            Err(e) => bail!("cannot resume from '{}': {e}", name.display()),
        }
    }
    let ends: Vec<usize> = rows
        .iter()
        .skip(1)
        .map(|(s, _)| *s)
        .chain(std::iter::once(bytes.len()))
        .collect();
    let mut kept = KeptCsv::default();
    let mut seen = HashSet::new();
    let row_count = rows.len();
    for (i, ((start, rec), end)) in rows.into_iter().zip(ends).enumerate() {
        let raw = trim_newlines(&bytes[start.min(end)..end]);
        let is_last = i + 1 == row_count;
        let complete = !is_last || (ends_with_newline(bytes) && quotes_balanced(raw));
        if i == 0 {
            let header: Vec<&[u8]> = rec.iter().collect();
            let expected: Vec<&[u8]> = columns.iter().map(|c| c.as_bytes()).collect();
            if !complete {
                kept.changed = true; // a cut header: start afresh
                break;
            }
            if header != expected {
                bail!(
                    "cannot resume '{}': its columns ({}) differ from this run's ({})",
                    name.display(),
                    String::from_utf8_lossy(raw),
                    columns.join(",")
                );
            }
            kept.has_header = true;
        } else {
            if !complete || rec.len() != columns.len() {
                if is_last {
                    kept.changed = true;
                    continue;
                }
                bail!(
                    "cannot resume '{}': row {} has {} fields, expected {}",
                    name.display(),
                    i + 1,
                    rec.len(),
                    columns.len()
                );
            }
            let failed = error_col.is_some_and(|c| rec.get(c).is_some_and(|v| !v.is_empty()));
            let file = String::from_utf8_lossy(rec.get(file_col).unwrap_or_default()).into_owned();
            if failed || !seen.insert(file.clone()) {
                kept.changed = true;
                continue;
            }
            kept.done.push(file);
        }
        if raw.len() + 1 != end - start {
            kept.changed = true; // line ending normalised to "\n"
        }
        kept.content.extend_from_slice(raw);
        kept.content.push(b'\n');
    }
    Ok(kept)
}

fn trim_newlines(mut raw: &[u8]) -> &[u8] {
    while let [b'\r' | b'\n', rest @ ..] = raw {
        raw = rest;
    }
    while let [rest @ .., b'\r' | b'\n'] = raw {
        raw = rest;
    }
    raw
}

fn ends_with_newline(bytes: &[u8]) -> bool {
    bytes.last() == Some(&b'\n')
}

/// A complete CSV row has an even number of quote characters (quoted fields escape `"` as `""`).
fn quotes_balanced(raw: &[u8]) -> bool {
    raw.iter().filter(|&&b| b == b'"').count() % 2 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(kept: &Kept) -> Vec<&str> {
        kept.records.iter().map(|r| r.file.as_str()).collect()
    }

    #[test]
    fn jsonl_clean_file_is_unchanged() {
        let text = b"{\"file\":\"a\",\"caption\":\"x\"}\n{\"file\":\"b\",\"caption\":\"y\"}\n";
        let kept = resume_jsonl(text, Path::new("o.jsonl")).unwrap();
        assert!(!kept.changed);
        assert_eq!(files(&kept), ["a", "b"]);
        assert_eq!(kept.content, text);
    }

    #[test]
    fn jsonl_partial_last_line_is_dropped() {
        let text = b"{\"file\":\"a\"}\n{\"file\":\"b\",\"capt";
        let kept = resume_jsonl(text, Path::new("o.jsonl")).unwrap();
        assert!(kept.changed);
        assert_eq!(files(&kept), ["a"]);
        assert_eq!(kept.content, b"{\"file\":\"a\"}\n");
        // NUL bytes left by a power loss count as a cut line too.
        let kept = resume_jsonl(b"{\"file\":\"a\"}\n\0\0\0", Path::new("o.jsonl")).unwrap();
        assert_eq!(files(&kept), ["a"]);
    }

    #[test]
    fn jsonl_complete_unterminated_line_is_kept() {
        let kept = resume_jsonl(
            b"{\"file\":\"a\"}\r\n{\"file\":\"b\"}",
            Path::new("o.jsonl"),
        )
        .unwrap();
        assert!(kept.changed);
        assert_eq!(files(&kept), ["a", "b"]);
        assert_eq!(kept.content, b"{\"file\":\"a\"}\n{\"file\":\"b\"}\n");
    }

    #[test]
    fn jsonl_errors_and_repeats_are_dropped() {
        let text = b"{\"file\":\"a\",\"error\":\"bad\"}\n\n{\"file\":\"b\"}\n{\"file\":\"b\"}\n{\"file\":\"c\",\"error\":null}\n";
        let kept = resume_jsonl(text, Path::new("o.jsonl")).unwrap();
        assert!(kept.changed);
        assert_eq!(files(&kept), ["b", "c"]);
    }

    #[test]
    fn jsonl_damage_in_the_middle_is_an_error() {
        let err = resume_jsonl(
            b"{\"file\":\"a\"}\nnot json\n{\"file\":\"b\"}\n",
            Path::new("o.jsonl"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'o.jsonl'") && msg.contains("line 2"), "{msg}");
        let err = resume_jsonl(b"[1]\n{\"file\":\"b\"}\n", Path::new("o.jsonl")).unwrap_err();
        assert!(err.to_string().contains("line 1"));
    }

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn csv_repair() {
        let c = cols(&["file", "caption", "error"]);
        let text = "file,caption,error\na.jpg,\"multi\nline, \"\"quoted\"\"\",\nb.jpg,,decode failed\nc.jpg,cat,\nd.jpg,\"cut";
        let kept = resume_csv(text.as_bytes(), Path::new("o.csv"), &c).unwrap();
        assert!(kept.changed && kept.has_header);
        assert_eq!(kept.done, ["a.jpg", "c.jpg"]);
        assert_eq!(
            String::from_utf8(kept.content).unwrap(),
            "file,caption,error\na.jpg,\"multi\nline, \"\"quoted\"\"\",\nc.jpg,cat,\n"
        );
        // A clean file stays as it is.
        let text = "file,caption,error\na.jpg,cat,\n";
        let kept = resume_csv(text.as_bytes(), Path::new("o.csv"), &c).unwrap();
        assert!(!kept.changed);
        assert_eq!(kept.content, text.as_bytes());
        // A newline inside an open quote at the very end is still a cut row.
        let text = "file,caption,error\na.jpg,\"cut\n";
        let kept = resume_csv(text.as_bytes(), Path::new("o.csv"), &c).unwrap();
        assert!(kept.done.is_empty() && kept.changed);
    }

    #[test]
    fn csv_header_checks() {
        let c = cols(&["file", "caption"]);
        let err = resume_csv(b"file,label\na,b\n", Path::new("o.csv"), &c).unwrap_err();
        assert!(err.to_string().contains("'o.csv'"));
        let err = resume_csv(b"", Path::new("o.csv"), &cols(&["caption"])).unwrap_err();
        assert!(err.to_string().contains("\"file\""));
        let kept = resume_csv(b"file,capt", Path::new("o.csv"), &c).unwrap();
        assert!(!kept.has_header && kept.content.is_empty());
        let kept = resume_csv(b"", Path::new("o.csv"), &c).unwrap();
        assert!(!kept.has_header && !kept.changed);
        // Without an error column every complete row is done.
        let kept = resume_csv(b"file,caption\na,\nb,x\n", Path::new("o.csv"), &c).unwrap();
        assert_eq!(kept.done, ["a", "b"]);
    }
}
