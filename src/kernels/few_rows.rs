//! Products of a few rows (a decoding step's queries) with a row-major matrix that is streamed
//! (an image's encoder states): `A·Bᵀ` and `P·B` without packing `B`, register-blocked with
//! AVX-512 where the CPU has it, one dot product or axpy per pair of rows elsewhere.

use rayon::prelude::*;

/// `out[i·n + j] = a_i · b_j` for the `m` rows of `a` and the `n` rows of `b`, all `k` long.
pub fn dot_rows(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and the slices' lengths were checked above.
        return unsafe { avx512::dot_rows(a, m, b, n, k, out) };
    }
    dot_rows_portable(a, m, b, n, k, out, 0, 0)
}

/// `out[i·k .. (i+1)·k] += Σ_j p[i·n + j] · b_j` for the `m` rows of `p` (`n` weights each)
/// and the `n` rows of `b` (`k` long).
pub fn mix_rows(p: &[f32], m: usize, b: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert!(p.len() >= m * n && b.len() >= n * k && out.len() >= m * k);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and the slices' lengths were checked above.
        return unsafe { avx512::mix_rows(p, m, b, n, k, out) };
    }
    mix_rows_portable(p, m, b, n, k, out, 0)
}

/// [`dot_rows`] for rows `m0..` of `a` and `n0..` of `b`.
#[allow(clippy::too_many_arguments)]
fn dot_rows_portable(
    a: &[f32],
    m: usize,
    b: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
    m0: usize,
    n0: usize,
) {
    let dot = dot_fn();
    for i in 0..m {
        for j in 0..n {
            if i >= m0 || j >= n0 {
                out[i * n + j] = dot(&a[i * k..][..k], &b[j * k..][..k]);
            }
        }
    }
}

/// [`mix_rows`] for columns `c0..` of every row.
fn mix_rows_portable(
    p: &[f32],
    m: usize,
    b: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
    c0: usize,
) {
    let axpy = axpy_fn();
    if c0 == k {
        return;
    }
    for i in 0..m {
        for j in 0..n {
            axpy(
                p[i * n + j],
                &b[j * k + c0..][..k - c0],
                &mut out[i * k + c0..][..k - c0],
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Blocks of 4 rows of `a` × 4 rows of `b` (16 accumulators) over `k` in steps of 16; the
    /// 4 rows of `b` stay in L1 while every block of `a` passes them.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_rows(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, out: &mut [f32]) {
        let (m4, n4, k16) = (m / 4 * 4, n / 4 * 4, k / 16 * 16);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        for j0 in (0..n4).step_by(4) {
            for i0 in (0..m4).step_by(4) {
                let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                let mut c = 0;
                while c < k16 {
                    // SAFETY: rows i0..i0+4 < m and j0..j0+4 < n, columns c..c+16 <= k.
                    unsafe {
                        let bv = [0, 1, 2, 3].map(|j| _mm512_loadu_ps(pb.add((j0 + j) * k + c)));
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let av = _mm512_loadu_ps(pa.add((i0 + i) * k + c));
                            for (acc, bv) in acc.iter_mut().zip(&bv) {
                                *acc = _mm512_fmadd_ps(av, *bv, *acc);
                            }
                        }
                    }
                    c += 16;
                }
                for (i, acc) in acc.iter().enumerate() {
                    for (j, acc) in acc.iter().enumerate() {
                        let (ra, rb) = ((i0 + i) * k, (j0 + j) * k);
                        let tail: f32 = (k16..k).map(|c| a[ra + c] * b[rb + c]).sum();
                        out[(i0 + i) * n + j0 + j] = _mm512_reduce_add_ps(*acc) + tail;
                    }
                }
            }
        }
        super::dot_rows_portable(a, m, b, n, k, out, m4, n4);
    }

    /// Blocks of 6 rows of `p` × 32 columns (12 accumulators; the last block of rows may be
    /// smaller), summing over all `n` rows of `b`: the 32-column strip of `b` (n × 128 bytes)
    /// stays in L2 across the blocks of `p`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn mix_rows(p: &[f32], m: usize, b: &[f32], n: usize, k: usize, out: &mut [f32]) {
        let k32 = k / 32 * 32;
        for c in (0..k32).step_by(32) {
            for i0 in (0..m).step_by(6) {
                // SAFETY: rows i0.. < m, columns c..c+32 <= k, weights j < n (checked by the
                // caller's assertions on the slices).
                unsafe {
                    match m - i0 {
                        1 => mix_block::<1>(p, i0, b, n, k, c, out),
                        2 => mix_block::<2>(p, i0, b, n, k, c, out),
                        3 => mix_block::<3>(p, i0, b, n, k, c, out),
                        4 => mix_block::<4>(p, i0, b, n, k, c, out),
                        5 => mix_block::<5>(p, i0, b, n, k, c, out),
                        _ => mix_block::<6>(p, i0, b, n, k, c, out),
                    }
                }
            }
        }
        super::mix_rows_portable(p, m, b, n, k, out, k32);
    }

    /// Rows `i0..i0 + R` × columns `c..c + 32` of [`mix_rows`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mix_block<const R: usize>(
        p: &[f32],
        i0: usize,
        b: &[f32],
        n: usize,
        k: usize,
        c: usize,
        out: &mut [f32],
    ) {
        let (pp, pb, po) = (p.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        // SAFETY: see `mix_rows`.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for j in 0..n {
                let b0 = _mm512_loadu_ps(pb.add(j * k + c));
                let b1 = _mm512_loadu_ps(pb.add(j * k + c + 16));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(*pp.add((i0 + i) * n + j));
                    acc[0] = _mm512_fmadd_ps(w, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(w, b1, acc[1]);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                let o = po.add((i0 + i) * k + c);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[0]));
                _mm512_storeu_ps(o.add(16), _mm512_add_ps(_mm512_loadu_ps(o.add(16)), acc[1]));
            }
        }
    }
}

