//! GFLOP/s of the two CPU matmul paths on one linear-layer shape (default: the 4608×768 → 3072
//! MLP of a ViT-B at 384² with batch 8): candle's f32 GEMM and glance's AVX512-BF16 kernel.
//!
//!     cargo run --release --example matmul_speed [-- M K N]

use std::time::Instant;

use candle_core::{Device, Tensor};
use glance::kernels::gemm_bf16::{self, PackedWeights};

// The binary's allocator: with glibc's, every call's output is fresh pages, and faulting them in
// cost a third of the time of a 9216-row product, which the binary never pays.
#[global_allocator]
static ALLOC: glance::load::alloc::Allocator = glance::load::alloc::Allocator;

#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0\0";

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("M K N as numbers"))
        .collect();
    let (m, k, n) = match args[..] {
        [m, k, n] => (m, k, n),
        _ => (4608, 768, 3072),
    };
    let flop = 2.0 * (m * k * n) as f64;
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let wt = w.t()?;
    let f32_s = best(&mut || {
        x.matmul(&wt).unwrap();
    });
    println!(
        "{m}x{k} · {k}x{n}: candle f32 {:.0} GFLOP/s",
        flop / f32_s / 1e9
    );
    if gemm_bf16::available() {
        let packed = PackedWeights::new(&w.flatten_all()?.to_vec1::<f32>()?, n, k);
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let bf16_s = best(&mut || {
            gemm_bf16::matmul(&xs, m, &packed, None);
        });
        // How far bf16 rounding moves the product: relative to the f32 result's RMS.
        let want = x.matmul(&wt)?.flatten_all()?.to_vec1::<f32>()?;
        let got = gemm_bf16::matmul(&xs, m, &packed, None);
        let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{m}x{k} · {k}x{n}: glance bf16 {:.0} GFLOP/s ({:.2}x), max |bf16 - f32| = {:.4} of the RMS",
            flop / bf16_s / 1e9,
            f32_s / bf16_s,
            worst / rms
        );
    } else {
        println!("no AVX512-BF16 on this CPU");
    }
    Ok(())
}
