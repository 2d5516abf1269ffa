//! Pillow's pixel arithmetic, re-implemented so hashes match `imagehash` bit for bit:
//! `convert('L')` (fixed-point ITU-R 601 luma) and `resize(..., LANCZOS | BICUBIC)` for 8-bit
//! "L" and "RGB" images (separable passes, 22-bit fixed-point coefficients, per-pass clip to
//! u8).

mod coeffs;
mod resample;
#[cfg(test)]
mod tests;

pub use coeffs::Filter;
use resample::{resample_plane, Band};

/// An 8-bit single-band image (Pillow mode "L").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gray {
    pub width: u32,
    pub height: u32,
    /// Row-major, `width * height` bytes.
    pub px: Vec<u8>,
}

/// An 8-bit RGB image (Pillow mode "RGB"), bands interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    /// Row-major, `3 * width * height` bytes.
    pub px: Vec<u8>,
}

/// Pillow `rgb2l` / `L24`: `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`.
#[inline]
pub fn rgb_to_l(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `rgb_to_l` over interleaved RGB bytes (AVX2 build when the CPU has it: this runs over every
/// pixel of every exactly-hashed image).
pub fn rgb_to_l_all(rgb: &[u8]) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the running CPU supports AVX2, checked just above.
        return unsafe { rgb_to_l_avx2(rgb) };
    }
    rgb_to_l_generic(rgb)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rgb_to_l_avx2(rgb: &[u8]) -> Vec<u8> {
    rgb_to_l_generic(rgb)
}

#[inline(always)]
fn rgb_to_l_generic(rgb: &[u8]) -> Vec<u8> {
    let n = rgb.len() / 3;
    // Written straight into the new vector's memory (no zero fill first).
    let mut out = Vec::with_capacity(n);
    for (o, p) in out.spare_capacity_mut()[..n]
        .iter_mut()
        .zip(rgb.chunks_exact(3))
    {
        o.write(rgb_to_l(p[0], p[1], p[2]));
    }
    // SAFETY: the loop above wrote all `n` bytes.
    unsafe { out.set_len(n) };
    out
}

/// Pillow's `MULDIV255`: a rounded `a*b/255` without a division.
#[inline]
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's `cmyk2rgb` on true (non-inverted) CMYK, as Pillow holds it.
#[inline]
pub fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - k as u32;
    // nk - muldiv255(x, nk) is always in 0..=255, so Pillow's CLIP8 is a no-op here.
    [
        (nk - muldiv255(c as u32, nk)) as u8,
        (nk - muldiv255(m as u32, nk)) as u8,
        (nk - muldiv255(y as u32, nk)) as u8,
    ]
}

/// Pillow has no direct CMYK→L converter: `convert('L')` goes CMYK→RGB (`cmyk2rgb`) then
/// `rgb2l`, so do exactly that.
#[inline]
pub fn cmyk_to_l(c: u8, m: u8, y: u8, k: u8) -> u8 {
    let [r, g, b] = cmyk_to_rgb(c, m, y, k);
    rgb_to_l(r, g, b)
}

/// `Image.resize((out_w, out_h), Image.LANCZOS)` on an "L" image, as Pillow 12.3 does it.
pub fn resize_lanczos(src: &Gray, out_w: u32, out_h: u32) -> Gray {
    let px = resize_interleaved::<1>(
        &src.px,
        src.width,
        src.height,
        out_w,
        out_h,
        Filter::Lanczos,
    );
    Gray {
        width: out_w,
        height: out_h,
        px,
    }
}

/// `Image.resize((out_w, out_h), filter)` of an 8-bit image with `N` interleaved bands
/// (1 = "L", 3 = "RGB"), as Pillow 12.3 does it, returned interleaved.
pub fn resize_interleaved<const N: usize>(
    px: &[u8],
    width: u32,
    height: u32,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> Vec<u8> {
    let planes = resize_planes(px, N, width, height, out_w, out_h, filter);
    if N == 1 {
        return planes.into_iter().next().expect("one plane");
    }
    let mut out = vec![0u8; planes[0].len() * N];
    for (b, plane) in planes.iter().enumerate() {
        for (o, v) in out.chunks_exact_mut(N).zip(plane) {
            o[b] = *v;
        }
    }
    out
}

/// The same resize, one output plane per band (what patchification wants). Every band goes
/// through the same integer arithmetic as Pillow's interleaved loop, so values are identical;
/// one band at a time lets the dot products vectorise.
///
/// `Image.resize` (Python) special-cases very tall images (height > 100 × width, height
/// shrinking): it first resamples to `(width, out_h)`, then to `(out_w, out_h)`, i.e. the
/// vertical pass runs first and the horizontal pass sees the already-rounded rows.
pub fn resize_planes(
    px: &[u8],
    bands: usize,
    width: u32,
    height: u32,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> Vec<Vec<u8>> {
    debug_assert_eq!(px.len(), width as usize * height as usize * bands);
    (0..bands)
        .map(|band| {
            let src = Band { px, bands, band };
            if height as u64 > width as u64 * 100 && out_h < height {
                let tall = resample_plane(src, width, height, width, out_h, filter);
                let tall = Band {
                    px: &tall,
                    bands: 1,
                    band: 0,
                };
                resample_plane(tall, width, out_h, out_w, out_h, filter)
            } else {
                resample_plane(src, width, height, out_w, out_h, filter)
            }
        })
        .collect()
}
