//! `glance eval classify`: classify records against ground truth. Accuracy (top-1, top-k),
//! per-class precision / recall / F1 with their macro and support-weighted means, and the
//! confusion matrix — defined as scikit-learn's `accuracy_score`, `precision_recall_fscore_support`
//! (`zero_division=0`, over the union of true and predicted classes) and `confusion_matrix`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::base_name;
use crate::error::{Error, Result};

/// One ground-truth image.
#[derive(Debug, Clone)]
pub struct TruthItem {
    /// As shown in reports: the path under the truth folder, or the CSV's `file`.
    pub file: String,
    pub label: String,
    /// The file on disk, when it exists (matches predictions by path).
    pub path: Option<PathBuf>,
}

/// Ground truth, looked up by path first and by file name where that is unambiguous.
#[derive(Debug, Default)]
pub struct Truth {
    pub items: Vec<TruthItem>,
    by_path: HashMap<PathBuf, usize>,
    by_name: HashMap<String, Vec<usize>>,
}

/// How labels are compared: case, surrounding space and `_` versus space do not matter, so a
/// folder `golden_retriever` matches the class "Golden retriever".
pub fn normalize_label(label: &str) -> String {
    label
        .replace('_', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl Truth {
    fn push(&mut self, item: TruthItem) {
        let i = self.items.len();
        if let Some(p) = &item.path {
            self.by_path.insert(p.clone(), i);
        }
        self.by_name
            .entry(base_name(&item.file))
            .or_default()
            .push(i);
        self.items.push(item);
    }

    /// The truth entry of a prediction's `file`: the same file on disk (relative paths tried from
    /// the working directory and from `base`), else the only entry with that file name.
    pub fn find(&self, file: &str, base: &Path) -> Lookup {
        for candidate in [PathBuf::from(file), base.join(file)] {
            if let Ok(p) = candidate.canonicalize() {
                if let Some(&i) = self.by_path.get(&p) {
                    return Lookup::Found(i);
                }
            }
        }
        match self.by_name.get(&base_name(file)).map(Vec::as_slice) {
            Some([i]) => Lookup::Found(*i),
            Some([]) | None => Lookup::Missing,
            Some(_) => Lookup::Ambiguous,
        }
    }
}

pub enum Lookup {
    Found(usize),
    Missing,
    /// Several truth images share the file name and the path did not decide.
    Ambiguous,
}

/// Ground truth from a folder with a sub-folder of images per class, or a CSV with `file` and
/// `label` columns (other columns ignored; `file` relative to the CSV's folder or a bare name).
pub fn read_truth(path: &Path) -> Result<Truth> {
    if path.is_dir() {
        read_truth_dir(path)
    } else {
        read_truth_csv(path)
    }
}

fn read_truth_dir(root: &Path) -> Result<Truth> {
    let mut truth = Truth::default();
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    for class_dir in classes {
        let label = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&class_dir)
            .follow_links(true)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .filter(|p| crate::run::inputs::has_image_extension(p))
            .collect();
        files.sort();
        for file in files {
            let shown = file
                .strip_prefix(root)
                .unwrap_or(&file)
                .display()
                .to_string();
            truth.push(TruthItem {
                file: shown,
                label: label.clone(),
                path: file.canonicalize().ok(),
            });
        }
    }
    if truth.items.is_empty() {
        return Err(Error::config(
            root,
            "no images in class sub-folders (expected DIR/<class>/<image>)",
        ));
    }
    Ok(truth)
}

fn read_truth_csv(path: &Path) -> Result<Truth> {
    let bad = |m: String| Error::config(path, m);
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| bad(format!("no \"{name}\" column (expected file,label)")))
    };
    let (file_col, label_col) = (column("file")?, column("label")?);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut truth = Truth::default();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| bad(format!("row {}: {e}", i + 2)))?;
        let (Some(file), Some(label)) = (row.get(file_col), row.get(label_col)) else {
            return Err(bad(format!("row {}: missing file or label", i + 2)));
        };
        if file.trim().is_empty() || label.trim().is_empty() {
            return Err(bad(format!("row {}: empty file or label", i + 2)));
        }
        truth.push(TruthItem {
            file: file.to_string(),
            label: label.trim().to_string(),
            path: dir.join(file).canonicalize().ok(),
        });
    }
    if truth.items.is_empty() {
        return Err(bad("no rows".into()));
    }
    Ok(truth)
}

/// One classify record: its file, top-1 label and ranked candidates.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub file: String,
    pub label: String,
    /// The record's `predictions` labels, best first (just `label` when absent).
    pub ranked: Vec<String>,
}

