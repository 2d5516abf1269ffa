//! Durable job state: statistics, the checkpoint written after each shard, and the journal
//! of written keys and image hashes that `--resume` replays to rebuild dedup state.
//!
//! Memory: the dedup table holds 16 + 8 bytes per unique dedup key (every written sample with
//! the default `--dedup exact`, each unique image set with `--dedup image`) and the key table
//! 8 bytes per sample (plus hash-table overhead); everything else is bounded by the chunk size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::image::ImageInfo;
use crate::shard::ShardInfo;

/// Upper edges of the long-side histogram bins (px); the last bin is open.
pub const LONG_SIDE_EDGES: [u32; 6] = [256, 512, 1024, 2048, 4096, 8192];
/// Upper edges of the pixel-count histogram bins (megapixels); the last bin is open.
pub const MEGAPIXEL_EDGES: [f64; 7] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub records: u64,
    pub samples: u64,
    pub rejects: u64,
    /// Blank (whitespace-only) JSONL lines: skipped, not records. Input lines = records +
    /// blank lines. Set when the job completes (absent from checkpoints of older versions).
    #[serde(default)]
    pub blank_lines: u64,
    pub rejects_by_reason: BTreeMap<String, u64>,
    pub kinds: BTreeMap<String, u64>,
    pub text_only_samples: u64,
    pub images: u64,
    pub image_bytes: u64,
    pub formats: BTreeMap<String, u64>,
    pub colors: BTreeMap<String, u64>,
    pub long_side_hist: Vec<u64>,
    pub megapixel_hist: Vec<u64>,
    pub exif_rotated: u64,
    pub animated: u64,
    pub reencoded: u64,
    pub reencoded_bytes_before: u64,
    pub reencoded_bytes_after: u64,
    /// Text cleaning: samples changed per normalisation, rejected per rule.
    #[serde(default)]
    pub text: crate::text::TextStats,
}

fn bin<T: PartialOrd>(edges: &[T], v: T) -> usize {
    edges.iter().position(|e| v < *e).unwrap_or(edges.len())
}

impl Stats {
    pub fn reject(&mut self, category: &str) {
        self.records += 1;
        self.rejects += 1;
        *self
            .rejects_by_reason
            .entry(category.to_string())
            .or_default() += 1;
    }

    pub fn image(&mut self, info: &ImageInfo, stored_bytes: u64) {
        let (w, h) = (info.width, info.height);
        self.image_fields(
            info.format.ext(),
            &info.color,
            (w, h),
            info.orientation,
            info.animated,
        );
        self.image_bytes += stored_bytes;
    }

    /// [`Stats::image`] from the metadata a scan task returned (distributed build).
    pub fn image_meta(&mut self, m: &super::decide::ImageMeta) {
        let size = (m.width, m.height);
        self.image_fields(&m.format, &m.color, size, m.orientation, m.animated);
        self.image_bytes += m.bytes;
    }

    fn image_fields(&mut self, ext: &str, color: &str, size: (u32, u32), orient: u8, anim: bool) {
        if self.long_side_hist.is_empty() {
            self.long_side_hist = vec![0; LONG_SIDE_EDGES.len() + 1];
            self.megapixel_hist = vec![0; MEGAPIXEL_EDGES.len() + 1];
        }
        self.images += 1;
        *self.formats.entry(ext.to_string()).or_default() += 1;
        *self.colors.entry(color.to_string()).or_default() += 1;
        self.long_side_hist[bin(&LONG_SIDE_EDGES, size.0.max(size.1))] += 1;
        let mp = size.0 as f64 * size.1 as f64 / 1e6;
        self.megapixel_hist[bin(&MEGAPIXEL_EDGES, mp)] += 1;
        self.exif_rotated += (orient != 1) as u64;
        self.animated += anim as u64;
    }

