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

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
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
        let mut out = vec![0u8; (last - first) * ow * 3];
        for (r, y) in (first..last).enumerate() {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            let dst = &mut out[r * ow * 3..(r + 1) * ow * 3];
            for xx in 0..ow {
                let start = horiz.starts[xx];
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, &k) in horiz.weights[xx].iter().enumerate() {
                    let p = &row[(start + i) * 3..(start + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += i64::from(p[c]) * i64::from(k);
                    }
                }
                for c in 0..3 {
                    dst[xx * 3 + c] = clip8(acc[c]);
                }
            }
        }
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
        let mut acc = vec![1i64 << (PRECISION_BITS - 1); ow * 3];
        for (i, &k) in ks.iter().enumerate() {
            let row = &horizontal[(start + i) * ow * 3..(start + i + 1) * ow * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i64::from(p) * i64::from(k);
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

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        let c = coefficients(512, 64, Filter::Bicubic);
        for w in &c.weights {
            let s: i64 = w.iter().map(|&k| i64::from(k)).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= w.len() as i64, "{s}");
        }
    }
}