pub struct Predictions {
    pub records: Vec<Prediction>,
    /// Records with an `error` or no `label` (their `file`).
    pub failed: Vec<String>,
    /// The predictions file's folder, against which relative `file`s are also tried.
    pub base: PathBuf,
}

pub fn read_predictions(path: &Path) -> Result<Predictions> {
    let mut records = Vec::new();
    let mut failed = Vec::new();
    for (file, rec) in super::read_records(path)? {
        match rec["label"].as_str() {
            Some(label) if !super::is_error(&rec) => {
                let mut ranked: Vec<String> = rec["predictions"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p["label"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if ranked.is_empty() {
                    ranked.push(label.to_string());
                }
                records.push(Prediction {
                    file: file.clone(),
                    label: label.to_string(),
                    ranked,
                });
            }
            _ => failed.push(file),
        }
    }
    Ok(Predictions {
        records,
        failed,
        base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Scored images of this class.
    pub support: usize,
    /// Scored images predicted as this class.
    pub predicted: usize,
}

/// Rows: true class; columns: predicted class; both in `labels` order (the true classes sorted
/// case-insensitively, then classes only ever predicted, such as "unknown").
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifyReport {
    pub accuracy: f64,
    pub top_k: usize,
    pub top_k_accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub weighted_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    #[serde(rename = "confusion_matrix")]
    pub confusion: Confusion,
    pub images_scored: usize,
    /// Scored records listing fewer than `top_k` candidates (top-k counts what they list).
    pub fewer_than_top_k: usize,
    /// Ground-truth images without a prediction (not scored).
    pub missing_predictions: Vec<String>,
    /// Predictions whose image is not in the ground truth, or whose file name is ambiguous.
    pub unmatched_predictions: Vec<String>,
    /// Records with an error (not scored).
    pub failed_predictions: Vec<String>,
}

fn safe_div(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// Scores `preds` against `truth`; a truth image predicted twice counts once (the last record,
/// as a resumed run's file would be read).
pub fn evaluate(preds: &Predictions, truth: &Truth, top_k: usize) -> ClassifyReport {
    let top_k = top_k.max(1);
    // Matched pairs by truth index.
    let mut matched: BTreeMap<usize, &Prediction> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for p in &preds.records {
        match truth.find(&p.file, &preds.base) {
            Lookup::Found(i) => {
                matched.insert(i, p);
            }
            Lookup::Missing => unmatched.push(p.file.clone()),
            Lookup::Ambiguous => unmatched.push(format!("{} (file name not unique)", p.file)),
        }
    }
    let failed_names: Vec<String> = preds.failed.iter().map(|f| base_name(f)).collect();

    // Classes: the truth's names (first spelling seen), then predicted-only names.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for item in &truth.items {
        names
            .entry(normalize_label(&item.label))
            .or_insert_with(|| item.label.clone());
    }
    let mut predicted_only: BTreeMap<String, String> = BTreeMap::new();
    for p in matched.values() {
        let key = normalize_label(&p.label);
        if !names.contains_key(&key) {
            predicted_only.entry(key).or_insert_with(|| p.label.clone());
        }
    }
    // Classes are those present among the scored images, as scikit-learn takes the union of
    // y_true and y_pred; truth classes with no scored image are left out.
    let present: std::collections::HashSet<String> = matched
        .iter()
        .flat_map(|(&i, p)| {
            [
                normalize_label(&truth.items[i].label),
                normalize_label(&p.label),
            ]
        })
        .collect();
    let keys: Vec<String> = names
        .keys()
        .chain(predicted_only.keys())
        .filter(|k| present.contains(*k))
        .cloned()
        .collect();
    names.extend(predicted_only);
    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let n = keys.len();
    let mut matrix = vec![vec![0usize; n]; n];
    let mut correct_k = 0;
    let mut short = 0;
    for (&i, p) in &matched {
        let t = normalize_label(&truth.items[i].label);
        matrix[index[t.as_str()]][index[normalize_label(&p.label).as_str()]] += 1;
        if p.ranked.len() < top_k {
            short += 1;
        }
        if p.ranked.iter().take(top_k).any(|l| normalize_label(l) == t) {
            correct_k += 1;
        }
    }
    let scored = matched.len();
    let correct: usize = (0..n).map(|c| matrix[c][c]).sum();
    let per_class: Vec<ClassMetrics> = (0..n)
        .map(|c| {
            let tp = matrix[c][c] as f64;
            let support: usize = matrix[c].iter().sum();
            let predicted: usize = matrix.iter().map(|row| row[c]).sum();
            let precision = safe_div(tp, predicted as f64);
            let recall = safe_div(tp, support as f64);
            ClassMetrics {
                label: names[&keys[c]].clone(),
                precision,
                recall,
                f1: safe_div(2.0 * precision * recall, precision + recall),
                support,
                predicted,
            }
        })
        .collect();
    let mean = |f: fn(&ClassMetrics) -> f64| safe_div(per_class.iter().map(f).sum(), n as f64);
    let weighted = |f: fn(&ClassMetrics) -> f64| {
        safe_div(
            per_class.iter().map(|c| f(c) * c.support as f64).sum(),
            scored as f64,
        )
    };
    let matched_set: std::collections::HashSet<usize> = matched.keys().copied().collect();
    ClassifyReport {
        accuracy: safe_div(correct as f64, scored as f64),
        top_k,
        top_k_accuracy: safe_div(correct_k as f64, scored as f64),
        macro_precision: mean(|c| c.precision),
        macro_recall: mean(|c| c.recall),
        macro_f1: mean(|c| c.f1),
        weighted_precision: weighted(|c| c.precision),
        weighted_recall: weighted(|c| c.recall),
        weighted_f1: weighted(|c| c.f1),
        confusion: Confusion {
            labels: per_class.iter().map(|c| c.label.clone()).collect(),
            matrix,
        },
        per_class,
        images_scored: scored,
        fewer_than_top_k: short,
        missing_predictions: truth
            .items
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !matched_set.contains(i) && !failed_names.contains(&base_name(&t.file))
            })
            .map(|(_, t)| t.file.clone())
            .collect(),
        unmatched_predictions: unmatched,
        failed_predictions: preds.failed.clone(),
    }
}

/// Largest confusion matrix printed in the table; bigger ones go to JSON or the heat-map.
const TABLE_MATRIX_LIMIT: usize = 20;

impl ClassifyReport {
    /// An aligned report for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "accuracy        {:.4}\ntop-{} accuracy  {:.4}\nimages scored: {}\n\n",
            self.accuracy, self.top_k, self.top_k_accuracy, self.images_scored
        );
        let width = self
            .per_class
            .iter()
            .map(|c| c.label.chars().count())
            .chain([12])
            .max()
            .unwrap_or(12);
        s.push_str(&format!(
            "{:<width$}  {:>9}  {:>6}  {:>6}  {:>7}\n",
            "class", "precision", "recall", "f1", "support"
        ));
        for c in &self.per_class {
            s.push_str(&format!(
                "{:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n",
                c.label, c.precision, c.recall, c.f1, c.support
            ));
        }
        for (name, p, r, f) in [
            (
                "macro avg",
                self.macro_precision,
                self.macro_recall,
                self.macro_f1,
            ),
            (
                "weighted avg",
                self.weighted_precision,
                self.weighted_recall,
                self.weighted_f1,
            ),
        ] {
            s.push_str(&format!(
                "{name:<width$}  {p:>9.4}  {r:>6.4}  {f:>6.4}  {:>7}\n",
                self.images_scored
            ));
        }
        let labels = &self.confusion.labels;
        if !labels.is_empty() && labels.len() <= TABLE_MATRIX_LIMIT {
            s.push_str("\nconfusion matrix (rows: true class, columns: predicted)\n");
            let cell = self
                .confusion
                .matrix
                .iter()
                .flatten()
                .map(|v| v.to_string().len())
                .chain([2])
                .max()
                .unwrap_or(2);
            let head: Vec<String> = (0..labels.len())
                .map(|j| format!("{:>cell$}", j + 1))
                .collect();
            s.push_str(&format!("{:<width$}     {}\n", "", head.join(" ")));
            for (i, row) in self.confusion.matrix.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|v| format!("{v:>cell$}")).collect();
                s.push_str(&format!(
                    "{:<width$} {:>3}  {}\n",
                    labels[i],
                    i + 1,
                    cells.join(" ")
                ));
            }
        } else if !labels.is_empty() {
            s.push_str(&format!(
                "\n({} classes: see the confusion matrix with --format json or --heatmap)\n",
                labels.len()
            ));
        }
        for (what, list) in [
            ("without a prediction", &self.missing_predictions),
            (
                "predicted but not in the ground truth",
                &self.unmatched_predictions,
            ),
            ("failed predictions", &self.failed_predictions),
        ] {
            if !list.is_empty() {
                s.push_str(&format!("{what} ({}): {}\n", list.len(), list.join(", ")));
            }
        }
        if self.fewer_than_top_k > 0 {
            s.push_str(&format!(
                "{} records list fewer than {} predictions (run classify with --top-k {})\n",
                self.fewer_than_top_k, self.top_k, self.top_k
            ));
        }
        s
    }
}
