//! Streaming JSONL reader (plain or zstd-compressed): splits raw lines, never parses.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Payload;
use crate::error::{PackError, Result};

/// Longest accepted line (without its newline); longer lines become [`Payload::Invalid`].
pub const MAX_LINE: usize = 64 << 20;
/// Reason given for a line over [`MAX_LINE`].
pub const TOO_LONG: &str = "line longer than 64 MiB";
const BUF_SIZE: usize = 4 << 20;

/// Counts the bytes read from the underlying file (compressed bytes for `.zst`).
pub(super) struct Counting<R> {
    pub(super) inner: R,
    pub(super) count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// JSON whitespace; a line made only of these is blank and skipped.
pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A file opened for streaming (decompressed when `zstd`), with its two byte counters:
/// bytes read from the file (compressed for `.zst`) and bytes handed to the parser
/// (decompressed; the same counter as the first for a plain file).
pub(super) type Counted = (Box<dyn Read + Send>, Arc<AtomicU64>, Arc<AtomicU64>);

pub(super) fn open_counted(path: &Path, zstd: bool) -> Result<Counted> {
    let file = File::open(path).map_err(|e| PackError::input(path, e))?;
    let raw = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: file,
        count: raw.clone(),
    };
    if !zstd {
        return Ok((Box::new(counting), raw.clone(), raw));
    }
    let decoder = zstd::stream::read::Decoder::new(counting)
        .map_err(|e| PackError::input(path, format!("zstd: {e}")))?;
    let decoded = Arc::new(AtomicU64::new(0));
    let inner = Box::new(Counting {
        inner: decoder,
        count: decoded.clone(),
    });
    Ok((inner, raw, decoded))
}

/// File bytes behind `taken` decompressed bytes, for progress: for `.zst` the compressed
/// position is interpolated from the decompressed one (exact at the end of the file).
pub(super) fn consumed_bytes(raw: &AtomicU64, decoded: &AtomicU64, taken: u64) -> u64 {
    let raw = raw.load(Ordering::Relaxed);
    let decoded = decoded.load(Ordering::Relaxed);
    if decoded == 0 {
        return 0;
    }
    (raw as u128 * taken.min(decoded) as u128 / decoded as u128) as u64
}

pub(super) struct JsonlReader {
    path: PathBuf,
    reader: BufReader<Box<dyn Read + Send>>,
    /// Bytes read from the file (compressed for `.zst`): the buffer reads ahead of the records.
    raw: Arc<AtomicU64>,
    /// Bytes the buffer was filled with (decompressed for `.zst`; the same counter as `raw`
    /// for a plain file).
    decoded: Arc<AtomicU64>,
    /// Bytes of lines handed out or skipped so far (decompressed): where the records are.
    taken: u64,
    /// Lines fully consumed so far (blank ones included).
    line_no: u64,
    done: bool,
    max_line: usize,
    /// Lines starting at or past this many bytes are not this reader's (a byte range of the
    /// file, see [`JsonlReader::open_range`]); `u64::MAX` for the whole file.
    limit: u64,
}

impl JsonlReader {
    pub(super) fn open(path: &Path, zstd: bool) -> Result<Self> {
        let (inner, raw, decoded) = open_counted(path, zstd)?;
        Ok(Self::from_reader(path, inner, raw, decoded, MAX_LINE))
    }

