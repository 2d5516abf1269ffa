//! Pillow's `ImagingResample` (8-bit) for one band: the horizontal and vertical passes, in
//! a scalar build and an AVX2 build of the same integer arithmetic, and the transposes
//! between them.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use super::coeffs::*;

/// Tap count from which the horizontal pass runs as direct dot products (see `resample_generic`).
pub(super) const LONG_TAPS: usize = 24;

/// One band of an interleaved image.
#[derive(Clone, Copy)]
pub(super) struct Band<'a> {
    pub(super) px: &'a [u8],
    pub(super) bands: usize,
    pub(super) band: usize,
}

impl<'a> Band<'a> {
    /// The band as a contiguous plane (borrowed when the image has one band).
    pub(super) fn plane(self) -> Cow<'a, [u8]> {
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
pub(super) fn resample_plane(
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
pub(super) unsafe fn resample_avx2(
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
pub(super) fn resample_generic<const AVX2: bool>(
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
pub(super) fn long_pass<const AVX2: bool>(
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
pub(super) fn long_row(in_row: &[u8], c: &Coeffs, out_row: &mut [u8]) {
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
pub(super) unsafe fn long_rows_avx2(
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
pub(super) fn vertical_pass<const AVX2: bool>(
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
pub(super) unsafe fn vertical_pass_avx2(
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
pub(super) fn transpose<const AVX2: bool>(
    src: Band<'_>,
    first: usize,
    rows: usize,
    cols: usize,
) -> Vec<u8> {
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
pub(super) fn transpose_scalar(
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
pub(super) unsafe fn transpose_tiles_avx2<const N: usize>(
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
