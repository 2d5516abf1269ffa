//! Per-record work, run on worker threads: parse, load images, probe, hash, re-encode.
//!
//! Nothing here touches shared state, so records can be processed in any order; the
//! writer restores input order.

use std::path::{Path, PathBuf};

use crate::image::{self, Analysis, ImageError, ImageInfo, Limits, PhashMode};
use crate::input::{self, ImageRef, Payload, Record, Sample};
use crate::text::{Cleaner, TextLog};

use super::dedup;
use super::options::{BuildOptions, DedupMode};

/// Most images one sample may carry (keeps member names within the tar name limit).
pub const MAX_IMAGES_PER_SAMPLE: usize = 999;

/// Settings the workers need, resolved once per job.
pub struct Ctx {
    pub roots: Vec<PathBuf>,
    pub phash: PhashMode,
    pub dhash: bool,
    pub limits: Limits,
    pub max_pixels: Option<u64>,
    pub max_file_bytes: u64,
    pub dedup: DedupMode,
    pub text: Cleaner,
}

impl Ctx {
    pub fn new(opts: &BuildOptions, files: &[PathBuf]) -> crate::error::Result<Self> {
        Ok(Ctx {
            roots: files
                .iter()
                .map(|f| input::image_root_for(f, opts.image_root.as_deref()))
                .collect(),
            phash: opts.phash,
            dhash: opts.dhash,
            limits: Limits {
                max_image_pixels: opts.max_image_pixels,
            },
            max_pixels: opts.max_pixels,
            max_file_bytes: opts.max_file_bytes,
            dedup: opts.dedup,
            text: Cleaner::new(&opts.text)?,
        })
    }
}

/// One image, ready to be written.
pub struct PreparedImage {
    pub bytes: Vec<u8>,
    pub analysis: Analysis,
    /// Content hash of the original bytes (before any re-encode).
    pub content: [u8; 16],
    pub given: Option<String>,
    /// Original (width, height, bytes) when re-encoded for `--max-pixels`.
    pub reencoded_from: Option<(u32, u32, u64)>,
}

impl PreparedImage {
    pub fn info(&self) -> &ImageInfo {
        &self.analysis.info
    }
}

pub struct Prepared {
    pub sample: Sample,
    pub images: Vec<PreparedImage>,
    /// Exact-duplicate identity under `--dedup` (`None`: never a duplicate).
    pub dedup_key: Option<[u8; 16]>,
    /// `--dedup-text` identity of a caption sample (cleaned caption).
    pub text_key: Option<[u8; 16]>,
}

/// A reject: a category for `stats.json` and a human reason for `rejects.jsonl`.
pub struct Reject {
    pub category: &'static str,
    pub reason: String,
    pub id: Option<String>,
}

pub enum Outcome {
    Sample(Box<Prepared>),
    Reject(Reject),
}

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct Pos {
    pub index: u64,
    pub line: u64,
    /// Byte offset of a JSON array element (see [`Record::offset`]).
    pub offset: Option<u64>,
    pub file: usize,
}

/// The record's position, carried next to its outcome.
pub struct Processed {
    pub pos: Pos,
    pub outcome: Outcome,
    /// What text cleaning did (`None`: nothing to count).
    pub text: Option<Box<TextLog>>,
}

pub fn process(rec: Record, ctx: &Ctx) -> Processed {
    let mut text = None;
    let outcome = match prepare(rec.payload, &ctx.roots[rec.file], ctx, &mut text) {
        Ok(p) => Outcome::Sample(Box::new(p)),
        Err(r) => Outcome::Reject(r),
    };
    Processed {
        pos: Pos {
            index: rec.index,
            line: rec.line,
            offset: rec.offset,
            file: rec.file,
        },
        outcome,
        text,
    }
}

fn prepare(
    payload: Payload,
    root: &Path,
    ctx: &Ctx,
    text: &mut Option<Box<TextLog>>,
) -> Result<Prepared, Reject> {
    let mut sample = match payload {
        Payload::Json(bytes) => input::parse(&bytes, root).map_err(|reason| Reject {
            category: "invalid_record",
            reason,
            id: id_of_invalid(&bytes),
        })?,
        Payload::Sample(s) => s,
        Payload::Invalid(reason) => {
            return Err(Reject {
                category: "invalid_record",
                reason,
                id: None,
            })
        }
    };
    if sample.images.len() > MAX_IMAGES_PER_SAMPLE {
        return Err(Reject {
            category: "too_many_images",
            reason: format!(
                "{} images (at most {MAX_IMAGES_PER_SAMPLE})",
                sample.images.len()
            ),
            id: sample.id.clone(),
        });
    }
    // Text first: it is cheap, and a rejected text spares loading the images.
    let cleaned = ctx.text.clean_sample(&mut sample);
    let log = cleaned.log;
    if log.changed != 0 || log.rejected.is_some() {
        *text = Some(Box::new(log));
    }
    if let Some((category, reason)) = cleaned.reject {
        return Err(Reject {
            category,
            reason,
            id: sample.id,
        });
    }
    let mut images = Vec::with_capacity(sample.images.len());
    for (i, r) in sample.images.iter().enumerate() {
        match prepare_image(r, ctx) {
            Ok(img) => images.push(img),
            Err((category, why)) => {
                let what = match r {
                    ImageRef::File { given, .. } => format!("image {i} ({})", shorten(given)),
                    ImageRef::Bytes { given: Some(g), .. } => format!("image {i} ({g})"),
                    ImageRef::Bytes { given: None, .. } => format!("image {i}"),
                };
                return Err(Reject {
                    category,
                    reason: format!("{what}: {why}"),
                    id: sample.id,
                });
            }
        }
    }
    let dedup_key = match ctx.dedup {
        DedupMode::Off => None,
        DedupMode::Image => dedup::image_key(&images.iter().map(|i| i.content).collect::<Vec<_>>()),
        DedupMode::Sample => Some(dedup::sample_key(
            &sample,
            images.iter().map(|i| &i.content),
        )),
    };
    Ok(Prepared {
        sample,
        images,
        dedup_key,
        text_key: cleaned.text_key,
    })
}

