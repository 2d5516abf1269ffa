//! Vision-tower input: the pixels transformers' `Qwen2VLImageProcessor` computes, bit for bit.
//!
//! transformers 5.23 without torchvision runs `Qwen2VLImageProcessorPil`: `convert("RGB")`
//! of the PIL image, PIL `BICUBIC` resize of the uint8 image to the `smart_resize` size, then
//! `rescale` (`uint8 → float64 × 1/255 → float32`), `normalize` (`(x - mean) / std` in
//! float32, CLIP mean/std) and the patchify reshape to `[h/14 · w/14, 3·t·14·14]` in 2×2
//! merge-window order. Each step here performs the same arithmetic in the same precision,
//! so the values are identical (the rescale+normalize pair is a per-band 256-entry table).
//!
//! Decoding follows Pillow: JPEG through libjpeg (ISLOW, fancy upsampling; see `jpeg.rs`),
//! the other formats through the `image` crate converted like transformers' `convert_to_rgb`
//! (gray replicated, 16-bit samples reduced to their high byte) with transparency handled
//! per [`Alpha`]: `White` composites onto opaque white exactly like Pillow's
//! `alpha_composite` (what transformers 5.x does for any image with an alpha band or a
//! `transparency` entry), `Drop` ignores alpha like a bare `convert("RGB")` (transformers 4.x).
//!
//! EXIF orientation is applied after decoding ([`orient`]), as `ImageOps.exif_transpose` would
//! before the processor, so every image is seen upright: the build re-encodes over-limit
//! images upright, and without this step the images under the limit would stay sideways.
//! The output size is then [`upright_size`] (width and height swapped for orientations 5–8).

use image::DynamicImage;

#[cfg(test)]
use super::pillow::resize_interleaved;
use super::pillow::{resize_planes, Filter, Rgb};
use super::{decode, jpeg, probe, ImageError, ImageFormat, ImageInfo, ImageResult, Limits};

/// What transparent pixels become in the RGB the vision tower sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpha {
    /// Composite onto opaque white (Pillow `alpha_composite` arithmetic): transformers 5.x.
    #[default]
    White,
    /// Ignore the alpha band (Pillow `convert("RGB")`): transformers 4.x.
    Drop,
}

impl Alpha {
    /// `"white"` or `"drop"`.
    pub fn parse(s: &str) -> Result<Alpha, String> {
        match s {
            "white" => Ok(Alpha::White),
            "drop" => Ok(Alpha::Drop),
            other => Err(format!("alpha must be 'white' or 'drop', not {other:?}")),
        }
    }
}

/// `(width, height)` of the image as seen upright: swapped for EXIF orientations 5–8.
pub fn upright_size(info: &ImageInfo) -> (u32, u32) {
    if (5..=8).contains(&info.orientation) {
        (info.height, info.width)
    } else {
        (info.width, info.height)
    }
}

/// CLIP normalisation constants (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`), as f32 like numpy's;
/// the digits are transformers' literals, kept verbatim for auditability.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Decode any supported image to the RGB pixels transformers' processor gets from
/// `exif_transpose(Image.open(...))` (bomb guard from `limits`; transparency per `alpha`).
pub fn decode_rgb(bytes: &[u8], limits: &Limits, alpha: Alpha) -> ImageResult<Rgb> {
    let info = probe::probe(bytes)?;
    if info.width as u64 * info.height as u64 > limits.max_image_pixels {
        return Err(ImageError::TooLarge {
            width: info.width,
            height: info.height,
            limit: limits.max_image_pixels,
        });
    }
    // Decoders are third-party code fed untrusted bytes: a panic is a decode error.
    let rgb = std::panic::catch_unwind(|| match info.format {
        ImageFormat::Jpeg => jpeg::decode_rgb(bytes),
        _ => {
            decode::decode_dynamic(bytes, &info).map(|img| to_pillow_rgb(&img, &info.color, alpha))
        }
    })
    .unwrap_or_else(|_| {
        Err(ImageError::Corrupt {
            format: probe::format_name(info.format),
            detail: "decoder panicked".into(),
        })
    })?;
    Ok(orient(rgb, info.orientation))
}

/// One channel of Pillow's `alpha_composite(white, src)`: its 7-bit fixed point with an
/// opaque white destination (`coef1 = a·128`, `coef2 = (255 - a)·128`) and its rounded
/// division by 255 (`((x >> 8) + x) >> 8`).
#[inline]
fn over_white(v: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    let t = (v as u32 * a as u32 + 255 * (255 - a as u32)) * 128 + (0x80 << 7);
    ((((t >> 8) + t) >> 8) >> 7) as u8
}

