//! Fast path for the common PNG: 8-bit, non-interlaced gray / RGB / palette / gray+alpha /
//! RGBA, decoded straight to the "L" pixels the `image`-crate path (`decode::decode_dynamic` +
//! `decode::to_pillow_l`) gives, bit for bit.
//!
//! Why: PNG time in exact hashing is almost all inflate and unfiltering, Paeth above all.
//! libdeflate inflates the whole zlib stream into a buffer of the known size faster than the
//! `png` crate's streaming inflater; each row is then unfiltered in place and converted to L
//! while still in cache, with no intermediate RGB image; and runs of Paeth rows, a serial chain
//! within each row, are unfiltered several rows at a time (see [`paeth_wave`]).
//!
//! Anything this path does not fully vouch for returns `None` and the caller falls back to the
//! old path, so reject reasons and corrupt-file behaviour stay the old path's: every chunk CRC
//! is checked, the zlib stream must inflate (Adler-32 included) to exactly
//! `height * (1 + row bytes)`, and chunks the `png` crate would fail on (duplicate or
//! misplaced critical chunks, unknown critical chunks, cICP, APNG control chunks, a bKGD ahead
//! of the palette) are not judged here at all. Alpha and tRNS never change L for 8-bit
//! samples (Pillow's `convert('L')` drops alpha), so they need no handling.
//!
//! One known gap: libdeflate accepts DEFLATE's reserved codes (length symbols 286/287, distance
//! codes 30/31, code-count headers above 286/30), which fdeflate and zlib reject. No encoder
//! writes them, so only a PNG crafted that way (with valid CRCs and Adler-32) is hashed here
//! where the old path rejects it.

use std::cell::RefCell;

use super::pillow::{rgb_to_l, Gray};

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Metadata bytes the `png` crate may hold against its allocation limit (at least 64 MiB for
/// any image) are kept well under it, so the old path cannot fail on a limit where this one
/// succeeds.
const META_BUDGET: u64 = 32 << 20;

/// Upper bound of DEFLATE's expansion (a 258-byte match in 2 bits), used to refuse a
/// truncated stream before allocating for it.
const MAX_INFLATE_RATIO: usize = 1032;

/// What the chunk walk found in a PNG this path handles.
struct Parsed<'a> {
    width: usize,
    height: usize,
    color_type: u8,
    idat: Vec<&'a [u8]>,
    palette: Option<&'a [u8]>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Walk and CRC-check every chunk up to IEND; `None` for anything outside the fast path.
fn parse(bytes: &[u8]) -> Option<Parsed<'_>> {
    if !bytes.starts_with(SIGNATURE) {
        return None;
    }
    let mut pos = SIGNATURE.len();
    let mut parsed: Option<Parsed<'_>> = None;
    let (mut idat_ended, mut meta, mut iccp, mut iend) = (false, 0u64, 0u64, false);
    while let Some(len) = be32(bytes, pos) {
        let len = len as usize;
        let ty: [u8; 4] = bytes.get(pos + 4..pos + 8)?.try_into().ok()?;
        let end = (pos + 8).checked_add(len)?;
        let data = bytes.get(pos + 8..end)?;
        let mut crc = libdeflater::Crc::new();
        crc.update(&ty);
        crc.update(data);
        if be32(bytes, end)? != crc.sum() {
            return None;
        }
        pos = end + 4;
        let Some(p) = parsed.as_mut() else {
            // IHDR must come first: size, bit depth 8, no interlace.
            if &ty != b"IHDR" || len != 13 {
                return None;
            }
            let (w, h) = (be32(data, 0)?, be32(data, 4)?);
            let ok_dim = |v: u32| v > 0 && v <= i32::MAX as u32;
            let ok_ct = matches!(data[9], 0 | 2 | 3 | 4 | 6);
            if !ok_dim(w) || !ok_dim(h) || data[8] != 8 || !ok_ct || data[10..13] != [0, 0, 0] {
                return None;
            }
            parsed = Some(Parsed {
                width: w as usize,
                height: h as usize,
                color_type: data[9],
                idat: Vec::new(),
                palette: None,
            });
            continue;
        };
        if &ty == b"IDAT" {
            if idat_ended {
                return None;
            }
            p.idat.push(data);
            continue;
        }
        idat_ended |= !p.idat.is_empty();
        match &ty {
            b"IEND" => {
                iend = len == 0;
                break;
            }
            b"PLTE" => {
                let bad_len = len == 0 || len > 768 || len % 3 != 0;
                if p.color_type != 3 || p.palette.is_some() || idat_ended || bad_len {
                    return None;
                }
                p.palette = Some(data);
            }
            // The png crate fails outright on some contents of these (or decodes a frame).
            b"IHDR" | b"cICP" | b"acTL" | b"fcTL" | b"fdAT" => return None,
            b"bKGD" if p.color_type == 3 && p.palette.is_none() => return None,
            _ if ty[0] & 0x20 == 0 => return None, // unknown critical chunk
            _ => {
                meta += len as u64;
                if &ty == b"iCCP" {
                    iccp += len as u64;
                }
            }
        }
    }
    let p = parsed?;
    // Held chunk bytes (grown by doubling, text counted again) and an inflated ICC profile.
    let held = 3 * meta + iccp * MAX_INFLATE_RATIO as u64;
    let palette_ok = p.color_type != 3 || p.palette.is_some();
    (iend && !p.idat.is_empty() && palette_ok && held <= META_BUDGET).then_some(p)
}

