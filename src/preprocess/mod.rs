//! Image preprocessing driven by `preprocessor_config.json`, following transformers' slow
//! (PIL-based) image processors: resize → center crop → rescale → normalize, channels first.
//! Decoding with EXIF orientation ([`decode`]) and Pillow-exact resampling live here too.

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;

use crate::error::{Error, Result};

pub mod decode;
pub mod jpeg;
pub mod patches;
mod resample;
pub use resample::Filter;

/// What a stage asks of each image: pixels of one fixed size (most models), or Qwen-VL patches
/// at the image's own aspect ratio within a pixel budget.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageProcessor {
    Fixed(Preprocessor),
    Patches(patches::PatchProcessor),
}

/// An image as an [`ImageProcessor`] made it.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// `3 * height * width` floats, channels first.
    Chw(Vec<f32>),
    Patches(patches::Patches),
}

impl ImageProcessor {
    /// The image's pixels, or why this processor cannot take it (Qwen's processor refuses
    /// extreme aspect ratios).
    pub fn apply(&self, image: &RgbImage) -> std::result::Result<Pixels, String> {
        match self {
            Self::Fixed(p) => Ok(Pixels::Chw(p.apply(image))),
            Self::Patches(p) => p
                .apply(image, p.min_pixels, p.max_pixels)
                .map(Pixels::Patches),
        }
    }
}

impl Pixels {
    /// The values: CHW pixels, or the patch rows.
    pub fn values(&self) -> &[f32] {
        match self {
            Self::Chw(v) => v,
            Self::Patches(p) => &p.values,
        }
    }
}

/// A size as transformers writes it: `{"height", "width"}`, `{"shortest_edge"}` or a bare int.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    HeightWidth { height: u32, width: u32 },
    ShortestEdge { shortest_edge: u32 },
    Square(u32),
}

/// The subset of `preprocessor_config.json` that decides pixel values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default = "yes")]
    pub do_resize: bool,
    pub size: Option<SizeSpec>,
    /// PIL resample code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
    #[serde(default = "bicubic")]
    pub resample: u8,
    #[serde(default)]
    pub do_center_crop: bool,
    pub crop_size: Option<SizeSpec>,
    /// ConvNeXt-style: resize the shortest edge to `size / crop_pct`, then crop `size`.
    pub crop_pct: Option<f64>,
    /// e.g. "ConvNextImageProcessor" (whose `crop_pct` defaults to 224/256).
    pub image_processor_type: Option<String>,
    /// The legacy name of the same, e.g. "ConvNextFeatureExtractor" (microsoft/resnet-50).
    pub feature_extractor_type: Option<String>,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "one_over_255")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    pub image_mean: Option<Vec<f32>>,
    pub image_std: Option<Vec<f32>>,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u8 {
    3
}
fn one_over_255() -> f64 {
    1.0 / 255.0
}

/// ImageNet statistics, transformers' `IMAGENET_DEFAULT_MEAN/STD`, used when a config is silent.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl PreprocessorConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::json(path, e))
    }

    /// A model's image processor settings: `preprocessor_config.json`, or the `image_processor`
    /// of the `processor_config.json` transformers 5 writes instead; `None` when it has neither.
    pub fn from_model(files: &crate::load::hub::ModelFiles) -> Result<Option<Self>> {
        if let Some(path) = files.get_optional("preprocessor_config.json")? {
            return Self::from_file(&path).map(Some);
        }
        let Some(path) = files.get_optional("processor_config.json")? else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::json(&path, e))?;
        match json.get("image_processor") {
            Some(inner) => serde_json::from_value(inner.clone())
                .map(Some)
                .map_err(|e| Error::json(&path, e)),
            None => Ok(None),
        }
    }

    /// A processor for models that ship no `preprocessor_config.json`: a square resize.
    pub fn square(size: u32) -> Self {
        Self {
            do_resize: true,
            size: Some(SizeSpec::HeightWidth {
                height: size,
                width: size,
            }),
            resample: 3,
            do_center_crop: false,
            crop_size: None,
            crop_pct: None,
            image_processor_type: None,
            feature_extractor_type: None,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: None,
            image_std: None,
        }
    }
}

