//! Image hot paths on a photo-like JPEG: header probe, fast phash (DCT-scaled grayscale decode
//! + hash, the default), exact phash (full decode, Pillow-exact pipeline).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::{codecs::jpeg::JpegEncoder, DynamicImage, ImageBuffer, Rgb};
use packer::image::{analyze, probe, Limits, PhashMode};

/// A smooth, textured 1600×1200 4:2:0 JPEG (q85), roughly camera-photo entropy per pixel.
fn sample_jpeg() -> Vec<u8> {
    let (w, h) = (1600u32, 1200u32);
    let img = ImageBuffer::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let noise = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 13) % 24;
        let v = |a: f32| (110.0 + 100.0 * a.sin()) as u32 + noise;
        Rgb([
            v(fx * 9.0 + fy * 4.0) as u8,
            v(fx * 3.0 - fy * 7.0 + 1.0) as u8,
            v(fx * fy * 13.0 + 2.0) as u8,
        ])
    });
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(img)
        .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 85))
        .expect("encode sample JPEG");
    out
}

fn bench(c: &mut Criterion) {
    let jpg = sample_jpeg();
    let limits = Limits::default();
    let mut g = c.benchmark_group("image_jpeg_1600x1200");
    g.throughput(Throughput::Bytes(jpg.len() as u64));
    g.sample_size(20);
    g.bench_function("probe", |b| b.iter(|| probe(black_box(&jpg)).unwrap()));
    g.bench_function("phash_fast", |b| {
        b.iter(|| analyze(black_box(&jpg), PhashMode::Fast, false, &limits).unwrap())
    });
    g.bench_function("phash_exact", |b| {
        b.iter(|| analyze(black_box(&jpg), PhashMode::Exact, false, &limits).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
