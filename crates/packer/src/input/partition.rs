//! Input partitions for the distributed build: a file × byte range (plain JSON Lines), a
//! file × row range (Parquet), or a whole file (JSON arrays and zstd streams, which cannot
//! be entered in the middle). The partitioning is a pure function of the input files and the
//! target size, so every node, and a resumed driver, computes the same partitions.
//!
//! A partition's records carry partition-local indices (0-based) and, for a byte range,
//! line numbers counted from 1 in the range; the driver turns them into the input's global
//! index and line from the record and line counts of the partitions before.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{jsonl, parquet, resolve, FileKind, FileReader, Record};
use crate::error::{PackError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Lines starting in bytes `[start, end)`.
    Bytes,
    /// Rows `[start, end)`.
    Rows,
    /// The whole file.
    Whole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Index into the input files.
    pub file: usize,
    pub unit: Unit,
    pub start: u64,
    pub end: u64,
}

impl Partition {
    /// Whether record lines count from 1 in the partition (add the lines of the file's
    /// partitions before to get the file's line numbers).
    pub fn relative_lines(&self) -> bool {
        self.unit == Unit::Bytes
    }
}

/// The input files named by `inputs` and their partitions of about `target_bytes` each.
pub fn partitions(inputs: &[String], target_bytes: u64) -> Result<(Vec<PathBuf>, Vec<Partition>)> {
    let target = target_bytes.max(1);
    let (files, sizes, kinds) = resolve(inputs)?;
    let mut parts = Vec::new();
    for (file, (path, (&size, kind))) in files.iter().zip(sizes.iter().zip(&kinds)).enumerate() {
        let mut ranges = |unit, total: u64, step: u64| {
            let step = step.max(1);
            let mut start = 0;
            loop {
                let end = (start + step).min(total);
                parts.push(Partition {
                    file,
                    unit,
                    start,
                    end,
                });
                if end >= total {
                    break;
                }
                start = end;
            }
        };
        match kind {
            FileKind::Jsonl => ranges(Unit::Bytes, size, target),
            FileKind::Parquet => {
                let rows = parquet::ParquetReader::open(path, PathBuf::new())?.total_rows();
                // Rows per partition from the file's average row size.
                let step = (rows as u128 * target as u128).div_ceil(size.max(1) as u128);
                ranges(Unit::Rows, rows, step.min(u64::MAX as u128) as u64)
            }
            _ => parts.push(Partition {
                file,
                unit: Unit::Whole,
                start: 0,
                end: u64::MAX,
            }),
        }
    }
    Ok((files, parts))
}

/// Reads one partition's records.
pub struct PartReader {
    reader: FileReader,
    part: Partition,
    next_index: u64,
}

impl PartReader {
    /// `files` are the input files as [`partitions`] returned them.
    pub fn open(files: &[PathBuf], part: &Partition, image_root: Option<&Path>) -> Result<Self> {
        let path = files
            .get(part.file)
            .ok_or_else(|| PackError::input("", format!("no input file {}", part.file)))?;
        let kind = FileKind::of(path)?;
        let reader = match part.unit {
            Unit::Bytes => {
                FileReader::Jsonl(jsonl::JsonlReader::open_range(path, part.start, part.end)?)
            }
            Unit::Rows | Unit::Whole => {
                let kind = match kind {
                    FileKind::Jsonl | FileKind::JsonlZstd
                        if super::is_json_array(path, kind == FileKind::JsonlZstd)? =>
                    {
                        match kind {
                            FileKind::JsonlZstd => FileKind::JsonArrayZstd,
                            _ => FileKind::JsonArray,
                        }
                    }
                    k => k,
                };
                let mut r = FileReader::open(path, kind, image_root)?;
                if part.unit == Unit::Rows && part.start > 0 {
                    r.skip(part.start)?;
                }
                r
            }
        };
        Ok(PartReader {
            reader,
            part: part.clone(),
            next_index: 0,
        })
    }

    /// Next record: its index counts from 0 in the partition, `file` is the partition's.
    pub fn next_record(&mut self) -> Option<Result<Record>> {
        if self.part.unit == Unit::Rows && self.part.start + self.next_index >= self.part.end {
            return None;
        }
        let (line, offset, payload) = match self.reader.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let index = self.next_index;
        self.next_index += 1;
        Some(Ok(Record {
            index,
            line,
            offset,
            file: self.part.file,
            payload,
        }))
    }

    /// Skip the next `n` records (fewer only at the end of the partition).
    pub fn skip(&mut self, n: u64) -> Result<u64> {
        let n = match self.part.unit {
            Unit::Rows => n.min(self.part.end - (self.part.start + self.next_index)),
            _ => n,
        };
        let skipped = self.reader.skip(n)?;
        self.next_index += skipped;
        Ok(skipped)
    }

    /// Physical lines (blank ones included), elements or rows read or skipped so far; at
    /// the end of the partition, all of its own.
    pub fn lines(&self) -> u64 {
        match self.part.unit {
            Unit::Rows => self.reader.lines() - self.part.start,
            _ => self.reader.lines(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Payload;

    /// (line in the file, payload text) of every record, through partitions of `target` bytes.
    fn read_all(path: &Path, target: u64) -> (Vec<(u64, String)>, u64) {
        let (files, parts) = partitions(&[path.display().to_string()], target).unwrap();
        let (mut out, mut lines) = (Vec::new(), 0);
        for p in &parts {
            let mut r = PartReader::open(&files, p, None).unwrap();
            while let Some(rec) = r.next_record() {
                let rec = rec.unwrap();
                let text = match rec.payload {
                    Payload::Json(b) => String::from_utf8(b).unwrap(),
                    other => format!("{other:?}"),
                };
                out.push((lines + rec.line, text));
            }
            lines += r.lines();
        }
        (out, lines)
    }

    #[test]
    fn byte_ranges_read_every_line_once_with_its_file_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let body = "{\"a\":1}\n\n{\"bb\":22}\r\n  \n{\"c\":3}\n{\"dddd\":4444}\n{\"e\":5}";
        std::fs::write(&path, body).unwrap();
        let (whole, lines) = read_all(&path, 1 << 20);
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[1], (3, "{\"bb\":22}".to_string()));
        assert_eq!(lines, 7);
        for target in 1..=body.len() as u64 + 1 {
            assert_eq!(
                read_all(&path, target),
                (whole.clone(), lines),
                "target {target}"
            );
        }
    }
}
