//! The folder runner: inputs → parallel decode + preprocess (overlapping inference) → batches
//! through one or more stages → records in input order → a sink. Per-input failures become
//! error records; the run goes on.

use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::kernels::on_compute_pool;
use crate::output::{is_broken_pipe, Record, RecordSink, ResumeState, Summary};
use crate::preprocess::ImageProcessor;
use crate::run::inputs::Input;
use crate::tasks::{Prepared, Stage};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub batch_size: usize,
    pub max_image_pixels: u64,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Threads for decoding and preprocessing.
    pub decode_threads: usize,
}

/// What happened, for the exit status and the final line.
#[derive(Debug, Default)]
pub struct RunReport {
    pub summary: Summary,
    /// Inputs skipped because a previous run (or an existing sidecar) already did them.
    pub resumed: usize,
    pub processed: usize,
    pub seconds: f64,
    /// Standard output was closed early (e.g. piped into `head`).
    pub broken_pipe: bool,
}

enum Item {
    Ready(Input, Prepared),
    Failed(Record),
}

/// Runs `stages` over `inputs`, writing one record per input to `sink`; `early` are records for
/// arguments that already failed (missing files), written first.
pub fn run(
    inputs: Vec<Input>,
    early: Vec<Record>,
    stages: &mut [&mut dyn Stage],
    resume: &ResumeState,
    sink: Box<dyn RecordSink + Send>,
    opts: &RunOptions,
) -> Result<RunReport> {
    let started = Instant::now();
    let mut sink = sink;
    let mut report = RunReport::default();
    let todo: Vec<Input> = inputs
        .into_iter()
        .filter(|i| {
            let done = resume.is_done(&i.display, &i.path);
            report.resumed += usize::from(done);
            !done
        })
        .collect();
    let bar = progress_bar(todo.len() as u64, opts.progress);
    for rec in early.into_iter().filter(|r| !resume.done.contains(&r.file)) {
        if !write(&mut sink, &rec, &mut report)? {
            return finish(sink, report, started, &bar);
        }
    }

    let (preprocessors, stage_pixels) = distinct_preprocessors(stages);
    let batch_size = opts.batch_size.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.decode_threads.max(1))
        .thread_name(|i| format!("glance-decode-{i}"))
        .build()
        .context("starting decode threads")?;
    let max_pixels = opts.max_image_pixels;
    // Decoding of the next batches overlaps inference on the current one.
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Item>>(2);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for chunk in todo.chunks(batch_size) {
                let items: Vec<Item> = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|input| prepare(input, &preprocessors, max_pixels))
                        .collect()
                });
                if tx.send(items).is_err() {
                    break;
                }
            }
        });
        for items in rx.iter() {
            let (inputs, ready, order) = split(items);
            let mut fields = vec![Map::new(); ready.len()];
            let mut batch_error: Option<String> = None;
            for (s, stage) in stages.iter_mut().enumerate() {
                if ready.is_empty() {
                    break;
                }
                match on_compute_pool(|| stage.run(&ready, &stage_pixels[s])) {
                    Ok(out) => {
                        for (f, o) in fields.iter_mut().zip(out) {
                            merge(f, o, stage.name());
                        }
                    }
                    Err(e) => {
                        // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
                        let message = e.to_string();
                        let first = message.lines().next().unwrap_or_default();
                        batch_error = Some(format!("model failed on this batch: {first}"));
                        break;
                    }
                }
            }
            let mut ready_iter = inputs.into_iter().zip(ready).zip(fields);
            for slot in order {
                let rec = match slot {
                    Some(failed) => failed,
                    None => {
                        let ((input, p), f) = ready_iter
                            .next()
                            .expect("one prepared image per empty slot");
                        let rec = Record::new(input.display).with_path(input.path);
                        match &batch_error {
                            Some(e) => rec.with_error(e.clone()),
                            None => {
                                let mut rec = rec;
                                rec.fields = f;
                                rec.fields.insert("width".into(), p.width.into());
                                rec.fields.insert("height".into(), p.height.into());
                                rec
                            }
                        }
                    }
                };
                report.processed += 1;
                bar.inc(1);
                if !write(&mut sink, &rec, &mut report)? {
                    // Dropping the receiver stops the decoder thread.
                    return Ok(());
                }
            }
        }
        Ok(())
    })?;
    finish(sink, report, started, &bar)
}

/// Adds a stage's fields to a record's; a name taken by an earlier stage gets the stage's name in
/// front (`score` of stage `classify` → `classify_score`).
fn merge(fields: &mut Map<String, Value>, new: Map<String, Value>, stage: &str) {
    for (k, v) in new {
        let key = if fields.contains_key(&k) {
            format!("{stage}_{k}")
        } else {
            k
        };
        fields.insert(key, v);
    }
}

