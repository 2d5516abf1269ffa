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

/// Open output files, bounded so a corpus with thousands of output shards stays under the
/// file-descriptor limit: when full, everything is synced and closed.
struct Outputs<'a> {
    out: &'a Path,
    plan: &'a Plan,
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
            let path = partial_path(self.out, &self.plan.shards[shard as usize].name);
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

/// Copy every packed sample of source shard `k` into place, then fsync what was written.
/// Returns the number of samples copied.
pub fn copy_source_shard(
    src: &Path,
    k: usize,
    corpus: &Corpus<'_>,
    plan: &Plan,
    placed: &[bool],
    out: &Path,
    cancel: &AtomicBool,
) -> io::Result<Option<u64>> {
    let file = File::open(src)?;
    let mut outs = Outputs {
        out,
        plan,
        files: HashMap::new(),
    };
    let mut buf = Vec::new();
    let mut copied = 0u64;
    for (j, m) in corpus.shards[k].samples.iter().enumerate() {
        if j % 64 == 0 && cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let g = corpus.starts[k] + j;
        if !placed[g] {
            continue;
        }
        let slot = plan.slots[g];
        let mut hdr = slot.img_hdr;
        for im in &m.images {
            buf.resize(im.size as usize, 0);
            file.read_exact_at(&mut buf, im.data_off)?;
            outs.get(slot.shard)?.write_all_at(&buf, hdr + 512)?;
            hdr += 512 + im.size.div_ceil(512) * 512;
        }
        buf.resize(m.json_size as usize, 0);
        file.read_exact_at(&mut buf, m.json_off)?;
        outs.get(slot.shard)?.write_all_at(&buf, slot.json)?;
        copied += 1;
    }
    outs.sync()?;
    Ok(Some(copied))
}
