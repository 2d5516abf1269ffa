//! Compact byte encodings of what pack's phases hand each other across processes (a Ray scan
//! task's [`ShardScan`], a write task's [`CopyWork`]): little-endian integers and
//! length-prefixed UTF-8, a magic + version first. Metadata only — never image bytes.

use std::io;
use std::path::PathBuf;

use super::scan::{ImageRef, SampleMeta, ShardScan};
use super::write::CopyWork;

const SCAN_MAGIC: &[u8; 4] = b"LPS1";
const WORK_MAGIC: &[u8; 4] = b"LPW1";

// Also used by dedup's shard rows (`dedup::wire`): one encoder for every cross-process format.
#[derive(Default)]
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
}

pub(crate) struct Dec<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) what: &'static str,
}

impl<'a> Dec<'a> {
    pub(crate) fn bad(&self, msg: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {msg}", self.what))
    }
    fn take(&mut self, n: u64) -> io::Result<&'a [u8]> {
        if n > self.b.len() as u64 {
            return Err(self.bad("truncated"));
        }
        let (h, t) = self.b.split_at(n as usize);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub(crate) fn str(&mut self) -> io::Result<String> {
        let n = self.u64()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| self.bad("string is not UTF-8"))
    }
    pub(crate) fn magic(&mut self, m: &[u8; 4]) -> io::Result<()> {
        if self.take(4)? != m {
            return Err(self.bad("wrong format (different llava-ov15 versions?)"));
        }
        Ok(())
    }
    pub(crate) fn end(&self) -> io::Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

pub fn encode_scan(s: &ShardScan) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(SCAN_MAGIC);
    e.str(&s.name);
    e.u64(s.bytes);
    e.u64(s.samples.len() as u64);
    for m in &s.samples {
        e.str(&m.key);
        e.u64(m.json_off);
        e.u64(m.json_size);
        e.u32(m.length);
        match &m.error {
            Some(x) => {
                e.u32(1);
                e.str(x);
            }
            None => e.u32(0),
        }
        e.u64(m.images.len() as u64);
        for i in &m.images {
            e.u64(i.data_off);
            e.u64(i.size);
            e.str(&i.ext);
            e.u32(i.width);
            e.u32(i.height);
            e.u32(i.tokens);
        }
    }
    e.0
}

pub fn decode_scan(b: &[u8]) -> io::Result<ShardScan> {
    let mut d = Dec {
        b,
        what: "shard scan",
    };
    d.magic(SCAN_MAGIC)?;
    let name = d.str()?;
    let bytes = d.u64()?;
    let n = d.u64()?;
    // Capacity from the data, not the (untrusted) count: every sample takes ≥ 40 bytes.
    let mut samples = Vec::with_capacity((n as usize).min(b.len() / 40));
    for _ in 0..n {
        let key = d.str()?;
        let json_off = d.u64()?;
        let json_size = d.u64()?;
        let length = d.u32()?;
        let error = match d.u32()? {
            0 => None,
            _ => Some(d.str()?),
        };
        let ni = d.u64()?;
        let mut images = Vec::new();
        for _ in 0..ni {
            images.push(ImageRef {
                data_off: d.u64()?,
                size: d.u64()?,
                ext: d.str()?,
                width: d.u32()?,
                height: d.u32()?,
                tokens: d.u32()?,
            });
        }
        samples.push(SampleMeta {
            key,
            json_off,
            json_size,
            length,
            images,
            error,
        });
    }
    d.end()?;
    Ok(ShardScan {
        name,
        bytes,
        samples,
    })
}

pub fn encode_work(w: &CopyWork) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(WORK_MAGIC);
    e.str(&w.source.to_string_lossy());
    e.str(&w.output.to_string_lossy());
    e.u64(w.samples);
    e.u64(w.shards.len() as u64);
    for s in &w.shards {
        e.str(s);
    }
    e.u64(w.ranges.len() as u64);
    for &(sh, src, len, dst) in &w.ranges {
        e.u32(sh);
        e.u64(src);
        e.u64(len);
        e.u64(dst);
    }
    e.0
}

pub fn decode_work(b: &[u8]) -> io::Result<CopyWork> {
    let mut d = Dec {
        b,
        what: "copy work",
    };
    d.magic(WORK_MAGIC)?;
    let source = PathBuf::from(d.str()?);
    let output = PathBuf::from(d.str()?);
    let samples = d.u64()?;
    let mut shards = Vec::new();
    for _ in 0..d.u64()? {
        shards.push(d.str()?);
    }
    let n = d.u64()?;
    let mut ranges = Vec::with_capacity((n as usize).min(b.len() / 28));
    for _ in 0..n {
        let r = (d.u32()?, d.u64()?, d.u64()?, d.u64()?);
        if r.0 as usize >= shards.len() {
            return Err(d.bad("range names an unknown shard"));
        }
        ranges.push(r);
    }
    d.end()?;
    Ok(CopyWork {
        source,
        output,
        samples,
        shards,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_round_trips_and_rejects_truncation() {
        let s = ShardScan {
            name: "shard-000000.tar".into(),
            bytes: 12345,
            samples: vec![
                SampleMeta {
                    key: "a".into(),
                    json_off: 512,
                    json_size: 40,
                    length: 99,
                    images: vec![ImageRef {
                        data_off: 1536,
                        size: 700,
                        ext: "jpg".into(),
                        width: 64,
                        height: 48,
                        tokens: 12,
                    }],
                    error: None,
                },
                SampleMeta {
                    key: "b".into(),
                    json_off: 0,
                    json_size: 0,
                    length: 0,
                    images: vec![],
                    error: Some("no json member".into()),
                },
            ],
        };
        let b = encode_scan(&s);
        let back = decode_scan(&b).unwrap();
        assert_eq!(encode_scan(&back), b);
        assert_eq!(back.samples[1].error.as_deref(), Some("no json member"));
        assert!(decode_scan(&b[..b.len() - 1]).is_err());
        assert!(decode_work(&b).is_err());
    }

    #[test]
    fn work_round_trips() {
        let w = CopyWork {
            source: "/in/shard-000000.tar".into(),
            output: "/out".into(),
            samples: 1,
            shards: vec!["pack-000000.tar".into()],
            ranges: vec![(0, 1536, 700, 1024), (0, 512, 40, 3000)],
        };
        let b = encode_work(&w);
        assert_eq!(encode_work(&decode_work(&b).unwrap()), b);
        let mut bad = w.clone();
        bad.ranges.push((3, 0, 0, 0));
        assert!(decode_work(&encode_work(&bad)).is_err());
    }
}
