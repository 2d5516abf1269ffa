//! DC-only decoding of baseline JPEGs: the 1/8-scale grayscale image fast-mode phash needs,
//! without libjpeg.
//!
//! At 1/8 scale libjpeg keeps only each block's DC coefficient, yet it still walks every AC
//! symbol one at a time (8-bit lookahead), and that walk is ~70% of `--phash fast`. Here the
//! AC codes are *skipped* through a 12-bit table whose entries cover as many whole symbols
//! (code + magnitude bits) as fit in the window, so a typical lookup skips two or three
//! coefficients at once.
//!
//! The output equals libjpeg's `scale_denom = 8`, `JCS_GRAYSCALE` decode bit for bit: Y's DC
//! times its quantizer through `jpeg_idct_1x1` (`(dc*q + 4) >> 3`, then the range-limit
//! table). Anything this decoder does not fully understand — progressive or arithmetic
//! coding, multi-scan baseline, Adobe/RGB colour, odd sampling, undefined tables, a bad code,
//! data running out, an unexpected marker — returns `None`, and the caller decodes with
//! libjpeg as before, so corrupt files get exactly the old result and reject reason.

use std::cell::RefCell;
use std::rc::Rc;

use super::pillow::Gray;

/// Window of the multi-symbol AC skip table.
const AC_BITS: u32 = 12;
/// Window of the DC table.
const DC_BITS: u32 = 10;
/// Zero bytes after the unstuffed scan. The position is checked against the end before every
/// MCU, and one MCU reads at most 10 blocks × 209 bytes (27 DC bits + 63 × 26 AC bits), so
/// reads never leave the buffer.
const PAD: usize = 4096;

#[derive(Clone, Copy, Default)]
struct Comp {
    id: u8,
    h: u8,
    v: u8,
    tq: u8,
}

struct Header {
    width: u32,
    height: u32,
    comps: Vec<Comp>,
    /// DC quantizer of each table (natural index 0 = first zigzag value).
    qdc: [Option<u16>; 4],
    dc: [Option<Canonical>; 4],
    ac: [Option<Canonical>; 4],
    restart: u32,
    adobe: bool,
    /// Scan components: (index into `comps`, DC table, AC table).
    scan: Vec<(usize, usize, usize)>,
    data_start: usize,
}

fn be16(b: &[u8], i: usize) -> Option<usize> {
    Some(((*b.get(i)? as usize) << 8) | *b.get(i + 1)? as usize)
}

