//! The build job: ordered parallel processing, dedup, sharding, checkpoints and resume.
//!
//! Threads: the calling thread reads records in chunks and submits each chunk to a rayon pool
//! (`--workers`); a writer thread puts the finished chunks back in input order and writes
//! them. Tokens the writer returns keep at most `CHUNKS_IN_FLIGHT_PER_WORKER` chunks per worker
//! between reading and writing, so memory stays flat however large the corpus.

mod decide;
mod dedup;
mod options;
mod process;
pub(crate) mod progress;
mod ray;
pub(crate) mod state;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

pub(crate) use options::{check_prefix, resolve_workers};
pub use options::{BuildOptions, DedupMode, Progress};
pub use ray::{run_phase as run_ray_phase, PARTITION_BYTES};
pub use state::Stats;

use crate::error::{PackError, Result};
use crate::input::{self, Record};
use process::{Ctx, Processed};
use state::{write_atomic, Checkpoint, StatePaths};
use writer::Writer;

/// Records per chunk. A chunk is one task, processed by one worker in order: small, so the
/// chunk the in-order writer waits for is never far behind, and the job's tail (the last
/// chunk written after every worker is done) is short.
const CHUNK: usize = 2;
/// Chunks per worker submitted and not yet written: enough that a slow record, which holds
/// up the in-order writer, never leaves the other workers without a chunk to work on.
/// Images are held in RAM between load and write, so this bounds memory (with the above):
/// at most `CHUNK * CHUNKS_IN_FLIGHT_PER_WORKER` records per worker.
const CHUNKS_IN_FLIGHT_PER_WORKER: usize = 32;

/// One chunk's outcomes, in input order, with the position reached after it.
struct Chunk {
    seq: u64,
    /// Index after the chunk's last record.
    end: u64,
    /// Input bytes read once the chunk was read (for progress).
    bytes_read: u64,
    out: Vec<Processed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub records: u64,
    pub samples: u64,
    pub rejects: u64,
    pub shards: u64,
    pub bytes: u64,
    /// Wall time of this invocation (a resumed job counts only its own run).
    pub seconds: f64,
    pub resumed_from: u64,
    pub output: PathBuf,
    pub stats: Stats,
}

