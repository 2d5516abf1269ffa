//! Non-JPEG decoding to the "L" pixels Pillow's `Image.open(...).convert('L')` would give.
//!
//! Pillow opens PNG as L / I;16 / RGB / RGBA / LA / P (see `PngImagePlugin._MODES`) and its
//! `convert('L')` then ignores alpha, maps palettes through `L24`, takes the high byte of
//! 16-bit RGB(A)/LA samples (rawmodes `RGB;16B` etc.) and clips `I;16` to 255. The `image`
//! crate expands palettes and low bit depths the same way, so converting its output with
//! those rules is exact. GIF is decoded with the `gif` crate as indices, because Pillow keeps
//! the palette index of transparent pixels (the `image` crate zeroes them).
//!
//! Known bounds (documented, not bit-exact): lossy WebP (image-webp's YUV→RGB may differ from
//! libwebp by ±1 on some pixels), 16-bit-per-channel BMP/TIFF variants and float TIFF.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat as IF, ImageReader};

use super::pillow::{rgb_to_l, rgb_to_l_all, Gray};
use super::{probe::format_name, ImageError, ImageFormat, ImageInfo};

fn corrupt(format: ImageFormat, e: impl std::fmt::Display) -> ImageError {
    let detail = e.to_string();
    let lower = detail.to_ascii_lowercase();
    let f = format_name(format);
    if lower.contains("eof") || lower.contains("end of file") || lower.contains("truncat") {
        ImageError::Truncated { format: f }
    } else {
        ImageError::Corrupt {
            format: f,
            detail: detail.chars().take(120).collect(),
        }
    }
}

/// Decode with the `image` crate (size limits already enforced by the caller; the reader's own
/// allocation limit stays on as a second guard).
pub fn decode_dynamic(bytes: &[u8], info: &ImageInfo) -> Result<DynamicImage, ImageError> {
    let fmt = match info.format {
        ImageFormat::Jpeg => IF::Jpeg,
        ImageFormat::Png => IF::Png,
        ImageFormat::Webp => IF::WebP,
        ImageFormat::Gif => IF::Gif,
        ImageFormat::Bmp => IF::Bmp,
        ImageFormat::Tiff => IF::Tiff,
    };
    let mut r = ImageReader::with_format(Cursor::new(bytes), fmt);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(8 * (info.width as u64 * info.height as u64) + (64 << 20));
    r.limits(limits);
    r.decode().map_err(|e| corrupt(info.format, e))
}

/// Pillow `convert('L')` of what `image` decoded; `info.color` tells the PNG/TIFF source
/// layout, needed because `image` turns a 16-bit gray + tRNS into LA16.
pub fn to_pillow_l(img: &DynamicImage, info: &ImageInfo) -> Gray {
    let (w, h) = (img.width(), img.height());
    let i16_source = info.color == "l16"; // Pillow mode I;16: convert('L') clips at 255
    let px: Vec<u8> = match img {
        DynamicImage::ImageLuma8(b) => b.as_raw().clone(),
        DynamicImage::ImageLumaA8(b) => b.as_raw().chunks_exact(2).map(|p| p[0]).collect(),
        DynamicImage::ImageRgb8(b) => rgb_to_l_all(b.as_raw()),
        DynamicImage::ImageRgba8(b) => b
            .as_raw()
            .chunks_exact(4)
            .map(|p| rgb_to_l(p[0], p[1], p[2]))
            .collect(),
        DynamicImage::ImageLuma16(b) => b
            .as_raw()
            .iter()
            .map(|&v| {
                if i16_source {
                    v.min(255) as u8
                } else {
                    (v >> 8) as u8
                }
            })
            .collect(),
        DynamicImage::ImageLumaA16(b) => b
            .as_raw()
            .chunks_exact(2)
            .map(|p| {
                if i16_source {
                    p[0].min(255) as u8
                } else {
                    (p[0] >> 8) as u8
                }
            })
            .collect(),
        DynamicImage::ImageRgb16(b) => b
            .as_raw()
            .chunks_exact(3)
            .map(|p| rgb_to_l((p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8))
            .collect(),
        DynamicImage::ImageRgba16(b) => b
            .as_raw()
            .chunks_exact(4)
            .map(|p| rgb_to_l((p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8))
            .collect(),
        other => {
            // Float layouts (TIFF/HDR-like): no Pillow-exact path; approximate via RGB8.
            let rgb = other.to_rgb8();
            rgb.as_raw()
                .chunks_exact(3)
                .map(|p| rgb_to_l(p[0], p[1], p[2]))
                .collect()
        }
    };
    Gray {
        width: w,
        height: h,
        px,
    }
}

/// First GIF frame as Pillow sees it: logical-screen-sized "P" (or "L") image, filled with
/// the frame's transparent index (else 0), the frame's indices pasted at its offset, then
/// `p2l` through the frame's palette (local, else global; no palette → indices are gray).
pub fn gif_first_frame_l(bytes: &[u8], info: &ImageInfo) -> Result<Gray, ImageError> {
    let err = |e: gif::DecodingError| corrupt(ImageFormat::Gif, e);
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    opts.check_frame_consistency(false);
    let mut dec = opts.read_info(Cursor::new(bytes)).map_err(err)?;
    let global = dec.global_palette().map(|p| p.to_vec());
    let frame = dec
        .read_next_frame()
        .map_err(err)?
        .ok_or_else(|| ImageError::Corrupt {
            format: "gif",
            detail: "no image frame".into(),
        })?;
    let (sw, sh) = (info.width as usize, info.height as usize);
    let fill = frame.transparent.unwrap_or(0);
    let mut idx = vec![fill; sw * sh];
    let (fx, fy, fw, fh) = (
        frame.left as usize,
        frame.top as usize,
        frame.width as usize,
        frame.height as usize,
    );
    for y in 0..fh {
        if fy + y >= sh {
            break;
        }
        for x in 0..fw {
            if fx + x < sw {
                idx[(fy + y) * sw + fx + x] = frame.buffer[y * fw + x];
            }
        }
    }
    let pal = frame.palette.clone().or(global);
    let px = match pal {
        Some(p) => {
            let mut lut = [0u8; 256];
            for (i, l) in lut.iter_mut().enumerate() {
                // Entries past the palette's end: Pillow pads palettes with black.
                let c = p.get(i * 3..i * 3 + 3).unwrap_or(&[0, 0, 0]);
                *l = rgb_to_l(c[0], c[1], c[2]);
            }
            idx.iter().map(|&i| lut[i as usize]).collect()
        }
        None => idx,
    };
    Ok(Gray {
        width: info.width,
        height: info.height,
        px,
    })
}
