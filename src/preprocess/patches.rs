//! Qwen-VL style image input: the image resized to a grid of whole patches that keeps its aspect
//! ratio within a pixel budget (`smart_resize`), normalized as every other processor does, then
//! cut into flattened patches `[grid_h * grid_w, 3 * temporal * patch * patch]` in the order the
//! vision tower's patch merger reads them. Follows transformers' `Qwen2VLImageProcessorPil`, which
//! Qwen2-VL, Qwen2.5-VL and Qwen3-VL all use (patch 14 or 16, merge 2, temporal 2).

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;

use super::{Preprocessor, PreprocessorConfig, SizeSpec};
use crate::error::{Error, Result};

/// The fields of a Qwen-VL `preprocessor_config.json` beyond the common ones.
#[derive(Debug, Clone, Deserialize)]
struct PatchFields {
    #[serde(default)]
    size: Option<serde_json::Value>,
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    #[serde(default = "fourteen")]
    patch_size: usize,
    #[serde(default = "two")]
    temporal_patch_size: usize,
    #[serde(default = "two")]
    merge_size: usize,
}

fn fourteen() -> usize {
    14
}
fn two() -> usize {
    2
}

/// A Qwen-VL image processor.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchProcessor {
    /// Rescale, normalize and the resampling filter; its own size is not used.
    pixels: Preprocessor,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    /// The checkpoint's pixel budget.
    pub min_pixels: u64,
    pub max_pixels: u64,
}

/// One image as the vision tower takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Patches {
    /// `grid_h * grid_w` rows of `3 * temporal * patch * patch` values.
    pub values: Vec<f32>,
    /// `(t, h, w)` in patches: `image_grid_thw`.
    pub grid: (usize, usize, usize),
}

impl Patches {
    /// Image tokens the language model sees: one per `merge × merge` patches.
    pub fn tokens(&self, merge_size: usize) -> usize {
        self.grid.0 * self.grid.1 * self.grid.2 / (merge_size * merge_size)
    }
}

