//! A fused colour converter installed inside libjpeg's decompressor for exact mode,
//! bit-identical to the two steps it replaces.
//!
//! Pillow decodes a colour JPEG to RGB (libjpeg's `ycc_rgb_convert`) and `convert('L')` then
//! applies `rgb2l`. The converter installed here computes libjpeg's YCbCr→RGB (the
//! fixed-point tables of `jdcolor.c`, range-limited) and Pillow's `L24` in one pass over the
//! upsampled planes, so the RGB rows are never written or read back. A test checks it against
//! libjpeg's own (SIMD) converter on all 2^24 (Y, Cb, Cr) triples.
//!
//! The converter is a libjpeg-internal function pointer (`cinfo->cconvert->color_convert`),
//! set between `jpeg_start_decompress` and the first `jpeg_read_scanlines` through a small C
//! shim (`jpeg_hooks.c`) compiled against libjpeg's own headers.

use std::ffi::c_int;

use mozjpeg_sys::*;

use super::pillow::rgb_to_l;

type ColorConvert = unsafe extern "C" fn(
    *mut jpeg_decompress_struct,
    *const *const *const u8,
    u32,
    *const *mut u8,
    c_int,
);

extern "C" {
    fn llava_jpeg_swap_color_convert(
        cinfo: *mut jpeg_decompress_struct,
        f: Option<ColorConvert>,
    ) -> Option<ColorConvert>;
}

/// Install the fused converter on a started decompressor when the image is 3-component
/// YCbCr or RGB decoded to `JCS_RGB`; the output rows then hold one byte ("L") per pixel.
/// Returns whether it was installed.
///
/// # Safety
/// `cinfo` must be between `jpeg_start_decompress` and the first `jpeg_read_scanlines`.
pub(super) unsafe fn fuse_gray(cinfo: &mut jpeg_decompress_struct) -> bool {
    if !(cinfo.num_components == 3 && cinfo.out_color_space == JCS_RGB) {
        return false;
    }
    let fused: ColorConvert = match cinfo.jpeg_color_space {
        JCS_YCbCr => ycc_to_l,
        JCS_RGB => rgb_planes_to_l,
        _ => return false,
    };
    llava_jpeg_swap_color_convert(cinfo, Some(fused)).is_some()
}

/// Converts one row: three planes in, "L" out.
type RowKernel = fn(&[u8], &[u8], &[u8], &mut [u8]);

// libjpeg's `jdcolor.c` constants: FIX(x) = (int)(x · 2^16 + 0.5).
const FIX_1_40200: i32 = 91881;
const FIX_1_77200: i32 = 116130;
const FIX_0_71414: i32 = 46802;
const FIX_0_34414: i32 = 22554;
const ONE_HALF: i32 = 1 << 15;

