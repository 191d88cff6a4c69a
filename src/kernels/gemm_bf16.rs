//! `y = x · Wᵀ + b` with bf16 weights on CPUs with AVX512-BF16 (`vdpbf16ps`): each instruction
//! multiplies 16 pairs of bf16 values and adds them into 16 f32 sums, twice the multiply rate of
//! f32 FMAs. Inputs are rounded to bf16 (round to nearest even) as they are packed; products are
//! exact and sums are kept in f32, so the only loss is the rounding of `x` and `W` to 8 bits of
//! mantissa — what PyTorch's bf16 matmul on the same CPU does.
//!
//! Layout: `W` (`[n, k]`, HF's `[out, in]`) is packed once at load time into panels of [`NR`]
//! output columns; within a panel, for each pair of `k`, 32 lanes of (W[j][2p], W[j][2p+1]).
//! `x` is packed per call into tiles of [`MR`] rows, pairs interleaved row by row, so the
//! micro-kernel broadcasts one 32-bit pair per row and keeps a 12×32 block of sums in 24
//! registers. Blocking as in GotoBLAS: [`KC_PAIRS`] of k at a time, so a 16 KB weight sub-panel
//! stays in L1 while a block of [`MC_TILES`] row tiles (in L2) streams past it; threads split
//! the panels.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::activation::gelu16;
use super::activation::Gelu;
use super::{par_filled, SharedOut};

/// Output columns per panel: two 16-lane registers.
pub const NR: usize = 32;
/// Rows per micro-tile: 12 × 2 accumulators + 2 weight registers + 1 broadcast ≤ 32 registers.
pub const MR: usize = 12;
/// Pairs of k per block: a 128 × 32 weight sub-panel is 16 KB.
const KC_PAIRS: usize = 128;
/// Row tiles per block (96 rows × 256 k × 2 bytes = 48 KB).
const MC_TILES: usize = 8;
/// Panels per group (256 output columns).
const NC_PANELS: usize = 8;

/// Whether this CPU can run the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 → bf16 bits, rounding to nearest even (as `vcvtne2ps2bf16`; NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// A weight matrix `[n, k]` packed for the kernel.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    /// `ceil(k / 2)`.
    pairs: usize,
    /// `[ceil(n / NR)][pairs][NR]` of (low, high) bf16 pairs as u32.
    data: Vec<u32>,
}

impl PackedWeights {
    /// Packs `w` (`n` rows of `k`).
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is n × k");
        Self {
            n,
            k,
            pairs: k.div_ceil(2),
            data: interleave_pairs(w, n, k, NR),
        }
    }
}

impl PackedWeights {
    /// Packs `w` (`n` rows of `k`), already bf16 as a checkpoint stores it: no rounding, and
    /// no f32 copy of the weights on the way.
    pub fn from_bf16(w: &[half::bf16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is n × k");
        let pairs = k.div_ceil(2);
        let data = par_filled(n.div_ceil(NR) * pairs * NR, pairs * NR, 0u32, |t, block| {
            for i in 0..NR.min(n - t * NR) {
                let row = &w[(t * NR + i) * k..][..k];
                for (q, pair) in row.chunks(2).enumerate() {
                    let high = pair.get(1).map_or(0, |h| h.to_bits());
                    block[q * NR + i] = u32::from(pair[0].to_bits()) | u32::from(high) << 16;
                }
            }
        });
        Self { n, k, pairs, data }
    }

    /// Rows `ids` of the weight, `k` values each, as the kernel multiplies them (rounded to
    /// bf16): a table tied to a packed layer (a language model's embeddings and head) reads
    /// them here instead of keeping a copy of its own. `None` if an id is out of range.
    pub fn rows(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * self.k];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.k.max(1))) {
            let j = id as usize;
            if j >= self.n {
                return None;
            }
            let panel = &self.data[j / NR * self.pairs * NR..][..self.pairs * NR];
            for (q, pair) in row.chunks_mut(2).enumerate() {
                let word = panel[q * NR + j % NR];
                pair[0] = from_bf16(word as u16);
                if let Some(high) = pair.get_mut(1) {
                    *high = from_bf16((word >> 16) as u16);
                }
            }
        }
        Some(out)
    }

    /// Packs the transpose of `w_t` (`k` rows of `n`: the `[in, out]` layout of GPT-2's
    /// `Conv1D`), without transposing it first: each block of output rows is a strip of
    /// consecutive columns, read as `NR`-long runs of every row.
    pub fn from_transposed(w_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w_t.len(), n * k, "weight is k × n");
        let pairs = k.div_ceil(2);
        let data = par_filled(n.div_ceil(NR) * pairs * NR, pairs * NR, 0u32, |t, block| {
            let (c0, lanes) = (t * NR, NR.min(n - t * NR));
            for q in 0..pairs {
                let low = &w_t[2 * q * n + c0..][..lanes];
                let high = (2 * q + 1 < k).then(|| &w_t[(2 * q + 1) * n + c0..][..lanes]);
                pair_up(low, high, &mut block[q * NR..][..lanes]);
            }
        });
        Self { n, k, pairs, data }
    }
}

