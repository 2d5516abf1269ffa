//! Behavioural tests on tiny in-memory images.

use std::io::Cursor;

use image::{codecs, DynamicImage, ImageBuffer, Luma, Rgb, Rgba};

use super::*;

const LIM: Limits = Limits {
    max_image_pixels: 178_956_970,
};

fn rgb(w: u32, h: u32) -> image::RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        let v = ((x * 7 + y * 3) % 256) as u8;
        Rgb([
            v,
            ((x * y) % 256) as u8,
            (255 - v) / 2 + ((y * 5) % 64) as u8,
        ])
    })
}

fn encode(img: &DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), f).unwrap();
    out
}

fn jpeg(img: &DynamicImage, q: u8) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_with_encoder(codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q))
        .unwrap();
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(ty: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(ty);
    c.extend_from_slice(data);
    c.extend_from_slice(&crc32(&c[4..]).to_be_bytes());
    c
}

fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[test]
fn empty_and_unknown() {
    assert_eq!(probe(b""), Err(ImageError::Empty));
    assert_eq!(
        probe(b"hello world, not an image"),
        Err(ImageError::UnknownFormat)
    );
    assert!(matches!(
        probe(b"\xFF\xD8\xFF\xE0"),
        Err(ImageError::BadHeader { .. })
    ));
    assert!(matches!(
        probe(b"\x89PNG\r\n\x1a\n\0\0"),
        Err(ImageError::BadHeader { .. })
    ));
}

#[test]
fn every_format_probes_and_hashes() {
    let img = DynamicImage::ImageRgb8(rgb(61, 47));
    let cases = [
        (ImageFormat::Png, encode(&img, image::ImageFormat::Png)),
        (ImageFormat::Gif, encode(&img, image::ImageFormat::Gif)),
        (ImageFormat::Bmp, encode(&img, image::ImageFormat::Bmp)),
        (ImageFormat::Tiff, encode(&img, image::ImageFormat::Tiff)),
        (ImageFormat::Webp, encode(&img, image::ImageFormat::WebP)),
        (ImageFormat::Jpeg, jpeg(&img, 90)),
    ];
    let png_hash = analyze(&cases[0].1, PhashMode::Exact, true, &LIM)
        .unwrap()
        .phash
        .unwrap();
    for (fmt, bytes) in &cases {
        let info = probe(bytes).unwrap();
        assert_eq!(
            (info.format, info.width, info.height),
            (*fmt, 61, 47),
            "{fmt:?}"
        );
        assert_eq!(info.orientation, 1);
        assert!(!info.animated);
        let a = analyze(bytes, PhashMode::Exact, true, &LIM).unwrap();
        assert!(a.dhash.is_some());
        let f = analyze(bytes, PhashMode::Fast, false, &LIM).unwrap();
        assert_eq!(f.dhash, None);
        // Lossless formats carry the same pixels → identical hash; lossy ones stay close.
        let d = hamming(a.phash.unwrap(), png_hash);
        match fmt {
            ImageFormat::Png | ImageFormat::Bmp | ImageFormat::Tiff | ImageFormat::Webp => {
                assert_eq!(d, 0, "{fmt:?}")
            }
            _ => assert!(d <= 12, "{fmt:?}: {d}"),
        }
        let off = analyze(bytes, PhashMode::Off, true, &LIM).unwrap();
        assert_eq!((off.phash, off.dhash), (None, None));
    }
}

#[test]
fn format_sniffed_from_content_not_name() {
    // A PNG that the corpus calls "photo.jpg": only the bytes matter.
    let png = encode(
        &DynamicImage::ImageRgb8(rgb(10, 20)),
        image::ImageFormat::Png,
    );
    let info = probe(&png).unwrap();
    assert_eq!(info.format, ImageFormat::Png);
    assert_eq!(info.format.ext(), "png");
    assert_eq!(info.color, "rgb8");
}

#[test]
fn grayscale_alpha_and_sixteen_bit_follow_pillow_modes() {
    let base = rgb(40, 40);
    let rgb_png = encode(
        &DynamicImage::ImageRgb8(base.clone()),
        image::ImageFormat::Png,
    );
    let rgba = ImageBuffer::from_fn(40, 40, |x, y| {
        let p = base.get_pixel(x, y).0;
        Rgba([p[0], p[1], p[2], ((x * 9) % 256) as u8])
    });
    let rgba_png = encode(&DynamicImage::ImageRgba8(rgba), image::ImageFormat::Png);
    assert_eq!(probe(&rgba_png).unwrap().color, "rgba8");
    // convert('L') ignores alpha.
    let h = |b: &[u8]| analyze(b, PhashMode::Exact, true, &LIM).unwrap();
    assert_eq!(
        (h(&rgb_png).phash, h(&rgb_png).dhash),
        (h(&rgba_png).phash, h(&rgba_png).dhash)
    );

    // RGB16: Pillow keeps the high byte, so v*257 hashes like v.
    let rgb16 = ImageBuffer::from_fn(40, 40, |x, y| {
        let p = base.get_pixel(x, y).0;
        image::Rgb([p[0] as u16 * 257, p[1] as u16 * 257, p[2] as u16 * 257])
    });
    let rgb16_png = encode(&DynamicImage::ImageRgb16(rgb16), image::ImageFormat::Png);
    assert_eq!(probe(&rgb16_png).unwrap().color, "rgb16");
    assert_eq!(h(&rgb16_png).phash, h(&rgb_png).phash);

    // Gray16 opens as I;16 and convert('L') clips at 255: a ramp 0..=1000 becomes mostly white.
    let g16 = ImageBuffer::from_fn(40, 40, |x, _| Luma([(x * 25) as u16]));
    let g16_png = encode(&DynamicImage::ImageLuma16(g16), image::ImageFormat::Png);
    assert_eq!(probe(&g16_png).unwrap().color, "l16");
    let clipped = ImageBuffer::from_fn(40, 40, |x, _| Luma([(x * 25).min(255) as u8]));
    let clipped_png = encode(&DynamicImage::ImageLuma8(clipped), image::ImageFormat::Png);
    assert_eq!(h(&g16_png).phash, h(&clipped_png).phash);
}

