//! Pass 1: per-sample metadata of source shards without reading image bytes.
//!
//! Each shard's tar headers are walked with positioned reads (one 512-byte read per member,
//! seeking past the data); only the `{key}.json` member's data is read. The result per sample
//! is compact: member offsets/sizes, the json location and the token length.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bucketer::LengthCounter;
use serde_json::Value;

/// One image member of a source sample.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// Offset of the member's data in the source shard.
    pub data_off: u64,
    pub size: u64,
    /// Extension of the member name (`jpg`, `png`, …).
    pub ext: String,
    pub width: u32,
    pub height: u32,
    /// LLM tokens (after smart_resize).
    pub tokens: u32,
}

/// One source sample.
#[derive(Debug, Clone)]
pub struct SampleMeta {
    pub key: String,
    pub json_off: u64,
    pub json_size: u64,
    /// Total sequence length in tokens.
    pub length: u32,
    pub images: Vec<ImageRef>,
    /// Why the sample cannot be packed (bad json, template error, missing member …).
    pub error: Option<String>,
}

impl SampleMeta {
    pub fn image_tokens(&self) -> u32 {
        self.images.iter().map(|i| i.tokens).sum()
    }
}

/// A scanned source shard.
#[derive(Debug, Clone)]
pub struct ShardScan {
    pub name: String,
    pub bytes: u64,
    pub samples: Vec<SampleMeta>,
}

fn bad(path: &Path, off: u64, msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} at byte {off}: {msg}", path.display()),
    )
}

/// A regular-file member: name, data offset and size.
struct Entry {
    name: String,
    data_off: u64,
    size: u64,
}

/// All regular-file members of a tar, in order (ustar names incl. `prefix`). Pax/GNU long-name
/// records are rejected: `llava-pack build` never writes them.
fn tar_entries(file: &File, path: &Path, len: u64) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut off = 0u64;
    let mut h = [0u8; 512];
    while off + 512 <= len {
        file.read_exact_at(&mut h, off)?;
        if h.iter().all(|&b| b == 0) {
            break; // end-of-archive
        }
        let size = crate::shard::header_number(&h[124..136])
            .ok_or_else(|| bad(path, off, "bad size field"))?;
        let data_off = off + 512;
        let next = data_off + size.div_ceil(512) * 512;
        if data_off + size > len {
            return Err(bad(
                path,
                off,
                "member runs past the end of the file (truncated shard?)",
            ));
        }
        match h[156] {
            b'0' | 0 | b'7' => {
                let mut name = String::from_utf8(crate::shard::header_str(&h[0..100]).to_vec())
                    .map_err(|_| bad(path, off, "member name is not UTF-8"))?;
                if &h[257..262] == b"ustar" && h[345] != 0 {
                    let prefix = String::from_utf8_lossy(crate::shard::header_str(&h[345..500]))
                        .into_owned();
                    name = format!("{prefix}/{name}");
                }
                out.push(Entry {
                    name,
                    data_off,
                    size,
                });
            }
            b'x' | b'g' | b'L' | b'K' => {
                return Err(bad(path, off, "pax/GNU extended headers are not supported"));
            }
            _ => {} // directories, links: not sample members (webdataset skips them too)
        }
        off = next;
    }
    Ok(out)
}

/// webdataset key/suffix split: key = basename up to its first `.`.
fn split(name: &str) -> Option<(&str, &str)> {
    let base = name.rfind('/').map_or(0, |i| i + 1);
    let dot = base + name[base..].find('.')?;
    (dot > base).then(|| (&name[..dot], &name[dot + 1..]))
}

/// Scan one shard: group members by key, read and measure each `{key}.json`.
pub fn scan_shard(path: &Path, counter: &LengthCounter) -> io::Result<ShardScan> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let entries = tar_entries(&file, path, len)?;
    let mut samples = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let Some((key, _)) = split(&entries[i].name) else {
            i += 1;
            continue;
        };
        let key = key.to_string();
        let mut j = i;
        while j < entries.len() && split(&entries[j].name).is_some_and(|(k, _)| k == key) {
            j += 1;
        }
        samples.push(measure(&file, &key, &entries[i..j], counter)?);
        i = j;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ShardScan {
        name,
        bytes: len,
        samples,
    })
}

fn measure(
    file: &File,
    key: &str,
    members: &[Entry],
    counter: &LengthCounter,
) -> io::Result<SampleMeta> {
    let mut meta = SampleMeta {
        key: key.to_string(),
        json_off: 0,
        json_size: 0,
        length: 0,
        images: Vec::new(),
        error: None,
    };
    let Some(json) = members
        .iter()
        .find(|m| split(&m.name).is_some_and(|(_, s)| s == "json"))
    else {
        meta.error = Some("no json member".into());
        return Ok(meta);
    };
    meta.json_off = json.data_off;
    meta.json_size = json.size;
    let mut buf = vec![0u8; json.size as usize];
    file.read_exact_at(&mut buf, json.data_off)?;
    let doc: Value = match serde_json::from_slice(&buf) {
        Ok(v) => v,
        Err(e) => {
            meta.error = Some(format!("invalid json: {e}"));
            return Ok(meta);
        }
    };
    let length = match counter.sample_length(&doc) {
        Ok(l) => l,
        Err(e) => {
            meta.error = Some(format!("length: {e}"));
            return Ok(meta);
        }
    };
    meta.length = length.total;
    let listed = doc
        .get("images")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let non_json = members
        .iter()
        .filter(|m| !m.name.ends_with(".json"))
        .count();
    if non_json != listed.len() {
        meta.error = Some(format!(
            "{} image entries in json but {non_json} other members",
            listed.len()
        ));
        return Ok(meta);
    }
    for (idx, im) in listed.iter().enumerate() {
        let member = im.get("member").and_then(Value::as_str).unwrap_or("");
        // `member` is the member's suffix as `llava-pack build` writes it (`jpg`, `img1.png`);
        // a full member name (`{key}.jpg`) is accepted too.
        let found = members.iter().find(|m| {
            m.name.rsplit('/').next() == Some(member)
                || split(&m.name).is_some_and(|(_, s)| s == member)
        });
        let Some(m) = found else {
            meta.error = Some(format!("image member {member:?} not in the shard"));
            return Ok(meta);
        };
        let ext = member.rsplit('.').next().unwrap_or("bin").to_string();
        let dim = |f: &str| im.get(f).and_then(Value::as_u64).unwrap_or(0) as u32;
        meta.images.push(ImageRef {
            data_off: m.data_off,
            size: m.size,
            ext,
            width: dim("width"),
            height: dim("height"),
            tokens: length.image_tokens[idx],
        });
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_fields() {
        assert_eq!(crate::shard::header_number(b"00000001750\0"), Some(1000));
        assert_eq!(crate::shard::header_number(b"           \0"), Some(0));
        let mut b = [0u8; 12];
        b[0] = 0x80;
        b[11] = 5;
        assert_eq!(crate::shard::header_number(&b), Some(5));
        assert_eq!(crate::shard::header_number(b"zz\0\0\0\0\0\0\0\0\0\0"), None);
    }

    #[test]
    fn webdataset_split() {
        assert_eq!(split("a.img0.jpg"), Some(("a", "img0.jpg")));
        assert_eq!(split("d/a.json"), Some(("d/a", "json")));
        assert_eq!(split("noext"), None);
    }
}
