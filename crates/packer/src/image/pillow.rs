//! Pillow's pixel arithmetic, re-implemented so hashes match `imagehash` bit for bit:
//! `convert('L')` (fixed-point ITU-R 601 luma) and `resize(..., LANCZOS | BICUBIC)` for 8-bit
//! "L" and "RGB" images (separable passes, 22-bit fixed-point coefficients, per-pass clip to
//! u8).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};
use std::mem::MaybeUninit;
use std::rc::Rc;

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
    #[cfg(target_arch = "x86_64")]
    in_size: usize,
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
    /// `k` re-laid out for the AVX2 long dot products, built on first use.
    #[cfg(target_arch = "x86_64")]
    split: std::cell::OnceCell<Option<SplitTaps>>,
}

impl Coeffs {
    #[cfg(target_arch = "x86_64")]
    fn split(&self) -> Option<&SplitTaps> {
        self.split.get_or_init(|| SplitTaps::new(self)).as_ref()
    }
}

/// [`precompute`] through a small per-thread cache: the taps depend only on (in, out, filter),
/// a square image uses one set for both axes, and corpora repeat sizes (a fast-mode decode
/// has a few hundred possible sides at most). Bounded by entry count and by bytes, most
/// recently used first; the coefficients themselves are exactly `precompute`'s.
fn coeffs(in_size: u32, out_size: u32, filter: Filter) -> Rc<Coeffs> {
    const SLOTS: usize = 64;
    const BUDGET: usize = 2 << 20;
    type Slot = ((u32, u32, Filter), Rc<Coeffs>);
    thread_local! {
        static CACHE: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
    }
    // `k` plus, once built, its split copy (as many bytes again) and the bounds.
    let bytes = |c: &Coeffs| c.k.len() * 8 + c.bounds.len() * 32;
    let key = (in_size, out_size, filter);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            cache[..=i].rotate_right(1);
            return Rc::clone(&cache[0].1);
        }
        let c = Rc::new(precompute(in_size, out_size, filter));
        let mut total = bytes(&c);
        if total <= BUDGET {
            let keep = cache
                .iter()
                .take(SLOTS - 1)
                .take_while(|(_, e)| {
                    total += bytes(e);
                    total <= BUDGET
                })
                .count();
            cache.truncate(keep);
            cache.insert(0, (key, Rc::clone(&c)));
        }
        c
    })
}

fn precompute(in_size: u32, out_size: u32, filter: Filter) -> Coeffs {
    // A row lookup costs about what a few BICUBIC taps do; every LANCZOS tap calls `sin` twice.
    let reuse_from = match filter {
        Filter::Lanczos => 0,
        Filter::Bicubic => 16,
    };
    precompute_rows(in_size, out_size, filter, reuse_from)
}

