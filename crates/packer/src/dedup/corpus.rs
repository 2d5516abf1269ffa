//! Reading the hashes of a `llava-pack build` output: the index and each sample's json only,
//! never an image.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::Deserialize;

use super::search::Tally;
use crate::error::{PackError, Result};
use crate::reader::{OpenOptions, ShardSet};

/// The sample json fields dedup needs (everything else is skipped by serde).
#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    images: Vec<ImageDoc>,
}

#[derive(Deserialize)]
struct ImageDoc {
    #[serde(default)]
    width: u64,
    #[serde(default)]
    height: u64,
    phash: Option<String>,
    #[serde(default)]
    dhash: Option<String>,
}

/// One sample: its key, shard and the range of its images in [`Corpus::hash`].
#[derive(Debug, Clone)]
pub struct SampleInfo {
    pub key: String,
    pub shard: u32,
    /// Index of the sample's first image in the image arrays.
    pub first_image: u32,
    pub images: u16,
}

/// Every image of a build output, in input order (shard order, then sample order).
#[derive(Debug, Default)]
pub struct Corpus {
    pub shards: Vec<String>,
    pub samples: Vec<SampleInfo>,
    /// Per image: phash (`None`: the sample json has `null`), pixels, owning sample.
    pub hash: Vec<Option<u64>>,
    pub pixels: Vec<u64>,
    pub sample_of: Vec<u32>,
    /// Per image: dhash (`None` unless the build ran with `--dhash`), for `--verify dhash`.
    pub dhash: Vec<Option<u64>>,
    /// The manifest's `options.dhash` (`None`: no manifest, or it does not say).
    pub dhash_built: Option<bool>,
}

/// Parse a 16-hex-digit hash as `llava-pack build` writes it.
pub fn parse_hash(s: &str) -> std::result::Result<u64, String> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("phash {s:?} is not 16 hex digits"));
    }
    u64::from_str_radix(s, 16).map_err(|e| format!("phash {s:?}: {e}"))
}

impl Corpus {
    pub fn images(&self) -> usize {
        self.hash.len()
    }

    /// Read `dir`; `what` names it in errors (`--input`, `--against`). `tally` counts samples.
    pub fn read(
        dir: &Path,
        what: &str,
        cancel: &AtomicBool,
        tally: Option<Tally<'_>>,
    ) -> Result<Corpus> {
        let bad = |m: String| PackError::input(dir, format!("{what}: {m}"));
        let set = ShardSet::open(dir, OpenOptions::default()).map_err(|e| bad(e.to_string()))?;
        if set.packed {
            return Err(bad(
                "is a packed directory (llava-pack pack output); dedup reads a llava-pack build \
                 output"
                    .into(),
            ));
        }
        let phash_mode = set
            .manifest
            .as_ref()
            .and_then(|m| m.pointer("/options/phash"))
            .and_then(|v| v.as_str());
        if phash_mode == Some("off") {
            return Err(bad(
                "was built with --phash off: it has no perceptual hashes to compare (rebuild \
                 with --phash fast or exact)"
                    .into(),
            ));
        }
        let dhash_built = set
            .manifest
            .as_ref()
            .and_then(|m| m.pointer("/options/dhash"))
            .and_then(|v| v.as_bool());
        if set.shards.is_empty() {
            return Err(bad(
                "no shards (no *.tar and no manifest.json listing any)".into()
            ));
        }
        if let Some(t) = tally {
            let samples: usize = set.shards.iter().map(|s| s.samples()).sum();
            t.total.store(samples as u64, Ordering::Relaxed);
        }
        type ShardRows = Vec<(String, Vec<(Option<u64>, u64, Option<u64>)>)>;
        let per_shard: Vec<Result<ShardRows>> = (0..set.shards.len())
            .into_par_iter()
            .map(|s| {
                let mut rows = Vec::with_capacity(set.shards[s].samples());
                let start = set.shard_start(s);
                for i in 0..set.shards[s].samples() as u64 {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(PackError::Cancelled);
                    }
                    let sample = set.sample(start + i).map_err(|e| bad(e.to_string()))?;
                    let at = || {
                        format!(
                            "{} @ offset {}: sample {:?}",
                            set.shards[s].name, sample.offset, sample.key
                        )
                    };
                    let json = sample
                        .member("json")
                        .ok_or_else(|| bad(format!("{}: no json member", at())))?;
                    let doc: Doc = serde_json::from_slice(set.bytes(&sample, json))
                        .map_err(|e| bad(format!("{}: bad json: {e}", at())))?;
                    let mut images = Vec::with_capacity(doc.images.len());
                    for (n, im) in doc.images.iter().enumerate() {
                        let parse = |t: &Option<String>, what: &str| {
                            t.as_deref().map(parse_hash).transpose().map_err(|e| {
                                let e = e.replacen("phash", what, 1);
                                bad(format!("{}: images[{n}]: {e}", at()))
                            })
                        };
                        let (h, dh) = (parse(&im.phash, "phash")?, parse(&im.dhash, "dhash")?);
                        images.push((h, im.width.saturating_mul(im.height), dh));
                    }
                    if images.len() > u16::MAX as usize {
                        return Err(bad(format!("{}: more than 65535 images", at())));
                    }
                    rows.push((sample.key, images));
                    if let Some(t) = tally {
                        t.add(1);
                    }
                }
                Ok(rows)
            })
            .collect();
        let mut c = Corpus {
            shards: set.shards.iter().map(|s| s.name.clone()).collect(),
            dhash_built,
            ..Corpus::default()
        };
        for (s, rows) in per_shard.into_iter().enumerate() {
            for (key, images) in rows? {
                let sample =
                    u32::try_from(c.samples.len()).map_err(|_| bad("too many samples".into()))?;
                c.samples.push(SampleInfo {
                    key,
                    shard: s as u32,
                    first_image: u32::try_from(c.hash.len())
                        .map_err(|_| bad("more than 2^32 images".into()))?,
                    images: images.len() as u16,
                });
                for (h, px, dh) in images {
                    c.hash.push(h);
                    c.dhash.push(dh);
                    c.pixels.push(px);
                    c.sample_of.push(sample);
                }
            }
        }
        if phash_mode.is_none() && c.images() > 0 && c.hash.iter().all(Option::is_none) {
            return Err(bad(
                "no image has a phash (built with --phash off?): nothing to compare".into(),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_strings_must_be_16_hex_digits() {
        assert_eq!(parse_hash("00000000000000ff"), Ok(255));
        assert_eq!(parse_hash("FFFFFFFFFFFFFFFF"), Ok(u64::MAX));
        assert!(parse_hash("fff").unwrap_err().contains("not 16 hex digits"));
        assert!(parse_hash("+0000000000000ff").is_err());
        assert!(parse_hash("00000000000000fg").is_err());
    }
}
