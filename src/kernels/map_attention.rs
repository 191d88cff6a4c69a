//! Attention over a map of tokens read straight from a fused `qkv` projection `[b, h·w, 3c]`
//! (q, k and v side by side in each row), for DaViT-style towers: within `window × window`
//! windows of the map, or between the channels of each group over all positions.
//!
//! Done with tensor ops, both split q, k and v with permutes, and candle copies each permuted
//! view element by element; window attention also copies the map into windows and back. In a
//! bf16 Florence-2-base run those copies were 7.9 % of the CPU samples (1.4 % after). Here a window's rows are
//! gathered per head into small buffers and its output rows written in place, and channel
//! attention multiplies q, k and v where they lie, with strided GEMMs.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::gemm_bf16::{self, PackedWeights};
use super::softmax::softmax_rows;
use super::{with_f32_values, SharedOut};

/// `out = softmax(q·kᵀ)·v` for one head: `q` `n × d` (already scaled), `k` and `v` `s × d`,
/// all row-major; on the bf16 kernel when `bf16`, else in f32.
pub(crate) fn attend_one(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, s, d): (usize, usize, usize),
    bf16: bool,
    out: &mut [f32],
) {
    if bf16 {
        let mut scores = gemm_bf16::matmul(q, n, &PackedWeights::new(k, s, d), None);
        softmax_rows(&mut scores, s);
        // P·V as P·(Vᵀ)ᵀ: the kernel's weights are Vᵀ, packed straight from V.
        let values = PackedWeights::from_transposed(v, s, d);
        out.copy_from_slice(&gemm_bf16::matmul(&scores, n, &values, None));
        return;
    }
    let mut scores = vec![0f32; n * s];
    // SAFETY: the shapes and strides below describe the slices' row-major layouts.
    unsafe {
        // scores (n × s) = q (n × d) · kᵀ (d × s: element (i, j) at k[j·d + i]).
        gemm(
            (n, s, d),
            (scores.as_mut_ptr(), s),
            (q.as_ptr(), d as isize, 1),
            (k.as_ptr(), 1, d as isize),
            1.0,
        );
    }
    softmax_rows(&mut scores, s);
    // SAFETY: as above; `out` is n × d.
    unsafe {
        gemm(
            (n, d, s),
            (out.as_mut_ptr(), d),
            (scores.as_ptr(), s as isize, 1),
            (v.as_ptr(), d as isize, 1),
            1.0,
        );
    }
}

