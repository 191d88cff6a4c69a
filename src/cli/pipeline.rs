//! `glance run PIPELINE` and `--pipeline NAME`: several stages over one pass of the inputs.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::args::{DeviceArgs, OutputArgs, PipelineArgs, RunArgs};
use super::{exit_code, open_device, output_options, run_stages, sort_into};
use glance::run::pipeline::Pipeline;
use glance::run::sort::SortInto;
use glance::tasks::Stage;

pub(crate) fn run(args: PipelineArgs) -> Result<ExitCode> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    execute(
        &pipeline,
        &args.device,
        &args.run,
        &args.output,
        sort_into(&args.sort),
    )
}

/// `--pipeline NAME` on a single-task command: the preset (or file) with this command's run,
/// device and output options.
pub(crate) fn run_preset(
    name: &str,
    device: &DeviceArgs,
    run: &RunArgs,
    output: &OutputArgs,
    sort: Option<SortInto>,
) -> Result<ExitCode> {
    execute(&Pipeline::load(name)?, device, run, output, sort)
}

fn execute(
    pipeline: &Pipeline,
    device: &DeviceArgs,
    run: &RunArgs,
    output: &OutputArgs,
    sort: Option<SortInto>,
) -> Result<ExitCode> {
    let columns = pipeline.csv_columns();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let output = output_options(output, run, &columns, &pipeline.text_field())?;
    let classifies = pipeline
        .stages
        .iter()
        .any(|s| matches!(s, glance::run::pipeline::StageSpec::Classify { .. }));
    if sort.is_some() && !classifies {
        bail!("--sort-into needs a classify stage in {}", pipeline.source);
    }
    let (device, dtype) = open_device(device)?;
    let mut stages = pipeline
        .build(&device, dtype)
        .with_context(|| format!("loading {}", pipeline.source))?;
    if !run.quiet {
        eprintln!(
            "glance: {} ({}) on {}",
            pipeline.source,
            pipeline.stage_names().join(" + "),
            super::describe_device(&device, dtype)
        );
    }
    let mut refs: Vec<&mut dyn Stage> = stages
        .iter_mut()
        .map(|s| s.as_mut() as &mut dyn Stage)
        .collect();
    let report = run_stages(run, &output, sort, &mut refs)?;
    Ok(exit_code(&report, run.quiet))
}
