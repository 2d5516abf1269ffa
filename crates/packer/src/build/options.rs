//! Build options, their validation, and the fingerprint that ties a checkpoint to its job.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{PackError, Result};
use crate::image::PhashMode;
use crate::text::TextOptions;

/// Exact-duplicate removal (first occurrence kept; see `dedup.rs` for the keys).
///
/// Serialised (job fingerprint, manifest) as `sample`, `image`, `off`: a job fingerprinted by
/// an older version, whose `exact` meant images only, is then not resumed with a new meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    /// The whole sample: image hashes in order + normalised text (default; `--dedup exact`).
    Sample,
    /// The images alone, whatever the text (`--dedup image`; caption corpora).
    Image,
    /// Keep everything.
    Off,
}

impl DedupMode {
    /// `--dedup` values: `exact` (= `sample`, the default), `image`, `off`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "exact" | "sample" => Ok(DedupMode::Sample),
            "image" => Ok(DedupMode::Image),
            "off" => Ok(DedupMode::Off),
            _ => Err(PackError::InvalidOption(format!(
                "--dedup must be exact (whole sample), image or off, not {s:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Progress bar on a terminal, periodic log lines otherwise.
    Auto,
    Bar,
    Log,
    Quiet,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Files or globs (`dir/*.parquet`), read in this order; see [`crate::input::open_all`].
    pub inputs: Vec<String>,
    pub output: PathBuf,
    /// Root for relative image paths (default: each input file's folder).
    pub image_root: Option<PathBuf>,
    /// Shard file prefix: `{prefix}-{000000}.tar`.
    pub prefix: String,
    /// Upper bound on a shard's size in bytes (a single larger sample gets a shard of its own).
    pub shard_size: u64,
    pub samples_per_shard: u64,
    /// Worker threads; 0 = all cores.
    pub workers: usize,
    pub phash: PhashMode,
    pub dhash: bool,
    pub dedup: DedupMode,
    /// Re-encode images above this many pixels to fit within it.
    pub max_pixels: Option<u64>,
    /// Reject images above this many pixels before decoding (decompression-bomb guard).
    pub max_image_pixels: u64,
    /// Reject image files larger than this many bytes before reading them.
    pub max_file_bytes: u64,
    pub resume: bool,
    pub overwrite: bool,
    pub progress: Progress,
    /// Text cleaning (`--text-clean`, `--text-rules`, …; see [`crate::text`]).
    pub text: TextOptions,
}

impl BuildOptions {
    /// Defaults matching the `llava-pack build` command line.
    pub fn new(input: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        BuildOptions {
            inputs: vec![input.into()],
            output: output.into(),
            image_root: None,
            prefix: "shard".into(),
            shard_size: 1 << 30,
            samples_per_shard: 10_000,
            workers: 0,
            phash: PhashMode::Fast,
            dhash: false,
            dedup: DedupMode::Sample,
            max_pixels: None,
            max_image_pixels: crate::image::Limits::default().max_image_pixels,
            max_file_bytes: 256 << 20,
            resume: false,
            overwrite: false,
            progress: Progress::Auto,
            text: TextOptions::default(),
        }
    }

    /// Checks every option before any work starts; errors name the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PackError::InvalidOption(m));
        if self.inputs.is_empty() || self.inputs.iter().any(|i| i.trim().is_empty()) {
            return bad("--input is empty".into());
        }
        check_prefix(&self.prefix)?;
        if self.shard_size < 4096 {
            return bad(format!(
                "--shard-size {} is below the 4096-byte minimum",
                self.shard_size
            ));
        }
        if self.samples_per_shard == 0 {
            return bad("--samples-per-shard must be at least 1".into());
        }
        if self.workers > 1024 {
            return bad(format!(
                "--workers {} is not a sensible thread count",
                self.workers
            ));
        }
        if self.max_pixels == Some(0) {
            return bad("--max-pixels must be positive".into());
        }
        if self.max_image_pixels == 0 {
            return bad("--max-image-pixels must be positive".into());
        }
        if self.resume && self.overwrite {
            return bad("--resume and --overwrite exclude each other".into());
        }
        self.text.validate()
    }

    /// Worker threads to use (resolves 0 to the number of cores).
    pub fn worker_count(&self) -> usize {
        resolve_workers(self.workers)
    }

    /// Everything that influences the bytes written (not workers or progress display).
    /// `--resume` refuses to continue a job whose fingerprint differs.
    pub fn fingerprint(&self, files: &[(String, u64)]) -> Value {
        json!({
            "format_version": crate::FORMAT_VERSION,
            // One input stays a string, as in fingerprints written before several were allowed.
            "input": match self.inputs.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
            "input_files": files.iter().map(|(p, n)| json!({"path": p, "bytes": n})).collect::<Vec<_>>(),
            "image_root": self.image_root.as_ref().map(|p| p.display().to_string()),
            "prefix": self.prefix,
            "shard_size": self.shard_size,
            "samples_per_shard": self.samples_per_shard,
            "phash": self.phash,
            "dhash": self.dhash,
            "dedup": self.dedup,
            "max_pixels": self.max_pixels,
            "max_image_pixels": self.max_image_pixels,
            "max_file_bytes": self.max_file_bytes,
            "text": self.text.fingerprint(),
        })
    }
}

/// Shard prefixes become file names: 1-40 characters of `[A-Za-z0-9_-]`.
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 40
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PackError::InvalidOption(format!(
            "--prefix {prefix:?} must be 1-40 characters of [A-Za-z0-9_-]"
        )))
    }
}

