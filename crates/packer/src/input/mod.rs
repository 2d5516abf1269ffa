//! Input: streaming record sources and sample normalisation.
//!
//! INTERFACE CONTRACT (used by `build.rs`; keep these signatures):
//! - [`open`] turns the `--input` argument (a file, or a glob such as `dir/*.parquet` or
//!   `parts/*.jsonl.zst`; matches sorted lexicographically) into a [`RecordSource`];
//!   [`open_all`] does the same for several `--input`s, read one after another in the order
//!   given (a file named twice is refused: it would only produce duplicates).
//! - A JSON input whose first non-blank byte is `[` is one JSON array: it is streamed element
//!   by element (`json_array`), each element handled like a JSONL line. One that starts with
//!   a pretty-printed top-level object (`{` alone on its first line) is refused up front: it
//!   is neither an array nor JSON Lines.
//! - The reader thread only splits records; [`parse`] (JSON parse, shape detection, path
//!   resolution) runs on worker threads. A record that cannot become a [`Sample`] yields
//!   `Err(reason)`: a reject, never a job error.
//!
//! Submodules: `jsonl` (line splitting for `.jsonl`/`.jsonl.zst`), `json_array` (element
//! splitting for JSON arrays, plain or `.zst`), `parquet` (row decoding) and `sample` (shape
//! detection and validation rules, documented there).
//!
//! File kinds are chosen by name: `.parquet`/`.pq`, `*.zst` (zstd-compressed JSON),
//! `.jsonl`/`.json`/`.ndjson`; any other name is sniffed from its first bytes (Parquet or
//! zstd magic, else JSON). JSON (plain or decompressed) is an array when its first non-blank
//! byte is `[`, else JSON Lines.

mod json_array;
mod jsonl;
mod parquet;
mod partition;
mod sample;

pub use json_array::{MAX_ELEMENT, TOO_LONG_ELEMENT};
pub use jsonl::{MAX_LINE, TOO_LONG};
pub use parquet::BATCH_SIZE;
pub use partition::{partitions, PartReader, Partition, Unit};
pub use sample::IMAGE_PLACEHOLDER;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{PackError, Result};

/// One input record, in input order.
#[derive(Debug)]
pub struct Record {
    /// 0-based position in the whole input (across files); defines output order.
    pub index: u64,
    /// 1-based line number in its JSONL file, 0-based element number in its JSON array, or
    /// 0-based row number in its Parquet file.
    pub line: u64,
    /// Byte offset of a JSON array element in its (decompressed) file; `None` for other
    /// kinds.
    pub offset: Option<u64>,
    /// Index into [`RecordSource::files`].
    pub file: usize,
    pub payload: Payload,
}

#[derive(Debug)]
pub enum Payload {
    /// Raw bytes of one JSONL line (without the newline) or JSON array element; may be
    /// invalid UTF-8/JSON.
    Json(Vec<u8>),
    /// A row already decoded from Parquet.
    Sample(Sample),
    /// The reader could not produce the record; the reason becomes a reject.
    Invalid(String),
}

/// Which of the supported shapes a sample had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleKind {
    /// `{"id", "image", "caption"}`
    Caption,
    /// LLaVA `{"id", "image", "conversations": [{"from", "value"}, …]}`
    Conversations,
    /// `{"messages": [{"role", "content"}, …], "images": […]}`
    Messages,
    /// `{"image"|"images", "instruction", "response"}` (optional `"system"`): one exchange.
    Instruction,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    /// A file; `resolved` is `given` joined to the image root when relative.
    File { given: String, resolved: PathBuf },
    /// Embedded bytes (Parquet), with the original path if the row had one.
    Bytes {
        data: Vec<u8>,
        given: Option<String>,
    },
}

/// A normalised sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: Option<String>,
    pub kind: SampleKind,
    /// Every field of the record except `id` and `image`/`images`, in input order
    /// (unknown fields are kept, never dropped).
    pub fields: Map<String, Value>,
    pub images: Vec<ImageRef>,
}