/// Turns RGB images into normalized CHW float pixels of a fixed size. Equal processors give
/// equal pixels, so a run computes them once for stages that share one.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessor {
    cfg: PreprocessorConfig,
    filter: Filter,
    mean: [f32; 3],
    std: [f32; 3],
    out_height: u32,
    out_width: u32,
}

fn three(values: &Option<Vec<f32>>, default: [f32; 3], what: &str) -> Result<[f32; 3]> {
    match values {
        None => Ok(default),
        Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        Some(v) if v.len() == 1 => Ok([v[0]; 3]),
        Some(v) => Err(Error::Options(format!(
            "{what} has {} values, expected 3",
            v.len()
        ))),
    }
}

impl Preprocessor {
    pub fn new(mut cfg: PreprocessorConfig) -> Result<Self> {
        // A bare `"size": 224` (legacy configs) means what the processor's own
        // `get_size_dict(size, default_to_square=...)` makes of it.
        if let Some(SizeSpec::Square(s)) = cfg.size {
            cfg.size = Some(match square_means_shortest_edge(&cfg) {
                true => SizeSpec::ShortestEdge { shortest_edge: s },
                false => SizeSpec::HeightWidth {
                    height: s,
                    width: s,
                },
            });
        }
        let filter = Filter::from_pil_code(cfg.resample)
            .ok_or_else(|| Error::Options(format!("unknown resample code {}", cfg.resample)))?;
        let mean = three(&cfg.image_mean, IMAGENET_MEAN, "image_mean")?;
        let std = three(&cfg.image_std, IMAGENET_STD, "image_std")?;
        let (out_height, out_width) = match (cfg.do_center_crop, cfg.crop_size, cfg.size) {
            (true, Some(crop), _) => fixed_size(crop)?,
            (_, _, Some(SizeSpec::ShortestEdge { shortest_edge: s }))
                if convnext_pct(&cfg).is_some() =>
            {
                (s, s)
            }
            (_, _, Some(size)) => fixed_size(size)?,
            _ => return Err(Error::Options("preprocessor config has no size".into())),
        };
        Ok(Self {
            cfg,
            filter,
            mean,
            std,
            out_height,
            out_width,
        })
    }

    /// (height, width) of the pixel tensor this processor produces.
    pub fn output_size(&self) -> (u32, u32) {
        (self.out_height, self.out_width)
    }

    /// Stacks CHW buffers from [`Preprocessor::apply`] into a `[batch, 3, H, W]` tensor.
    pub fn batch(
        &self,
        pixels: &[impl AsRef<[f32]>],
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> Result<candle_core::Tensor> {
        let (h, w) = self.output_size();
        let flat: Vec<f32> = pixels
            .iter()
            .flat_map(|p| p.as_ref().iter().copied())
            .collect();
        let shape = (pixels.len(), 3, h as usize, w as usize);
        Ok(candle_core::Tensor::from_vec(flat, shape, device)?.to_dtype(dtype)?)
    }

    /// Pixel values in CHW order, `3 * height * width` floats.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        let resized = self.resize(image);
        let cropped = self.center_crop(resized);
        self.normalize(&cropped)
    }

    /// The image resized to exactly `height × width` with this processor's filter (kept as it
    /// is when it has that size), then rescaled and normalized: CHW floats.
    pub fn resize_and_normalize(&self, image: &RgbImage, height: u32, width: u32) -> Vec<f32> {
        if image.dimensions() == (width, height) {
            return self.normalize(image);
        }
        self.normalize(&resample::resize(image, width, height, self.filter))
    }

