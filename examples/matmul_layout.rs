//! Times `x @ W^T` with W stored [out, in] (candle_nn::Linear's layout) against W pre-transposed
//! to a contiguous [in, out], for decoder-sized (few rows) and encoder-sized (many rows) inputs.
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time<F: Fn() -> Tensor>(label: &str, reps: usize, flop: f64, f: F) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{label:40} {:8.3} ms  {:6.1} GFLOP/s",
        s * 1e3,
        flop / s / 1e9
    );
}

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    for (m, k, n) in [
        (8, 768, 768),
        (8, 768, 3072),
        (8, 768, 30524),
        (4616, 768, 768),
        (4616, 768, 3072),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &d)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &d)?;
        let wt = w.t()?.contiguous()?;
        let flop = 2.0 * (m * k * n) as f64;
        let reps = if m > 100 { 3 } else { 20 };
        time(&format!("{m}x{k}x{n} w.t() view"), reps, flop, || {
            x.matmul(&w.t().unwrap()).unwrap()
        });
        time(&format!("{m}x{k}x{n} contiguous w^T"), reps, flop, || {
            x.matmul(&wt).unwrap()
        });
    }
    Ok(())
}
