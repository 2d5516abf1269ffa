//! `llava-pack buckets`: resolution / token-count distribution of built shards and the
//! aspect-ratio × token-count buckets, as `buckets.json` (PNG plots are drawn by Python from it).
//!
//! Bucket edges (documented in `buckets.json` itself):
//! - aspect ratio = width / height of a sample's first image, bins split at
//!   [`ASPECT_EDGES`] (1/4 … 4, a "square" bin [0.9, 1.12)); text-only samples form their own
//!   aspect class `text-only`;
//! - token count = the sample's total sequence length, bins split at [`TOKEN_EDGES`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{length_counter, scan_all, source_shards};
use crate::build::progress::{Counters, Reporter};
use crate::build::state::write_atomic;
use crate::build::Progress;
use crate::error::{PackError, Result};

pub const ASPECT_EDGES: [f64; 8] = [0.25, 0.5, 0.67, 0.9, 1.12, 1.5, 2.0, 4.0];
pub const TOKEN_EDGES: [u32; 7] = [256, 512, 1024, 2048, 4096, 8192, 16384];
/// Fine histograms for plots.
const LOG2_ASPECT_MIN: f64 = -3.0;
const LOG2_ASPECT_STEP: f64 = 0.1;
const LOG2_ASPECT_BINS: usize = 60;
const SIZE_BIN_PX: u32 = 128;
const SIZE_BINS: usize = 32;
const TOKEN_BIN: u32 = 128;
const TOKEN_BINS: usize = 128;

#[derive(Debug, Clone)]
pub struct BucketsOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub tokenizer: PathBuf,
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub workers: usize,
    pub progress: Progress,
    /// `drop.txt` of `llava-pack dedup`: those samples are left out of the distribution.
    pub exclude: Option<PathBuf>,
}