/// Markers up to the first SOS. Only what a baseline single-scan file needs is accepted.
fn parse_header(b: &[u8]) -> Option<Header> {
    if b.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut h = Header {
        width: 0,
        height: 0,
        comps: Vec::new(),
        qdc: [None; 4],
        dc: Default::default(),
        ac: Default::default(),
        restart: 0,
        adobe: false,
        scan: Vec::new(),
        data_start: 0,
    };
    let mut i = 2;
    loop {
        if *b.get(i)? != 0xFF {
            return None;
        }
        while *b.get(i)? == 0xFF {
            i += 1;
        }
        let m = b[i];
        i += 1;
        let len = be16(b, i)?;
        if len < 2 || i + len > b.len() {
            return None;
        }
        let seg = &b[i + 2..i + len];
        match m {
            0xC0 | 0xC1 => {
                if !h.comps.is_empty() || seg.len() < 6 || seg[0] != 8 {
                    return None;
                }
                h.height = be16(seg, 1)? as u32;
                h.width = be16(seg, 3)? as u32;
                let n = seg[5] as usize;
                if h.width == 0 || h.height == 0 || seg.len() != 6 + 3 * n || n == 0 {
                    return None;
                }
                for c in seg[6..].chunks_exact(3) {
                    let (hs, vs) = (c[1] >> 4, c[1] & 15);
                    if !(1..=4).contains(&hs) || !(1..=4).contains(&vs) || c[2] > 3 {
                        return None;
                    }
                    h.comps.push(Comp {
                        id: c[0],
                        h: hs,
                        v: vs,
                        tq: c[2],
                    });
                }
            }
            0xC4 => {
                let mut s = seg;
                while !s.is_empty() {
                    let (class, id) = (s[0] >> 4, (s[0] & 15) as usize);
                    let counts: [u8; 16] = s.get(1..17)?.try_into().ok()?;
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    if class > 1 || id > 3 || n > 256 {
                        return None;
                    }
                    let vals = s.get(17..17 + n)?;
                    let t = Canonical::new(&counts, vals)?;
                    if class == 0 {
                        h.dc[id] = Some(t);
                    } else {
                        h.ac[id] = Some(t);
                    }
                    s = &s[17 + n..];
                }
            }
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let (pq, tq) = (s[0] >> 4, (s[0] & 15) as usize);
                    if pq > 1 || tq > 3 {
                        return None;
                    }
                    let size = 64 << pq;
                    let t = s.get(1..1 + size)?;
                    h.qdc[tq] = Some(if pq == 0 {
                        t[0] as u16
                    } else {
                        be16(t, 0)? as u16
                    });
                    s = &s[1 + size..];
                }
            }
            0xDD => h.restart = be16(seg, 0)? as u32,
            0xDA => {
                let ns = *seg.first()? as usize;
                if seg.len() != 4 + 2 * ns || h.comps.is_empty() {
                    return None;
                }
                for c in seg[1..1 + 2 * ns].chunks_exact(2) {
                    let ci = h.comps.iter().position(|k| k.id == c[0])?;
                    let (td, ta) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
                    if td > 3 || ta > 3 || h.scan.iter().any(|s| s.0 == ci) {
                        return None;
                    }
                    h.scan.push((ci, td, ta));
                }
                let t = &seg[1 + 2 * ns..];
                if t != [0, 63, 0] {
                    return None;
                }
                h.data_start = i + len;
                return Some(h);
            }
            0xEE => h.adobe |= seg.starts_with(b"Adobe"),
            0xE0..=0xEF | 0xFE => {}
            // SOF2.. (progressive, lossless, arithmetic), DAC, DNL, SOI/EOI/RST here, …
            _ => return None,
        }
        i += len;
    }
}

/// A canonical Huffman code as libjpeg derives it (`jpeg_make_d_derived_tbl`), with the same
/// rejection of over-full tables.
#[derive(Clone)]
struct Canonical {
    /// Largest code of each length (index 1..=16), -1 when none.
    maxcode: [i32; 18],
    /// `vals` index of a code of length l is `code + valoff[l]`.
    valoff: [i32; 17],
    /// (code, length, symbol) in code order.
    codes: Vec<(u32, u8, u8)>,
    vals: Vec<u8>,
    /// The DHT definition (counts, then values): what identifies the table across images.
    key: Vec<u8>,
}

impl Canonical {
    fn new(counts: &[u8; 16], vals: &[u8]) -> Option<Self> {
        let mut maxcode = [-1i32; 18];
        let mut valoff = [0i32; 17];
        let mut codes = Vec::with_capacity(vals.len());
        let (mut code, mut p) = (0u32, 0usize);
        for l in 1..=16usize {
            let n = counts[l - 1] as usize;
            if n > 0 {
                valoff[l] = p as i32 - code as i32;
                for _ in 0..n {
                    codes.push((code, l as u8, vals[p]));
                    code += 1;
                    p += 1;
                }
                maxcode[l] = code as i32 - 1;
            }
            // No code may be all ones (libjpeg: JERR_BAD_HUFF_TABLE).
            if code >= 1 << l {
                return None;
            }
            code <<= 1;
        }
        Some(Canonical {
            maxcode,
            valoff,
            codes,
            vals: vals.to_vec(),
            key: counts.iter().chain(vals).copied().collect(),
        })
    }

    /// Decode one symbol bit by bit from the top of `w`: (code length, symbol).
    fn decode_slow(&self, w: u64) -> Option<(u32, u8)> {
        let mut code = 0i32;
        for l in 1..=16 {
            code = (code << 1) | ((w >> (64 - l)) & 1) as i32;
            if code <= self.maxcode[l] {
                return Some((l as u32, self.vals[(code + self.valoff[l]) as usize]));
            }
        }
        None
    }

