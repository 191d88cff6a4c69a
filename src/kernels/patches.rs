//! The patches of a strided convolution over channels-last tokens (im2col), so that the
//! convolution is one matrix product with the weight laid out `[out, kh, kw, in]`
//! ([`conv_weight_as_matrix`]).
//!
//! DaViT's patch embeddings are `k × k` convolutions with stride and padding between stages
//! whose blocks work on tokens `[b, h·w, c]`. Through candle each one transposed the tokens to
//! NCHW, ran candle's im2col and an f32 GEMM, and transposed back, element by element: 0.3 s an
//! image for Florence-2-base on 2 cores, for 17 GFLOP. Here the patches are gathered from the
//! tokens as they lie, a run of `c` channels at a time, and the product goes through glance's
//! linear layer (the bf16 kernel under `--dtype bf16`).

use candle_core::{Result, Tensor};

use super::{par_filled, with_f32_values};

/// The geometry of a square convolution: kernel size, stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub size: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    /// The output length along a side of `len` inputs (as torch's `Conv2d`).
    pub fn out_len(&self, len: usize) -> Option<usize> {
        (len + 2 * self.padding)
            .checked_sub(self.size)
            .filter(|_| self.stride > 0)
            .map(|span| span / self.stride + 1)
    }
}

/// For tokens `x` `[b, h·w, c]` of an `h × w` map, `[b, ho·wo, size·size·c]`: at each output
/// position, the `size × size` inputs it covers, row by row, each with its `c` channels, zero
/// where the window reaches past the map. Also returns `(ho, wo)`.
pub fn patches(
    x: &Tensor,
    (h, w): (usize, usize),
    win: Window,
) -> Result<(Tensor, (usize, usize))> {
    let (b, n, c) = x.dims3()?;
    let (Some(ho), Some(wo)) = (win.out_len(h), win.out_len(w)) else {
        candle_core::bail!("patches: a {h}×{w} map is smaller than the {win:?}");
    };
    if n != h * w {
        candle_core::bail!("patches: {:?} tokens for a {h}×{w} map", x.dims());
    }
    let k = win.size;
    let width = k * k * c;
    let out = with_f32_values(x, |src| {
        // A piece is one output row: wo patches.
        par_filled(b * ho * wo * width, wo * width, 0f32, |r, dst| {
            let (image, oy) = (r / ho, r % ho);
            let plane = &src[image * n * c..][..n * c];
            for ky in 0..k {
                let Some(y) = (oy * win.stride + ky)
                    .checked_sub(win.padding)
                    .filter(|&y| y < h)
                else {
                    continue;
                };
                for (ox, patch) in dst.chunks_exact_mut(width).enumerate() {
                    for kx in 0..k {
                        let Some(x) = (ox * win.stride + kx)
                            .checked_sub(win.padding)
                            .filter(|&x| x < w)
                        else {
                            continue;
                        };
                        patch[(ky * k + kx) * c..][..c]
                            .copy_from_slice(&plane[(y * w + x) * c..][..c]);
                    }
                }
            }
        })
    })?;
    Ok((
        Tensor::from_vec(out, (b, ho * wo, width), x.device())?,
        (ho, wo),
    ))
}

/// A convolution weight `[out, in, k, k]` as the `[out, k·k·in]` matrix that multiplies
/// [`patches`].
pub fn conv_weight_as_matrix(weight: &Tensor) -> Result<Tensor> {
    let (out, cin, kh, kw) = weight.dims4()?;
    weight
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((out, kh * kw * cin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    #[test]
    fn patches_times_the_weight_equal_candles_convolution() {
        let dev = Device::Cpu;
        // DaViT's shapes in small: 7×7 stride 4 padding 3, and 3×3 stride 2 padding 1, on maps
        // that the stride divides and ones it does not.
        for (h, w, size, stride, padding) in [
            (16, 16, 7, 4, 3),
            (9, 6, 3, 2, 1),
            (5, 5, 3, 2, 1),
            (4, 7, 3, 1, 0),
        ] {
            let (cin, cout) = (3, 5);
            let map = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (cout, cin, size, size), &dev).unwrap();
            let cfg = candle_nn::Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let want = candle_nn::Conv2d::new(weight.clone(), None, cfg)
                .forward(&map)
                .unwrap();
            let tokens = map.flatten_from(2).unwrap().transpose(1, 2).unwrap();
            let win = Window {
                size,
                stride,
                padding,
            };
            let (p, (ho, wo)) = patches(&tokens, (h, w), win).unwrap();
            let got = p
                .matmul(
                    &conv_weight_as_matrix(&weight)
                        .unwrap()
                        .t()
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap()
                        .broadcast_as((2, size * size * cin, cout))
                        .unwrap(),
                )
                .unwrap();
            let got = got
                .transpose(1, 2)
                .unwrap()
                .reshape((2, cout, ho, wo))
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "{h}×{w} {win:?}");
            assert!(
                super::super::max_abs_diff(&got, &want) < 1e-4,
                "{h}×{w} {win:?}"
            );
        }
    }

    #[test]
    fn a_map_smaller_than_the_kernel_is_refused() {
        let x = Tensor::zeros((1, 4, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let win = Window {
            size: 7,
            stride: 4,
            padding: 0,
        };
        assert!(patches(&x, (2, 2), win).is_err());
    }
}
