//! `llava-pack dedup --rewrite OUT/`: a new shard directory without the dropped samples, in the
//! format a build writes (tar shards + `.tar.idx`, `.nv-meta/`, `manifest.json`, `stats.json`,
//! `rejects.jsonl`), so `llava-pack pack`, the loader and megatron-energon read it as they read
//! a build. Kept samples are copied member by member, byte for byte (no image is decoded or
//! re-encoded), through the same [`ShardWriter`] as the build; input shard `i` becomes the
//! `i`-th non-empty output shard. Written as `OUT.partial/`, renamed to `OUT` when complete.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde_json::{json, Value};

use super::search::Tally;
use crate::build::Stats;
use crate::error::{PackError, Result};
use crate::image::{ImageFormat, ImageInfo};
use crate::reader::{OpenOptions, ShardSet};
use crate::shard::{rows_path, write_energon_meta_with_rows, Member, ShardInfo, ShardWriter};

/// Marks a `.partial` directory as a rewrite's own, so a stale one may be removed.
const MARKER: &str = ".llava-pack-rewrite";

/// `{out}.partial`, beside `out`.
fn partial_of(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

fn canonical(p: &Path) -> PathBuf {
    // A path that does not exist yet: its parent's canonical form plus its name.
    std::fs::canonicalize(p).unwrap_or_else(|_| match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            canonical(parent).join(name)
        }
        _ => p.to_path_buf(),
    })
}

/// Refuse an `OUT` that would overwrite or nest with the input or the dedup output.
pub(crate) fn validate(out: &Path, input: &Path, dedup_out: &Path, overwrite: bool) -> Result<()> {
    let (o, i, d) = (canonical(out), canonical(input), canonical(dedup_out));
    if o.starts_with(&i) || i.starts_with(&o) {
        return Err(PackError::InvalidOption(format!(
            "--rewrite {} must be outside --input {} (and not contain it)",
            out.display(),
            input.display()
        )));
    }
    if o == d || d.starts_with(&o) {
        return Err(PackError::InvalidOption(format!(
            "--rewrite {} must not be (or contain) the dedup --output {}",
            out.display(),
            dedup_out.display()
        )));
    }
    if out.exists() && !overwrite {
        return Err(PackError::output(
            out,
            "already exists; pass --overwrite to replace it",
        ));
    }
    Ok(())
}

/// What the rewrite wrote (also recorded in its `manifest.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RewriteSummary {
    pub path: PathBuf,
    pub shards: u64,
    pub samples: u64,
    pub bytes: u64,
    pub dropped: u64,
}

/// Write `out` from `input`, leaving out the samples with a `reason` (global sample order).
pub(crate) fn rewrite(
    input: &Path,
    out: &Path,
    overwrite: bool,
    reason: &[Option<String>],
    dedup_options: Value,
    cancel: &AtomicBool,
    tally: Tally<'_>,
) -> Result<RewriteSummary> {
    let set = ShardSet::open(input, OpenOptions::default())
        .map_err(|e| PackError::input(input, format!("--input: {e}")))?;
    let partial = partial_of(out);
    if partial.exists() {
        if !partial.join(MARKER).exists() {
            return Err(PackError::output(
                &partial,
                "exists and is not a --rewrite in progress; remove it",
            ));
        }
        std::fs::remove_dir_all(&partial).map_err(|e| PackError::output(&partial, e))?;
    }
    let oerr = |p: &Path, e: std::io::Error| PackError::output(p, e);
    std::fs::create_dir_all(&partial).map_err(|e| oerr(&partial, e))?;
    std::fs::write(partial.join(MARKER), b"").map_err(|e| oerr(&partial, e))?;
    let result = write_all(&set, &partial, reason, dedup_options, cancel, tally);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    std::fs::remove_file(partial.join(MARKER)).map_err(|e| oerr(&partial, e))?;
    if out.exists() && overwrite {
        std::fs::remove_dir_all(out).map_err(|e| oerr(out, e))?;
    }
    std::fs::rename(&partial, out).map_err(|e| oerr(out, e))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::shard::sync_dir(parent).map_err(|e| oerr(parent, e))?;
    }
    Ok(RewriteSummary {
        path: out.to_path_buf(),
        ..summary
    })
}