fn label<T: std::fmt::Display>(edges: &[T], i: usize) -> String {
    match (i.checked_sub(1).map(|j| &edges[j]), edges.get(i)) {
        (None, Some(hi)) => format!("[0, {hi})"),
        (Some(lo), Some(hi)) => format!("[{lo}, {hi})"),
        (Some(lo), None) => format!("[{lo}, inf)"),
        (None, None) => "all".into(),
    }
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Compute the distribution and write `output/buckets.json`; returns its content.
pub fn buckets(opts: &BucketsOptions, cancel: &AtomicBool) -> Result<Value> {
    let sources = source_shards(&opts.input)?;
    let counter = length_counter(
        &opts.tokenizer,
        opts.min_pixels,
        opts.max_pixels,
        bucketer::CaptionFormat::default(),
    )?;
    let workers = match opts.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let counters = Arc::new(Counters::default());
    let total: u64 = sources
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let reporter = Reporter::start(opts.progress, counters.clone(), Some(total));
    let scans = scan_all(&sources, &counter, workers, &counters, cancel);
    reporter.stop();
    let scans = scans?;

    let mut grid: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
    let mut aspect_hist = vec![0u64; LOG2_ASPECT_BINS];
    let mut size_hist = vec![vec![0u64; SIZE_BINS]; SIZE_BINS];
    let mut token_hist = vec![0u64; TOKEN_BINS + 1];
    let mut image_token_hist = vec![0u64; TOKEN_BINS + 1];
    let mut lengths = Vec::new();
    let mut long_sides = Vec::new();
    let (mut images, mut invalid) = (0u64, 0u64);
    let text_only = ASPECT_EDGES.len() + 1;
    let exclude = match &opts.exclude {
        Some(x) => crate::dedup::read_exclude(x)?,
        None => Default::default(),
    };
    let mut excluded = 0u64;
    for m in scans.iter().flat_map(|s| &s.samples) {
        if exclude.contains_key(&m.key) {
            excluded += 1;
            continue;
        }
        if m.error.is_some() {
            invalid += 1;
            continue;
        }
        lengths.push(m.length);
        token_hist[((m.length / TOKEN_BIN) as usize).min(TOKEN_BINS)] += 1;
        let aspect = match m.images.first() {
            Some(im) if im.height > 0 => {
                let r = im.width as f64 / im.height as f64;
                ASPECT_EDGES
                    .iter()
                    .position(|&e| r < e)
                    .unwrap_or(ASPECT_EDGES.len())
            }
            _ => text_only,
        };
        let tok = TOKEN_EDGES
            .iter()
            .position(|&e| m.length < e)
            .unwrap_or(TOKEN_EDGES.len());
        let e = grid.entry((aspect, tok)).or_default();
        e.0 += 1;
        e.1 += m.length as u64;
        for im in &m.images {
            images += 1;
            if im.width == 0 || im.height == 0 {
                continue;
            }
            let l2 = (im.width as f64 / im.height as f64).log2();
            let b = ((l2 - LOG2_ASPECT_MIN) / LOG2_ASPECT_STEP)
                .floor()
                .clamp(0.0, (LOG2_ASPECT_BINS - 1) as f64);
            aspect_hist[b as usize] += 1;
            let (hb, wb) = (
                (im.height / SIZE_BIN_PX) as usize,
                (im.width / SIZE_BIN_PX) as usize,
            );
            size_hist[hb.min(SIZE_BINS - 1)][wb.min(SIZE_BINS - 1)] += 1;
            image_token_hist[((im.tokens / TOKEN_BIN) as usize).min(TOKEN_BINS)] += 1;
            long_sides.push(im.width.max(im.height));
        }
    }
    lengths.sort_unstable();
    long_sides.sort_unstable();
    let dist = |v: &[u32]| {
        json!({
            "min": v.first().copied().unwrap_or(0), "p50": percentile(v, 0.5), "p90": percentile(v, 0.9),
            "p99": percentile(v, 0.99), "max": v.last().copied().unwrap_or(0),
            "mean": v.iter().map(|&x| x as f64).sum::<f64>() / (v.len().max(1)) as f64,
        })
    };
    let bucket_list: Vec<Value> = grid
        .iter()
        .map(|(&(a, t), &(n, sum))| {
            let aspect = if a == text_only {
                "text-only".to_string()
            } else {
                label(&ASPECT_EDGES, a)
            };
            json!({"aspect_ratio": aspect, "tokens": label(&TOKEN_EDGES, t), "samples": n,
                   "total_tokens": sum, "mean_tokens": sum as f64 / n as f64})
        })
        .collect();
    let doc = json!({
        "format_version": crate::FORMAT_VERSION,
        "input": opts.input.display().to_string(),
        "source_shards": sources.len(),
        "samples": lengths.len(),
        "invalid_samples": invalid,
        "excluded_samples": excluded,
        "images": images,
        "min_pixels": opts.min_pixels,
        "max_pixels": opts.max_pixels,
        "aspect_ratio_edges": ASPECT_EDGES,
        "token_edges": TOKEN_EDGES,
        "buckets": bucket_list,
        "tokens": dist(&lengths),
        "native_long_side": dist(&long_sides),
        "histograms": {
            "log2_aspect_ratio": {"start": LOG2_ASPECT_MIN, "step": LOG2_ASPECT_STEP, "counts": aspect_hist},
            "native_size": {"bin_px": SIZE_BIN_PX, "rows": "height", "cols": "width", "counts": size_hist},
            "sample_tokens": {"bin": TOKEN_BIN, "counts": token_hist},
            "image_tokens": {"bin": TOKEN_BIN, "counts": image_token_hist},
        },
    });
    std::fs::create_dir_all(&opts.output).map_err(|e| PackError::output(&opts.output, e))?;
    let p = opts.output.join("buckets.json");
    write_atomic(&p, &serde_json::to_vec_pretty(&doc).unwrap())
        .map_err(|e| PackError::output(&p, e))?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_percentiles() {
        assert_eq!(label(&TOKEN_EDGES, 0), "[0, 256)");
        assert_eq!(label(&TOKEN_EDGES, 1), "[256, 512)");
        assert_eq!(label(&TOKEN_EDGES, 7), "[16384, inf)");
        assert_eq!(percentile(&[1, 2, 3, 4, 5], 0.5), 3);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