/// Best-effort id of a record that failed validation, so its reject can name it.
fn id_of_invalid(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    match v.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A path as shown in a reject reason: a `data:` URI can be megabytes long.
fn shorten(given: &str) -> String {
    const MAX: usize = 100;
    match given.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &given[..cut]),
        None => given.to_string(),
    }
}

/// The scheme of a URL or `data:` URI given as an image path (`None` for a file path).
/// `C:\x.jpg` is a path: a scheme needs `://` unless it is `data:`.
pub fn remote_scheme(given: &str) -> Option<String> {
    let lower = given.trim_start().to_ascii_lowercase();
    if lower.starts_with("data:") {
        return Some("data".into());
    }
    let (scheme, _) = lower.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_string())
}

fn prepare_image(r: &ImageRef, ctx: &Ctx) -> Result<PreparedImage, (&'static str, String)> {
    let (bytes, given) = match r {
        ImageRef::File { given, resolved } => {
            if let Some(scheme) = remote_scheme(given) {
                let what = if scheme == "data" {
                    "data: URIs are not decoded".to_string()
                } else {
                    format!("{scheme}:// URLs are not fetched")
                };
                return Err((
                    "remote_image_unsupported",
                    format!(
                        "{what}; download the images and give local paths (or embed their \
                         bytes in Parquet)"
                    ),
                ));
            }
            (read_image_file(resolved, ctx)?, Some(given.clone()))
        }
        ImageRef::Bytes { data, given } => (data.clone(), given.clone()),
    };
    let analysis = image::analyze(&bytes, ctx.phash, ctx.dhash, &ctx.limits)
        .map_err(|e| (image_error_category(&e), e.to_string()))?;
    let content = image::content_hash(&bytes);
    let mut img = PreparedImage {
        bytes,
        analysis,
        content,
        given,
        reencoded_from: None,
    };
    if let Some(max) = ctx.max_pixels {
        let info = &img.analysis.info;
        if let Some(new) = image::reencode_within(&img.bytes, info, max)
            .map_err(|e| (image_error_category(&e), e.to_string()))?
        {
            img.reencoded_from = Some((info.width, info.height, img.bytes.len() as u64));
            img.bytes = new.bytes;
            img.analysis.info = new.info;
        }
    }
    Ok(img)
}

fn read_image_file(path: &Path, ctx: &Ctx) -> Result<Vec<u8>, (&'static str, String)> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ("missing_file", "file not found".to_string()),
        _ => ("unreadable_file", format!("cannot read: {e}")),
    })?;
    if !meta.is_file() {
        return Err(("unreadable_file", "not a regular file".into()));
    }
    if meta.len() > ctx.max_file_bytes {
        return Err((
            "file_too_large",
            format!(
                "{} bytes exceeds the {}-byte limit",
                meta.len(),
                ctx.max_file_bytes
            ),
        ));
    }
    std::fs::read(path).map_err(|e| ("unreadable_file", format!("cannot read: {e}")))
}

fn image_error_category(e: &ImageError) -> &'static str {
    match e {
        ImageError::Empty => "empty_file",
        ImageError::UnknownFormat => "unknown_format",
        ImageError::BadHeader { .. } => "bad_header",
        ImageError::TooLarge { .. } => "decompression_bomb",
        ImageError::Truncated { .. } => "truncated",
        ImageError::Corrupt { .. } => "corrupt",
        ImageError::Unsupported(_) => "unsupported",
        ImageError::Encode(_) => "reencode_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::{remote_scheme, shorten};

    #[test]
    fn urls_and_data_uris_are_remote_but_paths_are_not() {
        for (given, scheme) in [
            ("http://x.org/a.jpg", "http"),
            ("HTTPS://x.org/a.jpg", "https"),
            ("s3://bucket/a.jpg", "s3"),
            ("gs://bucket/a.jpg", "gs"),
            ("hf+x.y-z://repo/a.jpg", "hf+x.y-z"),
            ("data:image/png;base64,iVBOR", "data"),
            (" DATA:,x", "data"),
        ] {
            assert_eq!(remote_scheme(given).as_deref(), Some(scheme), "{given}");
        }
        for path in [
            "a.jpg",
            "/abs/a.jpg",
            "C:\\img\\a.jpg",
            "dir/http:/x.jpg",
            "1x://a",
            "data/x.jpg",
        ] {
            assert_eq!(remote_scheme(path), None, "{path}");
        }
    }

    #[test]
    fn long_data_uris_are_shortened_in_reasons() {
        let uri = format!("data:image/png;base64,{}", "A".repeat(5000));
        let s = shorten(&uri);
        assert_eq!(s.chars().count(), 101);
        assert!(s.ends_with('…'));
        assert_eq!(shorten("a.jpg"), "a.jpg");
    }
}
