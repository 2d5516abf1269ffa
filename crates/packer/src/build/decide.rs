//! The writer's decisions, without the bytes: exact-duplicate keepers, keys, shard
//! boundaries, `rejects.jsonl`, statistics and the key journal.
//!
//! One code path for both engines: the local [`super::writer::Writer`] asks the [`Decider`]
//! where each processed record goes and then writes its bytes; the distributed plan
//! (`super::ray`) feeds it the per-record metadata that scan tasks returned and records the
//! placements for the write tasks. Either way the decisions see records in input order and
//! only what [`SampleMeta`] holds, so both produce the same keys, shards and rejects.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{PackError, Result};
use crate::image::ImageInfo;
use crate::shard;
use crate::text::TextLog;

use super::options::BuildOptions;
use super::process::{Pos, Prepared};
use super::state::{Checkpoint, KeyTable, StatePaths, Stats};

/// Longest sanitised id kept in a key (member names must fit the 100-byte tar limit).
const MAX_KEY_BASE: usize = 60;
/// Top-level names our per-sample JSON uses; a user field with one of these names is kept
/// under `orig_{name}`.
const RESERVED: [&str; 4] = ["id", "kind", "images", "source"];
/// `,"source":` — what [`splice`] adds between the body and the source object (plus `}`).
const SOURCE_SEP: &[u8] = b",\"source\":";

/// What the decisions need to know about one image (its bytes stay with the worker).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub orientation: u8,
    pub color: String,
    pub animated: bool,
    /// Stored bytes (after any re-encode).
    pub bytes: u64,
    pub reencoded_from: Option<(u32, u32, u64)>,
}

/// What the decisions need to know about a sample: a few dozen bytes plus its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleMeta {
    pub id: Option<String>,
    pub kind: String,
    pub dedup_key: Option<[u8; 16]>,
    pub text_key: Option<[u8; 16]>,
    pub images: Vec<ImageMeta>,
    /// Bytes of the per-sample JSON without its `source` entry ([`sample_body`]).
    pub body_len: u64,
}

impl SampleMeta {
    pub fn of(prep: &Prepared, body_len: usize) -> Self {
        SampleMeta {
            id: prep.sample.id.clone(),
            kind: json!(prep.sample.kind)
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            dedup_key: prep.dedup_key,
            text_key: prep.text_key,
            images: prep
                .images
                .iter()
                .map(|img| {
                    let i = img.info();
                    ImageMeta {
                        format: i.format.ext().to_string(),
                        width: i.width,
                        height: i.height,
                        orientation: i.orientation,
                        color: i.color.clone(),
                        animated: i.animated,
                        bytes: img.bytes.len() as u64,
                        reencoded_from: img.reencoded_from,
                    }
                })
                .collect(),
            body_len: body_len as u64,
        }
    }
}

/// A record's fate as the worker saw it.
pub enum Fate<'a> {
    Sample(&'a SampleMeta),
    Reject {
        category: &'a str,
        reason: &'a str,
        id: Option<&'a str>,
    },
}

/// The job's state when a shard was closed: what the checkpoint committing it records.
pub struct CloseState {
    pub next_index: u64,
    pub stats: Stats,
    pub rejects_bytes: u64,
    pub journal_bytes: u64,
}

/// Where a sample goes.
pub struct Placed {
    pub key: String,
    pub shard: u32,
    /// The `source` object of its JSON (see [`splice`]).
    pub source: Vec<u8>,
    /// Its tar bytes (headers and padding included).
    pub size: u64,
    /// The open shard was closed before this sample, with this state.
    pub closed: Option<CloseState>,
    /// This sample opens shard `shard`.
    pub opens: bool,
}

/// Member suffixes of a sample's images: `jpg`, or `img0.jpg`, `img1.png`, … for several.
pub fn suffixes<'a>(formats: impl ExactSizeIterator<Item = &'a str>) -> Vec<String> {
    let multi = formats.len() > 1;
    formats
        .enumerate()
        .map(|(i, ext)| {
            if multi {
                format!("img{i}.{ext}")
            } else {
                ext.to_string()
            }
        })
        .collect()
}

