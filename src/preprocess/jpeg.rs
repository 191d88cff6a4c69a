//! JPEG decoding with libjpeg-turbo's decoder (the `mozjpeg-sys` build of it, C only), set up as
//! Pillow sets it up — integer "islow" IDCT, fancy chroma upsampling, libjpeg's own colour
//! conversion — so that pixels are Pillow's bit for bit, and with them transformers' inputs.
//!
//! Pillow's modes are matched too: grayscale JPEGs are replicated to RGB, CMYK and YCCK ones are
//! read as Adobe-inverted CMYK (`CMYK;I`) and turned into RGB with Pillow's `cmyk2rgb`. A JPEG
//! that ends early is an error, as Pillow's "image file is truncated" is.

use std::ffi::{c_int, CStr};

use image::RgbImage;
use mozjpeg_sys::{
    boolean, jpeg_common_struct, jpeg_create_decompress, jpeg_decompress_struct,
    jpeg_destroy_decompress, jpeg_error_mgr, jpeg_finish_decompress, jpeg_mem_src,
    jpeg_read_header, jpeg_read_scanlines, jpeg_save_markers, jpeg_start_decompress,
    jpeg_std_error, J_COLOR_SPACE,
};

/// Whether `bytes` begin like a JPEG file (SOI, then a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// A JPEG decoded to RGB, in stored orientation, with its EXIF chunk (the TIFF data after
/// `Exif\0\0`) if it has one.
pub struct Jpeg {
    pub rgb: RgbImage,
    pub exif: Option<Vec<u8>>,
}

/// Carried through libjpeg's `client_data`: what its message hooks saw.
#[derive(Default)]
struct Messages {
    truncated: bool,
}

fn message(cinfo: &mut jpeg_common_struct) -> String {
    let mut buf = [0u8; 80];
    // SAFETY: `err` is the error manager installed in `decode`, alive for the whole call.
    let err = unsafe { &*cinfo.err };
    if let Some(format) = err.format_message {
        // SAFETY: libjpeg's formatter writes a NUL-terminated string of at most 80 bytes.
        unsafe { format(cinfo, &buf) };
    }
    buf[79] = 0;
    CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// libjpeg's fatal errors unwind back into `decode` (the "C-unwind" ABI), carrying the message.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    std::panic::resume_unwind(Box::new(message(cinfo)));
}

/// Warnings are not printed; a premature end of data is remembered (libjpeg pads the image
/// with grey and goes on, Pillow refuses it).
unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level < 0 && message(cinfo).starts_with("Premature end of JPEG file") {
        // SAFETY: `client_data` points at the `Messages` of the running `decode`.
        unsafe { (*cinfo.client_data.cast::<Messages>()).truncated = true };
    }
}

/// Destroys the decompressor however `decode` ends.
struct Decompressor(jpeg_decompress_struct);

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_decompress; destroying releases all its memory.
        unsafe { jpeg_destroy_decompress(&mut self.0) };
    }
}

