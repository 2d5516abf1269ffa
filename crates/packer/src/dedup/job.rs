//! The `llava-pack dedup` job: read hashes → search → clusters and keepers → contamination →
//! `drop.txt`, `clusters.jsonl`, `contamination.jsonl`, `dedup_stats.json` (all or nothing),
//! and with `--rewrite` a shard directory without the dropped samples.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use super::cluster::{KeepRule, UnionFind};
use super::keepers;
use super::outputs::{Outputs, CLUSTERS, CONTAMINATION, DROP, STATS};
use super::progress::Meter;
use super::read::{DedupJob, Read};
use super::rewrite::{self, RewriteSummary};
use super::search::{search_distinct_tallied, Distinct, SearchError, MAX_DISTANCE};
use super::verify::{dhashes, Linker, Verify, DEFAULT_VERIFY_DISTANCE};
use crate::build::Progress;
use crate::error::{PackError, Result};

/// When a multi-image sample counts as a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultiImage {
    /// Dropped when any of its images is a non-keeper duplicate of another sample's image.
    #[default]
    Any,
    /// Dropped only when every hashed image is.
    All,
}

impl MultiImage {
    pub fn name(self) -> &'static str {
        match self {
            MultiImage::Any => "any",
            MultiImage::All => "all",
        }
    }
}

impl std::str::FromStr for MultiImage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "any" => Ok(MultiImage::Any),
            "all" => Ok(MultiImage::All),
            _ => Err(format!("--multi-image must be any or all, not {s:?}")),
        }
    }
}

/// A hash to decontaminate against (a benchmark image), with where it came from.
#[derive(Debug, Clone)]
pub struct Reference {
    pub hash: u64,
    /// Benchmark name (or the `--against` directory).
    pub source: String,
    /// Benchmark row (a number) or the other corpus's sample key.
    pub row: Value,
}

#[derive(Debug, Clone)]
pub struct DedupOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub max_distance: u32,
    pub keep: KeepRule,
    pub multi_image: MultiImage,
    /// `--verify dhash`: a training pair also needs its dhashes within `verify_distance`.
    pub verify: Verify,
    pub verify_distance: u32,
    /// Other build outputs: a training sample within the distance of any of their images is
    /// dropped (dedup a new corpus against an old one).
    pub against: Vec<PathBuf>,
    /// Hashes of evaluation images (computed by the caller from the benchmark parquet).
    pub references: Vec<Reference>,
    /// `--rewrite OUT`: also write a shard directory without the dropped samples.
    pub rewrite: Option<PathBuf>,
    pub overwrite: bool,
    pub progress: Progress,
}

impl DedupOptions {
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        DedupOptions {
            input: input.into(),
            output: output.into(),
            max_distance: DEFAULT_MAX_DISTANCE,
            keep: KeepRule::Largest,
            multi_image: MultiImage::Any,
            verify: Verify::Off,
            verify_distance: DEFAULT_VERIFY_DISTANCE,
            against: Vec::new(),
            references: Vec::new(),
            rewrite: None,
            overwrite: false,
            progress: Progress::Auto,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_distance > MAX_DISTANCE {
            return Err(PackError::InvalidOption(format!(
                "--max-distance must be in 0..={MAX_DISTANCE}, not {}",
                self.max_distance
            )));
        }
        if self.verify_distance > MAX_DISTANCE {
            return Err(PackError::InvalidOption(format!(
                "--verify-distance must be in 0..={MAX_DISTANCE}, not {}",
                self.verify_distance
            )));
        }
        if self.output.exists() && !self.overwrite {
            return Err(PackError::output(
                &self.output,
                "already exists; pass --overwrite to replace its dedup files",
            ));
        }
        if self.output.exists() && !self.output.is_dir() {
            return Err(PackError::output(
                &self.output,
                "exists and is not a directory",
            ));
        }
        if let Some(out) = &self.rewrite {
            rewrite::validate(out, &self.input, &self.output, self.overwrite)?;
        }
        Ok(())
    }
}

/// Default `--max-distance` (see the calibration table in the README).
pub const DEFAULT_MAX_DISTANCE: u32 = 8;

