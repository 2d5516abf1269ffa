//! Shard output: deterministic tar writing, `.tar.idx`, and the megatron-energon `.nv-meta/`.
//!
//! INTERFACE CONTRACT (used by `build.rs`; keep these signatures):
//! - A shard is written as `{name}.partial` and only renamed to `{name}` (together with its
//!   `{name}.idx`) by [`ShardWriter::finish`], after an fsync: a partial shard is never
//!   visible under its final name.
//! - Tar headers are deterministic (fixed mtime/uid/gid/mode), so the same samples always give
//!   byte-identical shards.
//! - The shard's SHA-256 is taken on a thread of its own that reads the file back behind the
//!   writer (`hash_behind.rs`), so the writer thread only writes.

mod energon;
mod hash_behind;
mod reader;
mod rows;
pub(crate) mod tar_writer;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub use energon::{rows_path, write_energon_meta, write_energon_meta_with_rows, ENERGON_VERSION};
pub(crate) use reader::{check_safe_name, header_number, header_str, split_member_name};
pub use reader::{read_index, read_samples};
pub use rows::ShardRows;

use hash_behind::HashBehind;
use tar_writer::{check_key, check_suffix, CountingWriter};

use serde::{Deserialize, Serialize};

/// A finished shard, as listed in `manifest.json` and the build checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name relative to the output directory, e.g. `shard-000000.tar`.
    pub name: String,
    pub samples: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// One tar member of a sample: `{key}.{suffix}` (suffix e.g. `jpg`, `img0.png`, `json`).
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub suffix: &'a str,
    pub data: &'a [u8],
}

/// `{prefix}-{index:06}.tar`
pub fn shard_name(prefix: &str, index: u32) -> String {
    format!("{prefix}-{index:06}.tar")
}

/// Bytes a sample with members of these sizes occupies in a tar (headers + padding).
pub fn tar_sample_size(member_sizes: impl IntoIterator<Item = usize>) -> u64 {
    member_sizes
        .into_iter()
        .map(|n| 512 + (n as u64).div_ceil(512) * 512)
        .sum()
}

/// Write buffer of a shard (see `ShardWriter::create`).
const WRITE_BUFFER: usize = 64 << 10;

pub struct ShardWriter {
    dir: PathBuf,
    name: String,
    partial: PathBuf,
    out: CountingWriter<BufWriter<File>>,
    /// SHA-256 of the file, taken on another thread as the bytes reach the kernel.
    sha: HashBehind,
    /// Byte offset of each sample's first header.
    offsets: Vec<u64>,
    last_key: String,
    /// Bytes already handed to the kernel for writeback (see [`WRITEBACK_CHUNK`]).
    kicked: u64,
    /// The energon index rows of what is written so far.
    rows: ShardRows,
}