/// Decodes `bytes`; `check_size(width, height)` runs once the header is read, before any pixel
/// is decoded, and may refuse the image.
pub fn decode(
    bytes: &[u8],
    check_size: impl FnOnce(u32, u32) -> Result<(), String>,
) -> Result<Jpeg, String> {
    let mut messages = Messages::default();
    // SAFETY: zeroed libjpeg structs are their documented initial state before jpeg_std_error
    // and jpeg_create_decompress fill them.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    let mut guard: Option<Decompressor> = None;
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Jpeg, String> {
            // SAFETY: as above; every pointer handed to libjpeg (the error manager, the messages,
            // the input bytes) outlives the decompressor, which `guard` destroys.
            unsafe {
                let e = jpeg_std_error(&mut err);
                e.error_exit = Some(error_exit);
                e.emit_message = Some(emit_message);
                let cinfo = &mut guard.insert(Decompressor(std::mem::zeroed())).0;
                cinfo.common.err = e;
                cinfo.common.client_data = (&mut messages as *mut Messages).cast();
                jpeg_create_decompress(cinfo);
                jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as _);
                jpeg_save_markers(cinfo, 0xE1, 0xFFFF);
                jpeg_read_header(cinfo, true as boolean);
                check_size(cinfo.image_width, cinfo.image_height)?;
                let exif = exif_chunk(cinfo);
                let cmyk = matches!(
                    cinfo.jpeg_color_space,
                    J_COLOR_SPACE::JCS_CMYK | J_COLOR_SPACE::JCS_YCCK
                );
                cinfo.out_color_space = match (cmyk, cinfo.jpeg_color_space) {
                    (true, _) => J_COLOR_SPACE::JCS_CMYK,
                    (false, J_COLOR_SPACE::JCS_GRAYSCALE) => J_COLOR_SPACE::JCS_GRAYSCALE,
                    _ => J_COLOR_SPACE::JCS_RGB,
                };
                jpeg_start_decompress(cinfo);
                let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
                let channels = cinfo.output_components as usize;
                let mut raw = vec![0u8; w * h * channels];
                while (cinfo.output_scanline as usize) < h {
                    let row = raw
                        .as_mut_ptr()
                        .add(cinfo.output_scanline as usize * w * channels);
                    let mut rows = [row];
                    if jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), 1) == 0 {
                        break;
                    }
                }
                jpeg_finish_decompress(cinfo);
                if messages.truncated {
                    return Err("truncated JPEG (the file ends before the image does)".into());
                }
                let rgb = to_rgb(raw, channels, cmyk);
                let rgb = RgbImage::from_raw(w as u32, h as u32, rgb)
                    .ok_or("decoded JPEG has the wrong size")?;
                Ok(Jpeg { rgb, exif })
            }
        }));
    drop(guard);
    match result {
        Ok(done) => done,
        Err(panic) => Err(match panic.downcast::<String>() {
            Ok(message) => format!("cannot decode JPEG: {message}"),
            Err(_) => "the JPEG decoder crashed on this file".to_string(),
        }),
    }
}

/// The TIFF data of the first APP1 `Exif\0\0` marker libjpeg kept.
///
/// # Safety
/// `cinfo` must have read its header with APP1 markers saved.
unsafe fn exif_chunk(cinfo: &jpeg_decompress_struct) -> Option<Vec<u8>> {
    let mut marker = cinfo.marker_list;
    while !marker.is_null() {
        // SAFETY: libjpeg's list of saved markers, valid until the decompressor is destroyed.
        let m = unsafe { &*marker };
        if m.marker == 0xE1 && !m.data.is_null() {
            // SAFETY: `data` holds `data_length` bytes.
            let data = unsafe { std::slice::from_raw_parts(m.data, m.data_length as usize) };
            if let Some(tiff) = data.strip_prefix(b"Exif\0\0") {
                return Some(tiff.to_vec());
            }
        }
        marker = m.next;
    }
    None
}

/// libjpeg's output as RGB: RGB as it is, grey replicated, CMYK after Pillow's `CMYK;I` and
/// `cmyk2rgb`.
fn to_rgb(raw: Vec<u8>, channels: usize, cmyk: bool) -> Vec<u8> {
    match (channels, cmyk) {
        (3, false) => raw,
        (1, _) => raw.iter().flat_map(|&g| [g, g, g]).collect(),
        (4, true) => raw
            .chunks_exact(4)
            .flat_map(|p| {
                let [c, m, y, k] = [p[0], p[1], p[2], p[3]].map(|v| 255 - u32::from(v));
                let nk = 255 - k;
                // Pillow's MULDIV255(a, b): (t + (t >> 8)) >> 8 with t = a * b + 128.
                let muldiv = |a: u32| {
                    let t = a * nk + 128;
                    ((t >> 8) + t) >> 8
                };
                [c, m, y].map(|v| nk.saturating_sub(muldiv(v)) as u8)
            })
            .collect(),
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_follows_pillow_inverted_cmyk_to_rgb() {
        // Stored (Adobe, inverted) bytes 255 - CMYK: white, pure cyan at half black, black.
        let raw = vec![255, 255, 255, 255, 0, 255, 255, 127, 255, 255, 255, 0];
        assert_eq!(
            to_rgb(raw, 4, true),
            vec![255, 255, 255, 0, 127, 127, 0, 0, 0]
        );
        assert_eq!(to_rgb(vec![7], 1, false), vec![7, 7, 7]);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let err = decode(&[0xFF, 0xD8, 0xFF, 0x00, 0x01], |_, _| Ok(()))
            .err()
            .unwrap();
        assert!(err.starts_with("cannot decode JPEG"), "{err}");
    }
}
