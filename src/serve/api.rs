//! The routes: request bodies (JSON, or multipart with `image` file parts), the records they
//! answer with, and the errors: `{"error": {"message", "type"}}` with a 4xx naming the problem.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::images::{self, Source};
use super::models::{embed_texts, Spec, Task};
use super::worker::{ImageJob, Outcome, Work};
use super::{AppState, Served};
use crate::generation::Overrides;
use crate::tasks::chat::ChatOptions;
use crate::tasks::classify::{default_threshold, Mode, Recognizer};
use crate::tasks::prompts;
use crate::tasks::Usage;

const PAGE: &str = include_str!("page.html");

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            message,
        )
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over {limit} bytes (--max-body-bytes)"),
        )
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.options.max_body_bytes;
    let api = Router::new()
        .route("/v1/caption", post(caption))
        .route("/v1/classify", post(classify))
        .route("/v1/label", post(label))
        .route("/v1/detect", post(detect))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/info", get(info))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint (see /openapi.json)",
            )
        })
        .layer(middleware::from_fn(track))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.options.request_timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal("the server hit a bug on this request (it keeps serving)")
                .into_response()
        }))
        .with_state(state)
}

/// Counts requests by endpoint and status, and times them.
async fn track(request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("glance_requests_total", "endpoint" => endpoint.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("glance_request_duration_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `Authorization: Bearer KEY` when the server has a key; compared in constant time.
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !same_secret(given.as_bytes(), key.as_bytes()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong API key: send Authorization: Bearer KEY",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Equal bytes, in time independent of where they differ: both are hashed first, so the
/// comparison is of fixed length too.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

// ---- bodies ----

/// A list of strings: a JSON array, or one string of comma-separated items (a form field).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum StringList {
    Many(Vec<String>),
    One(String),
}

impl StringList {
    fn items(self) -> Vec<String> {
        match self {
            StringList::Many(v) => v,
            StringList::One(s) => prompts::parse_label_arg(&s),
        }
    }
}

/// A request body parsed into `T`, and its images (JSON `images` strings, then multipart
/// `image` file parts).
async fn parse<T: DeserializeOwned>(
    state: &AppState,
    request: Request,
) -> ApiResult<(T, Vec<Source>)> {
    let limit = state.options.max_body_bytes;
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > limit as u64 {
            return Err(ApiError::too_large(limit));
        }
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (value, mut files) = if content_type.starts_with("multipart/form-data") {
        multipart_fields(request).await?
    } else {
        let body = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| ApiError::too_large(limit))?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
        (value, Vec::new())
    };
    let mut value = value;
    let mut sources = Vec::new();
    if let Some(object) = value.as_object_mut() {
        if let Some(list) = object.get("images") {
            let list = list.as_array().ok_or_else(|| {
                ApiError::invalid("images: expected an array of base64 strings or data: URLs")
            })?;
            for (i, item) in list.iter().enumerate() {
                let text = item.as_str().ok_or_else(|| {
                    ApiError::invalid(format!(
                        "images[{i}]: expected a string (base64 or a data: URL)"
                    ))
                })?;
                sources.push(Source::Text(text.to_string()));
            }
            object.remove("images");
        }
    } else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    sources.append(&mut files);
    let parsed = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        match path.as_str() {
            "." => ApiError::invalid(inner),
            _ => ApiError::invalid(format!("{path}: {inner}")),
        }
    })?;
    Ok((parsed, sources))
}

/// A multipart body: `image` parts are images; any other part is a field, read as JSON where it
/// is JSON (`5`, `true`, `["a","b"]`) and as a string otherwise.
async fn multipart_fields(request: Request) -> ApiResult<(Value, Vec<Source>)> {
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad(format!("bad multipart body: {e}")))?;
    let mut fields = Map::new();
    let mut files = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    e.body_text(),
                ))
            }
            Err(e) => return Err(ApiError::bad(format!("bad multipart body: {e}"))),
        };
        let name = field.name().unwrap_or_default().to_string();
        let data: Bytes = field.bytes().await.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.body_text(),
            ),
            _ => ApiError::bad(format!("bad multipart part {name}: {e}")),
        })?;
        if name == "image" || name == "images" {
            files.push(Source::Bytes(data.to_vec()));
            continue;
        }
        let text = String::from_utf8(data.to_vec())
            .map_err(|_| ApiError::bad(format!("multipart field {name} is not UTF-8 text")))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        fields.insert(name, value);
    }
    Ok((Value::Object(fields), files))
}

// ---- choosing a model ----

