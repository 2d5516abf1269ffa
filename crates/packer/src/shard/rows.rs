//! A shard's energon index rows, recorded while the shard is written, so the build can make
//! `.nv-meta/index.sqlite` without walking every tar again at the end of the job (a walk
//! that, for a corpus no longer in the page cache, reads from disk).
//!
//! Encoding (little endian): magic `LLVROWS1`, then per sample `u32` key length, key, `u64`
//! header offset, `u64` size (headers and padding included), `u32` part count, and per part
//! `u32` name length, name, `u64` content offset, `u64` content size.

use std::io;

const MAGIC: &[u8; 8] = b"LLVROWS1";

/// The rows of one shard: its samples in order, each with its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRows {
    bytes: Vec<u8>,
    samples: u64,
}

/// One sample as the index wants it.
pub(crate) struct SampleRows<'a> {
    pub key: &'a str,
    pub offset: u64,
    pub size: u64,
    /// (part name, content offset, content size), in member order.
    pub parts: Vec<(&'a str, u64, u64)>,
}

impl Default for ShardRows {
    fn default() -> Self {
        ShardRows {
            bytes: MAGIC.to_vec(),
            samples: 0,
        }
    }
}

impl ShardRows {
    /// Record one sample written at `offset` taking `size` bytes; `parts` as in [`SampleRows`].
    pub(crate) fn push(&mut self, key: &str, offset: u64, size: u64, parts: &[(&str, u64, u64)]) {
        let b = &mut self.bytes;
        put_str(b, key);
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        for (name, off, len) in parts {
            put_str(b, name);
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
        }
        self.samples += 1;
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The encoded rows (what goes to disk).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Parse rows written by [`ShardRows::as_bytes`]; `InvalidData` if they are damaged.
    pub fn from_bytes(bytes: Vec<u8>) -> io::Result<Self> {
        let mut rows = ShardRows { bytes, samples: 0 };
        let mut n = 0;
        rows.for_each(|_| {
            n += 1;
            Ok(())
        })?;
        rows.samples = n;
        Ok(rows)
    }

    /// Call `f` on every sample, in order.
    pub(crate) fn for_each(
        &self,
        mut f: impl FnMut(SampleRows<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut r = Reader(
            self.bytes
                .strip_prefix(MAGIC)
                .ok_or_else(|| bad("no magic"))?,
        );
        while !r.0.is_empty() {
            let key = r.str()?;
            let (offset, size) = (r.u64()?, r.u64()?);
            let n = r.u32()? as usize;
            let mut parts = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                parts.push((r.str()?, r.u64()?, r.u64()?));
            }
            f(SampleRows {
                key,
                offset,
                size,
                parts,
            })?;
        }
        Ok(())
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("shard rows: {what}"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn str(&mut self) -> io::Result<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| bad("name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_rows() -> ShardRows {
        let mut rows = ShardRows::default();
        rows.push("k0", 0, 2560, &[("jpg", 512, 700), ("json", 2048, 7)]);
        rows.push("k1", 2560, 1024, &[("json", 3072, 2)]);
        rows
    }

    #[test]
    fn round_trip() {
        let rows = sample_rows();
        assert_eq!(rows.samples(), 2);
        let back = ShardRows::from_bytes(rows.as_bytes().to_vec()).unwrap();
        assert_eq!(back, rows);
        let mut seen = Vec::new();
        back.for_each(|s| {
            seen.push((s.key.to_string(), s.offset, s.size, s.parts.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [("k0".into(), 0, 2560, 2), ("k1".to_string(), 2560, 1024, 1)]
        );
        assert_eq!(ShardRows::from_bytes(MAGIC.to_vec()).unwrap().samples(), 0);
    }

    #[test]
    fn damage_is_invalid_data() {
        let good = sample_rows().as_bytes().to_vec();
        let mut first = ShardRows::default();
        first.push("k0", 0, 2560, &[("jpg", 512, 700), ("json", 2048, 7)]);
        for cut in 0..good.len() {
            if cut == MAGIC.len() || cut == first.as_bytes().len() {
                continue; // cut between samples: a shorter valid row set
            }
            let e = ShardRows::from_bytes(good[..cut].to_vec());
            assert_eq!(
                e.unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "cut {cut}"
            );
        }
        let mut bad_utf8 = good.clone();
        bad_utf8[MAGIC.len() + 4] = 0xFF;
        assert!(ShardRows::from_bytes(bad_utf8).is_err());
    }
}
