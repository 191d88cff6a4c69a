//! One thread per model and the batcher in front of it. Requests put their images, already
//! decoded and preprocessed, in the model's queue; the thread takes the oldest image and every
//! queued image with the same options (up to the batch size), runs them as one batch, and sends
//! each image's fields back. Nothing waits for a batch to fill: a batch is whatever queued while
//! the model was busy.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::models::{Model, ServedStage, Spec};
use crate::kernels::on_compute_pool;
use crate::tasks::{Prepared, Usage};

/// Built stages kept per model (a classify stage holds its labels' text embeddings).
const STAGE_CACHE: usize = 32;

/// What became of one image.
#[derive(Debug)]
pub enum Outcome {
    /// Its record fields (an `error` field where the model failed on its batch, as in a folder run).
    Fields(Map<String, Value>, Option<Usage>),
    /// The options cannot make a stage: the request is wrong (422).
    Rejected(String),
    /// A panic in the model: a server bug, reported as a 500 for the request.
    Crashed(String),
}

/// Work for the model thread: a batchable image, or a call on the model itself (text
/// embeddings).
pub enum Work {
    Image(ImageJob),
    Call(Box<dyn FnOnce(&Model) + Send>),
}

pub struct ImageJob {
    pub spec: Arc<Spec>,
    pub key: Arc<str>,
    pub prepared: Prepared,
    pub reply: oneshot::Sender<Outcome>,
    /// Told each token of the image's reply as it is generated (a streamed chat completion).
    pub stream: Option<mpsc::UnboundedSender<u32>>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Work>,
    /// Images accepted for this model whose decoding is under way: queued requests whose
    /// pixels are not ready yet.
    arriving: usize,
    closed: bool,
}

/// How long a batch waits, at most, for images already accepted but still being decoded.
const ARRIVAL_WAIT: Duration = Duration::from_millis(250);

/// Images a request has been accepted with and is decoding; given back when they are queued,
/// or, counted as dropped, when the request goes first (its client left).
pub struct Arriving {
    queue: Arc<Queue>,
    images: usize,
}

impl Drop for Arriving {
    fn drop(&mut self) {
        if self.images > 0 {
            metrics::counter!("glance_images_dropped_total").increment(self.images as u64);
            let mut state = self.queue.state.lock().expect("queue lock");
            state.arriving -= self.images;
            self.queue.ready.notify_all();
        }
    }
}

/// The queue of one model.
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

impl Queue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        })
    }

    /// Says `images` images are on their way (being decoded), so a batch forming now waits
    /// for them rather than leaving without them.
    pub fn expect(self: &Arc<Self>, images: usize) -> Arriving {
        self.state.lock().expect("queue lock").arriving += images;
        Arriving {
            queue: self.clone(),
            images,
        }
    }

    /// Queues a request's images (those that decoded), ending their `arriving`.
    pub fn push(&self, work: Vec<Work>, mut arriving: Option<Arriving>) {
        let mut state = self.state.lock().expect("queue lock");
        state.jobs.extend(work);
        if let Some(a) = arriving.as_mut() {
            state.arriving -= std::mem::take(&mut a.images);
        }
        self.ready.notify_all();
    }

    /// No more work: the thread finishes what is queued and exits.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.ready.notify_all();
    }

    /// The next batch: the oldest job and, for an image, every queued image with its key, up to
    /// `max` in all. Images whose request has gone (client disconnected) are dropped here.
    fn next(&self, max: usize) -> Option<Batch> {
        let mut state = self.state.lock().expect("queue lock");
        loop {
            let dropped = drop_abandoned(&mut state.jobs);
            if dropped > 0 {
                metrics::counter!("glance_images_dropped_total").increment(dropped as u64);
            }
            match state.jobs.pop_front() {
                Some(Work::Call(f)) => return Some(Batch::Call(f)),
                Some(Work::Image(first)) => {
                    let mut jobs = vec![first];
                    take_same_key(&mut state.jobs, &mut jobs, max);
                    // Requests accepted while the model was busy may still be decoding
                    // their images: they are part of the queue, so the batch waits for them
                    // (never longer than ARRIVAL_WAIT), not for requests yet to come.
                    let deadline = Instant::now() + ARRIVAL_WAIT;
                    while jobs.len() < max && state.arriving > 0 && !state.closed {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        state = self
                            .ready
                            .wait_timeout(state, deadline - now)
                            .expect("queue lock")
                            .0;
                        take_same_key(&mut state.jobs, &mut jobs, max);
                    }
                    return Some(Batch::Images(jobs));
                }
                None if state.closed => return None,
                None => state = self.ready.wait(state).expect("queue lock"),
            }
        }
    }
}