thread_local! {
    static INFLATER: RefCell<libdeflater::Decompressor> =
        RefCell::new(libdeflater::Decompressor::new());
}

/// The L image, or `None` when this path does not handle `bytes` (see the module doc).
pub(super) fn decode_png_l(bytes: &[u8]) -> Option<Gray> {
    let p = parse(bytes)?;
    let bpp = match p.color_type {
        0 | 3 => 1,
        4 => 2,
        2 => 3,
        _ => 4,
    };
    let row_bytes = p.width.checked_mul(bpp)?;
    let raw_len = row_bytes.checked_add(1)?.checked_mul(p.height)?;
    let npx = p.width.checked_mul(p.height)?;
    let zlen: usize = p.idat.iter().map(|d| d.len()).sum();
    if raw_len > zlen.saturating_mul(MAX_INFLATE_RATIO).saturating_add(64) {
        return None; // cannot be the whole image: truncated
    }
    let joined;
    let zlib: &[u8] = if p.idat.len() == 1 {
        p.idat[0]
    } else {
        joined = p.idat.concat();
        &joined
    };
    // Zeroed allocation of this size comes straight from fresh pages (no memset pass).
    let mut raw = vec![0u8; raw_len];
    let n = INFLATER.with(|d| d.borrow_mut().zlib_decompress(zlib, &mut raw).ok())?;
    if n != raw_len {
        return None;
    }
    let mut lut = [0u8; 256]; // palette entries past PLTE's end are black, as in the png crate
    if let Some(pl) = p.palette {
        for (l, c) in lut.iter_mut().zip(pl.chunks_exact(3)) {
            *l = rgb_to_l(c[0], c[1], c[2]);
        }
    }
    let mut px = vec![0u8; npx];
    let geom = Geom {
        width: p.width,
        bpp,
        color_type: p.color_type,
    };
    unfilter_to_l(&mut raw, &mut px, &geom, &lut).then_some(Gray {
        width: p.width as u32,
        height: p.height as u32,
        px,
    })
}

struct Geom {
    width: usize,
    bpp: usize,
    color_type: u8,
}

fn unfilter_to_l(raw: &mut [u8], out: &mut [u8], g: &Geom, lut: &[u8; 256]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the running CPU supports AVX2, checked just above.
        return unsafe { unfilter_to_l_avx2(raw, out, g, lut) };
    }
    unfilter_to_l_generic::<false>(raw, out, g, lut)
}

/// The same code compiled with AVX2: wide Up/colour conversion and 3-operand Paeth.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unfilter_to_l_avx2(raw: &mut [u8], out: &mut [u8], g: &Geom, lut: &[u8; 256]) -> bool {
    unfilter_to_l_generic::<true>(raw, out, g, lut)
}

/// Unfilter rows in place (the row above is already final) and convert each to L at once.
#[inline(always)]
fn unfilter_to_l_generic<const SIMD: bool>(
    raw: &mut [u8],
    out: &mut [u8],
    g: &Geom,
    lut: &[u8; 256],
) -> bool {
    let (w, rb) = (g.width, g.width * g.bpp);
    let stride = rb + 1;
    let h = out.len() / w;
    let zero = vec![0u8; rb];
    let mut y = 0;
    while y < h {
        let (done, rest) = raw.split_at_mut(y * stride);
        let prev: &[u8] = if y == 0 {
            &zero
        } else {
            &done[done.len() - rb..]
        };
        let mut n = if SIMD {
            paeth_wave(g.bpp, rest, stride, prev)
        } else {
            0
        };
        if n == 0 {
            let (filter, cur) = rest[..stride].split_first_mut().unwrap();
            let ok = match g.bpp {
                1 => unfilter::<1, SIMD>(*filter, cur, prev),
                2 => unfilter::<2, SIMD>(*filter, cur, prev),
                3 => unfilter::<3, SIMD>(*filter, cur, prev),
                _ => unfilter::<4, SIMD>(*filter, cur, prev),
            };
            if !ok {
                return false;
            }
            n = 1;
        }
        for (row, l) in rest
            .chunks_exact(stride)
            .zip(out[y * w..].chunks_exact_mut(w))
            .take(n)
        {
            let cur = &row[1..];
            match g.color_type {
                0 => l.copy_from_slice(cur),
                3 => l
                    .iter_mut()
                    .zip(cur)
                    .for_each(|(o, &i)| *o = lut[i as usize]),
                4 => l
                    .iter_mut()
                    .zip(cur.chunks_exact(2))
                    .for_each(|(o, p)| *o = p[0]),
                2 => l
                    .iter_mut()
                    .zip(cur.chunks_exact(3))
                    .for_each(|(o, p)| *o = rgb_to_l(p[0], p[1], p[2])),
                _ => l
                    .iter_mut()
                    .zip(cur.chunks_exact(4))
                    .for_each(|(o, p)| *o = rgb_to_l(p[0], p[1], p[2])),
            }
        }
        y += n;
    }
    true
}

