//! `glance serve` on 127.0.0.1 with the tiny models: every endpoint answers what the CLI writes
//! for the same images and options; concurrent requests share batches and still get the CLI's
//! answers; a full queue is a 429, a big body a 413, bad JSON a 400, bad fields a 422, a missing
//! key a 401; a client that leaves loses its queued images; SIGTERM lets in-flight requests finish.
//!
//! `GLANCE_SERVE_BATCH_DELAY_MS` makes the model thread pause before each batch, so that queues
//! fill while a test watches (the tiny models are otherwise too quick to be caught busy).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::server::{agent, base64_file, Server};
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    common::repo()
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .to_string()
}

/// Four real photos (small ones, so the tiny Florence-2 fits them) in name order.
fn photos() -> Vec<PathBuf> {
    let dir = common::shared_images();
    ["chelsea.png", "coffee.png", "camera.png", "astronaut.png"]
        .iter()
        .map(|n| dir.join(n))
        .collect()
}

fn cli_records(args: &[&str], images: &[PathBuf]) -> Vec<Value> {
    let out = common::glance()
        .args(args)
        .arg("-q")
        .args(images)
        .output()
        .unwrap();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = common::stdout_records(&out);
    // Records come in input order; key them by file to be sure.
    let by_file: HashMap<String, Value> = records
        .into_iter()
        .map(|r| (r["file"].as_str().unwrap().to_string(), r))
        .collect();
    images
        .iter()
        .map(|p| by_file[&p.to_string_lossy().to_string()].clone())
        .collect()
}

/// A record without its `file` / `index`: what both sides must agree on.
fn fields(record: &Value) -> Value {
    let mut r = record.clone();
    let map = r.as_object_mut().unwrap();
    map.remove("file");
    map.remove("index");
    r
}

fn images_json(paths: &[PathBuf]) -> Vec<Value> {
    paths.iter().map(|p| Value::from(base64_file(p))).collect()
}

fn assert_same(server: &[Value], cli: &[Value], what: &str) {
    assert_eq!(server.len(), cli.len(), "{what}: record count");
    for (i, (s, c)) in server.iter().zip(cli).enumerate() {
        assert_eq!(s["index"], json!(i), "{what}: records in order");
        assert_eq!(fields(s), fields(c), "{what}: image {i}");
    }
}

