//! Zero-copy reading of a shard directory (`llava-pack build` output, plain or packed).
//!
//! [`ShardSet::open`] memory-maps every shard and validates its `.tar.idx` against the file
//! (offsets monotonic, 512-aligned, inside the file, final entry = file size − 1024 followed by
//! the zero end blocks, sample count = `manifest.json`'s). Nothing is read eagerly beyond that:
//! [`ShardSet::sample`] parses one sample's ustar headers (checksum, name safety, bounds) from
//! the mapping on demand and hands out byte ranges, never copies. Readers never write.
//!
//! Every error names the shard and the byte offset of the sample (or header) at fault.

mod tar;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::Value;
use thiserror::Error;

pub use tar::MemberRef;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    /// The `.tar.idx` is corrupt or does not describe this tar (stale).
    #[error("{shard} @ offset {offset}: bad .tar.idx: {message}")]
    Index {
        shard: String,
        offset: u64,
        message: String,
    },
    /// The tar ends before the data the index or a header promises.
    #[error("{shard} @ offset {offset}: truncated tar: {message}")]
    Truncated {
        shard: String,
        offset: u64,
        message: String,
    },
    /// A tar header is not a valid ustar header for this format.
    #[error("{shard} @ offset {offset}: bad tar header: {message}")]
    BadHeader {
        shard: String,
        offset: u64,
        message: String,
    },
    /// An absolute member name or one with a `..` component (never used as a path).
    #[error("{shard} @ offset {offset}: unsafe member name {name:?}")]
    UnsafeName {
        shard: String,
        offset: u64,
        name: String,
    },
    /// The sample's json lists a member the sample does not contain.
    #[error("{shard} @ offset {offset}: sample {key:?} has no member {member:?}")]
    MissingMember {
        shard: String,
        offset: u64,
        key: String,
        member: String,
    },
    /// The sample's json is missing or unreadable.
    #[error("{shard} @ offset {offset}: sample {key:?}: {message}")]
    BadJson {
        shard: String,
        offset: u64,
        key: String,
        message: String,
    },
    #[error("sample index {index} out of range ({len} samples)")]
    OutOfRange { index: u64, len: u64 },
}

/// One memory-mapped shard and its validated sample offsets.
pub struct Shard {
    pub name: String,
    pub map: Arc<Mmap>,
    /// `samples + 1` offsets: sample `i` spans `offsets[i]..offsets[i + 1]`.
    pub offsets: Vec<u64>,
}

impl Shard {
    pub fn samples(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// A sample located in the mapping: its key and members as byte ranges of the shard file.
#[derive(Debug, Clone)]
pub struct SampleRef {
    pub shard: usize,
    /// Byte offset of the sample's first header in its shard.
    pub offset: u64,
    pub key: String,
    pub members: Vec<MemberRef>,
}

impl SampleRef {
    pub fn member(&self, suffix: &str) -> Option<&MemberRef> {
        self.members.iter().find(|m| m.suffix == suffix)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Leave out shards whose tar/index fail validation (listed in [`ShardSet::skipped`])
    /// instead of failing.
    pub skip_bad_shards: bool,
}

pub struct ShardSet {
    pub dir: PathBuf,
    pub shards: Vec<Shard>,
    /// Global index of each shard's first sample, plus the total.
    starts: Vec<u64>,
    /// `manifest.json` says `"kind": "packed"` (the per-sample json says `"kind": "pack"` too).
    pub packed: bool,
    pub manifest: Option<Value>,
    /// Shards left out by `skip_bad_shards`, with the reason.
    pub skipped: Vec<(String, ReadError)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReadError + '_ {
    move |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A shard name and, when the manifest lists it, its expected (samples, bytes).
pub type ListedShard = (String, Option<(u64, u64)>);

/// Shards listed in the manifest (with expected sample counts and sizes), or every `*.tar`.
fn shard_list(dir: &Path, manifest: Option<&Value>) -> Result<Vec<ListedShard>, ReadError> {
    if let Some(m) = manifest {
        let mpath = dir.join("manifest.json");
        let bad = |message: String| ReadError::Manifest {
            path: mpath.clone(),
            message,
        };
        let shards = m
            .get("shards")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"shards\" list".into()))?;
        return shards
            .iter()
            .map(|s| {
                let name = s
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("shard entry without name: {s}")))?;
                if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                    return Err(bad(format!("shard name {name:?} is not a plain file name")));
                }
                let expect = s
                    .get("samples")
                    .and_then(Value::as_u64)
                    .zip(s.get("bytes").and_then(Value::as_u64));
                Ok((name.to_string(), expect))
            })
            .collect();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tar"))
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| (n, None)).collect())
}