fn pick<'a>(state: &'a AppState, model: Option<&str>, task: Task) -> ApiResult<&'a Served> {
    let able: Vec<&Served> = state
        .models
        .iter()
        .filter(|s| s.tasks.contains(&task))
        .collect();
    match model {
        Some(name) => {
            let served = state
                .models
                .iter()
                .find(|s| s.id == name || s.model.name() == name)
                .ok_or_else(|| {
                    let ids: Vec<&str> = state.models.iter().map(|s| s.id.as_str()).collect();
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "model_not_found",
                        format!("model: {name} is not loaded (loaded: {})", ids.join(", ")),
                    )
                })?;
            if !served.tasks.contains(&task) {
                let tasks: Vec<&str> = served.tasks.iter().map(|t| t.name()).collect();
                return Err(ApiError::invalid(format!(
                    "model: {} cannot {}; it serves {}",
                    served.id,
                    task.name(),
                    tasks.join(", ")
                )));
            }
            Ok(served)
        }
        None => match able.as_slice() {
            [one] => Ok(one),
            [] => Err(ApiError::invalid(format!(
                "no loaded model can {}",
                task.name()
            ))),
            many => {
                let ids: Vec<&str> = many.iter().map(|s| s.id.as_str()).collect();
                Err(ApiError::invalid(format!(
                    "model: several loaded models can {}; name one ({})",
                    task.name(),
                    ids.join(", ")
                )))
            }
        },
    }
}

// ---- running images ----

/// One image's answer: its record (with `index`), and token counts for captions.
struct Answer {
    record: Value,
    usage: Option<Usage>,
}

/// Decodes the images off the model thread, queues them with `spec` and waits for their
/// records, in order. A bad image is an error record; the others go on.
async fn run_images(
    state: &AppState,
    served: &Served,
    spec: Spec,
    sources: Vec<Source>,
) -> ApiResult<Vec<Answer>> {
    run_images_streaming(state, served, spec, sources, None).await
}

/// [`run_images`], the first image's reply tokens sent to `stream` as they are generated.
async fn run_images_streaming(
    state: &AppState,
    served: &Served,
    spec: Spec,
    sources: Vec<Source>,
    mut stream: Option<mpsc::UnboundedSender<u32>>,
) -> ApiResult<Vec<Answer>> {
    let n = sources.len();
    if n == 0 {
        return Err(ApiError::invalid("images: give at least one image"));
    }
    if n > state.options.max_queue {
        return Err(ApiError::invalid(format!(
            "images: {n} images is more than this server queues at once ({}, --max-queue)",
            state.options.max_queue
        )));
    }
    // Queue places for every image, held until the answer is back (or the client has gone).
    let _permit = state
        .permits
        .clone()
        .try_acquire_many_owned(n as u32)
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "the queue is full ({} images waiting, --max-queue {}); retry shortly",
                    state.queued(),
                    state.options.max_queue
                ),
            )
        })?;
    let processor = served
        .model
        .processor(&spec)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    // A client that leaves while its images decode drops them with `arriving`; once queued,
    // the model thread drops them.
    let arriving = served.queue.expect(n);
    let fetch = state.options.url_fetch.clone();
    let max_pixels = state.options.max_image_pixels;
    let prepared = tokio::task::spawn_blocking(move || {
        sources
            .into_iter()
            .enumerate()
            .map(|(i, source)| {
                let bytes = images::bytes(source, &fetch)?;
                images::prepare(&bytes, i.to_string(), &processor, max_pixels)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ApiError::internal("decoding the images failed"))?;

    let spec = Arc::new(spec);
    let key: Arc<str> = spec.key().into();
    let mut waiting = Vec::with_capacity(n);
    let mut work = Vec::new();
    for item in prepared {
        match item {
            Ok(p) => {
                let (tx, rx) = oneshot::channel();
                let size = (p.width, p.height);
                work.push(Work::Image(ImageJob {
                    spec: spec.clone(),
                    key: key.clone(),
                    prepared: p,
                    reply: tx,
                    stream: stream.take(),
                }));
                waiting.push(Ok((rx, size)));
            }
            Err(message) => waiting.push(Err(message)),
        }
    }
    served.queue.push(work, Some(arriving));
    let mut answers = Vec::with_capacity(n);
    for (index, slot) in waiting.into_iter().enumerate() {
        let mut record = Map::new();
        record.insert("index".into(), index.into());
        let mut usage = None;
        match slot {
            Err(message) => {
                record.insert("error".into(), message.into());
            }
            Ok((rx, (width, height))) => match rx.await {
                Ok(Outcome::Fields(fields, u)) => {
                    let failed = fields.contains_key("error");
                    record.extend(fields);
                    if !failed {
                        record.insert("width".into(), width.into());
                        record.insert("height".into(), height.into());
                    }
                    usage = u;
                }
                Ok(Outcome::Rejected(message)) => return Err(ApiError::invalid(message)),
                Ok(Outcome::Crashed(message)) => {
                    return Err(ApiError::internal(format!(
                        "the model crashed on this request: {message}"
                    )))
                }
                Err(_) => return Err(ApiError::internal("the model thread stopped")),
            },
        }
        answers.push(Answer {
            record: Value::Object(record),
            usage,
        });
    }
    Ok(answers)
}

fn results(served: &Served, answers: Vec<Answer>) -> Response {
    let results: Vec<Value> = answers.into_iter().map(|a| a.record).collect();
    axum::Json(json!({"model": served.id, "results": results})).into_response()
}

/// The first forward pass, before the server says it is ready: a grey image through the
/// model's first task.
pub async fn warm_up(state: &AppState, served: &Served) -> anyhow::Result<()> {
    let spec = match served.tasks[0] {
        Task::Caption => {
            let short = Overrides {
                max_new_tokens: Some(2),
                num_beams: Some(1),
                ..Overrides::default()
            };
            default_caption_spec(served, None, None, short)
                .map_err(|e| anyhow::anyhow!(e.message))?
        }
        Task::Classify => {
            // A zero-shot model needs a label; a closed-set classifier has its own.
            let zero_shot = matches!(
                served.model,
                crate::serve::Model::Recognizer(Recognizer::ZeroShot(_))
            );
            Spec::Classify {
                labels: zero_shot.then(|| vec!["a photo".into()]),
                templates: if zero_shot {
                    vec!["{}".into()]
                } else {
                    Vec::new()
                },
                mode: Mode::Classify {
                    top_k: 1,
                    min_score: None,
                    multi_label: None,
                },
            }
        }
        _ => anyhow::bail!("no task to check"),
    };
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        64,
        64,
        image::Rgb([128, 128, 128]),
    ))
    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    let answers = run_images(state, served, spec, vec![Source::Bytes(png)])
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    match answers[0].record.get("error") {
        Some(e) => anyhow::bail!("{e}"),
        None => Ok(()),
    }
}