#[test]
fn every_endpoint_answers_what_the_cli_writes() {
    let (blip, clip, florence) = (
        fixture("blip-tiny"),
        fixture("clip-tiny"),
        fixture("florence2-tiny"),
    );
    let server = Server::start(&["-m", &blip, "-m", &clip, "-m", &florence], &[]);
    let photos = photos();
    let mut images = images_json(&photos);
    // A broken image is an error record; the others still succeed.
    images.push(Value::from("bm90IGFuIGltYWdl"));
    let broken = common::repo().join("target/serve-test-broken.png");
    std::fs::write(&broken, b"not an image").unwrap();
    let mut files = photos.clone();
    files.push(broken.clone());

    // Captions, greedy and with beams.
    for extra in [vec![], vec!["--num-beams", "3", "--max-new-tokens", "12"]] {
        let mut body = json!({"model": blip, "images": images});
        if !extra.is_empty() {
            body["num_beams"] = json!(3);
            body["max_new_tokens"] = json!(12);
        }
        let (status, answer) = server.post("/v1/caption", &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model"], json!(blip));
        let mut args = vec!["caption", "-m", &blip];
        args.extend(extra.iter());
        let cli = cli_records(&args, &files);
        assert_same(answer["results"].as_array().unwrap(), &cli, "caption");
        assert!(answer["results"][4]["error"]
            .as_str()
            .unwrap()
            .contains("not an image"));
    }

    // Zero-shot classes, with the model named by its directory and found without a name
    // (the only classifier loaded).
    let (status, answer) = server.post(
        "/v1/classify",
        &json!({"images": images, "labels": ["a cat", "a cup of coffee", "a camera", "a person"], "top_k": 3}),
    );
    assert_eq!(status, 200, "{answer}");
    let cli = cli_records(
        &[
            "classify",
            "-m",
            &clip,
            "--labels",
            "a cat,a cup of coffee,a camera,a person",
            "--top-k",
            "3",
        ],
        &files,
    );
    assert_same(answer["results"].as_array().unwrap(), &cli, "classify");

    // Tags from the shipped vocabulary.
    let (status, answer) = server.post("/v1/label", &json!({"images": images, "max_tags": 4}));
    assert_eq!(status, 200, "{answer}");
    let cli = cli_records(&["label", "-m", &clip, "--max-tags", "4"], &files);
    assert_same(answer["results"].as_array().unwrap(), &cli, "label");

    // Boxes.
    let (status, answer) = server.post(
        "/v1/detect",
        &json!({"images": images, "max_new_tokens": 24}),
    );
    assert_eq!(status, 200, "{answer}");
    let cli = cli_records(
        &["detect", "-m", &florence, "--max-new-tokens", "24"],
        &files,
    );
    assert_same(answer["results"].as_array().unwrap(), &cli, "detect");
    assert!(cli[..4].iter().all(|r| r["detections"].is_array()));

    // Chat with a captioner: the text is the caption's prefix.
    let data_url = format!("data:image/png;base64,{}", base64_file(&photos[0]));
    let (status, answer) = server.post(
        "/v1/chat/completions",
        &json!({"model": blip, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a picture of"},
            {"type": "image_url", "image_url": {"url": data_url}}
        ]}]}),
    );
    assert_eq!(status, 200, "{answer}");
    let cli = cli_records(
        &["caption", "-m", &blip, "--prompt", "a picture of"],
        &photos[..1],
    );
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        cli[0]["caption"]
    );
    assert_eq!(answer["object"], "chat.completion");
    let usage = &answer["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    // Streamed, the caption arrives in pieces that join to the same text.
    let mut response = agent()
        .post(&server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(
            json!({"model": blip, "stream": true, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a picture of"},
                {"type": "image_url", "image_url": {"url": data_url}}
            ]}]})
            .to_string(),
        )
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let deltas: Vec<String> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let chunk: Value = serde_json::from_str(e).unwrap();
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(deltas.concat(), cli[0]["caption"].as_str().unwrap());
    assert!(deltas.len() > 1, "{deltas:?}");
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Embeddings: unit vectors whose cosines rank the labels as classify does with the bare
    // label as its prompt.
    let labels = ["a cat", "a cup of coffee", "a camera", "a person"];
    let mut input: Vec<Value> = labels.iter().map(|l| json!(l)).collect();
    input.push(json!({"image": images[1]}));
    let (status, answer) = server.post("/v1/embeddings", &json!({"model": clip, "input": input}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "list");
    let vectors: Vec<Vec<f64>> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], json!(i));
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    for v in &vectors {
        let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let image = &vectors[4];
    let mut cosines: Vec<(usize, f64)> = vectors[..4]
        .iter()
        .map(|t| t.iter().zip(image).map(|(a, b)| a * b).sum())
        .enumerate()
        .collect();
    cosines.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (_, answer) = server.post(
        "/v1/classify",
        &json!({"images": [images[1]], "labels": labels, "template": "{}", "top_k": 4}),
    );
    let ranked: Vec<&str> = answer["results"][0]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    let by_cosine: Vec<&str> = cosines.iter().map(|(i, _)| labels[*i]).collect();
    assert_eq!(ranked, by_cosine);

    // A multipart upload answers as the JSON one does.
    let boundary = "glance-test-boundary";
    let mut form = Vec::new();
    write!(form, "--{boundary}\r\nContent-Disposition: form-data; name=\"labels\"\r\n\r\na cat, a camera\r\n").unwrap();
    write!(form, "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\nContent-Type: image/png\r\n\r\n").unwrap();
    form.extend(std::fs::read(&photos[0]).unwrap());
    write!(form, "\r\n--{boundary}--\r\n").unwrap();
    let mut response = agent()
        .post(&server.url("/v1/classify"))
        .header(
            "content-type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send(&form[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let multipart: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let (_, json_answer) = server.post(
        "/v1/classify",
        &json!({"images": [images[0]], "labels": "a cat, a camera"}),
    );
    assert_eq!(multipart["results"], json_answer["results"]);

    // /health, /info, /openapi.json, the page; metrics moved.
    assert_eq!(server.get("/health").0, 200);
    let (_, info) = server.get("/info");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["models"].as_array().unwrap().len(), 3);
    assert_eq!(
        info["models"][2]["tasks"],
        json!(["caption", "chat", "detect"])
    );
    let (status, openapi) = server.get("/openapi.json");
    assert_eq!(status, 200);
    assert!(openapi.contains("/v1/chat/completions"));
    let (status, page) = server.get("/");
    assert!(status == 200 && page.contains("<title>glance</title>"));
    assert_eq!(
        server.metric("glance_requests_total{endpoint=\"/v1/caption\",status=\"200\"}"),
        2.0
    );
    assert!(server.metric("glance_images_total") >= 20.0);
    let _ = std::fs::remove_file(broken);
}