/// `y[r, j] = x[r, :] · w[j, :] + bias[j]` for `rows` input rows and `out` weight rows of length `k`.
pub fn skinny_matmul(
    x: &[f32],
    rows: usize,
    w: &[f32],
    out: usize,
    k: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    const STRIP: usize = 32;
    let mut strips = vec![0f32; rows * out];
    if rows == 0 {
        return strips;
    }
    // Each parallel task takes STRIP weight rows: their columns of the result, rows × width.
    strips
        .par_chunks_mut(STRIP * rows)
        .enumerate()
        .for_each(|(c, block)| {
            let width = block.len() / rows;
            dot_rows(x, rows, &w[c * STRIP * k..][..width * k], width, k, block)
        });
    let mut y = vec![0f32; rows * out];
    for (c, block) in strips.chunks(STRIP * rows).enumerate() {
        let width = block.len() / rows;
        for (r, values) in block.chunks_exact(width).enumerate() {
            let dst = &mut y[r * out + c * STRIP..][..width];
            for (j, (d, v)) in dst.iter_mut().zip(values).enumerate() {
                *d = v + bias.map_or(0.0, |b| b[c * STRIP + j]);
            }
        }
    }
    y
}

pub(crate) type DotFn = fn(&[f32], &[f32]) -> f32;

/// The fastest dot product this CPU supports.
pub(crate) fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |a, b| unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable
}

pub(crate) type AxpyFn = fn(f32, &[f32], &mut [f32]);

/// `y += a · x` with the widest fused multiply-add this CPU supports.
pub(crate) fn axpy_fn() -> AxpyFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return |a, x, y| unsafe { axpy_avx2(a, x, y) };
        }
    }
    axpy_portable
}

fn axpy_portable(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = x.mul_add(a, *y);
    }
}

/// The portable loop, compiled with AVX2 and FMA enabled so that it becomes `vfmadd` on 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    axpy_portable(a, x, y)
}

/// Eight independent lanes, which the compiler maps to SIMD registers.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] += a[i * 8 + l] * b[i * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets below `n`, checked by the loop bounds.
    unsafe {
        while i + 32 <= n {
            for (l, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * l;
                *acc =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut s: f32 = lanes.iter().sum();
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    /// Shapes that leave every kind of remainder: rows not a multiple of 4 or 6, columns not a
    /// multiple of 16 or 32.
    #[test]
    fn blocked_products_equal_naive_ones() {
        for (m, n, k) in [
            (12, 577, 768),
            (5, 7, 33),
            (36, 50, 64),
            (1, 3, 16),
            (7, 9, 100),
        ] {
            let a = values(m * k, 1);
            let b = values(n * k, 2);
            let mut scores = vec![0f32; m * n];
            dot_rows(&a, m, &b, n, k, &mut scores);
            for i in 0..m {
                for j in 0..n {
                    let naive: f32 = (0..k).map(|c| a[i * k + c] * b[j * k + c]).sum();
                    assert!(
                        (scores[i * n + j] - naive).abs() < 1e-3,
                        "dot {m}×{n}×{k} at {i},{j}"
                    );
                }
            }
            let p = values(m * n, 3);
            let mut mixed = values(m * k, 4);
            let start = mixed.clone();
            mix_rows(&p, m, &b, n, k, &mut mixed);
            for i in 0..m {
                for c in 0..k {
                    let naive: f32 =
                        start[i * k + c] + (0..n).map(|j| p[i * n + j] * b[j * k + c]).sum::<f32>();
                    assert!(
                        (mixed[i * k + c] - naive).abs() < 1e-3,
                        "mix {m}×{n}×{k} at {i},{c}"
                    );
                }
            }
        }
    }

    #[test]
    fn portable_dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot_portable(&a, &b) - naive).abs() < 1e-3);
        assert!((dot_fn()(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn axpy_adds_a_scaled_row() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let mut y: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let expected: Vec<f32> = x.iter().zip(&y).map(|(x, y)| y + 3.0 * x).collect();
        axpy_fn()(3.0, &x, &mut y);
        assert!(y.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