/// `precompute`; from `reuse_from` taps per output on, an output whose taps see exactly the
/// same filter arguments as an earlier one copies that row instead of evaluating the filter
/// again (the same numbers, no arithmetic changed).
///
/// Tap `x` evaluates the filter at `((x + xmin) - center + 0.5) * ss`: its roundings depend
/// only on the real number `xmin - center` (and `ss`, fixed per call). `center - xmin` is
/// computed exactly: `0 <= xmin <= center` and both are multiples of `ulp(center)` ≤ 1, so the
/// difference is representable. Equal bits therefore mean equal reals, and with the same tap
/// count an identical row (same `w`, same `ww` summed in the same order, same `k`). That
/// happens whenever `(xx_a - xx_b) · in / out` is an integer, e.g. for all interior rows of a
/// width divisible by 32 hashed to 32×32.
fn precompute_rows(in_size: u32, out_size: u32, filter: Filter, reuse_from: usize) -> Coeffs {
    // Pillow passes the box as C `float`; `in1 - in0` is exact for any realistic size.
    let in1 = in_size as f32;
    let scale = (in1 - 0.0f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut k = vec![0i32; out_size as usize * ksize];
    let mut w = vec![0f64; ksize];
    let reuse = ksize >= reuse_from;
    let mut rows_seen: HashMap<(u64, usize), usize> = HashMap::new();
    for xx in 0..out_size as usize {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let xmax = xmax.max(0) as usize;
        if reuse {
            let key = ((center - xmin as f64).to_bits(), xmax);
            match rows_seen.entry(key) {
                Entry::Occupied(e) => {
                    let from = *e.get() * ksize;
                    k.copy_within(from..from + ksize, xx * ksize);
                    bounds.push((xmin as usize, xmax));
                    continue;
                }
                Entry::Vacant(e) => {
                    e.insert(xx);
                }
            }
        }
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
    Coeffs {
        #[cfg(target_arch = "x86_64")]
        in_size: in_size as usize,
        ksize,
        bounds,
        k,
        #[cfg(target_arch = "x86_64")]
        split: std::cell::OnceCell::new(),
    }
}

/// Split point of the AVX2 coefficients: `k = hi · 2^SPLIT_SHIFT + lo`, with
/// `0 <= lo < 2^SPLIT_SHIFT`.
#[cfg(target_arch = "x86_64")]
const SPLIT_SHIFT: u32 = 11;

/// Long-tap coefficients as two i16 halves for `vpmaddwd` (16 products per instruction where
/// `vpmulld` does 8): `k = hi · 2^11 + lo` with `hi = k >> 11` (floor) and `lo = k & 0x7ff`,
/// each output's taps zero-padded to whole 16-tap blocks.
///
/// Exactness: Pillow's accumulator is an `int` fed by `int` products, i.e. (as we run it,
/// `wrapping_*`) arithmetic in Z/2^32. `vpmaddwd` of a pixel (0..=255) and an i16 gives the
/// exact product (|p · hi| ≤ 255 · 2^15, pair sums < 2^24: no overflow), `vpaddd` adds mod
/// 2^32 and `vpslld 11` multiplies by 2^11 mod 2^32. Since `p·k = 2^11 · p·hi + p·lo` holds in
/// Z and reduction mod 2^32 is a ring homomorphism (so the summation order does not matter
/// either), the vector result `2^11 · Σ p·hi + Σ p·lo` is congruent to Pillow's `Σ p·k` mod
/// 2^32: bit-identical to the wrapping scalar sum for *every* input, wrapped or not. The only
/// requirement is that `hi` fits an i16 (|k| < 2^26), checked when splitting. Pillow's
/// coefficients are ≤ 2^22 in magnitude (normalised weights, |v| ≲ 1), so |Σ p·hi| ≤
/// 255 · Σ|hi| ≤ 255 · (2^-11 · Σ|k| + n) ≈ 255 · 2^11 · Σ|v| stays far below 2^31 and
/// nothing even wraps in practice.
#[cfg(target_arch = "x86_64")]
struct SplitTaps {
    /// Per output sample: the first input index of its (16-tap block aligned) window and the
    /// number of 16-tap blocks. The window is moved left where padding would run past the
    /// row end (the taps in front then get weight 0); only where the row is shorter than the
    /// padded window does it start at 0 and need a zero-padded copy of the row.
    win: Vec<(usize, usize)>,
    /// Coefficients per output sample in `hi` and `lo` (a multiple of 16).
    stride: usize,
    hi: Vec<i16>,
    lo: Vec<i16>,
}

#[cfg(target_arch = "x86_64")]
impl SplitTaps {
    fn new(c: &Coeffs) -> Option<SplitTaps> {
        let stride = c.ksize.next_multiple_of(16);
        let n = c.bounds.len();
        let (mut hi, mut lo) = (vec![0i16; n * stride], vec![0i16; n * stride]);
        let mut win = Vec::with_capacity(n);
        for (xx, &(xmin, cnt)) in c.bounds.iter().enumerate() {
            let len = cnt.next_multiple_of(16);
            let start = xmin.min(c.in_size.saturating_sub(len));
            let at = xx * stride + (xmin - start);
            let k = &c.k[xx * c.ksize..xx * c.ksize + cnt];
            for (x, &kv) in k.iter().enumerate() {
                hi[at + x] = i16::try_from(kv >> SPLIT_SHIFT).ok()?;
                lo[at + x] = (kv & ((1 << SPLIT_SHIFT) - 1)) as i16;
            }
            win.push((start, len / 16));
        }
        Some(SplitTaps {
            win,
            stride,
            hi,
            lo,
        })
    }
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

impl<'a> Band<'a> {
    /// The band as a contiguous plane (borrowed when the image has one band).
    fn plane(self) -> Cow<'a, [u8]> {
        if self.bands == 1 {
            return Cow::Borrowed(self.px);
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
    resample_generic::<false>(src, width, height, out_w, out_h, filter)
}

/// The same code compiled with AVX2 enabled: 8-lane 32-bit multiplies for the vectorised loops
/// (baseline x86-64 has no packed 32-bit multiply, so the generic build stays scalar), and the
/// long horizontal dot products as 16-lane `vpmaddwd` (see [`SplitTaps`]).
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
    resample_generic::<true>(src, width, height, out_w, out_h, filter)
}

/// Horizontal pass first (only over the source rows the vertical pass will read), then the
/// vertical pass; a pass is skipped when that axis keeps its size. The horizontal pass runs as
/// a vertical pass over the transposed rows (the band split fused into that transpose), so
/// both inner loops walk contiguous memory and vectorise; integer sums are associative, so
/// every value is exactly Pillow's.
///
/// `AVX2` may only be set where the CPU has AVX2 (`resample_avx2`).
#[inline(always)]
fn resample_generic<const AVX2: bool>(
    src: Band<'_>,
    width: u32,
    height: u32,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> Vec<u8> {
    if width == out_w && height == out_h {
        return src.plane().into_owned();
    }
    let (w, ow) = (width as usize, out_w as usize);
    let vert = coeffs(height, out_h, filter);
    if out_w == width {
        return vertical_pass::<AVX2>(&src.plane(), w, &vert, 0);
    }
    let horiz = coeffs(width, out_w, filter);
    // Only the source rows the vertical pass reads (all of them when there is none).
    let (first, rows) = if out_h == height {
        (0, height as usize)
    } else {
        let (lmin, lcnt) = vert.bounds[out_h as usize - 1];
        (vert.bounds[0].0, lmin + lcnt - vert.bounds[0].0)
    };
    let shrunk = if horiz.ksize >= LONG_TAPS {
        // Strong downscaling (e.g. to 32×32 for hashes): each output pixel is one long dot
        // product over contiguous input.
        long_pass::<AVX2>(&src.plane(), w, first, rows, &horiz)
    } else {
        // Few taps per output: run it as a vertical pass over the transposed rows instead.
        let columns = transpose::<AVX2>(src, first, rows, w);
        let plain = |px| Band {
            px,
            bands: 1,
            band: 0,
        };
        transpose::<AVX2>(
            plain(&vertical_pass::<AVX2>(&columns, rows, &horiz, 0)),
            0,
            ow,
            rows,
        )
    };
    if out_h == height {
        return shrunk;
    }
    vertical_pass::<AVX2>(&shrunk, ow, &vert, first)
}

/// The long-tap horizontal pass over rows `first..first + rows` of a `w`-wide plane: two rows
/// at a time through [`long_rows_avx2`] where `AVX2` is set, else [`long_row`] by row.
#[inline(always)]
fn long_pass<const AVX2: bool>(
    plane: &[u8],
    w: usize,
    first: usize,
    rows: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let ow = c.bounds.len();
    let mut out = vec![0u8; rows * ow];
    let in_row = |r: usize| &plane[(first + r) * w..(first + r + 1) * w];
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        if let Some(split) = c.split() {
            let mut scratch = [Vec::new(), Vec::new()];
            let mut spare = vec![0u8; ow];
            for (i, pair) in out.chunks_mut(2 * ow).enumerate() {
                let r = 2 * i;
                // An odd last row goes with itself, the copy's result into `spare`.
                let (in1, (o0, o1)) = if pair.len() == 2 * ow {
                    (in_row(r + 1), pair.split_at_mut(ow))
                } else {
                    (in_row(r), (pair, &mut spare[..]))
                };
                // SAFETY: `AVX2` is only set by `resample_avx2`, which runs after the runtime
                // check in `resample_plane`.
                unsafe { long_rows_avx2([in_row(r), in1], split, [o0, o1], &mut scratch) };
            }
            return out;
        }
    }
    for (r, o) in out.chunks_exact_mut(ow).enumerate() {
        long_row(in_row(r), c, o);
    }
    out
}

/// One row of the long-tap horizontal pass, Pillow's loop as it stands: output `xx` =
/// Σ taps × pixels from `bounds[xx].0`, clipped to u8.
#[inline(always)]
fn long_row(in_row: &[u8], c: &Coeffs, out_row: &mut [u8]) {
    for (xx, o) in out_row.iter_mut().enumerate() {
        let (xmin, cnt) = c.bounds[xx];
        let k = &c.k[xx * c.ksize..xx * c.ksize + cnt];
        let ss = in_row[xmin..xmin + cnt]
            .iter()
            .zip(k)
            .fold(1i32 << (PRECISION_BITS - 1), |acc, (p, c)| {
                acc.wrapping_add((*p as i32).wrapping_mul(*c))
            });
        *o = clip8(ss);
    }
}

/// [`long_row`] for two rows at once (they share every coefficient load) with the split
/// coefficients: per 16 taps and row one widening load and two `vpmaddwd`. The 8 lane sums of
/// 4 outputs × 2 rows are reduced together. `scratch` holds zero-padded copies of the rows
/// for windows longer than the row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn long_rows_avx2(
    rows: [&[u8]; 2],
    s: &SplitTaps,
    outs: [&mut [u8]; 2],
    scratch: &mut [Vec<u8>; 2],
) {
    use std::arch::x86_64::*;
    let row_len = rows[0].len();
    assert_eq!(rows[1].len(), row_len);
    let [out0, out1] = outs;
    let n = out0.len();
    assert_eq!(out1.len(), n);
    for x0 in (0..n).step_by(4) {
        let m = (n - x0).min(4);
        let mut v = [_mm256_setzero_si256(); 8];
        for j in 0..m {
            let xx = x0 + j;
            let (start, blocks) = s.win[xx];
            let len = blocks * 16;
            let (px0, px1): (&[u8], &[u8]) = if start + len <= row_len {
                (&rows[0][start..start + len], &rows[1][start..start + len])
            } else {
                for (sc, row) in scratch.iter_mut().zip(rows) {
                    sc.clear();
                    sc.extend_from_slice(&row[start..]);
                    sc.resize(len, 0);
                }
                (&scratch[0], &scratch[1])
            };
            let hi = &s.hi[xx * s.stride..xx * s.stride + len];
            let lo = &s.lo[xx * s.stride..xx * s.stride + len];
            let zero = _mm256_setzero_si256();
            let (mut h0, mut l0, mut h1, mut l1) = (zero, zero, zero, zero);
            for b in 0..blocks {
                // SAFETY (all loads): `px0`, `px1`, `hi` and `lo` hold `16 * blocks` elements.
                let h = _mm256_loadu_si256(hi.as_ptr().add(16 * b).cast());
                let l = _mm256_loadu_si256(lo.as_ptr().add(16 * b).cast());
                let p0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(px0.as_ptr().add(16 * b).cast()));
                let p1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(px1.as_ptr().add(16 * b).cast()));
                h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(p0, h));
                l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(p0, l));
                h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(p1, h));
                l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(p1, l));
            }
            const SH: i32 = SPLIT_SHIFT as i32;
            v[2 * j] = _mm256_add_epi32(_mm256_slli_epi32::<SH>(h0), l0);
            v[2 * j + 1] = _mm256_add_epi32(_mm256_slli_epi32::<SH>(h1), l1);
        }
        // hadd twice: per 128-bit half, the partial sums of v0..v3 (v4..v7); then add halves.
        let a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        let sum = _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(a, b),
            _mm256_permute2x128_si256::<0x31>(a, b),
        );
        let mut sums = [0i32; 8];
        _mm256_storeu_si256(sums.as_mut_ptr().cast(), sum);
        for j in 0..m {
            let init = 1i32 << (PRECISION_BITS - 1);
            out0[x0 + j] = clip8(sums[2 * j].wrapping_add(init));
            out1[x0 + j] = clip8(sums[2 * j + 1].wrapping_add(init));
        }
    }
}