/// Rows of `k` values rounded to bf16 and laid out in blocks of `lanes` rows:
/// `[ceil(rows / lanes)][ceil(k / 2)][lanes]`, each u32 holding (row[2q], row[2q + 1]) with the
/// first in the low half. Rows past the end and, for odd `k`, the last high half are zero.
/// Weight panels use 32 lanes ([`NR`]), input tiles 12 ([`MR`]).
fn interleave_pairs(x: &[f32], rows: usize, k: usize, lanes: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    par_filled(
        rows.div_ceil(lanes) * pairs * lanes,
        pairs * lanes,
        0u32,
        |t, block| {
            let mut words = vec![0u32; pairs];
            for i in 0..lanes.min(rows - t * lanes) {
                convert_pairs(&x[(t * lanes + i) * k..][..k], &mut words);
                for (q, &word) in words.iter().enumerate() {
                    block[q * lanes + i] = word;
                }
            }
        },
    )
}

/// Rounds a row of `k` values to bf16 pairs: `words[q]` holds (row[2q], row[2q + 1]), the first
/// in the low half, and for odd `k` a zero high half last. The bf16 values are written straight
/// into the words' halves, so no shifting or merging is left to do.
fn convert_pairs(src: &[f32], words: &mut [u32]) {
    let k = src.len();
    assert_eq!(words.len(), k.div_ceil(2), "one word per pair");
    // SAFETY: `words` viewed as twice as many u16 is in bounds and aligned (2 divides 4).
    let halves = unsafe {
        std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u16>(), 2 * words.len())
    };
    convert_row(src, &mut halves[..k]);
    if k % 2 == 1 {
        halves[k] = 0;
    }
    if cfg!(target_endian = "big") {
        // There the first u16 of a word is its high half.
        for w in words.iter_mut() {
            *w = w.rotate_left(16);
        }
    }
}

/// `out[i]` = (low[i], high[i]) rounded to bf16, the first in the low half; no `high` is zeros.
fn pair_up(low: &[f32], high: Option<&[f32]>, out: &mut [u32]) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the features were just detected; `pair_up_avx512` stays within the slices.
        done = unsafe { pair_up_avx512(low, high, out) };
    }
    for i in done..out.len() {
        let h = high.map_or(0, |h| to_bf16(h[i]));
        out[i] = u32::from(to_bf16(low[i])) | u32::from(h) << 16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_up_avx512(low: &[f32], high: Option<&[f32]>, out: &mut [u32]) -> usize {
    let n = out.len().min(low.len()) / 16 * 16;
    let n = high.map_or(n, |h| n.min(h.len() / 16 * 16));
    let mut i = 0;
    // SAFETY: each step reads 16 floats of each row and writes 16 words, all below `n`.
    unsafe {
        while i < n {
            let bf: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(low.as_ptr().add(i))));
            let mut words = _mm512_cvtepu16_epi32(bf);
            if let Some(h) = high {
                let bf: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(h.as_ptr().add(i))));
                words = _mm512_or_si512(words, _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bf)));
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut __m512i, words);
            i += 16;
        }
    }
    n
}