    /// Matches `BaseImageProcessor.resize` with `get_resize_output_image_size`.
    fn resize(&self, image: &RgbImage) -> RgbImage {
        if !self.cfg.do_resize {
            return image.clone();
        }
        let (w, h) = image.dimensions();
        let (th, tw) = match self.cfg.size {
            // Matches ConvNextImageProcessor.resize: below 384 keep the aspect ratio with the
            // shortest edge at size / crop_pct (the crop follows); from 384 on, warp to a square.
            Some(SizeSpec::ShortestEdge { shortest_edge: s })
                if convnext_pct(&self.cfg).is_some() =>
            {
                let pct = convnext_pct(&self.cfg).unwrap_or(1.0);
                if s < 384 {
                    shortest_edge_size(h, w, (f64::from(s) / pct) as u32)
                } else {
                    (s, s)
                }
            }
            Some(SizeSpec::HeightWidth { height, width })
            | Some(SizeSpec::Square(height @ width)) => (height, width),
            Some(SizeSpec::ShortestEdge { shortest_edge: s }) => {
                let s = match self.cfg.crop_pct {
                    Some(pct) if s < 384 => (f64::from(s) / pct) as u32,
                    _ => s,
                };
                shortest_edge_size(h, w, s)
            }
            None => (h, w),
        };
        if (th, tw) == (h, w) {
            return image.clone();
        }
        resample::resize(image, tw, th, self.filter)
    }

    /// Matches transformers' `center_crop` for images at least as large as the crop.
    fn center_crop(&self, image: RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        if (h, w) == (self.out_height, self.out_width) {
            return image;
        }
        let (ch, cw) = (self.out_height, self.out_width);
        let mut out = RgbImage::from_pixel(cw, ch, image::Rgb([0, 0, 0]));
        // transformers pads with zeros when the image is smaller than the crop.
        let top = (i64::from(h) - i64::from(ch)) / 2;
        let left = (i64::from(w) - i64::from(cw)) / 2;
        for y in 0..ch {
            let sy = i64::from(y) + top;
            if sy < 0 || sy >= i64::from(h) {
                continue;
            }
            for x in 0..cw {
                let sx = i64::from(x) + left;
                if sx < 0 || sx >= i64::from(w) {
                    continue;
                }
                out.put_pixel(x, y, *image.get_pixel(sx as u32, sy as u32));
            }
        }
        out
    }

    fn normalize(&self, image: &RgbImage) -> Vec<f32> {
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        let factor = if self.cfg.do_rescale {
            self.cfg.rescale_factor
        } else {
            1.0
        };
        let (mean, std) = if self.cfg.do_normalize {
            (self.mean, self.std)
        } else {
            ([0.0; 3], [1.0; 3])
        };
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                // transformers rescales in float64, then normalizes in float32.
                let x = (f64::from(px[c]) * factor) as f32;
                out[c * plane + i] = (x - mean[c]) / std[c];
            }
        }
        out
    }
}

/// The ConvNeXt processor's `crop_pct` (224/256 when its config leaves it out), `None` for other
/// processors.
fn convnext_pct(cfg: &PreprocessorConfig) -> Option<f64> {
    match cfg.crop_pct {
        Some(p) => Some(p),
        None if is_convnext(cfg) => Some(224.0 / 256.0),
        None => None,
    }
}

/// Image processors that read a bare size as the shortest edge: the classes of transformers 5
/// whose `default_to_square` is False (by name, without `ImageProcessor` or `FeatureExtractor`).
/// All others (ViT, DeiT, BLIP, BEiT, Swin, ...) read it as a square, the base class's default.
const SHORTEST_EDGE_PROCESSORS: &[&str] = &[
    "Bit",
    "BridgeTower",
    "CLIP",
    "Chameleon",
    "ChineseCLIP",
    "ConditionalDetr",
    "ConvNext",
    "DeformableDetr",
    "Detr",
    "Eomt",
    "GroundingDino",
    "Idefics2",
    "Levit",
    "Llava",
    "LlavaNext",
    "LlavaOnevision",
    "Mask2Former",
    "MaskFormer",
    "MobileNetV1",
    "MobileNetV2",
    "MobileViT",
    "OneFormer",
    "PoolFormer",
    "Qwen2VL",
    "RTDetr",
    "Siglip",
    "TextNet",
    "Tvp",
    "VideoMAE",
    "Vilt",
    "Yolos",
];