/// `dst (m × n, row stride dst_rs) = scale · lhs (m × k) · rhs (k × n)`, on this thread, with
/// `lhs` and `rhs` given as (pointer, row stride, column stride).
///
/// # Safety
/// Every element the shapes and strides address must lie in its buffer.
unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
    scale: f32,
) {
    // SAFETY: the caller's guarantee; `read_dst = false`, so `dst` is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Multi-head attention within `window × window` windows of an `h × w` map, from `qkv`
/// `[b, h·w, 3c]` in raster order, to `[b, h·w, c]` in raster order. Windows reaching past the
/// map's right or bottom edge are padded with `pad`, the `qkv` row of a zero token, which takes
/// part as a key and value (as the zero padding before the projection does in transformers);
/// it is needed only when `window` does not divide `h` or `w`.
pub fn window_attention(
    qkv: &Tensor,
    (h, w): (usize, usize),
    window: usize,
    heads: usize,
    pad: Option<&[f32]>,
) -> Result<Tensor> {
    let (b, hw, c3) = qkv.dims3()?;
    let c = c3 / 3;
    if hw != h * w || c3 != 3 * c || heads == 0 || c % heads != 0 || window == 0 {
        candle_core::bail!(
            "window attention: qkv {:?} for a {h}×{w} map with {heads} heads",
            qkv.dims()
        );
    }
    let padded = h % window != 0 || w % window != 0;
    if padded && pad.is_none_or(|p| p.len() != c3) {
        candle_core::bail!(
            "window attention: a {h}×{w} map in windows of {window} needs a padding row of {c3}"
        );
    }
    let d = c / heads;
    let (nh, nw, n) = (h.div_ceil(window), w.div_ceil(window), window * window);
    let scale = 1.0 / (d as f32).sqrt();
    let bf16 = super::cpu_bf16_matmul();
    let mut out = vec![0f32; b * hw * c];
    let dst = SharedOut::new(out.as_mut_ptr());
    with_f32_values(qkv, |src| {
        (0..b * nh * nw * heads).into_par_iter().for_each_init(
            || vec![0f32; 4 * n * d],
            |buf, task| {
                let (image, head) = (task / (nh * nw * heads), task % heads);
                let (wr, wc) = ((task / heads) % (nh * nw) / nw, (task / heads) % nw);
                // The map position of a window's i-th token, if it is on the map.
                let at = |i: usize| {
                    let (y, x) = (wr * window + i / window, wc * window + i % window);
                    (y < h && x < w).then(|| image * hw + y * w + x)
                };
                let (q, rest) = buf.split_at_mut(n * d);
                let (k, rest) = rest.split_at_mut(n * d);
                let (v, o) = rest.split_at_mut(n * d);
                for i in 0..n {
                    let row = match at(i) {
                        Some(p) => &src[p * c3..][..c3],
                        None => pad.expect("checked above"),
                    };
                    let part = |j: usize| &row[j * c + head * d..][..d];
                    for (q, x) in q[i * d..][..d].iter_mut().zip(part(0)) {
                        *q = x * scale;
                    }
                    k[i * d..][..d].copy_from_slice(part(1));
                    v[i * d..][..d].copy_from_slice(part(2));
                }
                attend_one(q, k, v, (n, n, d), bf16, o);
                for i in 0..n {
                    if let Some(p) = at(i) {
                        // SAFETY: position p, head `head` is this task's alone, and
                        // p·c + head·d + d ≤ b·h·w·c.
                        let row =
                            unsafe { std::slice::from_raw_parts_mut(dst.at(p * c + head * d), d) };
                        row.copy_from_slice(&o[i * d..][..d]);
                    }
                }
            },
        );
    })?;
    Tensor::from_vec(out, (b, hw, c), qkv.device())
}

/// Channel-group attention from `qkv` `[b, n, 3c]` to `[b, n, c]`: in each of `groups` groups
/// of `d = c / groups` channels, the channels are the queries and keys over all `n` positions,
/// scores scaled by `1/√n`: `out_g (n × d) = V_g · softmax(Q_gᵀ·K_g / √n)ᵀ`.
pub fn channel_attention(qkv: &Tensor, groups: usize) -> Result<Tensor> {
    let (b, n, c3) = qkv.dims3()?;
    let c = c3 / 3;
    if c3 != 3 * c || groups == 0 || c % groups != 0 {
        candle_core::bail!("channel attention: qkv {:?} in {groups} groups", qkv.dims());
    }
    let d = c / groups;
    let scale = 1.0 / (n as f32).sqrt();
    let mut out = vec![0f32; b * n * c];
    let dst = SharedOut::new(out.as_mut_ptr());
    with_f32_values(qkv, |src| {
        (0..b * groups).into_par_iter().for_each(|task| {
            let (image, g) = (task / groups, task % groups);
            let base = &src[image * n * c3..][..n * c3];
            let part = |j: usize| base[j * c + g * d..].as_ptr();
            let mut scores = vec![0f32; d * d];
            // SAFETY: Q_gᵀ is d × n with element (i, p) at base[p·3c + g·d + i], K_g n × d with
            // (p, j) at base[p·3c + c + g·d + j]: inside `base`. scores is d × d.
            unsafe {
                gemm(
                    (d, d, n),
                    (scores.as_mut_ptr(), d),
                    (part(0), 1, c3 as isize),
                    (part(1), c3 as isize, 1),
                    scale,
                );
            }
            softmax_rows(&mut scores, d);
            // SAFETY: V_g is n × d with (p, j) at base[p·3c + 2c + g·d + j]; Pᵀ has (j, i) at
            // scores[i·d + j]. The output block (rows of this image, columns g·d..) is this
            // task's alone, inside `out`.
            unsafe {
                gemm(
                    (n, d, d),
                    (dst.at(image * n * c + g * d), c),
                    (part(2), c3 as isize, 1),
                    (scores.as_ptr(), 1, d as isize),
                    1.0,
                );
            }
        });
    })?;
    Tensor::from_vec(out, (b, n, c), qkv.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// transformers' window attention on tensors: pad, partition, attend, reverse, crop.
    fn windows_reference(
        qkv: &Tensor,
        (h, w): (usize, usize),
        window: usize,
        heads: usize,
        pad: &Tensor,
    ) -> Tensor {
        let (b, _, c3) = qkv.dims3().unwrap();
        let c = c3 / 3;
        let (hp, wp) = (h.div_ceil(window) * window, w.div_ceil(window) * window);
        let map = qkv.reshape((b, h, w, c3)).unwrap();
        let pad_row = pad.reshape((1, 1, 1, c3)).unwrap();
        // Padding: the pad row everywhere off the map.
        let full = pad_row
            .broadcast_as((b, hp, wp, c3))
            .unwrap()
            .contiguous()
            .unwrap();
        let full = full.slice_assign(&[0..b, 0..h, 0..w, 0..c3], &map).unwrap();
        let (nh, nw, n, d) = (hp / window, wp / window, window * window, c / heads);
        let win = full
            .reshape((b, nh, window, nw, window, c3))
            .unwrap()
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b * nh * nw, n, 3, heads, d))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let (q, k, v) = (
            win.get(0).unwrap().contiguous().unwrap(),
            win.get(1).unwrap().contiguous().unwrap(),
            win.get(2).unwrap().contiguous().unwrap(),
        );
        let scores = ((q * (1.0 / (d as f64).sqrt())).unwrap())
            .matmul(&k.t().unwrap())
            .unwrap();
        let ctx = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, nh, nw, window, window, c))
            .unwrap()
            .transpose(2, 3)
            .unwrap()
            .reshape((b, hp, wp, c))
            .unwrap()
            .narrow(1, 0, h)
            .unwrap()
            .narrow(2, 0, w)
            .unwrap()
            .contiguous()
            .unwrap();
        ctx.reshape((b, h * w, c)).unwrap()
    }

    #[test]
    fn window_attention_equals_partitioning_with_tensor_ops() {
        let dev = Device::Cpu;
        // Exact windows, and maps the windows overhang on the right, the bottom, or both.
        for (b, h, w, window, heads, c) in [
            (1, 6, 6, 3, 2, 8),
            (2, 5, 7, 3, 2, 12),
            (1, 4, 9, 4, 1, 4),
            (1, 7, 4, 3, 4, 16),
        ] {
            let qkv = Tensor::randn(0f32, 1.0, (b, h * w, 3 * c), &dev).unwrap();
            let pad = Tensor::randn(0f32, 1.0, 3 * c, &dev).unwrap();
            let pad_values = pad.to_vec1::<f32>().unwrap();
            let got = window_attention(&qkv, (h, w), window, heads, Some(&pad_values)).unwrap();
            let want = windows_reference(&qkv, (h, w), window, heads, &pad);
            let diff = crate::kernels::max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "b{b} {h}×{w} window {window}: {diff}");
        }
    }

    #[test]
    fn an_overhanging_window_without_a_padding_row_is_refused() {
        let qkv = Tensor::zeros((1, 20, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(window_attention(&qkv, (4, 5), 4, 1, None).is_err());
    }

    #[test]
    fn channel_attention_equals_permuted_tensor_ops() {
        let dev = Device::Cpu;
        for (b, n, c, groups) in [(1, 50, 8, 2), (2, 37, 12, 3), (1, 300, 16, 1)] {
            let qkv = Tensor::randn(0f32, 1.0, (b, n, 3 * c), &dev).unwrap();
            let got = channel_attention(&qkv, groups).unwrap();
            let t = qkv
                .reshape((b, n, 3, groups, c / groups))
                .unwrap()
                .permute((2, 0, 3, 4, 1))
                .unwrap();
            let (q, k, v) = (
                t.get(0).unwrap().contiguous().unwrap(),
                t.get(1).unwrap().contiguous().unwrap(),
                t.get(2).unwrap().contiguous().unwrap(),
            );
            let scores = (q * (1.0 / (n as f64).sqrt()))
                .unwrap()
                .matmul(&k.t().unwrap())
                .unwrap();
            let want = candle_nn::ops::softmax_last_dim(&scores)
                .unwrap()
                .matmul(&v)
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap()
                .reshape((b, n, c))
                .unwrap();
            let diff = crate::kernels::max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "b{b} n{n} c{c} groups {groups}: {diff}");
        }
    }
}