/// Pillow conversion to RGB of what the `image` crate decoded (`color` as probed: a 16-bit
/// gray PNG is Pillow mode `I;16`, whose conversion clips at 255 instead of shifting);
/// layouts with alpha are composited onto white or have it dropped, per `alpha`.
fn to_pillow_rgb(img: &DynamicImage, color: &str, alpha: Alpha) -> Rgb {
    let (width, height) = (img.width(), img.height());
    let clip16 = color == "l16";
    let g16 = |v: u16| {
        if clip16 {
            v.min(255) as u8
        } else {
            (v >> 8) as u8
        }
    };
    let white = alpha == Alpha::White;
    let rgba = |r: u8, g: u8, b: u8, a: u8| {
        if white {
            [over_white(r, a), over_white(g, a), over_white(b, a)]
        } else {
            [r, g, b]
        }
    };
    let px: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.as_raw().clone(),
        DynamicImage::ImageRgba8(b) => b
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| rgba(p[0], p[1], p[2], p[3]))
            .collect(),
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(b) => b
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| rgba(p[0], p[0], p[0], p[1]))
            .collect(),
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().flat_map(|&v| [g16(v); 3]).collect(),
        DynamicImage::ImageLumaA16(b) => b
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let v = g16(p[0]);
                rgba(v, v, v, (p[1] >> 8) as u8)
            })
            .collect(),
        DynamicImage::ImageRgb16(b) => b.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let [r, g, b, a] = [p[0], p[1], p[2], p[3]].map(|v| (v >> 8) as u8);
                rgba(r, g, b, a)
            })
            .collect(),
        DynamicImage::ImageRgba32F(_) if white => {
            let b = img.to_rgba8();
            b.as_raw()
                .chunks_exact(4)
                .flat_map(|p| rgba(p[0], p[1], p[2], p[3]))
                .collect()
        }
        // Float layouts have no Pillow mode; the image crate's own conversion is the best bound.
        other => other.to_rgb8().into_raw(),
    };
    Rgb { width, height, px }
}

/// `ImageOps.exif_transpose` of `rgb` for EXIF orientation `o` (1 or unknown: unchanged).
pub fn orient(rgb: Rgb, o: u8) -> Rgb {
    if !(2..=8).contains(&o) {
        return rgb;
    }
    let (w, h) = (rgb.width as usize, rgb.height as usize);
    let transposed = o >= 5;
    let (ow, oh) = if transposed { (h, w) } else { (w, h) };
    // Source pixel of output (x, y): orientations 2-4 flip/rotate in place, 5-8 also swap axes
    // (5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90, in Pillow's names).
    let src = |x: usize, y: usize| -> (usize, usize) {
        match o {
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            _ => (w - 1 - y, x),
        }
    };
    let mut px = vec![0u8; rgb.px.len()];
    for (y, row) in px.chunks_exact_mut(3 * ow).enumerate() {
        for (x, out) in row.chunks_exact_mut(3).enumerate() {
            let (sx, sy) = src(x, y);
            let at = 3 * (sy * w + sx);
            out.copy_from_slice(&rgb.px[at..at + 3]);
        }
    }
    Rgb {
        width: ow as u32,
        height: oh as u32,
        px,
    }
}

/// `((v as f64 * (1/255)) as f32 - mean) / std` for every byte value and band: numpy's
/// rescale (float64 multiply, cast to float32) then float32 normalize, precomputed.
fn normalize_table() -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    let scale = 1.0f64 / 255.0;
    for (b, row) in t.iter_mut().enumerate() {
        for (v, out) in row.iter_mut().enumerate() {
            let x = (v as f64 * scale) as f32;
            *out = (x - CLIP_MEAN[b]) / CLIP_STD[b];
        }
    }
    t
}

/// Resize `rgb` (Pillow BICUBIC) to `out_h × out_w` (multiples of `patch · merge`), rescale,
/// normalize and patchify: returns `[out_h/patch · out_w/patch, 3 · patch · patch]` values,
/// rows in merge-window order `(h/merge, w/merge, merge, merge)`, each row channel-major
/// `(3, patch, patch)` — temporal patch size 1.
pub fn pixel_values(rgb: &Rgb, out_h: u32, out_w: u32, patch: u32, merge: u32) -> Vec<f32> {
    let n = (out_h / patch) as usize * (out_w / patch) as usize * 3 * (patch * patch) as usize;
    let mut out = vec![0f32; n];
    pixel_values_into(rgb, out_h, out_w, patch, merge, &mut out);
    out
}

