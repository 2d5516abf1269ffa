//! Downscaling of over-limit images: decode, apply EXIF orientation, Lanczos3 resize to the
//! largest aspect-preserving size within the pixel budget, re-encode.

use std::io::Cursor;

use image::{codecs::jpeg::JpegEncoder, imageops::FilterType, DynamicImage, ImageFormat as IF};

use super::{decode::decode_dynamic, probe, ImageError, ImageFormat, ImageInfo, Reencoded};

/// Largest `(w', h')` with `w' * h' <= max_pixels`, both ≥ 1, keeping `w/h` (each side floored).
pub fn fit_within(w: u32, h: u32, max_pixels: u64) -> (u32, u32) {
    let s = (max_pixels as f64 / (w as f64 * h as f64)).sqrt();
    let mut nw = ((w as f64 * s).floor() as u32).clamp(1, w);
    let mut nh = ((h as f64 * s).floor() as u32).clamp(1, h);
    // Float rounding can overshoot by one; shrink the side whose ratio is furthest above.
    while nw as u64 * nh as u64 > max_pixels && (nw > 1 || nh > 1) {
        if (nw as f64 / w as f64 >= nh as f64 / h as f64 && nw > 1) || nh == 1 {
            nw -= 1;
        } else {
            nh -= 1;
        }
    }
    (nw, nh)
}

fn orient(img: DynamicImage, o: u8) -> DynamicImage {
    match o {
        2 => img.fliph(),
        3 => img.rotate180(),
        4 => img.flipv(),
        5 => img.rotate90().fliph(),
        6 => img.rotate90(),
        7 => img.rotate270().fliph(),
        8 => img.rotate270(),
        _ => img,
    }
}

pub fn reencode_within(
    bytes: &[u8],
    info: &ImageInfo,
    max_pixels: u64,
) -> Result<Option<Reencoded>, ImageError> {
    if info.width as u64 * info.height as u64 <= max_pixels {
        return Ok(None);
    }
    let img = orient(decode_dynamic(bytes, info)?, info.orientation);
    let (nw, nh) = fit_within(img.width(), img.height(), max_pixels);
    let small = img.resize_exact(nw, nh, FilterType::Lanczos3);
    let mut out = Vec::new();
    let enc = |e: image::ImageError| ImageError::Encode(e.to_string());
    if info.format == ImageFormat::Jpeg {
        // JPEG has no alpha; gray stays gray.
        let small = if small.color().has_color() {
            DynamicImage::ImageRgb8(small.to_rgb8())
        } else {
            DynamicImage::ImageLuma8(small.to_luma8())
        };
        small
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 95))
            .map_err(enc)?;
    } else {
        // 16-bit inputs stay 16-bit; PNG stores every layout `image` decodes to except float.
        let small = match small {
            DynamicImage::ImageRgb32F(_) => DynamicImage::ImageRgb16(small.to_rgb16()),
            DynamicImage::ImageRgba32F(_) => DynamicImage::ImageRgba16(small.to_rgba16()),
            s => s,
        };
        small
            .write_to(&mut Cursor::new(&mut out), IF::Png)
            .map_err(enc)?;
    }
    let info = probe::probe(&out)?;
    Ok(Some(Reencoded { bytes: out, info }))
}