// ---- /v1/caption ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionRequest {
    model: Option<String>,
    /// A caption prefix (BLIP), a Florence-2 task token, or a chat model's instruction.
    prompt: Option<String>,
    /// Florence-2: caption, detailed, more-detailed, ocr.
    task: Option<String>,
    /// Chat models: the system message.
    system: Option<String>,
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    #[serde(default)]
    greedy: bool,
    max_new_tokens: Option<usize>,
    min_new_tokens: Option<usize>,
    num_beams: Option<usize>,
    length_penalty: Option<f32>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    num_return_sequences: Option<usize>,
    seed: Option<u64>,
}

impl CaptionRequest {
    fn generation(&self) -> Overrides {
        Overrides {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            do_sample: self.do_sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            num_return_sequences: Some(self.num_return_sequences.unwrap_or(1)),
            seed: Some(self.seed.unwrap_or(0)),
        }
    }
}

/// What `glance caption` builds from the same options: a chat model's instruction, or a
/// captioner's prefix / Florence-2 task.
fn default_caption_spec(
    served: &Served,
    prompt: Option<&str>,
    task: Option<&str>,
    generation: Overrides,
) -> ApiResult<Spec> {
    match &served.model {
        crate::serve::Model::Chat(_) => {
            if task.is_some() {
                return Err(ApiError::invalid(
                    "task: is for Florence-2; a chat model takes a prompt",
                ));
            }
            let instruction = prompts::choose_instruction(prompt, None)
                .map_err(|e| ApiError::invalid(format!("prompt: {e}")))?;
            Ok(Spec::Chat(ChatOptions {
                instruction,
                generation,
                quiet: true,
                ..ChatOptions::default()
            }))
        }
        crate::serve::Model::Captioner(m) => {
            let prompt = match (task, m.reads_tasks()) {
                (Some(_), _) if prompt.is_some() => {
                    return Err(ApiError::invalid("task: give a task or a prompt, not both"))
                }
                (Some(name), true) => Some(
                    crate::models::florence2::processor::task_token(
                        name,
                        crate::models::florence2::processor::CAPTION_TASKS,
                    )
                    .map_err(|e| ApiError::invalid(format!("task: {e}")))?
                    .to_string(),
                ),
                (Some(_), false) => {
                    return Err(ApiError::invalid(format!(
                        "task: is for Florence-2; {} takes a caption prefix as prompt",
                        served.id
                    )))
                }
                (None, _) => prompt.map(str::to_string),
            };
            Ok(Spec::Caption { prompt, generation })
        }
        crate::serve::Model::Recognizer(_) => Err(ApiError::invalid("model: cannot caption")),
    }
}

