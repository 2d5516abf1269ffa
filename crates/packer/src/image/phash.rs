//! `imagehash.phash` / `imagehash.dhash` (imagehash 4.3.2) on an already "L" image.
//!
//! Exactness bound: imagehash thresholds scipy's FFT-based DCT at the median. Where the
//! mathematically exact coefficients are zero, scipy returns either exact zeros (constant
//! rows/columns — reproduced here) or ±1e-13 rounding noise whose sign depends on pocketfft's
//! operation order, e.g. images only 2 px wide or high upsampled to 32. For those degenerate
//! images the median is noise and some phash bits can differ from imagehash; dhash is exact.

use super::pillow::{resize_lanczos, Gray};

const N: usize = 32;

/// cos(pi * m / 64) for m in 0..128, built from the first quadrant by symmetry so that
/// mirrored terms cancel exactly (as they do in scipy's FFT-based DCT for symmetric input).
fn cos_table() -> [f64; 4 * N] {
    // Period 4N = 128; zero crossing at m = N (a quarter period).
    let mut t = [0f64; 4 * N];
    for (m, v) in t.iter_mut().enumerate().take(N) {
        *v = (std::f64::consts::PI * m as f64 / (2 * N) as f64).cos();
    }
    t[N] = 0.0;
    for m in N + 1..=2 * N {
        t[m] = -t[2 * N - m];
    }
    for m in 2 * N + 1..4 * N {
        t[m] = t[4 * N - m];
    }
    t
}

/// Unnormalised DCT-II (`scipy.fftpack.dct`, type 2): `y[k] = 2 * sum x[n] cos(pi k (2n+1) / 2N)`,
/// for k < `keep`. Split into even/odd halves so that symmetric/antisymmetric inputs give
/// exact zeros, which scipy's pocketfft also produces (a constant row → exactly 0 AC).
fn dct_ii(x: &[f64; N], keep: usize, tab: &[f64; 4 * N], out: &mut [f64]) {
    let mut s = [0f64; N / 2];
    let mut d = [0f64; N / 2];
    for n in 0..N / 2 {
        s[n] = x[n] + x[N - 1 - n];
        d[n] = x[n] - x[N - 1 - n];
    }
    for (k, o) in out.iter_mut().enumerate().take(keep) {
        let src = if k % 2 == 0 { &s } else { &d };
        let mut acc = 0.0;
        for (n, v) in src.iter().enumerate() {
            acc += v * tab[(k * (2 * n + 1)) % (4 * N)];
        }
        *o = 2.0 * acc;
    }
}

/// phash of an "L" image: LANCZOS to 32×32, 2-D DCT (axis 0 then axis 1), top-left 8×8,
/// bit = coefficient > median, row-major MSB first.
pub fn phash(img: &Gray) -> u64 {
    let small = resize_lanczos(img, N as u32, N as u32);
    phash_of_32(&small.px)
}

/// The DCT/median part of phash on 32×32 pixels.
pub fn phash_of_32(px: &[u8]) -> u64 {
    let tab = cos_table();
    // Axis 0 (down columns), only the 8 lowest frequencies are ever used.
    let mut cols = [[0f64; N]; 8]; // cols[k][x]
    let mut col = [0f64; N];
    let mut tmp = [0f64; 8];
    for x in 0..N {
        for y in 0..N {
            col[y] = px[y * N + x] as f64;
        }
        dct_ii(&col, 8, &tab, &mut tmp);
        for k in 0..8 {
            cols[k][x] = tmp[k];
        }
    }
    // Axis 1 (along rows).
    let mut coef = [0f64; 64];
    for k in 0..8 {
        dct_ii(&cols[k], 8, &tab, &mut coef[k * 8..k * 8 + 8]);
    }
    // scipy's FFT path and this direct sum differ by rounding noise (~1e-10 at most for
    // 8-bit input); values that are exactly zero in exact arithmetic come out as exact zeros
    // from scipy, so snap our noise to zero too.
    for c in coef.iter_mut() {
        if c.abs() < 1e-6 {
            *c = 0.0;
        }
    }
    let mut sorted = coef;
    sorted.sort_by(f64::total_cmp);
    // numpy.median of 64 values: mean of the two middle ones, (a + b) / 2.
    let med = (sorted[31] + sorted[32]) / 2.0;
    pack(coef.iter().map(|&c| c > med))
}

/// dhash of an "L" image: LANCZOS to 9 wide × 8 high, bit = px[x+1] > px[x].
pub fn dhash(img: &Gray) -> u64 {
    let small = resize_lanczos(img, 9, 8);
    let p = &small.px;
    pack((0..8).flat_map(|y| (0..8).map(move |x| p[y * 9 + x + 1] > p[y * 9 + x])))
}

fn pack(bits: impl Iterator<Item = bool>) -> u64 {
    bits.fold(0u64, |acc, b| (acc << 1) | b as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_matches_definition() {
        let tab = cos_table();
        let mut x = [0f64; N];
        for (i, v) in x.iter_mut().enumerate() {
            *v = ((i * 37) % 256) as f64;
        }
        let mut out = [0f64; 8];
        dct_ii(&x, 8, &tab, &mut out);
        for (k, o) in out.iter().enumerate() {
            let want: f64 = (0..N)
                .map(|n| {
                    2.0 * x[n] * (std::f64::consts::PI * k as f64 * (2 * n + 1) as f64 / 64.0).cos()
                })
                .sum();
            assert!((o - want).abs() < 1e-8, "k={k}: {o} vs {want}");
        }
    }

    #[test]
    fn constant_image_hashes_to_dc_only() {
        // scipy gives exact zeros for every AC coefficient; median 0; only DC (>0) is set.
        assert_eq!(phash_of_32(&[77u8; 1024]), 1 << 63);
        let g = Gray {
            width: 40,
            height: 40,
            px: vec![5; 1600],
        };
        assert_eq!(dhash(&g), 0);
    }
}