/// A streaming source of records. Never loads the whole input.
pub trait RecordSource: Send {
    /// Next record, `None` at the end; `Err` only for job-level I/O failures.
    fn next_record(&mut self) -> Option<Result<Record>>;
    /// Skip the first `n` records (used by `--resume`); cheaper than reading them when possible.
    /// Indices continue from where they would have been. Skipping past the end of the input
    /// is a [`PackError::Input`] (the input changed since the checkpoint).
    fn skip(&mut self, n: u64) -> Result<()>;
    /// Input files, in the order they are read.
    fn files(&self) -> &[PathBuf];
    /// Input bytes behind the records returned so far and the total, for progress/ETA
    /// (compressed bytes for `.zst`, estimated until the end of each file).
    fn progress(&self) -> (u64, Option<u64>);
    /// Physical lines (JSONL, blank ones included) or rows (Parquet) of the files finished
    /// so far, read or skipped; at the end of the input, all of them. `lines - records` is
    /// the number of blank lines.
    fn lines(&self) -> u64 {
        0
    }
}

/// Open `--input`. `image_root` overrides the default root (each file's own folder).
pub fn open(input: &str, image_root: Option<&Path>) -> Result<Box<dyn RecordSource>> {
    open_all(&[input.to_string()], image_root)
}

/// Open several `--input`s (files or globs), read one after another in the given order.
pub fn open_all(inputs: &[String], image_root: Option<&Path>) -> Result<Box<dyn RecordSource>> {
    let (files, sizes, kinds) = resolve(inputs)?;
    Ok(Box::new(MultiSource {
        files,
        sizes,
        kinds,
        image_root: image_root.map(Path::to_path_buf),
        current: None,
        next_file: 0,
        done_bytes: 0,
        done_lines: 0,
        next_index: 0,
    }))
}

/// The input files named by `inputs`, in reading order, with their sizes and kinds.
fn resolve(inputs: &[String]) -> Result<(Vec<PathBuf>, Vec<u64>, Vec<FileKind>)> {
    if inputs.is_empty() {
        return Err(PackError::input("", "no input given"));
    }
    let mut files: Vec<PathBuf> = Vec::new();
    // Canonical path → the argument that named it, to name both in the error.
    let mut named_by: std::collections::HashMap<PathBuf, &str> = Default::default();
    for input in inputs {
        for file in expand(input)? {
            let id = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if let Some(first) = named_by.insert(id, input) {
                return Err(PackError::input(
                    &file,
                    format!(
                        "is named twice (by --input {first} and --input {input}); \
                         every input file is read once"
                    ),
                ));
            }
            files.push(file);
        }
    }
    let mut sizes = Vec::with_capacity(files.len());
    let mut kinds = Vec::with_capacity(files.len());
    for file in &files {
        let meta = std::fs::metadata(file).map_err(|e| PackError::input(file, e))?;
        if meta.is_dir() {
            return Err(PackError::input(
                file,
                "is a directory; pass a file or a glob such as dir/*.parquet",
            ));
        }
        sizes.push(meta.len());
        let mut kind = FileKind::of(file)?;
        if kind != FileKind::Parquet && is_json_array(file, kind == FileKind::JsonlZstd)? {
            kind = match kind {
                FileKind::JsonlZstd => FileKind::JsonArrayZstd,
                _ => FileKind::JsonArray,
            };
        }
        kinds.push(kind);
    }
    Ok((files, sizes, kinds))
}

/// Whether a JSON file is one array (first non-blank byte `[`, after a BOM) rather than
/// JSON Lines. One whose first line is a lone `{` (a pretty-printed top-level object) is
/// refused: read as JSON Lines, each of its lines would be a "malformed JSON" reject. Only
/// the first 64 KiB are looked at.
fn is_json_array(path: &Path, zstd: bool) -> Result<bool> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| PackError::input(path, e))?;
    let mut head = Vec::with_capacity(64 << 10);
    let read = if zstd {
        // A corrupt stream is reported when the file is read; here it just is not an array.
        match zstd::stream::read::Decoder::new(file) {
            Ok(d) => d.take(64 << 10).read_to_end(&mut head).map(|_| ()),
            Err(_) => Ok(()),
        }
    } else {
        file.take(64 << 10).read_to_end(&mut head).map(|_| ())
    };
    if read.is_err() && head.is_empty() {
        return Ok(false);
    }
    let body = head.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&head);
    let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Ok(false);
    };
    if body[first] == b'[' {
        return Ok(true);
    }
    let line = body[first..]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    if line.trim_ascii() == b"{" {
        let name = shell_quote(&path.display().to_string());
        let cat = if zstd {
            format!("zstd -dc {name} | jq -c '.KEY[]'")
        } else {
            format!("jq -c '.KEY[]' {name}")
        };
        return Err(PackError::input(
            path,
            format!(
                "is one JSON object spread over several lines, not a JSON array of samples \
                 nor JSON Lines (one object per line); if the samples are a list under some \
                 key, extract them with: {cat} > corpus.jsonl"
            ),
        ));
    }
    Ok(false)
}

