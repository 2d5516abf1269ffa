//! Parsing one sample's ustar headers straight from the mapped shard.

use super::ReadError;
use crate::shard::{check_safe_name, split_member_name};

/// A member of a sample: its suffix (`jpg`, `img1.png`, `json`) and data range in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    pub suffix: String,
    pub start: usize,
    pub len: usize,
}

/// Parse the members in `start..end` of `data` (one sample, per the index). The members must
/// tile the range exactly and share one key; anything else means a stale or corrupt index.
pub fn parse_sample(
    data: &[u8],
    shard: &str,
    start: u64,
    end: u64,
) -> Result<(String, Vec<MemberRef>), ReadError> {
    let header_err = |offset: usize, message: String| ReadError::BadHeader {
        shard: shard.to_string(),
        offset: offset as u64,
        message,
    };
    let (mut pos, end) = (start as usize, end as usize);
    let mut key: Option<String> = None;
    let mut members = Vec::new();
    while pos < end {
        let h = data
            .get(pos..pos + 512)
            .ok_or_else(|| ReadError::Truncated {
                shard: shard.to_string(),
                offset: pos as u64,
                message: "header runs past the end of the file".into(),
            })?;
        if h.iter().all(|&b| b == 0) {
            return Err(ReadError::Index {
                shard: shard.to_string(),
                offset: pos as u64,
                message: "end-of-archive block inside a sample (stale index?)".into(),
            });
        }
        let stored = crate::shard::header_number(&h[148..156])
            .ok_or_else(|| header_err(pos, "unreadable checksum field".into()))?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        if stored != sum {
            return Err(header_err(
                pos,
                format!("checksum {stored} != computed {sum} (not a header: stale index?)"),
            ));
        }
        if &h[257..262] != b"ustar" {
            return Err(header_err(pos, "not a ustar header".into()));
        }
        let size = crate::shard::header_number(&h[124..136])
            .ok_or_else(|| header_err(pos, "unreadable size field".into()))?
            as usize;
        let mut name = crate::shard::header_str(&h[0..100]).to_vec();
        let prefix = crate::shard::header_str(&h[345..500]);
        if !prefix.is_empty() {
            name = [prefix, b"/", &name].concat();
        }
        let name = String::from_utf8(name)
            .map_err(|_| header_err(pos, "member name is not UTF-8".into()))?;
        if check_safe_name(&name).is_err() {
            return Err(ReadError::UnsafeName {
                shard: shard.to_string(),
                offset: pos as u64,
                name,
            });
        }
        let data_start = pos + 512;
        let next = data_start + size.div_ceil(512) * 512;
        if next > end {
            let (kind, limit) = if next > data.len() {
                ("file", data.len())
            } else {
                ("sample", end)
            };
            let message =
                format!("member {name:?} of {size} bytes runs past the {kind} end at {limit}");
            return Err(if next > data.len() {
                ReadError::Truncated {
                    shard: shard.to_string(),
                    offset: pos as u64,
                    message,
                }
            } else {
                ReadError::Index {
                    shard: shard.to_string(),
                    offset: pos as u64,
                    message,
                }
            });
        }
        match h[156] {
            b'0' | 0 => {}
            // Directories and other non-regular entries carry no sample data (webdataset skips
            // them too); pax/GNU long-name records would rename the next member: refuse.
            b'5' => {
                pos = next;
                continue;
            }
            t => {
                return Err(header_err(
                    pos,
                    format!("unsupported entry type {:?}", t as char),
                ))
            }
        }
        let (k, suffix) = split_member_name(&name)
            .ok_or_else(|| header_err(pos, format!("member {name:?} has no key.suffix form")))?;
        match &key {
            None => key = Some(k.to_string()),
            Some(prev) if prev != k => {
                return Err(ReadError::Index {
                    shard: shard.to_string(),
                    offset: pos as u64,
                    message: format!(
                        "member {name:?} belongs to another sample than {prev:?} (stale index?)"
                    ),
                })
            }
            _ => {}
        }
        members.push(MemberRef {
            suffix: suffix.to_string(),
            start: data_start,
            len: size,
        });
        pos = next;
    }
    let key = key.ok_or_else(|| header_err(start as usize, "sample has no members".into()))?;
    Ok((key, members))
}