/// `dedup_stats.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DedupSummary {
    pub samples: u64,
    pub images: u64,
    pub hashed_images: u64,
    /// Images without a hash (`phash: null`), not compared.
    pub skipped_no_hash: u64,
    pub distinct_hashes: u64,
    /// Training image pairs within the distance (pairs of equal hashes included), and with
    /// `--verify` within the verify distance too.
    pub pairs: u64,
    /// Training image pairs within the phash distance whose dhashes were not (`--verify`).
    pub pairs_rejected_by_verify: u64,
    pub clusters: u64,
    pub clustered_images: u64,
    /// Clusters none of whose samples survives: each is contaminated or dropped by another
    /// cluster (see `keepers.rs`).
    pub clusters_without_survivor: u64,
    /// Clusters whose first keeper was dropped by another cluster and replaced.
    pub clusters_repicked: u64,
    pub contaminated_images: u64,
    pub reference_images: u64,
    pub dropped: BTreeMap<String, u64>,
    pub kept_samples: u64,
    /// `histogram[d]`: training image pairs at Hamming distance `d`.
    pub distance_histogram: Vec<u64>,
    pub max_distance: u32,
    pub keep: String,
    pub multi_image: String,
    pub verify: String,
    /// `--verify-distance` (null without `--verify`).
    pub verify_distance: Option<u32>,
    /// `--rewrite`: the directory written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteSummary>,
    pub seconds: f64,
}

fn search_err(e: SearchError) -> PackError {
    match e {
        SearchError::Cancelled => PackError::Cancelled,
        SearchError::Distance(_) => PackError::InvalidOption(e.to_string()),
        SearchError::TooMany(_) => PackError::InvalidOption(e.to_string()),
    }
}

/// Run a dedup job in this process (see the module docs); returns what `dedup_stats.json`
/// holds.
pub fn dedup(o: &DedupOptions, cancel: &AtomicBool) -> Result<DedupSummary> {
    let mut job = DedupJob::open(o.clone())?;
    job.read_here(cancel)?;
    job.run(cancel)
}

