//! Tests of the Pillow re-implementation against scalar references and known values.

use std::rc::Rc;

use super::coeffs::*;
use super::resample::*;
use super::*;

#[test]
fn luma_formula_matches_pillow() {
    assert_eq!(rgb_to_l(255, 255, 255), 255);
    assert_eq!(rgb_to_l(0, 0, 0), 0);
    assert_eq!(rgb_to_l(255, 0, 0), 76);
    assert_eq!(rgb_to_l(0, 255, 0), 150);
    assert_eq!(rgb_to_l(0, 0, 255), 29);
    // Values observed from Pillow 12.3 `Image.frombytes('CMYK', ...).convert('L')`.
    assert_eq!(cmyk_to_l(10, 20, 30, 40), 200);
    assert_eq!(cmyk_to_l(200, 100, 50, 25), 118);
    assert_eq!(cmyk_to_l(255, 255, 255, 0), 0);
}

#[test]
fn resize_constant_stays_constant() {
    let g = Gray {
        width: 100,
        height: 37,
        px: vec![77; 3700],
    };
    let r = resize_lanczos(&g, 32, 32);
    assert_eq!(r.px.len(), 1024);
    assert!(r.px.iter().all(|&v| v == 77));
    let up = resize_lanczos(
        &Gray {
            width: 3,
            height: 2,
            px: vec![9; 6],
        },
        9,
        8,
    );
    assert!(up.px.iter().all(|&v| v == 9));
}

/// Deterministic noise (xorshift), with runs of extreme values mixed in.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match (i / 97) % 5 {
                0 => 255,
                1 => 0,
                _ => x as u8,
            }
        })
        .collect()
}