/// [`pixel_values`] written into `out` (exactly `h/patch · w/patch · 3·patch²` values), so a
/// batch can fill one preallocated array without copies.
pub fn pixel_values_into(
    rgb: &Rgb,
    out_h: u32,
    out_w: u32,
    patch: u32,
    merge: u32,
    out: &mut [f32],
) {
    let unit = patch * merge;
    assert!(
        out_h > 0 && out_w > 0 && out_h % unit == 0 && out_w % unit == 0,
        "target {out_h}x{out_w} is not a multiple of {unit}"
    );
    let planes = resize_planes(
        &rgb.px,
        3,
        rgb.width,
        rgb.height,
        out_w,
        out_h,
        Filter::Bicubic,
    );
    let table = normalize_table();
    let (p, m) = (patch as usize, merge as usize);
    let (gh, gw) = (out_h as usize / p, out_w as usize / p);
    let row_len = 3 * p * p;
    let stride = out_w as usize;
    assert_eq!(out.len(), gh * gw * row_len, "output size");
    let mut rows = out.chunks_exact_mut(row_len);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let row = rows.next().expect("gh*gw rows");
                    let (r, c) = (bh * m + mh, bw * m + mw);
                    for band in 0..3 {
                        let t = &table[band];
                        let dst = &mut row[band * p * p..(band + 1) * p * p];
                        for (y, d) in dst.chunks_exact_mut(p).enumerate() {
                            let at = (r * p + y) * stride + c * p;
                            for (o, v) in d.iter_mut().zip(&planes[band][at..at + p]) {
                                *o = t[*v as usize];
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientations_rotate_and_flip_a_2x3_image_upright() {
        // Stored 3 wide × 2 high, pixel value = 10·row + column (all bands).
        let px = [0u8, 1, 2, 10, 11, 12]
            .iter()
            .flat_map(|&v| [v; 3])
            .collect();
        let rgb = Rgb {
            width: 3,
            height: 2,
            px,
        };
        let rows = |o: u8| {
            let r = orient(rgb.clone(), o);
            let v: Vec<u8> = r.px.chunks_exact(3).map(|p| p[0]).collect();
            (r.width, r.height, v)
        };
        assert_eq!(rows(1), (3, 2, vec![0, 1, 2, 10, 11, 12]));
        assert_eq!(rows(2), (3, 2, vec![2, 1, 0, 12, 11, 10]));
        assert_eq!(rows(3), (3, 2, vec![12, 11, 10, 2, 1, 0]));
        assert_eq!(rows(4), (3, 2, vec![10, 11, 12, 0, 1, 2]));
        assert_eq!(rows(5), (2, 3, vec![0, 10, 1, 11, 2, 12]));
        assert_eq!(rows(6), (2, 3, vec![10, 0, 11, 1, 12, 2]));
        assert_eq!(rows(7), (2, 3, vec![12, 2, 11, 1, 10, 0]));
        assert_eq!(rows(8), (2, 3, vec![2, 12, 1, 11, 0, 10]));
    }

    #[test]
    fn compositing_onto_white_keeps_opaque_and_whitens_transparent() {
        for v in 0..=255u8 {
            assert_eq!(over_white(v, 255), v);
            assert_eq!(over_white(v, 0), 255);
        }
        assert_eq!(over_white(0, 128), 127);
    }

    #[test]
    fn patch_order_is_merge_window_major() {
        // 56×28 image (2 patch rows of 28 px → grid 4×2): each pixel's value encodes its row.
        let (w, h) = (28u32, 56u32);
        let mut px = Vec::new();
        for y in 0..h {
            for _x in 0..w {
                px.extend([(y * 4) as u8, 0, 255]);
            }
        }
        let rgb = Rgb {
            width: w,
            height: h,
            px,
        };
        let v = pixel_values(&rgb, h, w, 14, 2);
        assert_eq!(v.len(), 8 * 588);
        let t = normalize_table();
        // Row 2 of the output is merge window (0,0), mh = 1, mw = 0 → image patch row 1.
        assert_eq!(v[2 * 588], t[0][14 * 4]);
        // Row 4 starts the second merge window down: patch row 2.
        assert_eq!(v[4 * 588], t[0][28 * 4]);
        assert_eq!(v[588 + 196], t[1][0]);
        assert_eq!(v[588 + 2 * 196], t[2][255]);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p llava-packer vision_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn vision_timing() {
        let (w, h) = (948u32, 838u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let rgb = Rgb {
            width: w,
            height: h,
            px,
        };
        let t = std::time::Instant::now();
        for _ in 0..10 {
            std::hint::black_box(resize_interleaved::<3>(
                &rgb.px,
                w,
                h,
                952,
                840,
                Filter::Bicubic,
            ));
        }
        eprintln!("resize {:?}", t.elapsed() / 10);
        let t = std::time::Instant::now();
        for _ in 0..10 {
            std::hint::black_box(resize_interleaved::<3>(
                &rgb.px,
                w,
                h,
                952,
                h,
                Filter::Bicubic,
            ));
        }
        eprintln!("horizontal {:?}", t.elapsed() / 10);
        let t = std::time::Instant::now();
        for _ in 0..10 {
            std::hint::black_box(resize_interleaved::<3>(
                &rgb.px,
                w,
                h,
                w,
                840,
                Filter::Bicubic,
            ));
        }
        eprintln!("vertical {:?}", t.elapsed() / 10);
        let t = std::time::Instant::now();
        for _ in 0..10 {
            std::hint::black_box(pixel_values(&rgb, 840, 952, 14, 2));
        }
        eprintln!("full {:?}", t.elapsed() / 10);
    }
}