/// Moves queued images with the key of `jobs[0]` into `jobs`, up to `max` in all.
fn take_same_key(queue: &mut VecDeque<Work>, jobs: &mut Vec<ImageJob>, max: usize) {
    let mut rest = VecDeque::with_capacity(queue.len());
    for work in queue.drain(..) {
        match work {
            Work::Image(job) if jobs.len() < max && job.key == jobs[0].key => jobs.push(job),
            other => rest.push_back(other),
        }
    }
    *queue = rest;
}

fn drop_abandoned(jobs: &mut VecDeque<Work>) -> usize {
    let before = jobs.len();
    jobs.retain(|w| !matches!(w, Work::Image(job) if job.reply.is_closed()));
    before - jobs.len()
}

enum Batch {
    Images(Vec<ImageJob>),
    Call(Box<dyn FnOnce(&Model) + Send>),
}

/// Runs `model`'s thread until its queue is closed and empty.
pub fn spawn(
    model: Model,
    queue: Arc<Queue>,
    max_batch: usize,
    index: usize,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("glance-model-{index}"))
        .spawn(move || {
            let mut stages = StageCache::default();
            // A pause before each batch, for tests of queueing (set by the test suite only).
            let delay = std::env::var("GLANCE_SERVE_BATCH_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis);
            let mut rate = Rate::default();
            while let Some(batch) = queue.next(max_batch.max(1)) {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                match batch {
                    Batch::Call(f) => {
                        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| f(&model))) {
                            eprintln!(
                                "glance serve: a call on {} panicked: {}",
                                model.name(),
                                panic_text(&p)
                            );
                        }
                    }
                    Batch::Images(jobs) => {
                        let n = jobs.len();
                        run_batch(&model, &mut stages, jobs);
                        metrics::histogram!("glance_batch_size").record(n as f64);
                        metrics::counter!("glance_images_total").increment(n as u64);
                        rate.add(n);
                    }
                }
            }
        })
}

