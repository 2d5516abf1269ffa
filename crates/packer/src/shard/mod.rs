//! Shard output: deterministic tar writing, `.tar.idx`, and the megatron-energon `.nv-meta/`.
//!
//! INTERFACE CONTRACT (used by `build.rs`; keep these signatures):
//! - A shard is written as `{name}.partial` and only renamed to `{name}` (together with its
//!   `{name}.idx`) by [`ShardWriter::finish`], after an fsync: a partial shard is never
//!   visible under its final name.
//! - Tar headers are deterministic (fixed mtime/uid/gid/mode), so the same samples always give
//!   byte-identical shards.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A finished shard, as listed in `manifest.json` and the build checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name relative to the output directory, e.g. `shard-000000.tar`.
    pub name: String,
    pub samples: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// One tar member of a sample: `{key}.{suffix}` (suffix e.g. `jpg`, `img0.png`, `json`).
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub suffix: &'a str,
    pub data: &'a [u8],
}

/// `{prefix}-{index:06}.tar`
pub fn shard_name(prefix: &str, index: u32) -> String {
    format!("{prefix}-{index:06}.tar")
}

/// Bytes a sample with members of these sizes occupies in a tar (headers + padding).
pub fn tar_sample_size(member_sizes: impl IntoIterator<Item = usize>) -> u64 {
    member_sizes.into_iter().map(|n| 512 + (n as u64).div_ceil(512) * 512).sum()
}

pub struct ShardWriter {
    _private: (),
}

impl ShardWriter {
    /// Start `dir/{shard_name(prefix, index)}.partial` (truncating any stale partial).
    pub fn create(_dir: &Path, _prefix: &str, _index: u32) -> io::Result<Self> {
        todo!("shard helper")
    }
    /// Append one sample (members adjacent, in the given order).
    pub fn append(&mut self, _key: &str, _members: &[Member<'_>]) -> io::Result<()> {
        todo!("shard helper")
    }
    /// Bytes written so far (excluding the end-of-archive blocks).
    pub fn bytes(&self) -> u64 {
        todo!("shard helper")
    }
    pub fn samples(&self) -> u64 {
        todo!("shard helper")
    }
    /// Write end-of-archive, fsync, write `.tar.idx`, rename both into place.
    pub fn finish(self) -> io::Result<ShardInfo> {
        todo!("shard helper")
    }
}

/// Write `.nv-meta/` for the finished `shards` of `dir` so megatron-energon opens `dir`
/// directly (all shards in the `train` split).
pub fn write_energon_meta(_dir: &Path, _shards: &[ShardInfo]) -> io::Result<()> {
    todo!("shard helper")
}