    /// The histograms with their bin labels, for `stats.json`.
    pub fn histograms(&self) -> Value {
        let label = |lo: String, hi: Option<String>| match hi {
            Some(hi) => format!("[{lo}, {hi})"),
            None => format!("[{lo}, inf)"),
        };
        let sides: Vec<Value> = (0..=LONG_SIDE_EDGES.len())
            .map(|i| {
                let lo = if i == 0 { 0 } else { LONG_SIDE_EDGES[i - 1] };
                let hi = LONG_SIDE_EDGES.get(i).map(|h| h.to_string());
                json!({"long_side_px": label(lo.to_string(), hi), "images": self.long_side_hist.get(i).copied().unwrap_or(0)})
            })
            .collect();
        let mps: Vec<Value> = (0..=MEGAPIXEL_EDGES.len())
            .map(|i| {
                let lo = if i == 0 { 0.0 } else { MEGAPIXEL_EDGES[i - 1] };
                let hi = MEGAPIXEL_EDGES.get(i).map(|h| h.to_string());
                json!({"megapixels": label(lo.to_string(), hi), "images": self.megapixel_hist.get(i).copied().unwrap_or(0)})
            })
            .collect();
        json!({"long_side": sides, "megapixels": mps})
    }
}

/// Written atomically after every finished shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format_version: u32,
    /// First input record not covered by the committed shards and rejects.
    pub next_index: u64,
    pub shards: Vec<ShardInfo>,
    /// Committed lengths of `rejects.jsonl` and the journal.
    pub rejects_bytes: u64,
    pub journal_bytes: u64,
    pub stats: Stats,
    pub complete: bool,
}

impl Checkpoint {
    pub fn empty() -> Self {
        Checkpoint {
            format_version: crate::FORMAT_VERSION,
            next_index: 0,
            shards: Vec::new(),
            rejects_bytes: 0,
            journal_bytes: 0,
            stats: Stats::default(),
            complete: false,
        }
    }
}

/// Paths of the job's state inside the output directory.
pub struct StatePaths {
    pub dir: PathBuf,
    pub job: PathBuf,
    pub checkpoint: PathBuf,
    pub journal: PathBuf,
    /// Each finished shard's energon index rows (`shard::rows_path`), written before the
    /// checkpoint that commits the shard.
    pub rows: PathBuf,
}

impl StatePaths {
    pub fn new(output: &Path) -> Self {
        let dir = output.join(".llava-pack");
        StatePaths {
            job: dir.join("job.json"),
            checkpoint: dir.join("checkpoint.json"),
            journal: dir.join("journal.bin"),
            rows: dir.join("rows"),
            dir,
        }
    }
}

/// Write `data` to `path` via a temp file, fsync and rename, so readers see old or new, never half.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        // Persist the rename itself; not all filesystems allow opening directories.
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Keys and dedup keys (`process::Prepared::dedup_key`) of every written sample, mirrored to an
/// append-only journal.
///
/// Journal entry: `flag u8 (1 = has hash)`, `[hash; 16]` if flagged, `len u16 LE`, key bytes.
pub struct KeyTable {
    keys: HashSet<u64>,
    /// dedup key → journal offset of the entry of its first sample.
    seen: HashMap<[u8; 16], u64>,
    file: BufWriter<File>,
    len: u64,
}

fn key_hash(key: &str) -> u64 {
    let h = blake3::hash(key.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap())
}

