//! The dedup output files, written all or nothing (see [`Outputs`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{PackError, Result};

pub(crate) const DROP: usize = 0;
pub(crate) const CLUSTERS: usize = 1;
pub(crate) const CONTAMINATION: usize = 2;
pub(crate) const STATS: usize = 3;
const OUTPUT_FILES: [&str; 4] = [
    "drop.txt",
    "clusters.jsonl",
    "contamination.jsonl",
    "dedup_stats.json",
];

/// The output files, written as `{name}.tmp` and renamed together by [`Outputs::commit`]: a
/// failure before that leaves no new output file (the temp files are removed on drop), and no
/// reader ever sees a partial one.
pub(crate) struct Outputs {
    dir: PathBuf,
    files: Vec<std::io::BufWriter<std::fs::File>>,
    committed: bool,
}

impl Outputs {
    fn tmp(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.tmp"))
    }

    pub fn create(dir: &Path) -> Result<Outputs> {
        std::fs::create_dir_all(dir).map_err(|e| PackError::output(dir, e))?;
        let mut outs = Outputs {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            committed: false,
        };
        for name in OUTPUT_FILES {
            let p = Self::tmp(dir, name);
            let f = std::fs::File::create(&p).map_err(|e| PackError::output(&p, e))?;
            outs.files
                .push(std::io::BufWriter::with_capacity(1 << 20, f));
        }
        Ok(outs)
    }

    fn err(&self, i: usize, e: std::io::Error) -> PackError {
        PackError::output(Self::tmp(&self.dir, OUTPUT_FILES[i]), e)
    }

    pub fn line(&mut self, i: usize, text: std::fmt::Arguments<'_>) -> Result<()> {
        writeln!(self.files[i], "{text}").map_err(|e| self.err(i, e))
    }

    pub fn jsonl(&mut self, i: usize, row: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.files[i], row)
            .map_err(std::io::Error::from)
            .and_then(|()| self.files[i].write_all(b"\n"))
            .map_err(|e| self.err(i, e))
    }

    pub fn commit(mut self) -> Result<()> {
        for i in 0..OUTPUT_FILES.len() {
            let res = self.files[i]
                .flush()
                .and_then(|()| self.files[i].get_ref().sync_all());
            res.map_err(|e| self.err(i, e))?;
        }
        for name in OUTPUT_FILES {
            let to = self.dir.join(name);
            std::fs::rename(Self::tmp(&self.dir, name), &to)
                .map_err(|e| PackError::output(&to, e))?;
        }
        self.committed = true;
        crate::shard::sync_dir(&self.dir).map_err(|e| PackError::output(&self.dir, e))
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.committed {
            for name in OUTPUT_FILES {
                let _ = std::fs::remove_file(Self::tmp(&self.dir, name));
            }
        }
    }
}