#[test]
fn palette_png_maps_through_palette_luma() {
    // 2-colour palette PNG (indices 0/1 → red/blue) vs the same picture as RGB.
    let (w, h) = (32u32, 24u32);
    let idx: Vec<u8> = (0..w * h)
        .map(|i| (((i % w) / 4 + (i / w) / 3) % 2) as u8)
        .collect();
    let mut pal = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut pal, w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![255, 0, 0, 0, 0, 255]);
        enc.set_trns(vec![0u8, 255]);
        enc.write_header().unwrap().write_image_data(&idx).unwrap();
    }
    assert_eq!(probe(&pal).unwrap().color, "p8");
    let colours = [[255u8, 0, 0], [0, 0, 255]];
    let rgbimg = ImageBuffer::from_fn(
        w,
        h,
        |x, y| Rgb(colours[idx[(y * w + x) as usize] as usize]),
    );
    let rgb_png = encode(&DynamicImage::ImageRgb8(rgbimg), image::ImageFormat::Png);
    let a = analyze(&pal, PhashMode::Exact, true, &LIM).unwrap();
    let b = analyze(&rgb_png, PhashMode::Exact, true, &LIM).unwrap();
    assert_eq!((a.phash, a.dhash), (b.phash, b.dhash));
}

fn with_exif_orientation(jpg: &[u8], o: u8) -> Vec<u8> {
    let mut tiff = b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0".to_vec();
    tiff.extend_from_slice(&[o, 0, 0, 0, 0, 0]);
    let mut out = jpg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((tiff.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&tiff);
    out.extend_from_slice(&jpg[2..]);
    out
}

#[test]
fn exif_orientation_and_reencode() {
    let jpg = jpeg(&DynamicImage::ImageRgb8(rgb(100, 50)), 90);
    let oriented = with_exif_orientation(&jpg, 6);
    let info = probe(&oriented).unwrap();
    assert_eq!((info.width, info.height, info.orientation), (100, 50, 6));
    // Hashes ignore orientation (imagehash does no exif_transpose).
    let a = analyze(&jpg, PhashMode::Exact, true, &LIM).unwrap();
    let b = analyze(&oriented, PhashMode::Exact, true, &LIM).unwrap();
    assert_eq!((a.phash, a.dhash), (b.phash, b.dhash));

    assert!(reencode_within(&oriented, &info, 5000).unwrap().is_none());
    let r = reencode_within(&oriented, &info, 1000).unwrap().unwrap();
    // Rotated 90° → portrait; sqrt(1000/5000) scale → 22 × 44.
    assert_eq!(
        (r.info.format, r.info.width, r.info.height),
        (ImageFormat::Jpeg, 22, 44)
    );
    assert_eq!(r.info.orientation, 1);

    let png = encode(
        &DynamicImage::ImageRgb8(rgb(30, 30)),
        image::ImageFormat::Png,
    );
    let r = reencode_within(&png, &probe(&png).unwrap(), 100)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.info.format, r.info.width, r.info.height),
        (ImageFormat::Png, 10, 10)
    );
}

#[test]
fn fit_within_is_tight() {
    use super::reencode::fit_within;
    assert_eq!(fit_within(100, 50, 1000), (44, 22));
    assert_eq!(fit_within(10_000, 1, 100), (100, 1));
    assert_eq!(fit_within(1, 10_000, 100), (1, 100));
    for (w, h, m) in [
        (4000u32, 3000u32, 1_000_000u64),
        (7, 13, 50),
        (12345, 678, 99_999),
    ] {
        let (a, b) = fit_within(w, h, m);
        assert!(a as u64 * b as u64 <= m && a >= 1 && b >= 1);
    }
}

