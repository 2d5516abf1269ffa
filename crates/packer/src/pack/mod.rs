//! `llava-pack pack`: offline sequence packing of built shards into packed shards.
//!
//! 1. Pass 1 (parallel over source shards, merged in shard order): tar headers and the
//!    `{key}.json` of every sample → token length and member offsets ([`scan`]).
//! 2. Plan: `bucketer::pack` (deterministic best-fit-decreasing, optional image-token cap),
//!    then the exact byte layout of every pack and output shard ([`layout`]).
//! 3. Skeleton + pass 2 ([`write`]): output files preallocated, headers written, then each
//!    source shard is read once, in order, and its bytes are written at their planned offsets.
//!    A checkpoint after every finished source shard makes `--resume` redo only the others.
//! 4. Finalize: fsync, sha256, `.tar.idx`, rename into place, `.nv-meta/`, `manifest.json`,
//!    `pack_stats.json`, `rejects.jsonl`.
//!
//! The output depends only on the source shards and the options, never on `--workers`.

mod buckets;
mod job;
mod layout;
mod scan;
pub(crate) mod wire;
mod write;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::Serialize;
use serde_json::Value;

pub use buckets::{buckets, BucketsOptions};
pub use job::{finalize_shard, pack, sha256_file, PackJob};
pub use layout::OutShard;
pub use scan::{scan_shard, SampleMeta, ShardScan};
pub use wire::{decode_scan, decode_work, encode_scan, encode_work};
pub use write::{copy_work, CopyWork};

use crate::build::Progress;
use crate::error::{PackError, Result};

#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Directory holding the source `*.tar` shards (from `llava-pack build`).
    pub input: PathBuf,
    pub output: PathBuf,
    /// HF `tokenizer.json` (copied into the output as `tokenizer.json`).
    pub tokenizer: PathBuf,
    /// Training string of caption samples (REFERENCE §2: the pretraining form by default).
    pub caption_format: bucketer::CaptionFormat,
    pub max_len: u32,
    pub max_image_tokens: Option<u32>,
    pub min_pixels: u64,
    pub max_pixels: u64,
    /// Output shard prefix: `{prefix}-{000000}.tar`.
    pub prefix: String,
    pub packs_per_shard: u64,
    pub shard_size: u64,
    /// Worker threads; 0 = all cores.
    pub workers: usize,
    pub resume: bool,
    pub overwrite: bool,
    pub progress: Progress,
    /// `drop.txt` of `llava-pack dedup` (or any key list): those samples are not packed and
    /// are reported as rejects with the list's reason.
    pub exclude: Option<PathBuf>,
}

impl PackOptions {
    pub fn new(
        input: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
        tokenizer: impl Into<PathBuf>,
    ) -> Self {
        PackOptions {
            input: input.into(),
            output: output.into(),
            tokenizer: tokenizer.into(),
            caption_format: bucketer::CaptionFormat::default(),
            max_len: 8192,
            max_image_tokens: None,
            min_pixels: 3136,
            max_pixels: 2_560_000,
            prefix: "pack".into(),
            packs_per_shard: 1000,
            shard_size: 1 << 30,
            workers: 0,
            resume: false,
            overwrite: false,
            progress: Progress::Auto,
            exclude: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PackError::InvalidOption(m));
        if self.max_len == 0 {
            return bad("--max-len must be positive".into());
        }
        if self.max_image_tokens == Some(0) {
            return bad("--max-image-tokens must be positive".into());
        }
        if self.min_pixels > self.max_pixels {
            return bad("--min-pixels must not exceed --max-pixels".into());
        }
        crate::build::check_prefix(&self.prefix)?;
        if self.packs_per_shard == 0 {
            return bad("--packs-per-shard must be at least 1".into());
        }
        if self.shard_size < 4096 {
            return bad(format!(
                "--shard-size {} is below the 4096-byte minimum",
                self.shard_size
            ));
        }
        if self.workers > 1024 {
            return bad(format!(
                "--workers {} is not a sensible thread count",
                self.workers
            ));
        }
        if self.resume && self.overwrite {
            return bad("--resume and --overwrite exclude each other".into());
        }
        Ok(())
    }

    pub fn worker_count(&self) -> usize {
        crate::build::resolve_workers(self.workers)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PackSummary {
    pub samples: u64,
    pub packs: u64,
    pub rejects: u64,
    pub shards: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Source shards already copied by an earlier run (resume).
    pub resumed_shards: u64,
    pub output: PathBuf,
    /// The content of `pack_stats.json`.
    pub stats: Value,
}

/// Source shards of an input directory: `*.tar` (not `*.partial`), sorted by name.
pub fn source_shards(input: &std::path::Path) -> Result<Vec<PathBuf>> {
    if !input.is_dir() {
        return Err(PackError::input(input, "is not a directory of shards"));
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(input).map_err(|e| PackError::input(input, e))? {
        let p = e.map_err(|e| PackError::input(input, e))?.path();
        if p.extension().is_some_and(|x| x == "tar") && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(PackError::input(input, "holds no *.tar shards"));
    }
    Ok(out)
}

/// Pass 1 over all shards on `workers` threads, in shard order.
pub(crate) fn scan_all(
    shards: &[PathBuf],
    counter: &bucketer::LengthCounter,
    workers: usize,
    counters: &crate::build::progress::Counters,
    cancel: &AtomicBool,
) -> Result<Vec<ShardScan>> {
    use rayon::prelude::*;
    use std::sync::atomic::Ordering;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("llava-pack-{i}"))
        .build()
        .map_err(|e| PackError::InvalidOption(format!("--workers: {e}")))?;
    pool.install(|| {
        shards
            .par_iter()
            .map(|p| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(PackError::Cancelled);
                }
                let s = scan_shard(p, counter).map_err(|e| PackError::input(p, e))?;
                counters
                    .records
                    .fetch_add(s.samples.len() as u64, Ordering::Relaxed);
                counters.bytes.fetch_add(s.bytes, Ordering::Relaxed);
                counters.shards.fetch_add(1, Ordering::Relaxed);
                Ok(s)
            })
            .collect()
    })
}

/// The counter of `tokenizer` with default training strings except the caption format.
pub fn length_counter(
    tokenizer: &std::path::Path,
    min_pixels: u64,
    max_pixels: u64,
    caption_format: bucketer::CaptionFormat,
) -> Result<bucketer::LengthCounter> {
    let vision = bucketer::VisionConfig {
        min_pixels,
        max_pixels,
        ..Default::default()
    };
    let template = bucketer::TemplateOptions {
        caption_format,
        ..Default::default()
    };
    bucketer::LengthCounter::from_file(tokenizer, vision, template)
        .map_err(|e| PackError::input(tokenizer, e))
}
