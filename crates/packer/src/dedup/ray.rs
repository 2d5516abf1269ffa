//! `dedup` with its read phase done by other processes (Ray tasks, orchestrated by
//! `llava_ov15.distributed.dedup`).
//!
//! Reading is the part worth spreading: one small json per sample on a shared filesystem
//! (85M of them for the full corpus). Everything after it needs every hash at once (the
//! search is global, union-find is global, keepers depend on whole clusters), so it stays in
//! one process, and it is the local job's own code ([`super::job`]): given the same rows in
//! the same order, the output files are the same bytes.
//!
//! The driver: [`DedupJob::open`] validates the options and checks every directory (packed?
//! `--phash off`? no shards?) exactly as the local read does, before any task runs; tasks call
//! [`read_shards`] on groups of consecutive shards and return [`encode_rows`] bytes; the driver
//! hands them to [`DedupJob::add`] in shard order (decoded at once, so it never holds the
//! bytes and the corpus together) and finally [`DedupJob::run`].
//!
//! [`read_shards`]: super::corpus::read_shards
//! [`encode_rows`]: super::wire::encode_rows

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::corpus::{CorpusBuilder, CorpusDir, ShardRows};
use super::job::{run, DedupOptions, DedupSummary, Reference};
use super::progress::Meter;
use super::read::{against_refs, Read};
use crate::error::{PackError, Result};

pub struct DedupJob {
    o: DedupOptions,
    t0: Instant,
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
        // A complete `--against` corpus is only needed as references: keep those, as the
        // local job does, and free the rest.
        if dir > 0 && b.missing() == 0 {
            let other = slot.take().expect("checked above").finish()?;
            self.against[dir - 1] = against_refs(self.dirs[dir].dir(), &other);
        }
        Ok(())
    }

    /// Search, cluster and write the outputs (and `--rewrite`), as the local job does.
    pub fn run(mut self, cancel: &AtomicBool) -> Result<DedupSummary> {
        let meter = Meter::start(self.o.progress);
        let input = self.builders[0].take();
        let corpus = input
            .ok_or_else(|| PackError::InvalidOption("dedup job already ran".into()))?
            .finish()?;
        for b in self.builders.drain(1..).flatten() {
            b.finish()?; // not complete: names the directory and how many shards are missing
        }
        meter.say(format_args!(
            "read {} samples, {} images from {} shards ({:.1}s)",
            corpus.samples.len(),
            corpus.images(),
            corpus.shards.len(),
            self.t0.elapsed().as_secs_f64()
        ));
        let against = self.against.into_iter().flatten().collect();
        run(&self.o, Read { corpus, against }, self.t0, &meter, cancel)
    }
}
