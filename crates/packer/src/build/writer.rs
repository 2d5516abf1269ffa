//! The single, ordered writer: runs the [`Decider`] (dedup, keys, shard rollover, rejects,
//! statistics) on each record in input order and writes the bytes it decided. Runs on its
//! own thread and sees records in input order, which is what makes the output independent
//! of the worker count. A closed shard is finished on a thread of its own
//! (`ShardWriter::finish_in_background`) while the next one is written; checkpoints commit
//! shards in order, each with the state saved when it was closed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::error::{PackError, Result};
use crate::shard::{self, FinishingShard, ShardWriter};

use super::decide::{
    members, sample_body, splice, suffixes, CloseState, Decider, Fate, SampleMeta,
};
use super::options::BuildOptions;
use super::process::{Outcome, Processed};
use super::state::{write_atomic, Checkpoint, StatePaths};

/// Shards being finished (hash tail, fsync, rename) in the background at most; beyond, the
/// writer waits for the oldest. More than one so that, on a machine with cores to spare, the
/// writer never waits for a hash: a hash (~1.4 GB/s) is slower than writing.
const MAX_FINISHING: usize = 3;

/// A closed shard and the job's state when it was closed, committed once it is in place.
struct Closed {
    shard: FinishingShard,
    state: CloseState,
}

pub struct Writer {
    out: PathBuf,
    prefix: String,
    paths: StatePaths,
    decider: Decider,
    shard: Option<ShardWriter>,
    /// Closed shards still being finished, oldest first; committed in this order.
    finishing: VecDeque<Closed>,
}

impl Writer {
    /// Continue from `ckpt` (the empty checkpoint for a fresh job).
    pub fn open(opts: &BuildOptions, files: &[PathBuf], ckpt: Checkpoint) -> Result<Self> {
        Ok(Writer {
            out: opts.output.clone(),
            prefix: opts.prefix.clone(),
            paths: StatePaths::new(&opts.output),
            decider: Decider::open(opts, files, ckpt)?,
            shard: None,
            finishing: VecDeque::new(),
        })
    }

    /// The job's state: statistics and committed shards so far.
    pub fn ckpt(&self) -> &Checkpoint {
        &self.decider.ckpt
    }

    pub fn handle(&mut self, processed: Processed) -> Result<()> {
        let Processed { pos, outcome, text } = processed;
        while self.finishing.front().is_some_and(|c| c.shard.is_done()) {
            self.commit_oldest()?;
        }
        let prep = match outcome {
            Outcome::Reject(r) => {
                let fate = Fate::Reject {
                    category: r.category,
                    reason: &r.reason,
                    id: r.id.as_deref(),
                };
                self.decider.handle(&pos, fate, text.as_deref())?;
                return Ok(());
            }
            Outcome::Sample(prep) => prep,
        };
        let suffixes = suffixes(prep.images.iter().map(|i| i.info().format.ext()));
        let body = sample_body(&prep, &suffixes);
        let meta = SampleMeta::of(&prep, body.len());
        let fate = Fate::Sample(&meta);
        let Some(placed) = self.decider.handle(&pos, fate, text.as_deref())? else {
            return Ok(());
        };
        if let Some(state) = placed.closed {
            self.finish_shard(state)?;
        }
        if placed.opens {
            let no = placed.shard;
            let w = ShardWriter::create(&self.out, &self.prefix, no).map_err(|e| {
                PackError::output(self.out.join(shard::shard_name(&self.prefix, no)), e)
            })?;
            self.shard = Some(w);
        }
        let json = splice(&body, &placed.source);
        let w = self.shard.as_mut().expect("the decider opened a shard");
        w.append(&placed.key, &members(&prep, &suffixes, &json))
            .map_err(|e| PackError::output(&self.out, e))
    }

    /// Close the open shard; its checkpoint is committed once the shard is in place, while
    /// the next one is already being written.
    fn finish_shard(&mut self, state: CloseState) -> Result<()> {
        let Some(w) = self.shard.take() else {
            return Ok(());
        };
        let shard = w
            .finish_in_background()
            .map_err(|e| PackError::output(&self.out, e))?;
        self.finishing.push_back(Closed { shard, state });
        while self.finishing.len() > MAX_FINISHING {
            self.commit_oldest()?;
        }
        Ok(())
    }

    /// Wait for the oldest closed shard, then write its rows and the checkpoint that commits
    /// it, with the job's state as it was when the shard was closed.
    fn commit_oldest(&mut self) -> Result<()> {
        let Some(c) = self.finishing.pop_front() else {
            return Ok(());
        };
        let (info, rows) = c
            .shard
            .wait()
            .map_err(|e| PackError::output(&self.out, e))?;
        let path = shard::rows_path(&self.paths.rows, &info.name);
        write_rows(&self.paths.rows, &path, rows.as_bytes())?;
        self.decider.ckpt.shards.push(info);
        self.decider.sync_logs()?;
        let ckpt = Checkpoint {
            next_index: c.state.next_index,
            shards: self.decider.ckpt.shards.clone(),
            rejects_bytes: c.state.rejects_bytes,
            journal_bytes: c.state.journal_bytes,
            stats: c.state.stats,
            ..Checkpoint::empty()
        };
        write_checkpoint(&self.paths, &ckpt)
    }

    /// Finish the last shard, commit every shard in order and then the job's final state;
    /// the caller then writes the final artifacts.
    pub fn finish(mut self, end_index: u64) -> Result<Checkpoint> {
        if let Some(state) = self.decider.close(end_index) {
            self.finish_shard(state)?;
        }
        while !self.finishing.is_empty() {
            self.commit_oldest()?;
        }
        let ckpt = self.decider.finish(end_index)?;
        write_checkpoint(&self.paths, &ckpt)?;
        Ok(ckpt)
    }
}

/// A shard's energon index rows, written before the checkpoint that commits the shard.
pub(super) fn write_rows(dir: &Path, path: &Path, rows: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)
        .and_then(|()| write_atomic(path, rows))
        .map_err(|e| PackError::output(path, e))
}

pub(super) fn write_checkpoint(paths: &StatePaths, ckpt: &Checkpoint) -> Result<()> {
    let data = serde_json::to_vec_pretty(ckpt).expect("checkpoint serialises");
    write_atomic(&paths.checkpoint, &data).map_err(|e| PackError::output(&paths.checkpoint, e))
}
