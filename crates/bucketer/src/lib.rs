//! `bucketer`: native-resolution token lengths, resolution buckets and offline sequence packing.
//!
//! - [`resize`]: the exact Qwen2-VL `smart_resize` (REFERENCE §2), the source of image token
//!   counts.
//! - [`template`]: the training strings (the reference's pretraining form for captions, the
//!   Qwen2-VL chat template for conversations) as token segments, shared by length
//!   computation and the training loader.
//! - [`length`]: per-sample sequence lengths from a `tokenizer.json` and image sizes, without
//!   decoding images.
//! - [`pack`]: deterministic best-fit-decreasing sequence packing with an optional image-token
//!   cap per pack.
//! - [`tokenize`]: `input_ids` + `labels` of a sample from the same segments (training loader).

pub mod length;
pub mod pack;
pub mod resize;
pub mod template;
pub mod tokenize;

pub use length::{
    tokenizer_eos, upright_size, ImageGrid, LengthCounter, LengthError, SampleLength, VisionConfig,
};
pub use pack::{pack, PackConfig, Packing, RejectReason};
pub use resize::{smart_resize, ResizeError};
pub use template::{CaptionFormat, TemplateOptions};
pub use tokenize::{Tokenized, IGNORE};
