//! The pack job: output directory checks, checkpoints, the passes and the final artifacts.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::layout::{layout, Corpus, OutShard, Plan};
use super::scan::ShardScan;
use super::write::{copy_work, partial_path, write_skeletons, CopyWork};
use super::{length_counter, scan_all, source_shards, PackOptions, PackSummary};
use crate::build::progress::{Counters, Reporter};
use crate::build::shard_number;
use crate::build::state::write_atomic;
use crate::build::Progress;
use crate::error::{PackError, Result};
use crate::shard::{write_energon_meta, ShardInfo};
use bucketer::pack::{pack as bfd, summarize, PackConfig};

/// Written atomically under `output/.llava-pack/` after the skeleton and each source shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    format_version: u32,
    skeleton: bool,
    /// Source shards (by index) whose bytes are all in place and fsynced.
    done: Vec<bool>,
    complete: bool,
}

struct State {
    dir: PathBuf,
}

impl State {
    fn job(&self) -> PathBuf {
        self.dir.join("job.json")
    }
    fn ckpt(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }
    fn save(&self, c: &Checkpoint) -> Result<()> {
        let p = self.ckpt();
        write_atomic(&p, &serde_json::to_vec_pretty(c).unwrap())
            .map_err(|e| PackError::output(p, e))
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn log(opts: &PackOptions, msg: &str) {
    if opts.progress != Progress::Quiet {
        eprintln!("{msg}");
    }
}

/// Everything that determines the output bytes (not workers or progress).
fn fingerprint(opts: &PackOptions, shards: &[PathBuf]) -> Result<Value> {
    let files: Vec<Value> = shards
        .iter()
        .map(|p| {
            let n = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            json!({"name": p.file_name().unwrap().to_string_lossy(), "bytes": n})
        })
        .collect();
    let tok = sha256_file(&opts.tokenizer).map_err(|e| PackError::input(&opts.tokenizer, e))?;
    let eos = bucketer::tokenizer_eos(&opts.tokenizer)
        .map_err(|e| PackError::input(&opts.tokenizer, e))?;
    // The training strings the lengths were counted for: training must render the same.
    let template = bucketer::TemplateOptions::default();
    let mut fp = json!({
        "format_version": crate::FORMAT_VERSION,
        "kind": "pack",
        "input": opts.input.display().to_string(),
        "input_shards": files,
        "tokenizer_sha256": tok,
        "tokenizer_file": TOKENIZER_FILE,
        "caption_format": opts.caption_format.as_str(),
        "system": template.system,
        "caption_prompt": template.caption_prompt,
        "eos_token": eos,
        "max_len": opts.max_len,
        "max_image_tokens": opts.max_image_tokens,
        "min_pixels": opts.min_pixels,
        "max_pixels": opts.max_pixels,
        "prefix": opts.prefix,
        "packs_per_shard": opts.packs_per_shard,
        "shard_size": opts.shard_size,
    });
    // Only present with --exclude, so packs made without one keep their fingerprint.
    if let Some(x) = &opts.exclude {
        let sha = sha256_file(x).map_err(|e| PackError::input(x, format!("--exclude: {e}")))?;
        fp["exclude_sha256"] = json!(sha);
    }
    Ok(fp)
}

const ARTIFACTS: [&str; 4] = [
    "manifest.json",
    "pack_stats.json",
    "rejects.jsonl",
    TOKENIZER_FILE,
];

/// The pack's copy of the tokenizer.json it was measured with (manifest `tokenizer_file`).
const TOKENIZER_FILE: &str = "tokenizer.json";

/// Whether `a` and `b` name the same existing file (a user may pack with the tokenizer copy
/// of an earlier pack in the same output directory).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Copy the tokenizer into the output (atomically; redone by a resumed finalize), checking
/// that it is still the file the job's fingerprint hashed.
fn copy_tokenizer(opts: &PackOptions, fp: &Value) -> Result<()> {
    let dst = opts.output.join(TOKENIZER_FILE);
    if same_file(&opts.tokenizer, &dst) {
        return Ok(());
    }
    let bytes = std::fs::read(&opts.tokenizer).map_err(|e| PackError::input(&opts.tokenizer, e))?;
    if fp["tokenizer_sha256"].as_str() != Some(hex::encode(Sha256::digest(&bytes)).as_str()) {
        return Err(PackError::input(
            &opts.tokenizer,
            "changed while packing; rerun with --overwrite",
        ));
    }
    write_atomic(&dst, &bytes).map_err(|e| PackError::output(&dst, e))
}

/// Validate / create the output directory; the checkpoint to continue from.
fn prepare(opts: &PackOptions, st: &State, fp: &Value) -> Result<Checkpoint> {
    let out = &opts.output;
    if out.exists() && !out.is_dir() {
        return Err(PackError::output(out, "exists and is not a directory"));
    }
    let has_job = st.job().exists();
    let non_empty = out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| PackError::output(out, e))?
            .next()
            .is_some();
    if opts.resume && has_job {
        let prev: Option<Value> = std::fs::read(st.job())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if prev.as_ref() != Some(fp) {
            return Err(PackError::Resume(format!(
                "{} was packed from different input or options; rerun with the same ones or use --overwrite",
                out.display()
            )));
        }
        return match std::fs::read(st.ckpt()) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| PackError::Resume(format!("corrupt checkpoint: {e}"))),
            Err(_) => Ok(Checkpoint::default()),
        };
    }
    if opts.overwrite && has_job {
        for e in std::fs::read_dir(out).map_err(|e| PackError::output(out, e))? {
            let e = e.map_err(|e| PackError::output(out, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ours =
                shard_number(&name, &opts.prefix).is_some() || ARTIFACTS.contains(&name.as_str());
            if ours && !same_file(&e.path(), &opts.tokenizer) {
                std::fs::remove_file(e.path()).map_err(|err| PackError::output(e.path(), err))?;
            }
        }
        for d in [".llava-pack", ".nv-meta"] {
            let p = out.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| PackError::output(&p, e))?;
            }
        }
    } else if has_job {
        return Err(PackError::output(out, "holds a previous llava-pack job; pass --resume to continue it or --overwrite to replace it"));
    } else if non_empty {
        return Err(PackError::output(
            out,
            "is not empty and holds no llava-pack job; choose an empty directory",
        ));
    }
    std::fs::create_dir_all(&st.dir).map_err(|e| PackError::output(&st.dir, e))?;
    write_atomic(&st.job(), &serde_json::to_vec_pretty(fp).unwrap())
        .map_err(|e| PackError::output(st.job(), e))?;
    Ok(Checkpoint::default())
}

