//! The build in phases, for a cluster (Ray orchestrates from Python; every phase is here):
//!
//! 1. `prepare` (driver): options, output directory, fingerprint and the input partitions
//!    (`input::partitions`, a pure function of the files), saved in the state directory.
//! 2. `scan` (task per partition): reads the partition and runs [`process::process`] on each
//!    record, exactly as the local build; returns per-record metadata only (outcome or
//!    reject, dedup keys, image sizes and formats, JSON length), never image bytes.
//! 3. `plan` (driver): feeds the metadata in input order to the same [`Decider`] the local
//!    writer uses: `rejects.jsonl`, the key journal, statistics, and each shard's samples
//!    with their keys.
//! 4. `write` (task per shard): re-reads and re-processes its samples (deterministic) and
//!    writes the shard with the planned keys (`.partial`, then renamed), its index rows and a
//!    done marker.
//! 5. `commit` (driver): the shards in order, `.nv-meta`, manifest, stats as the local build.
//!
//! State under `.llava-pack/ray/`: `partitions.json`, `scan/NNNNNN.jsonl` (one per scanned
//! partition), `plan.json` (written last by the plan), `shards/NNNNNN.json` (a shard's
//! samples) and `done/NNNNNN.json` (a written shard's info). A resumed driver keeps what is
//! there: scanned partitions are not scanned again, written shards are not written again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{PackError, Result};
use crate::input::{self, PartReader, Partition};
use crate::shard::{self, ShardInfo, ShardWriter};
use crate::text::TextLog;

use super::decide::{self, sample_body, splice, suffixes, Decider, Fate, SampleMeta};
use super::process::{self, Ctx, Outcome, Pos};
use super::state::{write_atomic, Checkpoint, StatePaths};
use super::{finalize, log, prepare_output, read_something, summary, BuildOptions};

/// Default input bytes per scan partition.
pub const PARTITION_BYTES: u64 = 64 << 20;

struct RayPaths {
    partitions: PathBuf,
    scan: PathBuf,
    plan: PathBuf,
    shards: PathBuf,
    done: PathBuf,
}

impl RayPaths {
    fn new(out: &Path) -> Self {
        let dir = StatePaths::new(out).dir.join("ray");
        RayPaths {
            partitions: dir.join("partitions.json"),
            scan: dir.join("scan"),
            plan: dir.join("plan.json"),
            shards: dir.join("shards"),
            done: dir.join("done"),
        }
    }
    fn scan_file(&self, part: usize) -> PathBuf {
        self.scan.join(format!("{part:06}.jsonl"))
    }
    fn shard_file(&self, shard: u32) -> PathBuf {
        self.shards.join(format!("{shard:06}.json"))
    }
    fn done_file(&self, shard: u32) -> PathBuf {
        self.done.join(format!("{shard:06}.json"))
    }
}

fn oerr(p: &Path) -> impl Fn(std::io::Error) -> PackError + '_ {
    move |e| PackError::output(p, e)
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<T> {
    let bytes = std::fs::read(p).map_err(oerr(p))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| PackError::Resume(format!("{} is corrupt: {e}", p.display())))
}

fn write_json(p: &Path, v: &impl Serialize) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(oerr(d))?;
    }
    write_atomic(p, &serde_json::to_vec(v).expect("state serialises")).map_err(oerr(p))
}

#[derive(Serialize, Deserialize)]
struct Partitions {
    target_bytes: u64,
    /// Input files as the local build names them (paths relative to the driver's folder).
    files: Vec<PathBuf>,
    parts: Vec<Partition>,
}

