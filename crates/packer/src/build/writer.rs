//! The single, ordered writer: dedup, key assignment, per-sample JSON, shard rollover,
//! rejects and checkpoints. Runs on its own thread and sees records in input order, which is
//! what makes the output independent of the worker count. A closed shard is finished on a
//! thread of its own (`ShardWriter::finish_in_background`) while the next one is written;
//! checkpoints commit shards in order, each with the state saved when it was closed.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{PackError, Result};
use crate::shard::{self, FinishingShard, Member, ShardWriter};

use super::options::BuildOptions;
use super::process::{Outcome, Pos, Prepared, Processed};
use super::state::{write_atomic, Checkpoint, KeyTable, StatePaths, Stats};

/// Longest sanitised id kept in a key (member names must fit the 100-byte tar limit).
const MAX_KEY_BASE: usize = 60;
/// Top-level names our per-sample JSON uses; a user field with one of these names is kept
/// under `orig_{name}`.
const RESERVED: [&str; 4] = ["id", "kind", "images", "source"];
/// Shards being finished (hash tail, fsync, rename) in the background at most; beyond, the
/// writer waits for the oldest. More than one so that, on a machine with cores to spare, the
/// writer never waits for a hash: a hash (~1.4 GB/s) is slower than writing.
const MAX_FINISHING: usize = 3;

/// The job's state when a shard was closed: what its checkpoint commits once it is in place.
struct Closed {
    shard: FinishingShard,
    next_index: u64,
    stats: Stats,
    rejects_bytes: u64,
    journal_bytes: u64,
}

pub struct Writer {
    out: PathBuf,
    prefix: String,
    shard_size: u64,
    samples_per_shard: u64,
    multi_file: bool,
    files: Vec<String>,
    paths: StatePaths,
    pub ckpt: Checkpoint,
    keys: KeyTable,
    rejects: BufWriter<File>,
    rejects_len: u64,
    shard: Option<ShardWriter>,
    /// Closed shards still being finished, oldest first; committed in this order.
    finishing: VecDeque<Closed>,
    /// Number of the next shard to open (committed + finishing + open).
    next_shard: u32,
}

