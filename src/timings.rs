//! Where a run's time goes before its first image: a record of start-up phases, printed with
//! `GLANCE_TIMINGS` (benches/bench.sh sets it) as one line.

use std::sync::Mutex;
use std::time::Instant;

static PHASES: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// Whether `GLANCE_TIMINGS` is set: then glance prints how long start-up, label embedding and
/// each batch's stages took, on stderr.
pub fn enabled() -> bool {
    std::env::var_os("GLANCE_TIMINGS").is_some()
}

/// Runs `f` and adds its time to start-up phase `what` (phases of one name add up).
pub fn phase<T>(what: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    add(what, started.elapsed().as_secs_f64());
    out
}

/// Adds `seconds` to start-up phase `what`.
pub fn add(what: &'static str, seconds: f64) {
    let mut phases = PHASES.lock().unwrap_or_else(|e| e.into_inner());
    match phases.iter_mut().find(|(name, _)| *name == what) {
        Some((_, s)) => *s += seconds,
        None => phases.push((what, seconds)),
    }
}

/// Seconds from the process's start (exec) to now, from `/proc/self/stat` (Linux; 10 ms
/// resolution), `None` elsewhere.
pub fn since_exec() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks > 0.0).then(|| (uptime - start_ticks / ticks).max(0.0))
}

/// The phases recorded so far, in order, as "start-up 0.71 s: config 0.00 s, weights …".
/// `total` is the whole start-up's time (process start to now).
pub fn summary(total: f64) -> String {
    let phases = PHASES.lock().unwrap_or_else(|e| e.into_inner());
    let parts: Vec<String> = phases
        .iter()
        .map(|(what, s)| format!("{what} {s:.3} s"))
        .collect();
    let counted: f64 = phases.iter().map(|(_, s)| s).sum();
    format!(
        "start-up {total:.2} s: {}, other {:.3} s",
        parts.join(", "),
        (total - counted).max(0.0)
    )
}
