//! The `glance` command line; see [`cli`].

mod cli;

use std::process::ExitCode;

/// candle's worker for elementwise ops spins 25,000 rounds (about half a millisecond) after each
/// op before it sleeps, on a core the matrix products need: with 2 cores that was 4-5 % of the
/// CPU in a CLIP or BLIP run (`perf`), and runs are 2-17 % faster when it sleeps sooner (CLIP
/// with 1000 labels gains most). 1,000 rounds still bridge back-to-back ops. An explicit setting
/// of the variable wins.
const CANDLE_SPIN_LIMIT: &str = "1000";

fn main() -> ExitCode {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Before any thread exists: nothing reads the environment concurrently.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle asks for its thread count on every matmul, and without this variable works
        // it out again each time, reading /proc/cpuinfo: 15% of Florence-2's vision tower,
        // whose depthwise convolutions are thousands of small matmuls. The same count, once.
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    cli::run()
}

// Inference allocates and frees tensors of tens to hundreds of megabytes per layer; glibc hands
// those straight back to the kernel, so every op paid page faults and zeroing (a fifth of CPU
// time on BLIP-base). jemalloc, told to keep dirty pages, reuses memory instead. Transparent huge
// pages (`thp:always`) were tried and dropped: with the kernel's `defrag=madvise`, every huge-page
// fault after another big process (e.g. Python) compacts memory synchronously, which cost CLIP-B/32
// classification 2.2 s of system time per run and BLIP-base 2.3 s.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: glance::load::alloc::Allocator = glance::load::alloc::Allocator;

/// jemalloc's configuration string, read at start-up (the layout tikv-jemallocator documents).
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0\0";
