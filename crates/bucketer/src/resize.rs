//! Exact port of the Qwen2-VL `smart_resize` rule (REFERENCE §2).
//!
//! Rounding follows Python: `round` is ties-to-even, and the min/max-pixel branches use the
//! same f64 operations in the same order as the reference, so results are bit-identical.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum ResizeError {
    #[error("image has a zero side ({height}x{width})")]
    Empty { height: u32, width: u32 },
    #[error("absolute aspect ratio must be smaller than 200, got {ratio:.1} ({height}x{width})")]
    AspectRatio { height: u32, width: u32, ratio: f64 },
}

/// Python's `round(n / factor) * factor` for non-negative integers (banker's rounding on ties).
fn round_to_multiple(n: u64, factor: u64) -> u64 {
    let (q, r) = (n / factor, n % factor);
    let twice = 2 * r;
    let q = if twice > factor || (twice == factor && q % 2 == 1) {
        q + 1
    } else {
        q
    };
    q * factor
}

/// Returns the `(height, width)` the image is resized to: both multiples of `factor`
/// (patch 14 × merge 2 = 28), with `min_pixels ≤ h·w ≤ max_pixels` where possible.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), ResizeError> {
    if height == 0 || width == 0 {
        return Err(ResizeError::Empty { height, width });
    }
    let (h, w, f) = (height as u64, width as u64, factor as u64);
    let ratio = h.max(w) as f64 / h.min(w) as f64;
    if ratio > 200.0 {
        return Err(ResizeError::AspectRatio {
            height,
            width,
            ratio,
        });
    }
    // No clamp to `factor` here: transformers (5.x) lets a side ≤ factor/2 round to 0, which
    // sends the image to the min-pixel branch; clamping first would skip that branch.
    let mut h_bar = round_to_multiple(h, f);
    let mut w_bar = round_to_multiple(w, f);
    let (hf, wf, ff) = (h as f64, w as f64, f as f64);
    if h_bar * w_bar > max_pixels {
        let beta = ((hf * wf) / max_pixels as f64).sqrt();
        h_bar = (f as f64 * (hf / beta / ff).floor()).max(ff) as u64;
        w_bar = (f as f64 * (wf / beta / ff).floor()).max(ff) as u64;
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (hf * wf)).sqrt();
        h_bar = (ff * (hf * beta / ff).ceil()) as u64;
        w_bar = (ff * (wf * beta / ff).ceil()) as u64;
    }
    Ok((h_bar as u32, w_bar as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_to_even() {
        // 14/28 = 0.5 → 0 → clamped to 28; 42/28 = 1.5 → 2; 70/28 = 2.5 → 2.
        assert_eq!(round_to_multiple(14, 28), 0);
        assert_eq!(round_to_multiple(42, 28), 56);
        assert_eq!(round_to_multiple(70, 28), 56);
        assert_eq!(round_to_multiple(71, 28), 84);
    }

    #[test]
    fn known_sizes() {
        let (min, max) = (3136, 2_560_000);
        assert_eq!(smart_resize(512, 512, 28, min, max), Ok((504, 504)));
        // Large images are scaled down below max_pixels.
        let (h, w) = smart_resize(4000, 3000, 28, min, max).unwrap();
        assert!((h as u64) * (w as u64) <= max);
        assert_eq!((h % 28, w % 28), (0, 0));
        // Tiny images are scaled up to at least min_pixels.
        let (h, w) = smart_resize(10, 10, 28, min, max).unwrap();
        assert!((h as u64) * (w as u64) >= min);
    }

    #[test]
    fn a_side_rounding_to_zero_takes_the_min_pixel_branch() {
        // transformers: round(10/28) = 0 → 0·196 < min_pixels → scaled up: (28, 252).
        assert_eq!(smart_resize(10, 200, 28, 3136, 2_560_000), Ok((28, 252)));
    }

    #[test]
    fn rejects_extreme_aspect() {
        assert!(matches!(
            smart_resize(10, 2500, 28, 3136, 2_560_000),
            Err(ResizeError::AspectRatio { .. })
        ));
        assert!(matches!(
            smart_resize(0, 5, 28, 1, 2),
            Err(ResizeError::Empty { .. })
        ));
    }
}
