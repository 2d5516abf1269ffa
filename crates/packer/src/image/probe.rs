//! Header-only probing: format from magic bytes, size, EXIF orientation, layout, animation.
//! Never decodes pixels and never allocates in proportion to the claimed image size.

use super::{ImageError, ImageFormat, ImageInfo, ImageResult};

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad(format: &'static str, detail: &str) -> ImageError {
    ImageError::BadHeader {
        format,
        detail: detail.to_string(),
    }
}

/// Format from the leading magic bytes only.
pub fn sniff(b: &[u8]) -> Option<ImageFormat> {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some(ImageFormat::Webp)
    } else if b.starts_with(b"BM") && b.len() >= 18 {
        Some(ImageFormat::Bmp)
    } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
        Some(ImageFormat::Tiff)
    } else {
        None
    }
}

pub fn probe(b: &[u8]) -> ImageResult<ImageInfo> {
    if b.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff(b).ok_or(ImageError::UnknownFormat)?;
    let (width, height, orientation, color, animated) = match format {
        ImageFormat::Jpeg => jpeg(b)?,
        ImageFormat::Png => png(b)?,
        ImageFormat::Gif => gif(b)?,
        ImageFormat::Webp => webp(b)?,
        ImageFormat::Bmp => bmp(b)?,
        ImageFormat::Tiff => tiff(b)?,
    };
    if width == 0 || height == 0 {
        return Err(bad(format_name(format), "zero width or height"));
    }
    Ok(ImageInfo {
        format,
        width,
        height,
        orientation,
        color: color.to_string(),
        animated,
    })
}

pub fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::Webp => "webp",
        ImageFormat::Gif => "gif",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
    }
}

type Probed = (u32, u32, u8, &'static str, bool);

/// Orientation (tag 0x0112) from a TIFF-structured EXIF blob; 1 when absent or invalid.
pub fn exif_orientation(t: &[u8]) -> u8 {
    let t = t.strip_prefix(b"Exif\0\0").unwrap_or(t);
    let le = match t.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return 1,
    };
    let r16 = |at| if le { le16(t, at) } else { be16(t, at) };
    let r32 = |at| if le { le32(t, at) } else { be32(t, at) };
    let find = || -> Option<u8> {
        let ifd = r32(4)? as usize;
        let n = r16(ifd)? as usize;
        for i in 0..n.min(512) {
            let e = ifd + 2 + i * 12;
            if r16(e)? == 0x0112 && r16(e + 2)? == 3 {
                let v = r16(e + 8)?;
                return (1..=8).contains(&v).then_some(v as u8);
            }
        }
        None
    };
    find().unwrap_or(1)
}

fn jpeg(b: &[u8]) -> ImageResult<Probed> {
    let mut pos = 2;
    let mut orientation = 1;
    let mut sof = None;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        if b.get(pos) != Some(&0xFF) {
            break;
        }
        while b.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&m) = b.get(pos) else { break };
        pos += 1;
        if m == 0xD8 || (0xD0..=0xD7).contains(&m) || m == 0x01 {
            continue; // standalone markers
        }
        if m == 0xD9 || m == 0xDA {
            break; // EOI / start of scan: header is over
        }
        let Some(len) = be16(b, pos) else { break };
        let len = len as usize;
        if len < 2 {
            return Err(bad("jpeg", "bad marker length"));
        }
        let seg = b.get(pos + 2..(pos + len).min(b.len())).unwrap_or(&[]);
        match m {
            0xE1 if seg.starts_with(b"Exif\0\0") && orientation == 1 => {
                orientation = exif_orientation(&seg[6..]);
            }
            0xC0..=0xCF if m != 0xC4 && m != 0xC8 && m != 0xCC && sof.is_none() => {
                if seg.len() < 6 {
                    return Err(bad("jpeg", "short SOF segment"));
                }
                let h = be16(seg, 1).unwrap_or(0) as u32;
                let w = be16(seg, 3).unwrap_or(0) as u32;
                sof = Some((w, h, seg[5]));
            }
            _ => {}
        }
        pos += len;
    }
    let (w, h, nc) = sof.ok_or_else(|| bad("jpeg", "no SOF marker before scan data"))?;
    let color = match nc {
        1 => "l8",
        3 => "rgb8",
        4 => "cmyk8",
        _ => return Err(bad("jpeg", "unsupported component count")),
    };
    Ok((w, h, orientation, color, false))
}

