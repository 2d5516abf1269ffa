//! `llava-pack dedup`: near-duplicate removal and decontamination over the perceptual hashes a
//! build recorded (see `docs/format.md` §13 for the output files).
//!
//! - [`search`]: exact Hamming range search (every pair within `d`, multi-index hashing).
//! - [`cluster`]: union-find components and the keep rule (`--keep`) within one cluster.
//! - [`keepers`]: the keeper of each cluster under `--multi-image`, re-picked when dropped.
//! - [`corpus`]: the hashes of a build output, from its index and per-sample json only.
//! - [`verify`]: `--verify dhash`, the second hash a candidate pair must also agree on.
//! - [`rewrite`]: `--rewrite OUT/`, a shard directory without the dropped samples.
//! - [`exclude`]: reading `drop.txt` for `--exclude` (pack, buckets).
//! - [`job`]: the job itself and its all-or-nothing outputs.
//! - [`read`]: the job in steps (open, read here or add rows read by Ray tasks, run); [`wire`]:
//!   the bytes those tasks send back.

pub mod cluster;
pub mod corpus;
pub mod exclude;
pub mod job;
pub mod keepers;
mod outputs;
mod progress;
pub mod read;
pub mod rewrite;
pub mod search;
pub mod verify;
pub mod wire;

pub use cluster::{KeepRule, UnionFind};
pub use exclude::read_exclude;
pub use job::{dedup, DedupOptions, DedupSummary, MultiImage, Reference, DEFAULT_MAX_DISTANCE};
pub use read::DedupJob;
pub use search::{near_duplicates, Pair, SearchError, MAX_DISTANCE};
pub use verify::{Verify, DEFAULT_VERIFY_DISTANCE};