    /// One-symbol lookup over `bits`: (code length << 8) | symbol, 0 for a longer code.
    fn lut(&self, bits: u32) -> Vec<u16> {
        let mut t = vec![0u16; 1 << bits];
        for &(code, len, sym) in &self.codes {
            let len = len as u32;
            if len <= bits {
                let lo = (code << (bits - len)) as usize;
                t[lo..lo + (1 << (bits - len))].fill(((len as u16) << 8) | sym as u16);
            }
        }
        t
    }
}

/// AC skip table entry: bits 0..5 = bits consumed, 5..12 = `limit`, bit 12 = the group ends
/// with EOB. The entry applies only while the next coefficient index `k <= limit` (the group
/// must not run past coefficient 63, and an EOB must come before the block is full); the group
/// advances `k` by `64 - limit` (by `63 - limit` before its EOB). `limit = 0` sends every `k`
/// to the exact one-symbol path (long codes).
fn ac_skip_table(t: &Canonical) -> Box<[u16; 1 << AC_BITS]> {
    let single = t.lut(AC_BITS);
    let mask = (1u32 << AC_BITS) - 1;
    let entry = |used: u32, adv: u32, eob: bool| -> u16 {
        if used == 0 {
            return 0;
        }
        let limit = if eob { 63 - adv } else { 64 - adv };
        (used | limit << 5 | (eob as u32) << 12) as u16
    };
    let mut out = Box::new([0u16; 1 << AC_BITS]);
    for (w, slot) in (0..1u32 << AC_BITS).zip(out.iter_mut()) {
        let (mut used, mut adv) = (0u32, 0u32);
        *slot = loop {
            let e = single[((w << used) & mask) as usize] as u32;
            let (len, rs) = (e >> 8, e & 0xFF);
            if len == 0 || used + len > AC_BITS {
                break entry(used, adv, false);
            }
            let (r, s) = (rs >> 4, rs & 15);
            if rs == 0 {
                break entry(used + len, adv, true);
            }
            let (step, extra) = if s == 0 {
                if r != 15 {
                    // A run without EOB or ZRL meaning: leave it to the exact path.
                    break entry(used, adv, false);
                }
                (16, 0)
            } else {
                (r + 1, s)
            };
            // adv = 0 with no EOB can't happen; keep limit < 64 so it stays a real bound.
            if used + len + extra > AC_BITS || adv + step > 63 {
                break entry(used, adv, false);
            }
            used += len + extra;
            adv += step;
        };
    }
    out
}

/// DC table entry: a code and its magnitude bits that fit the window in one go give
/// `total bits | DC_FULL | difference << 16`; a code that fits but whose magnitude bits do not
/// gives `code length << 8 | magnitude size` (`DC_FULL` clear); 0 = longer code (exact path).
const DC_FULL: u32 = 1 << 7;

fn dc_table(t: &Canonical) -> Box<[u32; 1 << DC_BITS]> {
    let mut out = Box::new([0u32; 1 << DC_BITS]);
    for &(code, len, s) in &t.codes {
        let (len, s) = (len as u32, s as u32);
        if len > DC_BITS {
            continue;
        }
        let lo = (code << (DC_BITS - len)) as usize;
        let span = 1usize << (DC_BITS - len);
        for (i, slot) in out[lo..lo + span].iter_mut().enumerate() {
            *slot = if len + s <= DC_BITS {
                let v = (i as u32) >> (DC_BITS - len - s);
                let diff = extend(v, s) as i16 as u16 as u32;
                (len + s) | DC_FULL | diff << 16
            } else {
                len << 8 | s
            };
        }
    }
    out
}

/// Decoding tables of one Huffman table pair, shared by every image that uses the same DHT
/// contents (most encoders emit the standard tables, so building them is usually skipped).
struct Tables {
    dc: Canonical,
    ac: Canonical,
    dc_lut: Box<[u32; 1 << DC_BITS]>,
    ac_skip: Box<[u16; 1 << AC_BITS]>,
}