    fn from_reader(
        path: &Path,
        inner: Box<dyn Read + Send>,
        raw: Arc<AtomicU64>,
        decoded: Arc<AtomicU64>,
        max_line: usize,
    ) -> Self {
        JsonlReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(BUF_SIZE, inner),
            raw,
            decoded,
            taken: 0,
            line_no: 0,
            done: false,
            max_line,
            limit: u64::MAX,
        }
    }

    /// The lines of a plain file that start in bytes `[start, end)`: the first is the one
    /// after the first newline at or past `start - 1`. Ranges that tile a file read each
    /// line exactly once; line numbers count from 1 in the range.
    pub(super) fn open_range(path: &Path, start: u64, end: u64) -> Result<Self> {
        use std::io::{Seek, SeekFrom};
        let err = |e: io::Error| PackError::input(path, e);
        let mut file = File::open(path).map_err(err)?;
        let mut first = 0;
        if start > 0 {
            file.seek(SeekFrom::Start(start - 1)).map_err(err)?;
            let mut r = BufReader::with_capacity(1 << 16, file);
            first = start - 1;
            loop {
                let buf = r.fill_buf().map_err(err)?;
                if buf.is_empty() {
                    break;
                }
                match memchr::memchr(b'\n', buf) {
                    Some(i) => {
                        first += i as u64 + 1;
                        break;
                    }
                    None => {
                        let n = buf.len();
                        first += n as u64;
                        r.consume(n);
                    }
                }
            }
            file = r.into_inner();
            file.seek(SeekFrom::Start(first)).map_err(err)?;
        }
        let raw = Arc::new(AtomicU64::new(0));
        let inner = Box::new(Counting {
            inner: file,
            count: raw.clone(),
        });
        let mut r = Self::from_reader(path, inner, raw.clone(), raw, MAX_LINE);
        r.limit = end.saturating_sub(first);
        Ok(r)
    }

    /// File bytes behind the records handed out (or skipped) so far, for progress. Not the
    /// bytes read: the 4 MiB buffer reads ahead, which made a small file look done after its
    /// first record (see [`consumed_bytes`]).
    pub(super) fn consumed(&self) -> u64 {
        consumed_bytes(&self.raw, &self.decoded, self.taken)
    }

    /// Physical lines read or skipped so far, blank ones included.
    pub(super) fn lines(&self) -> u64 {
        self.line_no
    }

    fn consume(&mut self, n: usize) {
        self.reader.consume(n);
        self.taken += n as u64;
    }

    fn fill(&mut self) -> Result<&[u8]> {
        loop {
            match self.reader.fill_buf() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Err(PackError::input(&self.path, e));
                }
            }
        }
        Ok(self.reader.buffer())
    }

    /// Next non-blank line as `(1-based line number, payload)`.
    pub(super) fn next_line(&mut self) -> Option<Result<(u64, Payload)>> {
        loop {
            if self.done || self.taken >= self.limit {
                return None;
            }
            let max = self.max_line;
            let mut line = Vec::new();
            // Set once the line is over the limit: `line` is then dropped and we only
            // remember whether it had any non-blank byte while resynchronising.
            let mut too_long = false;
            let mut content = false;
            let mut any = false;
            loop {
                let buf = match self.fill() {
                    Ok(buf) => buf,
                    Err(e) => return Some(Err(e)),
                };
                if buf.is_empty() {
                    self.done = true;
                    break;
                }
                any = true;
                let (chunk, used, end) = match buf.iter().position(|&b| b == b'\n') {
                    Some(pos) => (&buf[..pos], pos + 1, true),
                    None => (buf, buf.len(), false),
                };
                if too_long {
                    content |= chunk.iter().any(|&b| !is_ws(b));
                // One extra byte allowed for a trailing '\r'.
                } else if line.len() + chunk.len() > max + 1 {
                    too_long = true;
                    content = line.iter().chain(chunk).any(|&b| !is_ws(b));
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
                self.consume(used);
                if end {
                    break;
                }
            }
            if !any {
                return None;
            }
            self.line_no += 1;
            if too_long {
                if !content {
                    continue;
                }
                return Some(Ok((self.line_no, Payload::Invalid(TOO_LONG.to_string()))));
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(|&b| is_ws(b)) {
                continue;
            }
            if line.len() > max {
                return Some(Ok((self.line_no, Payload::Invalid(TOO_LONG.to_string()))));
            }
            return Some(Ok((self.line_no, Payload::Json(line))));
        }
    }

    /// Skip up to `n` records (non-blank lines) without copying them; returns how many
    /// were skipped (fewer than `n` only at the end of the file). Lines are counted exactly
    /// as [`Self::next_line`] counts them, a last line without a newline included.
    pub(super) fn skip(&mut self, n: u64) -> Result<u64> {
        let mut skipped = 0;
        let mut content = false;
        // Any byte since the last newline (a last line without one still counts as a line).
        let mut partial = false;
        while skipped < n && !self.done {
            let buf = self.fill()?;
            if buf.is_empty() {
                self.done = true;
                if partial {
                    self.line_no += 1;
                    skipped += content as u64;
                }
                break;
            }
            let mut used = buf.len();
            let mut lines = 0;
            for (i, &b) in buf.iter().enumerate() {
                if b == b'\n' {
                    lines += 1;
                    partial = false;
                    if content {
                        content = false;
                        skipped += 1;
                        if skipped == n {
                            used = i + 1;
                            break;
                        }
                    }
                } else {
                    partial = true;
                    content |= !is_ws(b);
                }
            }
            self.line_no += lines;
            self.consume(used);
        }
        Ok(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(data: &[u8], max_line: usize) -> JsonlReader {
        let count = Arc::new(AtomicU64::new(0));
        let inner: Box<dyn Read + Send> = Box::new(Counting {
            inner: io::Cursor::new(data.to_vec()),
            count: count.clone(),
        });
        JsonlReader::from_reader(Path::new("t.jsonl"), inner, count.clone(), count, max_line)
    }

    fn all(r: &mut JsonlReader) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while let Some(rec) = r.next_line() {
            let (line, payload) = rec.unwrap();
            let text = match payload {
                Payload::Json(b) => String::from_utf8_lossy(&b).into_owned(),
                Payload::Invalid(m) => format!("!{m}"),
                Payload::Sample(_) => unreachable!(),
            };
            out.push((line, text));
        }
        out
    }

    #[test]
    fn lines_blank_crlf_and_final_line() {
        let mut r = reader(b"a\r\n\n  \r\nb\n\t\nc", 100);
        assert_eq!(
            all(&mut r),
            [(1, "a".into()), (4, "b".into()), (6, "c".into())]
        );
        let mut r = reader(b"", 100);
        assert!(all(&mut r).is_empty());
        let mut r = reader(b"\n\n", 100);
        assert!(all(&mut r).is_empty());
    }

    #[test]
    fn too_long_resynchronises() {
        let mut r = reader(
            b"0123456789\nabcdefghijk\nshort\r\n0123456789\r\n          x\n",
            10,
        );
        let got = all(&mut r);
        assert_eq!(
            got,
            [
                (1, "0123456789".into()),
                (2, format!("!{TOO_LONG}")),
                (3, "short".into()),
                (4, "0123456789".into()),
                (5, format!("!{TOO_LONG}")),
            ]
        );
        // A tiny buffer exercises the path where the limit is crossed across refills.
        let data = b"abcdefghijklmnop\nok\n".to_vec();
        let inner: Box<dyn Read + Send> = Box::new(io::Cursor::new(data));
        let mut r = JsonlReader {
            reader: BufReader::with_capacity(3, inner),
            ..reader(b"", 5)
        };
        assert_eq!(all(&mut r), [(1, format!("!{TOO_LONG}")), (2, "ok".into())]);
    }

    #[test]
    fn skip_matches_reading() {
        for data in [&b"a\n\nb\r\n  \nc\nd\ne"[..], b"a\n\nb\n \r", b"a\n\n"] {
            for n in 0..7 {
                let mut full = reader(data, 100);
                let mut expected = all(&mut full);
                let count = expected.len() as u64;
                expected.drain(..(n as usize).min(expected.len()));
                let mut r = reader(data, 100);
                assert_eq!(r.skip(n).unwrap(), n.min(count), "n={n}");
                assert_eq!(all(&mut r), expected, "n={n}");
                // Blank lines are counted alike however the file was consumed.
                assert_eq!(r.lines(), full.lines(), "n={n}");
                assert_eq!(r.consumed(), data.len() as u64, "n={n}");
            }
        }
        assert_eq!(reader(b"a\n\nb\n \r", 100).skip(9).unwrap(), 2);
    }

    #[test]
    fn progress_follows_the_records_handed_out_not_the_read_ahead() {
        // 3,000 lines fit in the 4 MiB buffer at once: the first read takes the whole file.
        let line = b"{\"id\":\"0000\",\"caption\":\"a short caption\"}\n";
        let data = line.repeat(3000);
        let mut r = reader(&data, 1 << 20);
        let mut n = 0u64;
        while n < 510 {
            r.next_line().unwrap().unwrap();
            n += 1;
        }
        assert_eq!(r.consumed(), 510 * line.len() as u64);
        let mut r = reader(&data, 1 << 20);
        assert_eq!(r.skip(1500).unwrap(), 1500);
        assert_eq!(r.consumed(), data.len() as u64 / 2);
        assert_eq!(r.lines(), 1500);
    }
}