#[test]
fn bomb_header_rejected_before_decode() {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 50_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    let info = probe(&png).unwrap();
    assert_eq!((info.width, info.height), (50_000, 50_000));
    // `TooLarge` (not an allocation failure or a decode error) shows the check ran before any
    // decoding: a real decode of 50000×50000 would need 7.5 GB.
    for mode in [PhashMode::Exact, PhashMode::Fast, PhashMode::Off] {
        let e = analyze(&png, mode, true, &LIM).unwrap_err();
        assert!(
            matches!(e, ImageError::TooLarge { width: 50_000, .. }),
            "{e}"
        );
    }
    // Same for a JPEG SOF claiming 50000×50000.
    let jpg = jpeg(&DynamicImage::ImageRgb8(rgb(8, 8)), 90);
    let mut big = jpg.clone();
    let sof = big.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    big[sof + 5..sof + 9].copy_from_slice(&[0xC3, 0x50, 0xC3, 0x50]);
    assert!(matches!(
        analyze(&big, PhashMode::Exact, true, &LIM),
        Err(ImageError::TooLarge { .. })
    ));
}

#[test]
fn truncated_jpeg_and_missing_eoi() {
    let jpg = jpeg(&DynamicImage::ImageRgb8(rgb(64, 64)), 90);
    let cut = &jpg[..jpg.len() / 2];
    for mode in [PhashMode::Exact, PhashMode::Fast, PhashMode::Off] {
        assert_eq!(
            analyze(cut, mode, true, &LIM),
            Err(ImageError::Truncated { format: "jpeg" }),
            "{mode:?}"
        );
    }
    // Zero padding after EOI is fine for the structural check.
    let mut padded = jpg.clone();
    padded.extend_from_slice(&[0, 0, 0]);
    assert!(analyze(&padded, PhashMode::Off, false, &LIM).is_ok());
    // Garbage after the header must be a clean error, never an abort.
    let mut junk = jpg[..jpg.len() / 3].to_vec();
    junk.extend(std::iter::repeat_n(0x5Au8, 500));
    junk.extend_from_slice(&[0xFF, 0xD9]);
    let _ = analyze(&junk, PhashMode::Exact, true, &LIM);
    let mut bad_tables = jpg.clone();
    let dqt = bad_tables
        .windows(2)
        .position(|w| w == [0xFF, 0xDB])
        .unwrap();
    bad_tables[dqt + 4] = 0x7F; // invalid table id/precision
    assert!(matches!(
        analyze(&bad_tables, PhashMode::Exact, true, &LIM),
        Err(ImageError::Corrupt { format: "jpeg", .. })
    ));
}

#[test]
fn png_bad_crc_is_corrupt() {
    let mut png = encode(
        &DynamicImage::ImageRgb8(rgb(20, 20)),
        image::ImageFormat::Png,
    );
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    png[idat + 6] ^= 0xFF; // corrupt the compressed data; the chunk CRC no longer matches
    let e = analyze(&png, PhashMode::Exact, true, &LIM).unwrap_err();
    assert!(
        matches!(e, ImageError::Corrupt { format: "png", .. }),
        "{e}"
    );
    assert!(
        analyze(&png, PhashMode::Off, true, &LIM).is_ok(),
        "Off does no CRC checks"
    );
}

#[test]
fn animated_gif_hashes_first_frame() {
    let frame = |seed: u32| {
        image::Frame::new(ImageBuffer::from_fn(24, 24, move |x, y| {
            Rgba([
                ((x * seed) % 256) as u8,
                ((y * 11) % 256) as u8,
                (seed * 40) as u8,
                255,
            ])
        }))
    };
    let gif_of = |frames: Vec<image::Frame>| {
        let mut out = Vec::new();
        codecs::gif::GifEncoder::new(&mut out)
            .encode_frames(frames)
            .unwrap();
        out
    };
    let anim = gif_of(vec![frame(3), frame(5)]);
    let still = gif_of(vec![frame(3)]);
    let other = gif_of(vec![frame(5)]);
    assert!(probe(&anim).unwrap().animated);
    assert!(!probe(&still).unwrap().animated);
    let h = |b: &[u8]| analyze(b, PhashMode::Exact, true, &LIM).unwrap().phash;
    assert_eq!(h(&anim), h(&still));
    assert_ne!(h(&anim), h(&other));
}

#[test]
fn fast_mode_stays_close_to_exact() {
    // A smooth, photo-like 4:2:0 JPEG big enough for a 1/8 scaled decode.
    let img = ImageBuffer::from_fn(640, 480, |x, y| {
        let (fx, fy) = (x as f64 / 640.0, y as f64 / 480.0);
        let v = |a: f64| (127.0 + 120.0 * a.sin()) as u8;
        Rgb([
            v(fx * 7.0 + fy * 3.0),
            v(fx * 2.0 - fy * 5.0),
            v((fx * fy) * 9.0),
        ])
    });
    let jpg = jpeg(&DynamicImage::ImageRgb8(img), 85);
    let e = analyze(&jpg, PhashMode::Exact, true, &LIM).unwrap();
    let f = analyze(&jpg, PhashMode::Fast, true, &LIM).unwrap();
    assert!(hamming(e.phash.unwrap(), f.phash.unwrap()) <= 6);
}

#[test]
fn content_hash_is_stable() {
    assert_eq!(content_hash(b"abc"), content_hash(b"abc"));
    assert_ne!(content_hash(b"abc"), content_hash(b"abd"));
}
