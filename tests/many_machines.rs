//! Sharded runs as a scheduler runs them: `--shard auto` from Slurm's and Kubernetes' variables,
//! `{shard}` outputs, and `glance merge` of every format, checked against the inputs.

mod common;

use std::path::{Path, PathBuf};

use common::{glance, shared_images, succeed};
use serde_json::Value;

fn blip() -> String {
    common::blip_tiny().display().to_string()
}

/// The records of a JSONL file.
fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn images() -> String {
    shared_images().display().to_string()
}

/// The whole run's records, unsharded, as the reference a merge must equal.
fn unsharded(format: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("all.{format}"));
    succeed(
        glance()
            .args([
                "caption",
                "-m",
                &blip(),
                "--max-new-tokens",
                "3",
                "-q",
                "-o",
            ])
            .arg(&out)
            .arg(images()),
    );
    out
}

/// Task `k`'s command of a 4-task job, with `env(k)` as the scheduler's variables, writing
/// `part-{shard}.EXT` in `format`.
fn task(
    dir: &Path,
    format: &str,
    ext: &str,
    k: usize,
    env: &impl Fn(usize) -> Vec<(&'static str, String)>,
) -> std::process::Command {
    let mut cmd = glance();
    cmd.args([
        "caption",
        "-m",
        &blip(),
        "--max-new-tokens",
        "3",
        "-q",
        "--shard",
        "auto",
    ])
    .args(["--format", format, "-o"])
    .arg(dir.join(format!("part-{{shard}}.{ext}")))
    .arg(images());
    for (name, value) in env(k) {
        cmd.env(name, value);
    }
    cmd
}

/// Runs the 4 tasks of a job (see [`task`]).
fn run_tasks_as(
    dir: &Path,
    format: &str,
    ext: &str,
    env: impl Fn(usize) -> Vec<(&'static str, String)>,
) {
    for k in 0..4 {
        succeed(&mut task(dir, format, ext, k, &env));
    }
}

fn run_tasks(dir: &Path, format: &str, env: impl Fn(usize) -> Vec<(&'static str, String)>) {
    run_tasks_as(dir, format, format, env)
}

fn merge(dir: &Path, format: &str, extra: &[&str]) -> std::process::Output {
    let parts: Vec<PathBuf> = (1..=4)
        .map(|k| dir.join(format!("part-{k}.{format}")))
        .collect();
    glance()
        .arg("merge")
        .arg("-o")
        .arg(dir.join(format!("merged.{format}")))
        .args(&parts)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn slurm_array_tasks_then_merge_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    run_tasks(dir.path(), "jsonl", |k| {
        vec![
            ("SLURM_ARRAY_TASK_ID", (k + 10).to_string()),
            ("SLURM_ARRAY_TASK_MIN", "10".into()),
            ("SLURM_ARRAY_TASK_COUNT", "4".into()),
        ]
    });
    // Each task wrote its own part, and together they hold every image once.
    let parts: Vec<Vec<Value>> = (1..=4)
        .map(|k| jsonl(&dir.path().join(format!("part-{k}.jsonl"))))
        .collect();
    assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 11);
    let out = merge(dir.path(), "jsonl", &["--inputs", &images()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = jsonl(&dir.path().join("merged.jsonl"));
    assert_eq!(
        merged,
        jsonl(&unsharded("jsonl", dir.path())),
        "merge in input order"
    );
}

#[test]
fn kubernetes_indexed_job_then_merge_of_each_format() {
    for format in ["jsonl", "json", "csv", "coco", "labelstudio"] {
        let dir = tempfile::tempdir().unwrap();
        let ext = if format == "labelstudio" {
            "json"
        } else {
            format
        };
        run_tasks_as(dir.path(), format, ext, |k| {
            vec![
                ("JOB_COMPLETION_INDEX", k.to_string()),
                ("GLANCE_SHARD_COUNT", "4".into()),
            ]
        });
        let parts: Vec<PathBuf> = (1..=4)
            .map(|k| dir.path().join(format!("part-{k}.{ext}")))
            .collect();
        let merged = dir.path().join(format!("merged.{ext}"));
        let out = glance()
            .args(["merge", "--format", format, "-o"])
            .arg(&merged)
            .args(&parts)
            .args(["--inputs", &images()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let whole = dir.path().join(format!("whole.{ext}"));
        succeed(
            glance()
                .args(["caption", "-m", &blip(), "--max-new-tokens", "3", "-q"])
                .args(["--format", format, "-o"])
                .arg(&whole)
                .arg(images()),
        );
        let text = |p: &Path| std::fs::read_to_string(p).unwrap();
        match format {
            // Documents carry a creation date: compare what they hold.
            "coco" => {
                let (a, b): (Value, Value) = (
                    serde_json::from_str(&text(&merged)).unwrap(),
                    serde_json::from_str(&text(&whole)).unwrap(),
                );
                assert_eq!(a["images"], b["images"], "{format}");
                assert_eq!(a["annotations"], b["annotations"], "{format}");
            }
            _ => assert_eq!(text(&merged), text(&whole), "{format}"),
        }
    }
}

#[test]
fn merge_reports_missing_and_duplicate_images_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    run_tasks(dir.path(), "jsonl", |k| {
        vec![
            ("JOB_COMPLETION_INDEX", k.to_string()),
            ("GLANCE_SHARD_COUNT", "4".into()),
        ]
    });
    // A lost part: its images are missing.
    let lost = dir.path().join("part-2.jsonl");
    let lost_files: Vec<String> = jsonl(&lost)
        .iter()
        .map(|r| r["file"].as_str().unwrap().to_string())
        .collect();
    assert!(!lost_files.is_empty());
    std::fs::write(&lost, "").unwrap();
    let out = merge(dir.path(), "jsonl", &["--inputs", &images()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{} images missing", lost_files.len())),
        "{err}"
    );
    assert!(lost_files.iter().all(|f| err.contains(f.as_str())), "{err}");
    assert!(!dir.path().join("merged.jsonl").exists());
    // --allow-missing merges anyway.
    let out = merge(
        dir.path(),
        "jsonl",
        &["--allow-missing", "--inputs", &images()],
    );
    assert!(out.status.success());
    assert_eq!(
        jsonl(&dir.path().join("merged.jsonl")).len(),
        11 - lost_files.len()
    );
    std::fs::remove_file(dir.path().join("merged.jsonl")).unwrap();
    // A part given twice: every image of it is a duplicate.
    std::fs::copy(dir.path().join("part-1.jsonl"), &lost).unwrap();
    let out = merge(dir.path(), "jsonl", &["--inputs", &images()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in more than one record"), "{err}");
}

#[test]
fn a_killed_task_resumes_its_own_part_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let env = |k: usize| {
        vec![
            ("JOB_COMPLETION_INDEX", k.to_string()),
            ("GLANCE_SHARD_COUNT", "4".into()),
        ]
    };
    run_tasks(dir.path(), "jsonl", env);
    // Task 3's part as a kill left it: one record and half of the next line.
    let part = dir.path().join("part-3.jsonl");
    let full = std::fs::read_to_string(&part).unwrap();
    let first_line_end = full.find('\n').unwrap() + 1;
    let cut = &full[..(first_line_end + 10).min(full.len())];
    std::fs::write(&part, cut).unwrap();
    // The retried pod runs the same command with --resume.
    succeed(task(dir.path(), "jsonl", "jsonl", 2, &env).arg("--resume"));
    assert_eq!(std::fs::read_to_string(&part).unwrap(), full);
    let out = merge(dir.path(), "jsonl", &["--inputs", &images()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shard_auto_without_a_scheduler_and_shard_placeholder_without_shard_are_errors() {
    let out = glance()
        .args(["caption", "-m", &blip(), "--shard", "auto"])
        .arg(images())
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("SLURM_ARRAY_TASK_ID") && err.contains("JOB_COMPLETION_INDEX"),
        "{err}"
    );
    let out = glance()
        .args(["caption", "-m", &blip(), "-o", "x-{shard}.jsonl"])
        .arg(images())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("{shard}"), "{err}");
}
