//! Test helpers shared by the JPEG decoder tests: an encoder with libjpeg's own defaults and
//! a synthetic picture with gradients, edges and noise.

use mozjpeg_sys::*;

use super::TestRng;

extern "C" {
    fn free(p: *mut std::ffi::c_void);
}

#[derive(Clone, Copy, Debug)]
pub struct Enc {
    pub quality: i32,
    /// Sampling factors of Y, Cb, Cr (or R, G, B); `None` = one-component grayscale.
    pub samp: Option<[(i32, i32); 3]>,
    pub restart: u32,
    pub optimize: bool,
    pub progressive: bool,
    /// Store RGB as such (`JCS_RGB`, Adobe marker) instead of converting to YCbCr.
    pub rgb: bool,
}

/// Encode with libjpeg-turbo's own defaults (mozjpeg's JCP_FASTEST profile).
pub fn encode(px: &[u8], w: u32, h: u32, e: Enc) -> Vec<u8> {
    // SAFETY: standard libjpeg compress sequence on zeroed structs; the error manager
    // aborts the test (unwinds) on a libjpeg error.
    unsafe {
        let mut err: jpeg_error_mgr = std::mem::zeroed();
        let mut c: jpeg_compress_struct = std::mem::zeroed();
        c.common.err = jpeg_std_error(&mut err);
        jpeg_create_compress(&mut c);
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut size: c_ulong = 0;
        jpeg_mem_dest(&mut c, &mut out, &mut size);
        let nc = if e.samp.is_some() { 3 } else { 1 };
        c.image_width = w;
        c.image_height = h;
        c.input_components = nc;
        c.in_color_space = if nc == 3 { JCS_RGB } else { JCS_GRAYSCALE };
        jpeg_c_set_int_param(
            &mut c,
            J_INT_PARAM::JINT_COMPRESS_PROFILE,
            JCP_FASTEST as c_int,
        );
        jpeg_set_defaults(&mut c);
        jpeg_set_quality(&mut c, e.quality, 1);
        if e.rgb {
            jpeg_set_colorspace(&mut c, JCS_RGB);
        }
        if let Some(s) = e.samp {
            for (i, (hs, vs)) in s.into_iter().enumerate() {
                let ci = &mut *c.comp_info.add(i);
                ci.h_samp_factor = hs;
                ci.v_samp_factor = vs;
            }
        }
        c.restart_interval = e.restart;
        c.optimize_coding = e.optimize as boolean;
        if e.progressive {
            jpeg_simple_progression(&mut c);
        }
        jpeg_start_compress(&mut c, 1);
        let stride = w as usize * nc as usize;
        while c.next_scanline < h {
            let row = [px[c.next_scanline as usize * stride..].as_ptr()];
            jpeg_write_scanlines(&mut c, row.as_ptr(), 1);
        }
        jpeg_finish_compress(&mut c);
        let v = std::slice::from_raw_parts(out, size as usize).to_vec();
        jpeg_destroy_compress(&mut c);
        free(out.cast());
        v
    }
}

/// Smooth gradients, hard edges and noise: DCs everywhere in range and large AC terms.
pub fn picture(w: u32, h: u32, nc: usize, rng: &mut TestRng) -> Vec<u8> {
    let noise = rng.below(60) as i64;
    let mut px = Vec::with_capacity((w * h) as usize * nc);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            for c in 0..nc as i64 {
                let edge = if (x / 37 + y / 23 + c) % 3 == 0 {
                    90
                } else {
                    0
                };
                let n = if noise > 0 {
                    rng.below(noise as u64 + 1) as i64
                } else {
                    0
                };
                let v = (x * 255 / w as i64 + y * (c + 1) * 3 / 5 + edge + n) % 256;
                px.push(v as u8);
            }
        }
    }
    px
}

pub const SAMPLINGS: [Option<[(i32, i32); 3]>; 6] = [
    None,
    Some([(1, 1), (1, 1), (1, 1)]),
    Some([(2, 1), (1, 1), (1, 1)]),
    Some([(2, 2), (1, 1), (1, 1)]),
    Some([(1, 2), (1, 1), (1, 1)]),
    Some([(4, 1), (1, 1), (1, 1)]),
];
