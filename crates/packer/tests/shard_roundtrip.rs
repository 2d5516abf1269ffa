//! Shard writer round trips: bytes, `.tar.idx`, determinism, size accounting, errors.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use packer::shard::{
    read_index, read_samples, rows_path, shard_name, tar_sample_size, write_energon_meta,
    write_energon_meta_with_rows, Member, ShardInfo, ShardRows, ShardWriter,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

type OwnedSample = (String, Vec<(String, Vec<u8>)>);

fn write_shard(
    dir: &Path,
    index: u32,
    samples: &[OwnedSample],
) -> io::Result<(ShardInfo, Vec<u64>)> {
    let mut w = ShardWriter::create(dir, "shard", index)?;
    let mut starts = Vec::new();
    for (key, members) in samples {
        let ms: Vec<Member<'_>> = members
            .iter()
            .map(|(s, d)| Member { suffix: s, data: d })
            .collect();
        let before = w.bytes();
        starts.push(before);
        w.append(key, &ms)?;
        assert_eq!(
            w.bytes() - before,
            tar_sample_size(members.iter().map(|(_, d)| d.len()))
        );
    }
    assert_eq!(w.samples(), samples.len() as u64);
    let info = w.finish()?;
    Ok((info, starts))
}

fn sample_strategy() -> impl Strategy<Value = Vec<OwnedSample>> {
    let size = prop_oneof![
        0usize..3000,
        Just(0usize),
        Just(512usize),
        Just(1024usize),
        Just(2048usize),
        Just(511usize),
        Just(513usize)
    ];
    let member = (
        prop_oneof![
            Just("json".to_string()),
            Just("jpg".to_string()),
            Just("png".to_string()),
            Just("webp".to_string()),
            (0u8..5, prop_oneof![Just("jpg"), Just("png")])
                .prop_map(|(i, e)| format!("img{i}.{e}")),
        ],
        size.prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n)),
    );
    let sample = (
        "[A-Za-z0-9_-]{1,40}",
        proptest::collection::vec(member, 1..5),
    );
    proptest::collection::vec(sample, 1..12).prop_map(|raw| {
        // unique keys, unique suffixes per sample
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, (key, members)) in raw.into_iter().enumerate() {
            let key = format!("{key}{i}");
            if !seen.insert(key.clone()) {
                continue;
            }
            let mut sfx = BTreeSet::new();
            let members: Vec<_> = members
                .into_iter()
                .filter(|(s, _)| sfx.insert(s.clone()))
                .collect();
            out.push((key, members));
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_identical(samples in sample_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let (info, starts) = write_shard(dir.path(), 0, &samples).unwrap();
        let tar = dir.path().join(&info.name);
        prop_assert_eq!(&info.name, &shard_name("shard", 0));
        let partial = dir.path().join(format!("{}.partial", info.name));
        prop_assert!(!partial.exists());

        // bytes back, grouped by key, in order
        let back = read_samples(&tar).unwrap();
        prop_assert_eq!(&back, &samples);

        // file size, sha256, sample count
        let raw = fs::read(&tar).unwrap();
        let body: u64 = samples.iter().map(|(_, m)| tar_sample_size(m.iter().map(|(_, d)| d.len()))).sum();
        prop_assert_eq!(raw.len() as u64, body + 1024);
        prop_assert_eq!(info.bytes, raw.len() as u64);
        prop_assert_eq!(info.samples, samples.len() as u64);
        prop_assert_eq!(info.sha256.clone(), hex::encode(Sha256::digest(&raw)));
        prop_assert!(raw[raw.len() - 1024..].iter().all(|&b| b == 0));

        // .tar.idx: sample starts, then the end of the last sample
        let idx = read_index(dir.path().join(format!("{}.idx", info.name))).unwrap();
        let mut expect = starts.clone();
        expect.push(body);
        prop_assert_eq!(&idx, &expect);
        for (off, (key, members)) in idx.iter().zip(&samples) {
            let h = &raw[*off as usize..*off as usize + 512];
            let name_len = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
            let name = std::str::from_utf8(&h[..name_len]).unwrap();
            prop_assert_eq!(name, format!("{}.{}", key, members[0].0));
        }

        // deterministic: same input, another directory -> identical bytes
        let dir2 = tempfile::tempdir().unwrap();
        let (info2, _) = write_shard(dir2.path(), 0, &samples).unwrap();
        prop_assert_eq!(&info, &info2);
        prop_assert_eq!(raw, fs::read(dir2.path().join(&info2.name)).unwrap());
        prop_assert_eq!(
            fs::read(dir.path().join(format!("{}.idx", info.name))).unwrap(),
            fs::read(dir2.path().join(format!("{}.idx", info2.name))).unwrap()
        );
    }
}

#[test]
fn name_too_long_is_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), "shard", 0).unwrap();
    let key = "k".repeat(96);
    // 96 + ".jpg" = 100 bytes: fine
    w.append(
        &key,
        &[Member {
            suffix: "jpg",
            data: b"x",
        }],
    )
    .unwrap();
    let before = w.bytes();
    let key2 = "q".repeat(97);
    let err = w
        .append(
            &key2,
            &[Member {
                suffix: "json",
                data: b"{}",
            }],
        )
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    // a long second member also fails before anything is written
    let err = w
        .append(
            "ok",
            &[
                Member {
                    suffix: "json",
                    data: b"{}",
                },
                Member {
                    suffix: &"x".repeat(98),
                    data: b"",
                },
            ],
        )
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(w.bytes(), before);
    assert_eq!(w.samples(), 1);
    let info = w.finish().unwrap();
    assert_eq!(read_samples(dir.path().join(&info.name)).unwrap().len(), 1);
}

