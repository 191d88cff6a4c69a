//! `glance merge`: the parts the shards of a job wrote, as one result in input order, checked
//! against the inputs so that each image appears exactly once.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::inputs::{collect_inputs, InputSpec};
use crate::output::{open_sink, read_records, Format, OutputOptions, Record};

pub struct MergeOptions {
    pub parts: Vec<PathBuf>,
    /// The parts' format; by default each part's from its extension.
    pub part_format: Option<Format>,
    /// The inputs the job was given (the same arguments, in the same form): the order of the
    /// result and what it must hold.
    pub inputs: Option<InputSpec>,
    pub output: OutputOptions,
    /// Write the result even when images are missing or appear twice.
    pub allow_missing: bool,
}

#[derive(Debug, Default)]
pub struct MergeReport {
    /// Records in the result.
    pub records: usize,
    /// Inputs no part holds.
    pub missing: Vec<String>,
    /// Files held more than once (across parts or within one).
    pub duplicates: Vec<String>,
    /// Files the parts hold that are not among the inputs.
    pub unexpected: Vec<String>,
    /// Whether the result was written.
    pub written: bool,
}

impl MergeReport {
    /// Each input exactly once, nothing else.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.duplicates.is_empty() && self.unexpected.is_empty()
    }
}

/// One record per file: a success over an error, else the first.
fn better(kept: &Record, new: &Record) -> bool {
    !kept.is_ok() && new.is_ok()
}

pub fn merge(opts: &MergeOptions) -> Result<MergeReport> {
    let mut report = MergeReport::default();
    let mut order: Vec<String> = Vec::new();
    let mut by_file: HashMap<String, (Record, usize)> = HashMap::new();
    let mut csv_columns: Option<Vec<String>> = None;
    let mut fields: Vec<String> = Vec::new();
    for part in &opts.parts {
        // A part's own extension, else the result's format; a .json document says itself
        // whether it is COCO, Label Studio or a record array.
        let format = match opts.part_format {
            Some(f) => f,
            None => Format::from_path(part).unwrap_or(opts.output.format),
        };
        let read = read_records(part, format, &opts.output.text_field)?;
        csv_columns = csv_columns.or(read.csv_columns);
        for rec in read.records {
            for k in rec.fields.keys() {
                if !fields.contains(k) {
                    fields.push(k.clone());
                }
            }
            match by_file.get_mut(&rec.file) {
                Some((kept, seen)) => {
                    *seen += 1;
                    if better(kept, &rec) {
                        *kept = rec;
                    }
                }
                None => {
                    order.push(rec.file.clone());
                    by_file.insert(rec.file.clone(), (rec, 1));
                }
            }
        }
    }
    report.duplicates = order
        .iter()
        .filter(|f| by_file[*f].1 > 1)
        .cloned()
        .collect();
    if let Some(spec) = &opts.inputs {
        let (inputs, errors) = collect_inputs(spec, std::io::stdin().lock())
            .context("listing the inputs to check the parts against")?;
        // As a run writes them: the arguments that failed first, then the images in order.
        let expected: Vec<String> = errors
            .into_iter()
            .map(|e| e.display)
            .chain(inputs.into_iter().map(|i| i.display))
            .collect();
        let position: HashMap<&str, usize> = expected
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        report.missing = expected
            .iter()
            .filter(|f| !by_file.contains_key(*f))
            .cloned()
            .collect();
        report.unexpected = order
            .iter()
            .filter(|f| !position.contains_key(f.as_str()))
            .cloned()
            .collect();
        order.sort_by_key(|f| position.get(f.as_str()).copied().unwrap_or(usize::MAX));
    }
    if !report.is_exact() && !opts.allow_missing {
        return Ok(report);
    }
    let mut output = opts.output.clone();
    output.csv_columns = csv_columns.unwrap_or_else(|| {
        std::iter::once("file".to_string())
            .chain(fields.into_iter().filter(|f| f != "width" && f != "height"))
            .chain(std::iter::once("error".to_string()))
            .collect()
    });
    let (mut sink, _) = open_sink(&output)?;
    for file in &order {
        sink.write(&by_file[file].0)?;
        report.records += 1;
    }
    sink.finish()?;
    report.written = true;
    Ok(report)
}
