//! Streaming reader for one JSON array (`[{…}, {…}, …]`, plain or zstd-compressed): hands
//! out each element's raw bytes, never the whole document.
//!
//! Memory is one element plus a read chunk: each element is located with serde_json on the
//! buffered bytes (the exact JSON grammar, so strings, escapes and nesting are handled as
//! JSON defines them), its bytes are copied out, and the buffer is trimmed before the next.
//! Elements are only validated as JSON here; turning them into samples happens on the worker
//! threads, exactly as for JSONL lines.
//!
//! Damage becomes [`Payload::Invalid`] records, so every element is a written sample or a
//! reject and the build goes on:
//! - an element with a syntax error is one reject; reading resumes at the next `}`, `{`
//!   boundary whose object parses, has a sample key (`id`, `image`, `images`, `caption`,
//!   `conversations`, `messages`, `instruction`) and is followed by `,` or `]` — the broken
//!   span counts as one element, however many it swallowed;
//! - an element longer than the limit (64 MiB) is skipped to its end without being buffered;
//! - a file that ends inside an element, or after one without the closing `]`, yields one
//!   reject for the cut;
//! - anything but whitespace after the closing `]` is one reject.
//!
//! Byte offsets are positions in the (decompressed) file, from 0.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::de::IgnoredAny;

use super::jsonl::{consumed_bytes, is_ws, open_counted};
use super::Payload;
use crate::error::{PackError, Result};

/// Longest accepted element; longer ones are skipped and rejected with [`TOO_LONG_ELEMENT`].
pub const MAX_ELEMENT: usize = super::jsonl::MAX_LINE;
/// Reason given for an element over [`MAX_ELEMENT`].
pub const TOO_LONG_ELEMENT: &str = "array element longer than 64 MiB";
/// Bytes asked of the file per read.
const CHUNK: usize = 1 << 20;
/// Keys of which a resynchronisation point must have one (see the module docs).
const SAMPLE_KEYS: [&str; 7] = [
    "id",
    "image",
    "images",
    "caption",
    "conversations",
    "messages",
    "instruction",
];

/// One element (or damaged span) of the array.
#[derive(Debug)]
pub(super) struct Element {
    /// 0-based element number in the file.
    pub index: u64,
    /// Byte offset of its first byte in the (decompressed) file.
    pub offset: u64,
    pub payload: Payload,
}

pub(super) struct JsonArrayReader {
    path: PathBuf,
    inner: Box<dyn Read + Send>,
    raw: Arc<AtomicU64>,
    decoded: Arc<AtomicU64>,
    /// Bytes read and not yet dropped; `buf[0]` is at file offset `base`.
    buf: Vec<u8>,
    base: u64,
    /// Cursor into `buf`: everything before it is consumed.
    pos: usize,
    eof: bool,
    /// The opening `[` was consumed.
    started: bool,
    /// The closing `[` was consumed (or the array can no longer be read).
    closed: bool,
    /// No more records at all.
    done: bool,
    /// Records handed out or skipped so far (elements and damage reports).
    records: u64,
    max: usize,
}

/// Where the parse of one value starting at `buf[start]` stopped.
enum Parsed {
    /// A whole value ends at this index of `buf`.
    Value(usize),
    /// The bytes end inside the value.
    Incomplete,
    /// A syntax error at this index of `buf`, with the message (without serde's position).
    Broken(usize, String),
}

impl JsonArrayReader {
    pub(super) fn open(path: &Path, zstd: bool) -> Result<Self> {
        let (inner, raw, decoded) = open_counted(path, zstd)?;
        Ok(Self::from_reader(path, inner, raw, decoded, MAX_ELEMENT))
    }

    pub(super) fn from_reader(
        path: &Path,
        inner: Box<dyn Read + Send>,
        raw: Arc<AtomicU64>,
        decoded: Arc<AtomicU64>,
        max: usize,
    ) -> Self {
        JsonArrayReader {
            path: path.to_path_buf(),
            inner,
            raw,
            decoded,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            eof: false,
            started: false,
            closed: false,
            done: false,
            records: 0,
            max,
        }
    }

    /// File bytes behind the records handed out so far (see `JsonlReader::consumed`).
    pub(super) fn consumed(&self) -> u64 {
        consumed_bytes(&self.raw, &self.decoded, self.base + self.pos as u64)
    }

    /// Records handed out or skipped so far: an array has no blank lines.
    pub(super) fn records(&self) -> u64 {
        self.records
    }