/// A pack job split into its phases, so the same code runs them in one process ([`pack`]) or
/// spread over a cluster (scan and copy as remote tasks, the rest on a driver):
/// [`PackJob::open`] → scan every source ([`super::scan_shard`]) → [`PackJob::plan`] →
/// [`copy_work`] of each [`PackJob::copy_work`], then [`PackJob::mark_copied`] →
/// [`finalize_shard`] of each [`PackJob::out_shards`] → [`PackJob::finish`].
pub struct PackJob {
    opts: PackOptions,
    sources: Vec<PathBuf>,
    fp: Value,
    st: State,
    ckpt: Mutex<Checkpoint>,
    started: Instant,
    scans: Vec<ShardScan>,
    planned: Option<Planned>,
}

struct Planned {
    plan: Plan,
    starts: Vec<usize>,
    lengths: Vec<u32>,
    img_tokens: Vec<u32>,
    errors: Vec<(usize, String, &'static str)>,
    placed: Vec<bool>,
    resumed: u64,
}

impl PackJob {
    /// Validate the options, fingerprint the input and prepare (or resume) the output dir.
    pub fn open(opts: &PackOptions) -> Result<Self> {
        opts.validate()?;
        let started = Instant::now();
        let sources = source_shards(&opts.input)?;
        let fp = fingerprint(opts, &sources)?;
        let st = State {
            dir: opts.output.join(".llava-pack"),
        };
        let ckpt = prepare(opts, &st, &fp)?;
        Ok(PackJob {
            opts: opts.clone(),
            sources,
            fp,
            st,
            ckpt: Mutex::new(ckpt),
            started,
            scans: Vec::new(),
            planned: None,
        })
    }

