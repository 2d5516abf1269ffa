//! Image handling: header probe, decode, perceptual/content hashes, re-encoding.
//!
//! INTERFACE CONTRACT (used by `build.rs`; keep these signatures):
//! - [`probe`]: format sniffed from content (never from the file extension), size and EXIF
//!   orientation, without decoding pixels.
//! - [`analyze`]: probe + limits check + (optionally) perceptual hashes. Any failure is an
//!   [`ImageError`] whose `Display` is a short, user-facing reject reason.
//! - [`content_hash`]: 128-bit hash of the raw bytes for exact-duplicate detection.
//! - [`reencode_within`]: re-encode an image above `max_pixels` to the largest size within it.
//! - [`vision`]: decode + Pillow-exact BICUBIC resize + normalize + patchify (the training
//!   loader's `pixel_values`).

mod decode;
mod jpeg;
mod jpeg_dc;
mod jpeg_hooks;
mod phash;
mod pillow;
mod png_fast;
mod probe;
mod reencode;
#[cfg(test)]
mod test_jpeg;
pub mod vision;

pub use pillow::Rgb;

use serde::Serialize;
use thiserror::Error;

/// Perceptual-hash mode (`--phash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PhashMode {
    /// From a reduced-scale decode (JPEG DCT scaling); within a few bits of `exact`.
    Fast,
    /// Bit-identical to `imagehash.phash` with the pinned Pillow.
    Exact,
    /// No decode at all: header probe and structural checks only.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    Tiff,
}

impl ImageFormat {
    /// File extension used for the tar member.
    pub fn ext(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
            ImageFormat::Tiff => "tiff",
        }
    }
}

/// What the header tells without decoding pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// EXIF orientation 1..=8 (1 when absent).
    pub orientation: u8,
    /// Pixel layout as decoded, e.g. "rgb8", "l8", "rgba8", "la16", "cmyk8", "p8".
    pub color: String,
    /// More than one frame (animated GIF/WebP/APNG); hashes use the first frame.
    pub animated: bool,
}