impl PatchProcessor {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let fields: PatchFields = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
        let mut common: PreprocessorConfig =
            serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
        // The size is a pixel budget here, not an output size: the common processor gets a
        // placeholder, and only its rescale, normalize and filter are used.
        common.size = Some(SizeSpec::HeightWidth {
            height: 1,
            width: 1,
        });
        common.do_center_crop = false;
        // Qwen's processors default to CLIP's statistics (OPENAI_CLIP_MEAN / STD).
        common
            .image_mean
            .get_or_insert_with(|| vec![0.481_454_66, 0.457_827_5, 0.408_210_73]);
        common
            .image_std
            .get_or_insert_with(|| vec![0.268_629_54, 0.261_302_6, 0.275_777_1]);
        let budget = |key: &str| {
            fields
                .size
                .as_ref()
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_u64())
        };
        let min_pixels = fields
            .min_pixels
            .or(budget("shortest_edge"))
            .unwrap_or(56 * 56);
        let max_pixels = fields
            .max_pixels
            .or(budget("longest_edge"))
            .unwrap_or(28 * 28 * 1280);
        let config_error = |message: String| Error::Config {
            file: path.display().to_string(),
            message,
        };
        if fields.patch_size == 0 || fields.merge_size == 0 || fields.temporal_patch_size == 0 {
            return Err(config_error(
                "patch_size, merge_size and temporal_patch_size must be positive".into(),
            ));
        }
        if min_pixels > max_pixels {
            return Err(config_error(format!(
                "min pixels {min_pixels} above max pixels {max_pixels}"
            )));
        }
        Ok(Self {
            pixels: Preprocessor::new(common)?,
            patch_size: fields.patch_size,
            temporal_patch_size: fields.temporal_patch_size,
            merge_size: fields.merge_size,
            min_pixels,
            max_pixels,
        })
    }

    /// The side every resized dimension is a multiple of: patch × merge.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// The image's patches, resized within `min_pixels..=max_pixels`.
    pub fn apply(
        &self,
        image: &RgbImage,
        min_pixels: u64,
        max_pixels: u64,
    ) -> std::result::Result<Patches, String> {
        let (w, h) = image.dimensions();
        let (rh, rw) = smart_resize(h, w, self.factor() as u32, min_pixels, max_pixels)?;
        let chw = self.pixels.resize_and_normalize(image, rh, rw);
        Ok(self.patchify(&chw, rh as usize, rw as usize))
    }

    /// `patchify`: CHW pixels of a `height × width` image (multiples of patch × merge) to rows of
    /// `(channel, temporal, patch_y, patch_x)` values, rows ordered by merge block
    /// (block_y, block_x, y in block, x in block); each patch repeated over the temporal axis, as a
    /// still image is a clip of `temporal` identical frames.
    pub fn patchify(&self, chw: &[f32], height: usize, width: usize) -> Patches {
        let (p, m, t) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (gh, gw) = (height / p, width / p);
        let plane = height * width;
        let row_len = 3 * t * p * p;
        let mut values = Vec::with_capacity(gh * gw * row_len);
        for by in 0..gh / m {
            for bx in 0..gw / m {
                for iy in 0..m {
                    for ix in 0..m {
                        let (y0, x0) = ((by * m + iy) * p, (bx * m + ix) * p);
                        for c in 0..3 {
                            for _ in 0..t {
                                for y in 0..p {
                                    let start = c * plane + (y0 + y) * width + x0;
                                    values.extend_from_slice(&chw[start..start + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Patches {
            values,
            grid: (1, gh, gw),
        }
    }
}

/// transformers' `smart_resize`: `(height, width)` rounded to multiples of `factor` (ties to
/// even, as Python's `round`), scaled down into `max_pixels` or up to `min_pixels` keeping the
/// aspect ratio as closely as whole multiples allow.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> std::result::Result<(u32, u32), String> {
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    if height == 0 || width == 0 {
        return Err("the image is empty".into());
    }
    if h.max(w) / h.min(w) > 200.0 {
        return Err(format!(
            "aspect ratio {:.0}:1 is above 200:1, which the model's processor refuses",
            h.max(w) / h.min(w)
        ));
    }
    let mut h_bar = ((h / f).round_ties_even() * f) as u64;
    let mut w_bar = ((w / f).round_ties_even() * f) as u64;
    let area = u64::from(height) * u64::from(width);
    if h_bar * w_bar > max_pixels {
        let beta = (area as f64 / max_pixels as f64).sqrt();
        h_bar = (factor as u64).max(((h / beta / f).floor() * f) as u64);
        w_bar = (factor as u64).max(((w / beta / f).floor() * f) as u64);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / area as f64).sqrt();
        h_bar = ((h * beta / f).ceil() * f) as u64;
        w_bar = ((w * beta / f).ceil() * f) as u64;
    }
    Ok((h_bar as u32, w_bar as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_like_python_and_keeps_the_budget() {
        // 2.5 and 3.5 patches of 28 round to even: 2 and 4.
        assert_eq!(smart_resize(70, 98, 28, 0, u64::MAX).unwrap(), (56, 112));
        // Within budget: nearest multiples.
        assert_eq!(smart_resize(480, 640, 32, 0, 1 << 20).unwrap(), (480, 640));
        // Above: floor after scaling, never below one factor.
        let (h, w) = smart_resize(3024, 4032, 32, 0, 1 << 20).unwrap();
        assert!(u64::from(h) * u64::from(w) <= 1 << 20);
        assert_eq!((h % 32, w % 32), (0, 0));
        assert_eq!((h, w), (864, 1152));
        // Below: ceil after scaling up.
        assert_eq!(
            smart_resize(20, 20, 28, 56 * 56, u64::MAX).unwrap(),
            (56, 56)
        );
        assert!(smart_resize(1, 300, 28, 0, u64::MAX).is_err());
    }
}