#[test]
fn chat_completions_go_through_the_chat_template() {
    let qwen = fixture("qwen3-vl-tiny");
    let server = Server::start(&["-m", &qwen], &[]);
    let photo = &photos()[0];
    let data_url = format!("data:image/png;base64,{}", base64_file(photo));
    let body = json!({
        "messages": [
            {"role": "system", "content": "You describe images."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url}},
                {"type": "text", "text": "Describe this image."}
            ]}
        ],
        "temperature": 0,
        "max_tokens": 8
    });
    let (status, answer) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{answer}");
    let cli = cli_records(
        &[
            "caption",
            "-m",
            &qwen,
            "--prompt",
            "Describe this image.",
            "--system",
            "You describe images.",
            "--greedy",
            "--max-new-tokens",
            "8",
        ],
        std::slice::from_ref(photo),
    );
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, cli[0]["caption"].as_str().unwrap());
    let finish = answer["choices"][0]["finish_reason"].as_str().unwrap();
    let truncated = cli[0]["truncated"].as_bool().unwrap();
    assert_eq!(finish, if truncated { "length" } else { "stop" });
    if truncated {
        assert_eq!(answer["usage"]["completion_tokens"], json!(8));
    }
    // The image's tokens are part of the prompt.
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 10);

    // The same as server-sent events.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut response = agent()
        .post(&server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(streamed.to_string())
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap(),
        "text/event-stream"
    );
    let text = response.body_mut().read_to_string().unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let deltas: Vec<String> = events[..events.len() - 1]
        .iter()
        .map(|e| {
            let chunk: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(chunk["object"], "chat.completion.chunk");
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(deltas.concat(), content);
    // Token by token: more than one piece for a reply of several words.
    if content.split_whitespace().count() > 2 {
        assert!(deltas.len() > 2, "{deltas:?}");
    }

    // One user turn with one image is what is served; anything else is named.
    let (status, answer) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "no image here"}]}),
    );
    assert_eq!(status, 422);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("image_url"));
    let (status, answer) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}),
    );
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[0]"),
        "{answer}"
    );
}