/// One vertical pass: output row `yy` = Σ taps × source rows, clipped to u8.
#[inline(always)]
fn vertical_pass<const AVX2: bool>(
    src: &[u8],
    stride: usize,
    c: &Coeffs,
    row_shift: usize,
) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: `AVX2` is only set by `resample_avx2`, which runs after the runtime check in
        // `resample_plane`.
        if let Some(out) = unsafe { vertical_pass_avx2(src, stride, c, row_shift) } {
            return out;
        }
    }
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

/// [`vertical_pass`] with two taps per `vpmaddwd`: the bytes of the two source rows are
/// interleaved into (row a, row b) i16 pairs and multiplied by the split (`hi`, `lo`) halves of
/// their two coefficients (see [`SplitTaps`] for why this is exact), 32 columns at a time with
/// the sums kept in registers; the columns past the last multiple of 32 run as the scalar loop.
/// `None` where a coefficient does not split into i16 halves (never for Pillow's).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_pass_avx2(
    src: &[u8],
    stride: usize,
    c: &Coeffs,
    row_shift: usize,
) -> Option<Vec<u8>> {
    use std::arch::x86_64::*;
    const SH: i32 = SPLIT_SHIFT as i32;
    let init = 1i32 << (PRECISION_BITS - 1);
    let n_out = c.bounds.len();
    let mut out: Vec<u8> = Vec::with_capacity(stride * n_out);
    let dst = out.as_mut_ptr();
    let strips = stride / 32;
    // Per tap pair: byte offsets of its two rows and the broadcast (a, b) halves.
    let mut pairs: Vec<(usize, usize, __m256i, __m256i)> = Vec::with_capacity(c.ksize / 2 + 1);
    let halves = |a: i32, b: i32| -> Option<(i32, i32)> {
        let (ha, hb) = (i16::try_from(a >> SH).ok()?, i16::try_from(b >> SH).ok()?);
        let (la, lb) = (a & ((1 << SH) - 1), b & ((1 << SH) - 1));
        let pack = |x: i32, y: i32| (x as u16 as u32 | (y as u16 as u32) << 16) as i32;
        Some((pack(ha as i32, hb as i32), pack(la, lb)))
    };
    for yy in 0..n_out {
        let (ymin, cnt) = c.bounds[yy];
        let ymin = ymin - row_shift;
        let k = &c.k[yy * c.ksize..yy * c.ksize + cnt];
        assert!((ymin + cnt) * stride <= src.len());
        pairs.clear();
        for (j, kp) in k.chunks(2).enumerate() {
            let ra = ymin + 2 * j;
            // An odd last tap pairs its row with itself and weight 0.
            let (kb, rb) = if kp.len() == 2 {
                (kp[1], ra + 1)
            } else {
                (0, ra)
            };
            let (hi, lo) = halves(kp[0], kb)?;
            pairs.push((
                ra * stride,
                rb * stride,
                _mm256_set1_epi32(hi),
                _mm256_set1_epi32(lo),
            ));
        }
        let zero = _mm256_setzero_si256();
        for x in (0..strips).map(|s| s * 32) {
            let mut acc = [zero; 8];
            for &(oa, ob, hi, lo) in &pairs {
                // SAFETY: columns x..x + 32 <= stride of rows ra, rb < ymin + cnt (asserted).
                let a = _mm256_loadu_si256(src.as_ptr().add(oa + x).cast());
                let b = _mm256_loadu_si256(src.as_ptr().add(ob + x).cast());
                let (ab_lo, ab_hi) = (_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b));
                // (a, b) i16 pairs of columns [0..4 | 16..20], [4..8 | 20..24], [8..12 |
                // 24..28], [12..16 | 28..32] (per 128-bit half).
                let q = [
                    _mm256_unpacklo_epi8(ab_lo, zero),
                    _mm256_unpackhi_epi8(ab_lo, zero),
                    _mm256_unpacklo_epi8(ab_hi, zero),
                    _mm256_unpackhi_epi8(ab_hi, zero),
                ];
                for i in 0..4 {
                    acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(q[i], hi));
                    acc[4 + i] = _mm256_add_epi32(acc[4 + i], _mm256_madd_epi16(q[i], lo));
                }
            }
            let v = |i: usize| {
                let ss = _mm256_add_epi32(_mm256_slli_epi32::<SH>(acc[i]), acc[4 + i]);
                let ss = _mm256_add_epi32(ss, _mm256_set1_epi32(init));
                _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(ss)
            };
            // >> 22 leaves -512..=511: the i16 pack is exact and the u8 pack clamps to 0..=255,
            // i.e. `clip8`; the two in-lane packs undo the column order above.
            let px = _mm256_packus_epi16(
                _mm256_packs_epi32(v(0), v(1)),
                _mm256_packs_epi32(v(2), v(3)),
            );
            // SAFETY: bytes yy·stride + x .. + 32 of the `stride · n_out` reserved.
            _mm256_storeu_si256(dst.add(yy * stride + x).cast(), px);
        }
        for x in strips * 32..stride {
            let mut ss = init;
            for (y, kv) in k.iter().enumerate() {
                let p = src[(ymin + y) * stride + x] as i32;
                ss = ss.wrapping_add(p.wrapping_mul(*kv));
            }
            // SAFETY: inside the reserved `stride · n_out` bytes.
            dst.add(yy * stride + x).write(clip8(ss));
        }
    }
    // SAFETY: every byte of every output row was written above (strips, then the tail).
    out.set_len(stride * n_out);
    Some(out)
}