/// The per-sample JSON without `source` (the only part that depends on the decisions).
pub fn sample_body(prep: &Prepared, suffixes: &[String]) -> Vec<u8> {
    let s = &prep.sample;
    let mut m = Map::new();
    m.insert(
        "id".into(),
        s.id.clone().map(Value::String).unwrap_or(Value::Null),
    );
    m.insert("kind".into(), json!(s.kind));
    for (k, v) in &s.fields {
        let name = if RESERVED.contains(&k.as_str()) {
            format!("orig_{k}")
        } else {
            k.clone()
        };
        m.insert(name, v.clone());
    }
    let images: Vec<Value> = prep
        .images
        .iter()
        .zip(suffixes)
        .map(|(img, suffix)| {
            let i: &ImageInfo = img.info();
            let mut o = json!({
                "member": suffix,
                "width": i.width,
                "height": i.height,
                "format": i.format,
                "orientation": i.orientation,
                "color": i.color,
                "animated": i.animated,
                "phash": img.analysis.phash.map(|h| format!("{h:016x}")),
                "dhash": img.analysis.dhash.map(|h| format!("{h:016x}")),
                "sha": hex::encode(img.content),
                "bytes": img.bytes.len(),
                "path": img.given,
            });
            if let Some((w, h, b)) = img.reencoded_from {
                o["reencoded"] = json!({"from_width": w, "from_height": h, "from_bytes": b});
            }
            o
        })
        .collect();
    m.insert("images".into(), Value::Array(images));
    serde_json::to_vec(&Value::Object(m)).expect("JSON values always serialise")
}

/// The full per-sample JSON: `body` with `"source": source` as its last entry (the bytes
/// serde_json writes for the whole object, `source` being inserted last).
pub fn splice(body: &[u8], source: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spliced_len(body.len() as u64, source) as usize);
    out.extend_from_slice(&body[..body.len() - 1]);
    out.extend_from_slice(SOURCE_SEP);
    out.extend_from_slice(source);
    out.push(b'}');
    out
}

/// A sample's tar members in the order both writers append them: its images under their
/// suffixes, then the JSON.
pub fn members<'a>(
    prep: &'a Prepared,
    suffixes: &'a [String],
    json: &'a [u8],
) -> Vec<shard::Member<'a>> {
    let mut members: Vec<shard::Member<'a>> = prep
        .images
        .iter()
        .zip(suffixes)
        .map(|(img, s)| shard::Member {
            suffix: s,
            data: &img.bytes,
        })
        .collect();
    members.push(shard::Member {
        suffix: "json",
        data: json,
    });
    members
}

/// The `source` object of a sample's JSON.
pub fn source_json(file: &str, line: u64, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"file": file, "line": line, "key": key}))
        .expect("JSON values always serialise")
}

fn spliced_len(body_len: u64, source: &[u8]) -> u64 {
    body_len + SOURCE_SEP.len() as u64 + source.len() as u64
}

pub struct Decider {
    out: PathBuf,
    shard_size: u64,
    samples_per_shard: u64,
    multi_file: bool,
    pub files: Vec<String>,
    paths: StatePaths,
    pub ckpt: Checkpoint,
    keys: KeyTable,
    rejects: BufWriter<File>,
    rejects_len: u64,
    /// The open shard: (number, samples, bytes).
    open: Option<(u32, u64, u64)>,
    /// Number of the next shard to open.
    next_shard: u32,
}