/// Tables for `dc` + `ac`, from a small per-thread cache.
fn tables(dc: &Canonical, ac: &Canonical) -> Rc<Tables> {
    const KEEP: usize = 8;
    thread_local! {
        static CACHE: RefCell<Vec<Rc<Tables>>> = const { RefCell::new(Vec::new()) };
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(i) = c
            .iter()
            .position(|t| t.dc.key == dc.key && t.ac.key == ac.key)
        {
            let t = c.remove(i);
            c.insert(0, t.clone());
            return t;
        }
        let t = Rc::new(Tables {
            dc_lut: dc_table(dc),
            ac_skip: ac_skip_table(ac),
            dc: dc.clone(),
            ac: ac.clone(),
        });
        c.insert(0, t.clone());
        c.truncate(KEEP);
        t
    })
}

/// `jpeg_idct_1x1` + the post-IDCT range-limit table of libjpeg (`prepare_range_limit_table`),
/// wrap-around included: index = value & 1023.
#[inline]
fn idct_1x1(coef: i16, q: i32) -> u8 {
    let v = (((coef as i32 * q) + 4) >> 3) & 1023;
    match v {
        0..=127 => (v + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (v - 896) as u8,
    }
}

/// MSB-first bit reader over the unstuffed scan, with a 64-bit accumulator refilled eight
/// bytes at a time (the bits below `n` are already the correct next bits, so refills simply
/// OR over them).
struct Bits<'a> {
    buf: &'a [u8],
    /// Next byte to load.
    ptr: usize,
    acc: u64,
    /// Valid bits at the top of `acc`.
    n: u32,
}

impl<'a> Bits<'a> {
    fn new(buf: &'a [u8], byte: usize) -> Self {
        let mut b = Bits {
            buf,
            ptr: byte,
            acc: 0,
            n: 0,
        };
        b.refill();
        b
    }

    /// Top up to at least 56 valid bits.
    #[inline(always)]
    fn refill(&mut self) {
        let w = u64::from_be_bytes(self.buf[self.ptr..self.ptr + 8].try_into().unwrap());
        self.acc |= w >> self.n;
        self.ptr += ((63 - self.n) >> 3) as usize;
        self.n |= 56;
    }