#[test]
fn invalid_samples_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(dir.path(), "shard", 0).unwrap();
    let m = [Member {
        suffix: "json",
        data: b"{}",
    }];
    for bad in ["", "a.b", "a/b"] {
        assert_eq!(
            w.append(bad, &m).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
    assert_eq!(
        w.append("a", &[]).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    let dup = [
        Member {
            suffix: "json",
            data: b"{}",
        },
        Member {
            suffix: "json",
            data: b"{}",
        },
    ];
    assert_eq!(
        w.append("a", &dup).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    w.append("a", &m).unwrap();
    assert_eq!(
        w.append("a", &m).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(w.samples(), 1);
}

#[test]
fn partial_is_never_renamed_without_finish() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = ShardWriter::create(dir.path(), "shard", 3).unwrap();
        w.append(
            "a",
            &[Member {
                suffix: "json",
                data: b"{}",
            }],
        )
        .unwrap();
        // dropped without finish()
    }
    let name = shard_name("shard", 3);
    assert!(dir.path().join(format!("{name}.partial")).exists());
    assert!(!dir.path().join(&name).exists());
    assert!(!dir.path().join(format!("{name}.idx")).exists());

    // a new writer truncates the stale partial and finishes normally
    let mut w = ShardWriter::create(dir.path(), "shard", 3).unwrap();
    w.append(
        "b",
        &[Member {
            suffix: "json",
            data: b"[]",
        }],
    )
    .unwrap();
    let info = w.finish().unwrap();
    assert!(!dir.path().join(format!("{name}.partial")).exists());
    let back = read_samples(dir.path().join(&info.name)).unwrap();
    assert_eq!(
        back,
        vec![("b".to_string(), vec![("json".to_string(), b"[]".to_vec())])]
    );
}

#[test]
fn empty_shard_has_single_offset() {
    let dir = tempfile::tempdir().unwrap();
    let info = ShardWriter::create(dir.path(), "shard", 0)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(info.samples, 0);
    assert_eq!(info.bytes, 1024);
    assert_eq!(
        read_index(dir.path().join(format!("{}.idx", info.name))).unwrap(),
        vec![0]
    );
    assert!(read_samples(dir.path().join(&info.name))
        .unwrap()
        .is_empty());
}

#[test]
fn energon_meta_layout_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s0: Vec<OwnedSample> = vec![
        (
            "k0".into(),
            vec![
                ("jpg".into(), vec![1; 700]),
                ("json".into(), b"{\"a\":1}".to_vec()),
            ],
        ),
        ("k1".into(), vec![("json".into(), b"{}".to_vec())]),
    ];
    let s1: Vec<OwnedSample> = vec![(
        "k2".into(),
        vec![
            ("img0.png".into(), vec![2; 512]),
            ("img1.jpg".into(), vec![3; 3]),
            ("json".into(), b"{}".to_vec()),
        ],
    )];
    let (i0, _) = write_shard(dir.path(), 0, &s0).unwrap();
    let (i1, _) = write_shard(dir.path(), 1, &s1).unwrap();
    write_energon_meta(dir.path(), &[i0.clone(), i1.clone()]).unwrap();
    let meta = dir.path().join(".nv-meta");
    let split = fs::read_to_string(meta.join("split.yaml")).unwrap();
    assert_eq!(split, "split_parts:\n  train:\n  - shard-{000000..000001}.tar\n  val: []\n  test: []\nexclude: []\n");
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(meta.join(".info.json")).unwrap()).unwrap();
    assert_eq!(info["shard_counts"]["shard-000000.tar"], 2);
    assert_eq!(info["shard_counts"]["shard-000001.tar"], 1);
    for f in [
        "dataset.yaml",
        "sample_loader.py",
        "index.uuid",
        "index.sqlite",
    ] {
        assert!(meta.join(f).is_file(), "{f}");
    }
    assert!(!meta.join("index.sqlite.tmp").exists());

    let db = rusqlite::Connection::open(meta.join("index.sqlite")).unwrap();
    let rows: Vec<(i64, String, i64, i64, i64)> = db
        .prepare("SELECT tar_file_id, sample_key, sample_index, byte_offset, byte_size FROM samples ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let k0 = (512 + 1024) + (512 + 512);
    assert_eq!(
        rows,
        vec![
            (0, "k0".into(), 0, 0, k0),
            (0, "k1".into(), 1, k0, 1024),
            (
                1,
                "k2".into(),
                0,
                0,
                (512 + 512) + (512 + 512) + (512 + 512)
            ),
        ]
    );
    let parts: Vec<(i64, i64, String, i64, i64)> = db
        .prepare("SELECT tar_file_id, sample_index, part_name, content_byte_offset, content_byte_size FROM sample_parts ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(parts[0], (0, 0, "jpg".into(), 512, 700));
    assert_eq!(parts[1], (0, 0, "json".into(), 512 + 1024 + 512, 7));
    assert_eq!(parts[3], (1, 0, "img0.png".into(), 512, 512));
    assert_eq!(parts.len(), 6);

    // deterministic: rewriting the meta gives identical files
    let before: Vec<Vec<u8>> = ["index.sqlite", "index.uuid", ".info.json", "split.yaml"]
        .iter()
        .map(|f| fs::read(meta.join(f)).unwrap())
        .collect();
    write_energon_meta(dir.path(), &[i0.clone(), i1.clone()]).unwrap();
    let after: Vec<Vec<u8>> = ["index.sqlite", "index.uuid", ".info.json", "split.yaml"]
        .iter()
        .map(|f| fs::read(meta.join(f)).unwrap())
        .collect();
    assert_eq!(before, after);

    // a duplicate key across shards is an error
    let (i2, _) = write_shard(dir.path(), 2, &s1).unwrap();
    let err = write_energon_meta(dir.path(), &[i0, i1, i2]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

/// The index built from rows recorded while writing is byte-identical to the one built by
/// walking the tars, also when only some shards have recorded rows; damaged rows are an error.
#[test]
fn energon_index_from_recorded_rows_equals_the_tar_walk() {
    let dir = tempfile::tempdir().unwrap();
    let rows_dir = dir.path().join("rows");
    fs::create_dir(&rows_dir).unwrap();
    let mut infos = Vec::new();
    for (n, shard) in [0u32, 1, 2].into_iter().zip([5usize, 1, 7]) {
        let mut w = ShardWriter::create(dir.path(), "shard", n).unwrap();
        for i in 0..shard {
            let img = vec![i as u8; 300 + 977 * i];
            let json = format!("{{\"i\":{i}}}");
            let mut members = vec![Member {
                suffix: "jpg",
                data: &img,
            }];
            if i % 2 == 0 {
                members.push(Member {
                    suffix: "img1.png",
                    data: &img[..i],
                });
            }
            members.push(Member {
                suffix: "json",
                data: json.as_bytes(),
            });
            w.append(&format!("s{n}_{i}"), &members).unwrap();
        }
        let (info, rows): (ShardInfo, ShardRows) = w.finish_with_rows().unwrap();
        assert_eq!(rows.samples(), info.samples);
        fs::write(rows_path(&rows_dir, &info.name), rows.as_bytes()).unwrap();
        infos.push(info);
    }
    let index = || fs::read(dir.path().join(".nv-meta/index.sqlite")).unwrap();
    write_energon_meta(dir.path(), &infos).unwrap();
    let walked = index();
    write_energon_meta_with_rows(dir.path(), &infos, &rows_dir).unwrap();
    assert!(index() == walked, "recorded rows give another index");
    fs::remove_file(rows_path(&rows_dir, &infos[1].name)).unwrap();
    write_energon_meta_with_rows(dir.path(), &infos, &rows_dir).unwrap();
    assert!(
        index() == walked,
        "mixed recorded/walked shards give another index"
    );

    let p = rows_path(&rows_dir, &infos[2].name);
    let good = fs::read(&p).unwrap();
    fs::write(&p, &good[..good.len() - 3]).unwrap();
    let err = write_energon_meta_with_rows(dir.path(), &infos, &rows_dir).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn energon_meta_rejects_wrong_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut i0, _) = write_shard(
        dir.path(),
        0,
        &[("a".into(), vec![("json".into(), b"{}".to_vec())])],
    )
    .unwrap();
    i0.samples = 2;
    assert_eq!(
        write_energon_meta(dir.path(), &[i0]).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}