async fn caption(State(state): State<Arc<AppState>>, request: Request) -> ApiResult<Response> {
    let (body, sources): (CaptionRequest, _) = parse(&state, request).await?;
    let served = pick(&state, body.model.as_deref(), Task::Caption)?;
    let mut spec = default_caption_spec(
        served,
        body.prompt.as_deref(),
        body.task.as_deref(),
        body.generation(),
    )?;
    match &mut spec {
        Spec::Chat(options) => {
            options.system = body.system.clone();
            options.min_pixels = body.min_pixels;
            options.max_pixels = body.max_pixels;
            options.greedy = body.greedy;
        }
        _ => {
            let chat_only = [
                ("system", body.system.is_some()),
                ("min_pixels", body.min_pixels.is_some()),
                ("max_pixels", body.max_pixels.is_some()),
                ("greedy", body.greedy),
            ];
            if let Some((field, _)) = chat_only.iter().find(|(_, given)| *given) {
                return Err(ApiError::invalid(format!(
                    "{field}: is for chat models (Qwen3-VL); {} is a captioner",
                    served.id
                )));
            }
        }
    }
    let answers = run_images(&state, served, spec, sources).await?;
    Ok(results(served, answers))
}

// ---- /v1/classify and /v1/label ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    model: Option<String>,
    labels: Option<StringList>,
    template: Option<String>,
    templates: Option<Templates>,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    multi_label: bool,
    threshold: Option<f32>,
    min_score: Option<f32>,
}

fn default_top_k() -> usize {
    5
}

/// Templates: a list, or a shipped set's name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Templates {
    Many(Vec<String>),
    Named(String),
}

fn templates(template: Option<String>, set: Option<Templates>) -> ApiResult<Vec<String>> {
    let list = match (template, set) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "templates: give template or templates, not both",
            ))
        }
        (Some(t), None) => vec![t],
        (None, Some(Templates::Many(list))) => list,
        (None, Some(Templates::Named(name))) => prompts::shipped_templates(&name)
            .map_err(|e| ApiError::invalid(format!("templates: {e}")))?,
        (None, None) => return Ok(Vec::new()),
    };
    prompts::check_templates(&list, "templates")
        .map_err(|e| ApiError::invalid(format!("templates: {e}")))?;
    Ok(list)
}

fn recognizer(served: &Served) -> &Recognizer {
    match &served.model {
        crate::serve::Model::Recognizer(r) => r,
        _ => unreachable!("only recognizers classify"),
    }
}

fn labels_for(
    served: &Served,
    labels: Option<StringList>,
    field: &str,
) -> ApiResult<Option<Vec<String>>> {
    let labels = labels.map(StringList::items);
    match (recognizer(served), &labels) {
        (Recognizer::ZeroShot(_), None) => Err(ApiError::invalid(format!(
            "{field}: {} is a zero-shot model: give the classes",
            served.id
        ))),
        (Recognizer::ClosedSet(_), Some(_)) => Err(ApiError::invalid(format!(
            "{field}: {} classifies into its own classes; labels are for zero-shot models",
            served.id
        ))),
        (_, Some(list)) => {
            prompts::check_labels(list, field)
                .map_err(|e| ApiError::invalid(format!("{field}: {e}")))?;
            Ok(labels)
        }
        (_, None) => Ok(None),
    }
}