/// Pillow's per-pixel loop written out plainly: `ss = 1 << 21; ss += p * k` (C `int`).
#[cfg(target_arch = "x86_64")]
fn reference_row(in_row: &[u8], c: &Coeffs) -> Vec<u8> {
    (0..c.bounds.len())
        .map(|xx| {
            let (xmin, cnt) = c.bounds[xx];
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for x in 0..cnt {
                let p = in_row[xmin + x] as i32;
                ss = ss.wrapping_add(p.wrapping_mul(c.k[xx * c.ksize + x]));
            }
            clip8(ss)
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_long_dot_products_equal_scalar() {
    if !std::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2: skipped");
        return;
    }
    let mut pairs = vec![
        (4000, 1),
        (4000, 2),
        (4000, 7),
        (2048, 32),
        (2049, 32),
        (1999, 32),
        (1024, 9),
        (1023, 8),
        (33, 1),
        (47, 2),
        (100, 3),
        (129, 16),
        (300, 32),
        (97, 7),
        (64, 5),
        (6000, 13),
        (1, 1),
        (16, 1),
        (17, 2),
    ];
    pairs.extend((1..=40).map(|o| (o * 5 + 3, o)));
    pairs.extend((0..40).map(|i| (1234 + 37 * i, 1 + i % 33)));
    let mut checked = 0;
    for (seed, &(inn, out)) in pairs.iter().enumerate() {
        for filter in [Filter::Lanczos, Filter::Bicubic] {
            let c = precompute(inn, out, filter);
            let split = c.split().expect("realistic taps split");
            let mut scratch = [Vec::new(), Vec::new()];
            for pair in 0..2 {
                let px: Vec<_> = (0..2)
                    .map(|r| noise(inn as usize, (seed * 8 + pair * 2 + r) as u64))
                    .collect();
                let want: Vec<_> = px.iter().map(|p| reference_row(p, &c)).collect();
                for (p, want) in px.iter().zip(&want) {
                    let mut scalar = vec![0u8; out as usize];
                    long_row(p, &c, &mut scalar);
                    assert_eq!(&scalar, want, "{inn}->{out} {filter:?} scalar");
                }
                let (mut f0, mut f1) = (vec![0u8; out as usize], vec![0u8; out as usize]);
                // SAFETY: AVX2 detected above.
                unsafe {
                    long_rows_avx2([&px[0], &px[1]], split, [&mut f0, &mut f1], &mut scratch)
                };
                assert_eq!(f0, want[0], "{inn}->{out} {filter:?} avx2");
                assert_eq!(f1, want[1], "{inn}->{out} {filter:?} avx2");
                checked += 1;
            }
        }
    }
    assert!(checked > 200);
    // Coefficients outside Pillow's range still give the wrapped scalar sum (mod 2^32).
    let mut c = precompute(700, 4, Filter::Lanczos);
    for (i, k) in c.k.iter_mut().enumerate() {
        *k = ((i as i32).wrapping_mul(0x0251_7A3B) >> 6) | 0x7ff;
    }
    let split = c.split().expect("|k| < 2^26");
    for seed in 0..8 {
        let (p0, p1) = (noise(700, 1000 + seed), noise(700, 2000 + seed));
        let (mut f0, mut f1) = (vec![0u8; 4], vec![0u8; 4]);
        let mut scratch = [Vec::new(), Vec::new()];
        // SAFETY: AVX2 detected above.
        unsafe { long_rows_avx2([&p0, &p1], split, [&mut f0, &mut f1], &mut scratch) };
        assert_eq!(f0, reference_row(&p0, &c));
        assert_eq!(f1, reference_row(&p1, &c));
    }
}

#[test]
fn coefficient_cache_hits_and_evicts() {
    let a = coeffs(1234, 32, Filter::Lanczos);
    let plain = precompute_rows(1234, 32, Filter::Lanczos, usize::MAX);
    assert_eq!(
        (&a.k, &a.bounds, a.ksize),
        (&plain.k, &plain.bounds, plain.ksize)
    );
    assert!(Rc::ptr_eq(&a, &coeffs(1234, 32, Filter::Lanczos)));
    assert!(!Rc::ptr_eq(&a, &coeffs(1234, 32, Filter::Bicubic)));
    assert!(!Rc::ptr_eq(&a, &coeffs(1234, 33, Filter::Lanczos)));
    // Many other sizes push it out (entry count and byte budget), results stay right.
    for n in 0..200 {
        let c = coeffs(2000 + n, 32, Filter::Lanczos);
        assert_eq!(c.k, precompute(2000 + n, 32, Filter::Lanczos).k);
    }
    let again = coeffs(1234, 32, Filter::Lanczos);
    assert!(!Rc::ptr_eq(&a, &again));
    assert_eq!(again.k, a.k);
    // Larger than the whole budget: computed, never kept.
    let huge = coeffs(100_000, 1, Filter::Lanczos);
    assert!(!Rc::ptr_eq(&huge, &coeffs(100_000, 1, Filter::Lanczos)));
}

#[test]
fn reused_coefficient_rows_equal_computed_ones() {
    let mut reused = 0;
    let mut pairs: Vec<(u32, u32)> = vec![(2048, 32), (1024, 32), (4000, 1), (33, 32), (1, 1)];
    pairs.extend([
        (640, 9),
        (1920, 8),
        (480, 7),
        (3, 700),
        (28, 56),
        (100, 1000),
    ]);
    pairs.extend((1..200).map(|i| (i * 13 + 5, 32)));
    pairs.extend((1..100).map(|i| (i * 56, 28 * (i % 9 + 1))));
    pairs.extend((1..60).map(|i| (i * 7 + 1, i * 11 + 3)));
    for (inn, out) in pairs {
        for filter in [Filter::Lanczos, Filter::Bicubic] {
            let plain = precompute_rows(inn, out, filter, usize::MAX);
            let fast = precompute_rows(inn, out, filter, 0);
            assert_eq!(fast.bounds, plain.bounds, "{inn}->{out} {filter:?}");
            assert_eq!(fast.k, plain.k, "{inn}->{out} {filter:?}");
            assert_eq!(fast.ksize, plain.ksize);
            let rows = fast.k.chunks_exact(fast.ksize);
            let distinct: std::collections::HashSet<_> = rows.collect();
            reused += out as usize - distinct.len();
        }
    }
    assert!(reused > 1000, "{reused}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_vertical_pass_equals_scalar() {
    if !std::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2: skipped");
        return;
    }
    let mut cases = vec![(840, 952, 5), (838, 840, 31), (33, 32, 64), (4000, 1, 3)];
    cases.extend([
        (2048, 32, 32),
        (1, 1, 1),
        (1000, 9, 33),
        (70, 140, 95),
        (7, 3, 1),
    ]);
    cases.extend((1..30).map(|i| (i * 17 + 2, i * 5 + 1, i * 3)));
    for (i, &(inn, out, stride)) in cases.iter().enumerate() {
        for filter in [Filter::Lanczos, Filter::Bicubic] {
            let mut c = precompute(inn, out, filter);
            if i % 4 == 3 {
                // Weights Pillow never produces: the wrapped sums must still agree.
                for (j, k) in c.k.iter_mut().enumerate() {
                    *k = ((j as i32 + 1).wrapping_mul(0x0251_7A3B) >> 6) | 0x3ff;
                }
            }
            let stride = stride as usize;
            let px = noise(inn as usize * stride, i as u64 + 77);
            let want = vertical_pass::<false>(&px, stride, &c, 0);
            // The same pass with bounds `shift` rows further down and `row_shift = shift`.
            let shift = i % 3;
            let shifted = Coeffs {
                in_size: c.in_size,
                ksize: c.ksize,
                bounds: c.bounds.iter().map(|&(a, n)| (a + shift, n)).collect(),
                k: c.k.clone(),
                split: Default::default(),
            };
            let got = vertical_pass::<true>(&px, stride, &shifted, shift);
            assert_eq!(got, want, "{inn}->{out} stride {stride} {filter:?} shifted");
            let got = vertical_pass::<true>(&px, stride, &c, 0);
            assert_eq!(got, want, "{inn}->{out} stride {stride} {filter:?}");
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_transpose_equals_scalar() {
    if !std::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2: skipped");
        return;
    }
    for (i, &(rows, cols)) in [(16, 16), (1, 1), (15, 17), (33, 48), (100, 37), (64, 3)]
        .iter()
        .enumerate()
    {
        for bands in [1usize, 3] {
            for band in 0..bands {
                let first = i % 3;
                let px = noise((rows + first) * cols * bands, (i * 10 + band) as u64);
                let src = Band {
                    px: &px,
                    bands,
                    band,
                };
                let want = transpose::<false>(src, first, rows, cols);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(
                            want[c * rows + r],
                            px[((first + r) * cols + c) * bands + band]
                        );
                    }
                }
                // SAFETY: AVX2 detected above (the only requirement of `AVX2 = true`).
                let got = transpose::<true>(src, first, rows, cols);
                assert_eq!(got, want, "{rows}x{cols} band {band}/{bands}");
            }
        }
    }
}

/// Whole resizes: the dispatched (AVX2) build against the generic scalar build, across the
/// long-tap, few-tap, one-axis and tall-image paths, for one and three bands.
#[test]
fn dispatched_resize_equals_generic() {
    let sizes = [
        ((641, 480), (32, 32)),
        ((2048, 97), (32, 32)),
        ((33, 40), (32, 32)),
        ((500, 333), (9, 8)),
        ((4000, 3), (1, 1)),
        ((4000, 5), (1, 5)),
        ((35, 3600), (3, 32)),
        ((123, 77), (252, 84)),
        ((948, 838), (952, 840)),
        ((300, 200), (300, 57)),
        ((300, 200), (41, 200)),
        ((1600, 1200), (448, 336)),
    ];
    for (i, &((w, h), (ow, oh))) in sizes.iter().enumerate() {
        for filter in [Filter::Lanczos, Filter::Bicubic] {
            for bands in [1usize, 3] {
                let px = noise(w * h * bands, i as u64 * 7 + bands as u64);
                let got = resize_planes(&px, bands, w as u32, h as u32, ow, oh, filter);
                for (band, plane) in got.iter().enumerate() {
                    let src = Band {
                        px: &px,
                        bands,
                        band,
                    };
                    let (w, h) = (w as u32, h as u32);
                    let want = if h as u64 > w as u64 * 100 && oh < h {
                        let t = resample_generic::<false>(src, w, h, w, oh, filter);
                        let t = Band {
                            px: &t,
                            bands: 1,
                            band: 0,
                        };
                        resample_generic::<false>(t, w, oh, ow, oh, filter)
                    } else {
                        resample_generic::<false>(src, w, h, ow, oh, filter)
                    };
                    assert_eq!(plane, &want, "{w}x{h}->{ow}x{oh} {filter:?} {bands}");
                }
            }
        }
    }
}