/// Rounds a row to bf16, 32 values per instruction.
fn convert_row(src: &[f32], dst: &mut [u16]) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the features were just detected; `convert_avx512` stays within the slices.
        done = unsafe { convert_avx512(src, dst) };
    }
    for (d, &s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = to_bf16(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_avx512(src: &[f32], dst: &mut [u16]) -> usize {
    let n = src.len().min(dst.len()) / 32 * 32;
    let mut i = 0;
    // SAFETY: each step reads 32 floats and writes 32 u16 below `n`.
    unsafe {
        while i < n {
            let lo = _mm512_loadu_ps(src.as_ptr().add(i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut __m512i, packed);
            i += 32;
        }
    }
    n
}

/// `y[m, n] = x[m, k] · Wᵀ (+ bias)`, row-major.
pub fn matmul(x: &[f32], m: usize, w: &PackedWeights, bias: Option<&[f32]>) -> Vec<f32> {
    matmul_with(x, m, w, bias, Epilogue::None)
}

/// What the kernel does to the sums (bias included) as it stores them, so that the next
/// elementwise op does not read and write the whole output again.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// Adds an `[m, n]` residual: `y = x · Wᵀ + b + r`.
    Residual(&'a [f32]),
    /// `y = gelu(x · Wᵀ + b)`.
    Gelu(Gelu),
}

/// [`matmul`] with an [`Epilogue`].
pub fn matmul_with(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    assert!(available(), "AVX512-BF16 kernel called on a CPU without it");
    assert_eq!(x.len(), m * w.k, "x is m × k");
    let n = w.n;
    if let Epilogue::Residual(r) = epilogue {
        assert_eq!(r.len(), m * n, "the residual is m × n");
    }
    if m == 0 || n == 0 || w.pairs == 0 {
        // Nothing to sum: each row is the bias, then the epilogue.
        let mut y = match bias {
            Some(b) => b.repeat(m),
            None => vec![0f32; m * n],
        };
        match epilogue {
            Epilogue::None => {}
            Epilogue::Residual(r) => y.iter_mut().zip(r).for_each(|(y, r)| *y += r),
            Epilogue::Gelu(kind) => {
                let sums = y.clone();
                super::activation::gelu_slice(&sums, &mut y, kind);
            }
        }
        return y;
    }
    // Not cleared: the first block of k of every tile stores its sums (plus bias) over the
    // whole output before any later block adds to them.
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let a = interleave_pairs(x, m, w.k, MR);
    let tiles = m.div_ceil(MR);
    let panels = n.div_ceil(NR);
    // Few rows (decoding) are memory-bound: small tasks so every core streams weights. Many
    // rows: one run of panels per thread, so each row block is reused over many panels.
    let per_task = if tiles <= 2 {
        4
    } else {
        panels.div_ceil(rayon::current_num_threads().max(1)).max(1)
    };
    // Tasks own disjoint column panels of the output.
    let out = SharedOut::new(y.as_mut_ptr());
    (0..panels.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let mine = task * per_task..((task + 1) * per_task).min(panels);
            // Groups of panels whose weight sub-panels (8 × 16 KB) and output block
            // (96 rows × 256 columns) stay in L2 together with the row block.
            for g0 in mine.clone().step_by(NC_PANELS) {
                let group = g0..(g0 + NC_PANELS).min(mine.end);
                block(&a, w, m, bias, epilogue, group, out.at(0));
            }
        });
    // SAFETY: the panels cover all n columns and each panel all m rows (see above).
    unsafe { y.set_len(m * n) };
    y
}

/// Panels `group` of the output over all of k and all rows.
fn block(
    a: &[u32],
    w: &PackedWeights,
    m: usize,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    group: std::ops::Range<usize>,
    out: *mut f32,
) {
    let (n, tiles) = (w.n, m.div_ceil(MR));
    // With one or two row tiles a weight sub-panel has nothing to be reused by: whole k.
    let kc = if tiles <= 2 { w.pairs } else { KC_PAIRS };
    // Row blocks outermost: the block's output (96 × 256 floats) stays in L2 while every k
    // block adds to it, instead of the whole output going to memory once per k block.
    for t0 in (0..tiles).step_by(MC_TILES) {
        for q0 in (0..w.pairs).step_by(kc) {
            let q1 = (q0 + kc).min(w.pairs);
            let start_bias = q0 == 0;
            // GELU on the finished sums only; the residual with the bias, in the first block.
            let gelu = match epilogue {
                Epilogue::Gelu(kind) if q1 == w.pairs => Some(kind),
                _ => None,
            };
            for p in group.clone() {
                let b = &w.data[p * w.pairs * NR..][q0 * NR..q1 * NR];
                let cols = NR.min(n - p * NR);
                let start = if start_bias {
                    Start::Bias(bias.map(|b| &b[p * NR..p * NR + cols]))
                } else {
                    Start::Add
                };
                let residual = match epilogue {
                    Epilogue::Residual(r) if start_bias => Some(r),
                    _ => None,
                };
                for t in t0..(t0 + MC_TILES).min(tiles) {
                    let rows = MR.min(m - t * MR);
                    let a_tile = &a[t * w.pairs * MR..][q0 * MR..q1 * MR];
                    let at = t * MR * n + p * NR;
                    // SAFETY: only this call writes columns p*NR.. of the output
                    // (tasks own disjoint panels); `rows` × `cols` values inside `y`, and
                    // as many of the residual (also m × n) at the same offset.
                    unsafe {
                        tile(
                            rows,
                            q1 - q0,
                            a_tile,
                            b,
                            out.add(at),
                            n,
                            cols,
                            start,
                            residual.map(|r| r[at..].as_ptr()),
                            gelu,
                        );
                    }
                }
            }
        }
    }
}

/// What a block's sums are added to: the bias (first block of k) or what earlier blocks stored.
#[derive(Clone, Copy)]
enum Start<'a> {
    Bias(Option<&'a [f32]>),
    Add,
}

/// [`kernel`] for a tile of `rows` (1 to [`MR`]) real rows: a decoding step's 1 to 4 rows do
/// not pay for the multiply-adds of 12, which would make a memory-bound product compute-bound.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    rows: usize,
    pairs: usize,
    a: &[u32],
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    start: Start,
    residual: Option<*const f32>,
    gelu: Option<Gelu>,
) {
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: the caller's guarantees, for exactly `rows` rows.
                $($r => unsafe { kernel::<$r>(pairs, a, b, c, ldc, cols, start, residual, gelu) },)*
                _ => unreachable!("a tile has 1 to {MR} rows, not {rows}"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// One `R`×32 block of `y` over `pairs` pairs of k (`a` laid out in tiles of [`MR`] rows, the
/// first `R` used); `residual` (rows `ldc` apart, like `c`) is added with the bias, `gelu`
/// applied to what is stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    start: Start,
    residual: Option<*const f32>,
    gelu: Option<Gelu>,
) {
    let rows = R;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    // SAFETY: `a` holds pairs × MR and `b` pairs × NR values; the loop stays below both. The
    // stores write `rows` rows of `cols` floats at `c`, which the caller guarantees are in `y`.
    unsafe {
        for q in 0..pairs {
            let b0: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR) as *const __m512i));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR + 16) as *const __m512i));
            let arow = ap.add(q * MR);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*arow.add(i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        let mask = |c: usize| -> __mmask16 {
            if c >= 16 {
                0xffff
            } else {
                ((1u32 << c) - 1) as __mmask16
            }
        };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        let zero = _mm512_setzero_ps();
        let load2 = |p: *const f32| {
            (
                _mm512_maskz_loadu_ps(m0, p),
                if cols > 16 {
                    _mm512_maskz_loadu_ps(m1, p.add(16))
                } else {
                    zero
                },
            )
        };
        let bias = match start {
            Start::Bias(Some(b)) => load2(b.as_ptr()),
            _ => (zero, zero),
        };
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * ldc);
            let base = match (start, residual) {
                (Start::Add, _) => load2(row),
                (Start::Bias(_), None) => bias,
                (Start::Bias(_), Some(r)) => {
                    let r = load2(r.add(i * ldc));
                    (_mm512_add_ps(bias.0, r.0), _mm512_add_ps(bias.1, r.1))
                }
            };
            _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(acc[0], base.0));
            if cols > 16 {
                _mm512_mask_storeu_ps(row.add(16), m1, _mm512_add_ps(acc[1], base.1));
            }
        }
        if let Some(kind) = gelu {
            // On the block just stored, while it is in L1: a call that would clobber the
            // registers holding the sums if it were made before their stores.
            gelu_block(c, ldc, rows, (m0, m1), cols > 16, kind);
        }
    }
}