#[test]
fn concurrent_requests_share_batches_and_get_the_clis_answers() {
    let blip = fixture("blip-tiny");
    let server = Server::start(
        &["-m", &blip, "--max-batch-size", "8"],
        &[("GLANCE_SERVE_BATCH_DELAY_MS", "500")],
    );
    let photos = photos();
    let cli = cli_records(&["caption", "-m", &blip], &photos);
    let batches_before = server.metric("glance_batch_size_count");
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = photos
            .iter()
            .map(|p| {
                let server = &server;
                scope.spawn(move || {
                    let (status, answer) =
                        server.post("/v1/caption", &json!({"images": [base64_file(p)]}));
                    assert_eq!(status, 200, "{answer}");
                    answer["results"][0].clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (answer, cli) in answers.iter().zip(&cli) {
        assert_eq!(fields(answer), fields(cli));
    }
    let batches = server.metric("glance_batch_size_count") - batches_before;
    assert!(
        batches < 4.0,
        "4 requests ran in {batches} batches: none shared"
    );
}

/// Polls `/info` until `queue` images are waiting or running.
fn wait_for_queue(server: &Server, queue: u64, key: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut request = agent().get(&server.url("/info"));
        if let Some(k) = key {
            request = request.header("authorization", &format!("Bearer {k}"));
        }
        let info: Value =
            serde_json::from_str(&request.call().unwrap().body_mut().read_to_string().unwrap())
                .unwrap();
        if info["queue"].as_u64() == Some(queue) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never reached {queue}: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn small_png(w: u32, h: u32) -> String {
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([200, 30, 30])))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(png)
}

#[test]
fn limits_and_bad_requests_get_named_4xx_answers() {
    let clip = fixture("clip-tiny");
    let key = "s3cret";
    let server = Server::start(
        &[
            "-m",
            &clip,
            "--max-queue",
            "2",
            "--max-body-bytes",
            "60000",
            "--api-key",
            key,
            "--max-image-pixels",
            "5000",
        ],
        &[("GLANCE_SERVE_BATCH_DELAY_MS", "1500")],
    );
    let body = json!({"images": [small_png(40, 40)], "labels": ["red", "blue"]});

    // The key: none, a wrong one, the right one; /health needs none.
    assert_eq!(server.post("/v1/classify", &body).0, 401);
    let (status, answer) = server.post_with("/v1/classify", &body, Some("wrong"));
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["type"], "authentication_error");
    assert_eq!(server.get("/health").0, 200);
    let (status, answer) = server.post_with("/v1/classify", &body, Some(key));
    assert_eq!(status, 200, "{answer}");
    assert!(answer["results"][0]["label"].is_string(), "{answer}");

    // Bodies: too big, not JSON, unknown or mistyped fields, no images, too many.
    let big = json!({"images": ["A".repeat(70_000)], "labels": ["a"]});
    let (status, answer) = server.post_with("/v1/classify", &big, Some(key));
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("60000"));
    let mut response = agent()
        .post(&server.url("/v1/classify"))
        .header("authorization", &format!("Bearer {key}"))
        .send("{\"images\": [")
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    for (bad, field) in [
        (json!({"images": [], "labels": ["a"], "topk": 3}), "topk"),
        (
            json!({"images": [], "labels": ["a"], "top_k": "three"}),
            "top_k",
        ),
        (json!({"images": [7], "labels": ["a"]}), "images[0]"),
        (json!({"images": [], "labels": ["a"]}), "images"),
        (
            json!({"images": ["x", "y", "z"], "labels": ["a"]}),
            "images",
        ),
        (json!({"images": ["x"]}), "labels"),
        (
            json!({"images": ["x"], "labels": ["a"], "model": "nope"}),
            "model",
        ),
    ] {
        let (status, answer) = server.post_with("/v1/classify", &bad, Some(key));
        assert!(status == 422 || status == 404, "{bad}: {status} {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{bad}: {message}");
    }

    // An image over --max-image-pixels is an error record; the request still succeeds.
    let (status, answer) = server.post_with(
        "/v1/classify",
        &json!({"images": [small_png(100, 100), small_png(20, 20)], "labels": ["red", "blue"]}),
        Some(key),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer["results"][0]["error"]
        .as_str()
        .unwrap()
        .contains("above the limit of 5000"));
    assert!(answer["results"][1]["label"].is_string(), "{answer}");

    // A full queue: two images in flight fill it; the next request is turned away at once.
    std::thread::scope(|scope| {
        let filling = scope.spawn(|| {
            server.post_with(
                "/v1/classify",
                &json!({"images": [small_png(30, 30), small_png(31, 31)], "labels": ["red", "blue"]}),
                Some(key),
            )
        });
        wait_for_queue(&server, 2, Some(key));
        let started = Instant::now();
        let mut response = agent()
            .post(&server.url("/v1/classify"))
            .header("authorization", &format!("Bearer {key}"))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(response.status().as_u16(), 429);
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "a 429 does not wait"
        );
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
        let answer: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(answer["error"]["type"], "overloaded");
        let (status, _) = filling.join().unwrap();
        assert_eq!(status, 200);
    });
    // Served again once there is room.
    assert_eq!(server.post_with("/v1/classify", &body, Some(key)).0, 200);
    let metrics = agent()
        .get(&server.url("/metrics"))
        .header("authorization", &format!("Bearer {key}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("glance_requests_total{endpoint=\"/v1/classify\",status=\"429\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("glance_requests_total{endpoint=\"/v1/classify\",status=\"401\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("glance_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[test]
fn a_client_that_leaves_has_its_queued_images_dropped() {
    let clip = fixture("clip-tiny");
    let server = Server::start(
        &["-m", &clip, "--max-batch-size", "1"],
        &[("GLANCE_SERVE_BATCH_DELAY_MS", "1000")],
    );
    let body = |n: usize| {
        json!({"images": vec![small_png(30, 30); n], "labels": ["red", "blue"]}).to_string()
    };
    let images_before = server.metric("glance_images_total");
    std::thread::scope(|scope| {
        // One image keeps the model busy for a second.
        let busy =
            scope.spawn(|| server.post("/v1/classify", &serde_json::from_str(&body(1)).unwrap()));
        wait_for_queue(&server, 1, None);
        // Three more queue behind it; their client hangs up before they are reached.
        let address = server.base.trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let payload = body(3);
        write!(
            stream,
            "POST /v1/classify HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .unwrap();
        wait_for_queue(&server, 4, None);
        drop(stream);
        assert_eq!(busy.join().unwrap().0, 200);
    });
    wait_for_queue(&server, 0, None);
    // Ran: the warm-up and the busy image; the three were dropped unrun.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("glance_images_dropped_total") < 3.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.metric("glance_images_dropped_total"), 3.0);
    assert_eq!(server.metric("glance_images_total") - images_before, 1.0);
    // And the server goes on.
    assert_eq!(
        server
            .post("/v1/classify", &serde_json::from_str(&body(1)).unwrap())
            .0,
        200
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let blip = fixture("blip-tiny");
    let mut server = Server::start(&["-m", &blip], &[("GLANCE_SERVE_BATCH_DELAY_MS", "1500")]);
    let photo = photos()[0].clone();
    let expected = cli_records(&["caption", "-m", &blip], std::slice::from_ref(&photo));
    let answer = std::thread::scope(|scope| {
        let request =
            scope.spawn(|| server.post("/v1/caption", &json!({"images": [base64_file(&photo)]})));
        wait_for_queue(&server, 1, None);
        let pid = server.child.id() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        request.join().unwrap()
    });
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(fields(&answer.1["results"][0]), fields(&expected[0]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let address = server.base.trim_start_matches("http://").to_string();
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "still accepting after exit"
    );
}
