//! SHA-256 of a shard computed on its own thread, reading back what the writer has already
//! handed to the kernel.
//!
//! Why: hashing every output byte on the in-order writer thread made it the one serial step
//! of a build (SHA-256 runs at ~1.4 GB/s on one core even with SHA-NI; the page-cache writes
//! add as much again), so a build could not go faster than ~1 GB/s of shards however many
//! workers it had. Here the writer only writes; a hasher thread follows it through the file,
//! reading from the page cache (the bytes were just written, so nothing touches the disk),
//! and the two run on different cores.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Bytes read back per `pread`: large enough to amortise the syscall, small enough to stay
/// in L2 between the read and the hash.
const PIECE: usize = 1 << 20;

#[derive(Default)]
struct State {
    /// Bytes `[0, ready)` of the file are written and may be read back.
    ready: u64,
    /// The file's final length, once the writer is done.
    end: Option<u64>,
    /// The writer gave up (error or drop): stop without a result.
    abort: bool,
    /// The hasher is waiting for `ready` to move (so the writer knows to wake it).
    waiting: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    moved: Condvar,
}

/// The hasher of one file being written; see the module docs.
pub(crate) struct HashBehind {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<String>>>,
}

impl HashBehind {
    /// Start hashing `path` (already created by the writer) as it grows.
    pub(crate) fn start(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("llava-pack-sha".into())
            .spawn(move || hash_file(&file, &theirs))?;
        Ok(HashBehind {
            shared,
            thread: Some(thread),
        })
    }

    /// The first `ready` bytes of the file are written (handed to the kernel).
    pub(crate) fn advance(&self, ready: u64) {
        let mut st = self.shared.state.lock().expect("hasher state lock");
        if ready > st.ready {
            st.ready = ready;
            if st.waiting {
                self.shared.moved.notify_one();
            }
        }
    }

    /// The file is complete at `len` bytes: wait for the hasher and return the hex digest.
    pub(crate) fn finish(mut self, len: u64) -> io::Result<String> {
        {
            let mut st = self.shared.state.lock().expect("hasher state lock");
            st.ready = len;
            st.end = Some(len);
            self.shared.moved.notify_one();
        }
        let thread = self.thread.take().expect("hasher joined only once");
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("shard hasher thread panicked")))
    }
}

impl Drop for HashBehind {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Ok(mut st) = self.shared.state.lock() {
                st.abort = true;
                self.shared.moved.notify_one();
            }
            let _ = thread.join();
        }
    }
}

fn hash_file(file: &File, shared: &Shared) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut pos = 0u64;
    loop {
        let target = {
            let mut st = shared.state.lock().expect("hasher state lock");
            loop {
                if st.abort {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "shard writing stopped before the end",
                    ));
                }
                if st.ready > pos {
                    break st.ready;
                }
                if st.end == Some(pos) {
                    return Ok(hex::encode(hasher.finalize()));
                }
                st.waiting = true;
                st = shared.moved.wait(st).expect("hasher state lock");
                st.waiting = false;
            }
        };
        while pos < target {
            let n = (target - pos).min(PIECE as u64) as usize;
            read_exact_at(file, &mut buf[..n], pos)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sha_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn digest_equals_the_whole_file_hash_however_the_writes_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * PIECE + 777).map(|i| (i * 31 % 251) as u8).collect();
        for cuts in [
            vec![],
            vec![1],
            vec![PIECE, PIECE + 1, 2 * PIECE + 5],
            vec![10; 40],
        ] {
            let mut f = File::create(&path).unwrap();
            let h = HashBehind::start(&path).unwrap();
            let mut at = 0usize;
            for step in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = at.saturating_add(*step).min(data.len());
                f.write_all(&data[at..end]).unwrap();
                at = end;
                h.advance(at as u64);
            }
            assert_eq!(h.finish(data.len() as u64).unwrap(), sha_hex(&data));
        }
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let h = HashBehind::start(&path).unwrap();
        assert_eq!(h.finish(0).unwrap(), sha_hex(b""));
    }

    #[test]
    fn a_file_shorter_than_announced_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let h = HashBehind::start(&path).unwrap();
        let e = h.finish(10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn dropping_without_finish_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let h = HashBehind::start(&path).unwrap();
        h.advance(2);
        drop(h); // joins; a hang here would fail the test by timeout
    }
}