/// Worker threads for `--workers n` (0 = all cores).
pub(crate) fn resolve_workers(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BuildOptions::new("a.jsonl", "out").validate().unwrap();
    }

    #[test]
    fn invalid_options_name_the_option() {
        let mut o = BuildOptions::new("a.jsonl", "out");
        o.prefix = "a/b".into();
        assert!(o.validate().unwrap_err().to_string().contains("--prefix"));
        let mut o = BuildOptions::new("a.jsonl", "out");
        o.shard_size = 10;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--shard-size"));
        let mut o = BuildOptions::new("a.jsonl", "out");
        o.samples_per_shard = 0;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--samples-per-shard"));
        let mut o = BuildOptions::new("a.jsonl", "out");
        o.resume = true;
        o.overwrite = true;
        assert!(o.validate().is_err());
    }

    #[test]
    fn dedup_modes_parse_and_exact_means_the_whole_sample() {
        assert_eq!(DedupMode::parse("exact").unwrap(), DedupMode::Sample);
        assert_eq!(DedupMode::parse("sample").unwrap(), DedupMode::Sample);
        assert_eq!(DedupMode::parse("image").unwrap(), DedupMode::Image);
        assert_eq!(DedupMode::parse("off").unwrap(), DedupMode::Off);
        assert!(DedupMode::parse("fuzzy")
            .unwrap_err()
            .to_string()
            .contains("--dedup"));
        assert_eq!(BuildOptions::new("a", "o").dedup, DedupMode::Sample);
        let fp = BuildOptions::new("a", "o").fingerprint(&[]);
        assert_eq!(fp["dedup"], "sample");
        assert_eq!(fp["input"], "a");
        let mut two = BuildOptions::new("a", "o");
        two.inputs.push("b".into());
        assert_eq!(two.fingerprint(&[])["input"], json!(["a", "b"]));
    }

    #[test]
    fn fingerprint_ignores_workers_and_progress() {
        let a = BuildOptions::new("a.jsonl", "out");
        let mut b = a.clone();
        b.workers = 7;
        b.progress = Progress::Quiet;
        assert_eq!(a.fingerprint(&[]), b.fingerprint(&[]));
        b.shard_size += 1;
        assert_ne!(a.fingerprint(&[]), b.fingerprint(&[]));
    }

    #[test]
    fn text_cleaning_options_are_validated_and_fingerprinted() {
        let a = BuildOptions::new("a.jsonl", "out");
        assert_eq!(a.fingerprint(&[])["text"]["mode"], "default");
        let mut b = a.clone();
        b.text.mode = crate::text::CleanMode::Off;
        assert_ne!(a.fingerprint(&[]), b.fingerprint(&[]));
        b.text.rules = vec!["+nope".into()];
        assert!(b
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--text-rules"));
    }
}