/// Run (or resume) a build job. A job that read no record at all (empty input, or only blank
/// lines) is an [`PackError::Input`] error once its (empty) output is written.
pub fn build(opts: &BuildOptions, cancel: &AtomicBool) -> Result<BuildSummary> {
    opts.validate()?;
    let started = Instant::now();
    let mut source = input::open_all(&opts.inputs, opts.image_root.as_deref())?;
    let files: Vec<PathBuf> = source.files().to_vec();
    let file_sizes: Vec<(String, u64)> = files
        .iter()
        .map(|f| {
            (
                f.display().to_string(),
                std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    let fingerprint = opts.fingerprint(&file_sizes);
    let ckpt = prepare_output(opts, &fingerprint, false)?;
    let resumed_from = ckpt.next_index;
    if ckpt.complete {
        log(
            opts,
            &format!("llava-pack: {} is already complete", opts.output.display()),
        );
        let s = summary(opts, &ckpt, started, resumed_from);
        return read_something(opts, &files, s);
    }
    if resumed_from > 0 {
        source.skip(resumed_from)?;
        log(
            opts,
            &format!(
                "llava-pack: resuming after {resumed_from} records ({} shards)",
                ckpt.shards.len()
            ),
        );
    }

    let workers = opts.worker_count();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("llava-pack-{i}"))
        .build()
        .map_err(|e| PackError::InvalidOption(format!("--workers: {e}")))?;
    let ctx = Ctx::new(opts, &files)?;
    let mut writer = Writer::open(opts, &files, ckpt)?;
    let counters = Arc::new(progress::Counters::default());
    counters.records.store(resumed_from, Ordering::Relaxed);
    // Skipped on resume: done before this run, so not part of its rate or ETA.
    counters.bytes.store(source.progress().0, Ordering::Relaxed);
    let reporter = progress::Reporter::start(opts.progress, counters.clone(), source.progress().1);

    // Chunks in flight (being processed, or done and waiting for the writer); the writer
    // returns a token per chunk it has written.
    let in_flight = workers * CHUNKS_IN_FLIGHT_PER_WORKER;
    let (tokens_tx, tokens) = crossbeam_channel::bounded::<()>(in_flight);
    for _ in 0..in_flight {
        tokens_tx.send(()).expect("capacity for every token");
    }
    let (tx, rx) = crossbeam_channel::bounded::<Chunk>(in_flight);
    let result = std::thread::scope(|s| -> Result<Checkpoint> {
        let wcounters = counters.clone();
        let handle = s.spawn(move || -> Result<(Writer, u64)> {
            // Chunks come back in any order; write them in input order.
            let mut pending = std::collections::BTreeMap::new();
            let (mut next_seq, mut end) = (0u64, resumed_from);
            for c in rx {
                pending.insert(c.seq, c);
                while let Some(c) = pending.remove(&next_seq) {
                    for p in c.out {
                        writer.handle(p)?;
                    }
                    next_seq += 1;
                    end = c.end;
                    let st = &writer.ckpt().stats;
                    wcounters.records.store(c.end, Ordering::Relaxed);
                    wcounters.bytes.store(c.bytes_read, Ordering::Relaxed);
                    wcounters.samples.store(st.samples, Ordering::Relaxed);
                    wcounters.rejects.store(st.rejects, Ordering::Relaxed);
                    wcounters
                        .shards
                        .store(writer.ckpt().shards.len() as u64, Ordering::Relaxed);
                    let _ = tokens_tx.send(());
                }
            }
            Ok((writer, end))
        });
        let ctx = &ctx;
        let read = pool.in_place_scope(|scope| -> Result<()> {
            for seq in 0.. {
                if cancel.load(Ordering::Relaxed) {
                    return Err(PackError::Cancelled);
                }
                if tokens.recv().is_err() {
                    return Ok(()); // writer failed; its error is reported below
                }
                let mut recs: Vec<Record> = Vec::with_capacity(CHUNK);
                while recs.len() < CHUNK {
                    match source.next_record() {
                        Some(r) => recs.push(r?),
                        None => break,
                    }
                }
                let Some(last) = recs.last() else {
                    return Ok(());
                };
                let (end, bytes_read) = (last.index + 1, source.progress().0);
                let tx = tx.clone();
                // One worker runs the chunk's records one after another. Not `par_iter`: a
                // worker waiting in rayon's join steals and finishes other chunks first, which
                // delays the very chunk the writer needs until the tokens run out and workers
                // idle (6-9 % of a 2-worker bench run; 2-3 % like this).
                scope.spawn(move |_| {
                    let out = recs.into_iter().map(|r| process::process(r, ctx)).collect();
                    let _ = tx.send(Chunk {
                        seq,
                        end,
                        bytes_read,
                        out,
                    });
                });
            }
            Ok(())
        });
        drop(tx);
        let (writer, end) = handle.join().expect("writer thread panicked")?;
        read?;
        writer.finish(end)
    });
    reporter.stop();
    let mut ckpt = result?;
    // The reader reached the end of the input: every line was read or skipped.
    ckpt.stats.blank_lines = source.lines().saturating_sub(ckpt.stats.records);
    finalize(opts, &mut ckpt, &fingerprint, started, resumed_from)?;
    let s = summary(opts, &ckpt, started, resumed_from);
    log(
        opts,
        &format!(
            "llava-pack: {} records → {} samples in {} shards ({:.1} MB), {} rejects, {:.1}s",
            s.records,
            s.samples,
            s.shards,
            s.bytes as f64 / 1e6,
            s.rejects,
            s.seconds
        ),
    );
    read_something(opts, &files, s)
}

/// A job over no record is an error, not an empty success: the input is empty or blank.
fn read_something(opts: &BuildOptions, files: &[PathBuf], s: BuildSummary) -> Result<BuildSummary> {
    if s.records > 0 {
        return Ok(s);
    }
    let what = match files {
        [one] => one.display().to_string(),
        many => format!("{} ({} files)", opts.inputs.join(" "), many.len()),
    };
    Err(PackError::input(
        what,
        format!(
            "holds no records ({} blank lines): nothing to build; an empty output was written to {}",
            s.stats.blank_lines,
            opts.output.display()
        ),
    ))
}

fn log(opts: &BuildOptions, msg: &str) {
    if opts.progress != Progress::Quiet {
        eprintln!("{msg}");
    }
}

fn summary(
    opts: &BuildOptions,
    c: &Checkpoint,
    started: Instant,
    resumed_from: u64,
) -> BuildSummary {
    BuildSummary {
        records: c.stats.records,
        samples: c.stats.samples,
        rejects: c.stats.rejects,
        shards: c.shards.len() as u64,
        bytes: c.shards.iter().map(|s| s.bytes).sum(),
        seconds: started.elapsed().as_secs_f64(),
        resumed_from,
        output: opts.output.clone(),
        stats: c.stats.clone(),
    }
}

/// Create or validate the output directory and return the checkpoint to continue from.
/// `distributed`: a resumed job keeps its shard files (the distributed build knows which
/// are complete; the local one removes those its checkpoint does not commit).
fn prepare_output(
    opts: &BuildOptions,
    fingerprint: &serde_json::Value,
    distributed: bool,
) -> Result<Checkpoint> {
    let out = &opts.output;
    let paths = StatePaths::new(out);
    let oerr = |p: &Path, e: std::io::Error| PackError::output(p, e);
    if out.exists() && !out.is_dir() {
        return Err(PackError::output(out, "exists and is not a directory"));
    }
    let has_job = paths.job.exists();
    // Our state folder without its job file is a build killed before it wrote job.json (the
    // folder is created first): nothing was built, so it counts as empty, not as foreign.
    let non_empty = out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| oerr(out, e))?
            .filter_map(|e| e.ok())
            .any(|e| e.path() != paths.dir);
    if opts.overwrite && has_job {
        clean_previous(out, &opts.prefix)?;
    } else if opts.resume && has_job {
        let prev: serde_json::Value = std::fs::read(&paths.job)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| PackError::Resume(format!("{} is unreadable", paths.job.display())))?;
        if &prev != fingerprint {
            return Err(PackError::Resume(format!(
                "{} was built with different input or options; rerun with the same ones or use --overwrite",
                out.display()
            )));
        }
        let ckpt = match std::fs::read(&paths.checkpoint) {
            Ok(b) => serde_json::from_slice::<Checkpoint>(&b)
                .map_err(|e| PackError::Resume(format!("corrupt checkpoint: {e}")))?,
            Err(_) => Checkpoint::empty(),
        };
        if !ckpt.complete && !distributed {
            remove_uncommitted(out, &opts.prefix, &ckpt)?;
        }
        return Ok(ckpt);
    } else if has_job {
        return Err(PackError::output(
            out,
            "holds a previous llava-pack build; pass --resume to continue it or --overwrite to replace it",
        ));
    } else if non_empty {
        return Err(PackError::output(
            out,
            "is not empty and holds no llava-pack build; choose an empty directory",
        ));
    }
    std::fs::create_dir_all(&paths.dir).map_err(|e| oerr(&paths.dir, e))?;
    let data = serde_json::to_vec_pretty(fingerprint).expect("fingerprint serialises");
    write_atomic(&paths.job, &data).map_err(|e| oerr(&paths.job, e))?;
    Ok(Checkpoint::empty())
}