fn write_all(
    set: &ShardSet,
    dir: &Path,
    reason: &[Option<String>],
    dedup_options: Value,
    cancel: &AtomicBool,
    tally: Tally<'_>,
) -> Result<RewriteSummary> {
    let prefix = set
        .manifest
        .as_ref()
        .and_then(|m| m.pointer("/options/prefix"))
        .and_then(Value::as_str)
        .unwrap_or("shard")
        .to_string();
    // Output index of each input shard that keeps a sample.
    let mut index = Vec::with_capacity(set.shards.len());
    let mut next = 0u32;
    for s in 0..set.shards.len() {
        let start = set.shard_start(s) as usize;
        let kept = (start..start + set.shards[s].samples()).any(|g| reason[g].is_none());
        index.push(kept.then(|| {
            next += 1;
            next - 1
        }));
    }
    tally.total.store(set.len(), Ordering::Relaxed);
    let rows_dir = dir.join(".llava-pack").join("rows");
    std::fs::create_dir_all(&rows_dir).map_err(|e| PackError::output(&rows_dir, e))?;
    let parts: Vec<Result<Option<(ShardInfo, Stats)>>> = (0..set.shards.len())
        .into_par_iter()
        .map(|s| {
            let Some(i) = index[s] else {
                tally.add(set.shards[s].samples() as u64);
                return Ok(None);
            };
            let (info, st) = copy_shard(set, s, dir, &prefix, i, reason, cancel, tally)?;
            Ok(Some((info, st)))
        })
        .collect();
    let mut shards = Vec::new();
    let mut stats = Stats::default();
    for p in parts {
        if let Some((info, st)) = p? {
            merge(&mut stats, st);
            shards.push(info);
        }
    }
    if shards.is_empty() {
        return Err(PackError::InvalidOption(
            "--rewrite: every sample is dropped, nothing to write".into(),
        ));
    }
    write_energon_meta_with_rows(dir, &shards, &rows_dir)
        .map_err(|e| PackError::output(dir.join(".nv-meta"), e))?;
    let state = dir.join(".llava-pack");
    std::fs::remove_dir_all(&state).map_err(|e| PackError::output(&state, e))?;

    // Dropped samples are this directory's rejects, as a build records its own.
    let mut rejects = Vec::new();
    for (g, r) in reason.iter().enumerate() {
        if let Some(r) = r {
            let sample = set
                .sample(g as u64)
                .map_err(|e| PackError::input(&set.dir, e))?;
            let category = if r.starts_with("contaminates") {
                "contamination"
            } else {
                "near_duplicate"
            };
            stats.reject(category);
            let line = json!({"index": g, "key": sample.key,
                              "shard": set.shards[sample.shard].name, "category": category,
                              "reason": r});
            writeln!(rejects, "{line}").expect("writing to memory");
        }
    }
    let p = dir.join("rejects.jsonl");
    std::fs::write(&p, &rejects).map_err(|e| PackError::output(&p, e))?;
    let bytes: u64 = shards.iter().map(|s| s.bytes).sum();
    let source_options = set
        .manifest
        .as_ref()
        .and_then(|m| m.get("options"))
        .cloned()
        .unwrap_or(Value::Null);
    let manifest = json!({
        "format_version": crate::FORMAT_VERSION,
        "tool": format!("llava-pack {}", env!("CARGO_PKG_VERSION")),
        "shards": shards,
        "totals": {
            "shards": shards.len(),
            "samples": stats.samples,
            "bytes": bytes,
            "records": stats.records,
            "rejects": stats.rejects,
            "blank_lines": 0,
        },
        "options": source_options,
        "rewrite": {"from": set.dir, "dedup": dedup_options},
    });
    let write = |name: &str, v: &Value| {
        let p = dir.join(name);
        let data = serde_json::to_vec_pretty(v).expect("JSON values serialise");
        std::fs::write(&p, data).map_err(|e| PackError::output(&p, e))
    };
    write("manifest.json", &manifest)?;
    let mut st = serde_json::to_value(&stats).expect("stats serialise");
    st["histograms"] = stats.histograms();
    write("stats.json", &st)?;
    crate::shard::sync_dir(dir).map_err(|e| PackError::output(dir, e))?;
    Ok(RewriteSummary {
        path: dir.to_path_buf(),
        shards: shards.len() as u64,
        samples: stats.samples,
        bytes,
        dropped: stats.rejects,
    })
}