/// Undo one row's filter in place; `false` for an unknown filter type.
#[inline(always)]
fn unfilter<const N: usize, const SIMD: bool>(filter: u8, cur: &mut [u8], prev: &[u8]) -> bool {
    match filter {
        0 => {}
        1 => {
            let mut a = [0u8; N];
            for px in cur.chunks_exact_mut(N) {
                for k in 0..N {
                    px[k] = px[k].wrapping_add(a[k]);
                    a[k] = px[k];
                }
            }
        }
        2 => cur
            .iter_mut()
            .zip(prev)
            .for_each(|(x, &b)| *x = x.wrapping_add(b)),
        3 => {
            let mut a = [0u8; N];
            for (px, up) in cur.chunks_exact_mut(N).zip(prev.chunks_exact(N)) {
                for k in 0..N {
                    px[k] = px[k].wrapping_add(((a[k] as u16 + up[k] as u16) >> 1) as u8);
                    a[k] = px[k];
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SIMD is only set on the AVX2 path, which checked the CPU.
        4 if SIMD && N >= 3 => unsafe { paeth_rows_avx2::<N, 1>(&mut [cur], prev) },
        4 => {
            // Row start: no left neighbour, so Paeth picks the pixel above.
            let (head, _) = cur.split_at_mut(N.min(cur.len()));
            head.iter_mut()
                .zip(prev)
                .for_each(|(x, &b)| *x = x.wrapping_add(b));
            for k in N..cur.len() {
                cur[k] = cur[k].wrapping_add(paeth_pred(cur[k - N], prev[k], prev[k - N]));
            }
        }
        _ => return false,
    }
    true
}

/// Paeth predictor, branchless: of left `a`, up `b`, up-left `c`, the one closest to
/// `a + b - c` (ties prefer `a`, then `b`).
#[inline(always)]
fn paeth_pred(a: u8, b: u8, c: u8) -> u8 {
    let (a16, b16, c16) = (a as i16, b as i16, c as i16);
    let pa = (b16 - c16).abs();
    let pb = (a16 - c16).abs();
    let pc = (a16 + b16 - 2 * c16).abs();
    let bc = if pb <= pc { b } else { c };
    if pa <= pb && pa <= pc {
        a
    } else {
        bc
    }
}

/// Paeth on the pixel `j` of `rows[r]`, neighbours read from memory (already final).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn paeth_at<const N: usize, const R: usize>(
    rows: &mut [&mut [u8]; R],
    prev: &[u8],
    r: usize,
    j: usize,
) {
    let (above, below) = rows.split_at_mut(r);
    let up: &[u8] = if r == 0 { prev } else { above[r - 1] };
    let cur = &mut *below[0];
    for k in j * N..j * N + N {
        let p = if j == 0 {
            up[k]
        } else {
            paeth_pred(cur[k - N], up[k], up[k - N])
        };
        cur[k] = cur[k].wrapping_add(p);
    }
}

/// Paeth is a serial chain: each pixel needs the one just decoded to its left, which leaves
/// the CPU idle. Runs of Paeth rows are therefore unfiltered as a wavefront: row `r` runs one
/// pixel behind row `r - 1`, whose latest result is its up neighbour, so the rows' chains
/// overlap. Returns how many rows from the top of `rest` it did (0: not a run, or no kernel).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn paeth_wave(bpp: usize, rest: &mut [u8], stride: usize, prev: &[u8]) -> usize {
    fn rows<const R: usize>(rest: &mut [u8], stride: usize) -> [&mut [u8]; R] {
        let mut it = rest.chunks_exact_mut(stride);
        std::array::from_fn(|_| &mut it.next().unwrap()[1..])
    }
    let r = match bpp {
        1 => 8,
        3 | 4 => 4,
        _ => return 0,
    };
    if rest.len() < r * stride || (0..r).any(|k| rest[k * stride] != 4) {
        return 0;
    }
    // SAFETY (all three): only reached from the AVX2 path, which checked the CPU.
    match bpp {
        1 => unsafe { paeth_gray8_avx2(&mut rows::<8>(rest, stride), prev) },
        3 => unsafe { paeth_rows_avx2::<3, 4>(&mut rows::<4>(rest, stride), prev) },
        _ => unsafe { paeth_rows_avx2::<4, 4>(&mut rows::<4>(rest, stride), prev) },
    }
    r
}

#[cfg(not(target_arch = "x86_64"))]
fn paeth_wave(_: usize, _: &mut [u8], _: usize, _: &[u8]) -> usize {
    0
}

/// The Paeth select on 16-bit lanes: `(x + pred(a, b, c)) & 0xff`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn paeth_lanes(
    a: std::arch::x86_64::__m128i,
    b: std::arch::x86_64::__m128i,
    c: std::arch::x86_64::__m128i,
    x: std::arch::x86_64::__m128i,
) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let bc = _mm_sub_epi16(b, c);
    let pa = _mm_abs_epi16(bc);
    let da = _mm_sub_epi16(a, c);
    let pb = _mm_abs_epi16(da);
    let pc = _mm_abs_epi16(_mm_add_epi16(da, bc));
    let up_or_ul = _mm_blendv_epi8(b, c, _mm_cmpgt_epi16(pb, pc));
    let not_a = _mm_cmpgt_epi16(pa, _mm_min_epi16(pb, pc));
    let pred = _mm_blendv_epi8(a, up_or_ul, not_a);
    _mm_and_si128(_mm_add_epi16(x, pred), _mm_set1_epi16(0xff))
}