fn run_batch(model: &Model, stages: &mut StageCache, jobs: Vec<ImageJob>) {
    // Dropped since it was queued? Its reply slot says so; skip the work.
    let (jobs, gone): (Vec<ImageJob>, Vec<ImageJob>) =
        jobs.into_iter().partition(|j| !j.reply.is_closed());
    if !gone.is_empty() {
        metrics::counter!("glance_images_dropped_total").increment(gone.len() as u64);
    }
    let Some(first) = jobs.first() else { return };
    let spec = first.spec.clone();
    let key = first.key.clone();
    let mut prepared = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut streams = Vec::with_capacity(jobs.len());
    for job in jobs {
        prepared.push(job.prepared);
        replies.push(job.reply);
        streams.push(job.stream);
    }
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let stage = match stages.get(model, &key, &spec) {
            Ok(stage) => stage,
            Err(message) => return Err(message),
        };
        if streams.iter().all(Option::is_none) {
            return Ok(on_compute_pool(|| stage.run(&prepared)));
        }
        // A streamed request asks for one reply per image, and shares its batch only with
        // requests of the same options: row r of the decode loop is image r. The senders go
        // when the stage returns, which ends each stream.
        Ok(on_compute_pool(move || {
            let observer: crate::generation::TokenObserver = Box::new(move |row, token| {
                if let Some(Some(tx)) = streams.get(row) {
                    let _ = tx.send(token);
                }
            });
            crate::generation::observing(observer, || stage.run(&prepared))
        }))
    }));
    let outcomes: Vec<Outcome> = match result {
        Ok(Ok(Ok(out))) => out
            .into_iter()
            .map(|(fields, usage)| Outcome::Fields(fields, usage))
            .collect(),
        Ok(Ok(Err(e))) => {
            // As a folder run writes it: the first line (candle appends a backtrace).
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default();
            let mut fields = Map::new();
            fields.insert(
                "error".into(),
                format!("model failed on this batch: {first}").into(),
            );
            (0..replies.len())
                .map(|_| Outcome::Fields(fields.clone(), None))
                .collect()
        }
        Ok(Err(message)) => (0..replies.len())
            .map(|_| Outcome::Rejected(message.clone()))
            .collect(),
        Err(panic) => {
            // The stage may be half-way through something: build it afresh next time.
            stages.forget(&key);
            let message = panic_text(&panic);
            eprintln!(
                "glance serve: {} panicked on a batch: {message}",
                model.name()
            );
            (0..replies.len())
                .map(|_| Outcome::Crashed(message.clone()))
                .collect()
        }
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A receiver gone since is a client that left; nothing to do.
        let _ = reply.send(outcome);
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Stages by their spec's key, the least recently used dropped beyond [`STAGE_CACHE`].
#[derive(Default)]
struct StageCache {
    stages: HashMap<Arc<str>, (ServedStage, u64)>,
    clock: u64,
}

impl StageCache {
    fn get(
        &mut self,
        model: &Model,
        key: &Arc<str>,
        spec: &Spec,
    ) -> Result<&mut ServedStage, String> {
        self.clock += 1;
        if !self.stages.contains_key(key) {
            let stage = on_compute_pool(|| model.stage(spec)).map_err(|e| e.to_string())?;
            if self.stages.len() >= STAGE_CACHE {
                if let Some(oldest) = self
                    .stages
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone())
                {
                    self.stages.remove(&oldest);
                }
            }
            self.stages.insert(key.clone(), (stage, 0));
        }
        let entry = self.stages.get_mut(key).expect("just inserted");
        entry.1 = self.clock;
        Ok(&mut entry.0)
    }

    fn forget(&mut self, key: &str) {
        self.stages.remove(key);
    }
}

/// Images per second over the last complete 10-second window, for `/metrics`.
struct Rate {
    start: Instant,
    count: usize,
}

impl Default for Rate {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            count: 0,
        }
    }
}

impl Rate {
    fn add(&mut self, n: usize) {
        self.count += n;
        let elapsed = self.start.elapsed();
        if elapsed >= Duration::from_secs(10) {
            metrics::gauge!("glance_images_per_second")
                .set(self.count as f64 / elapsed.as_secs_f64());
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Overrides;
    use crate::load::hub::{ModelFiles, ModelSource};
    use crate::preprocess::Pixels;
    use crate::tasks::chat::ChatOptions;

    #[test]
    fn a_panic_fails_its_batch_and_the_model_thread_goes_on() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3-vl-tiny");
        let files = ModelFiles::new(ModelSource::parse(dir.to_str().unwrap(), None)).unwrap();
        let model =
            Model::load(&files, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let queue = Queue::new();
        let thread = spawn(model, queue.clone(), 4, 0).unwrap();
        let spec = Arc::new(Spec::Chat(ChatOptions {
            instruction: "Describe the image.".into(),
            generation: Overrides {
                max_new_tokens: Some(2),
                ..Overrides::default()
            },
            quiet: true,
            ..ChatOptions::default()
        }));
        // Channels-first pixels where the chat stage expects patches: a bug it panics on.
        let wrong = Prepared {
            name: "0".into(),
            width: 8,
            height: 8,
            pixels: vec![Pixels::Chw(vec![0.0; 3 * 8 * 8])],
        };
        let (tx, rx) = oneshot::channel();
        queue.push(
            vec![Work::Image(ImageJob {
                key: spec.key().into(),
                spec,
                prepared: wrong,
                reply: tx,
                stream: None,
            })],
            None,
        );
        assert!(matches!(rx.blocking_recv().unwrap(), Outcome::Crashed(_)));
        // The thread is still there and takes the next job.
        let (tx, rx) = std::sync::mpsc::channel();
        queue.push(
            vec![Work::Call(Box::new(move |m| {
                let _ = tx.send(m.name().to_string());
            }))],
            None,
        );
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok());
        queue.close();
        thread.join().unwrap();
    }
}
