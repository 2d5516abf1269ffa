//! The rows of a group of shards as a Ray read task returns them (see [`super::read`]): the
//! pack wire's little-endian integers and length-prefixed keys, a magic + version first.
//! Per image a flags byte says which hashes follow, so a sample costs its key plus 17–25
//! bytes per image — the bytes the driver would have read from the jsons, minus the json.

use std::io;

use super::corpus::{ImageRow, ShardRows};
use crate::pack::wire::{Dec, Enc};

const ROWS_MAGIC: &[u8; 4] = b"LDR1";
const HAS_PHASH: u8 = 1;
const HAS_DHASH: u8 = 2;

/// Encode the rows of consecutive shards (in shard order).
pub fn encode_rows(shards: &[ShardRows]) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(ROWS_MAGIC);
    e.u64(shards.len() as u64);
    for rows in shards {
        e.u64(rows.len() as u64);
        for (key, images) in rows {
            e.str(key);
            e.u32(images.len() as u32);
            for &(phash, pixels, dhash) in images {
                let flags =
                    u8::from(phash.is_some()) * HAS_PHASH + u8::from(dhash.is_some()) * HAS_DHASH;
                e.u8(flags);
                if let Some(h) = phash {
                    e.u64(h);
                }
                e.u64(pixels);
                if let Some(h) = dhash {
                    e.u64(h);
                }
            }
        }
    }
    e.0
}

/// Decode [`encode_rows`]'s bytes; a truncated, foreign or trailing-garbage buffer is an
/// `InvalidData` error, never a panic or a huge allocation.
pub fn decode_rows(b: &[u8]) -> io::Result<Vec<ShardRows>> {
    let mut d = Dec {
        b,
        what: "dedup shard rows",
    };
    d.magic(ROWS_MAGIC)?;
    let n_shards = d.u64()?;
    // Capacities from the data, not the (untrusted) counts: a shard takes ≥ 8 bytes, a
    // sample ≥ 12, an image ≥ 9.
    let mut shards = Vec::with_capacity((n_shards as usize).min(b.len() / 8));
    for _ in 0..n_shards {
        let n = d.u64()?;
        let mut rows = Vec::with_capacity((n as usize).min(d.b.len() / 12));
        for _ in 0..n {
            let key = d.str()?;
            let ni = d.u32()?;
            let mut images: Vec<ImageRow> = Vec::with_capacity((ni as usize).min(d.b.len() / 9));
            for _ in 0..ni {
                let flags = d.u8()?;
                if flags & !(HAS_PHASH | HAS_DHASH) != 0 {
                    return Err(d.bad(&format!("unknown image flags {flags:#x}")));
                }
                let phash = if flags & HAS_PHASH != 0 {
                    Some(d.u64()?)
                } else {
                    None
                };
                let pixels = d.u64()?;
                let dhash = if flags & HAS_DHASH != 0 {
                    Some(d.u64()?)
                } else {
                    None
                };
                images.push((phash, pixels, dhash));
            }
            rows.push((key, images));
        }
        shards.push(rows);
    }
    d.end()?;
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ShardRows> {
        vec![
            vec![
                ("a/0".into(), vec![(Some(0xdead_beef), 640 * 480, None)]),
                // Multi-image: a null phash, a dhash, extreme values.
                (
                    "a/1 ünïcode".into(),
                    vec![
                        (None, 0, None),
                        (Some(u64::MAX), u64::MAX, Some(0)),
                        (Some(0), 1, Some(u64::MAX)),
                    ],
                ),
                ("text-only".into(), vec![]),
            ],
            vec![], // an empty shard keeps its place
            vec![("b".into(), vec![(None, 7, Some(42))])],
        ]
    }

    #[test]
    fn rows_round_trip() {
        let rows = sample();
        let b = encode_rows(&rows);
        assert_eq!(decode_rows(&b).unwrap(), rows);
        assert_eq!(
            decode_rows(&encode_rows(&[])).unwrap(),
            Vec::<ShardRows>::new()
        );
    }

    #[test]
    fn rows_are_compact() {
        // key length (8) + key + image count (4) + flags (1) + phash (8) + pixels (8).
        let one = vec![vec![("k".to_string(), vec![(Some(1), 2, None)])]];
        assert_eq!(encode_rows(&one).len(), 4 + 8 + 8 + (8 + 1 + 4 + 1 + 8 + 8));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let b = encode_rows(&sample());
        for cut in 0..b.len() {
            let e = decode_rows(&b[..cut]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
        }
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(decode_rows(&trailing)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        let mut foreign = b.clone();
        foreign[0] = b'X';
        assert!(decode_rows(&foreign)
            .unwrap_err()
            .to_string()
            .contains("wrong format"));
        // A huge count with no data behind it fails on the data, not on allocation.
        let mut huge = ROWS_MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_rows(&huge).is_err());
        // Unknown flag bits are refused.
        let mut flags = b.clone();
        let at = 4 + 8 + 8 + 8 + 3 + 4; // first image's flags byte
        flags[at] = 0x80;
        assert!(decode_rows(&flags)
            .unwrap_err()
            .to_string()
            .contains("flags"));
    }
}