/// `kind` in place on `rows` rows (`ldc` apart) of a 12×32 block, columns under the masks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn gelu_block(
    c: *mut f32,
    ldc: usize,
    rows: usize,
    (m0, m1): (__mmask16, __mmask16),
    wide: bool,
    kind: Gelu,
) {
    // SAFETY: the kernel just stored these values (its caller's guarantee covers them).
    unsafe {
        for i in 0..rows {
            let row = c.add(i * ldc);
            let v = _mm512_maskz_loadu_ps(m0, row);
            _mm512_mask_storeu_ps(row, m0, gelu16(v, kind));
            if wide {
                let v = _mm512_maskz_loadu_ps(m1, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), m1, gelu16(v, kind));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    _: usize,
    _: usize,
    _: &[u32],
    _: &[u32],
    _: *mut f32,
    _: usize,
    _: usize,
    _: Start,
    _: Option<*const f32>,
    _: Option<Gelu>,
) {
    unreachable!("available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn matches_a_float64_product_of_the_rounded_inputs() {
        if !available() {
            eprintln!("no AVX512-BF16 on this CPU: kernel not tested");
            return;
        }
        // Odd k, partial tiles and panels, several k blocks (k > 256) and row blocks (m > 96);
        // every tile height from 1 to MR.
        let heights = (1..=MR).map(|m| (m, 40, 33));
        for (m, n, k) in heights.chain([
            (1, 1, 1),
            (5, 31, 7),
            (12, 32, 64),
            (13, 33, 65),
            (30, 70, 128),
            (3, 200, 768),
            (25, 64, 3),
            (100, 97, 700),
            (40, 33, 1001),
        ]) {
            let x = random(m * k, 1 + m as u64);
            let w = random(n * k, 100 + n as u64);
            let bias = random(n, 7);
            let packed = PackedWeights::new(&w, n, k);
            let y = matmul(&x, m, &packed, Some(&bias));
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| {
                            f64::from(from_bf16(to_bf16(x[r * k + i])))
                                * f64::from(from_bf16(to_bf16(w[j * k + i])))
                        })
                        .sum::<f64>()
                        + f64::from(bias[j]);
                    let got = f64::from(y[r * n + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + k as f64).sqrt(),
                        "m{m} n{n} k{k} [{r},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn epilogues_equal_the_ops_after_the_product() {
        if !available() {
            eprintln!("no AVX512-BF16 on this CPU: kernel not tested");
            return;
        }
        // One k block and several (the GELU only on finished sums), few and many row tiles,
        // partial panels; and k = 0, where the output is the bias.
        for (m, n, k) in [
            (5, 31, 7),
            (13, 33, 65),
            (100, 97, 700),
            (30, 70, 300),
            (3, 5, 0),
        ] {
            let x = random(m * k, 3 + m as u64);
            let w = random(n * k, 200 + n as u64);
            let bias = random(n, 9);
            let residual = random(m * n, 11);
            let packed = PackedWeights::new(&w, n, k);
            let plain = matmul(&x, m, &packed, Some(&bias));
            let added = matmul_with(&x, m, &packed, Some(&bias), Epilogue::Residual(&residual));
            // The residual joins the sums with the bias, not after them: rounding differs.
            let tol = 1e-6 * (1.0 + k as f32).sqrt();
            for ((a, p), r) in added.iter().zip(&plain).zip(&residual) {
                assert!(
                    (a - (p + r)).abs() <= tol,
                    "m{m} n{n} k{k}: {a} vs {p} + {r}"
                );
            }
            for kind in [Gelu::Erf, Gelu::Tanh, Gelu::Quick] {
                let fused = matmul_with(&x, m, &packed, Some(&bias), Epilogue::Gelu(kind));
                let mut want = vec![0f32; plain.len()];
                crate::kernels::activation::gelu_slice(&plain, &mut want, kind);
                assert_eq!(fused, want, "m{m} n{n} k{k} {kind:?}");
            }
        }
    }

    #[test]
    fn rows_read_back_the_rounded_weights() {
        // Odd k (a zero high half last), rows in the first and a partial last panel.
        for (n, k) in [(1, 1), (40, 7), (70, 64)] {
            let w = random(n * k, 11 + n as u64);
            let packed = PackedWeights::new(&w, n, k);
            let ids: Vec<u32> = vec![0, (n - 1) as u32, (n / 2) as u32, 0];
            let got = packed.rows(&ids).expect("ids in range");
            for (row, &id) in got.chunks_exact(k).zip(&ids) {
                let want: Vec<f32> = w[id as usize * k..][..k]
                    .iter()
                    .map(|&x| from_bf16(to_bf16(x)))
                    .collect();
                assert_eq!(row, &want[..], "n{n} k{k} row {id}");
            }
            assert!(packed.rows(&[n as u32]).is_none(), "id n is out of range");
        }
    }

    #[test]
    fn packing_bf16_values_equals_packing_them_as_f32() {
        // Odd k (a zero high half last), a partial last panel, several panels.
        for (n, k) in [(1, 1), (33, 7), (70, 64), (40, 129)] {
            let w: Vec<half::bf16> = random(n * k, 5 + n as u64)
                .into_iter()
                .map(|x| half::bf16::from_bits(to_bf16(x * 3.0)))
                .collect();
            let wide: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
            let a = PackedWeights::new(&wide, n, k);
            let b = PackedWeights::from_bf16(&w, n, k);
            assert_eq!((a.n, a.k, &a.data), (b.n, b.k, &b.data), "n{n} k{k}");
        }
    }

    #[test]
    fn packing_the_in_out_layout_equals_packing_its_transpose() {
        for (n, k) in [(1, 1), (33, 7), (52, 9), (64, 64), (70, 65)] {
            let w = random(n * k, 3 + n as u64);
            let w_t: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let a = PackedWeights::new(&w, n, k);
            let b = PackedWeights::from_transposed(&w_t, k, n);
            assert_eq!((a.n, a.k, &a.data), (b.n, b.k, &b.data), "n{n} k{k}");
        }
    }
}