fn png(b: &[u8]) -> ImageResult<Probed> {
    if be32(b, 8) != Some(13) || b.get(12..16) != Some(b"IHDR") || b.len() < 33 {
        return Err(bad("png", "missing IHDR"));
    }
    let (w, h, depth, ct) = (be32(b, 16).unwrap(), be32(b, 20).unwrap(), b[24], b[25]);
    if w > i32::MAX as u32 || h > i32::MAX as u32 {
        return Err(bad("png", "dimensions out of range"));
    }
    let color = match (ct, depth) {
        (0, 16) => "l16",
        (0, 1 | 2 | 4 | 8) => "l8",
        (2, 8) => "rgb8",
        (2, 16) => "rgb16",
        (3, 1 | 2 | 4 | 8) => "p8",
        (4, 8) => "la8",
        (4, 16) => "la16",
        (6, 8) => "rgba8",
        (6, 16) => "rgba16",
        _ => return Err(bad("png", "invalid colour type / bit depth")),
    };
    // Walk the chunk list (cheap: jumps by length) for acTL and eXIf.
    let (mut pos, mut orientation, mut animated) = (8usize, 1, false);
    while let (Some(len), Some(ty)) = (be32(b, pos), b.get(pos + 4..pos + 8)) {
        let data = b.get(pos + 8..pos + 8 + len as usize);
        match ty {
            b"acTL" => animated = data.and_then(|d| be32(d, 0)).is_some_and(|n| n > 1),
            b"eXIf" => orientation = data.map_or(1, exif_orientation),
            b"IEND" => break,
            _ => {}
        }
        pos = pos.saturating_add(12).saturating_add(len as usize);
    }
    Ok((w, h, orientation, color, animated))
}

fn gif(b: &[u8]) -> ImageResult<Probed> {
    let (w, h) = match (le16(b, 6), le16(b, 8)) {
        (Some(w), Some(h)) => (w as u32, h as u32),
        _ => return Err(bad("gif", "short logical screen descriptor")),
    };
    let flags = b[10.min(b.len() - 1)];
    let mut pos = 13
        + if flags & 0x80 != 0 {
            3 << ((flags & 7) + 1)
        } else {
            0
        };
    // Count image descriptors (stop at two) by skipping blocks and sub-block chains.
    let skip_subblocks = |mut p: usize| -> Option<usize> {
        loop {
            let n = *b.get(p)? as usize;
            p += 1 + n;
            if n == 0 {
                return Some(p);
            }
        }
    };
    let mut frames = 0;
    while frames < 2 {
        match b.get(pos) {
            Some(0x21) => match skip_subblocks(pos + 2) {
                Some(p) => pos = p,
                None => break,
            },
            Some(0x2C) => {
                frames += 1;
                let Some(&f) = b.get(pos + 9) else { break };
                pos += 10 + if f & 0x80 != 0 { 3 << ((f & 7) + 1) } else { 0 };
                match skip_subblocks(pos + 1) {
                    Some(p) => pos = p,
                    None => break,
                }
            }
            _ => break,
        }
    }
    Ok((w, h, 1, "p8", frames > 1))
}