    /// An earlier run finished this job: [`Self::summary`] is all there is to do.
    pub fn is_complete(&self) -> bool {
        self.ckpt.lock().unwrap().complete
    }

    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    pub fn options(&self) -> &PackOptions {
        &self.opts
    }

    /// sha256 of the tokenizer the job was fingerprinted with (scan tasks check theirs).
    pub fn tokenizer_sha256(&self) -> &str {
        self.fp["tokenizer_sha256"].as_str().unwrap_or("")
    }

    /// The summary of the finished job, read back from its files.
    pub fn summary(&self) -> Result<PackSummary> {
        summary_from_disk(&self.opts, self.started)
    }

    /// Samples in all scanned source shards (0 before [`Self::plan`]).
    pub fn source_samples(&self) -> usize {
        self.scans.iter().map(|s| s.samples.len()).sum()
    }

    /// The scan of source shard `k` (after [`Self::plan`]).
    pub fn scan(&self, k: usize) -> &ShardScan {
        &self.scans[k]
    }

    /// The global decisions from every source shard's scan (in source order): rejects, the
    /// packing and the byte layout; writes the output skeleton unless a resumed run did.
    /// Returns the source shards still to copy.
    pub fn plan(&mut self, scans: Vec<ShardScan>) -> Result<Vec<usize>> {
        let opts = &self.opts;
        if scans.len() != self.sources.len() {
            return Err(PackError::InvalidOption(format!(
                "{} scans for {} source shards",
                scans.len(),
                self.sources.len()
            )));
        }
        self.scans = scans;
        let corpus = Corpus::new(&self.scans);
        let mut lengths = Vec::with_capacity(corpus.len());
        let mut img_tokens = Vec::with_capacity(corpus.len());
        let mut errors: Vec<(usize, String, &'static str)> = Vec::new();
        let exclude = match &opts.exclude {
            Some(x) => crate::dedup::read_exclude(x)?,
            None => Default::default(),
        };
        for (k, s) in self.scans.iter().enumerate() {
            for (j, m) in s.samples.iter().enumerate() {
                // A sample that cannot be measured (or is excluded) is rejected before
                // packing: give it a length no pack accepts and record the real reason.
                let excluded = exclude.get(&m.key);
                lengths.push(if m.error.is_some() || excluded.is_some() {
                    u32::MAX
                } else {
                    m.length
                });
                img_tokens.push(m.image_tokens());
                if let Some(why) = excluded {
                    errors.push((corpus.starts[k] + j, why.clone(), "excluded"));
                } else if let Some(e) = &m.error {
                    errors.push((corpus.starts[k] + j, e.clone(), "invalid sample"));
                }
            }
        }
        let cfg = PackConfig {
            max_len: opts.max_len,
            max_image_tokens: opts.max_image_tokens,
        };
        let packing = bfd(&lengths, Some(&img_tokens), &cfg);
        let plan = layout(
            &corpus,
            packing,
            opts.max_len,
            &opts.prefix,
            opts.packs_per_shard,
            opts.shard_size,
        );
        let mut placed = vec![false; corpus.len()];
        for &g in &plan.packing.items {
            placed[g as usize] = true;
        }
        let mut ckpt = self.ckpt.lock().unwrap();
        if ckpt.done.len() != self.sources.len() {
            *ckpt = Checkpoint {
                format_version: crate::FORMAT_VERSION,
                done: vec![false; self.sources.len()],
                ..Default::default()
            };
        }
        if !ckpt.skeleton {
            write_skeletons(&opts.output, &corpus, &plan, opts.max_len)
                .map_err(|e| PackError::output(&opts.output, e))?;
            ckpt.skeleton = true;
            self.st.save(&ckpt)?;
        }
        let resumed = ckpt.done.iter().filter(|&&d| d).count() as u64;
        let todo = (0..self.sources.len()).filter(|&k| !ckpt.done[k]).collect();
        drop(ckpt);
        self.planned = Some(Planned {
            plan,
            starts: corpus.starts.clone(),
            lengths,
            img_tokens,
            errors,
            placed,
            resumed,
        });
        Ok(todo)
    }

    fn planned(&self) -> &Planned {
        self.planned.as_ref().expect("PackJob::plan runs first")
    }

    /// Source shards a resumed run found already copied.
    pub fn resumed(&self) -> u64 {
        self.planned().resumed
    }

    /// Pass-2 work of source shard `k`.
    pub fn copy_work(&self, k: usize) -> CopyWork {
        let p = self.planned();
        let corpus = Corpus {
            shards: &self.scans,
            starts: p.starts.clone(),
        };
        CopyWork::for_source(
            &self.sources[k],
            k,
            &corpus,
            &p.plan,
            &p.placed,
            &self.opts.output,
        )
    }

    /// Record that source shard `k`'s bytes are all in place and synced (checkpoint).
    pub fn mark_copied(&self, k: usize) -> Result<()> {
        let mut c = self.ckpt.lock().unwrap();
        c.done[k] = true;
        self.st.save(&c)
    }

    /// The planned output shards, in order ([`finalize_shard`] each once all are copied).
    pub fn out_shards(&self) -> &[OutShard] {
        &self.planned().plan.shards
    }

    /// Write `.nv-meta/`, rejects, stats, tokenizer and manifest from the finalized shards
    /// (`infos`, in [`Self::out_shards`] order) and mark the job complete.
    pub fn finish(&self, infos: Vec<ShardInfo>, timings: Value) -> Result<PackSummary> {
        let copied = self.ckpt.lock().unwrap().done.iter().all(|&d| d);
        if !copied || infos.len() != self.out_shards().len() {
            return Err(PackError::InvalidOption(
                "finish before every source shard is copied and every shard finalized".into(),
            ));
        }
        let p = self.planned();
        let corpus = Corpus {
            shards: &self.scans,
            starts: p.starts.clone(),
        };
        finalize(
            &self.opts,
            &self.fp,
            &corpus,
            &p.plan,
            &p.lengths,
            &p.img_tokens,
            &p.errors,
            infos,
            timings,
        )?;
        let mut c = self.ckpt.lock().unwrap();
        c.complete = true;
        self.st.save(&c)?;
        drop(c);
        let s = self.summary()?;
        log(
            &self.opts,
            &format!(
                "llava-pack: {} samples → {} packs in {} shards, {} rejects, {:.1}s",
                s.samples, s.packs, s.shards, s.rejects, s.seconds
            ),
        );
        Ok(PackSummary {
            resumed_shards: p.resumed,
            ..s
        })
    }
}

pub fn pack(opts: &PackOptions, cancel: &AtomicBool) -> Result<PackSummary> {
    let mut job = PackJob::open(opts)?;
    if job.is_complete() {
        log(
            opts,
            &format!("llava-pack: {} is already complete", opts.output.display()),
        );
        return job.summary();
    }
    let counter = length_counter(
        &opts.tokenizer,
        opts.min_pixels,
        opts.max_pixels,
        opts.caption_format,
    )?;
    let workers = opts.worker_count();
    let sources = job.sources().to_vec();
    let total_bytes: u64 = sources
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();

    // Pass 1.
    log(
        opts,
        &format!("llava-pack: measuring {} source shards", sources.len()),
    );
    let counters = Arc::new(Counters::default());
    let reporter = Reporter::start(opts.progress, counters.clone(), Some(total_bytes));
    let t1 = Instant::now();
    let scans = scan_all(&sources, &counter, workers, &counters, cancel);
    reporter.stop();
    let scans = scans?;
    let t_scan = t1.elapsed().as_secs_f64();

    // Plan, skeleton.
    let t0 = Instant::now();
    let todo = job.plan(scans)?;
    let t_pack = t0.elapsed().as_secs_f64();
    let resumed = job.resumed();
    if resumed > 0 {
        log(
            opts,
            &format!(
                "llava-pack: resuming, {resumed} of {} source shards already copied",
                sources.len()
            ),
        );
    }

    // Pass 2.
    let counters = Arc::new(Counters::default());
    let reporter = Reporter::start(opts.progress, counters.clone(), Some(total_bytes));
    let copy = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|e| PackError::InvalidOption(format!("--workers: {e}")))?
        .install(|| {
            todo.par_iter().try_for_each(|&k| -> Result<()> {
                let n = copy_work(&job.copy_work(k), cancel)
                    .map_err(|e| {
                        PackError::output(&opts.output, format!("{}: {e}", sources[k].display()))
                    })?
                    .ok_or(PackError::Cancelled)?;
                job.mark_copied(k)?;
                let scan = job.scan(k);
                counters
                    .records
                    .fetch_add(scan.samples.len() as u64, Ordering::Relaxed);
                counters.samples.fetch_add(n, Ordering::Relaxed);
                counters.shards.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(scan.bytes, Ordering::Relaxed);
                Ok(())
            })
        });
    reporter.stop();
    copy?;
    let t_copy = t1.elapsed().as_secs_f64() - t_scan - t_pack;