/// A shard directory's manifest and shard list, no shard opened yet: what a caller needs to
/// check a directory (packed? options?) or to hand its shards out to other processes, without
/// mapping every shard here.
#[derive(Debug, Clone)]
pub struct Listing {
    pub dir: PathBuf,
    pub manifest: Option<Value>,
    /// `manifest.json` says `"kind": "packed"`.
    pub packed: bool,
    /// Shard names in order, with the manifest's expected (samples, bytes) when it lists them.
    pub shards: Vec<ListedShard>,
}

impl Listing {
    pub fn read(dir: impl AsRef<Path>) -> Result<Self, ReadError> {
        let dir = dir.as_ref().to_path_buf();
        let mpath = dir.join("manifest.json");
        let manifest: Option<Value> = match std::fs::read(&mpath) {
            Ok(raw) => Some(
                serde_json::from_slice(&raw).map_err(|e| ReadError::Manifest {
                    path: mpath.clone(),
                    message: e.to_string(),
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&mpath)(e)),
        };
        if !dir.is_dir() {
            return Err(io_err(&dir)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a directory",
            )));
        }
        let packed = manifest
            .as_ref()
            .and_then(|m| m.get("kind"))
            .and_then(Value::as_str)
            == Some("packed");
        let shards = shard_list(&dir, manifest.as_ref())?;
        Ok(Listing {
            dir,
            manifest,
            packed,
            shards,
        })
    }
}

impl ShardSet {
    pub fn open(dir: impl AsRef<Path>, opts: OpenOptions) -> Result<Self, ReadError> {
        Self::from_listing(Listing::read(dir)?, opts)
    }

    /// Map and validate the shards of `listing` (a subset of a directory's shards is a
    /// listing too: its global sample indices are then those of the subset).
    pub fn from_listing(listing: Listing, opts: OpenOptions) -> Result<Self, ReadError> {
        let Listing {
            dir,
            manifest,
            packed,
            shards: listed,
        } = listing;
        let mut shards = Vec::new();
        let mut skipped = Vec::new();
        for (name, expect) in listed {
            match open_shard(&dir, &name, expect) {
                Ok(s) => shards.push(s),
                Err(e) if opts.skip_bad_shards && !matches!(e, ReadError::Manifest { .. }) => {
                    skipped.push((name, e))
                }
                Err(e) => return Err(e),
            }
        }
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0u64;
        for s in &shards {
            starts.push(total);
            total += s.samples() as u64;
        }
        starts.push(total);
        Ok(ShardSet {
            dir,
            shards,
            starts,
            packed,
            manifest,
            skipped,
        })
    }

    /// Number of samples (packs, for a packed directory).
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("starts has a total")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Global index of shard `s`'s first sample.
    pub fn shard_start(&self, s: usize) -> u64 {
        self.starts[s]
    }

    /// `(shard, sample within shard)` of global sample `index`.
    pub fn locate(&self, index: u64) -> Result<(usize, usize), ReadError> {
        if index >= self.len() {
            return Err(ReadError::OutOfRange {
                index,
                len: self.len(),
            });
        }
        // The last start <= index, skipping empty shards (equal starts).
        let s = self.starts.partition_point(|&st| st <= index) - 1;
        Ok((s, (index - self.starts[s]) as usize))
    }

    /// Parse sample `index`'s headers from the mapping.
    pub fn sample(&self, index: u64) -> Result<SampleRef, ReadError> {
        let (s, i) = self.locate(index)?;
        let shard = &self.shards[s];
        let (start, end) = (shard.offsets[i], shard.offsets[i + 1]);
        let (key, members) = tar::parse_sample(&shard.map, &shard.name, start, end)?;
        Ok(SampleRef {
            shard: s,
            offset: start,
            key,
            members,
        })
    }

    /// Bytes of a member (a slice of the mapping).
    pub fn bytes(&self, sample: &SampleRef, member: &MemberRef) -> &[u8] {
        &self.shards[sample.shard].map[member.start..member.start + member.len]
    }

    /// The sample's `json` member, parsed.
    pub fn json(&self, sample: &SampleRef) -> Result<Value, ReadError> {
        let bad = |message: String| ReadError::BadJson {
            shard: self.shards[sample.shard].name.clone(),
            offset: sample.offset,
            key: sample.key.clone(),
            message,
        };
        let m = sample
            .member("json")
            .ok_or_else(|| bad("no json member".into()))?;
        serde_json::from_slice(self.bytes(sample, m)).map_err(|e| bad(e.to_string()))
    }