impl Decider {
    /// Continue from `ckpt` (the empty checkpoint for a fresh job): truncates `rejects.jsonl`
    /// and the journal to its committed lengths.
    pub fn open(opts: &BuildOptions, files: &[PathBuf], ckpt: Checkpoint) -> Result<Self> {
        let out = opts.output.clone();
        let paths = StatePaths::new(&out);
        let oerr = |p: &Path, e: std::io::Error| PackError::output(p, e);
        let keys = KeyTable::open(&paths.journal, ckpt.journal_bytes)
            .map_err(|e| oerr(&paths.journal, e))?;
        let rpath = out.join("rejects.jsonl");
        let rf = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&rpath)
            .map_err(|e| oerr(&rpath, e))?;
        rf.set_len(ckpt.rejects_bytes)
            .map_err(|e| oerr(&rpath, e))?;
        let mut rejects = BufWriter::with_capacity(1 << 16, rf);
        use std::io::Seek;
        rejects
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| oerr(&rpath, e))?;
        Ok(Decider {
            shard_size: opts.shard_size,
            samples_per_shard: opts.samples_per_shard,
            multi_file: files.len() > 1,
            files: files.iter().map(|f| f.display().to_string()).collect(),
            rejects_len: ckpt.rejects_bytes,
            next_shard: ckpt.shards.len() as u32,
            open: None,
            out,
            paths,
            ckpt,
            keys,
            rejects,
        })
    }

    /// Decide one record, in input order: `None` for a reject (written to `rejects.jsonl`),
    /// else where the sample goes. Statistics, journal and position are updated either way.
    pub fn handle(
        &mut self,
        p: &Pos,
        fate: Fate<'_>,
        text: Option<&TextLog>,
    ) -> Result<Option<Placed>> {
        let meta = match fate {
            Fate::Reject {
                category,
                reason,
                id,
            } => {
                if let Some(t) = text {
                    self.ckpt.stats.text.record(t, p.index, false);
                }
                self.reject(p, category, reason, id)?;
                return Ok(None);
            }
            Fate::Sample(meta) => meta,
        };
        // The key is `None` with `--dedup off` (and for text-only samples with
        // `--dedup image`): such a sample is never a duplicate.
        if let Some(h) = meta.dedup_key {
            if let Some(first) = self.keys.first_with(&h).map_err(|e| self.jerr(e))? {
                let why = format!("duplicate of {first}");
                self.reject(p, "duplicate", &why, meta.id.as_deref())?;
                return Ok(None);
            }
        }
        // `--dedup-text`: the cleaned caption's key shares the journal with the dedup keys
        // (its own hash domain), so resume replays it the same way.
        if let Some(t) = meta.text_key {
            if let Some(first) = self.keys.first_with(&t).map_err(|e| self.jerr(e))? {
                let why = format!("caption duplicate of {first}");
                self.reject(p, "duplicate_text", &why, meta.id.as_deref())?;
                return Ok(None);
            }
        }
        let key = self.assign_key(p, meta.id.as_deref());
        let source = source_json(&self.files[p.file], p.line, &key);
        let json_len = spliced_len(meta.body_len, &source) as usize;
        let members = meta.images.iter().map(|i| i.bytes as usize);
        let size = shard::tar_sample_size(members.chain([json_len]));
        let mut closed = None;
        if let Some((_, samples, bytes)) = self.open {
            if samples >= self.samples_per_shard || bytes + size > self.shard_size {
                closed = self.close(p.index);
            }
        }
        let opens = self.open.is_none();
        if opens {
            self.open = Some((self.next_shard, 0, 0));
            self.next_shard += 1;
        }
        let open = self.open.as_mut().expect("a shard is open");
        open.1 += 1;
        open.2 += size;
        let shard = open.0;

        let st = &mut self.ckpt.stats;
        st.records += 1;
        st.samples += 1;
        *st.kinds.entry(meta.kind.clone()).or_default() += 1;
        st.text_only_samples += meta.images.is_empty() as u64;
        for img in &meta.images {
            st.image_meta(img);
            if let Some((_, _, before)) = img.reencoded_from {
                st.reencoded += 1;
                st.reencoded_bytes_before += before;
                st.reencoded_bytes_after += img.bytes;
            }
        }
        self.ckpt.next_index = p.index + 1;
        self.keys
            .insert(&key, meta.dedup_key)
            .map_err(|e| self.jerr(e))?;
        if meta.text_key.is_some() {
            self.keys
                .insert(&key, meta.text_key)
                .map_err(|e| self.jerr(e))?;
        }
        if let Some(t) = text {
            self.ckpt.stats.text.record(t, p.index, true);
        }
        Ok(Some(Placed {
            key,
            shard,
            source,
            size,
            closed,
            opens,
        }))
    }

    /// Close the open shard (if any); the next sample opens a new one.
    pub fn close(&mut self, next_index: u64) -> Option<CloseState> {
        self.open.take()?;
        Some(CloseState {
            next_index,
            stats: self.ckpt.stats.clone(),
            rejects_bytes: self.rejects_len,
            journal_bytes: self.keys.len(),
        })
    }

    fn jerr(&self, e: std::io::Error) -> PackError {
        PackError::output(&self.paths.journal, e)
    }

    fn reject(&mut self, p: &Pos, category: &str, reason: &str, id: Option<&str>) -> Result<()> {
        let mut line = json!({
            "index": p.index,
            "file": self.files[p.file],
            "line": p.line,
            "id": id,
            "category": category,
            "reason": reason,
        });
        if let Some(offset) = p.offset {
            // A JSON array element: `line` is its 0-based number; both named explicitly.
            line["element"] = json!(p.line);
            line["offset"] = json!(offset);
        }
        let mut s = line.to_string();
        s.push('\n');
        self.rejects
            .write_all(s.as_bytes())
            .map_err(|e| PackError::output(self.out.join("rejects.jsonl"), e))?;
        self.rejects_len += s.len() as u64;
        self.ckpt.stats.reject(category);
        self.ckpt.next_index = p.index + 1;
        Ok(())
    }

    /// A webdataset-safe key: the sanitised id, or `L{line}` without one; if already taken,
    /// `{base}+{index}` — `+` never appears in a sanitised base and the index is unique, so
    /// fallback keys never collide.
    fn assign_key(&self, p: &Pos, id: Option<&str>) -> String {
        let base = match id {
            Some(id) => sanitize(id),
            None if self.multi_file => format!("F{:04}-L{:09}", p.file, p.line),
            None => format!("L{:09}", p.line),
        };
        if self.keys.key_taken(&base) {
            format!("{base}+{}", p.index)
        } else {
            base
        }
    }

    /// Make everything written to `rejects.jsonl` and the journal so far durable (a
    /// checkpoint may then commit any prefix of them).
    pub fn sync_logs(&mut self) -> Result<()> {
        let rpath = self.out.join("rejects.jsonl");
        self.rejects
            .flush()
            .and_then(|()| self.rejects.get_ref().sync_data())
            .map_err(|e| PackError::output(&rpath, e))?;
        self.keys.commit().map_err(|e| self.jerr(e))?;
        Ok(())
    }

    /// Sync the logs and return the job's state after its last record (`end_index`), with
    /// the committed shards the caller adds.
    pub fn finish(mut self, end_index: u64) -> Result<Checkpoint> {
        self.sync_logs()?;
        self.ckpt.rejects_bytes = self.rejects_len;
        self.ckpt.journal_bytes = self.keys.len();
        self.ckpt.next_index = end_index;
        Ok(self.ckpt)
    }
}

/// Map an id to `[A-Za-z0-9_-]{1,60}` (other characters become `_`).
pub fn sanitize(id: &str) -> String {
    let mut s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_KEY_BASE)
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{sanitize, splice};
    use serde_json::json;

    #[test]
    fn sanitize_keeps_keys_webdataset_safe() {
        assert_eq!(sanitize("coco/0001.jpg"), "coco_0001_jpg");
        assert_eq!(sanitize("ünï"), "_n_");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize(&"x".repeat(500)).len(), 60);
        assert!(!sanitize("a.b+c").contains(['.', '+']));
    }

    #[test]
    fn splicing_the_source_equals_serialising_the_whole_object() {
        let mut whole = json!({"id": "a", "kind": "caption", "caption": "c \"q\"", "images": []});
        let body = serde_json::to_vec(&whole).unwrap();
        let source = json!({"file": "f.jsonl", "line": 3, "key": "a"});
        whole["source"] = source.clone();
        let spliced = splice(&body, &serde_json::to_vec(&source).unwrap());
        assert_eq!(spliced, serde_json::to_vec(&whole).unwrap());
    }
}