/// Start writeback of every this many bytes while the shard is being written, so the fsync
/// in [`ShardWriter::finish`] only waits for the tail instead of the whole shard (a 169 MB
/// shard's fsync alone took 0.25-0.3 s here, serial at the end of the job).
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// Ask the kernel to start writing `len` bytes at `offset` back to disk, without waiting:
/// only a hint for throughput; durability still comes from the fsync at the end.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor with in-range values; failure is harmless.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl ShardWriter {
    /// Start `dir/{shard_name(prefix, index)}.partial` (truncating any stale partial).
    pub fn create(dir: &Path, prefix: &str, index: u32) -> io::Result<Self> {
        let name = shard_name(prefix, index);
        let partial = dir.join(format!("{name}.partial"));
        let file = File::create(&partial)?;
        let sha = HashBehind::start(&partial)?;
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            name,
            partial,
            // Headers, padding and JSON are gathered here; members of at least the buffer's
            // size (most images) go straight to the kernel, saving a copy.
            out: CountingWriter::new(BufWriter::with_capacity(WRITE_BUFFER, file)),
            sha,
            offsets: Vec::new(),
            last_key: String::new(),
            kicked: 0,
            rows: ShardRows::default(),
        })
    }

    /// Append one sample (members adjacent, in the given order).
    ///
    /// Errors with `InvalidInput` (and writes nothing) if the sample has no members, the key
    /// is invalid or equal to the previous sample's key, a suffix is invalid or repeated, or
    /// a member name `{key}.{suffix}` is longer than 100 bytes.
    pub fn append(&mut self, key: &str, members: &[Member<'_>]) -> io::Result<()> {
        check_key(key)?;
        if members.is_empty() {
            return Err(invalid_input(format!("sample {key:?} has no members")));
        }
        if key == self.last_key {
            return Err(invalid_input(format!(
                "sample key {key:?} repeats the previous sample's key"
            )));
        }
        let mut names = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            check_suffix(m.suffix)?;
            if members[..i].iter().any(|o| o.suffix == m.suffix) {
                return Err(invalid_input(format!(
                    "sample {key:?} repeats member suffix {:?}",
                    m.suffix
                )));
            }
            let name = format!("{key}.{}", m.suffix);
            // Validate every header before writing anything.
            tar_writer::member_header(&name, m.data.len() as u64)?;
            names.push(name);
        }
        let start = self.out.written();
        self.offsets.push(start);
        let mut parts = Vec::with_capacity(members.len());
        for (name, m) in names.iter().zip(members) {
            let content = self.out.written() + tar_writer::BLOCK;
            self.out.write_member(name, m.data)?;
            parts.push((m.suffix, content, m.data.len() as u64));
        }
        let size = self.out.written() - start;
        self.rows.push(key, start, size, &parts);
        self.last_key.clear();
        self.last_key.push_str(key);
        let buffered = self.out.get_ref();
        let in_kernel = self.out.written() - buffered.buffer().len() as u64;
        self.sha.advance(in_kernel);
        if in_kernel - self.kicked >= WRITEBACK_CHUNK {
            start_writeback(buffered.get_ref(), self.kicked, in_kernel - self.kicked);
            self.kicked = in_kernel;
        }
        Ok(())
    }

    /// Bytes written so far (excluding the end-of-archive blocks).
    pub fn bytes(&self) -> u64 {
        self.out.written()
    }

    pub fn samples(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Write end-of-archive, fsync, write `.tar.idx`, rename both into place.
    pub fn finish(self) -> io::Result<ShardInfo> {
        self.finish_with_rows().map(|(info, _)| info)
    }

    /// [`ShardWriter::finish`], also returning the shard's energon index rows.
    pub fn finish_with_rows(self) -> io::Result<(ShardInfo, ShardRows)> {
        self.finish_in_background()?.wait()
    }

    /// Write end-of-archive and hand the rest of [`ShardWriter::finish`] (the hash's tail,
    /// fsync, `.tar.idx`, rename) to a thread of its own, so the caller can start writing the
    /// next shard meanwhile. The shard is in place once [`FinishingShard::wait`] returns.
    pub fn finish_in_background(self) -> io::Result<FinishingShard> {
        let ShardWriter {
            dir,
            name,
            partial,
            mut out,
            sha,
            mut offsets,
            rows,
            ..
        } = self;
        // energon's index ends with the offset where tar iteration stopped: the first
        // end-of-archive block, i.e. the end of the last sample.
        offsets.push(out.written());
        out.write_end()?;
        let bytes = out.written();
        let file = out.into_inner().into_inner().map_err(|e| e.into_error())?;
        let finish = move || -> io::Result<(ShardInfo, ShardRows)> {
            let sha256 = sha.finish(bytes)?;
            file.sync_all()?;
            drop(file);
            let mut idx = Vec::with_capacity(offsets.len() * 8);
            for off in &offsets {
                idx.extend_from_slice(&off.to_le_bytes());
            }
            write_atomic(&dir.join(format!("{name}.idx")), &idx)?;
            std::fs::rename(&partial, dir.join(&name))?;
            sync_dir(&dir)?;
            let info = ShardInfo {
                name,
                samples: offsets.len() as u64 - 1,
                bytes,
                sha256,
            };
            Ok((info, rows))
        };
        let thread = std::thread::Builder::new()
            .name("llava-pack-fin".into())
            .spawn(finish)?;
        Ok(FinishingShard {
            thread: Some(thread),
        })
    }
}

/// A shard being finished on its own thread (see [`ShardWriter::finish_in_background`]).
pub struct FinishingShard {
    thread: Option<std::thread::JoinHandle<io::Result<(ShardInfo, ShardRows)>>>,
}

impl FinishingShard {
    /// Whether [`FinishingShard::wait`] would return at once.
    pub fn is_done(&self) -> bool {
        self.thread.as_ref().map_or(true, |t| t.is_finished())
    }

    /// Wait until the shard is in place under its final name; its info and index rows.
    pub fn wait(mut self) -> io::Result<(ShardInfo, ShardRows)> {
        let thread = self.thread.take().expect("waited for only once");
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("shard finishing thread panicked")))
    }
}

impl Drop for FinishingShard {
    /// Not waited for (the job failed): still let it end, so no thread outlives the job.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Write `path` atomically: `{path}.tmp`, fsync, rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// fsync a directory so renames inside it are durable (no-op where unsupported).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
    }
    Ok(())
}
