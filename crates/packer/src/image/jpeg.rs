//! JPEG pixel decoding through libjpeg (mozjpeg-sys, libjpeg-turbo derived), because Pillow
//! decodes with libjpeg-turbo: ISLOW IDCT + fancy upsampling give the very same pixels.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return. Ours unwinds
//! (mozjpeg-sys is built with the `unwinding` feature, its callbacks are `C-unwind`) with a
//! private payload via `resume_unwind` (no panic hook, no stderr noise); `decode_gray` catches
//! it and always destroys the decompressor.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg_sys::*;

use super::jpeg_hooks;
use super::pillow::{cmyk_to_l, cmyk_to_rgb, rgb_to_l_all, Gray, Rgb};
use super::ImageError;

/// How to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegDecode {
    /// Full size, Pillow's output colour space, then Pillow's `convert('L')`.
    Exact,
    /// DCT-domain downscale (1/2, 1/4 or 1/8, keeping both sides ≥ `min_side`) straight to
    /// grayscale: no chroma decode or upsampling at all.
    Fast { min_side: u32 },
}

/// Unwind payload from our libjpeg callbacks.
enum Abort {
    Error(String),
    Truncated,
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let msg = format_message(cinfo);
    resume_unwind(Box::new(Abort::Error(msg)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    let err = &mut *cinfo.err;
    if level < 0 {
        err.num_warnings += 1;
        // jdatasrc's fill_input_buffer says "Premature end of JPEG file" when it runs out of
        // bytes and feeds a fake EOI. Pillow refuses such files ("image file is truncated");
        // stop right here instead of decoding the grey remainder.
        if err.msg_code == JWRN_JPEG_EOF as c_int {
            resume_unwind(Box::new(Abort::Truncated));
        }
    }
}

unsafe fn format_message(cinfo: &mut jpeg_common_struct) -> String {
    let buf = [0u8; 80];
    if let Some(f) = (*cinfo.err).format_message {
        f(cinfo, &buf);
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Decode a JPEG to Pillow-equivalent "L" pixels (or a DCT-scaled approximation in fast mode).
pub fn decode_gray(bytes: &[u8], mode: JpegDecode) -> Result<Gray, ImageError> {
    if let JpegDecode::Fast { min_side } = mode {
        if let Some(g) = super::jpeg_dc::decode_dc_gray(bytes, min_side) {
            return Ok(g);
        }
    }
    decode_gray_libjpeg(bytes, mode)
}

/// [`decode_gray`] through libjpeg only (the reference the DC-only decoder is tested against).
pub(super) fn decode_gray_libjpeg(bytes: &[u8], mode: JpegDecode) -> Result<Gray, ImageError> {
    decode_gray_with(bytes, mode, true)
}

/// [`decode_gray_libjpeg`], optionally without the fused colour→"L" converter
/// (`jpeg_hooks`; `false` is the plain-libjpeg reference it is tested against).
pub(super) fn decode_gray_with(
    bytes: &[u8],
    mode: JpegDecode,
    fused: bool,
) -> Result<Gray, ImageError> {
    // Converted chunk by chunk (or fused inside libjpeg), so the full-size colour image is
    // never stored.
    let mut px = Vec::new();
    let (width, height) = decode_rows(bytes, mode, fused, |rows, nc| match nc {
        1 => px.extend_from_slice(rows),
        3 => px.extend_from_slice(&rgb_to_l_all(rows)),
        // libjpeg hands out Adobe-inverted CMYK; Pillow's "CMYK;I" rawmode inverts it back.
        _ => px.extend(
            rows.chunks_exact(4)
                .map(|p| cmyk_to_l(255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3])),
        ),
    })?;
    Ok(Gray { width, height, px })
}

/// Decode a JPEG to the pixels of Pillow's `Image.open(...).convert("RGB")`: full size, ISLOW
/// IDCT, fancy upsampling; "L" is replicated into three bands, CMYK goes through `cmyk2rgb`.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb, ImageError> {
    let mut px = Vec::new();
    let (width, height) = decode_rows(bytes, JpegDecode::Exact, false, |rows, nc| match nc {
        3 => px.extend_from_slice(rows),
        1 => px.extend(rows.iter().flat_map(|&v| [v, v, v])),
        _ => px.extend(
            rows.chunks_exact(4)
                .flat_map(|p| cmyk_to_rgb(255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3])),
        ),
    })?;
    Ok(Rgb { width, height, px })
}

/// Decode, handing `sink` consecutive groups of whole output rows with the number of
/// components per pixel (1, 3, or 4 = Adobe-inverted CMYK); returns the output size.
/// With `fuse_gray` (exact mode), 3-component images arrive as 1 component, already "L".
fn decode_rows(
    bytes: &[u8],
    mode: JpegDecode,
    fuse_gray: bool,
    mut sink: impl FnMut(&[u8], usize),
) -> Result<(u32, u32), ImageError> {
    // SAFETY: the structs are zero-initialised as libjpeg expects before jpeg_create_*; all
    // libjpeg calls happen inside catch_unwind and the decompressor is destroyed afterwards
    // whatever happened (jpeg_destroy on a half-created object is safe: it checks `mem`).
    unsafe {
        let mut err: jpeg_error_mgr = std::mem::zeroed();
        let mut cinfo: jpeg_decompress_struct = std::mem::zeroed();
        let e = jpeg_std_error(&mut err);
        e.error_exit = Some(error_exit);
        e.emit_message = Some(emit_message);
        cinfo.common.err = e;
        let res = catch_unwind(AssertUnwindSafe(|| {
            decode_inner(&mut cinfo, bytes, mode, fuse_gray, &mut sink)
        }));
        jpeg_destroy_decompress(&mut cinfo);
        match res {
            Ok(r) => r,
            Err(payload) => match payload.downcast::<Abort>() {
                Ok(a) => match *a {
                    Abort::Truncated => Err(ImageError::Truncated { format: "jpeg" }),
                    Abort::Error(msg) => Err(ImageError::Corrupt {
                        format: "jpeg",
                        detail: msg,
                    }),
                },
                Err(_) => Err(ImageError::Corrupt {
                    format: "jpeg",
                    detail: "decoder panicked".into(),
                }),
            },
        }
    }
}

unsafe fn decode_inner(
    cinfo: &mut jpeg_decompress_struct,
    bytes: &[u8],
    mode: JpegDecode,
    fuse_gray: bool,
    sink: &mut impl FnMut(&[u8], usize),
) -> Result<(u32, u32), ImageError> {
    jpeg_create_decompress(cinfo);
    jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
    jpeg_read_header(cinfo, 1);
    let ncomp = cinfo.num_components;
    let cmyk = matches!(cinfo.jpeg_color_space, JCS_CMYK | JCS_YCCK);
    // Pillow maps components 1 → "L", 3 → "RGB", 4 → "CMYK" (rawmode "CMYK;I").
    if !matches!(ncomp, 1 | 3 | 4) || (ncomp == 4) != cmyk {
        return Err(ImageError::Unsupported(format!(
            "jpeg with {ncomp} components ({:?})",
            cinfo.jpeg_color_space as u32
        )));
    }
    cinfo.dct_method = J_DCT_METHOD::JDCT_ISLOW;
    match mode {
        JpegDecode::Exact => {
            cinfo.do_fancy_upsampling = 1;
            cinfo.out_color_space = match ncomp {
                1 => JCS_GRAYSCALE,
                3 => JCS_RGB,
                _ => JCS_CMYK,
            };
        }
        JpegDecode::Fast { min_side } => {
            let (w, h) = (cinfo.image_width, cinfo.image_height);
            let denom = [8u32, 4, 2]
                .into_iter()
                .find(|&d| w.div_ceil(d) >= min_side && h.div_ceil(d) >= min_side)
                .unwrap_or(1);
            cinfo.scale_num = 1;
            cinfo.scale_denom = denom;
            cinfo.do_fancy_upsampling = 0;
            // libjpeg converts YCbCr/RGB/gray to grayscale itself (Y only for YCbCr, so the
            // chroma planes are never decoded); CMYK has no gray conversion there.
            cinfo.out_color_space = if cmyk { JCS_CMYK } else { JCS_GRAYSCALE };
        }
    }
    jpeg_start_decompress(cinfo);
    let w = cinfo.output_width as usize;
    let h = cinfo.output_height as usize;
    let mut nc = cinfo.output_components as usize;
    if !matches!(nc, 1 | 3 | 4) {
        unreachable!("output_components checked above");
    }
    if mode == JpegDecode::Exact && fuse_gray && jpeg_hooks::fuse_gray(cinfo) {
        nc = 1;
    }
    // A band of rows, reused: libjpeg returns at most `rec_outbuf_height` (≤ 4) rows a call.
    const BAND: usize = 16;
    let stride = w * nc;
    let mut buf = vec![0u8; stride * BAND];
    // Every access (libjpeg's writes, our reads) goes through this one pointer.
    let base = buf.as_mut_ptr();
    let mut rows: Vec<*mut u8> = (0..BAND).map(|i| base.add(i * stride)).collect();
    while (cinfo.output_scanline as usize) < h {
        let want = (h - cinfo.output_scanline as usize).min(BAND);
        let mut got = 0;
        while got < want {
            let n = jpeg_read_scanlines(cinfo, rows[got..].as_mut_ptr(), (want - got) as u32);
            if n == 0 {
                return Err(ImageError::Truncated { format: "jpeg" });
            }
            got += n as usize;
        }
        sink(std::slice::from_raw_parts(base, got * stride), nc);
    }
    // Reads up to EOI: a progressive file missing its last scans, or a file without EOI,
    // warns JWRN_JPEG_EOF here.
    jpeg_finish_decompress(cinfo);
    drop(buf);
    Ok((w as u32, h as u32))
}