impl KeyTable {
    /// Open the journal, keep its first `committed` bytes (drop anything after) and replay them.
    pub fn open(path: &Path, committed: u64) -> io::Result<Self> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        f.set_len(committed)?;
        let mut buf = Vec::with_capacity(committed as usize);
        f.seek(SeekFrom::Start(0))?;
        (&mut f).take(committed).read_to_end(&mut buf)?;
        let (mut keys, mut seen) = (HashSet::new(), HashMap::new());
        let mut pos = 0usize;
        let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "corrupt build journal");
        while pos < buf.len() {
            let start = pos as u64;
            let flag = buf[pos];
            pos += 1;
            let hash = if flag == 1 {
                let h: [u8; 16] = buf
                    .get(pos..pos + 16)
                    .ok_or_else(corrupt)?
                    .try_into()
                    .unwrap();
                pos += 16;
                Some(h)
            } else {
                None
            };
            let n = u16::from_le_bytes(
                buf.get(pos..pos + 2)
                    .ok_or_else(corrupt)?
                    .try_into()
                    .unwrap(),
            );
            pos += 2;
            let key = std::str::from_utf8(buf.get(pos..pos + n as usize).ok_or_else(corrupt)?)
                .map_err(|_| corrupt())?;
            pos += n as usize;
            keys.insert(key_hash(key));
            if let Some(h) = hash {
                seen.entry(h).or_insert(start);
            }
        }
        f.seek(SeekFrom::End(0))?;
        Ok(KeyTable {
            keys,
            seen,
            file: BufWriter::with_capacity(1 << 16, f),
            len: committed,
        })
    }

    pub fn key_taken(&self, key: &str) -> bool {
        self.keys.contains(&key_hash(key))
    }

    /// The key of the first sample with this dedup key, if any.
    pub fn first_with(&mut self, hash: &[u8; 16]) -> io::Result<Option<String>> {
        let Some(&off) = self.seen.get(hash) else {
            return Ok(None);
        };
        self.file.flush()?;
        let f = self.file.get_mut();
        f.seek(SeekFrom::Start(off + 17))?;
        let mut n = [0u8; 2];
        f.read_exact(&mut n)?;
        let mut key = vec![0u8; u16::from_le_bytes(n) as usize];
        f.read_exact(&mut key)?;
        f.seek(SeekFrom::End(0))?;
        Ok(Some(String::from_utf8_lossy(&key).into_owned()))
    }

    pub fn insert(&mut self, key: &str, hash: Option<[u8; 16]>) -> io::Result<()> {
        let start = self.len;
        let mut entry = Vec::with_capacity(19 + key.len());
        match hash {
            Some(h) => {
                entry.push(1);
                entry.extend_from_slice(&h);
                self.seen.entry(h).or_insert(start);
            }
            None => entry.push(0),
        }
        entry.extend_from_slice(&(key.len() as u16).to_le_bytes());
        entry.extend_from_slice(key.as_bytes());
        self.file.write_all(&entry)?;
        self.len += entry.len() as u64;
        self.keys.insert(key_hash(key));
        Ok(())
    }

    /// Bytes of journal written so far (committed or not).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Flush and fsync; returns the committed length.
    pub fn commit(&mut self) -> io::Result<u64> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_replays_keys_and_hashes_up_to_the_committed_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.bin");
        let mut t = KeyTable::open(&p, 0).unwrap();
        t.insert("a", Some([1; 16])).unwrap();
        t.insert("b", None).unwrap();
        let committed = t.commit().unwrap();
        t.insert("c", Some([2; 16])).unwrap();
        assert_eq!(t.first_with(&[1; 16]).unwrap().as_deref(), Some("a"));
        assert_eq!(t.first_with(&[2; 16]).unwrap().as_deref(), Some("c"));
        drop(t);
        let mut t = KeyTable::open(&p, committed).unwrap();
        assert!(t.key_taken("a") && t.key_taken("b") && !t.key_taken("c"));
        assert_eq!(t.first_with(&[1; 16]).unwrap().as_deref(), Some("a"));
        assert_eq!(t.first_with(&[2; 16]).unwrap(), None);
        t.insert("d", Some([1; 16])).unwrap();
        // The first occurrence stays the reference.
        assert_eq!(t.first_with(&[1; 16]).unwrap().as_deref(), Some("a"));
    }

    #[test]
    fn histogram_bins() {
        assert_eq!(bin(&LONG_SIDE_EDGES, 10), 0);
        assert_eq!(bin(&LONG_SIDE_EDGES, 256), 1);
        assert_eq!(bin(&LONG_SIDE_EDGES, 9000), 6);
    }
}
