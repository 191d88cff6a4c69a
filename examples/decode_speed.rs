//! Time per image of decoding and of preprocessing, on one thread:
//! `cargo run --release --example decode_speed -- MODEL_DIR IMAGES...`
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = glance::preprocess::PreprocessorConfig::from_file(
        &std::path::Path::new(&args[0]).join("preprocessor_config.json"),
    )
    .unwrap();
    let pre = glance::preprocess::Preprocessor::new(cfg).unwrap();
    let (mut dec, mut prep) = (0.0, 0.0);
    for path in &args[1..] {
        let t = Instant::now();
        let d = glance::preprocess::decode::decode(path.as_ref(), u64::MAX).unwrap();
        dec += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(pre.apply(&d.rgb));
        prep += t.elapsed().as_secs_f64();
    }
    let n = (args.len() - 1) as f64;
    println!(
        "decode {:.1} ms, preprocess {:.1} ms per image",
        1e3 * dec / n,
        1e3 * prep / n
    );
}