/// Paeth on `R` rows of 3- or 4-byte pixels, a pixel's channels side by side in one register;
/// row `r` handles pixel `i - r` at step `i`, its neighbours kept in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn paeth_rows_avx2<const N: usize, const R: usize>(rows: &mut [&mut [u8]; R], prev: &[u8]) {
    use std::arch::x86_64::*;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load<const N: usize>(s: &[u8], at: usize) -> __m128i {
        // Four bytes where the row allows (the extra lane is computed and never stored).
        let v = match s.get(at..at + 4) {
            Some(q) => u32::from_le_bytes(q.try_into().unwrap()),
            None => {
                let mut t = [0u8; 4];
                t[..N].copy_from_slice(&s[at..at + N]);
                u32::from_le_bytes(t)
            }
        };
        _mm_cvtepu8_epi16(_mm_cvtsi32_si128(v as i32))
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn step<const N: usize>(
        row: &mut [u8],
        at: usize,
        b: __m128i,
        a: &mut __m128i,
        c: &mut __m128i,
    ) {
        let o = paeth_lanes(*a, b, *c, load::<N>(row, at));
        let v = _mm_cvtsi128_si32(_mm_packus_epi16(o, o)) as u32;
        row[at..at + N].copy_from_slice(&v.to_le_bytes()[..N]);
        (*a, *c) = (o, b);
    }
    let n = prev.len() / N;
    let (mut a, mut c) = ([_mm_setzero_si128(); R], [_mm_setzero_si128(); R]);
    for i in 0..n + R - 1 {
        if i + 1 < R || i >= n {
            // A row still starting or already done: check each.
            for r in (0..R).rev() {
                if let Some(j) = i.checked_sub(r).filter(|&j| j < n) {
                    let b = if r == 0 {
                        load::<N>(prev, j * N)
                    } else {
                        a[r - 1]
                    };
                    step::<N>(rows[r], j * N, b, &mut a[r], &mut c[r]);
                }
            }
        } else {
            // Bottom row first: it takes its up neighbour from `a[r - 1]` before that moves on.
            for r in (0..R).rev() {
                let b = if r == 0 {
                    load::<N>(prev, i * N)
                } else {
                    a[r - 1]
                };
                step::<N>(rows[r], (i - r) * N, b, &mut a[r], &mut c[r]);
            }
        }
    }
}