/// Run one phase; `phase` is `{"phase": name, …}`. Returns the phase's JSON answer (the scan
/// metadata for `scan`).
pub fn run_phase(opts: &BuildOptions, phase: &Value) -> Result<String> {
    let name = phase["phase"].as_str().unwrap_or("");
    let num = |k: &str| {
        phase[k]
            .as_u64()
            .ok_or_else(|| PackError::InvalidOption(format!("ray phase {name}: no {k}")))
    };
    match name {
        "prepare" => prepare(opts, phase["partition_bytes"].as_u64()).map(|v| v.to_string()),
        "scan" => scan(opts, num("part")? as usize),
        "plan" => plan(opts).map(|v| v.to_string()),
        "write" => write(opts, num("shard")? as u32).map(|v| json!(v).to_string()),
        "commit" => commit(opts, phase["seconds"].as_f64().unwrap_or(0.0)),
        _ => Err(PackError::InvalidOption(format!(
            "unknown ray build phase {name:?}"
        ))),
    }
}

fn fingerprint(opts: &BuildOptions, files: &[PathBuf]) -> Value {
    let sizes: Vec<(String, u64)> = files
        .iter()
        .map(|f| {
            let n = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            (f.display().to_string(), n)
        })
        .collect();
    opts.fingerprint(&sizes)
}

/// Driver: the output directory, the partitions and what a resumed job has left to do:
/// `{"parts": n, "scanned": [...], "planned": bool, "shards": n, "written": [...],
/// "complete": summary or null}`.
fn prepare(opts: &BuildOptions, target: Option<u64>) -> Result<Value> {
    opts.validate()?;
    let rp = RayPaths::new(&opts.output);
    let (files, parts) = input::partitions(&opts.inputs, target.unwrap_or(PARTITION_BYTES))?;
    let fp = fingerprint(opts, &files);
    let ckpt = prepare_output(opts, &fp, true)?;
    if ckpt.complete {
        log(
            opts,
            &format!("llava-pack: {} is already complete", opts.output.display()),
        );
        let s = summary(opts, &ckpt, Instant::now(), ckpt.next_index);
        let s = read_something(opts, &files, s)?;
        return Ok(json!({"complete": s}));
    }
    if !rp.partitions.exists() {
        if !ckpt.shards.is_empty() || ckpt.next_index > 0 {
            return Err(PackError::Resume(format!(
                "{} was started without --ray; resume it without --ray",
                opts.output.display()
            )));
        }
        let p = Partitions {
            target_bytes: target.unwrap_or(PARTITION_BYTES),
            files,
            parts,
        };
        write_json(&rp.partitions, &p)?;
    }
    let p: Partitions = read_json(&rp.partitions)?;
    // Half-written files of a crashed run; complete ones are kept.
    remove_partials(&opts.output, &opts.prefix)?;
    let scanned: Vec<usize> = (0..p.parts.len())
        .filter(|&i| rp.scan_file(i).exists())
        .collect();
    let (planned, shards, written) = if rp.plan.exists() {
        let plan: Plan = read_json(&rp.plan)?;
        let written: Vec<u32> = (0..plan.shards)
            .filter(|&s| shard_written(opts, &rp, s))
            .collect();
        (true, plan.shards, written)
    } else {
        (false, 0, Vec::new())
    };
    let scan_files: Vec<String> = (0..p.parts.len())
        .map(|i| rp.scan_file(i).display().to_string())
        .collect();
    Ok(json!({
        "parts": p.parts.len(), "scanned": scanned, "planned": planned,
        "shards": shards, "written": written, "complete": null, "scan_files": scan_files,
    }))
}

fn remove_partials(out: &Path, prefix: &str) -> Result<()> {
    for entry in std::fs::read_dir(out).map_err(oerr(out))? {
        let entry = entry.map_err(oerr(out))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let partial = name.ends_with(".partial") || name.ends_with(".tmp");
        if partial && super::shard_number(&name, prefix).is_some() {
            std::fs::remove_file(entry.path()).map_err(oerr(&entry.path()))?;
        }
    }
    Ok(())
}

/// A shard counts as written when its done marker names a file of that size in place.
fn shard_written(opts: &BuildOptions, rp: &RayPaths, shard: u32) -> bool {
    let Ok(info) = read_json::<ShardInfo>(&rp.done_file(shard)) else {
        return false;
    };
    let len = std::fs::metadata(opts.output.join(&info.name)).map(|m| m.len());
    len.is_ok_and(|n| n == info.bytes) && opts.output.join(format!("{}.idx", info.name)).exists()
}

