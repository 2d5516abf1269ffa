//! Writing packed shards with positioned writes into preallocated `{name}.partial` files.
//!
//! 1. Skeleton: every output file is created at its final size (zeros = tar padding and end
//!    blocks) and receives all tar headers and the fixed pieces of every pack json.
//! 2. Pass 2, per source shard: its samples are read in file order (the only read of image
//!    bytes) and each image / source json is written at its planned offset. Every byte range
//!    has exactly one writer and the same content whatever the order, so source shards can run
//!    in parallel and a redo after a crash rewrites identical bytes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::layout::{json_parts, pack_key, Corpus, Plan};
use crate::shard::tar_writer::member_header;

pub fn partial_path(out: &Path, name: &str) -> PathBuf {
    out.join(format!("{name}.partial"))
}

/// Write the skeleton of every output shard.
pub fn write_skeletons(
    out: &Path,
    corpus: &Corpus<'_>,
    plan: &Plan,
    max_len: u32,
) -> io::Result<()> {
    for sh in &plan.shards {
        let f = File::create(partial_path(out, &sh.name))?;
        f.set_len(sh.bytes)?;
        // One small pwrite per header / json piece: cheap next to the image bytes of pass 2.
        for (k, &start) in sh.offsets[..sh.offsets.len() - 1].iter().enumerate() {
            let p = sh.first_pack + k;
            let items = plan.packing.pack(p);
            let key = pack_key(p);
            let mut off = start;
            let mut img_i = 0usize;
            for &g in items {
                for im in &corpus.get(g as usize).1.images {
                    let h = member_header(&format!("{key}.img{img_i}.{}", im.ext), im.size)?;
                    f.write_all_at(h.as_bytes(), off)?;
                    off += 512 + im.size.div_ceil(512) * 512;
                    img_i += 1;
                }
            }
            let parts = json_parts(corpus, items, max_len);
            let json_len: u64 = parts.iter().map(|x| x.len() as u64).sum::<u64>()
                + items
                    .iter()
                    .map(|&g| corpus.get(g as usize).1.json_size)
                    .sum::<u64>();
            let h = member_header(&format!("{key}.json"), json_len)?;
            f.write_all_at(h.as_bytes(), off)?;
            let mut pos = off + 512;
            for (n, part) in parts.iter().enumerate() {
                f.write_all_at(part, pos)?;
                pos += part.len() as u64;
                if let Some(&g) = items.get(n) {
                    pos += corpus.get(g as usize).1.json_size;
                }
            }
        }
        f.sync_all()?;
    }
    Ok(())
}

/// Pass-2 work of one source shard: every byte range it contributes to the output, as
/// `(output shard, source offset, length, output offset)`. Built by the planner, run by
/// [`copy_work`] — in a local thread or a Ray task on any node.
#[derive(Debug, Clone)]
pub struct CopyWork {
    pub source: PathBuf,
    pub output: PathBuf,
    /// Samples the ranges belong to (reported as progress).
    pub samples: u64,
    /// Names of the output shards the ranges write into (`.partial` files during the job).
    pub shards: Vec<String>,
    pub ranges: Vec<(u32, u64, u64, u64)>,
}

impl CopyWork {
    /// The work of source shard `k` of `corpus` under `plan` (`placed`: per global sample).
    pub fn for_source(
        src: &Path,
        k: usize,
        corpus: &Corpus<'_>,
        plan: &Plan,
        placed: &[bool],
        out: &Path,
    ) -> Self {
        let mut local: HashMap<u32, u32> = HashMap::new();
        let mut w = CopyWork {
            source: src.to_path_buf(),
            output: out.to_path_buf(),
            samples: 0,
            shards: Vec::new(),
            ranges: Vec::new(),
        };
        for (j, m) in corpus.shards[k].samples.iter().enumerate() {
            let g = corpus.starts[k] + j;
            if !placed[g] {
                continue;
            }
            let slot = plan.slots[g];
            let sh = *local.entry(slot.shard).or_insert_with(|| {
                w.shards.push(plan.shards[slot.shard as usize].name.clone());
                w.shards.len() as u32 - 1
            });
            let mut hdr = slot.img_hdr;
            for im in &m.images {
                w.ranges.push((sh, im.data_off, im.size, hdr + 512));
                hdr += 512 + im.size.div_ceil(512) * 512;
            }
            w.ranges.push((sh, m.json_off, m.json_size, slot.json));
            w.samples += 1;
        }
        w
    }
}

/// Open output files, bounded so a corpus with thousands of output shards stays under the
/// file-descriptor limit: when full, everything is synced and closed.
struct Outputs<'a> {
    out: &'a Path,
    names: &'a [String],
    files: HashMap<u32, File>,
}

const MAX_OPEN: usize = 256;

impl<'a> Outputs<'a> {
    fn get(&mut self, shard: u32) -> io::Result<&File> {
        if !self.files.contains_key(&shard) && self.files.len() >= MAX_OPEN {
            self.sync()?;
            self.files.clear();
        }
        if !self.files.contains_key(&shard) {
            let path = partial_path(self.out, &self.names[shard as usize]);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            self.files.insert(shard, f);
        }
        Ok(&self.files[&shard])
    }
    fn sync(&self) -> io::Result<()> {
        for f in self.files.values() {
            f.sync_data()?;
        }
        Ok(())
    }
}

/// Copy every range of `work` into place (source read in file order), then fsync what was
/// written. Returns the number of samples copied, `None` if cancelled. Idempotent: a redo
/// after a crash or a retried task writes the same bytes at the same offsets.
pub fn copy_work(work: &CopyWork, cancel: &AtomicBool) -> io::Result<Option<u64>> {
    let file = File::open(&work.source)?;
    let mut outs = Outputs {
        out: &work.output,
        names: &work.shards,
        files: HashMap::new(),
    };
    let mut buf = Vec::new();
    for (n, &(sh, src, len, dst)) in work.ranges.iter().enumerate() {
        if n % 64 == 0 && cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, src)?;
        outs.get(sh)?.write_all_at(&buf, dst)?;
    }
    outs.sync()?;
    Ok(Some(work.samples))
}