/// Gray Paeth on 8 rows, one row per 16-bit lane: the up neighbour of lane `r` is lane `r - 1`
/// of the previous result (a lane shift). Pixels go in and out 8 x 8 bytes at a time through
/// a byte transpose; the ragged start and end of the wavefront go pixel by pixel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn paeth_gray8_avx2(rows: &mut [&mut [u8]; 8], prev: &[u8]) {
    use std::arch::x86_64::*;
    /// 8 x 8 bytes, two rows per register in, two columns per register out (and back).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn transpose(m: [__m128i; 4]) -> [__m128i; 4] {
        let pairs = _mm_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
        let t = m.map(|v| _mm_shuffle_epi8(v, pairs));
        let u = [
            _mm_unpacklo_epi16(t[0], t[1]),
            _mm_unpackhi_epi16(t[0], t[1]),
            _mm_unpacklo_epi16(t[2], t[3]),
            _mm_unpackhi_epi16(t[2], t[3]),
        ];
        [
            _mm_unpacklo_epi32(u[0], u[2]),
            _mm_unpackhi_epi32(u[0], u[2]),
            _mm_unpacklo_epi32(u[1], u[3]),
            _mm_unpackhi_epi32(u[1], u[3]),
        ]
    }
    let n = prev.len();
    let edge = |rows: &mut [&mut [u8]; 8], i: usize| {
        for r in 0..8 {
            if let Some(j) = i.checked_sub(r).filter(|&j| j < n) {
                paeth_at::<1, 8>(rows, prev, r, j);
            }
        }
    };
    (0..7).for_each(|i| edge(rows, i));
    let mut i = 7; // row r is at pixel i - r
    if i + 8 <= n {
        let (mut a16, mut c16) = ([0i16; 8], [0i16; 8]);
        for r in 0..8 {
            // Left and up-left neighbours of row r's pixel at this step.
            if let Some(j) = (i - r).checked_sub(1) {
                a16[r] = rows[r][j] as i16;
                c16[r] = if r == 0 { prev[j] } else { rows[r - 1][j] } as i16;
            }
        }
        let mut a = _mm_loadu_si128(a16.as_ptr().cast());
        let mut c = _mm_loadu_si128(c16.as_ptr().cast());
        while i + 8 <= n {
            let ld = |r: usize| i64::from_le_bytes(rows[r][i - r..i - r + 8].try_into().unwrap());
            let x = transpose([0, 2, 4, 6].map(|r| _mm_set_epi64x(ld(r + 1), ld(r))));
            let up = u64::from_le_bytes(prev[i..i + 8].try_into().unwrap());
            let mut o = [_mm_setzero_si128(); 8];
            for t in 0..8 {
                // Column t of the transpose: half of x[t / 2].
                let xt = match t % 2 {
                    0 => _mm_cvtepu8_epi16(x[t / 2]),
                    _ => _mm_cvtepu8_epi16(_mm_srli_si128::<8>(x[t / 2])),
                };
                let b = _mm_slli_si128::<2>(a);
                let b = _mm_or_si128(b, _mm_cvtsi32_si128((up >> (8 * t)) as u8 as i32));
                o[t] = paeth_lanes(a, b, c, xt);
                (a, c) = (o[t], b);
            }
            let packed = [0, 2, 4, 6].map(|t| _mm_packus_epi16(o[t], o[t + 1]));
            for (k, v) in transpose(packed).into_iter().enumerate() {
                let (r0, r1) = (2 * k, 2 * k + 1);
                let lo = _mm_cvtsi128_si64(v).to_le_bytes();
                rows[r0][i - r0..i - r0 + 8].copy_from_slice(&lo);
                let hi = _mm_extract_epi64::<1>(v).to_le_bytes();
                rows[r1][i - r1..i - r1 + 8].copy_from_slice(&hi);
            }
            i += 8;
        }
    }
    (i..n + 7).for_each(|i| edge(rows, i));
}

#[cfg(test)]
mod tests {
    use super::super::TestRng;
    use super::super::{decode, probe};
    use super::*;

    /// The existing path: what `decode_l` returned for PNG before this module.
    fn old_path(bytes: &[u8]) -> Option<Gray> {
        let info = probe::probe(bytes).ok()?;
        let img = decode::decode_dynamic(bytes, &info).ok()?;
        Some(decode::to_pillow_l(&img, &info))
    }

    /// Fast path equals the old one, and takes the file.
    #[track_caller]
    fn assert_same(bytes: &[u8]) {
        let old = old_path(bytes).expect("old path rejects a valid test file");
        assert_eq!(decode_png_l(bytes), Some(old));
    }