fn finish(
    sink: Box<dyn RecordSink + Send>,
    mut report: RunReport,
    started: Instant,
    bar: &ProgressBar,
) -> Result<RunReport> {
    bar.finish_and_clear();
    match sink.finish() {
        Ok(summary) => report.summary = summary,
        Err(e) if is_broken_pipe(&e) => report.broken_pipe = true,
        Err(e) => return Err(e),
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes one record; `Ok(false)` when stdout was closed and the run should stop quietly.
fn write(
    sink: &mut Box<dyn RecordSink + Send>,
    rec: &Record,
    report: &mut RunReport,
) -> Result<bool> {
    match sink.write(rec) {
        Ok(()) => Ok(true),
        Err(e) if is_broken_pipe(&e) => {
            report.broken_pipe = true;
            Ok(false)
        }
        Err(e) => Err(e.context(format!("writing the record for {}", rec.file))),
    }
}

/// Splits a batch into the images to run and, in input order, `None` for each of those or the
/// error record of an input that could not be prepared.
fn split(items: Vec<Item>) -> (Vec<Input>, Vec<Prepared>, Vec<Option<Record>>) {
    let (mut inputs, mut ready, mut order) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        match item {
            Item::Ready(input, p) => {
                inputs.push(input);
                ready.push(p);
                order.push(None);
            }
            Item::Failed(r) => order.push(Some(r)),
        }
    }
    (inputs, ready, order)
}

/// The run's distinct preprocessors and, per stage, the indices of its own among them.
fn distinct_preprocessors(stages: &[&mut dyn Stage]) -> (Vec<ImageProcessor>, Vec<Vec<usize>>) {
    let mut distinct: Vec<ImageProcessor> = Vec::new();
    let indices = stages
        .iter()
        .map(|stage| {
            stage
                .preprocessors()
                .into_iter()
                .map(|p| match distinct.iter().position(|q| *q == p) {
                    Some(i) => i,
                    None => {
                        distinct.push(p);
                        distinct.len() - 1
                    }
                })
                .collect()
        })
        .collect();
    (distinct, indices)
}

fn prepare(input: &Input, preprocessors: &[ImageProcessor], max_pixels: u64) -> Item {
    // A panic in a decoder is a bug in a dependency; it must not take the run down.
    let decoded =
        std::panic::catch_unwind(|| crate::preprocess::decode::decode(&input.path, max_pixels))
            .unwrap_or_else(|_| Err("the image decoder crashed on this file".to_string()));
    match decoded.and_then(|d| Prepared::new(input.display.clone(), &d, preprocessors)) {
        Ok(prepared) => Item::Ready(input.clone(), prepared),
        Err(message) => Item::Failed(
            Record::new(input.display.clone())
                .with_path(input.path.clone())
                .with_error(message),
        ),
    }
}

fn progress_bar(len: u64, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {per_sec}  elapsed {elapsed}  eta {eta}",
        )
        .expect("valid progress template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_prefixes_taken_fields_with_the_stage_name() {
        let mut fields = Map::new();
        merge(
            &mut fields,
            serde_json::json!({"caption": "a cat", "score": -1.5})
                .as_object()
                .unwrap()
                .clone(),
            "caption",
        );
        merge(
            &mut fields,
            serde_json::json!({"label": "cat", "score": 0.9})
                .as_object()
                .unwrap()
                .clone(),
            "classify",
        );
        assert_eq!(
            Value::Object(fields),
            serde_json::json!({"caption": "a cat", "score": -1.5, "label": "cat", "classify_score": 0.9})
        );
    }

    /// A stage that only names its preprocessors.
    struct Reads(Vec<Preprocessor>);

    use crate::preprocess::Preprocessor;

    impl Stage for Reads {
        fn name(&self) -> &str {
            "reads"
        }
        fn preprocessors(&self) -> Vec<ImageProcessor> {
            self.0.iter().cloned().map(ImageProcessor::Fixed).collect()
        }
        fn run(&mut self, _: &[Prepared], _: &[usize]) -> crate::Result<Vec<Map<String, Value>>> {
            unreachable!()
        }
    }

    #[test]
    fn stages_share_the_pixels_of_equal_preprocessors() {
        use crate::preprocess::PreprocessorConfig;
        let at = |size| Preprocessor::new(PreprocessorConfig::square(size)).unwrap();
        // A BLIP caption stage reranked by a CLIP judge, then CLIP tags: three processors, two
        // distinct (the judge's and the tagger's are equal).
        let mut caption = Reads(vec![at(384), at(224)]);
        let mut tags = Reads(vec![at(224)]);
        let (distinct, indices) = distinct_preprocessors(&[&mut caption, &mut tags]);
        let fixed = |size| ImageProcessor::Fixed(at(size));
        assert_eq!(distinct, vec![fixed(384), fixed(224)]);
        assert_eq!(indices, vec![vec![0, 1], vec![1]]);
    }
}
