//! Reading the hashes of a `llava-pack build` output: the index and each sample's json only,
//! never an image.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::Deserialize;

use super::search::Tally;
use crate::error::{PackError, Result};
use crate::reader::{ListedShard, Listing, OpenOptions, ShardSet};

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

/// One image of a sample as read from its json: phash, pixels (width × height), dhash.
pub type ImageRow = (Option<u64>, u64, Option<u64>);
/// One shard's samples in order: key and images (what a Ray read task sends back).
pub type ShardRows = Vec<(String, Vec<ImageRow>)>;

/// A build output checked for dedup (not packed, not `--phash off`, has shards), its shards
/// listed but not opened: the driver of a distributed read checks here and hands the shards
/// out; the local read opens them all.
#[derive(Debug, Clone)]
pub struct CorpusDir {
    pub listing: Listing,
    /// `--input` or `--against`, to name the directory in errors.
    pub what: String,
    phash_mode: Option<String>,
    dhash_built: Option<bool>,
}

impl CorpusDir {
    pub fn open(dir: &Path, what: &str) -> Result<CorpusDir> {
        let bad = |m: String| input_err(dir, what, m);
        let listing = Listing::read(dir).map_err(|e| bad(e.to_string()))?;
        if listing.packed {
            return Err(bad(
                "is a packed directory (llava-pack pack output); dedup reads a llava-pack build \
                 output"
                    .into(),
            ));
        }
        let option = |name: &str| {
            let m = listing.manifest.as_ref();
            m.and_then(|m| m.pointer(&format!("/options/{name}")))
                .cloned()
        };
        let phash_mode = option("phash").and_then(|v| v.as_str().map(str::to_string));
        if phash_mode.as_deref() == Some("off") {
            return Err(bad(
                "was built with --phash off: it has no perceptual hashes to compare (rebuild \
                 with --phash fast or exact)"
                    .into(),
            ));
        }
        let dhash_built = option("dhash").and_then(|v| v.as_bool());
        if listing.shards.is_empty() {
            return Err(bad(
                "no shards (no *.tar and no manifest.json listing any)".into()
            ));
        }
        Ok(CorpusDir {
            listing,
            what: what.to_string(),
            phash_mode,
            dhash_built,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.listing.dir
    }

    /// Every shard's rows, read in this process (rayon over the shards), in shard order;
    /// `tally` counts samples.
    pub fn read_here(
        &self,
        cancel: &AtomicBool,
        tally: Option<Tally<'_>>,
    ) -> Result<Vec<ShardRows>> {
        let set = ShardSet::from_listing(self.listing.clone(), OpenOptions::default())
            .map_err(|e| input_err(self.dir(), &self.what, e.to_string()))?;
        if let Some(t) = tally {
            let samples: usize = set.shards.iter().map(|s| s.samples()).sum();
            t.total.store(samples as u64, Ordering::Relaxed);
        }
        let per_shard: Vec<Result<ShardRows>> = (0..set.shards.len())
            .into_par_iter()
            .map(|s| read_shard(&set, s, &self.what, cancel, tally))
            .collect();
        // Sequentially, so the error reported is the first shard's, whatever the threads did.
        per_shard.into_iter().collect()
    }

    /// An empty corpus of this directory, filled shard by shard in order.
    pub fn builder(&self) -> CorpusBuilder {
        CorpusBuilder {
            dir: self.dir().to_path_buf(),
            what: self.what.clone(),
            phash_mode_known: self.phash_mode.is_some(),
            corpus: Corpus {
                shards: self.listing.shards.iter().map(|s| s.0.clone()).collect(),
                dhash_built: self.dhash_built,
                ..Corpus::default()
            },
            next_shard: 0,
        }
    }
}

fn input_err(dir: &Path, what: &str, m: String) -> PackError {
    PackError::input(dir, format!("{what}: {m}"))
}

/// Read the rows of shards `listed` of `dir` (a subset, e.g. one Ray task's), one shard after
/// the other: `what` names the directory in errors, as [`CorpusDir::read_here`] does.
pub fn read_shards(
    dir: &Path,
    what: &str,
    listed: Vec<ListedShard>,
    cancel: &AtomicBool,
) -> Result<Vec<ShardRows>> {
    // The manifest is not re-read per task: its shard list is O(shards) and the driver
    // already checked it; each shard is still validated against its expected size.
    let listing = Listing {
        dir: dir.to_path_buf(),
        manifest: None,
        packed: false,
        shards: listed,
    };
    let set = ShardSet::from_listing(listing, OpenOptions::default())
        .map_err(|e| input_err(dir, what, e.to_string()))?;
    (0..set.shards.len())
        .map(|s| read_shard(&set, s, what, cancel, None))
        .collect()
}

/// Shard `s` of `set`: every sample's key and its images' hashes and sizes, from its json.
pub fn read_shard(
    set: &ShardSet,
    s: usize,
    what: &str,
    cancel: &AtomicBool,
    tally: Option<Tally<'_>>,
) -> Result<ShardRows> {
    let bad = |m: String| input_err(&set.dir, what, m);
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
}

/// A [`Corpus`] assembled from its shards' rows, given in shard order.
pub struct CorpusBuilder {
    dir: PathBuf,
    what: String,
    /// The manifest says how the build hashed (so null phashes are its choice, not an error).
    phash_mode_known: bool,
    corpus: Corpus,
    next_shard: usize,
}

impl CorpusBuilder {
    fn bad(&self, m: String) -> PackError {
        input_err(&self.dir, &self.what, m)
    }

    /// Shards still to push.
    pub fn missing(&self) -> usize {
        self.corpus.shards.len() - self.next_shard
    }

    /// Append the next shard's rows.
    pub fn push(&mut self, rows: ShardRows) -> Result<()> {
        if self.missing() == 0 {
            return Err(self.bad(format!(
                "rows for more than its {} shards",
                self.corpus.shards.len()
            )));
        }
        let shard = self.next_shard as u32;
        self.next_shard += 1;
        let c = &mut self.corpus;
        for (key, images) in rows {
            let (Ok(sample), Ok(first_image)) =
                (u32::try_from(c.samples.len()), u32::try_from(c.hash.len()))
            else {
                return Err(self.bad("more than 2^32 samples or images".into()));
            };
            if images.len() > u16::MAX as usize {
                return Err(self.bad(format!("sample {key:?}: more than 65535 images")));
            }
            c.samples.push(SampleInfo {
                key,
                shard,
                first_image,
                images: images.len() as u16,
            });
            for (h, px, dh) in images {
                c.hash.push(h);
                c.dhash.push(dh);
                c.pixels.push(px);
                c.sample_of.push(sample);
            }
        }
        Ok(())
    }

    /// The corpus, once every shard was pushed; fails, as the local read does, when no image
    /// has a phash although the manifest does not say how the build hashed.
    pub fn finish(self) -> Result<Corpus> {
        if self.missing() > 0 {
            return Err(self.bad(format!("{} shards not read", self.missing())));
        }
        let c = &self.corpus;
        if !self.phash_mode_known && c.images() > 0 && c.hash.iter().all(Option::is_none) {
            return Err(self
                .bad("no image has a phash (built with --phash off?): nothing to compare".into()));
        }
        Ok(self.corpus)
    }
}

impl Corpus {
    pub fn images(&self) -> usize {
        self.hash.len()
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