async fn classify(State(state): State<Arc<AppState>>, request: Request) -> ApiResult<Response> {
    let (body, sources): (ClassifyRequest, _) = parse(&state, request).await?;
    let served = pick(&state, body.model.as_deref(), Task::Classify)?;
    if body.top_k == 0 {
        return Err(ApiError::invalid("top_k: must be at least 1"));
    }
    if body.threshold.is_some() && !body.multi_label {
        return Err(ApiError::invalid("threshold: needs multi_label: true"));
    }
    let labels = labels_for(served, body.labels, "labels")?;
    let templates = templates(body.template, body.templates)?;
    let model = recognizer(served);
    let mode = Mode::Classify {
        top_k: body.top_k,
        min_score: body.min_score,
        multi_label: body
            .multi_label
            .then(|| body.threshold.unwrap_or_else(|| default_threshold(model))),
    };
    let spec = Spec::Classify {
        labels,
        templates,
        mode,
    };
    let answers = run_images(&state, served, spec, sources).await?;
    Ok(results(served, answers))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelRequest {
    model: Option<String>,
    /// A shipped vocabulary's name (everyday, coco).
    vocab: Option<String>,
    labels: Option<StringList>,
    template: Option<String>,
    templates: Option<Templates>,
    threshold: Option<f32>,
    max_tags: Option<usize>,
}

async fn label(State(state): State<Arc<AppState>>, request: Request) -> ApiResult<Response> {
    let (body, sources): (LabelRequest, _) = parse(&state, request).await?;
    let served = pick(&state, body.model.as_deref(), Task::Label)?;
    let model = recognizer(served);
    let tags = match (model, body.vocab, body.labels) {
        (_, Some(_), Some(_)) => {
            return Err(ApiError::invalid("vocab: give vocab or labels, not both"))
        }
        (_, None, Some(labels)) => labels_for(served, Some(labels), "labels")?,
        (Recognizer::ClosedSet(_), None, None) => None,
        (Recognizer::ClosedSet(_), Some(_), None) => {
            return Err(ApiError::invalid(format!(
                "vocab: {} tags with its own classes",
                served.id
            )))
        }
        (Recognizer::ZeroShot(_), vocab, None) => Some(
            prompts::shipped_vocab(vocab.as_deref().unwrap_or(prompts::DEFAULT_VOCAB))
                .map_err(|e| ApiError::invalid(format!("vocab: {e}")))?,
        ),
    };
    let max_tags = body
        .max_tags
        .unwrap_or(crate::tasks::classify::DEFAULT_MAX_TAGS);
    if max_tags == 0 {
        return Err(ApiError::invalid("max_tags: must be at least 1"));
    }
    let mode = Mode::Label {
        threshold: body.threshold.unwrap_or_else(|| default_threshold(model)),
        max_tags,
    };
    let templates = templates(body.template, body.templates)?;
    let spec = Spec::Classify {
        labels: tags,
        templates,
        mode,
    };
    let answers = run_images(&state, served, spec, sources).await?;
    Ok(results(served, answers))
}

// ---- /v1/detect ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectRequest {
    model: Option<String>,
    /// od, dense-region, grounding, ocr-region.
    #[serde(default = "default_detect_task")]
    task: String,
    /// Grounding's phrases.
    labels: Option<StringList>,
    max_new_tokens: Option<usize>,
    min_new_tokens: Option<usize>,
    num_beams: Option<usize>,
}

fn default_detect_task() -> String {
    "od".into()
}

async fn detect(State(state): State<Arc<AppState>>, request: Request) -> ApiResult<Response> {
    let (body, sources): (DetectRequest, _) = parse(&state, request).await?;
    let served = pick(&state, body.model.as_deref(), Task::Detect)?;
    crate::models::florence2::processor::task_token(
        &body.task,
        crate::models::florence2::processor::DETECT_TASKS,
    )
    .map_err(|e| ApiError::invalid(format!("task: {e}")))?;
    let phrases = body.labels.map(StringList::items);
    let generation = Overrides {
        max_new_tokens: body.max_new_tokens,
        min_new_tokens: body.min_new_tokens,
        num_beams: body.num_beams,
        num_return_sequences: Some(1),
        seed: Some(0),
        ..Overrides::default()
    };
    let spec = Spec::Detect {
        task: body.task,
        phrases,
        generation,
    };
    let answers = run_images(&state, served, spec, sources).await?;
    Ok(results(served, answers))
}

