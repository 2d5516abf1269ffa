//! `llava-pack dedup`: near-duplicate removal over the perceptual hashes a build recorded.
//!
//! - [`search`]: exact Hamming range search (every pair within `d`, multi-index hashing).
//! - [`cluster`]: union-find components and the deterministic keeper rule.

pub mod cluster;
pub mod search;

pub use search::{near_duplicates, Pair, SearchError, MAX_DISTANCE};
