//! `bucketer`: native-resolution token lengths, resolution buckets and offline sequence packing.
//!
//! This crate is filled by the packing work; for now it holds the exact `smart_resize` used to
//! turn an image's native size into its LLM token count (see `../shared/REFERENCE.md` §2).

pub mod resize;

pub use resize::{smart_resize, ResizeError};