// ---- /v1/embeddings ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: EmbedInput,
    /// Only "float".
    encoding_format: Option<String>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(EmbedItem),
    Many(Vec<EmbedItem>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbedItem {
    Text(String),
    Image { image: String },
}

async fn embeddings(State(state): State<Arc<AppState>>, request: Request) -> ApiResult<Response> {
    let (body, files): (EmbeddingsRequest, _) = parse(&state, request).await?;
    let _ = body.user;
    if body
        .encoding_format
        .as_deref()
        .is_some_and(|f| f != "float")
    {
        return Err(ApiError::invalid(
            "encoding_format: only \"float\" is served",
        ));
    }
    let served = pick(&state, body.model.as_deref(), Task::Embeddings)?;
    let items = match body.input {
        EmbedInput::One(item) => vec![item],
        EmbedInput::Many(items) => items,
    };
    if items.is_empty() && files.is_empty() {
        return Err(ApiError::invalid("input: give at least one text or image"));
    }
    // Texts in one call on the model thread; images through the batcher.
    let mut texts = Vec::new();
    let mut images = Vec::new();
    let mut order = Vec::new();
    for item in items {
        match item {
            EmbedItem::Text(t) => {
                order.push((false, texts.len()));
                texts.push(t);
            }
            EmbedItem::Image { image } => {
                order.push((true, images.len()));
                images.push(Source::Text(image));
            }
        }
    }
    for file in files {
        order.push((true, images.len()));
        images.push(file);
    }
    let mut text_rows = Vec::new();
    let mut tokens = 0;
    if !texts.is_empty() {
        let (tx, rx) = oneshot::channel();
        let call_texts = texts.clone();
        served.queue.push(
            vec![Work::Call(Box::new(move |model| {
                let out = match model.image_text() {
                    Some(m) => crate::kernels::on_compute_pool(|| {
                        let n: usize = m.tokenize(&call_texts)?.iter().map(Vec::len).sum();
                        Ok((embed_texts(m, &call_texts)?, n))
                    }),
                    None => Err(crate::Error::Options("not an image-text model".into())),
                };
                let _ = tx.send(out.map_err(|e: crate::Error| e.to_string()));
            }))],
            None,
        );
        let (rows, n) = rx
            .await
            .map_err(|_| ApiError::internal("the model thread stopped"))?
            .map_err(|e| ApiError::invalid(format!("input: {e}")))?;
        text_rows = rows;
        tokens = n;
    }
    let image_rows = match images.is_empty() {
        true => Vec::new(),
        false => run_images(&state, served, Spec::Embed, images).await?,
    };
    let mut data = Vec::with_capacity(order.len());
    for (index, (is_image, k)) in order.into_iter().enumerate() {
        let embedding = match is_image {
            false => Value::from(text_rows[k].clone()),
            true => match image_rows[k].record.get("embedding") {
                Some(e) => e.clone(),
                None => {
                    let why = image_rows[k]
                        .record
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("failed");
                    return Err(ApiError::invalid(format!("input[{index}]: {why}")));
                }
            },
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": served.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

// ---- /v1/chat/completions ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<Value>,
    n: Option<usize>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: ChatContent,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ChatContent {
    Text(String),
    Parts(Vec<ChatPart>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ChatPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageUrl {
    url: String,
    detail: Option<String>,
}

/// The system message, the user's text and the image of a one-turn conversation.
fn read_messages(messages: Vec<ChatMessage>) -> ApiResult<(Option<String>, String, Source)> {
    let mut system = None;
    let mut text = Vec::new();
    let mut image = None;
    let mut users = 0;
    for (i, m) in messages.into_iter().enumerate() {
        let _ = m.name;
        let parts = match m.content {
            ChatContent::Text(t) => vec![ChatPart::Text { text: t }],
            ChatContent::Parts(p) => p,
        };
        match m.role.as_str() {
            "system" | "developer" => {
                let joined: Vec<String> = parts
                    .into_iter()
                    .map(|p| match p {
                        ChatPart::Text { text } => Ok(text),
                        ChatPart::ImageUrl { .. } => Err(ApiError::invalid(format!(
                            "messages[{i}].content: a system message cannot hold an image"
                        ))),
                    })
                    .collect::<ApiResult<_>>()?;
                system = Some(joined.join("\n"));
            }
            "user" => {
                users += 1;
                if users > 1 {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}]: one user turn per request is served (an image and its instruction)"
                    )));
                }
                for (j, part) in parts.into_iter().enumerate() {
                    match part {
                        ChatPart::Text { text: t } => text.push(t),
                        ChatPart::ImageUrl { image_url } => {
                            let _ = image_url.detail;
                            if image.is_some() {
                                return Err(ApiError::invalid(format!(
                                    "messages[{i}].content[{j}]: one image per request is served"
                                )));
                            }
                            image = Some(Source::Text(image_url.url));
                        }
                    }
                }
            }
            "assistant" => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}]: earlier assistant turns are not served; send one user turn with an image"
                )))
            }
            other => {
                return Err(ApiError::invalid(format!("messages[{i}].role: unknown role {other}")))
            }
        }
    }
    let image = image.ok_or_else(|| {
        ApiError::invalid(
            "messages: the user turn needs an image_url part (data:image/...;base64,...)",
        )
    })?;
    Ok((system, text.join("\n"), image))
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> ApiResult<Response> {
    let (body, files): (ChatRequest, _) = parse(&state, request).await?;
    let _ = (&body.stream_options, &body.user);
    if !files.is_empty() {
        return Err(ApiError::invalid(
            "image: send the image as an image_url part of a message",
        ));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n: only 1 choice per request is served"));
    }
    let served = pick(&state, body.model.as_deref(), Task::Chat)?;
    let (system, text, image) = read_messages(body.messages)?;
    let max_new = body.max_completion_tokens.or(body.max_tokens);
    // OpenAI's temperature 0 is greedy decoding; a positive one samples.
    let sample = body.temperature.map(|t| t > 0.0);
    let mut generation = Overrides {
        max_new_tokens: max_new,
        top_p: body.top_p,
        seed: body.seed,
        ..Overrides::default()
    };
    if sample == Some(true) {
        generation.do_sample = Some(true);
        generation.temperature = body.temperature;
    }
    let spec = match &served.model {
        crate::serve::Model::Chat(_) => {
            let instruction = match text.trim() {
                "" => prompts::choose_instruction(None, None)
                    .map_err(|e| ApiError::invalid(e.to_string()))?,
                t => t.to_string(),
            };
            Spec::Chat(ChatOptions {
                instruction,
                system,
                generation,
                greedy: sample == Some(false),
                quiet: true,
                ..ChatOptions::default()
            })
        }
        _ => {
            if system.is_some() {
                return Err(ApiError::invalid(format!(
                    "messages: {} is a captioner and takes no system message",
                    served.id
                )));
            }
            generation.num_return_sequences = Some(1);
            generation.seed = Some(body.seed.unwrap_or(0));
            if sample == Some(false) {
                generation.do_sample = Some(false);
            }
            let prompt = (!text.trim().is_empty()).then_some(text.as_str());
            default_caption_spec(served, prompt, None, generation)?
        }
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let chunks = Chunks {
        id: format!("chatcmpl-{created}{:x}", rand_suffix()),
        created,
        model: served.id.clone(),
    };
    if body.stream {
        return Ok(stream_reply(state.clone(), served, spec, image, chunks));
    }
    let answers = run_images(&state, served, spec, vec![image]).await?;
    let (content, usage) = chat_answer(&answers[0])?;
    Ok(axum::Json(json!({
        "id": chunks.id,
        "object": "chat.completion",
        "created": chunks.created,
        "model": chunks.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason(&usage),
        }],
        "usage": usage_json(&usage),
    }))
    .into_response())
}