/// `s` as one shell word, so a suggested command can be pasted as it is.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Parse and normalise a record's JSON payload; `Err` is a reject reason.
///
/// Rules: see the `sample` submodule (documented in its source). Duplicate JSON keys: the last occurrence wins.
pub fn parse(payload: &[u8], image_root: &Path) -> std::result::Result<Sample, String> {
    sample::parse(payload, image_root)
}

/// The image root used for records of `file` (explicit root, else the file's folder).
pub fn image_root_for(file: &std::path::Path, explicit: Option<&std::path::Path>) -> PathBuf {
    match explicit {
        Some(root) => root.to_path_buf(),
        None => file
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from(".")),
    }
}

fn is_glob(input: &str) -> bool {
    input.contains(['*', '?', '['])
}

/// The input files named by `input`, sorted when it is a glob.
fn expand(input: &str) -> Result<Vec<PathBuf>> {
    if input.is_empty() {
        return Err(PackError::input(input, "empty input path"));
    }
    // A path that exists is taken literally, even if its name contains glob characters.
    if !is_glob(input) || Path::new(input).exists() {
        let path = PathBuf::from(input);
        if !path.exists() {
            return Err(PackError::input(path, "no such file"));
        }
        return Ok(vec![path]);
    }
    let paths = glob::glob(input).map_err(|e| PackError::input(input, format!("bad glob: {e}")))?;
    let mut files = Vec::new();
    for entry in paths {
        files.push(entry.map_err(|e| PackError::input(e.path(), e.error()))?);
    }
    if files.is_empty() {
        return Err(PackError::input(input, "glob matched no files"));
    }
    files.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Jsonl,
    JsonlZstd,
    /// Chosen by [`is_json_array`] after [`FileKind::of`].
    JsonArray,
    JsonArrayZstd,
    Parquet,
}

impl FileKind {
    fn of(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".parquet") || name.ends_with(".pq") {
            return Ok(FileKind::Parquet);
        }
        if name.ends_with(".zst") || name.ends_with(".zstd") {
            return Ok(FileKind::JsonlZstd);
        }
        if [".jsonl", ".json", ".ndjson"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            return Ok(FileKind::Jsonl);
        }
        let mut magic = [0u8; 4];
        let mut file = std::fs::File::open(path).map_err(|e| PackError::input(path, e))?;
        let n =
            std::io::Read::read(&mut file, &mut magic).map_err(|e| PackError::input(path, e))?;
        Ok(match &magic[..n] {
            b"PAR1" => FileKind::Parquet,
            [0x28, 0xb5, 0x2f, 0xfd] => FileKind::JsonlZstd,
            _ => FileKind::Jsonl,
        })
    }
}

enum FileReader {
    Jsonl(jsonl::JsonlReader),
    JsonArray(json_array::JsonArrayReader),
    Parquet(parquet::ParquetReader),
}

impl FileReader {
    fn open(path: &Path, kind: FileKind, image_root: Option<&Path>) -> Result<Self> {
        match kind {
            FileKind::Jsonl => jsonl::JsonlReader::open(path, false).map(FileReader::Jsonl),
            FileKind::JsonlZstd => jsonl::JsonlReader::open(path, true).map(FileReader::Jsonl),
            FileKind::JsonArray => {
                json_array::JsonArrayReader::open(path, false).map(FileReader::JsonArray)
            }
            FileKind::JsonArrayZstd => {
                json_array::JsonArrayReader::open(path, true).map(FileReader::JsonArray)
            }
            FileKind::Parquet => {
                let root = image_root_for(path, image_root);
                parquet::ParquetReader::open(path, root).map(FileReader::Parquet)
            }
        }
    }