impl Writer {
    /// Continue from `ckpt` (the empty checkpoint for a fresh job).
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
        Ok(Writer {
            prefix: opts.prefix.clone(),
            shard_size: opts.shard_size,
            samples_per_shard: opts.samples_per_shard,
            multi_file: files.len() > 1,
            files: files.iter().map(|f| f.display().to_string()).collect(),
            rejects_len: ckpt.rejects_bytes,
            next_shard: ckpt.shards.len() as u32,
            finishing: VecDeque::new(),
            out,
            paths,
            ckpt,
            keys,
            rejects,
            shard: None,
        })
    }

    pub fn handle(&mut self, processed: Processed) -> Result<()> {
        let Processed { pos, outcome, text } = processed;
        let (p, text) = (&pos, text.as_deref());
        while self.finishing.front().is_some_and(|c| c.shard.is_done()) {
            self.commit_oldest()?;
        }
        match outcome {
            Outcome::Reject(r) => {
                if let Some(t) = text {
                    self.ckpt.stats.text.record(t, p.index, false);
                }
                self.reject(p, r.category, &r.reason, r.id.as_deref())?
            }
            Outcome::Sample(prep) => {
                // The key is `None` with `--dedup off` (and for text-only samples with
                // `--dedup image`): such a sample is never a duplicate.
                if let Some(h) = prep.dedup_key {
                    let first = self.keys.first_with(&h).map_err(|e| self.jerr(e))?;
                    if let Some(first) = first {
                        let why = format!("duplicate of {first}");
                        return self.reject(p, "duplicate", &why, prep.sample.id.as_deref());
                    }
                }
                // `--dedup-text`: the cleaned caption's key shares the journal with the dedup
                // keys (its own hash domain), so resume replays it the same way.
                if let Some(t) = prep.text_key {
                    if let Some(first) = self.keys.first_with(&t).map_err(|e| self.jerr(e))? {
                        let why = format!("caption duplicate of {first}");
                        return self.reject(p, "duplicate_text", &why, prep.sample.id.as_deref());
                    }
                }
                let key = self.assign_key(p, prep.sample.id.as_deref());
                self.write_sample(p, &key, &prep)?;
                self.keys
                    .insert(&key, prep.dedup_key)
                    .map_err(|e| self.jerr(e))?;
                if prep.text_key.is_some() {
                    self.keys
                        .insert(&key, prep.text_key)
                        .map_err(|e| self.jerr(e))?;
                }
                if let Some(t) = text {
                    self.ckpt.stats.text.record(t, p.index, true);
                }
            }
        }
        Ok(())
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

    fn write_sample(&mut self, p: &Pos, key: &str, prep: &Prepared) -> Result<()> {
        let multi = prep.images.len() > 1;
        let suffixes: Vec<String> = prep
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let ext = img.info().format.ext();
                if multi {
                    format!("img{i}.{ext}")
                } else {
                    ext.to_string()
                }
            })
            .collect();
        let meta = self.sample_json(p, key, prep, &suffixes);
        let mut members: Vec<Member<'_>> = prep
            .images
            .iter()
            .zip(&suffixes)
            .map(|(img, s)| Member {
                suffix: s,
                data: &img.bytes,
            })
            .collect();
        members.push(Member {
            suffix: "json",
            data: &meta,
        });
        let size = shard::tar_sample_size(members.iter().map(|m| m.data.len()));

        if let Some(w) = &self.shard {
            if w.samples() >= self.samples_per_shard || w.bytes() + size > self.shard_size {
                self.finish_shard(p.index)?;
            }
        }
        if self.shard.is_none() {
            let no = self.next_shard;
            self.next_shard += 1;
            let w = ShardWriter::create(&self.out, &self.prefix, no).map_err(|e| {
                PackError::output(self.out.join(shard::shard_name(&self.prefix, no)), e)
            })?;
            self.shard = Some(w);
        }
        let w = self.shard.as_mut().unwrap();
        w.append(key, &members)
            .map_err(|e| PackError::output(&self.out, e))?;

        let st = &mut self.ckpt.stats;
        st.records += 1;
        st.samples += 1;
        *st.kinds.entry(kind_name(prep)).or_default() += 1;
        st.text_only_samples += prep.images.is_empty() as u64;
        for img in &prep.images {
            st.image(img.info(), img.bytes.len() as u64);
            if let Some((_, _, before)) = img.reencoded_from {
                st.reencoded += 1;
                st.reencoded_bytes_before += before;
                st.reencoded_bytes_after += img.bytes.len() as u64;
            }
        }
        self.ckpt.next_index = p.index + 1;
        Ok(())
    }

    fn sample_json(&self, p: &Pos, key: &str, prep: &Prepared, suffixes: &[String]) -> Vec<u8> {
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
                let i = img.info();
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
        m.insert(
            "source".into(),
            json!({"file": self.files[p.file], "line": p.line, "key": key}),
        );
        serde_json::to_vec(&Value::Object(m)).expect("JSON values always serialise")
    }

    /// Close the open shard; its checkpoint (covering records before `next_index`) is
    /// committed once the shard is in place, while the next one is already being written.
    fn finish_shard(&mut self, next_index: u64) -> Result<()> {
        let Some(w) = self.shard.take() else {
            return Ok(());
        };
        let shard = w
            .finish_in_background()
            .map_err(|e| PackError::output(&self.out, e))?;
        self.finishing.push_back(Closed {
            shard,
            next_index,
            stats: self.ckpt.stats.clone(),
            rejects_bytes: self.rejects_len,
            journal_bytes: self.keys.len(),
        });
        while self.finishing.len() > MAX_FINISHING {
            self.commit_oldest()?;
        }
        Ok(())
    }

    /// Wait for the oldest closed shard, then write its rows and the checkpoint that commits
    /// it, with the job's state as it was when the shard was closed.
    fn commit_oldest(&mut self) -> Result<()> {
        let Some(c) = self.finishing.pop_front() else {
            return Ok(());
        };
        let (info, rows) = c
            .shard
            .wait()
            .map_err(|e| PackError::output(&self.out, e))?;
        let path = shard::rows_path(&self.paths.rows, &info.name);
        std::fs::create_dir_all(&self.paths.rows)
            .and_then(|()| write_atomic(&path, rows.as_bytes()))
            .map_err(|e| PackError::output(&path, e))?;
        self.ckpt.shards.push(info);
        self.sync_logs()?;
        let ckpt = Checkpoint {
            next_index: c.next_index,
            shards: self.ckpt.shards.clone(),
            rejects_bytes: c.rejects_bytes,
            journal_bytes: c.journal_bytes,
            stats: c.stats,
            ..Checkpoint::empty()
        };
        self.write_checkpoint(&ckpt)
    }

    /// Make everything written to `rejects.jsonl` and the journal so far durable (a
    /// checkpoint may then commit any prefix of them).
    fn sync_logs(&mut self) -> Result<()> {
        let rpath = self.out.join("rejects.jsonl");
        self.rejects
            .flush()
            .and_then(|()| self.rejects.get_ref().sync_data())
            .map_err(|e| PackError::output(&rpath, e))?;
        self.keys.commit().map_err(|e| self.jerr(e))?;
        Ok(())
    }

    fn write_checkpoint(&self, ckpt: &Checkpoint) -> Result<()> {
        let data = serde_json::to_vec_pretty(ckpt).expect("checkpoint serialises");
        write_atomic(&self.paths.checkpoint, &data)
            .map_err(|e| PackError::output(&self.paths.checkpoint, e))
    }

    /// Finish the last shard, commit every shard in order and then the job's final state;
    /// the caller then writes the final artifacts.
    pub fn finish(mut self, end_index: u64) -> Result<Checkpoint> {
        self.finish_shard(end_index)?;
        while !self.finishing.is_empty() {
            self.commit_oldest()?;
        }
        self.sync_logs()?;
        self.ckpt.rejects_bytes = self.rejects_len;
        self.ckpt.journal_bytes = self.keys.len();
        self.ckpt.next_index = end_index;
        self.write_checkpoint(&self.ckpt)?;
        Ok(self.ckpt)
    }
}

fn kind_name(prep: &Prepared) -> String {
    json!(prep.sample.kind)
        .as_str()
        .unwrap_or("unknown")
        .to_string()
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
    use super::sanitize;

    #[test]
    fn sanitize_keeps_keys_webdataset_safe() {
        assert_eq!(sanitize("coco/0001.jpg"), "coco_0001_jpg");
        assert_eq!(sanitize("ünï"), "_n_");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize(&"x".repeat(500)).len(), 60);
        assert!(!sanitize("a.b+c").contains(['.', '+']));
    }
}