/// One line of a scan file: a record's position in its partition and its fate.
#[derive(Serialize, Deserialize)]
struct ScanRecord {
    /// Index in the partition.
    i: u64,
    /// Line (relative to the partition for byte ranges), element or row.
    l: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    o: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    s: Option<SampleMeta>,
    /// A reject: category, reason, id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    r: Option<(String, String, Option<String>)>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    t: Option<TextWire>,
}

/// A text report example: (step, field, before, after, reason).
type ExampleWire = (String, String, String, Option<String>, Option<String>);

/// [`TextLog`] as scan metadata (its names are the text module's static names).
#[derive(Serialize, Deserialize)]
struct TextWire {
    changed: u32,
    rejected: Option<String>,
    id: Option<String>,
    examples: Vec<ExampleWire>,
    limit: usize,
}

impl TextWire {
    fn of(t: &TextLog) -> Self {
        TextWire {
            changed: t.changed,
            rejected: t.rejected.map(str::to_string),
            id: t.id.clone(),
            examples: t
                .examples
                .iter()
                .map(|e| {
                    let (f, b) = (e.field.clone(), e.before.clone());
                    (e.step.to_string(), f, b, e.after.clone(), e.reason.clone())
                })
                .collect(),
            limit: t.limit,
        }
    }

    fn log(self) -> Result<TextLog> {
        let name = |s: &str| {
            crate::text::static_name(s).ok_or_else(|| {
                PackError::Resume(format!("scan metadata names an unknown text step {s:?}"))
            })
        };
        let mut examples = Vec::with_capacity(self.examples.len());
        for (step, field, before, after, reason) in self.examples {
            examples.push(crate::text::Example {
                step: name(&step)?,
                field,
                before,
                after,
                reason,
            });
        }
        Ok(TextLog {
            changed: self.changed,
            rejected: self.rejected.as_deref().map(name).transpose()?,
            id: self.id,
            examples,
            limit: self.limit,
        })
    }
}

/// Task: scan one partition; the answer is its metadata as JSON Lines, headed by
/// `{"records": n, "lines": n}`.
fn scan(opts: &BuildOptions, part: usize) -> Result<String> {
    let rp = RayPaths::new(&opts.output);
    let p: Partitions = read_json(&rp.partitions)?;
    let spec = p.parts.get(part).ok_or_else(|| {
        PackError::InvalidOption(format!("no partition {part} ({} in all)", p.parts.len()))
    })?;
    let ctx = Ctx::new(opts, &p.files)?;
    let mut reader = PartReader::open(&p.files, spec, opts.image_root.as_deref())?;
    let mut body = Vec::new();
    let mut records = 0u64;
    while let Some(rec) = reader.next_record() {
        let processed = process::process(rec?, &ctx);
        let pos = processed.pos;
        let mut line = ScanRecord {
            i: pos.index,
            l: pos.line,
            o: pos.offset,
            s: None,
            r: None,
            t: processed.text.as_deref().map(TextWire::of),
        };
        match processed.outcome {
            Outcome::Reject(r) => line.r = Some((r.category.to_string(), r.reason, r.id)),
            Outcome::Sample(prep) => {
                let sfx = suffixes(prep.images.iter().map(|i| i.info().format.ext()));
                line.s = Some(SampleMeta::of(&prep, sample_body(&prep, &sfx).len()));
            }
        }
        serde_json::to_writer(&mut body, &line).expect("metadata serialises");
        body.push(b'\n');
        records += 1;
    }
    let head = json!({"records": records, "lines": reader.lines()}).to_string();
    let mut out = String::with_capacity(head.len() + 1 + body.len());
    out.push_str(&head);
    out.push('\n');
    out.push_str(std::str::from_utf8(&body).expect("JSON is UTF-8"));
    Ok(out)
}

