//! Pillow's resampling (`Image.resize`, libImaging/Resample.c) re-implemented exactly: a
//! separable convolution with the filter stretched when shrinking (antialiasing), 8-bit
//! fixed-point coefficients with 22 fractional bits, horizontal pass first over only the rows the
//! vertical pass needs, each pass rounded and clipped to 8 bits. Matching it bit for bit is what
//! makes glance's pixel values equal those of transformers' PIL-based image processors.

use image::RgbImage;

/// Pillow's resampling filters, by their `Image.Resampling` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// PIL's numeric codes as stored in `preprocessor_config.json` (`resample`).
    pub fn from_pil_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Nearest | Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Nearest | Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: the first input index, and fixed-point weights for the following inputs.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut w: Vec<f64> = (0..count)
            .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            for v in w.iter_mut() {
                *v /= total;
            }
        }
        let fixed = w
            .iter()
            .map(|&v| {
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                }
            })
            .collect();
        starts.push(xmin);
        weights.push(fixed);
    }
    Coefficients { starts, weights }
}

fn clip8(v: i32) -> u8 {
    if v >= (1i32 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's per-channel sums of `pixels` (interleaved RGB) times `weights` (each tap's weight
/// three times), from its rounding offset, in 32-bit arithmetic as Pillow's `int` accumulators.
/// Wrapping addition is associative, so sums gathered in any order come out the same; 24 lanes
/// at a time let the compiler vectorise the loop.
#[inline(always)]
fn dot_rgb(pixels: &[u8], weights: &[i32]) -> [i32; 3] {
    const LANES: usize = 24;
    let mut lanes = [0i32; LANES];
    let (p_chunks, k_chunks) = (pixels.chunks_exact(LANES), weights.chunks_exact(LANES));
    let (p_tail, k_tail) = (p_chunks.remainder(), k_chunks.remainder());
    for (p, k) in p_chunks.zip(k_chunks) {
        for j in 0..LANES {
            lanes[j] = lanes[j].wrapping_add(i32::from(p[j]).wrapping_mul(k[j]));
        }
    }
    for (j, (&p, &k)) in p_tail.iter().zip(k_tail).enumerate() {
        lanes[j] = lanes[j].wrapping_add(i32::from(p).wrapping_mul(k));
    }
    let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
    for (j, v) in lanes.into_iter().enumerate() {
        acc[j % 3] = acc[j % 3].wrapping_add(v);
    }
    acc
}

/// The horizontal pass over `rows` (each `w` RGB pixels) into `out` (each `starts.len()`).
#[inline(always)]
fn horizontal(rows: &[u8], w: usize, starts: &[usize], spread: &[Vec<i32>], out: &mut [u8]) {
    let ow = starts.len();
    for (row, dst) in rows.chunks_exact(w * 3).zip(out.chunks_exact_mut(ow * 3)) {
        for ((&start, ks), px) in starts.iter().zip(spread).zip(dst.chunks_exact_mut(3)) {
            let acc = dot_rgb(&row[start * 3..start * 3 + ks.len()], ks);
            for c in 0..3 {
                px[c] = clip8(acc[c]);
            }
        }
    }
}

/// [`horizontal`] compiled for AVX2, whose 32-bit multiplies take eight lanes at a time (the
/// portable build's SSE2 has none).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_avx2(
    rows: &[u8],
    w: usize,
    starts: &[usize],
    spread: &[Vec<i32>],
    out: &mut [u8],
) {
    horizontal(rows, w, starts, spread, out)
}

/// Resizes an RGB image to `width` x `height` exactly as Pillow's `Image.resize` does.
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if filter == Filter::Nearest {
        return nearest(image, width, height);
    }
    let src = image.as_raw();
    let vert = coefficients(h, oh, filter);
    // Horizontal pass over the rows the vertical pass reads.
    let (first_row, rows, horizontal): (usize, usize, Vec<u8>) = if ow != w {
        let first = vert.starts[0];
        let last = vert.starts[oh - 1] + vert.weights[oh - 1].len();
        let horiz = coefficients(w, ow, filter);
        // Each weight repeated for the three channels, so that a tap run is one contiguous dot
        // product of bytes and weights; lane j of a 24-wide chunk is channel j % 3.
        let spread: Vec<Vec<i32>> = horiz
            .weights
            .iter()
            .map(|ks| ks.iter().flat_map(|&k| [k; 3]).collect())
            .collect();
        let mut out = vec![0u8; (last - first) * ow * 3];
        let rows = &src[first * w * 3..last * w * 3];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { horizontal_avx2(rows, w, &horiz.starts, &spread, &mut out) };
        } else {
            horizontal(rows, w, &horiz.starts, &spread, &mut out);
        }
        #[cfg(not(target_arch = "x86_64"))]
        horizontal(rows, w, &horiz.starts, &spread, &mut out);
        (first, last - first, out)
    } else {
        (0, h, src.clone())
    };
    if oh == h && first_row == 0 && rows == h {
        return RgbImage::from_raw(width, height, horizontal).expect("buffer matches size");
    }
    let mut out = vec![0u8; oh * ow * 3];
    for yy in 0..oh {
        let start = vert.starts[yy] - first_row;
        let ks = &vert.weights[yy];
        let dst = &mut out[yy * ow * 3..(yy + 1) * ow * 3];
        let mut acc = vec![1i32 << (PRECISION_BITS - 1); ow * 3];
        for (i, &k) in ks.iter().enumerate() {
            let row = &horizontal[(start + i) * ow * 3..(start + i + 1) * ow * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(k));
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = clip8(a);
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer matches size")
}

/// Pillow's nearest-neighbour resize: source pixel at `floor((x + 0.5) * scale)`.
fn nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let sx = f64::from(image.width()) / f64::from(width);
    let sy = f64::from(image.height()) / f64::from(height);
    RgbImage::from_fn(width, height, |x, y| {
        let ix = ((f64::from(x) + 0.5) * sx) as u32;
        let iy = ((f64::from(y) + 0.5) * sy) as u32;
        *image.get_pixel(ix.min(image.width() - 1), iy.min(image.height() - 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_images_stay_uniform() {
        let img = RgbImage::from_pixel(97, 53, image::Rgb([200, 10, 77]));
        for f in [
            Filter::Bicubic,
            Filter::Bilinear,
            Filter::Lanczos,
            Filter::Box,
            Filter::Hamming,
        ] {
            let out = resize(&img, 31, 64, f);
            assert!(out.pixels().all(|p| p.0 == [200, 10, 77]), "{f:?}");
        }
    }

    /// Pillow's loops written plainly: one pixel, one tap, one channel at a time.
    fn resize_plain(image: &RgbImage, ow: usize, oh: usize, filter: Filter) -> Vec<u8> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let src = image.as_raw();
        let (horiz, vert) = (coefficients(w, ow, filter), coefficients(h, oh, filter));
        let mut mid = vec![0u8; h * ow * 3];
        for y in 0..h {
            for xx in 0..ow {
                for c in 0..3 {
                    let mut acc = 1i32 << (PRECISION_BITS - 1);
                    for (i, &k) in horiz.weights[xx].iter().enumerate() {
                        acc += i32::from(src[(y * w + horiz.starts[xx] + i) * 3 + c]) * k;
                    }
                    mid[(y * ow + xx) * 3 + c] = clip8(acc);
                }
            }
        }
        let mut out = vec![0u8; oh * ow * 3];
        for yy in 0..oh {
            for x in 0..ow * 3 {
                let mut acc = 1i32 << (PRECISION_BITS - 1);
                for (i, &k) in vert.weights[yy].iter().enumerate() {
                    acc += i32::from(mid[(vert.starts[yy] + i) * ow * 3 + x]) * k;
                }
                out[yy * ow * 3 + x] = clip8(acc);
            }
        }
        out
    }

    #[test]
    fn equals_the_plain_loops_from_mild_to_steep_shrinking() {
        let mut state = 12345u32;
        let img = RgbImage::from_fn(1013, 677, |_, _| {
            let mut byte = || {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            };
            image::Rgb([byte(), byte(), byte()])
        });
        for filter in [
            Filter::Bicubic,
            Filter::Bilinear,
            Filter::Lanczos,
            Filter::Box,
            Filter::Hamming,
        ] {
            for (ow, oh) in [(700, 500), (224, 150), (37, 29), (1013, 300), (1200, 677)] {
                let fast = resize(&img, ow as u32, oh as u32, filter);
                assert!(
                    fast.as_raw() == &resize_plain(&img, ow, oh, filter),
                    "{filter:?} to {ow}x{oh}"
                );
            }
        }
    }

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        let c = coefficients(512, 64, Filter::Bicubic);
        for w in &c.weights {
            let s: i64 = w.iter().map(|&k| i64::from(k)).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= w.len() as i64, "{s}");
        }
    }
}