    /// Drop the consumed bytes, so the buffer holds one element at most.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
    }

    /// Append at least `want` more bytes (fewer at the end of the file); false at the end.
    fn fill(&mut self, want: usize) -> Result<bool> {
        let mut got = 0;
        while got < want.max(1) && !self.eof {
            let len = self.buf.len();
            self.buf.resize(len + CHUNK.max(want - got.min(want)), 0);
            let n = loop {
                match self.inner.read(&mut self.buf[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(len);
                        self.done = true;
                        return Err(PackError::input(&self.path, e));
                    }
                }
            };
            self.buf.truncate(len + n);
            self.eof = n == 0;
            got += n;
        }
        Ok(got > 0)
    }

    /// Index of the first non-whitespace byte at or after `from`, reading on as needed;
    /// `None` at the end of the file.
    fn non_ws(&mut self, mut from: usize) -> Result<Option<usize>> {
        loop {
            if let Some(i) = self.buf[from..].iter().position(|b| !is_ws(*b)) {
                return Ok(Some(from + i));
            }
            from = self.buf.len();
            if !self.fill(CHUNK)? {
                return Ok(None);
            }
        }
    }

    fn parse_at(&self, start: usize) -> Parsed {
        let mut it =
            serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<IgnoredAny>();
        match it.next() {
            Some(Ok(_)) => Parsed::Value(start + it.byte_offset()),
            None => Parsed::Incomplete,
            Some(Err(e)) if e.is_eof() => Parsed::Incomplete,
            Some(Err(e)) => {
                let at = start + position(&self.buf[start..], e.line(), e.column());
                Parsed::Broken(at, message(&e))
            }
        }
    }

    /// Parse the value at `start`, reading more until it is complete; `Ok(None)` when the
    /// file ends inside it, `Err(())` when it is longer than the limit.
    fn value_at(&mut self, start: usize) -> Result<std::result::Result<Option<Parsed>, ()>> {
        loop {
            match self.parse_at(start) {
                // A number at the very end of the bytes read may go on in the next chunk.
                Parsed::Value(end) if end - start > self.max => return Ok(Err(())),
                Parsed::Value(end) if end == self.buf.len() && !self.eof => {}
                Parsed::Incomplete if self.buf.len() - start > self.max => return Ok(Err(())),
                Parsed::Incomplete if self.eof => return Ok(Ok(None)),
                Parsed::Incomplete => {}
                done => return Ok(Ok(Some(done))),
            }
            let have = self.buf.len() - start;
            // Read as much again as is buffered, so re-parsing from `start` stays linear.
            self.fill(have.max(CHUNK))?;
        }
    }

    /// Next element (or damage report), `None` after the last.
    pub(super) fn next_element(&mut self) -> Option<Result<Element>> {
        if self.done {
            return None;
        }
        let r = self.advance();
        if let Ok(Some(_)) = &r {
            self.records += 1;
        }
        match r {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// Skip up to `n` records; returns how many (fewer only at the end). Elements are
    /// located exactly as [`Self::next_element`] does, damage included.
    pub(super) fn skip(&mut self, n: u64) -> Result<u64> {
        let mut skipped = 0;
        while skipped < n {
            match self.next_element() {
                Some(Ok(_)) => skipped += 1,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(skipped)
    }

    fn element(&self, offset: u64, payload: Payload) -> Element {
        Element {
            index: self.records,
            offset,
            payload,
        }
    }

    fn advance(&mut self) -> Result<Option<Element>> {
        self.compact();
        if !self.started {
            // The file was sniffed as an array: a BOM, whitespace, then `[`.
            self.fill(CHUNK)?;
            let skip = if self.buf.starts_with("\u{feff}".as_bytes()) {
                3
            } else {
                0
            };
            match self.non_ws(skip)? {
                Some(i) if self.buf[i] == b'[' => self.pos = i + 1,
                _ => {
                    return Err(PackError::input(&self.path, "is not a JSON array"));
                }
            }
            self.started = true;
            self.compact();
        }
        if self.closed {
            return self.trailing();
        }
        let Some(start) = self.non_ws(self.pos)? else {
            self.closed = true;
            return Ok(Some(self.element(
                self.base + self.buf.len() as u64,
                Payload::Invalid(format!(
                    "the file ends before the array's closing ] (truncated?) after {} \
                     elements, at byte {}",
                    self.records,
                    self.base + self.buf.len() as u64
                )),
            )));
        };
        if self.buf[start] == b']' {
            // The end (a trailing comma before it is tolerated: nothing is lost).
            self.pos = start + 1;
            self.closed = true;
            return self.trailing();
        }
        let offset = self.base + start as u64;
        let end = match self.value_at(start)? {
            Ok(Some(Parsed::Value(end))) => end,
            Ok(Some(Parsed::Broken(at, why))) => return self.broken(start, at, why).map(Some),
            Ok(Some(Parsed::Incomplete)) | Ok(None) => {
                self.pos = self.buf.len();
                self.closed = true;
                self.done_after_this();
                return Ok(Some(self.element(
                    offset,
                    Payload::Invalid(format!(
                        "truncated: the file ends inside this element (byte {}); the array \
                         is not closed",
                        self.base + self.buf.len() as u64
                    )),
                )));
            }
            Err(()) => return self.too_long(start).map(Some),
        };
        let bytes = self.buf[start..end].to_vec();
        self.pos = end;
        self.separator()?;
        Ok(Some(self.element(offset, Payload::Json(bytes))))
    }

    /// After an element: consume a `,`, or the closing `]`. Anything else is left for the
    /// next element to report (a missing comma loses nothing, so `{…} {…}` reads both).
    fn separator(&mut self) -> Result<()> {
        if let Some(i) = self.non_ws(self.pos)? {
            match self.buf[i] {
                b',' => self.pos = i + 1,
                b']' => {
                    self.pos = i + 1;
                    self.closed = true;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// After the last record of a cut file, nothing else is reported.
    fn done_after_this(&mut self) {
        self.eof = true;
        self.buf.truncate(self.pos);
    }

    /// After the closing `]`: whitespace to the end, else one reject for what follows.
    fn trailing(&mut self) -> Result<Option<Element>> {
        let Some(i) = self.non_ws(self.pos)? else {
            self.pos = self.buf.len();
            return Ok(None);
        };
        let offset = self.base + i as u64;
        // Read to the end without keeping it: it is not part of the array.
        while self.fill(CHUNK)? {
            self.compact_all();
        }
        self.pos = self.buf.len();
        self.done_after_this();
        Ok(Some(self.element(
            offset,
            Payload::Invalid(format!(
                "text after the array's closing ], at byte {offset} (two documents in one file?)"
            )),
        )))
    }

    /// Drop everything buffered (used while skipping unwanted bytes).
    fn compact_all(&mut self) {
        self.pos = self.buf.len();
        self.compact();
    }

    /// An element with a syntax error at `at`: one reject, then resynchronise.
    fn broken(&mut self, start: usize, at: usize, why: String) -> Result<Element> {
        let offset = self.base + start as u64;
        let err_at = self.base + at as u64;
        let resumed = self.resync(at.max(start + 1))?;
        let tail = match resumed {
            Some(o) => format!("; reading resumed at byte {o}"),
            None => "; no later element could be read".to_string(),
        };
        Ok(self.element(
            offset,
            Payload::Invalid(format!("malformed JSON at byte {err_at}: {why}{tail}")),
        ))
    }

    /// Find the next element boundary at or after `from` (see the module docs) and put the
    /// cursor on it; its file offset, or `None` when the file ends first.
    fn resync(&mut self, from: usize) -> Result<Option<u64>> {
        // 0: looking for `}`; 1: saw `}` (and whitespace); 2: saw `}` ws `,` (and whitespace).
        let mut state = 0u8;
        let mut i = from;
        loop {
            if i >= self.buf.len() {
                // Keep nothing that is already scanned: the state carries what matters.
                self.pos = self.buf.len();
                self.compact();
                i = 0;
                if !self.fill(CHUNK)? {
                    self.closed = true;
                    self.done_after_this();
                    return Ok(None);
                }
                continue;
            }
            let b = self.buf[i];
            state = match (state, b) {
                (_, b'}') => 1,
                (1, b',') => 2,
                (2, b'{') => {
                    if self.is_element_start(i)? {
                        self.pos = i;
                        return Ok(Some(self.base + i as u64));
                    }
                    0
                }
                (s @ (1 | 2), b) if is_ws(b) => s,
                _ => 0,
            };
            i += 1;
        }
    }

    /// Whether an object at `buf[i]` parses, has a sample key and is followed by `,` or `]`.
    fn is_element_start(&mut self, i: usize) -> Result<bool> {
        let end = match self.value_at(i)? {
            Ok(Some(Parsed::Value(end))) => end,
            _ => return Ok(false),
        };
        let keys: BTreeMap<String, IgnoredAny> = match serde_json::from_slice(&self.buf[i..end]) {
            Ok(k) => k,
            Err(_) => return Ok(false),
        };
        if !SAMPLE_KEYS.iter().any(|k| keys.contains_key(*k)) {
            return Ok(false);
        }
        Ok(match self.non_ws(end)? {
            Some(j) => matches!(self.buf[j], b',' | b']'),
            None => true,
        })
    }

    /// An element over the limit: skip to its end with a byte scanner (strings, escapes and
    /// nesting), keeping nothing, then one reject.
    fn too_long(&mut self, start: usize) -> Result<Element> {
        let offset = self.base + start as u64;
        let mut scan = Scan::default();
        let mut i = start;
        loop {
            if let Some(k) = scan.feed(&self.buf[i..]) {
                self.pos = i + k;
                break;
            }
            self.compact_all();
            i = 0;
            if !self.fill(CHUNK)? {
                self.closed = true;
                self.done_after_this();
                return Ok(self.element(
                    offset,
                    Payload::Invalid(format!(
                        "{TOO_LONG_ELEMENT}, and the file ends inside it (truncated?)"
                    )),
                ));
            }
        }
        self.separator()?;
        Ok(self.element(offset, Payload::Invalid(TOO_LONG_ELEMENT.to_string())))
    }
}

/// Byte index of serde's 1-based `line`, `column` (bytes) in `bytes`.
fn position(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut at = 0;
    for _ in 1..line {
        match bytes[at..].iter().position(|&b| b == b'\n') {
            Some(p) => at += p + 1,
            None => return bytes.len(),
        }
    }
    (at + column.saturating_sub(1)).min(bytes.len())
}

/// serde's message without its " at line L column C" (relative to the element, so
/// misleading next to the file offset we give).
fn message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Finds where an element ends without keeping it: the `,` or `]` at depth 0 outside
/// strings.
#[derive(Default)]
struct Scan {
    depth: u64,
    in_str: bool,
    escape: bool,
}

impl Scan {
    /// Index in `bytes` of the terminator, if it is there.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            if self.in_str {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b',' | b']' if self.depth == 0 => return Some(i),
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::jsonl::Counting;

    fn reader(data: &[u8], max: usize) -> JsonArrayReader {
        let count = Arc::new(AtomicU64::new(0));
        let inner: Box<dyn Read + Send> = Box::new(Counting {
            inner: io::Cursor::new(data.to_vec()),
            count: count.clone(),
        });
        JsonArrayReader::from_reader(Path::new("t.json"), inner, count.clone(), count, max)
    }

    /// (index, offset, text or "!reason").
    fn all(r: &mut JsonArrayReader) -> Vec<(u64, u64, String)> {
        let mut out = Vec::new();
        while let Some(e) = r.next_element() {
            let e = e.unwrap();
            let text = match e.payload {
                Payload::Json(b) => String::from_utf8_lossy(&b).into_owned(),
                Payload::Invalid(m) => format!("!{m}"),
                Payload::Sample(_) => unreachable!(),
            };
            out.push((e.index, e.offset, text));
        }
        out
    }

    fn texts(data: &[u8]) -> Vec<String> {
        all(&mut reader(data, 1 << 20))
            .into_iter()
            .map(|e| e.2)
            .collect()
    }

    #[test]
    fn elements_offsets_and_whitespace() {
        let data = b"\xef\xbb\xbf \n[ {\"a\": \"x,]}\\\"\"} ,\n\t[1, {\"b\": 2}], 3 ,\"s\" ]\n ";
        let got = all(&mut reader(data, 1 << 20));
        let texts: Vec<&str> = got.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            texts,
            [r#"{"a": "x,]}\""}"#, r#"[1, {"b": 2}]"#, "3", r#""s""#]
        );
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        for (_, offset, text) in &got {
            assert_eq!(&data[*offset as usize..][..text.len()], text.as_bytes());
        }
        assert!(texts_of(b"[]").is_empty());
        assert!(texts_of(b"  [ \n ]  ").is_empty());
        // A trailing comma and a missing comma lose nothing.
        assert_eq!(texts_of(b"[{\"a\":1},]"), ["{\"a\":1}"]);
        assert_eq!(
            texts_of(b"[{\"a\":1} {\"b\":2}]"),
            ["{\"a\":1}", "{\"b\":2}"]
        );
    }

    fn texts_of(data: &[u8]) -> Vec<String> {
        texts(data)
    }

    #[test]
    fn a_broken_element_is_one_reject_and_reading_goes_on() {
        // Balanced brackets, bad content.
        let got = texts(b"[{\"id\":\"a\"},{\"id\": 1 \"x\": 2},{\"id\":\"c\"}]");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], "{\"id\":\"a\"}");
        assert!(got[1].starts_with("!malformed JSON at byte 21:"), "{got:?}");
        assert!(got[1].contains("resumed at byte 29"), "{got:?}");
        assert_eq!(got[2], "{\"id\":\"c\"}");
        // A missing quote inverts every string after it; the next boundary after the error
        // whose object parses is found all the same. The element whose `{` the broken string
        // swallowed (b) is part of the one rejected span: the search starts at the error, so
        // it never cuts a nested object out of the broken element's good prefix.
        let data =
            b"[{\"id\":\"a\",\"caption\":\"x},{\"id\":\"b\",\"caption\":\"y\"},\n{\"id\":\"c\"}]";
        let got = texts(data);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("!malformed JSON at byte 27"), "{got:?}");
        assert_eq!(got[1], "{\"id\":\"c\"}");
        // A nested object inside the broken element is not taken for an element.
        let data = b"[{\"id\":\"a\",\"conversations\":[{\"from\":\"human\",\"value\":\"q\" oops},\
            {\"from\":\"gpt\",\"value\":\"r\"}]},{\"id\":\"b\"}]";
        let got = texts(data);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1], "{\"id\":\"b\"}");
        // Broken last element: no later element.
        let got = texts(b"[{\"id\":\"a\"},{\"id\" 1}]");
        assert_eq!(got.len(), 2);
        assert!(got[1].contains("no later element"), "{got:?}");
    }

    #[test]
    fn truncation_is_one_reject() {
        let got = texts(b"[{\"id\":\"a\"},{\"id\":\"b\",\"capt");
        assert_eq!(got.len(), 2);
        assert!(got[1].starts_with("!truncated"), "{got:?}");
        let got = texts(b"[{\"id\":\"a\"},\n");
        assert_eq!(got.len(), 2);
        assert!(got[1].contains("closing ]"), "{got:?}");
        let got = texts(b"[{\"id\":\"a\"}");
        assert_eq!(got.len(), 2);
        assert!(got[1].contains("after 1 elements"), "{got:?}");
        let got = texts(b"[");
        assert_eq!(got.len(), 1);
        let got = texts(b"[{\"id\":\"a\"}] {\"x\":1}\n");
        assert_eq!(got.len(), 2);
        assert!(
            got[1].contains("after the array's closing ], at byte 13"),
            "{got:?}"
        );
    }

    #[test]
    fn a_too_long_element_is_skipped_without_buffering() {
        let big = format!("{{\"s\":\"{}\\\",]\"}}", "x".repeat(5000));
        let data = format!("[{{\"id\":\"a\"}},{big},{{\"id\":\"c\"}}]");
        let mut r = reader(data.as_bytes(), 1000);
        let got = all(&mut r);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].2, format!("!{TOO_LONG_ELEMENT}"));
        assert_eq!(got[1].1, 12);
        assert_eq!(got[2].2, "{\"id\":\"c\"}");
        let cut = &data.as_bytes()[..3000];
        let got = all(&mut reader(cut, 1000));
        assert_eq!(got.len(), 2);
        assert!(got[1].2.contains("ends inside it"), "{got:?}");
    }

    #[test]
    fn elements_across_many_small_reads() {
        // One byte per read: every boundary falls between reads.
        let data = b"[{\"id\":\"a\",\"n\":12345}, 678 ,{\"id\":\"c\\u00e9\"}]".to_vec();
        struct Trickle(io::Cursor<Vec<u8>>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let count = Arc::new(AtomicU64::new(0));
        let mut r = JsonArrayReader::from_reader(
            Path::new("t.json"),
            Box::new(Trickle(io::Cursor::new(data.clone()))),
            count.clone(),
            count,
            1 << 20,
        );
        let got: Vec<String> = all(&mut r).into_iter().map(|e| e.2).collect();
        assert_eq!(got, texts(&data));
        assert_eq!(
            got,
            ["{\"id\":\"a\",\"n\":12345}", "678", "{\"id\":\"c\\u00e9\"}"]
        );
    }

    #[test]
    fn skip_matches_reading() {
        let data = b"[{\"id\":\"a\"},{\"id\" 1},{\"id\":\"c\"}, 4, {\"id\":\"e\"}";
        let expected = all(&mut reader(data, 1 << 20));
        assert_eq!(expected.len(), 6);
        for n in 0..8u64 {
            let mut r = reader(data, 1 << 20);
            assert_eq!(r.skip(n).unwrap(), n.min(6));
            let rest = all(&mut r);
            assert_eq!(rest, expected[(n as usize).min(6)..], "n={n}");
            assert_eq!(r.records(), 6);
            assert_eq!(r.consumed(), data.len() as u64, "n={n}");
        }
    }
}