/// Where a partition's records sit in the whole input.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct PartBase {
    index: u64,
    line: u64,
}

#[derive(Serialize, Deserialize)]
struct Plan {
    shards: u32,
    bases: Vec<PartBase>,
    /// The job's state after its last record (shards are added at commit).
    checkpoint: Checkpoint,
    lines: u64,
}

/// A shard's samples: (partition, index in the partition, key), in input order.
#[derive(Serialize, Deserialize)]
struct ShardPlan {
    samples: Vec<(usize, u64, String)>,
    bytes: u64,
}

/// Driver: the decisions over every scanned partition in input order; `{"shards": n,
/// "records": n}`. Needs every partition scanned; rewrites `rejects.jsonl` and the journal.
fn plan(opts: &BuildOptions) -> Result<Value> {
    let rp = RayPaths::new(&opts.output);
    let p: Partitions = read_json(&rp.partitions)?;
    let mut dec = Decider::open(opts, &p.files, Checkpoint::empty())?;
    let mut bases = Vec::with_capacity(p.parts.len());
    let (mut index, mut lines, mut file_lines) = (0u64, 0u64, 0u64);
    let mut current: Option<(u32, ShardPlan)> = None;
    let mut shards = 0u32;
    for (k, part) in p.parts.iter().enumerate() {
        if k > 0 && p.parts[k - 1].file != part.file {
            file_lines = 0;
        }
        let base = PartBase {
            index,
            line: if part.relative_lines() { file_lines } else { 0 },
        };
        bases.push(base);
        let path = rp.scan_file(k);
        let f = std::fs::File::open(&path).map_err(|e| {
            PackError::Resume(format!(
                "partition {k} is not scanned ({}: {e})",
                path.display()
            ))
        })?;
        let mut rd = BufReader::with_capacity(1 << 20, f).lines();
        let bad = |why: String| PackError::Resume(format!("{}: {why}", path.display()));
        let head: Value = match rd.next() {
            Some(l) => {
                serde_json::from_str(&l.map_err(oerr(&path))?).map_err(|e| bad(e.to_string()))?
            }
            None => return Err(bad("empty".into())),
        };
        let (n, part_lines) = (head["records"].as_u64(), head["lines"].as_u64());
        let (Some(n), Some(part_lines)) = (n, part_lines) else {
            return Err(bad("no record count".into()));
        };
        for l in rd {
            let r: ScanRecord =
                serde_json::from_str(&l.map_err(oerr(&path))?).map_err(|e| bad(e.to_string()))?;
            let pos = Pos {
                index: base.index + r.i,
                line: base.line + r.l,
                offset: r.o,
                file: part.file,
            };
            let text = r.t.map(TextWire::log).transpose()?;
            let fate = match (&r.s, &r.r) {
                (Some(meta), _) => Fate::Sample(meta),
                (None, Some((category, reason, id))) => Fate::Reject {
                    category,
                    reason,
                    id: id.as_deref(),
                },
                (None, None) => return Err(bad("a record without a fate".into())),
            };
            let Some(placed) = dec.handle(&pos, fate, text.as_ref())? else {
                continue;
            };
            if placed.closed.is_some() {
                if let Some((no, sp)) = current.take() {
                    write_json(&rp.shard_file(no), &sp)?;
                }
            }
            if placed.opens {
                shards = placed.shard + 1;
                current = Some((
                    placed.shard,
                    ShardPlan {
                        samples: Vec::new(),
                        bytes: 0,
                    },
                ));
            }
            let (_, sp) = current.as_mut().expect("the decider opened a shard");
            sp.samples.push((k, r.i, placed.key));
            sp.bytes += placed.size;
        }
        index += n;
        lines += part_lines;
        file_lines += part_lines;
    }
    if let Some((no, sp)) = current.take() {
        write_json(&rp.shard_file(no), &sp)?;
    }
    dec.close(index);
    let mut checkpoint = dec.finish(index)?;
    checkpoint.stats.blank_lines = lines.saturating_sub(checkpoint.stats.records);
    let plan = Plan {
        shards,
        bases,
        checkpoint,
        lines,
    };
    write_json(&rp.plan, &plan)?;
    Ok(json!({"shards": shards, "records": index}))
}