fn webp(b: &[u8]) -> ImageResult<Probed> {
    let chunk = b.get(12..16).ok_or_else(|| bad("webp", "no chunk"))?;
    let (w, h, mut alpha, mut animated, exif_flag) = match chunk {
        b"VP8 " => {
            if b.get(23..26) != Some(&[0x9d, 0x01, 0x2a]) {
                return Err(bad("webp", "bad VP8 start code"));
            }
            let w = le16(b, 26).unwrap_or(0) & 0x3fff;
            let h = le16(b, 28).unwrap_or(0) & 0x3fff;
            (w as u32, h as u32, false, false, false)
        }
        b"VP8L" => {
            if b.get(20) != Some(&0x2f) {
                return Err(bad("webp", "bad VP8L signature"));
            }
            let v = le32(b, 21).ok_or_else(|| bad("webp", "short VP8L header"))?;
            (
                (v & 0x3fff) + 1,
                ((v >> 14) & 0x3fff) + 1,
                (v >> 28) & 1 == 1,
                false,
                false,
            )
        }
        b"VP8X" => {
            let f = *b.get(20).ok_or_else(|| bad("webp", "short VP8X"))?;
            let r24 = |at: usize| -> Option<u32> {
                let s = b.get(at..at + 3)?;
                Some(s[0] as u32 | (s[1] as u32) << 8 | (s[2] as u32) << 16)
            };
            let (w, h) = match (r24(24), r24(27)) {
                (Some(w), Some(h)) => (w + 1, h + 1),
                _ => return Err(bad("webp", "short VP8X")),
            };
            (w, h, f & 0x10 != 0, f & 0x02 != 0, f & 0x08 != 0)
        }
        _ => return Err(bad("webp", "unknown first chunk")),
    };
    let mut orientation = 1;
    // Extended files: walk the chunks for EXIF/ANIM/ALPH (cheap: jumps by chunk length).
    if exif_flag || animated || alpha {
        let mut pos = 12usize;
        while let (Some(ty), Some(len)) = (b.get(pos..pos + 4), le32(b, pos + 4)) {
            let data = b
                .get(pos + 8..(pos + 8 + len as usize).min(b.len()))
                .unwrap_or(&[]);
            match ty {
                b"EXIF" => orientation = exif_orientation(data),
                b"ANIM" => animated = true,
                b"ALPH" => alpha = true,
                _ => {}
            }
            pos = pos
                .saturating_add(8)
                .saturating_add((len as usize + 1) & !1);
        }
    }
    Ok((
        w,
        h,
        orientation,
        if alpha { "rgba8" } else { "rgb8" },
        animated,
    ))
}

fn bmp(b: &[u8]) -> ImageResult<Probed> {
    let hs = le32(b, 14).ok_or_else(|| bad("bmp", "short header"))?;
    let (w, h, bpp) = if hs == 12 {
        match (le16(b, 18), le16(b, 20), le16(b, 24)) {
            (Some(w), Some(h), Some(bpp)) => (w as i64, h as i64, bpp),
            _ => return Err(bad("bmp", "short core header")),
        }
    } else if hs >= 40 {
        match (le32(b, 18), le32(b, 22), le16(b, 28)) {
            (Some(w), Some(h), Some(bpp)) => (w as i32 as i64, h as i32 as i64, bpp),
            _ => return Err(bad("bmp", "short info header")),
        }
    } else {
        return Err(bad("bmp", "unknown DIB header size"));
    };
    if w <= 0 || h == 0 || w > i32::MAX as i64 || h.abs() > i32::MAX as i64 {
        return Err(bad("bmp", "dimensions out of range"));
    }
    let color = match bpp {
        1 | 2 | 4 | 8 => "p8",
        32 => "rgba8",
        _ => "rgb8",
    };
    Ok((w as u32, h.unsigned_abs() as u32, 1, color, false))
}

fn tiff(b: &[u8]) -> ImageResult<Probed> {
    let le = b[0] == b'I';
    let r16 = |at| if le { le16(b, at) } else { be16(b, at) };
    let r32 = |at| if le { le32(b, at) } else { be32(b, at) };
    let ifd = r32(4).ok_or_else(|| bad("tiff", "short header"))? as usize;
    let n = r16(ifd).ok_or_else(|| bad("tiff", "IFD out of range"))? as usize;
    let (mut w, mut h, mut orient, mut spp, mut bits, mut photo) = (0, 0, 1u8, 1u32, 8u32, 1u32);
    for i in 0..n.min(4096) {
        let e = ifd + 2 + i * 12;
        let (Some(tag), Some(ty)) = (r16(e), r16(e + 2)) else {
            break;
        };
        let val = match ty {
            3 => r16(e + 8).map(u32::from),
            4 => r32(e + 8),
            _ => None,
        };
        let Some(v) = val else { continue };
        match tag {
            256 => w = v,
            257 => h = v,
            258 => bits = v, // first sample's depth when inline; count > 2 points elsewhere
            262 => photo = v,
            274 if (1..=8).contains(&v) => orient = v as u8,
            277 => spp = v,
            _ => {}
        }
    }
    let color = match (spp, photo, bits) {
        (1, 3, _) => "p8",
        (1, _, 16) => "l16",
        (1, _, _) => "l8",
        (2, _, _) => "la8",
        (4, 5, _) => "cmyk8",
        (4, _, _) => "rgba8",
        _ => "rgb8",
    };
    Ok((w, h, orient, color, false))
}
