//! Image decoding: JPEGs with Pillow's decoder settings, any other format the `image` crate
//! reads; EXIF orientation applied, converted to 8-bit RGB the way transformers'
//! `convert_to_rgb` does (alpha composited onto white).

use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// PIL refuses images above twice `Image.MAX_IMAGE_PIXELS` (89,478,485) as decompression bombs.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;

/// A decoded image with the size it had on disk (after EXIF rotation).
pub struct Decoded {
    pub rgb: RgbImage,
    pub width: u32,
    pub height: u32,
}

/// Reads, decodes, orients and converts one image; errors are plain messages about the input.
/// JPEGs go through [`super::jpeg`] (Pillow's pixels), other formats through the `image` crate.
pub fn decode(path: &Path, max_pixels: u64) -> Result<Decoded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot open: {e}"))?;
    decode_bytes(&bytes, max_pixels)
}

/// [`decode`] of an image already in memory (a server's upload).
pub fn decode_bytes(bytes: &[u8], max_pixels: u64) -> Result<Decoded, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let check_size = |w: u32, h: u32| {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > max_pixels {
            return Err(format!(
                "image is {w}x{h} = {pixels} pixels, above the limit of {max_pixels} (possible decompression bomb; raise --max-image-pixels to allow it)"
            ));
        }
        if pixels == 0 {
            return Err(format!("image has no pixels ({w}x{h})"));
        }
        Ok(())
    };
    let (mut image, orientation) = if super::jpeg::is_jpeg(bytes) {
        let jpeg = super::jpeg::decode(bytes, check_size)?;
        let orientation = jpeg.exif.as_deref().and_then(Orientation::from_exif_chunk);
        (DynamicImage::ImageRgb8(jpeg.rgb), orientation)
    } else {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read: {e}"))?;
        if reader.format().is_none() {
            return Err("not an image (unrecognised format)".into());
        }
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| format!("cannot decode: {e}"))?;
        let (w, h) = decoder.dimensions();
        check_size(w, h)?;
        let orientation = decoder.orientation().ok();
        let image =
            DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode: {e}"))?;
        (image, orientation)
    };
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    let rgb = to_rgb(image);
    let (width, height) = rgb.dimensions();
    Ok(Decoded { rgb, width, height })
}

/// Matches transformers' `image_transforms.convert_to_rgb`: RGBA over a white background.
fn to_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            // PIL's alpha_composite over opaque white, rounded to nearest.
            let v = (u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255;
            dst[c] = v as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbage_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            decode(&empty, DEFAULT_MAX_IMAGE_PIXELS).err().unwrap(),
            "empty file"
        );
        let text = dir.path().join("notes.png");
        std::fs::write(&text, b"hello, I am not a picture").unwrap();
        assert!(decode(&text, DEFAULT_MAX_IMAGE_PIXELS).is_err());
    }

    #[test]
    fn transparent_pixels_become_white() {
        let mut rgba = image::RgbaImage::new(1, 1);
        rgba.put_pixel(0, 0, image::Rgba([10, 20, 30, 0]));
        let rgb = to_rgb(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        image::RgbImage::new(100, 100).save(&path).unwrap();
        let err = decode(&path, 5_000).err().unwrap();
        assert!(err.contains("decompression bomb"), "{err}");
    }
}