    /// The sample's image members in token order: a plain sample's `images[*].member`, or, for
    /// a pack, every sub-sample's `images` suffixes in sub-sample order.
    pub fn image_members<'a>(
        &self,
        sample: &'a SampleRef,
        json: &Value,
    ) -> Result<Vec<&'a MemberRef>, ReadError> {
        let shard = &self.shards[sample.shard].name;
        let missing = |member: String| ReadError::MissingMember {
            shard: shard.clone(),
            offset: sample.offset,
            key: sample.key.clone(),
            member,
        };
        let mut suffixes: Vec<String> = Vec::new();
        if json.get("kind").and_then(Value::as_str) == Some("pack") {
            for sub in json
                .get("samples")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for im in sub
                    .get("images")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let s = im.as_str().ok_or_else(|| missing(im.to_string()))?;
                    // Suffixes (`img0.jpg`) per the pack format; full member names also work.
                    let s = s.strip_prefix(&format!("{}.", sample.key)).unwrap_or(s);
                    suffixes.push(s.to_string());
                }
            }
        } else {
            let prefix = format!("{}.", sample.key);
            for im in json
                .get("images")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = im
                    .get("member")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing(im.to_string()))?;
                // `llava-pack build` records the suffix (`img0.jpg`); a full member name
                // (`{key}.img0.jpg`, as docs/format.md §3 words it) is accepted too.
                let s = name.strip_prefix(&prefix).unwrap_or(name);
                suffixes.push(s.to_string());
            }
        }
        suffixes
            .into_iter()
            .map(|s| {
                if s == "json" {
                    return Err(missing(format!("{}.{s}", sample.key)));
                }
                sample
                    .member(&s)
                    .ok_or_else(|| missing(format!("{}.{s}", sample.key)))
            })
            .collect()
    }
}

/// Map one shard and validate its index against it.
fn open_shard(dir: &Path, name: &str, expect: Option<(u64, u64)>) -> Result<Shard, ReadError> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(io_err(&path))?;
    let size = file.metadata().map_err(io_err(&path))?.len();
    let idx_path = dir.join(format!("{name}.idx"));
    let raw = std::fs::read(&idx_path).map_err(io_err(&idx_path))?;
    let index_err = |offset: u64, message: String| ReadError::Index {
        shard: name.to_string(),
        offset,
        message,
    };
    let truncated = |offset: u64, message: String| ReadError::Truncated {
        shard: name.to_string(),
        offset,
        message,
    };
    if let Some((_, bytes)) = expect {
        if size < bytes {
            return Err(truncated(
                size,
                format!("file has {size} bytes, manifest says {bytes}"),
            ));
        }
    }
    if raw.len() % 8 != 0 || raw.is_empty() {
        return Err(index_err(
            0,
            format!("index size {} is not a positive multiple of 8", raw.len()),
        ));
    }
    let offsets: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if offsets[0] != 0 {
        return Err(index_err(offsets[0], "first offset is not 0".into()));
    }
    for w in offsets.windows(2) {
        if w[1] <= w[0] || w[1] % 512 != 0 {
            return Err(index_err(
                w[1],
                format!(
                    "offset {} after {} is not increasing and 512-aligned",
                    w[1], w[0]
                ),
            ));
        }
    }
    let end = *offsets.last().expect("non-empty");
    if size < end + 1024 {
        return Err(truncated(
            size,
            format!(
                "file has {size} bytes, index needs {} (samples + end blocks)",
                end + 1024
            ),
        ));
    }
    if size != end + 1024 {
        return Err(index_err(
            end,
            format!("index ends at {end} but the file has {size} bytes (stale index?)"),
        ));
    }
    if let Some((samples, bytes)) = expect {
        if offsets.len() as u64 - 1 != samples {
            return Err(index_err(
                0,
                format!(
                    "index lists {} samples, manifest says {samples} (stale index?)",
                    offsets.len() - 1
                ),
            ));
        }
        if size != bytes {
            return Err(index_err(
                0,
                format!("file has {size} bytes, manifest says {bytes}"),
            ));
        }
    }
    // SAFETY: the mapping is read-only and shards are immutable once written (a builder only
    // ever renames complete files into place); a file truncated underneath us would fault,
    // which is the documented hazard of every mmap reader.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(&path))?;
    if map[end as usize..].iter().any(|&b| b != 0) {
        return Err(index_err(
            end,
            "no end-of-archive blocks where the index ends (stale index?)".into(),
        ));
    }
    Ok(Shard {
        name: name.to_string(),
        map: Arc::new(map),
        offsets,
    })
}

#[cfg(test)]
mod tests;
