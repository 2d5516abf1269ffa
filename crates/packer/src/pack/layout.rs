//! The plan: which samples go into which pack, and the exact byte layout of every output pack
//! and shard, computed before any image byte is read.
//!
//! A pack is one tar sample `{packkey}.img{i}.{ext}` … + `{packkey}.json`. The pack json is
//! built from fixed pieces around each sub-sample's source json, which is copied verbatim, so
//! its size — and therefore every offset — is known from the metadata alone:
//!
//! ```text
//! {"format_version":1,"kind":"pack","max_len":M,"total_tokens":T,"image_tokens":I,"samples":[
//!   {"source_shard":S,"source_key":K,"length":L,"image_tokens":[…],"images":["img0.jpg",…],"sample":<source json>},
//!   …]}
//! ```
//! (compact, no whitespace; `sample` is last in each entry so its slot is computable).

use bucketer::pack::Packing;

use super::scan::{SampleMeta, ShardScan};
use crate::shard::{shard_name, tar_sample_size};

/// Where one sub-sample's bytes go in the output.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    pub shard: u32,
    /// Offset of the sample's first image header (its images are consecutive members).
    pub img_hdr: u64,
    /// Offset where its source json bytes go inside the pack json.
    pub json: u64,
}

#[derive(Debug, Clone)]
pub struct OutShard {
    pub name: String,
    /// Packs `first_pack..first_pack + offsets.len() - 1`.
    pub first_pack: usize,
    /// `.tar.idx` entries: each pack's first header, then the end of the last pack.
    pub offsets: Vec<u64>,
    /// File size incl. the two end-of-archive blocks.
    pub bytes: u64,
}

/// All samples of all source shards, addressed by a global index (shard order, then sample
/// order).
pub struct Corpus<'a> {
    pub shards: &'a [ShardScan],
    /// Global index of each shard's first sample (+ total at the end).
    pub starts: Vec<usize>,
}

impl<'a> Corpus<'a> {
    pub fn new(shards: &'a [ShardScan]) -> Self {
        let mut starts = vec![0];
        for s in shards {
            starts.push(starts.last().unwrap() + s.samples.len());
        }
        Corpus { shards, starts }
    }
    pub fn len(&self) -> usize {
        *self.starts.last().unwrap()
    }
    /// (shard index, sample) of a global index.
    pub fn get(&self, g: usize) -> (usize, &'a SampleMeta) {
        let k = self.starts.partition_point(|&s| s <= g) - 1;
        (k, &self.shards[k].samples[g - self.starts[k]])
    }
}

pub fn pack_key(p: usize) -> String {
    format!("pack-{p:09}")
}

/// The fixed pieces of a pack json: `items.len() + 1` parts that surround the source json of
/// each item (part k comes before item k's json, the last part closes the document).
pub fn json_parts(corpus: &Corpus<'_>, items: &[u32], max_len: u32) -> Vec<Vec<u8>> {
    let metas: Vec<(usize, &SampleMeta)> = items.iter().map(|&g| corpus.get(g as usize)).collect();
    let total: u64 = metas.iter().map(|(_, m)| m.length as u64).sum();
    let images: u64 = metas.iter().map(|(_, m)| m.image_tokens() as u64).sum();
    let mut parts = Vec::with_capacity(items.len() + 1);
    let mut cur = format!(
        "{{\"format_version\":{},\"kind\":\"pack\",\"max_len\":{max_len},\"total_tokens\":{total},\"image_tokens\":{images},\"samples\":[",
        crate::FORMAT_VERSION
    );
    let mut img_i = 0usize;
    for (n, (k, m)) in metas.iter().enumerate() {
        if n > 0 {
            cur.push_str("},");
        }
        let tokens: Vec<u32> = m.images.iter().map(|i| i.tokens).collect();
        let names: Vec<String> = m
            .images
            .iter()
            .map(|i| {
                img_i += 1;
                format!("img{}.{}", img_i - 1, i.ext)
            })
            .collect();
        cur.push_str(&format!(
            "{{\"source_shard\":{},\"source_key\":{},\"length\":{},\"image_tokens\":{},\"images\":{},\"sample\":",
            serde_json::to_string(&corpus.shards[*k].name).unwrap(),
            serde_json::to_string(&m.key).unwrap(),
            m.length,
            serde_json::to_string(&tokens).unwrap(),
            serde_json::to_string(&names).unwrap(),
        ));
        parts.push(std::mem::take(&mut cur).into_bytes());
    }
    cur.push_str(if metas.is_empty() { "]}" } else { "}]}" });
    parts.push(cur.into_bytes());
    parts
}

pub struct Plan {
    pub packing: Packing,
    /// Per global sample (meaningless for rejects).
    pub slots: Vec<Slot>,
    pub shards: Vec<OutShard>,
}

/// Lay out packs into shards of at most `packs_per_shard` packs and `shard_size` bytes (a
/// single larger pack gets a shard of its own).
pub fn layout(
    corpus: &Corpus<'_>,
    packing: Packing,
    max_len: u32,
    prefix: &str,
    packs_per_shard: u64,
    shard_size: u64,
) -> Plan {
    let mut slots = vec![Slot::default(); corpus.len()];
    let mut shards: Vec<OutShard> = Vec::new();
    let mut cur = OutShard {
        name: shard_name(prefix, 0),
        first_pack: 0,
        offsets: vec![0],
        bytes: 0,
    };
    for p in 0..packing.len() {
        let items = packing.pack(p);
        let parts = json_parts(corpus, items, max_len);
        let json_len: u64 = parts.iter().map(|x| x.len() as u64).sum::<u64>()
            + items
                .iter()
                .map(|&g| corpus.get(g as usize).1.json_size)
                .sum::<u64>();
        let sizes = items
            .iter()
            .flat_map(|&g| {
                corpus
                    .get(g as usize)
                    .1
                    .images
                    .iter()
                    .map(|i| i.size as usize)
            })
            .chain(std::iter::once(json_len as usize));
        let size = tar_sample_size(sizes);
        let start = *cur.offsets.last().unwrap();
        let n = cur.offsets.len() as u64 - 1;
        if n > 0 && (n >= packs_per_shard || start + size + 1024 > shard_size) {
            cur.bytes = start + 1024;
            let next = OutShard {
                name: shard_name(prefix, shards.len() as u32 + 1),
                first_pack: p,
                offsets: vec![0],
                bytes: 0,
            };
            shards.push(std::mem::replace(&mut cur, next));
        }
        let shard = shards.len() as u32;
        let mut off = *cur.offsets.last().unwrap();
        for &g in items {
            let m = corpus.get(g as usize).1;
            slots[g as usize] = Slot {
                shard,
                img_hdr: off,
                json: 0,
            };
            for im in &m.images {
                off += 512 + im.size.div_ceil(512) * 512;
            }
        }
        let mut pos = off + 512;
        for (k, &g) in items.iter().enumerate() {
            pos += parts[k].len() as u64;
            slots[g as usize].json = pos;
            pos += corpus.get(g as usize).1.json_size;
        }
        off += 512 + json_len.div_ceil(512) * 512;
        cur.offsets.push(off);
    }
    if cur.offsets.len() > 1 {
        cur.bytes = cur.offsets.last().unwrap() + 1024;
        shards.push(cur);
    }
    Plan {
        packing,
        slots,
        shards,
    }
}