    /// Noise patches between smooth gradients, so every Paeth choice occurs.
    fn pixels(w: usize, h: usize, ch: usize, rng: &mut TestRng) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * ch);
        for y in 0..h {
            for x in 0..w {
                for k in 0..ch {
                    v.push(if (x / 5 + y / 3) % 3 == 0 {
                        rng.next() as u8
                    } else {
                        (x * 7 + y * 3 + k * 80) as u8
                    });
                }
            }
        }
        v
    }

    fn chunk(ty: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(ty);
        c.extend_from_slice(data);
        c.extend_from_slice(&libdeflater::crc32(&c[4..]).to_be_bytes());
        c
    }

    fn ihdr(w: usize, h: usize, depth: u8, ct: u8, interlace: u8) -> Vec<u8> {
        let mut d = (w as u32).to_be_bytes().to_vec();
        d.extend_from_slice(&(h as u32).to_be_bytes());
        d.extend_from_slice(&[depth, ct, 0, 0, interlace]);
        chunk(b"IHDR", &d)
    }

    /// Filter rows of `px` (row bytes `rb`, `bpp` bytes per pixel) with `filters[y]`.
    fn filter_rows(px: &[u8], rb: usize, bpp: usize, filters: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (y, row) in px.chunks_exact(rb).enumerate() {
            let f = filters[y % filters.len()];
            out.push(f);
            for i in 0..rb {
                let a = if i >= bpp { row[i - bpp] } else { 0 };
                let b = if y > 0 { px[(y - 1) * rb + i] } else { 0 };
                let c = if y > 0 && i >= bpp {
                    px[(y - 1) * rb + i - bpp]
                } else {
                    0
                };
                let pred = match f {
                    1 => a,
                    2 => b,
                    3 => ((a as u16 + b as u16) / 2) as u8,
                    4 => paeth_pred(a, b, c),
                    _ => 0,
                };
                out.push(row[i].wrapping_sub(pred));
            }
        }
        out
    }

    fn zlib(raw: &[u8], level: i32) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
        let mut out = vec![0; c.zlib_compress_bound(raw.len())];
        let n = c.zlib_compress(raw, &mut out).unwrap();
        out.truncate(n);
        out
    }

    /// A PNG from parts: `pre` chunks before the IDATs (split every `split` bytes).
    fn assemble(head: Vec<u8>, pre: &[Vec<u8>], z: &[u8], split: usize) -> Vec<u8> {
        let mut f = SIGNATURE.to_vec();
        f.extend(head);
        pre.iter().for_each(|c| f.extend_from_slice(c));
        z.chunks(split.max(1))
            .for_each(|d| f.extend(chunk(b"IDAT", d)));
        f.extend(chunk(b"IEND", &[]));
        f
    }

    fn png_crate(
        w: u32,
        h: u32,
        ct: png::ColorType,
        f: png::Filter,
        fast: bool,
        px: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(ct);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_filter(f);
        enc.set_compression(if fast {
            png::Compression::Fastest
        } else {
            png::Compression::High
        });
        if ct == png::ColorType::Indexed {
            enc.set_palette(
                (0..=255u8)
                    .flat_map(|i| [i, 255 - i, i / 2])
                    .collect::<Vec<_>>(),
            );
        }
        let mut wr = enc.write_header().unwrap();
        if fast {
            wr.write_image_data(px).unwrap();
        } else {
            // Many small IDAT chunks.
            let mut sw = wr.stream_writer_with_size(97).unwrap();
            std::io::Write::write_all(&mut sw, px).unwrap();
            sw.finish().unwrap();
        }
        drop(wr);
        out
    }

    const SIZES: [(usize, usize); 12] = [
        (1, 1),
        (1, 9),
        (2, 3),
        (3, 8),
        (5, 17),
        (7, 2),
        (15, 9),
        (16, 16),
        (17, 11),
        (23, 33),
        (40, 8),
        (101, 19),
    ];

    #[test]
    fn matches_old_path_on_png_crate_files() {
        use png::{ColorType as C, Filter as F};
        let mut rng = TestRng(7);
        let filters = [F::NoFilter, F::Sub, F::Up, F::Avg, F::Paeth, F::Adaptive];
        for (ct, ch) in [
            (C::Grayscale, 1),
            (C::Rgb, 3),
            (C::GrayscaleAlpha, 2),
            (C::Rgba, 4),
            (C::Indexed, 1),
        ] {
            for &(w, h) in &SIZES {
                let px = pixels(w, h, ch, &mut rng);
                for &f in &filters {
                    for fast in [true, false] {
                        assert_same(&png_crate(w as u32, h as u32, ct, f, fast, &px));
                    }
                }
            }
        }
    }

    #[test]
    fn matches_old_path_on_mixed_filters_and_chunks() {
        let mut rng = TestRng(11);
        // Runs of Paeth (the multi-row kernels) broken by the other filters.
        let patterns: [&[u8]; 6] = [
            &[4],
            &[4, 4, 4, 1],
            &[4, 4, 4, 4, 4, 4, 4, 4, 2],
            &[0, 1, 2, 3, 4],
            &[3],
            &[4, 4, 4, 4, 4, 4, 4, 3],
        ];
        for (ct, bpp) in [(0u8, 1usize), (2, 3), (3, 1), (4, 2), (6, 4)] {
            for &(w, h) in SIZES.iter().chain(&[(64, 40), (33, 24)]) {
                let px = pixels(w, h, bpp, &mut rng);
                for (pi, pat) in patterns.iter().enumerate() {
                    let z = zlib(&filter_rows(&px, w * bpp, bpp, pat), [0, 1, 6, 12][pi % 4]);
                    let mut pre = vec![
                        chunk(b"gAMA", &45455u32.to_be_bytes()),
                        chunk(b"prVt", b"x"),
                    ];
                    pre.push(chunk(b"tEXt", b"Comment\0hello"));
                    if ct == 3 {
                        // A short palette: indices past its end are black.
                        let n = 1 + rng.index(256);
                        pre.push(chunk(b"PLTE", &pixels(n, 1, 3, &mut rng)));
                        pre.push(chunk(b"tRNS", &pixels(rng.index(n + 1), 1, 1, &mut rng)));
                    }
                    let trns: &[u8] = match ct {
                        0 => &[0, 17],
                        2 => &[0, 1, 0, 2, 0, 3],
                        _ => &[],
                    };
                    let split = [1, 7, 100, usize::MAX][pi % 4];
                    let plain = assemble(ihdr(w, h, 8, ct, 0), &pre, &z, split);
                    assert_same(&plain);
                    if !trns.is_empty() {
                        pre.push(chunk(b"tRNS", trns));
                        assert_same(&assemble(ihdr(w, h, 8, ct, 0), &pre, &z, split));
                    }
                }
            }
        }
    }

    #[test]
    fn falls_back_on_what_it_does_not_handle() {
        // A valid 9x9 RGB file with every filter type, and ways to break it.
        let raw = filter_rows(&pixels(9, 9, 3, &mut TestRng(3)), 27, 3, &[0, 1, 2, 3, 4]);
        let z = zlib(&raw, 6);
        let rgb = |pre: &[Vec<u8>], z: &[u8]| assemble(ihdr(9, 9, 8, 2, 0), pre, z, usize::MAX);
        let ok = rgb(&[], &z);
        assert_same(&ok);
        let n = ok.len();
        let flip = |at: usize| {
            let mut f = ok.clone();
            f[at] ^= 1;
            f
        };
        let mut bad_filter = raw.clone();
        bad_filter[28 * 4] = 5;
        let mut no_iend = ok[..n - 12].to_vec();
        no_iend.extend(chunk(b"tEXt", b"a\0b"));
        let mut idat_run_broken = SIGNATURE.to_vec();
        idat_run_broken.extend(ihdr(9, 9, 8, 2, 0));
        idat_run_broken.extend(chunk(b"IDAT", &z[..10]));
        idat_run_broken.extend(chunk(b"tEXt", b"a\0b"));
        idat_run_broken.extend(chunk(b"IDAT", &z[10..]));
        idat_run_broken.extend(chunk(b"IEND", &[]));
        let mut bad_text_crc = rgb(&[chunk(b"tEXt", b"a\0b")], &z);
        bad_text_crc[33 + 8] ^= 1;
        // Compressed, a profile this size could inflate past the png crate's allocation limit.
        let big_iccp = [&b"p\0\0"[..], &[0x55; 40_000]].concat();
        let g16 = zlib(&filter_rows(&[7; 9 * 9 * 2], 18, 2, &[1]), 6);
        let rgb16 = zlib(&filter_rows(&[7; 9 * 9 * 6], 54, 6, &[1]), 6);
        let pal = |pre: &[Vec<u8>]| assemble(ihdr(9, 9, 8, 3, 0), pre, &zlib(&[0; 90], 6), 99);
        assert_same(&pal(&[chunk(b"PLTE", &[9; 6])]));
        let mut cases = vec![
            ("interlaced", assemble(ihdr(9, 9, 8, 2, 1), &[], &z, 99)),
            ("16-bit", assemble(ihdr(9, 9, 16, 2, 0), &[], &rgb16, 99)),
            (
                "16-bit gray + tRNS",
                assemble(ihdr(9, 9, 16, 0, 0), &[chunk(b"tRNS", &[0, 7])], &g16, 99),
            ),
            ("short data", rgb(&[], &zlib(&raw[..raw.len() - 1], 6))),
            ("long data", rgb(&[], &zlib(&[&raw[..], &[0]].concat(), 6))),
            ("filter type 5", rgb(&[], &zlib(&bad_filter, 6))),
            ("IDAT CRC", flip(n - 20)),
            ("IHDR CRC", flip(29)),
            ("IEND CRC", flip(n - 1)),
            ("ancillary chunk CRC", bad_text_crc),
            ("no IEND", no_iend),
            ("IDAT run broken", idat_run_broken),
            ("PLTE in RGB", rgb(&[chunk(b"PLTE", &[1, 2, 3])], &z)),
            ("cICP", rgb(&[chunk(b"cICP", &[1, 13, 0, 1])], &z)),
            (
                "APNG",
                rgb(&[chunk(b"acTL", &[0, 0, 0, 1, 0, 0, 0, 0])], &z),
            ),
            ("unknown critical chunk", rgb(&[chunk(b"CRIT", &[])], &z)),
            ("second IHDR", rgb(&[ihdr(9, 9, 8, 2, 0)], &z)),
            ("large ICC profile", rgb(&[chunk(b"iCCP", &big_iccp)], &z)),
            ("palette missing", pal(&[])),
            ("palette length", pal(&[chunk(b"PLTE", &[9; 7])])),
            (
                "bKGD before PLTE",
                pal(&[chunk(b"bKGD", &[0]), chunk(b"PLTE", &[9; 6])]),
            ),
            (
                "two PLTE",
                pal(&[chunk(b"PLTE", &[9; 6]), chunk(b"PLTE", &[9; 6])]),
            ),
        ];
        for cut in [8, 20, 33, 40, n - 12, n - 1] {
            cases.push(("truncated", ok[..cut].to_vec()));
        }
        for depth in [1u8, 2, 4] {
            let rb = (9 * depth as usize).div_ceil(8);
            let low = zlib(&filter_rows(&vec![0x5a; rb * 9], rb, 1, &[0]), 6);
            cases.push((
                "low bit depth",
                assemble(ihdr(9, 9, depth, 0, 0), &[], &low, 99),
            ));
            let plte = [chunk(b"PLTE", &[1, 2, 3, 4, 5, 6])];
            cases.push((
                "low bit palette",
                assemble(ihdr(9, 9, depth, 3, 0), &plte, &low, 99),
            ));
        }
        for (why, f) in cases {
            assert_eq!(decode_png_l(&f), None, "{why}");
        }
    }

    /// Fuzz: whatever corruption the fast path accepts, the old path accepts and agrees on.
    #[test]
    fn corrupted_files_never_disagree() {
        let mut rng = TestRng(99);
        let mut bases = Vec::new();
        for (ct, bpp) in [(0u8, 1usize), (2, 3), (3, 1), (6, 4)] {
            let px = pixels(19, 12, bpp, &mut rng);
            let raw = filter_rows(&px, 19 * bpp, bpp, &[4, 4, 4, 4, 1, 3, 2, 0]);
            let pre = if ct == 3 {
                vec![chunk(b"PLTE", &[50; 30])]
            } else {
                vec![]
            };
            bases.push((ihdr(19, 12, 8, ct, 0), pre, raw));
        }
        let mut accepted = 0;
        for round in 0..4000 {
            let (head, pre, raw) = &bases[round % bases.len()];
            let (mut head, mut raw) = (head.clone(), raw.clone());
            let mode = rng.index(5);
            if mode == 1 {
                // The inflated rows (filter bytes included), re-compressed with valid CRCs.
                for _ in 0..1 + rng.index(3) {
                    let i = rng.index(raw.len());
                    raw[i] = if rng.index(2) == 0 {
                        rng.next() as u8
                    } else {
                        rng.index(6) as u8
                    };
                }
            } else if mode == 2 {
                // IHDR fields, with a valid CRC.
                head[8 + rng.index(13)] = rng.next() as u8;
                let crc = libdeflater::crc32(&head[4..17]).to_be_bytes();
                head[17..21].copy_from_slice(&crc);
            }
            let mut z = zlib(&raw, 6);
            if mode == 4 {
                // The DEFLATE stream, Adler-32 fixed up whenever it still inflates, so the
                // two inflaters are compared rather than the checksum.
                let l = z.len();
                z[2 + rng.index(l - 6)] ^= 1 << rng.index(8);
                let mut out = vec![0; raw.len() + 64];
                let mut d = libdeflater::Decompressor::new();
                if let Ok(k) = d.deflate_decompress(&z[2..l - 4], &mut out) {
                    z[l - 4..].copy_from_slice(&libdeflater::adler32(&out[..k]).to_be_bytes());
                }
            }
            let mut f = assemble(head, pre, &z, 64);
            if mode == 0 {
                // Any bytes of the file.
                for _ in 0..1 + rng.index(3) {
                    let i = rng.index(f.len());
                    f[i] ^= 1 << rng.index(8);
                }
            } else if mode == 3 {
                f.truncate(rng.index(f.len()));
            }
            if let Some(g) = decode_png_l(&f) {
                accepted += 1;
                assert_eq!(old_path(&f), Some(g), "round {round}, mode {mode}");
            }
        }
        assert!(
            accepted > 400,
            "fuzz reached the decoder too rarely: {accepted}"
        );
    }
}
