//! Input: streaming record sources and sample normalisation.
//!
//! INTERFACE CONTRACT (used by `build.rs`; keep these signatures):
//! - [`open`] turns the `--input` argument (a file, or a glob such as `dir/*.parquet` or
//!   `parts/*.jsonl.zst`; matches sorted lexicographically) into a [`RecordSource`].
//! - The reader thread only splits records; [`parse`] (JSON parse, shape detection, path
//!   resolution) runs on worker threads. A record that cannot become a [`Sample`] yields
//!   `Err(reason)`: a reject, never a job error.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::error::Result;

/// One input record, in input order.
#[derive(Debug)]
pub struct Record {
    /// 0-based position in the whole input (across files); defines output order.
    pub index: u64,
    /// 1-based line number in its JSONL file, or 0-based row number in its Parquet file.
    pub line: u64,
    /// Index into [`RecordSource::files`].
    pub file: usize,
    pub payload: Payload,
}

#[derive(Debug)]
pub enum Payload {
    /// Raw bytes of one JSONL line (without the newline); may be invalid UTF-8/JSON.
    Json(Vec<u8>),
    /// A row already decoded from Parquet.
    Sample(Sample),
    /// The reader could not produce the record; the reason becomes a reject.
    Invalid(String),
}

/// Which of the supported shapes a sample had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleKind {
    /// `{"id", "image", "caption"}`
    Caption,
    /// LLaVA `{"id", "image", "conversations": [{"from", "value"}, …]}`
    Conversations,
    /// `{"messages": [{"role", "content"}, …], "images": […]}`
    Messages,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    /// A file; `resolved` is `given` joined to the image root when relative.
    File { given: String, resolved: PathBuf },
    /// Embedded bytes (Parquet), with the original path if the row had one.
    Bytes { data: Vec<u8>, given: Option<String> },
}

/// A normalised sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: Option<String>,
    pub kind: SampleKind,
    /// Every field of the record except `id` and `image`/`images`, in input order
    /// (unknown fields are kept, never dropped).
    pub fields: Map<String, Value>,
    pub images: Vec<ImageRef>,
}

/// A streaming source of records. Never loads the whole input.
pub trait RecordSource: Send {
    /// Next record, `None` at the end; `Err` only for job-level I/O failures.
    fn next_record(&mut self) -> Option<Result<Record>>;
    /// Skip the first `n` records (used by `--resume`); cheaper than reading them when possible.
    fn skip(&mut self, n: u64) -> Result<()>;
    /// Input files, in the order they are read.
    fn files(&self) -> &[PathBuf];
    /// Bytes consumed so far and the total, for progress/ETA (compressed bytes for `.zst`).
    fn progress(&self) -> (u64, Option<u64>);
}

/// Open `--input`. `image_root` overrides the default root (each file's own folder).
pub fn open(_input: &str, _image_root: Option<&std::path::Path>) -> Result<Box<dyn RecordSource>> {
    todo!("input helper")
}

/// Parse and normalise a record's JSON payload; `Err` is a reject reason.
pub fn parse(
    _payload: &[u8],
    _image_root: &std::path::Path,
) -> std::result::Result<Sample, String> {
    todo!("input helper")
}

/// The image root used for records of `file` (explicit root, else the file's folder).
pub fn image_root_for(file: &std::path::Path, explicit: Option<&std::path::Path>) -> PathBuf {
    match explicit {
        Some(root) => root.to_path_buf(),
        None => file.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from(".")),
    }
}