/// The reply's text and token counts, or the image's error.
fn chat_answer(answer: &Answer) -> ApiResult<(String, Usage)> {
    if let Some(error) = answer.record.get("error").and_then(Value::as_str) {
        return Err(ApiError::invalid(format!("messages: the image: {error}")));
    }
    let content = answer
        .record
        .get("caption")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((content, answer.usage.unwrap_or_default()))
}

fn finish_reason(usage: &Usage) -> &'static str {
    if usage.truncated {
        "length"
    } else {
        "stop"
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// Server-sent `chat.completion.chunk` events of one completion.
struct Chunks {
    id: String,
    created: u64,
    model: String,
}

impl Chunks {
    fn event(&self, delta: Value, finish: Value, usage: Option<Value>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        format!("data: {c}\n\n")
    }
}

/// Stops a request's work when its stream is dropped (the client left).
struct AbortOnDrop(tokio::task::JoinHandle<ApiResult<Vec<Answer>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Phase {
    Start,
    Tokens,
    Final,
    Done,
}

/// A streamed completion: the role, a content delta as each token turns into text, the
/// finish reason with usage, then `[DONE]`, as OpenAI streams them. Beam search (a captioner's
/// default where its checkpoint asks for beams) has no tokens until the end: its reply comes as
/// one delta.
struct Streaming {
    phase: Phase,
    tokens_rx: mpsc::UnboundedReceiver<u32>,
    task: AbortOnDrop,
    model: crate::serve::Model,
    /// Decoded in front of the new tokens: a captioner's caption includes its prompt.
    prefix: Vec<u32>,
    tokens: Vec<u32>,
    sent: String,
    chunks: Chunks,
}

impl Streaming {
    /// The text the new tokens add, once it is whole (no half a UTF-8 character, no
    /// trailing space that the final text trims).
    fn delta(&mut self) -> Option<String> {
        let ids: Vec<u32> = self.prefix.iter().chain(&self.tokens).copied().collect();
        let text = self.model.tokenizer()?.decode(&ids, true).ok()?;
        let text = text.trim();
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.sent.len()
            || !text.starts_with(&self.sent)
        {
            return None;
        }
        let delta = text[self.sent.len()..].to_string();
        self.sent = text.to_string();
        Some(delta)
    }

    async fn finish(&mut self) -> String {
        let result = match (&mut self.task.0).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::internal("the request stopped")),
        };
        let answer = result.and_then(|answers| chat_answer(&answers[0]));
        let mut events = String::new();
        match answer {
            Ok((content, usage)) => {
                if let Some(rest) = content.strip_prefix(self.sent.as_str()) {
                    if !rest.is_empty() {
                        events.push_str(&self.chunks.event(
                            json!({"content": rest}),
                            Value::Null,
                            None,
                        ));
                    }
                }
                events.push_str(&self.chunks.event(
                    json!({}),
                    finish_reason(&usage).into(),
                    Some(usage_json(&usage)),
                ));
            }
            Err(e) => {
                let error = json!({"error": {"message": e.message, "type": e.kind}});
                events.push_str(&format!("data: {error}\n\n"));
            }
        }
        events.push_str("data: [DONE]\n\n");
        events
    }
}

