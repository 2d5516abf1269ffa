use super::*;
use crate::shard::{Member, ShardWriter};

type Samples<'a> = [(&'a str, Vec<(&'a str, Vec<u8>)>)];

fn write_shard(dir: &Path, index: u32, samples: &Samples) -> crate::shard::ShardInfo {
    let mut w = ShardWriter::create(dir, "shard", index).unwrap();
    for (key, members) in samples {
        let ms: Vec<Member> = members
            .iter()
            .map(|(s, d)| Member { suffix: s, data: d })
            .collect();
        w.append(key, &ms).unwrap();
    }
    w.finish().unwrap()
}

fn doc(key: &str, images: &[&str]) -> Vec<u8> {
    let ims: Vec<Value> = images
        .iter()
        .map(|m| serde_json::json!({"member": format!("{key}.{m}")}))
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"id": key, "kind": "caption", "caption": "x", "images": ims}),
    )
    .unwrap()
}

fn dataset() -> (tempfile::TempDir, Vec<crate::shard::ShardInfo>) {
    let dir = tempfile::tempdir().unwrap();
    let a = write_shard(
        dir.path(),
        0,
        &[
            (
                "a0",
                vec![("jpg", vec![1u8; 700]), ("json", doc("a0", &["jpg"]))],
            ),
            ("a1", vec![("json", doc("a1", &[]))]),
        ],
    );
    let b = write_shard(
        dir.path(),
        1,
        &[(
            "b0",
            vec![
                ("img0.png", vec![7u8; 3]),
                ("img1.jpg", vec![9u8; 1025]),
                ("json", doc("b0", &["img0.png", "img1.jpg"])),
            ],
        )],
    );
    let infos = vec![a, b];
    let manifest = serde_json::json!({"format_version": 1, "shards": infos});
    std::fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    (dir, infos)
}

#[test]
fn reads_samples_zero_copy() {
    let (dir, _) = dataset();
    let set = ShardSet::open(dir.path(), OpenOptions::default()).unwrap();
    assert_eq!(set.len(), 3);
    assert!(!set.packed);
    let s = set.sample(2).unwrap();
    assert_eq!((s.shard, s.offset, s.key.as_str()), (1, 0, "b0"));
    let json = set.json(&s).unwrap();
    let ims = set.image_members(&s, &json).unwrap();
    assert_eq!(set.bytes(&s, ims[0]), &[7u8; 3]);
    assert_eq!(set.bytes(&s, ims[1]), &[9u8; 1025][..]);
    // The bytes are a slice of the mapping itself.
    let map = &set.shards[1].map;
    let p = set.bytes(&s, ims[1]).as_ptr() as usize;
    assert!(p >= map.as_ptr() as usize && p < map.as_ptr() as usize + map.len());
    assert_eq!(set.sample(1).unwrap().key, "a1");
    assert!(matches!(set.sample(3), Err(ReadError::OutOfRange { .. })));
}

#[test]
fn stale_and_corrupt_indexes_name_the_shard() {
    let (dir, infos) = dataset();
    let idx = dir.path().join("shard-000000.tar.idx");
    let good = std::fs::read(&idx).unwrap();
    // Stale: an index from another shard (one sample fewer).
    std::fs::copy(dir.path().join("shard-000001.tar.idx"), &idx).unwrap();
    let e = ShardSet::open(dir.path(), OpenOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("shard-000000.tar") && e.contains("offset"),
        "{e}"
    );
    // Skip mode leaves the shard out and says why.
    let set = ShardSet::open(
        dir.path(),
        OpenOptions {
            skip_bad_shards: true,
        },
    )
    .unwrap();
    assert_eq!((set.len(), set.skipped.len()), (1, 1));
    // Corrupt: a middle offset moved into member data (manifest check off).
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&512u64.to_le_bytes());
    std::fs::write(&idx, &bad).unwrap();
    let set = ShardSet::open(dir.path(), OpenOptions::default()).unwrap();
    let e = set.sample(0).err().unwrap();
    assert!(
        matches!(e, ReadError::Index { .. } | ReadError::BadHeader { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("shard-000000.tar @ offset"), "{e}");
    bad[8..16].copy_from_slice(&3u64.to_le_bytes());
    std::fs::write(&idx, &bad).unwrap();
    assert!(ShardSet::open(dir.path(), OpenOptions::default()).is_err());
    let _ = infos;
}

#[test]
fn truncated_tar_is_reported() {
    let (dir, _) = dataset();
    let p = dir.path().join("shard-000001.tar");
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() - 1500]).unwrap();
    let e = ShardSet::open(dir.path(), OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, ReadError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("shard-000001.tar"), "{e}");
}

#[test]
fn missing_member_and_unsafe_names() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, &[("k", vec![("json", doc("k", &["jpg"]))])]);
    let set = ShardSet::open(dir.path(), OpenOptions::default()).unwrap();
    let s = set.sample(0).unwrap();
    let e = set.image_members(&s, &set.json(&s).unwrap()).err().unwrap();
    assert!(matches!(e, ReadError::MissingMember { .. }), "{e}");
    // Rewrite the member name in place to "../x.json" with a valid checksum.
    let p = dir.path().join("shard-000000.tar");
    let mut raw = std::fs::read(&p).unwrap();
    raw[..100].fill(0);
    raw[..9].copy_from_slice(b"../x.json");
    raw[148..156].copy_from_slice(b"        ");
    let sum: u32 = raw[..512].iter().map(|&b| b as u32).sum();
    raw[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    std::fs::write(&p, &raw).unwrap();
    let set = ShardSet::open(dir.path(), OpenOptions::default()).unwrap();
    let e = set.sample(0).err().unwrap();
    assert!(matches!(e, ReadError::UnsafeName { .. }), "{e}");
}