/// Is `name` one of our shard files (`{prefix}-NNNNNN.tar[.idx|.partial]`)? Returns its number.
pub(crate) fn shard_number(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let digits = rest.split('.').next()?;
    let tail = &rest[digits.len()..];
    let ok_tail = matches!(
        tail,
        ".tar" | ".tar.idx" | ".tar.partial" | ".tar.idx.tmp" | ".tar.idx.partial"
    );
    (digits.len() == 6 && ok_tail)
        .then(|| digits.parse().ok())
        .flatten()
}

/// Delete shards past the checkpoint and any partial files (a crash may leave either).
fn remove_uncommitted(out: &Path, prefix: &str, ckpt: &Checkpoint) -> Result<()> {
    let committed = ckpt.shards.len() as u32;
    for entry in std::fs::read_dir(out).map_err(|e| PackError::output(out, e))? {
        let entry = entry.map_err(|e| PackError::output(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match shard_number(&name, prefix) {
            Some(n) => n >= committed || name.ends_with(".partial") || name.ends_with(".tmp"),
            None => false,
        };
        if stale {
            std::fs::remove_file(entry.path()).map_err(|e| PackError::output(entry.path(), e))?;
        }
    }
    // Recorded index rows of shards that are not committed either.
    let rows_dir = StatePaths::new(out).rows;
    if rows_dir.is_dir() {
        for entry in std::fs::read_dir(&rows_dir).map_err(|e| PackError::output(&rows_dir, e))? {
            let entry = entry.map_err(|e| PackError::output(&rows_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let shard = name
                .strip_suffix(".rows")
                .and_then(|n| shard_number(n, prefix));
            if shard.map_or(true, |n| n >= committed) {
                std::fs::remove_file(entry.path())
                    .map_err(|e| PackError::output(entry.path(), e))?;
            }
        }
    }
    // Final artifacts are rewritten at the end; a stale copy must not look current.
    for f in ["manifest.json", "stats.json", crate::text::REPORT_FILE] {
        let _ = std::fs::remove_file(out.join(f));
    }
    Ok(())
}

fn clean_previous(out: &Path, prefix: &str) -> Result<()> {
    for entry in std::fs::read_dir(out).map_err(|e| PackError::output(out, e))? {
        let entry = entry.map_err(|e| PackError::output(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = shard_number(&name, prefix).is_some()
            || matches!(
                name.as_str(),
                "manifest.json" | "stats.json" | "rejects.jsonl" | crate::text::REPORT_FILE
            );
        if ours {
            std::fs::remove_file(entry.path()).map_err(|e| PackError::output(entry.path(), e))?;
        }
    }
    for d in [".llava-pack", ".nv-meta"] {
        let p = out.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| PackError::output(&p, e))?;
        }
    }
    Ok(())
}

/// Write `.nv-meta/`, `manifest.json` (deterministic) and `stats.json`, then mark complete.
fn finalize(
    opts: &BuildOptions,
    ckpt: &mut Checkpoint,
    fingerprint: &serde_json::Value,
    started: Instant,
    resumed_from: u64,
) -> Result<()> {
    let out = &opts.output;
    let oerr = |p: PathBuf, e: std::io::Error| PackError::output(p, e);
    let rows = StatePaths::new(out).rows;
    crate::shard::write_energon_meta_with_rows(out, &ckpt.shards, &rows)
        .map_err(|e| oerr(out.join(".nv-meta"), e))?;
    crate::text::finish(out, &mut ckpt.stats.text, &opts.text)
        .map_err(|e| oerr(out.join(crate::text::REPORT_FILE), e))?;
    let st = &ckpt.stats;
    let manifest = json!({
        "format_version": crate::FORMAT_VERSION,
        "tool": format!("llava-pack {}", env!("CARGO_PKG_VERSION")),
        "shards": ckpt.shards,
        "totals": {
            "shards": ckpt.shards.len(),
            "samples": st.samples,
            "bytes": ckpt.shards.iter().map(|s| s.bytes).sum::<u64>(),
            "records": st.records,
            "rejects": st.rejects,
            "blank_lines": st.blank_lines,
        },
        "options": fingerprint,
    });
    let p = out.join("manifest.json");
    write_atomic(&p, &serde_json::to_vec_pretty(&manifest).unwrap()).map_err(|e| oerr(p, e))?;
    let secs = started.elapsed().as_secs_f64();
    let this_run = st.records.saturating_sub(resumed_from);
    let bytes: u64 = ckpt.shards.iter().map(|s| s.bytes).sum();
    let mut stats = serde_json::to_value(st).expect("stats serialise");
    stats["histograms"] = st.histograms();
    stats["throughput"] = json!({
        "seconds": secs,
        "records_this_run": this_run,
        "records_per_second": this_run as f64 / secs.max(1e-9),
        "workers": opts.worker_count(),
        "resumed_from": resumed_from,
        "output_bytes": bytes,
    });
    let p = out.join("stats.json");
    write_atomic(&p, &serde_json::to_vec_pretty(&stats).unwrap()).map_err(|e| oerr(p, e))?;
    ckpt.complete = true;
    let paths = StatePaths::new(out);
    let data = serde_json::to_vec_pretty(&ckpt).expect("checkpoint serialises");
    write_atomic(&paths.checkpoint, &data).map_err(|e| oerr(paths.checkpoint.clone(), e))
}

#[cfg(test)]
mod tests {
    use super::{prepare_output, shard_number, BuildOptions, StatePaths};

    #[test]
    fn a_build_killed_before_its_job_file_can_be_resumed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(StatePaths::new(&out).dir).unwrap(); // killed here
        let mut opts = BuildOptions::new("a.jsonl", &out);
        opts.resume = true;
        let fp = serde_json::json!({"k": 1});
        prepare_output(&opts, &fp, false).unwrap();
        assert!(StatePaths::new(&out).job.exists());
        // Anything else in the folder is still someone else's.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(StatePaths::new(&other).dir).unwrap();
        std::fs::write(other.join("notes.txt"), b"x").unwrap();
        let opts = BuildOptions::new("a.jsonl", &other);
        assert!(prepare_output(&opts, &fp, false).is_err());
    }

    #[test]
    fn recognises_only_our_shard_files() {
        assert_eq!(shard_number("shard-000012.tar", "shard"), Some(12));
        assert_eq!(shard_number("shard-000012.tar.idx", "shard"), Some(12));
        assert_eq!(shard_number("shard-000012.tar.partial", "shard"), Some(12));
        assert_eq!(shard_number("shard-12.tar", "shard"), None);
        assert_eq!(shard_number("other-000012.tar", "shard"), None);
        assert_eq!(shard_number("shard-000012.txt", "shard"), None);
    }
}