    /// Next record as `(line, offset, payload)` (see [`Record`]).
    fn next(&mut self) -> Option<Result<(u64, Option<u64>, Payload)>> {
        match self {
            FileReader::Jsonl(r) => r.next_line().map(|r| r.map(|(l, p)| (l, None, p))),
            FileReader::JsonArray(r) => r
                .next_element()
                .map(|r| r.map(|e| (e.index, Some(e.offset), e.payload))),
            FileReader::Parquet(r) => r.next_row().map(|r| r.map(|(l, p)| (l, None, p))),
        }
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        match self {
            FileReader::Jsonl(r) => r.skip(n),
            FileReader::JsonArray(r) => r.skip(n),
            FileReader::Parquet(r) => r.skip(n),
        }
    }
    fn consumed(&self) -> u64 {
        match self {
            FileReader::Jsonl(r) => r.consumed(),
            FileReader::JsonArray(r) => r.consumed(),
            FileReader::Parquet(r) => r.consumed(),
        }
    }
    /// Lines (JSONL, blank ones included), elements (arrays) or rows (Parquet) so far.
    fn lines(&self) -> u64 {
        match self {
            FileReader::Jsonl(r) => r.lines(),
            FileReader::JsonArray(r) => r.records(),
            FileReader::Parquet(r) => r.rows_read(),
        }
    }
}

/// Reads the matched files one after another, opening each only when it is reached.
struct MultiSource {
    files: Vec<PathBuf>,
    sizes: Vec<u64>,
    kinds: Vec<FileKind>,
    image_root: Option<PathBuf>,
    /// The open file: its index and reader.
    current: Option<(usize, FileReader)>,
    next_file: usize,
    /// Sizes of the files already finished.
    done_bytes: u64,
    /// Lines (or rows) of the files already finished.
    done_lines: u64,
    next_index: u64,
}

impl MultiSource {
    /// The open reader, opening the next file if needed; `None` at the end of the input.
    fn reader(&mut self) -> Option<Result<(usize, &mut FileReader)>> {
        if self.current.is_none() {
            let i = self.next_file;
            let path = self.files.get(i)?;
            self.next_file += 1;
            let opened = FileReader::open(path, self.kinds[i], self.image_root.as_deref());
            match opened {
                Ok(reader) => self.current = Some((i, reader)),
                Err(e) => {
                    // A file that cannot be opened ends the stream with its error.
                    self.next_file = self.files.len();
                    return Some(Err(e));
                }
            }
        }
        self.current.as_mut().map(|(i, r)| Ok((*i, r)))
    }

    fn finish_current(&mut self) {
        if let Some((i, r)) = self.current.take() {
            self.done_bytes += self.sizes[i];
            self.done_lines += r.lines();
        }
    }
}

impl RecordSource for MultiSource {
    fn next_record(&mut self) -> Option<Result<Record>> {
        loop {
            let (file, reader) = match self.reader()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            match reader.next() {
                Some(Ok((line, offset, payload))) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    return Some(Ok(Record {
                        index,
                        line,
                        offset,
                        file,
                        payload,
                    }));
                }
                Some(Err(e)) => {
                    self.finish_current();
                    self.next_file = self.files.len();
                    return Some(Err(e));
                }
                None => self.finish_current(),
            }
        }
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let mut left = n;
        while left > 0 {
            let Some(reader) = self.reader() else {
                let have = n - left;
                let input = self.files.first().cloned().unwrap_or_default();
                return Err(PackError::input(
                    input,
                    format!("cannot skip {n} records: the input has only {have} after the start"),
                ));
            };
            let (_, reader) = reader?;
            let skipped = reader.skip(left)?;
            left -= skipped;
            self.next_index += skipped;
            if left > 0 {
                self.finish_current();
            }
        }
        Ok(())
    }

    fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn progress(&self) -> (u64, Option<u64>) {
        let current = match &self.current {
            Some((i, r)) => r.consumed().min(self.sizes[*i]),
            None => 0,
        };
        (self.done_bytes + current, Some(self.sizes.iter().sum()))
    }

    fn lines(&self) -> u64 {
        self.done_lines
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn suggested_commands_quote_paths_for_the_shell() {
        assert_eq!(shell_quote("/data/in.json"), "/data/in.json");
        assert_eq!(shell_quote("my data/in.json"), "'my data/in.json'");
        assert_eq!(shell_quote("it's.json"), r"'it'\''s.json'");
    }
}