fn stream_reply(
    state: Arc<AppState>,
    served: &Served,
    spec: Spec,
    image: Source,
    chunks: Chunks,
) -> Response {
    let index = state
        .models
        .iter()
        .position(|s| std::ptr::eq(s, served))
        .expect("a loaded model");
    let prefix = match (&served.model, &spec) {
        (crate::serve::Model::Captioner(m), Spec::Caption { prompt, .. }) => {
            m.prompt_ids(prompt.as_deref()).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let model = served.model.clone();
    let (tx, tokens_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let served = &state.models[index];
        run_images_streaming(&state, served, spec, vec![image], Some(tx)).await
    });
    let streaming = Streaming {
        phase: Phase::Start,
        tokens_rx,
        task: AbortOnDrop(task),
        model,
        prefix,
        tokens: Vec::new(),
        sent: String::new(),
        chunks,
    };
    let events = futures_util::stream::unfold(streaming, |mut s| async move {
        loop {
            match s.phase {
                Phase::Start => {
                    s.phase = Phase::Tokens;
                    let role = json!({"role": "assistant", "content": ""});
                    let event = s.chunks.event(role, Value::Null, None);
                    return Some((Ok::<_, std::convert::Infallible>(event), s));
                }
                Phase::Tokens => match s.tokens_rx.recv().await {
                    Some(token) => {
                        s.tokens.push(token);
                        if let Some(delta) = s.delta() {
                            let event =
                                s.chunks.event(json!({"content": delta}), Value::Null, None);
                            return Some((Ok(event), s));
                        }
                    }
                    None => s.phase = Phase::Final,
                },
                Phase::Final => {
                    s.phase = Phase::Done;
                    let events = s.finish().await;
                    return Some((Ok(events), s));
                }
                Phase::Done => return None,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .expect("a valid response")
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is randomly keyed: its hash of nothing is a random number.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        & 0xffff_ffff
}

// ---- /health, /info, /metrics, /openapi.json ----

async fn health(State(state): State<Arc<AppState>>) -> Response {
    // The server listens only once every model has run a forward pass.
    match state.models.iter().all(Served::alive) {
        true => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        false => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable"})),
        )
            .into_response(),
    }
}

async fn info(State(state): State<Arc<AppState>>) -> Response {
    let models: Vec<Value> = state
        .models
        .iter()
        .map(|s| {
            let tasks: Vec<&str> = s.tasks.iter().map(|t| t.name()).collect();
            json!({"id": s.id, "name": s.model.name(), "tasks": tasks})
        })
        .collect();
    let o = &state.options;
    axum::Json(json!({
        "name": "glance",
        "version": env!("CARGO_PKG_VERSION"),
        "models": models,
        "limits": {
            "max_batch_size": o.max_batch_size,
            "max_queue": o.max_queue,
            "max_body_bytes": o.max_body_bytes,
            "max_image_pixels": o.max_image_pixels,
            "allow_url_fetch": o.url_fetch.allowed,
            "request_timeout_seconds": o.request_timeout.as_secs(),
        },
        "queue": state.queued(),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "auth": o.api_key.is_some(),
    }))
    .into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    metrics::gauge!("glance_queue_images").set(state.queued() as f64);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    (headers, state.metrics.render()).into_response()
}

async fn openapi() -> Response {
    axum::Json(super::openapi::document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"key", b"key"));
        assert!(!same_secret(b"key", b"kez"));
        assert!(!same_secret(b"", b"key"));
    }

    #[test]
    fn one_user_turn_with_an_image_is_read() {
        let messages: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
            ]}
        ]))
        .unwrap();
        let (system, text, image) = read_messages(messages).unwrap();
        assert_eq!(system.as_deref(), Some("Be brief."));
        assert_eq!(text, "What is this?");
        assert!(matches!(image, Source::Text(u) if u.starts_with("data:")));
        let two_images: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "aGk="}},
                {"type": "image_url", "image_url": {"url": "aGk="}}
            ]}
        ]))
        .unwrap();
        assert!(read_messages(two_images)
            .unwrap_err()
            .message
            .contains("one image"));
    }
}
