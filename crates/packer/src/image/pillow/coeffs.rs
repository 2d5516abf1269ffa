//! Pillow's resampling filters and their fixed-point taps (`precompute_coeffs` +
//! `normalize_coeffs_8bpc`), cached per thread, plus the split layout the AVX2 kernels use.

use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};
use std::rc::Rc;

pub(super) const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's resampling filters used here (`Resample.c`: `filterp->support` and kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.LANCZOS` (a = 3), used by the perceptual hashes.
    Lanczos,
    /// `Image.BICUBIC` (a = -0.5), used by transformers' PIL image processors.
    Bicubic,
}

impl Filter {
    pub(super) fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
        }
    }

    pub(super) fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => lanczos(x),
            Filter::Bicubic => bicubic(x),
        }
    }
}

pub(super) fn lanczos(x: f64) -> f64 {
    pub(super) fn sinc(x: f64) -> f64 {
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
pub(super) fn bicubic(x: f64) -> f64 {
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
pub(super) struct Coeffs {
    #[cfg(target_arch = "x86_64")]
    pub(super) in_size: usize,
    pub(super) ksize: usize,
    pub(super) bounds: Vec<(usize, usize)>,
    pub(super) k: Vec<i32>,
    /// `k` re-laid out for the AVX2 long dot products, built on first use.
    #[cfg(target_arch = "x86_64")]
    pub(super) split: std::cell::OnceCell<Option<SplitTaps>>,
}

impl Coeffs {
    #[cfg(target_arch = "x86_64")]
    pub(super) fn split(&self) -> Option<&SplitTaps> {
        self.split.get_or_init(|| SplitTaps::new(self)).as_ref()
    }
}

/// [`precompute`] through a small per-thread cache: the taps depend only on (in, out, filter),
/// a square image uses one set for both axes, and corpora repeat sizes (a fast-mode decode
/// has a few hundred possible sides at most). Bounded by entry count and by bytes, most
/// recently used first; the coefficients themselves are exactly `precompute`'s.
pub(super) fn coeffs(in_size: u32, out_size: u32, filter: Filter) -> Rc<Coeffs> {
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

pub(super) fn precompute(in_size: u32, out_size: u32, filter: Filter) -> Coeffs {
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
pub(super) fn precompute_rows(
    in_size: u32,
    out_size: u32,
    filter: Filter,
    reuse_from: usize,
) -> Coeffs {
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
pub(super) const SPLIT_SHIFT: u32 = 11;

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
pub(super) struct SplitTaps {
    /// Per output sample: the first input index of its (16-tap block aligned) window and the
    /// number of 16-tap blocks. The window is moved left where padding would run past the
    /// row end (the taps in front then get weight 0); only where the row is shorter than the
    /// padded window does it start at 0 and need a zero-padded copy of the row.
    pub(super) win: Vec<(usize, usize)>,
    /// Coefficients per output sample in `hi` and `lo` (a multiple of 16).
    pub(super) stride: usize,
    pub(super) hi: Vec<i16>,
    pub(super) lo: Vec<i16>,
}

#[cfg(target_arch = "x86_64")]
impl SplitTaps {
    pub(super) fn new(c: &Coeffs) -> Option<SplitTaps> {
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
pub(super) fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}