/// Copy the kept samples of input shard `s` into output shard `i`; their build statistics.
#[allow(clippy::too_many_arguments)]
fn copy_shard(
    set: &ShardSet,
    s: usize,
    dir: &Path,
    prefix: &str,
    i: u32,
    reason: &[Option<String>],
    cancel: &AtomicBool,
    tally: Tally<'_>,
) -> Result<(ShardInfo, Stats)> {
    let start = set.shard_start(s);
    let mut w = ShardWriter::create(dir, prefix, i).map_err(|e| PackError::output(dir, e))?;
    let werr =
        |e: std::io::Error| PackError::output(dir.join(crate::shard::shard_name(prefix, i)), e);
    let mut st = Stats::default();
    for g in start..start + set.shards[s].samples() as u64 {
        if cancel.load(Ordering::Relaxed) {
            return Err(PackError::Cancelled);
        }
        tally.add(1);
        if reason[g as usize].is_some() {
            continue;
        }
        let sample = set.sample(g).map_err(|e| PackError::input(&set.dir, e))?;
        let members: Vec<Member<'_>> = sample
            .members
            .iter()
            .map(|m| Member {
                suffix: &m.suffix,
                data: set.bytes(&sample, m),
            })
            .collect();
        w.append(&sample.key, &members).map_err(werr)?;
        let doc = set
            .json(&sample)
            .map_err(|e| PackError::input(&set.dir, e))?;
        count(&mut st, &doc, |suffix| {
            sample.member(suffix).map(|m| m.len as u64)
        });
    }
    let (info, rows) = w.finish_with_rows().map_err(werr)?;
    let rp = rows_path(&dir.join(".llava-pack").join("rows"), &info.name);
    std::fs::write(&rp, rows.as_bytes()).map_err(|e| PackError::output(&rp, e))?;
    Ok((info, st))
}

fn format_of(name: &str) -> Option<ImageFormat> {
    Some(match name {
        "jpeg" => ImageFormat::Jpeg,
        "png" => ImageFormat::Png,
        "webp" => ImageFormat::Webp,
        "gif" => ImageFormat::Gif,
        "bmp" => ImageFormat::Bmp,
        "tiff" => ImageFormat::Tiff,
        _ => return None,
    })
}

/// A kept sample's share of `stats.json`, from its json as the build wrote it. Image fields a
/// hand-made shard lacks leave that image out of the format/colour/size counts only.
fn count(st: &mut Stats, doc: &Value, member_len: impl Fn(&str) -> Option<u64>) {
    st.records += 1;
    st.samples += 1;
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("unknown");
    *st.kinds.entry(kind.to_string()).or_default() += 1;
    let images = doc.get("images").and_then(Value::as_array);
    let images = images.map(Vec::as_slice).unwrap_or_default();
    st.text_only_samples += u64::from(images.is_empty());
    for im in images {
        let stored = im
            .get("member")
            .and_then(Value::as_str)
            .and_then(&member_len)
            .unwrap_or(0);
        let num = |k: &str| im.get(k).and_then(Value::as_u64);
        let info = (|| {
            Some(ImageInfo {
                format: format_of(im.get("format")?.as_str()?)?,
                width: u32::try_from(num("width")?).ok()?,
                height: u32::try_from(num("height")?).ok()?,
                orientation: u8::try_from(num("orientation").unwrap_or(1)).ok()?,
                color: im.get("color")?.as_str()?.to_string(),
                animated: im.get("animated").and_then(Value::as_bool).unwrap_or(false),
            })
        })();
        match info {
            Some(info) => st.image(&info, stored),
            None => {
                st.images += 1;
                st.image_bytes += stored;
            }
        }
        if let Some(r) = im.get("reencoded") {
            st.reencoded += 1;
            st.reencoded_bytes_before += r.get("from_bytes").and_then(Value::as_u64).unwrap_or(0);
            st.reencoded_bytes_after += stored;
        }
    }
}

/// Add one shard's statistics to the total.
fn merge(into: &mut Stats, st: Stats) {
    into.records += st.records;
    into.samples += st.samples;
    into.text_only_samples += st.text_only_samples;
    into.images += st.images;
    into.image_bytes += st.image_bytes;
    into.exif_rotated += st.exif_rotated;
    into.animated += st.animated;
    into.reencoded += st.reencoded;
    into.reencoded_bytes_before += st.reencoded_bytes_before;
    into.reencoded_bytes_after += st.reencoded_bytes_after;
    for (map, other) in [
        (&mut into.kinds, st.kinds),
        (&mut into.formats, st.formats),
        (&mut into.colors, st.colors),
    ] {
        for (k, v) in other {
            *map.entry(k).or_default() += v;
        }
    }
    for (hist, other) in [
        (&mut into.long_side_hist, st.long_side_hist),
        (&mut into.megapixel_hist, st.megapixel_hist),
    ] {
        if hist.len() < other.len() {
            hist.resize(other.len(), 0);
        }
        for (a, b) in hist.iter_mut().zip(other) {
            *a += b;
        }
    }
}
