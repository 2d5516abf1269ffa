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
//! the other formats through the `image` crate converted like Pillow's `convert("RGB")`
//! (alpha dropped, gray replicated, 16-bit samples reduced to their high byte). EXIF
//! orientation is not applied — neither does the processor on an `Image.open`ed image, and
//! the shard metadata's width/height (which the token counts use) are the stored ones.

use image::DynamicImage;

#[cfg(test)]
use super::pillow::resize_interleaved;
use super::pillow::{resize_planes, Filter, Rgb};
use super::{decode, jpeg, probe, ImageError, ImageFormat, ImageResult, Limits};

/// CLIP normalisation constants (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`), as f32 like numpy's;
/// the digits are transformers' literals, kept verbatim for auditability.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Decode any supported image to Pillow-equivalent RGB pixels (bomb guard from `limits`).
pub fn decode_rgb(bytes: &[u8], limits: &Limits) -> ImageResult<Rgb> {
    let info = probe::probe(bytes)?;
    if info.width as u64 * info.height as u64 > limits.max_image_pixels {
        return Err(ImageError::TooLarge {
            width: info.width,
            height: info.height,
            limit: limits.max_image_pixels,
        });
    }
    // Decoders are third-party code fed untrusted bytes: a panic is a decode error.
    std::panic::catch_unwind(|| match info.format {
        ImageFormat::Jpeg => jpeg::decode_rgb(bytes),
        _ => decode::decode_dynamic(bytes, &info).map(|img| to_pillow_rgb(&img, &info.color)),
    })
    .unwrap_or_else(|_| {
        Err(ImageError::Corrupt {
            format: probe::format_name(info.format),
            detail: "decoder panicked".into(),
        })
    })
}

/// Pillow `convert("RGB")` of what the `image` crate decoded (`color` as probed: a 16-bit
/// gray PNG is Pillow mode `I;16`, whose conversion clips at 255 instead of shifting).
fn to_pillow_rgb(img: &DynamicImage, color: &str) -> Rgb {
    let (width, height) = (img.width(), img.height());
    let clip16 = color == "l16";
    let g16 = |v: u16| {
        if clip16 {
            v.min(255) as u8
        } else {
            (v >> 8) as u8
        }
    };
    let px: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.as_raw().clone(),
        DynamicImage::ImageRgba8(b) => b
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(b) => {
            b.as_raw().chunks_exact(2).flat_map(|p| [p[0]; 3]).collect()
        }
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().flat_map(|&v| [g16(v); 3]).collect(),
        DynamicImage::ImageLumaA16(b) => b
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [g16(p[0]); 3])
            .collect(),
        DynamicImage::ImageRgb16(b) => b.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        // Float layouts have no Pillow mode; the image crate's own conversion is the best bound.
        other => other.to_rgb8().into_raw(),
    };
    Rgb { width, height, px }
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
