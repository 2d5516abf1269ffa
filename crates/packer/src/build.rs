//! The build job: ordered parallel processing, dedup, sharding, checkpoints and resume.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::image::PhashMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    /// Drop samples whose images exactly repeat an earlier sample's (default).
    Exact,
    /// Keep everything.
    Off,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub input: String,
    pub output: PathBuf,
    pub image_root: Option<PathBuf>,
    pub prefix: String,
    pub shard_size: u64,
    pub samples_per_shard: u64,
    pub workers: usize,
    pub phash: PhashMode,
    pub dhash: bool,
    pub dedup: DedupMode,
    pub max_pixels: Option<u64>,
    pub max_image_pixels: u64,
    pub resume: bool,
    pub overwrite: bool,
    pub progress: Progress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Progress bar on a terminal, periodic log lines otherwise.
    Auto,
    Bar,
    Log,
    Quiet,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub records: u64,
    pub samples: u64,
    pub rejects: u64,
    pub shards: u64,
    pub bytes: u64,
    pub seconds: f64,
}

pub fn build(_opts: &BuildOptions, _cancel: &std::sync::atomic::AtomicBool) -> Result<BuildSummary> {
    todo!()
}
