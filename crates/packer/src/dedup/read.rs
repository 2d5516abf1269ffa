//! A dedup job in steps, whoever reads the shards.
//!
//! [`DedupJob::open`] validates the options and checks `--input` and every `--against`
//! directory (packed? `--phash off`? no shards?) before any sample is read. Every shard's
//! rows then arrive in shard order: read in this process ([`DedupJob::read_here`], rayon over
//! each directory's shards: the single-process `dedup`), or by other processes (Ray tasks,
//! orchestrated by `llava_ov15.distributed.dedup`, calling [`read_shards`]; their rows come
//! back through [`DedupJob::add`]). [`DedupJob::run`] is everything after the read. Both ways
//! hand the same rows in the same order to the same code, so the output files are the same.
//!
//! Reading is the part worth spreading: one small json per sample on a shared filesystem
//! (85M of them for the full corpus). Everything after it needs every hash at once (the search
//! is global, union-find is global, keepers depend on whole clusters), so it stays in one
//! process.
//!
//! [`read_shards`]: super::corpus::read_shards

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::json;

use super::corpus::{Corpus, CorpusBuilder, CorpusDir, ShardRows};
use super::job::{run, DedupOptions, DedupSummary, Reference};
use super::progress::Meter;
use crate::error::{PackError, Result};

/// What the search needs from the build outputs: the `--input` corpus and the images of the
/// `--against` directories as references (in directory order).
pub struct Read {
    pub corpus: Corpus,
    pub against: Vec<Reference>,
}

/// `other`'s hashed images as references, labelled with its directory and sample keys.
fn against_refs(dir: &Path, other: &Corpus) -> Vec<Reference> {
    let label = dir.display().to_string();
    let mut refs = Vec::new();
    for (img, h) in other.hash.iter().enumerate() {
        if let Some(h) = h {
            let s = &other.samples[other.sample_of[img] as usize];
            refs.push(Reference {
                hash: *h,
                source: label.clone(),
                row: json!(s.key),
            });
        }
    }
    refs
}

pub struct DedupJob {
    o: DedupOptions,
    t0: Instant,
    meter: Meter,
    /// `--input`, then each `--against` directory.
    dirs: Vec<CorpusDir>,
    /// Per directory, until it is complete (an `--against` one then becomes references).
    builders: Vec<Option<CorpusBuilder>>,
    against: Vec<Vec<Reference>>,
}

impl DedupJob {
    /// Validate `o` and check `--input` and every `--against` directory (nothing is read but
    /// their manifests and shard lists).
    pub fn open(o: DedupOptions) -> Result<DedupJob> {
        o.validate()?;
        let t0 = Instant::now();
        let mut dirs = vec![CorpusDir::open(&o.input, "--input")?];
        for d in &o.against {
            dirs.push(CorpusDir::open(d, "--against")?);
        }
        let builders = dirs.iter().map(|d| Some(d.builder())).collect();
        Ok(DedupJob {
            against: vec![Vec::new(); o.against.len()],
            meter: Meter::start(o.progress),
            o,
            t0,
            dirs,
            builders,
        })
    }

    /// `--input` (index 0), then the `--against` directories: what the read tasks read.
    pub fn dirs(&self) -> &[CorpusDir] {
        &self.dirs
    }

    /// The rows of the next shards of directory `dir`, in shard order.
    pub fn add(&mut self, dir: usize, rows: Vec<ShardRows>) -> Result<()> {
        let slot = self.builders.get_mut(dir).ok_or_else(|| {
            PackError::InvalidOption(format!("no directory {dir} in this dedup job"))
        })?;
        let b = slot.as_mut().ok_or_else(|| {
            PackError::InvalidOption(format!("directory {dir} already has all its shards"))
        })?;
        for r in rows {
            b.push(r)?;
        }
        // A complete `--against` corpus is only needed as references: keep those and free
        // the rest.
        if dir > 0 && b.missing() == 0 {
            let other = slot.take().expect("checked above").finish()?;
            self.against[dir - 1] = against_refs(self.dirs[dir].dir(), &other);
        }
        Ok(())
    }

    /// Read every directory in this process, each with rayon over its shards.
    pub fn read_here(&mut self, cancel: &AtomicBool) -> Result<()> {
        for d in 0..self.dirs.len() {
            self.meter
                .phase(if d == 0 { "reading" } else { "--against" });
            let rows = self.dirs[d].read_here(cancel, Some(self.meter.tally()))?;
            if d > 0 {
                let images: usize = rows.iter().flatten().map(|(_, im)| im.len()).sum();
                let label = self.dirs[d].dir().display();
                self.meter
                    .say(format_args!("--against {label}: {images} images"));
            }
            self.add(d, rows)?;
        }
        Ok(())
    }

    /// Search, cluster and write the outputs (and `--rewrite`); every shard must be read.
    pub fn run(mut self, cancel: &AtomicBool) -> Result<DedupSummary> {
        let input = self.builders[0].take();
        let corpus = input.expect("only run takes --input's corpus").finish()?;
        for b in self.builders.drain(1..).flatten() {
            b.finish()?; // not complete: names the directory and how many shards are missing
        }
        self.meter.say(format_args!(
            "read {} samples, {} images from {} shards ({:.1}s)",
            corpus.samples.len(),
            corpus.images(),
            corpus.shards.len(),
            self.t0.elapsed().as_secs_f64()
        ));
        let against = self.against.into_iter().flatten().collect();
        run(
            &self.o,
            Read { corpus, against },
            self.t0,
            &self.meter,
            cancel,
        )
    }
}
