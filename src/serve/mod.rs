//! `glance serve`: the models behind an HTTP API. Each model has its own thread and queue
//! ([`worker`]); requests decode and preprocess their images on blocking threads, take queue
//! places for them (429 when there are none), and wait for their records. Routes are in [`api`],
//! images in [`images`], the web page in `page.html`.

pub mod api;
pub mod images;
pub mod models;
mod openapi;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::Semaphore;

pub use models::{Model, Task};

/// The server's settings (the `glance serve` flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Images per forward pass, at most.
    pub max_batch_size: usize,
    /// Images queued or running, all models together; beyond it requests get 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub max_image_pixels: u64,
    pub api_key: Option<String>,
    pub url_fetch: images::UrlFetch,
    /// Reading a request's headers, at most (slow clients cannot hold connections).
    pub header_timeout: Duration,
    /// A whole request, body and model work included, at most.
    pub request_timeout: Duration,
    /// In-flight requests get this long to finish after SIGTERM / Ctrl-C.
    pub drain_timeout: Duration,
}

/// One loaded model and its thread's queue.
pub struct Served {
    /// The name a request gives in `"model"`: the Hub id or the directory, as given.
    pub id: String,
    pub model: Model,
    pub tasks: Vec<Task>,
    pub queue: Arc<worker::Queue>,
    thread: std::thread::JoinHandle<()>,
}

impl Served {
    pub fn alive(&self) -> bool {
        !self.thread.is_finished()
    }
}

/// What every handler sees.
pub struct AppState {
    pub models: Vec<Served>,
    pub options: ServeOptions,
    /// Queue places, one per image.
    pub permits: Arc<Semaphore>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
}

impl AppState {
    /// Images queued or running now.
    pub fn queued(&self) -> usize {
        self.options.max_queue - self.permits.available_permits()
    }
}

fn install_metrics() -> Result<PrometheusHandle> {
    let seconds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ];
    let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full("glance_batch_size".into()), &sizes)?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Starts a thread per model, checks each with a forward pass, binds, prints the ready line,
/// and serves until SIGTERM or Ctrl-C; then stops accepting, lets in-flight requests finish
/// and returns.
pub fn serve(loaded: Vec<(String, Model)>, options: ServeOptions) -> Result<()> {
    let metrics = install_metrics()?;
    let mut models = Vec::new();
    for (i, (id, model)) in loaded.into_iter().enumerate() {
        let queue = worker::Queue::new();
        let thread = worker::spawn(model.clone(), queue.clone(), options.max_batch_size, i)
            .context("starting a model thread")?;
        models.push(Served {
            id,
            tasks: model.tasks(),
            model,
            queue,
            thread,
        });
    }
    let state = Arc::new(AppState {
        permits: Arc::new(Semaphore::new(options.max_queue)),
        models,
        options,
        metrics,
        started: Instant::now(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("glance-http")
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(run(state.clone()))?;
    for served in &state.models {
        served.queue.close();
    }
    // The model threads finish what is queued (nothing: every request has been answered).
    let state = Arc::try_unwrap(state).ok();
    if let Some(state) = state {
        for served in state.models {
            let _ = served.thread.join();
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn run(state: Arc<AppState>) -> Result<()> {
    for served in &state.models {
        api::warm_up(&state, served)
            .await
            .with_context(|| format!("{} failed its first forward pass", served.id))?;
    }
    let addr = format!("{}:{}", state.options.host, state.options.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local: SocketAddr = listener.local_addr()?;
    let names: Vec<String> = state
        .models
        .iter()
        .map(|s| {
            let tasks: Vec<&str> = s.tasks.iter().map(|t| t.name()).collect();
            format!("{} ({})", s.id, tasks.join(", "))
        })
        .collect();
    println!(
        "glance serve: listening on http://{local} with {}",
        names.join("; ")
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let app = api::router(state.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.options.header_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, keep serving.
                        eprintln!("glance serve: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let connection = http.serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    eprintln!("glance serve: stopping: finishing in-flight requests");
    let drain = state.options.drain_timeout;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "glance serve: requests still running after {} s; stopping anyway",
            drain.as_secs()
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