    #[inline(always)]
    fn peek(&self, k: u32) -> u32 {
        (self.acc >> (64 - k)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, k: u32) {
        self.acc <<= k;
        self.n -= k;
    }

    /// Bits consumed so far, as an absolute bit position in `buf`.
    fn pos(&self) -> usize {
        self.ptr * 8 - self.n as usize
    }
}

#[inline(always)]
fn extend(v: u32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < 1 << (s - 1) {
        v as i32 - (1 << s) + 1
    } else {
        v as i32
    }
}

/// Remove byte stuffing from the entropy-coded data; one range per restart interval. Returns
/// `None` unless the scan ends with exactly `n_segments` intervals followed by EOI.
fn unstuff(
    b: &[u8],
    start: usize,
    clean: &mut Vec<u8>,
    segs: &mut Vec<(usize, usize)>,
) -> Option<()> {
    clean.clear();
    segs.clear();
    let (mut i, mut seg_start, mut next_rst) = (start, 0usize, 0u8);
    loop {
        let ff = i + memchr::memchr(0xFF, &b[i..])?;
        clean.extend_from_slice(&b[i..ff]);
        let mut j = ff + 1;
        while *b.get(j)? == 0xFF {
            j += 1;
        }
        let m = b[j];
        if m == 0 {
            if j != ff + 1 {
                return None; // FF FF 00: legal but odd; let libjpeg have it
            }
            clean.push(0xFF);
        } else if (0xD0..=0xD7).contains(&m) {
            if m != 0xD0 + next_rst {
                return None;
            }
            next_rst = (next_rst + 1) & 7;
            segs.push((seg_start, clean.len()));
            seg_start = clean.len();
        } else if m == 0xD9 {
            segs.push((seg_start, clean.len()));
            clean.resize(clean.len() + PAD, 0);
            return Some(());
        } else {
            return None;
        }
        i = j + 1;
    }
}

/// The 1/8-scale grayscale image libjpeg would give, or `None` to fall back to libjpeg (also
/// when 1/8 scale would make a side shorter than `min_side`).
pub(super) fn decode_dc_gray(bytes: &[u8], min_side: u32) -> Option<Gray> {
    let h = parse_header(bytes)?;
    if h.width.div_ceil(8) < min_side || h.height.div_ceil(8) < min_side {
        return None;
    }
    let y = h.comps[0];
    let (hmax, vmax) = h
        .comps
        .iter()
        .fold((0, 0), |a, c| (a.0.max(c.h), a.1.max(c.v)));
    let rgb_ids = h.comps.iter().map(|c| c.id).eq(*b"RGB");
    let ok_color = match h.comps.len() {
        1 => true,
        // libjpeg calls these YCbCr unless an Adobe marker or R,G,B ids say otherwise.
        3 => !h.adobe && !rgb_ids,
        _ => false,
    };
    let blocks: u32 = h
        .scan
        .iter()
        .map(|s| {
            let c = h.comps[s.0];
            c.h as u32 * c.v as u32
        })
        .sum();
    if !ok_color || h.scan.len() != h.comps.len() || y.h != hmax || y.v != vmax || blocks > 10 {
        return None;
    }
    let q = h.qdc[y.tq as usize]? as i32;
    if q > i16::MAX as i32 {
        return None;
    }
    let interleaved = h.scan.len() > 1;
    // One MCU in stream order: per scan component, its tables and its blocks (h × v when
    // interleaved, else one); only Y's DC values are needed, the rest is skipped.
    let mut plan = Vec::with_capacity(h.scan.len());
    for &(ci, td, ta) in &h.scan {
        let dc = h.dc[td].as_ref()?;
        if dc.vals.iter().any(|&s| s > 11) {
            return None;
        }
        let c = h.comps[ci];
        let n = if interleaved {
            c.h as usize * c.v as usize
        } else {
            1
        };
        plan.push((ci == 0, n, tables(dc, h.ac[ta].as_ref()?)));
    }
    let (w, ht) = (h.width, h.height);
    let (out_w, out_h) = (w.div_ceil(8) as usize, ht.div_ceil(8) as usize);
    let (mcux, mcuy) = if interleaved {
        (w.div_ceil(8 * hmax as u32), ht.div_ceil(8 * vmax as u32))
    } else {
        (w.div_ceil(8), ht.div_ceil(8))
    };
    let total = mcux as u64 * mcuy as u64;
    let per_seg = if h.restart == 0 {
        total
    } else {
        h.restart as u64
    };
    let (yh, yv) = if interleaved {
        (y.h as usize, y.v as usize)
    } else {
        (1, 1)
    };

    /// The unstuffed scan and its restart intervals, reused across images.
    type Scratch = (Vec<u8>, Vec<(usize, usize)>);
    thread_local! {
        static BUF: RefCell<Scratch> = Default::default();
    }
    BUF.with(|cell| {
        let (clean, segs) = &mut *cell.borrow_mut();
        unstuff(bytes, h.data_start, clean, segs)?;
        if segs.len() as u64 != total.div_ceil(per_seg) {
            return None;
        }
        let mut px = vec![0u8; out_w * out_h];
        // Y's DC values of one MCU, in block order (at most 4 × 4).
        let mut ys = [0i16; 16];
        let (mut mx, mut my, mut mcu) = (0usize, 0usize, 0u64);
        for &(s0, s1) in segs.iter() {
            let end = s1 * 8;
            let mut bits = Bits::new(clean, s0);
            let mut pred = 0i32;
            for _ in 0..per_seg.min(total - mcu) {
                if bits.pos() > end {
                    return None;
                }
                for (is_y, n, t) in &plan {
                    if *is_y {
                        for v in &mut ys[..*n] {
                            pred = pred.wrapping_add(dc_diff(&mut bits, t)?);
                            *v = pred as i16;
                            skip_ac(&mut bits, t)?;
                        }
                    } else {
                        for _ in 0..*n {
                            // Chroma: the value is not needed, only its bits consumed.
                            dc_diff(&mut bits, t)?;
                            skip_ac(&mut bits, t)?;
                        }
                    }
                }
                for (i, &v) in ys[..yh * yv].iter().enumerate() {
                    let (x, y) = (mx * yh + i % yh, my * yv + i / yh);
                    if x < out_w && y < out_h {
                        px[y * out_w + x] = idct_1x1(v, q);
                    }
                }
                mcu += 1;
                mx += 1;
                if mx == mcux as usize {
                    mx = 0;
                    my += 1;
                }
            }
            if bits.pos() > end {
                return None;
            }
        }
        Some(Gray {
            width: out_w as u32,
            height: out_h as u32,
            px,
        })
    })
}

/// A block's DC difference. `None` on an invalid code.
#[inline(always)]
fn dc_diff(b: &mut Bits<'_>, t: &Tables) -> Option<i32> {
    b.refill();
    let e = t.dc_lut[b.peek(DC_BITS) as usize];
    if e & DC_FULL != 0 {
        b.consume(e & 0x1F);
        return Some((e >> 16) as u16 as i16 as i32);
    }
    let (len, s) = if e != 0 {
        (e >> 8, e & 0xFF)
    } else {
        let (l, s) = t.dc.decode_slow(b.acc)?;
        (l, s as u32)
    };
    b.consume(len);
    if s == 0 {
        return Some(0);
    }
    let v = b.peek(s);
    b.consume(s);
    Some(extend(v, s))
}

/// Skip a block's AC codes. `None` on an invalid code or a run past coefficient 63 (libjpeg
/// tolerates those; the fallback reproduces whatever it does).
#[inline(always)]
fn skip_ac(b: &mut Bits<'_>, t: &Tables) -> Option<()> {
    let mut k = 1u32;
    while k < 64 {
        if b.n < AC_BITS {
            b.refill();
        }
        let e = t.ac_skip[b.peek(AC_BITS) as usize] as u32;
        let limit = (e >> 5) & 0x7F;
        if k <= limit {
            b.consume(e & 0x1F);
            if e >> 12 != 0 {
                break;
            }
            k += 64 - limit;
            continue;
        }
        // Long code, or a group that would run past the block: one symbol, exactly.
        b.refill();
        let (l, rs) = t.ac.decode_slow(b.acc)?;
        let (r, s) = (rs as u32 >> 4, rs as u32 & 15);
        b.consume(l + s);
        if s != 0 {
            k += r + 1;
            if k > 64 {
                return None;
            }
        } else if r == 15 {
            k += 16;
            if k > 64 {
                return None;
            }
        } else {
            break; // EOB (r == 0); EOBn only exists in progressive scans
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::super::jpeg::{decode_gray_libjpeg, JpegDecode};
    use super::super::test_jpeg::{encode, picture, Enc, SAMPLINGS};
    use super::super::TestRng;
    use super::*;

    fn reference(jpg: &[u8]) -> Result<Gray, super::super::ImageError> {
        decode_gray_libjpeg(jpg, JpegDecode::Fast { min_side: 32 })
    }

    #[test]
    fn equals_libjpeg_eighth_scale_on_baseline_files() {
        let mut rng = TestRng(0x9E37_79B9_7F4A_7C15);
        let mut checked = 0;
        for case in 0..60 {
            let e = Enc {
                quality: [5, 30, 50, 75, 85, 90, 95, 100][case % 8],
                samp: SAMPLINGS[case % SAMPLINGS.len()],
                restart: [0, 0, 1, 7, 64][case % 5],
                optimize: case % 3 == 0,
                progressive: false,
                rgb: false,
            };
            let (w, h) = (256 + rng.below(300) as u32, 256 + rng.below(300) as u32);
            let px = picture(w, h, if e.samp.is_some() { 3 } else { 1 }, &mut rng);
            let jpg = encode(&px, w, h, e);
            let ours = decode_dc_gray(&jpg, 32).unwrap_or_else(|| panic!("fell back on {e:?}"));
            let want = reference(&jpg).unwrap();
            assert_eq!(
                (ours.width, ours.height),
                (want.width, want.height),
                "{e:?}"
            );
            assert!(ours.px == want.px, "pixels differ for {e:?} at {w}x{h}");
            checked += 1;
        }
        assert_eq!(checked, 60);
    }

    #[test]
    fn falls_back_where_it_must() {
        let mut rng = TestRng(7);
        let (w, h) = (300, 280);
        let px = picture(w, h, 3, &mut rng);
        let base = Enc {
            quality: 85,
            samp: Some([(2, 2), (1, 1), (1, 1)]),
            restart: 0,
            optimize: false,
            progressive: false,
            rgb: false,
        };
        let prog = encode(
            &px,
            w,
            h,
            Enc {
                progressive: true,
                ..base
            },
        );
        assert!(decode_dc_gray(&prog, 32).is_none(), "progressive");
        // Chroma sampled finer than luma: libjpeg upsamples Y, which this path does not do.
        let odd = encode(
            &px,
            w,
            h,
            Enc {
                samp: Some([(1, 1), (2, 2), (1, 1)]),
                ..base
            },
        );
        assert!(decode_dc_gray(&odd, 32).is_none(), "Y not max-sampled");
        let ok = encode(&px, w, h, base);
        assert!(decode_dc_gray(&ok, 32).is_some());
        // 1/8 scale would give a side under min_side.
        assert!(decode_dc_gray(&ok, 40).is_none());
        // No EOI: libjpeg calls it truncated; so must the fallback.
        assert!(decode_dc_gray(&ok[..ok.len() - 2], 32).is_none());
    }

    /// Whatever the damage, a `Some` must be exactly what libjpeg produces.
    #[test]
    fn corrupt_streams_never_disagree_with_libjpeg() {
        let mut rng = TestRng(0xDEAD_BEEF);
        let mut agreed = 0;
        for case in 0..400 {
            let e = Enc {
                quality: 40 + rng.below(60) as i32,
                samp: SAMPLINGS[case % SAMPLINGS.len()],
                restart: [0, 3][case % 2],
                optimize: case % 4 == 0,
                progressive: false,
                rgb: false,
            };
            let (w, h) = (256 + rng.below(64) as u32, 256 + rng.below(64) as u32);
            let px = picture(w, h, if e.samp.is_some() { 3 } else { 1 }, &mut rng);
            let mut jpg = encode(&px, w, h, e);
            let n = jpg.len();
            match rng.below(4) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = 200 + rng.below(n as u64 - 202) as usize;
                        jpg[i] ^= 1 << rng.below(8);
                    }
                }
                1 => jpg.truncate(200 + rng.below(n as u64 - 200) as usize),
                2 => {
                    let i = 200 + rng.below(n as u64 - 202) as usize;
                    jpg[i] = 0xFF;
                    jpg[i + 1] = [0xD0, 0xD3, 0xD9, 0xC4, 0x00, 0xFF][rng.below(6) as usize];
                }
                _ => {
                    let i = 200 + rng.below(n as u64 - 202) as usize;
                    jpg.drain(i..i + 1 + rng.below(3) as usize);
                }
            }
            if let Some(ours) = decode_dc_gray(&jpg, 32) {
                let want = reference(&jpg).expect("libjpeg rejects what the DC path accepted");
                assert!(
                    ours.px == want.px && ours.width == want.width,
                    "case {case}: {e:?}"
                );
                agreed += 1;
            }
        }
        // Flipped AC bits usually still decode: make sure the comparison really ran.
        assert!(agreed > 20, "only {agreed} corrupt files took the DC path");
    }

    #[test]
    fn range_limit_matches_libjpeg_table() {
        // In range: value + 128; saturate within ±512; wrap (mod 1024) beyond, as libjpeg's
        // table does.
        assert_eq!(idct_1x1(0, 1), 128);
        assert_eq!(idct_1x1(-1024, 1), 0);
        assert_eq!(idct_1x1(1016, 1), 255);
        assert_eq!(idct_1x1(-8 * 129, 1), 0);
        assert_eq!(idct_1x1(8 * 600, 1), 0); // 600 & 1023 = 600 → zero segment
        assert_eq!(idct_1x1(-8 * 1000, 1), 152); // -1000 & 1023 = 24 → 152
    }
}