/// Task: write one shard as planned; its info.
fn write(opts: &BuildOptions, shard_no: u32) -> Result<ShardInfo> {
    let rp = RayPaths::new(&opts.output);
    let p: Partitions = read_json(&rp.partitions)?;
    let plan: Plan = read_json(&rp.plan)?;
    let sp: ShardPlan = read_json(&rp.shard_file(shard_no))?;
    let names: Vec<String> = p.files.iter().map(|f| f.display().to_string()).collect();
    let ctx = Ctx::new(opts, &p.files)?;
    let out = &opts.output;
    let name = shard::shard_name(&opts.prefix, shard_no);
    let mut w = ShardWriter::create(out, &opts.prefix, shard_no).map_err(oerr(&out.join(&name)))?;
    let changed = |why: String| {
        PackError::input(
            &names[0],
            format!("changed since it was scanned ({why}); rerun with --overwrite"),
        )
    };
    let mut reader: Option<(usize, PartReader, u64)> = None;
    for (part, local, key) in &sp.samples {
        if reader.as_ref().map(|r| r.0) != Some(*part) {
            let spec = &p.parts[*part];
            let r = PartReader::open(&p.files, spec, opts.image_root.as_deref())?;
            reader = Some((*part, r, 0));
        }
        let (_, r, at) = reader.as_mut().expect("opened above");
        r.skip(local - *at)?;
        let rec = match r.next_record() {
            Some(rec) => rec?,
            None => return Err(changed(format!("partition {part} ended early"))),
        };
        *at = local + 1;
        let base = plan.bases[*part];
        let processed = process::process(rec, &ctx);
        let Outcome::Sample(prep) = processed.outcome else {
            return Err(changed(format!(
                "record {} is now a reject",
                base.index + local
            )));
        };
        let pos = processed.pos;
        let sfx = suffixes(prep.images.iter().map(|i| i.info().format.ext()));
        let body = sample_body(&prep, &sfx);
        let source = decide::source_json(&names[pos.file], base.line + pos.line, key);
        let json = splice(&body, &source);
        w.append(key, &decide::members(&prep, &sfx, &json))
            .map_err(oerr(out))?;
    }
    if w.bytes() != sp.bytes {
        return Err(changed(format!(
            "{name} came out {} bytes, planned {}",
            w.bytes(),
            sp.bytes
        )));
    }
    let (info, rows) = w.finish_with_rows().map_err(oerr(out))?;
    let rows_dir = StatePaths::new(out).rows;
    let path = shard::rows_path(&rows_dir, &info.name);
    super::writer::write_rows(&rows_dir, &path, rows.as_bytes())?;
    write_json(&rp.done_file(shard_no), &info)?;
    Ok(info)
}

/// Driver: every shard written; commit them in order and write the final artifacts as the
/// local build does. The answer is the build summary.
fn commit(opts: &BuildOptions, seconds: f64) -> Result<String> {
    let started = Instant::now() - std::time::Duration::from_secs_f64(seconds.max(0.0));
    let rp = RayPaths::new(&opts.output);
    let p: Partitions = read_json(&rp.partitions)?;
    let plan: Plan = read_json(&rp.plan)?;
    let mut ckpt = plan.checkpoint;
    for s in 0..plan.shards {
        if !shard_written(opts, &rp, s) {
            return Err(PackError::Resume(format!("shard {s} is not written")));
        }
        ckpt.shards.push(read_json(&rp.done_file(s))?);
    }
    let fp = fingerprint(opts, &p.files);
    finalize(opts, &mut ckpt, &fp, started, 0)?;
    let s = summary(opts, &ckpt, started, 0);
    let s = read_something(opts, &p.files, s)?;
    Ok(serde_json::to_string(&s).expect("summary serialises"))
}
