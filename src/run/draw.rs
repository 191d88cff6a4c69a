//! `glance detect --draw DIR`: a copy of each image with its boxes and labels drawn, for people
//! who would rather look than read. Wraps the run's sink: records pass through unchanged, and
//! an image that cannot be drawn makes its record an error naming the reason.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Result;
use image::{Rgb, RgbImage};
use serde_json::Value;

use crate::eval::heatmap::{put, text};
use crate::output::{detection_box, Record, RecordSink, Summary};

/// Colours that stay visible on photos (Tableau 10), one per label.
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// A label's colour: the same label is the same colour in every image of a run.
pub fn color_of(label: &str) -> Rgb<u8> {
    let hash = label.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    Rgb(PALETTE[hash as usize % PALETTE.len()])
}

/// The outline's thickness for an image: 2 pixels, more on big images.
pub fn thickness(img: &RgbImage) -> i64 {
    (i64::from(img.width().min(img.height())) / 250).max(2)
}

/// Draws each detection's box with its label above it (text regions by their bounding box).
pub fn draw_detections(img: &mut RgbImage, detections: &[Value]) {
    let t = thickness(img);
    let scale = (t / 2).max(1);
    for d in detections {
        let Some(b) = detection_box(d) else {
            continue;
        };
        let [x1, y1, x2, y2] = b.map(|v| v as i64);
        let label = d["label"].as_str().unwrap_or_default();
        let color = color_of(label);
        for k in 0..t {
            for x in x1..=x2 {
                put(img, x, y1 + k, color);
                put(img, x, y2 - k, color);
            }
            for y in y1..=y2 {
                put(img, x1 + k, y, color);
                put(img, x2 - k, y, color);
            }
        }
        if !label.is_empty() {
            let chars: String = label.chars().take(40).collect();
            let (w, h) = (chars.chars().count() as i64 * 8 * scale + 4, 8 * scale + 4);
            // Above the box when there is room, else inside it.
            let top = if y1 >= h { y1 - h } else { y1 + t };
            for y in top..top + h {
                for x in x1..x1 + w {
                    put(img, x, y, color);
                }
            }
            text(
                img,
                x1 + 2,
                top + 2,
                &chars,
                scale,
                Rgb([255, 255, 255]),
                false,
            );
        }
    }
}

/// A sink that draws every successful record's detections into `dir`, then passes it on.
pub struct DrawingSink {
    inner: Box<dyn RecordSink + Send>,
    dir: PathBuf,
    max_pixels: u64,
    names: HashSet<PathBuf>,
}

impl DrawingSink {
    pub fn new(inner: Box<dyn RecordSink + Send>, dir: PathBuf, max_pixels: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the --draw directory '{}': {e}",
                dir.display()
            )
        })?;
        Ok(Self {
            inner,
            dir,
            max_pixels,
            names: HashSet::new(),
        })
    }

    /// Where an image's drawing goes: its file name, with `-2`, `-3`... when two images of the
    /// run share one.
    fn target(&mut self, source: &Path) -> PathBuf {
        let name = source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| "image.png".into());
        let stem = name
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let ext = name
            .extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_else(|| "png".into());
        let mut candidate = name.clone();
        let mut n = 2;
        while !self.names.insert(candidate.clone()) {
            candidate = PathBuf::from(format!("{stem}-{n}.{ext}"));
            n += 1;
        }
        self.dir.join(candidate)
    }

    fn draw(&mut self, rec: &Record) -> std::result::Result<(), String> {
        let source = rec.path.clone().unwrap_or_else(|| PathBuf::from(&rec.file));
        let detections = match rec.fields.get("detections") {
            Some(Value::Array(d)) => d.clone(),
            _ => return Ok(()),
        };
        let mut img = crate::preprocess::decode::decode(&source, self.max_pixels)?.rgb;
        draw_detections(&mut img, &detections);
        let target = self.target(&source);
        // Formats the image crate cannot write (WebP with lossy data, say) become PNGs.
        match img.save(&target) {
            Ok(()) => Ok(()),
            Err(_) => img
                .save(target.with_extension("png"))
                .map_err(|e| format!("cannot write '{}': {e}", target.display())),
        }
    }
}

impl RecordSink for DrawingSink {
    fn write(&mut self, rec: &Record) -> Result<()> {
        if !rec.is_ok() {
            return self.inner.write(rec);
        }
        match self.draw(rec) {
            Ok(()) => self.inner.write(rec),
            Err(e) => {
                let mut rec = rec.clone();
                rec.error = Some(format!(
                    "detected, but could not draw into '{}': {e}",
                    self.dir.display()
                ));
                self.inner.write(&rec)
            }
        }
    }

    fn finish(self: Box<Self>) -> Result<Summary> {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_edges_and_label_background_take_the_label_colour() {
        let mut img = RgbImage::from_pixel(200, 100, Rgb([0, 0, 0]));
        let d = serde_json::json!([{"label": "cat", "box": [120, 60, 40, 30]}]);
        draw_detections(&mut img, d.as_array().unwrap());
        let c = color_of("cat");
        for (x, y) in [(40, 45), (120, 45), (80, 30), (80, 60), (41, 45), (119, 45)] {
            assert_eq!(*img.get_pixel(x, y), c, "edge pixel ({x}, {y})");
        }
        assert_eq!(*img.get_pixel(80, 45), Rgb([0, 0, 0]), "the inside stays");
        assert_eq!(*img.get_pixel(41, 20), c, "label background above the box");
    }
}
