//! `packer`: the streaming corpus → WebDataset shard builder behind `llava-pack build`.
//!
//! Pipeline (see [`build`]):
//! 1. [`input`] streams records from JSONL (`.jsonl`, `.jsonl.zst`) or Parquet files and
//!    normalises the three supported sample shapes (caption, LLaVA conversations, messages).
//! 2. Worker threads (rayon) load each sample's images, [`image::probe`] their headers,
//!    compute content and perceptual hashes ([`image::analyze`]) and optionally re-encode
//!    oversized images.
//! 3. A single writer consumes results in input order — so the output never depends on the
//!    worker count — drops exact duplicates, assigns unique keys and appends samples to
//!    size-bounded tar shards ([`shard`]), each with a `.tar.idx` and, at the end, the
//!    megatron-energon `.nv-meta/` folder, `manifest.json`, `stats.json` and `rejects.jsonl`.
//! 4. After every finished shard a checkpoint is written atomically, so `--resume` after a
//!    crash (even `kill -9`) completes the job with byte-identical output.
//!
//! The on-disk format is documented in `docs/format.md` and versioned by [`FORMAT_VERSION`].

pub mod build;
pub mod dedup;
pub mod error;
pub mod image;
pub mod input;
pub mod pack;
pub mod reader;
pub mod shard;
pub mod text;

pub use build::{build, BuildOptions, BuildSummary, DedupMode, Progress};
pub use error::{PackError, Result};
pub use image::PhashMode;
pub use pack::{buckets, pack, BucketsOptions, PackOptions, PackSummary};

/// Version of the shard/manifest layout written by this crate (see `docs/format.md`).
pub const FORMAT_VERSION: u32 = 1;