    let n = job.source_samples();
    let timings = json!({"scan_seconds": t_scan, "pack_seconds": t_pack, "copy_seconds": t_copy,
        "samples_per_second_scan": n as f64 / t_scan.max(1e-9), "workers": workers});
    let infos = job
        .out_shards()
        .iter()
        .map(|sh| finalize_shard(&opts.output, sh))
        .collect::<Result<Vec<_>>>()?;
    job.finish(infos, timings)
}

/// Finalize one fully copied output shard: fsync, `.tar.idx`, rename `.partial` into place,
/// sha256. Idempotent (a shard already renamed is only hashed), so a crash is redone on resume.
pub fn finalize_shard(out: &Path, sh: &OutShard) -> Result<ShardInfo> {
    let oerr = |p: &Path, e: std::io::Error| PackError::output(p, e);
    let fin = out.join(&sh.name);
    let part = partial_path(out, &sh.name);
    if part.exists() {
        std::fs::File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(|e| oerr(&part, e))?;
        let idx: Vec<u8> = sh.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        let ip = out.join(format!("{}.idx", sh.name));
        write_atomic(&ip, &idx).map_err(|e| oerr(&ip, e))?;
        std::fs::rename(&part, &fin).map_err(|e| oerr(&fin, e))?;
    }
    let sha256 = sha256_file(&fin).map_err(|e| oerr(&fin, e))?;
    Ok(ShardInfo {
        name: sh.name.clone(),
        samples: sh.offsets.len() as u64 - 1,
        bytes: sh.bytes,
        sha256,
    })
}

fn summary_from_disk(opts: &PackOptions, started: Instant) -> Result<PackSummary> {
    let read = |n: &str| -> Result<Value> {
        let p = opts.output.join(n);
        let b = std::fs::read(&p).map_err(|e| PackError::output(&p, e))?;
        serde_json::from_slice(&b).map_err(|e| PackError::output(&p, e))
    };
    let m = read("manifest.json")?;
    let stats = read("pack_stats.json")?;
    let t = &m["totals"];
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    Ok(PackSummary {
        samples: u(&t["samples"]),
        packs: u(&t["packs"]),
        rejects: u(&t["rejects"]),
        shards: u(&t["shards"]),
        bytes: u(&t["bytes"]),
        seconds: started.elapsed().as_secs_f64(),
        resumed_shards: 0,
        output: opts.output.clone(),
        stats,
    })
}

#[allow(clippy::too_many_arguments)]
fn finalize(
    opts: &PackOptions,
    fp: &Value,
    corpus: &Corpus<'_>,
    plan: &Plan,
    lengths: &[u32],
    img_tokens: &[u32],
    errors: &[(usize, String, &str)],
    infos: Vec<ShardInfo>,
    timings: Value,
) -> Result<()> {
    let out = &opts.output;
    let oerr = |p: &Path, e: std::io::Error| PackError::output(p, e);
    crate::shard::sync_dir(out).map_err(|e| oerr(out, e))?;
    if !infos.is_empty() {
        write_energon_meta(out, &infos).map_err(|e| oerr(&out.join(".nv-meta"), e))?;
    }

    // rejects.jsonl in corpus order: measurement errors and packer rejects.
    let mut rejects: Vec<(usize, String, &str)> = errors
        .iter()
        .map(|(g, e, cat)| (*g, e.clone(), *cat))
        .collect();
    for (g, r) in &plan.packing.rejects {
        if lengths[*g as usize] != u32::MAX {
            rejects.push((*g as usize, r.to_string(), r.category()));
        }
    }
    rejects.sort_by_key(|r| r.0);
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    let mut lines = Vec::new();
    for (g, reason, cat) in &rejects {
        let (k, m) = corpus.get(*g);
        *by_reason.entry(cat).or_default() += 1;
        let length = (m.error.is_none()).then_some(m.length);
        let line = json!({"source_shard": corpus.shards[k].name, "key": m.key, "length": length, "reason": reason});
        lines.extend_from_slice(serde_json::to_string(&line).unwrap().as_bytes());
        lines.push(b'\n');
    }
    let p = out.join("rejects.jsonl");
    write_atomic(&p, &lines).map_err(|e| oerr(&p, e))?;

    // pack_stats.json
    let s = summarize(lengths, &plan.packing, opts.max_len);
    let mut items_hist: BTreeMap<usize, u64> = BTreeMap::new();
    let mut vis_hist: BTreeMap<u64, u64> = BTreeMap::new();
    let mut vis_total = 0u64;
    for items in plan.packing.iter() {
        *items_hist.entry(items.len()).or_default() += 1;
        let v: u64 = items.iter().map(|&g| img_tokens[g as usize] as u64).sum();
        vis_total += v;
        *vis_hist.entry(v / 1024).or_default() += 1;
    }
    let vis: Vec<Value> = vis_hist
        .iter()
        .map(|(b, n)| json!({"image_tokens": format!("[{}, {})", b * 1024, (b + 1) * 1024), "packs": n}))
        .collect();
    let stats = json!({
        "max_len": opts.max_len,
        "max_image_tokens": opts.max_image_tokens,
        "source_samples": corpus.len(),
        "packs": s.packs,
        "samples": s.samples,
        "rejects": rejects.len(),
        "rejects_by_reason": by_reason,
        "total_tokens": s.total_tokens,
        "image_tokens": vis_total,
        "lower_bound": s.lower_bound,
        "fill_efficiency": s.fill_efficiency,
        "mean_fill": s.mean_fill,
        "packs_under_90_percent": s.packs_under_90,
        "items_per_pack": items_hist.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "mean_items_per_pack": s.samples as f64 / (s.packs.max(1)) as f64,
        "image_tokens_per_pack": vis,
        "throughput": timings,
    });
    let p = out.join("pack_stats.json");
    write_atomic(&p, &serde_json::to_vec_pretty(&stats).unwrap()).map_err(|e| oerr(&p, e))?;

    copy_tokenizer(opts, fp)?;
    let manifest = json!({
        "format_version": crate::FORMAT_VERSION,
        "kind": "packed",
        "tool": format!("llava-pack {}", env!("CARGO_PKG_VERSION")),
        "shards": infos,
        "totals": {
            "shards": infos.len(),
            "packs": s.packs,
            "samples": s.samples,
            "rejects": rejects.len(),
            "tokens": s.total_tokens,
            "bytes": infos.iter().map(|i| i.bytes).sum::<u64>(),
        },
        "options": fp,
    });
    let p = out.join("manifest.json");
    write_atomic(&p, &serde_json::to_vec_pretty(&manifest).unwrap()).map_err(|e| oerr(&p, e))
}