/// libjpeg's YCbCr→RGB (`ycc_rgb_convert`, range-limited), then Pillow's `L24`.
#[inline(always)]
fn ycc_l(y: u8, cb: u8, cr: u8) -> u8 {
    let (y, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
    // The C tables hold exactly these values (arithmetic right shift, as RIGHT_SHIFT).
    let r = y + ((FIX_1_40200 * cr + ONE_HALF) >> 16);
    let g = y + ((-FIX_0_34414 * cb + ONE_HALF - FIX_0_71414 * cr) >> 16);
    let b = y + ((FIX_1_77200 * cb + ONE_HALF) >> 16);
    let c = |v: i32| v.clamp(0, 255) as u8;
    rgb_to_l(c(r), c(g), c(b))
}

#[inline(always)]
fn ycc_row_generic(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    for (((o, &y), &cb), &cr) in out.iter_mut().zip(y).zip(cb).zip(cr) {
        *o = ycc_l(y, cb, cr);
    }
}

/// One i32 lane holding the i16 pair (a, b) as `vpmaddwd` expects it.
#[cfg(target_arch = "x86_64")]
const fn pair(a: i32, b: i32) -> i32 {
    (a as u16 as u32 | (b as u16 as u32) << 16) as i32
}
const _: () = assert!(FIX_1_40200 - 65536 == 26345 && 2 * 65536 - FIX_1_77200 == 14942);
const _: () = assert!(65536 - FIX_0_71414 == 18734);

/// [`ycc_l`] on 16 pixels at a time in 16-bit lanes. The three offsets are split as
/// `FIX(k)·x = m·x·2^16 + c·x` with `|c| < 2^15`, so each is an exact 16-bit multiply;
/// the two-term green offset and `L24` use `vpmaddwd` (exact in 32 bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ycc_row_avx2(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = out.len().min(y.len()).min(cb.len()).min(cr.len());
    // (c·x + 2^15) >> 16 from the high and low halves of the 32-bit product c·x.
    #[inline(always)]
    unsafe fn round_hi(x: __m256i, c: i16) -> __m256i {
        let c = _mm256_set1_epi16(c);
        let lo = _mm256_mullo_epi16(x, c);
        _mm256_add_epi16(_mm256_mulhi_epi16(x, c), _mm256_srli_epi16(lo, 15))
    }
    let c128 = _mm256_set1_epi16(128);
    let (zero, max) = (_mm256_setzero_si256(), _mm256_set1_epi16(255));
    let half = _mm256_set1_epi32(ONE_HALF);
    let w_g = _mm256_set1_epi32(pair(-FIX_0_34414, 65536 - FIX_0_71414));
    let w_rg = _mm256_set1_epi32(pair(19595, 19235));
    let w_gb = _mm256_set1_epi32(pair(19235, 7471));
    let load = |p: &[u8], i: usize| _mm256_cvtepu8_epi16(_mm_loadu_si128(p.as_ptr().add(i).cast()));
    let mut i = 0;
    while i + 16 <= n {
        let yv = load(y, i);
        let xb = _mm256_sub_epi16(load(cb, i), c128);
        let xr = _mm256_sub_epi16(load(cr, i), c128);
        // FIX(1.402) = 2^16 + 26345; FIX(1.772) = 2·2^16 - 14942.
        let r_off = _mm256_add_epi16(xr, round_hi(xr, 26345));
        let b_off = _mm256_add_epi16(_mm256_add_epi16(xb, xb), round_hi(xb, -14942));
        // -FIX(0.71414) = -2^16 + 18734.
        let g =
            |v: __m256i| _mm256_srai_epi32(_mm256_add_epi32(_mm256_madd_epi16(v, w_g), half), 16);
        let g_hi = _mm256_packs_epi32(
            g(_mm256_unpacklo_epi16(xb, xr)),
            g(_mm256_unpackhi_epi16(xb, xr)),
        );
        let g_off = _mm256_sub_epi16(g_hi, xr);
        let clamp = |v: __m256i| _mm256_min_epi16(_mm256_max_epi16(v, zero), max);
        let r = clamp(_mm256_add_epi16(yv, r_off));
        let gg = clamp(_mm256_add_epi16(yv, g_off));
        let b = clamp(_mm256_add_epi16(yv, b_off));
        // L24 = 19595 R + 2 · 19235 G + 7471 B + 2^15, then >> 16.
        let l = |rg: __m256i, gb: __m256i| {
            let s = _mm256_add_epi32(_mm256_madd_epi16(rg, w_rg), _mm256_madd_epi16(gb, w_gb));
            _mm256_srai_epi32(_mm256_add_epi32(s, half), 16)
        };
        let l16 = _mm256_packs_epi32(
            l(_mm256_unpacklo_epi16(r, gg), _mm256_unpacklo_epi16(gg, b)),
            l(_mm256_unpackhi_epi16(r, gg), _mm256_unpackhi_epi16(gg, b)),
        );
        let l8 = _mm256_permute4x64_epi64(_mm256_packus_epi16(l16, l16), 0b00_00_10_00);
        _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), _mm256_castsi256_si128(l8));
        i += 16;
    }
    ycc_row_generic(&y[i..n], &cb[i..n], &cr[i..n], &mut out[i..n])
}

fn ycc_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the running CPU supports AVX2, checked just above.
        return unsafe { ycc_row_avx2(y, cb, cr, out) };
    }
    ycc_row_generic(y, cb, cr, out)
}

