//! Depthwise 3×3 convolution with padding 1, plus its input (DaViT's `conv(x) + x`), on CPU f32
//! channels-last tensors `[b, h·w, c]` — the token layout the rest of a DaViT block works in, so
//! the block never transposes to NCHW and back. candle runs a grouped convolution as one
//! convolution per channel (1,024 in Florence-2-large's last stage, each with its own im2col and
//! GEMM); here each output row is one pass over three input rows, vectorised over channels.

use candle_core::{Result, Tensor};

use super::{par_filled, with_f32_values};

/// `x + conv(x)` for tokens `x` `[b, h·w, c]` of an `h × w` map, `weight` `[c, 1, 3, 3]`,
/// `bias` `[c]`.
pub fn depthwise3x3_residual(
    x: &Tensor,
    (h, w): (usize, usize),
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if n != h * w || weight.dims4()? != (c, 1, 3, 3) || bias.dims1()? != c {
        candle_core::bail!(
            "depthwise conv: {:?} tokens of a {h}x{w} map, weight {:?}, bias {:?}",
            x.dims(),
            weight.dims(),
            bias.dims()
        );
    }
    // Tap-major: taps[t * c + ch] is channel ch's weight at tap t = 3·dy + dx.
    let kernel: Vec<f32> = weight.flatten_all()?.to_vec1()?;
    let taps: Vec<f32> = (0..9)
        .flat_map(|t| (0..c).map(move |ch| (t, ch)))
        .map(|(t, ch)| kernel[ch * 9 + t])
        .collect();
    let bias: Vec<f32> = bias.to_vec1()?;
    let row_len = w * c;
    let out = with_f32_values(x, |src| {
        par_filled(b * n * c, row_len, 0f32, |r, dst| {
            let (image, y) = (r / h, r % h);
            let plane = &src[image * n * c..(image + 1) * n * c];
            for (x, out) in dst.chunks_exact_mut(c).enumerate() {
                let own = &plane[(y * w + x) * c..][..c];
                for ((o, s), b) in out.iter_mut().zip(own).zip(&bias) {
                    *o = s + b;
                }
            }
            for dy in 0..3 {
                let Some(sy) = (y + dy).checked_sub(1).filter(|&sy| sy < h) else {
                    continue;
                };
                let line = &plane[sy * row_len..(sy + 1) * row_len];
                for dx in 0..3 {
                    let k = &taps[(dy * 3 + dx) * c..][..c];
                    // Output column x reads input column x + dx - 1, where it exists.
                    let (from, to) = match dx {
                        0 => (1, w),
                        1 => (0, w),
                        _ => (0, w.saturating_sub(1)),
                    };
                    for x in from..to {
                        let input = &line[(x + dx - 1) * c..][..c];
                        let out = &mut dst[x * c..][..c];
                        for ((o, i), k) in out.iter_mut().zip(input).zip(k) {
                            *o += k * i;
                        }
                    }
                }
            }
        })
    })?;
    Tensor::from_vec(out, (b, n, c), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    #[test]
    fn equals_candles_grouped_convolution_plus_the_input() {
        let dev = Device::Cpu;
        for (h, w) in [(5, 7), (1, 1), (2, 9), (3, 1)] {
            let map = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (3, 1, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
            let cfg = candle_nn::Conv2dConfig {
                padding: 1,
                groups: 3,
                ..Default::default()
            };
            let conv = candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), cfg);
            let want = (conv.forward(&map).unwrap() + &map).unwrap();
            let tokens = map.flatten_from(2).unwrap().transpose(1, 2).unwrap();
            let got = depthwise3x3_residual(&tokens, (h, w), &weight, &bias).unwrap();
            let got = got.transpose(1, 2).unwrap().reshape((2, 3, h, w)).unwrap();
            assert!(super::super::max_abs_diff(&got, &want) < 1e-5, "{h}x{w}");
        }
    }
}