/// Limits applied before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Reject images with more pixels than this (decompression-bomb guard).
    pub max_image_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Same as Pillow's DecompressionBombError threshold (2 × MAX_IMAGE_PIXELS).
        Limits {
            max_image_pixels: 178_956_970,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Analysis {
    pub info: ImageInfo,
    pub phash: Option<u64>,
    pub dhash: Option<u64>,
}

/// A per-image failure; its `Display` is the reject reason written to `rejects.jsonl`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("unrecognised image format")]
    UnknownFormat,
    #[error("corrupt {format} header: {detail}")]
    BadHeader {
        format: &'static str,
        detail: String,
    },
    #[error("decompression bomb: {width}x{height} exceeds the {limit}-pixel limit")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("truncated {format} data")]
    Truncated { format: &'static str },
    #[error("corrupt {format} data: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("re-encode failed: {0}")]
    Encode(String),
}

pub type ImageResult<T> = std::result::Result<T, ImageError>;

/// An image re-encoded by [`reencode_within`].
#[derive(Debug, Clone)]
pub struct Reencoded {
    pub bytes: Vec<u8>,
    pub info: ImageInfo,
}

/// Sniff the format from the bytes and read size/orientation from the header only.
pub fn probe(bytes: &[u8]) -> ImageResult<ImageInfo> {
    probe::probe(bytes)
}

/// Probe, enforce `limits`, and compute perceptual hashes as `mode` asks
/// (`dhash` only when `want_dhash`). With `PhashMode::Off` no pixels are decoded, but
/// cheap structural checks (e.g. JPEG EOI present) still run.
pub fn analyze(
    bytes: &[u8],
    mode: PhashMode,
    want_dhash: bool,
    limits: &Limits,
) -> ImageResult<Analysis> {
    let info = probe::probe(bytes)?;
    if info.width as u64 * info.height as u64 > limits.max_image_pixels {
        return Err(ImageError::TooLarge {
            width: info.width,
            height: info.height,
            limit: limits.max_image_pixels,
        });
    }
    if mode == PhashMode::Off {
        structural_check(bytes, &info)?;
        return Ok(Analysis {
            info,
            phash: None,
            dhash: None,
        });
    }
    // Decoders are third-party code fed untrusted bytes: a panic must become a reject, never
    // take the worker down.
    let hashed = std::panic::catch_unwind(|| -> ImageResult<(u64, Option<u64>)> {
        let gray = decode_l(bytes, &info, mode)?;
        Ok((phash::phash(&gray), want_dhash.then(|| phash::dhash(&gray))))
    })
    .unwrap_or_else(|_| {
        Err(ImageError::Corrupt {
            format: probe::format_name(info.format),
            detail: "decoder panicked".into(),
        })
    })?;
    Ok(Analysis {
        info,
        phash: Some(hashed.0),
        dhash: hashed.1,
    })
}

/// The "L" image the hashes are computed from (see the submodules for exactness notes).
fn decode_l(bytes: &[u8], info: &ImageInfo, mode: PhashMode) -> ImageResult<pillow::Gray> {
    match info.format {
        ImageFormat::Jpeg => {
            let m = match mode {
                PhashMode::Fast => jpeg::JpegDecode::Fast {
                    min_side: FAST_MIN_SIDE,
                },
                _ => jpeg::JpegDecode::Exact,
            };
            jpeg::decode_gray(bytes, m)
        }
        ImageFormat::Gif => decode::gif_first_frame_l(bytes, info),
        // Common 8-bit PNGs; anything else (or anything suspect) takes the `image` path.
        ImageFormat::Png => match png_fast::decode_png_l(bytes) {
            Some(gray) => Ok(gray),
            None => decode::decode_dynamic(bytes, info).map(|img| decode::to_pillow_l(&img, info)),
        },
        _ => decode::decode_dynamic(bytes, info).map(|img| decode::to_pillow_l(&img, info)),
    }
}

/// Fast mode keeps both sides of the DCT-scaled decode at least this large before the
/// LANCZOS resize to 32×32.
const FAST_MIN_SIDE: u32 = 32;

/// Checks that need no pixel decode: a JPEG must end with EOI (trailing padding such as
/// zero bytes or newlines after it is tolerated), a PNG must contain IEND.
fn structural_check(bytes: &[u8], info: &ImageInfo) -> ImageResult<()> {
    match info.format {
        ImageFormat::Jpeg => {
            let end = bytes
                .iter()
                .rposition(|&b| !matches!(b, 0x00 | b'\r' | b'\n' | b' '))
                .map_or(0, |i| i + 1);
            if end < 4 || bytes[end - 2..end] != [0xFF, 0xD9] {
                return Err(ImageError::Truncated { format: "jpeg" });
            }
        }
        ImageFormat::Png => {
            let tail = &bytes[bytes.len().saturating_sub(64)..];
            if !tail.windows(4).any(|w| w == b"IEND") {
                return Err(ImageError::Truncated { format: "png" });
            }
        }
        _ => {}
    }
    Ok(())
}

/// 128-bit content hash (BLAKE3, truncated) of the exact bytes.
pub fn content_hash(bytes: &[u8]) -> [u8; 16] {
    let h = blake3::hash(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// If `info` has more than `max_pixels` pixels, decode, apply EXIF orientation, resize to the
/// largest size within `max_pixels` keeping the aspect ratio, and re-encode in the same
/// format family (JPEG q=95; lossless formats as PNG). Returns `None` when no change is needed.
pub fn reencode_within(
    bytes: &[u8],
    info: &ImageInfo,
    max_pixels: u64,
) -> ImageResult<Option<Reencoded>> {
    std::panic::catch_unwind(|| reencode::reencode_within(bytes, info, max_pixels))
        .unwrap_or_else(|_| Err(ImageError::Encode("decoder/encoder panicked".into())))
}

#[cfg(test)]
mod tests;

/// Deterministic xorshift64 generator for the decoders' randomised tests.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// [`Self::below`] for indices.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}