#[inline(always)]
fn rgb_row_generic(r: &[u8], g: &[u8], b: &[u8], out: &mut [u8]) {
    for (((o, &r), &g), &b) in out.iter_mut().zip(r).zip(g).zip(b) {
        *o = rgb_to_l(r, g, b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rgb_row_avx2(r: &[u8], g: &[u8], b: &[u8], out: &mut [u8]) {
    rgb_row_generic(r, g, b, out)
}

fn rgb_row(r: &[u8], g: &[u8], b: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the running CPU supports AVX2, checked just above.
        return unsafe { rgb_row_avx2(r, g, b, out) };
    }
    rgb_row_generic(r, g, b, out)
}

/// Shared body of the two converters: libjpeg's `color_convert` contract (three planes of
/// `output_width` samples from `input_row` on, `num_rows` output rows).
unsafe fn convert_rows(
    cinfo: *mut jpeg_decompress_struct,
    input: *const *const *const u8,
    input_row: u32,
    output: *const *mut u8,
    num_rows: c_int,
    row: RowKernel,
) {
    #[cfg(test)]
    tests::FUSED_ROWS.with(|f| f.set(f.get() + num_rows.max(0) as u64));
    let w = (*cinfo).output_width as usize;
    for i in 0..num_rows.max(0) as usize {
        let plane =
            |c: usize| std::slice::from_raw_parts(*(*input.add(c)).add(input_row as usize + i), w);
        let out = std::slice::from_raw_parts_mut(*output.add(i), w);
        row(plane(0), plane(1), plane(2), out);
    }
}

unsafe extern "C" fn ycc_to_l(
    cinfo: *mut jpeg_decompress_struct,
    input: *const *const *const u8,
    input_row: u32,
    output: *const *mut u8,
    num_rows: c_int,
) {
    convert_rows(cinfo, input, input_row, output, num_rows, ycc_row)
}

unsafe extern "C" fn rgb_planes_to_l(
    cinfo: *mut jpeg_decompress_struct,
    input: *const *const *const u8,
    input_row: u32,
    output: *const *mut u8,
    num_rows: c_int,
) {
    convert_rows(cinfo, input, input_row, output, num_rows, rgb_row)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::super::jpeg::{decode_gray_with, JpegDecode};
    use super::super::test_jpeg::{encode, picture, Enc, SAMPLINGS};
    use super::super::TestRng;
    use super::*;

    thread_local! {
        /// Rows produced by the fused converter on this thread.
        pub(super) static FUSED_ROWS: Cell<u64> = const { Cell::new(0) };
    }

    fn case_enc(case: usize, rng: &mut TestRng) -> Enc {
        let samp = SAMPLINGS[case % SAMPLINGS.len()];
        Enc {
            quality: [10, 50, 75, 90, 95, 100][rng.below(6) as usize],
            samp,
            restart: [0, 0, 5][case % 3],
            optimize: case % 4 == 0,
            progressive: case % 5 == 1,
            rgb: samp.is_some() && case % 7 == 3,
        }
    }

    #[test]
    fn fused_decode_gives_plain_libjpeg_pixels() {
        let mut rng = TestRng(0x5EED_1DC7);
        let rows0 = FUSED_ROWS.with(Cell::get);
        for case in 0..72 {
            let e = case_enc(case, &mut rng);
            // Tiny, odd and partial-MCU sizes as well as ordinary ones.
            let (w, h) = (1 + rng.below(320) as u32, 1 + rng.below(240) as u32);
            let px = picture(w, h, if e.samp.is_some() { 3 } else { 1 }, &mut rng);
            let jpg = encode(&px, w, h, e);
            let plain = decode_gray_with(&jpg, JpegDecode::Exact, false).unwrap();
            let ours = decode_gray_with(&jpg, JpegDecode::Exact, true).unwrap();
            assert_eq!((ours.width, ours.height), (plain.width, plain.height));
            assert!(ours.px == plain.px, "L differs for {e:?} at {w}x{h}");
        }
        let rows = FUSED_ROWS.with(Cell::get) - rows0;
        assert!(rows > 5000, "fused converter hardly ran: {rows} rows");
    }

    /// Damaged streams: the same pixels or the same error, fused or not.
    #[test]
    fn corrupt_streams_decode_the_same() {
        let mut rng = TestRng(0xC0FF_EE00);
        let mut decoded = 0;
        for case in 0..240 {
            let e = case_enc(case, &mut rng);
            let (w, h) = (64 + rng.below(200) as u32, 64 + rng.below(200) as u32);
            let px = picture(w, h, if e.samp.is_some() { 3 } else { 1 }, &mut rng);
            let mut jpg = encode(&px, w, h, e);
            let n = jpg.len() as u64;
            for _ in 0..1 + rng.below(6) {
                let i = 200 + rng.below(n - 200) as usize;
                jpg[i] = rng.below(256) as u8;
            }
            let plain = decode_gray_with(&jpg, JpegDecode::Exact, false);
            let ours = decode_gray_with(&jpg, JpegDecode::Exact, true);
            match (&plain, &ours) {
                (Ok(a), Ok(b)) => {
                    assert!(a.px == b.px && a.width == b.width, "case {case}: {e:?}");
                    decoded += 1;
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "case {case}"),
                _ => panic!(
                    "case {case}: plain {:?} vs fused {:?}",
                    plain.err(),
                    ours.err()
                ),
            }
        }
        assert!(decoded > 50, "only {decoded} damaged files decoded");
    }

    /// The scalar kernel and the one the dispatcher picks on this CPU.
    fn kernels() -> [RowKernel; 2] {
        [ycc_row_generic, ycc_row]
    }

    /// The fused converter against libjpeg's own YCbCr→RGB (the SIMD one this build links)
    /// followed by `rgb2l`, on every (Y, Cb, Cr).
    #[test]
    fn fused_converter_matches_libjpeg_on_every_triple() {
        let e = Enc {
            quality: 90,
            samp: Some([(1, 1), (1, 1), (1, 1)]),
            restart: 0,
            optimize: false,
            progressive: false,
            rgb: false,
        };
        let mut rng = TestRng(3);
        let jpg = encode(&picture(256, 8, 3, &mut rng), 256, 8, e);
        // SAFETY: a standard decompress sequence on a valid file; the converter is called
        // with planes of `output_width` (256) samples and 256-pixel RGB output rows, as
        // libjpeg itself would call it.
        unsafe {
            let mut err: jpeg_error_mgr = std::mem::zeroed();
            let mut cinfo: jpeg_decompress_struct = std::mem::zeroed();
            cinfo.common.err = jpeg_std_error(&mut err);
            jpeg_create_decompress(&mut cinfo);
            jpeg_mem_src(&mut cinfo, jpg.as_ptr(), jpg.len() as _);
            jpeg_read_header(&mut cinfo, 1);
            cinfo.out_color_space = JCS_RGB;
            jpeg_start_decompress(&mut cinfo);
            assert_eq!(cinfo.output_width, 256);
            let orig = llava_jpeg_swap_color_convert(&mut cinfo, Some(ycc_to_l)).unwrap();
            llava_jpeg_swap_color_convert(&mut cinfo, Some(orig));
            let y: Vec<u8> = (0..=255).collect();
            let mut mismatches = 0;
            for cb in 0..=255u8 {
                let cbs = [cb; 256];
                let crs: Vec<[u8; 256]> = (0..=255u8).map(|cr| [cr; 256]).collect();
                let yrows = vec![y.as_ptr(); 256];
                let cbrows = vec![cbs.as_ptr(); 256];
                let crrows: Vec<*const u8> = crs.iter().map(|r| r.as_ptr()).collect();
                let planes = [yrows.as_ptr(), cbrows.as_ptr(), crrows.as_ptr()];
                let mut rgb = vec![0u8; 256 * 256 * 3];
                let out: Vec<*mut u8> = rgb.chunks_exact_mut(768).map(|r| r.as_mut_ptr()).collect();
                orig(&mut cinfo, planes.as_ptr(), 0, out.as_ptr(), 256);
                for (cr, row) in rgb.chunks_exact(768).enumerate() {
                    for kernel in kernels() {
                        let mut ours = [0u8; 256];
                        kernel(&y, &cbs, &crs[cr], &mut ours);
                        for (x, p) in row.chunks_exact(3).enumerate() {
                            mismatches += (ours[x] != rgb_to_l(p[0], p[1], p[2])) as u32;
                        }
                    }
                }
            }
            jpeg_abort_decompress(&mut cinfo);
            jpeg_destroy_decompress(&mut cinfo);
            assert_eq!(mismatches, 0);
        }
    }
}