/// Everything after the read — search, clusters, keepers, contamination, the output files
/// and `--rewrite` — for a corpus read here or by Ray tasks (`super::read`). `o` is
/// validated by the caller; `t0` is the job's start, for `seconds`.
pub(crate) fn run(
    o: &DedupOptions,
    read: Read,
    t0: Instant,
    meter: &Meter,
    cancel: &AtomicBool,
) -> Result<DedupSummary> {
    let Read { corpus, against } = read;
    let mut refs: Vec<Reference> = o.references.clone();
    refs.extend(against);

    // Training images with a hash, then the references, in one search.
    let hashed: Vec<u32> = (0..corpus.images() as u32)
        .filter(|&i| corpus.hash[i as usize].is_some())
        .collect();
    let mut all: Vec<u64> = hashed
        .iter()
        .map(|&i| corpus.hash[i as usize].expect("filtered"))
        .collect();
    all.extend(refs.iter().map(|r| r.hash));
    let n_train = hashed.len();
    let dh = match o.verify {
        Verify::Off => None,
        Verify::Dhash => Some(dhashes(&corpus, &o.input, &hashed)?),
    };
    let mut linker = dh.as_deref().map(|dh| Linker::new(dh, o.verify_distance));
    let t1 = Instant::now();
    meter.phase("searching");
    let distinct = Distinct::new(&all).map_err(search_err)?;
    let pairs = search_distinct_tallied(
        &distinct.values,
        o.max_distance,
        Some(cancel),
        Some(meter.tally()),
    )
    .map_err(search_err)?;
    meter.say(format_args!(
        "{} distinct hashes, {} pairs of distinct hashes within {} ({:.1}s)",
        distinct.values.len(),
        pairs.len(),
        o.max_distance,
        t1.elapsed().as_secs_f64()
    ));

    // Union training images; note each training image's closest reference.
    meter.phase("clustering");
    let d = o.max_distance as usize;
    let mut hist = vec![0u64; d + 1];
    let mut uf = UnionFind::new(corpus.images());
    let mut contam: Vec<Option<(u8, u32)>> = vec![None; corpus.images()];
    let split = |u: usize| {
        let m = distinct.members(u);
        // Members are ascending, so training positions (< n_train) come first.
        let t = m.partition_point(|&x| (x as usize) < n_train);
        (&m[..t], &m[t..])
    };
    let note = |img: u32, dist: u8, r: u32, contam: &mut [Option<(u8, u32)>]| {
        let slot = &mut contam[img as usize];
        let better = match *slot {
            None => true,
            Some(old) => (dist, r) < old,
        };
        if better {
            *slot = Some((dist, r));
        }
    };
    let mut distinct_train = 0u64;
    for u in 0..distinct.values.len() {
        let (train, rf) = split(u);
        let t = train.len() as u64;
        distinct_train += u64::from(t > 0);
        if let Some(l) = linker.as_mut() {
            hist[0] += l.within(train, &mut |x, y| {
                uf.union(hashed[x as usize], hashed[y as usize]);
            });
        } else {
            hist[0] += t * t.saturating_sub(1) / 2;
            for w in train.windows(2) {
                uf.union(hashed[w[0] as usize], hashed[w[1] as usize]);
            }
        }
        if let Some(&r) = rf.first() {
            for &x in train {
                note(hashed[x as usize], 0, r - n_train as u32, &mut contam);
            }
        }
    }
    for p in &pairs {
        let (ta, ra) = split(p.i as usize);
        let (tb, rb) = split(p.j as usize);
        if let Some(l) = linker.as_mut() {
            hist[p.distance as usize] += l.cross(ta, tb, &mut |x, y| {
                uf.union(hashed[x as usize], hashed[y as usize]);
            });
        } else {
            hist[p.distance as usize] += ta.len() as u64 * tb.len() as u64;
            if let (Some(&x), Some(&y)) = (ta.first(), tb.first()) {
                uf.union(hashed[x as usize], hashed[y as usize]);
            }
        }
        for (train, rf) in [(ta, rb), (tb, ra)] {
            if let Some(&r) = rf.first() {
                for &x in train {
                    note(
                        hashed[x as usize],
                        p.distance,
                        r - n_train as u32,
                        &mut contam,
                    );
                }
            }
        }
    }
    drop(pairs);
    drop(distinct);
    let rejected_by_verify = linker.map_or(0, |l| l.rejected);
    drop(dh);

    // Contamination first: those samples go whatever the keeper rule says.
    let ns = corpus.samples.len();
    let mut reason: Vec<Option<String>> = vec![None; ns];
    let mut contamination = Vec::new();
    for (img, c) in contam.iter().enumerate() {
        if let Some((dist, r)) = *c {
            let s = corpus.sample_of[img] as usize;
            let info = &corpus.samples[s];
            let rf = &refs[r as usize];
            let row = match &rf.row {
                Value::String(k) => k.clone(),
                v => v.to_string(),
            };
            if reason[s].is_none() {
                reason[s] = Some(format!("contaminates {} row {row}", rf.source));
            }
            contamination.push(json!({
                "key": info.key,
                "index": s,
                "shard": corpus.shards[info.shard as usize],
                "image": img as u32 - info.first_image,
                "benchmark": rf.source,
                "row": rf.row,
                "distance": dist,
            }));
        }
    }
    let contaminated_samples = reason.iter().filter(|r| r.is_some()).count() as u64;

    // Clusters and keepers (the rule is in keepers.rs).
    let clusters = uf.clusters();
    let contaminated: Vec<bool> = reason.iter().map(Option::is_some).collect();
    let hashed_images: Vec<u32> = corpus
        .samples
        .iter()
        .map(|info| {
            let first = info.first_image as usize;
            corpus.hash[first..first + info.images as usize]
                .iter()
                .filter(|h| h.is_some())
                .count() as u32
        })
        .collect();
    let picked = keepers::assign(&keepers::Input {
        clusters: &clusters,
        sample_of: &corpus.sample_of,
        pixels: &corpus.pixels,
        contaminated: &contaminated,
        hashed_images: &hashed_images,
        keep: o.keep,
        multi_image: o.multi_image,
    });
    let mut dup_samples = 0u64;
    for (r, by) in reason.iter_mut().zip(&picked.dropped_by) {
        if let (Some(k), None) = (by, &r) {
            let kkey = &corpus.samples[corpus.sample_of[*k as usize] as usize].key;
            *r = Some(format!("near-duplicate of {kkey}"));
            dup_samples += 1;
        }
    }

    // clusters.jsonl, streamed to its temp file (one cluster's rows in memory at a time).
    meter.phase("writing");
    meter
        .tally()
        .total
        .store(clusters.len() as u64, Ordering::Relaxed);
    let mut outs = Outputs::create(&o.output)?;
    let hash = |i: u32| corpus.hash[i as usize].expect("clustered images are hashed");
    let mut without_survivor = 0u64;
    for (id, (members, &k)) in clusters.iter().zip(&picked.keeper).enumerate() {
        let ks = corpus.sample_of[k as usize] as usize;
        if reason[ks].is_some() {
            without_survivor += 1;
        }
        let rows: Vec<Value> = members
            .iter()
            .map(|&m| {
                let s = corpus.sample_of[m as usize] as usize;
                let info = &corpus.samples[s];
                let why = if m == k && picked.repicked[id] {
                    format!("{}, re-picked", o.keep.name())
                } else if m == k {
                    o.keep.name().to_string()
                } else if s == ks {
                    "same sample as the keeper".into()
                } else {
                    "duplicate".into()
                };
                json!({
                    "key": info.key,
                    "index": s,
                    "shard": corpus.shards[info.shard as usize],
                    "image": m - info.first_image,
                    "pixels": corpus.pixels[m as usize],
                    "phash": format!("{:016x}", hash(m)),
                    "distance": (hash(m) ^ hash(k)).count_ones(),
                    "kept": m == k,
                    "why": why,
                    "sample_dropped": reason[s].is_some(),
                })
            })
            .collect();
        let row = json!({
            "cluster": id,
            "size": members.len(),
            "keeper": corpus.samples[ks].key,
            "members": rows,
        });
        outs.jsonl(CLUSTERS, &row)?;
        meter.tally().add(1);
    }

    let mut drop_lines: Vec<(&str, &str)> = (0..ns)
        .filter_map(|s| {
            reason[s]
                .as_deref()
                .map(|r| (corpus.samples[s].key.as_str(), r))
        })
        .collect();
    drop_lines.sort_unstable();
    let rewritten = match &o.rewrite {
        Some(out) => {
            meter.phase("rewriting");
            let how = json!({"max_distance": o.max_distance, "keep": o.keep.name(),
                             "multi_image": o.multi_image.name(), "verify": o.verify.name(),
                             "drop": o.output.join("drop.txt")});
            let r = rewrite::rewrite(
                &o.input,
                out,
                o.overwrite,
                &reason,
                how,
                cancel,
                meter.tally(),
            )?;
            meter.say(format_args!(
                "rewrote {} samples into {} shards in {}",
                r.samples,
                r.shards,
                out.display()
            ));
            Some(r)
        }
        None => None,
    };
    let mut dropped = BTreeMap::new();
    dropped.insert("near_duplicate".to_string(), dup_samples);
    dropped.insert("contamination".to_string(), contaminated_samples);
    let summary = DedupSummary {
        samples: ns as u64,
        images: corpus.images() as u64,
        hashed_images: n_train as u64,
        skipped_no_hash: (corpus.images() - n_train) as u64,
        distinct_hashes: distinct_train,
        pairs: hist.iter().sum(),
        pairs_rejected_by_verify: rejected_by_verify,
        clusters: clusters.len() as u64,
        clustered_images: clusters.iter().map(|c| c.len() as u64).sum(),
        clusters_without_survivor: without_survivor,
        clusters_repicked: picked.repicked.iter().filter(|&&r| r).count() as u64,
        contaminated_images: contamination.len() as u64,
        reference_images: refs.len() as u64,
        dropped,
        kept_samples: ns as u64 - drop_lines.len() as u64,
        distance_histogram: hist,
        max_distance: o.max_distance,
        keep: o.keep.name().into(),
        multi_image: o.multi_image.name().into(),
        verify: o.verify.name().into(),
        verify_distance: (o.verify != Verify::Off).then_some(o.verify_distance),
        rewrite: rewritten,
        seconds: t0.elapsed().as_secs_f64(),
    };
    for (key, why) in &drop_lines {
        outs.line(DROP, format_args!("{key}\t{why}"))?;
    }
    for row in &contamination {
        outs.jsonl(CONTAMINATION, row)?;
    }
    let stats = serde_json::to_string_pretty(&summary).expect("summary serialises");
    outs.line(STATS, format_args!("{stats}"))?;
    outs.commit()?;
    meter.say(format_args!(
        "{} clusters, dropped {} near-duplicate and {} contaminated samples of {}; wrote {} \
             ({:.1}s)",
        summary.clusters,
        dup_samples,
        contaminated_samples,
        ns,
        o.output.display(),
        summary.seconds
    ));
    Ok(summary)
}