/// Whether a bare `"size": N` is a shortest edge: by the processor's type where the config
/// names one, else (no type at all) when a center crop follows, as with CLIP's old configs.
fn square_means_shortest_edge(cfg: &PreprocessorConfig) -> bool {
    let types: Vec<&str> = [&cfg.image_processor_type, &cfg.feature_extractor_type]
        .into_iter()
        .filter_map(|t| t.as_deref())
        .collect();
    if types.is_empty() {
        return cfg.do_center_crop;
    }
    types.iter().any(|t| {
        let family = t
            .split_once("ImageProcessor")
            .or_else(|| t.split_once("FeatureExtractor"))
            .map_or(*t, |(family, _)| family);
        SHORTEST_EDGE_PROCESSORS.contains(&family)
    })
}

fn is_convnext(cfg: &PreprocessorConfig) -> bool {
    [&cfg.image_processor_type, &cfg.feature_extractor_type]
        .iter()
        .any(|t| t.as_deref().is_some_and(|t| t.starts_with("ConvNext")))
}

fn fixed_size(size: SizeSpec) -> Result<(u32, u32)> {
    match size {
        SizeSpec::HeightWidth { height, width } => Ok((height, width)),
        SizeSpec::Square(s) => Ok((s, s)),
        SizeSpec::ShortestEdge { .. } => Err(Error::Options(
            "a shortest_edge size needs a crop_size to give a fixed output size".into(),
        )),
    }
}

/// (height, width) with the shorter side set to `short`, the longer scaled and truncated, as
/// `get_resize_output_image_size(default_to_square=False)` does.
fn shortest_edge_size(h: u32, w: u32, short: u32) -> (u32, u32) {
    let (small, large) = if w <= h { (w, h) } else { (h, w) };
    let long = (f64::from(short) * f64::from(large) / f64::from(small)) as u32;
    if w <= h {
        (long, short)
    } else {
        (short, long)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_forms_parse() {
        let hw: SizeSpec = serde_json::from_str(r#"{"height": 384, "width": 384}"#).unwrap();
        assert_eq!(
            hw,
            SizeSpec::HeightWidth {
                height: 384,
                width: 384
            }
        );
        let se: SizeSpec = serde_json::from_str(r#"{"shortest_edge": 224}"#).unwrap();
        assert_eq!(se, SizeSpec::ShortestEdge { shortest_edge: 224 });
        let sq: SizeSpec = serde_json::from_str("224").unwrap();
        assert_eq!(sq, SizeSpec::Square(224));
    }

    #[test]
    fn shortest_edge_truncates_the_long_side() {
        assert_eq!(shortest_edge_size(480, 640, 224), (224, 298));
        assert_eq!(shortest_edge_size(640, 480, 224), (298, 224));
    }

    #[test]
    fn clip_style_config_resizes_then_crops() {
        let cfg: PreprocessorConfig = serde_json::from_str(
            r#"{"size": {"shortest_edge": 8}, "do_center_crop": true, "crop_size": {"height": 8, "width": 8},
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#,
        )
        .unwrap();
        let p = Preprocessor::new(cfg).unwrap();
        let img = RgbImage::from_pixel(32, 16, image::Rgb([255, 0, 128]));
        let px = p.apply(&img);
        assert_eq!(px.len(), 3 * 8 * 8);
        assert!((px[0] - 1.0).abs() < 1e-6);
        assert!((px[64] + 1.0).abs() < 1e-6);
    }
}