/// Rows `first..first + rows` of a band (`cols` wide) → a `cols × rows` plane: 16×16 SIMD
/// tiles where `AVX2` is set (one or three bands), cache-sized scalar tiles for the rest.
#[inline(always)]
fn transpose<const AVX2: bool>(src: Band<'_>, first: usize, rows: usize, cols: usize) -> Vec<u8> {
    // Every byte gets written exactly once below: no zero fill first.
    let mut out: Vec<u8> = Vec::with_capacity(rows * cols);
    let dst = &mut out.spare_capacity_mut()[..rows * cols];
    #[cfg(target_arch = "x86_64")]
    let (rows_done, cols_done) = if AVX2 && matches!(src.bands, 1 | 3) {
        // SAFETY: `AVX2` is only set by `resample_avx2`, which runs after the runtime check in
        // `resample_plane`.
        unsafe {
            match src.bands {
                1 => transpose_tiles_avx2::<1>(src, first, rows, cols, dst),
                _ => transpose_tiles_avx2::<3>(src, first, rows, cols, dst),
            }
        };
        (rows / 16 * 16, cols / 16 * 16)
    } else {
        (0, 0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (rows_done, cols_done) = (0, 0);
    transpose_scalar(src, first, rows, cols, 0..rows_done, cols_done..cols, dst);
    transpose_scalar(src, first, rows, cols, rows_done..rows, 0..cols, dst);
    // SAFETY: the SIMD tiles cover rows 0..rows_done × columns 0..cols_done, the two scalar
    // calls the rest of the `rows × cols` output, so all of it is initialised.
    unsafe { out.set_len(rows * cols) };
    out
}

/// The part `rs × cs` of [`transpose`], element by element in 32×32 tiles.
#[inline(always)]
fn transpose_scalar(
    src: Band<'_>,
    first: usize,
    rows: usize,
    cols: usize,
    rs: std::ops::Range<usize>,
    cs: std::ops::Range<usize>,
    out: &mut [MaybeUninit<u8>],
) {
    const TILE: usize = 32;
    let (n, band) = (src.bands, src.band);
    for r0 in rs.clone().step_by(TILE) {
        for c0 in cs.clone().step_by(TILE) {
            for r in r0..(r0 + TILE).min(rs.end) {
                let row = &src.px[(first + r) * cols * n..(first + r + 1) * cols * n];
                for c in c0..(c0 + TILE).min(cs.end) {
                    out[c * rows + r].write(row[c * n + band]);
                }
            }
        }
    }
}

/// The whole 16×16 tiles of [`transpose`]: per source row 16 pixels of the band (three
/// `pshufb` picking every third byte when the image has three bands), then the usual
/// 4-stage unpack network.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_tiles_avx2<const N: usize>(
    src: Band<'_>,
    first: usize,
    rows: usize,
    cols: usize,
    out: &mut [MaybeUninit<u8>],
) {
    use std::arch::x86_64::*;
    let (n, band) = (N, src.band);
    assert!(src.bands == N && matches!(N, 1 | 3) && band < n);
    assert!(src.px.len() >= (first + rows) * cols * n && out.len() >= rows * cols);
    // For three bands: byte `j` of the band's 16 pixels is byte `3j + band` of 48, i.e. byte
    // `3j + band - 16q` of the q-th 16-byte load (0x80 = zero, to be OR-ed together).
    let mut pick = [[0x80u8; 16]; 3];
    for (j, at) in (band..3 * 16).step_by(3).enumerate() {
        pick[at / 16][j] = (at % 16) as u8;
    }
    let pick = pick.map(|m| _mm_loadu_si128(m.as_ptr().cast()));
    // 64×64 blocks, down the rows inside: every output line fills up while it is in cache.
    let (rows16, cols16) = (rows / 16 * 16, cols / 16 * 16);
    for rb in (0..rows16).step_by(64) {
        for c0 in (0..cols16).step_by(16) {
            for r0 in (rb..(rb + 64).min(rows16)).step_by(16) {
                let mut a = [_mm_setzero_si128(); 16];
                for (i, a) in a.iter_mut().enumerate() {
                    // SAFETY: pixels `c0..c0 + 16` of row `first + r0 + i` lie inside `src.px`
                    // (asserted above: c0 + 16 <= cols, r0 + 16 <= rows).
                    let p = src.px.as_ptr().add(((first + r0 + i) * cols + c0) * n);
                    *a = if N == 1 {
                        _mm_loadu_si128(p.cast())
                    } else {
                        let q0 = _mm_shuffle_epi8(_mm_loadu_si128(p.cast()), pick[0]);
                        let q1 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(16).cast()), pick[1]);
                        let q2 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(32).cast()), pick[2]);
                        _mm_or_si128(_mm_or_si128(q0, q1), q2)
                    };
                }
                // a[i] = row i. After the epi8 stage, b[2i + h] holds the (row 2i, row 2i + 1)
                // pairs of columns 8h..8h + 8; each further stage doubles the rows per element
                // and halves the columns per register, ending with one column per register.
                let mut b = [_mm_setzero_si128(); 16];
                for i in 0..8 {
                    b[2 * i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
                    b[2 * i + 1] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
                }
                // c[4 * i + q]: rows 4i..4i + 4 of columns 4q..4q + 4.
                let mut c = [_mm_setzero_si128(); 16];
                for i in 0..4 {
                    for h in 0..2 {
                        let (x, y) = (b[4 * i + h], b[4 * i + 2 + h]);
                        c[4 * i + 2 * h] = _mm_unpacklo_epi16(x, y);
                        c[4 * i + 2 * h + 1] = _mm_unpackhi_epi16(x, y);
                    }
                }
                // d[8 * i + g]: rows 8i..8i + 8 of columns 2g..2g + 2.
                let mut d = [_mm_setzero_si128(); 16];
                for i in 0..2 {
                    for q in 0..4 {
                        let (x, y) = (c[8 * i + q], c[8 * i + 4 + q]);
                        d[8 * i + 2 * q] = _mm_unpacklo_epi32(x, y);
                        d[8 * i + 2 * q + 1] = _mm_unpackhi_epi32(x, y);
                    }
                }
                for g in 0..8 {
                    let (x, y) = (d[g], d[8 + g]);
                    let col0 = _mm_unpacklo_epi64(x, y);
                    let col1 = _mm_unpackhi_epi64(x, y);
                    // SAFETY: output columns c0 + 2g (+1), rows r0..r0 + 16: inside `out`.
                    let o = out.as_mut_ptr().add((c0 + 2 * g) * rows + r0).cast::<u8>();
                    _mm_storeu_si128(o.cast(), col0);
                    _mm_storeu_si128(o.add(rows).cast(), col1);
                }
            }
        }
    }
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
}
