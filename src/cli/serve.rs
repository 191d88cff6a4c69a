//! `glance serve`: loads the models, then hands them to [`glance::serve`].

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::args::ServeArgs;
use super::open_device;
use glance::load::hub::{ModelFiles, ModelSource};
use glance::serve::images::UrlFetch;
use glance::serve::{Model, ServeOptions};

pub(crate) fn run(args: ServeArgs) -> Result<ExitCode> {
    let (device, dtype) = open_device(&args.device)?;
    let mut models = Vec::new();
    for id in &args.model {
        if models.iter().any(|(m, _): &(String, Model)| m == id) {
            anyhow::bail!("--model {id} is given twice");
        }
        let files = ModelFiles::new(ModelSource::parse(id, args.revision.as_deref()))?;
        let model = Model::load(&files, &device, dtype).with_context(|| format!("loading {id}"))?;
        eprintln!(
            "glance serve: loaded {} on {}",
            model.name(),
            super::describe_device(&device, dtype)
        );
        models.push((id.clone(), model));
    }
    if args.max_batch_size == 0 || args.max_queue == 0 {
        anyhow::bail!("--max-batch-size and --max-queue must be at least 1");
    }
    let options = ServeOptions {
        host: args.host,
        port: args.port,
        max_batch_size: args.max_batch_size,
        max_queue: args.max_queue,
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        url_fetch: UrlFetch {
            allowed: args.allow_url_fetch,
            ..UrlFetch::default()
        },
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        drain_timeout: Duration::from_secs(60),
    };
    glance::serve::serve(models, options)?;
    eprintln!("glance serve: stopped");
    Ok(ExitCode::SUCCESS)
}
