//! A load generator for `glance serve`: N clients, each sending requests back to back over one
//! keep-alive connection, for a number of requests in all; prints throughput, latency
//! percentiles, statuses and (with `--pid`) the server's resident memory as it went. With
//! `--fuzz N` it sends N malformed variants of the body instead and counts what came back.
//!
//!     cargo run --release --example loadgen -- --url http://127.0.0.1:8080/v1/classify \
//!         --body body.json --concurrency 8 --requests 2000 --pid "$(pgrep -f 'glance serve')"
//!
//! One line of JSON on stdout per run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Args {
    url: String,
    bodies: Vec<String>,
    concurrency: usize,
    requests: usize,
    pid: Option<u32>,
    fuzz: Option<usize>,
    key: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: String::new(),
        bodies: Vec::new(),
        concurrency: 1,
        requests: 100,
        pid: None,
        fuzz: None,
        key: std::env::var("GLANCE_API_KEY").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--body" => {
                let path = value();
                args.bodies
                    .push(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
            }
            "--concurrency" => args.concurrency = value().parse().expect("a number"),
            "--requests" => args.requests = value().parse().expect("a number"),
            "--pid" => args.pid = Some(value().parse().expect("a pid")),
            "--fuzz" => args.fuzz = Some(value().parse().expect("a number")),
            "--key" => args.key = Some(value()),
            "--bench" => {} // cargo bench passes it
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.url.is_empty(), "--url is required");
    assert!(!args.bodies.is_empty(), "--body is required");
    args
}

/// The server's resident set in MB, from /proc.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// Sends one body; the status (0 for a transport error: refused, reset, timed out).
fn send(agent: &ureq::Agent, url: &str, key: Option<&str>, body: &[u8], content_type: &str) -> u16 {
    let mut request = agent.post(url).header("content-type", content_type);
    if let Some(k) = key {
        request = request.header("authorization", &format!("Bearer {k}"));
    }
    match request.send(body) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let _ = response.body_mut().read_to_vec();
            status
        }
        Err(_) => 0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn load(args: &Args) -> Value {
    let images: Vec<usize> = args
        .bodies
        .iter()
        .map(|b| {
            serde_json::from_str::<Value>(b)
                .ok()
                .and_then(|v| v["images"].as_array().map(Vec::len))
                .unwrap_or(1)
        })
        .collect();
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(args.requests));
    let statuses = Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let done_images = AtomicUsize::new(0);
    let rss = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency {
            scope.spawn(|| {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.requests {
                        break;
                    }
                    let k = i % args.bodies.len();
                    let t = Instant::now();
                    let status = send(
                        &agent,
                        &args.url,
                        args.key.as_deref(),
                        args.bodies[k].as_bytes(),
                        "application/json",
                    );
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    if status == 200 {
                        latencies.lock().unwrap().push(ms);
                        done_images.fetch_add(images[k], Ordering::Relaxed);
                    }
                    if let Some(pid) = args.pid {
                        if i.is_multiple_of(100) {
                            if let Some(mb) = rss_mb(pid) {
                                rss.lock().unwrap().push((i, mb));
                            }
                        }
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort_by(f64::total_cmp);
    let statuses = statuses.into_inner().unwrap();
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let overloaded = statuses.get(&429).copied().unwrap_or(0);
    let mut rss = rss.into_inner().unwrap();
    rss.sort_by_key(|(i, _)| *i);
    let rss_json = match (rss.first(), rss.last()) {
        (Some(first), Some(last)) => json!({
            "first_mb": first.1,
            "last_mb": last.1,
            "max_mb": rss.iter().map(|r| r.1).fold(0.0, f64::max),
            "samples": rss.len(),
        }),
        _ => Value::Null,
    };
    json!({
        "url": args.url,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "seconds": seconds,
        "requests_per_s": ok as f64 / seconds,
        "images_per_s": done_images.load(Ordering::Relaxed) as f64 / seconds,
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "failed": args.requests - ok - overloaded,
        "server_rss": rss_json,
    })
}

/// A small deterministic generator (xorshift), so a fuzz run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The `i`-th malformed variant of `body`, and its content type.
fn mutate(body: &str, rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let bytes = body.as_bytes();
    let json = "application/json";
    match rng.below(12) {
        0 => (bytes[..rng.below(bytes.len())].to_vec(), json),
        1 => {
            let mut b = bytes.to_vec();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(b.len());
                b[at] = rng.next() as u8;
            }
            (b, json)
        }
        2 => ((0..rng.below(4096)).map(|_| rng.next() as u8).collect(), json),
        3 => ("[".repeat(10_000 + rng.below(100_000)).into_bytes(), json),
        4 => (b"{\"images\": 5, \"labels\": {\"a\": 1}}".to_vec(), json),
        5 => (b"{\"images\": [\"data:image/png;base64,!!!!\"], \"labels\": [\"a\"]}".to_vec(), json),
        6 => {
            let junk = "QUJD".repeat(1 + rng.below(1000));
            (format!("{{\"images\": [\"{junk}\"], \"labels\": [\"a\"], \"top_k\": 1}}").into_bytes(), json)
        }
        7 => (b"{\"images\": [], \"labels\": [], \"top_k\": -1, \"threshold\": \"x\"}".to_vec(), json),
        8 => (b"\xff\xfe\xfd{}".to_vec(), json),
        9 => (bytes.to_vec(), "multipart/form-data; boundary=x"),
        10 => (
            b"--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nnot an image\r\n--x--\r\n".to_vec(),
            "multipart/form-data; boundary=x",
        ),
        _ => (
            format!("{{\"images\": [1e999], \"labels\": [\"{}\"], \"unknown\": null}}", "a".repeat(rng.below(10_000))).into_bytes(),
            json,
        ),
    }
}

fn fuzz(args: &Args, n: usize) -> Value {
    let agent = agent();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..n {
        let (body, content_type) = mutate(&args.bodies[0], &mut rng);
        let status = send(&agent, &args.url, args.key.as_deref(), &body, content_type);
        *statuses.entry(status).or_default() += 1;
    }
    let health = args
        .url
        .split("/v1/")
        .next()
        .unwrap_or_default()
        .to_string()
        + "/health";
    let alive = agent
        .get(&health)
        .call()
        .map(|r| r.status().as_u16() == 200)
        .unwrap_or(false);
    let crashes: usize = statuses
        .iter()
        .filter(|(s, _)| **s == 0 || **s >= 500)
        .map(|(_, n)| n)
        .sum();
    json!({
        "url": args.url,
        "fuzzed": n,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "crashes": crashes,
        "healthy_after": alive,
    })
}

fn main() {
    let args = Arc::new(parse_args());
    let report = match args.fuzz {
        Some(n) => fuzz(&args, n),
        None => load(&args),
    };
    println!("{report}");
}
