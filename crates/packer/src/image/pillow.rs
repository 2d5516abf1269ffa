//! Pillow's pixel arithmetic, re-implemented so hashes match `imagehash` bit for bit:
//! `convert('L')` (fixed-point ITU-R 601 luma) and `resize(..., LANCZOS | BICUBIC)` for 8-bit
//! "L" and "RGB" images (separable passes, 22-bit fixed-point coefficients, per-pass clip to
//! u8).

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
    let mut out = vec![0u8; rgb.len() / 3];
    for (o, p) in out.iter_mut().zip(rgb.chunks_exact(3)) {
        *o = rgb_to_l(p[0], p[1], p[2]);
    }
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

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's resampling filters used here (`Resample.c`: `filterp->support` and kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.LANCZOS` (a = 3), used by the perceptual hashes.
    Lanczos,
    /// `Image.BICUBIC` (a = -0.5), used by transformers' PIL image processors.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => lanczos(x),
            Filter::Bicubic => bicubic(x),
        }
    }
}

fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Keys' cubic convolution with a = -0.5, written in the same operation order as Pillow.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Filter taps for one axis: per output sample the first input index, the tap count, and
/// `ksize` fixed-point coefficients. Mirrors Pillow's `precompute_coeffs` followed by
/// `normalize_coeffs_8bpc` (the box is the whole axis, so `in0 = 0`, `in1 = in_size`).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

fn precompute(in_size: u32, out_size: u32, filter: Filter) -> Coeffs {
    // Pillow passes the box as C `float`; `in1 - in0` is exact for any realistic size.
    let in1 = in_size as f32;
    let scale = (in1 - 0.0f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut k = vec![0i32; out_size as usize * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let xmax = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax) {
            *wx = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..xmax {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin as usize, xmax));
    }
    Coeffs { ksize, bounds, k }
}

#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
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

/// Tap count from which the horizontal pass runs as direct dot products (see `resample_generic`).
const LONG_TAPS: usize = 24;

/// One band of an interleaved image.
#[derive(Clone, Copy)]
struct Band<'a> {
    px: &'a [u8],
    bands: usize,
    band: usize,
}

impl Band<'_> {
    /// The band as a contiguous plane (a copy unless the image has one band).
    fn plane(self) -> Vec<u8> {
        if self.bands == 1 {
            return self.px.to_vec();
        }
        self.px
            .chunks_exact(self.bands)
            .map(|p| p[self.band])
            .collect()
    }
}

/// Pillow's C `ImagingResample` (8-bit) for one band, dispatched to an AVX2 build of the same
/// code when the CPU has it.
fn resample_plane(
    src: Band<'_>,
    width: u32,
    height: u32,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the running CPU supports AVX2, checked just above.
        return unsafe { resample_avx2(src, width, height, out_w, out_h, filter) };
    }
    resample_generic(src, width, height, out_w, out_h, filter)
}

/// The same code compiled with AVX2 enabled: 8-lane 32-bit multiplies for the dot products
/// (baseline x86-64 has no packed 32-bit multiply, so the generic build stays scalar).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_avx2(
    src: Band<'_>,
    width: u32,
    height: u32,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> Vec<u8> {
    resample_generic(src, width, height, out_w, out_h, filter)
}

/// Horizontal pass first (only over the source rows the vertical pass will read), then the
/// vertical pass; a pass is skipped when that axis keeps its size. The horizontal pass runs as
/// a vertical pass over the transposed rows (the band split fused into that transpose), so
/// both inner loops walk contiguous memory and vectorise; integer sums are associative, so
/// every value is exactly Pillow's.
#[inline(always)]
fn resample_generic(
    src: Band<'_>,
    width: u32,
    height: u32,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> Vec<u8> {
    if width == out_w && height == out_h {
        return src.plane();
    }
    let (w, ow) = (width as usize, out_w as usize);
    let vert = precompute(height, out_h, filter);
    if out_w == width {
        return vertical_pass(&src.plane(), w, &vert, 0);
    }
    let horiz = precompute(width, out_w, filter);
    // Only the source rows the vertical pass reads (all of them when there is none).
    let (first, rows) = if out_h == height {
        (0, height as usize)
    } else {
        let (lmin, lcnt) = vert.bounds[out_h as usize - 1];
        (vert.bounds[0].0, lmin + lcnt - vert.bounds[0].0)
    };
    let shrunk = if horiz.ksize >= LONG_TAPS {
        // Strong downscaling (e.g. to 32×32 for hashes): each output pixel is one long dot
        // product over contiguous input, which vectorises as it stands.
        let plane = src.plane();
        let mut out = vec![0u8; rows * ow];
        for (r, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let in_row = &plane[(first + r) * w..(first + r + 1) * w];
            for (xx, o) in out_row.iter_mut().enumerate() {
                let (xmin, cnt) = horiz.bounds[xx];
                let k = &horiz.k[xx * horiz.ksize..xx * horiz.ksize + cnt];
                let ss = in_row[xmin..xmin + cnt]
                    .iter()
                    .zip(k)
                    .fold(1i32 << (PRECISION_BITS - 1), |acc, (p, c)| {
                        acc.wrapping_add((*p as i32).wrapping_mul(*c))
                    });
                *o = clip8(ss);
            }
        }
        out
    } else {
        // Few taps per output: run it as a vertical pass over the transposed rows instead.
        let columns = transpose(src, first, rows, w);
        let plain = |px| Band {
            px,
            bands: 1,
            band: 0,
        };
        transpose(
            plain(&vertical_pass(&columns, rows, &horiz, 0)),
            0,
            ow,
            rows,
        )
    };
    if out_h == height {
        return shrunk;
    }
    vertical_pass(&shrunk, ow, &vert, first)
}

/// One vertical pass: output row `yy` = Σ taps × source rows, clipped to u8.
#[inline(always)]
fn vertical_pass(src: &[u8], stride: usize, c: &Coeffs, row_shift: usize) -> Vec<u8> {
    let mut out = vec![0u8; stride * c.bounds.len()];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, ymax) = c.bounds[yy];
        let ymin = ymin - row_shift;
        let k = &c.k[yy * c.ksize..yy * c.ksize + ymax];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (y, kv) in k.iter().enumerate() {
            let in_row = &src[(ymin + y) * stride..(ymin + y + 1) * stride];
            for (a, p) in acc.iter_mut().zip(in_row) {
                *a = a.wrapping_add((*p as i32).wrapping_mul(*kv));
            }
        }
        for (o, a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(*a);
        }
    }
    out
}

/// Rows `first..first + rows` of a band (`cols` wide) → a `cols × rows` plane, in cache-sized
/// tiles.
#[inline(always)]
fn transpose(src: Band<'_>, first: usize, rows: usize, cols: usize) -> Vec<u8> {
    const TILE: usize = 32;
    let (n, band) = (src.bands, src.band);
    let mut out = vec![0u8; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src.px[(first + r) * cols * n..(first + r + 1) * cols * n];
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = row[c * n + band];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
}
