//! `packer::dedup::dedup` on crafted shard directories: keeper rule, multi-image modes,
//! contamination, outputs, and the bad-input errors.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use packer::dedup::{dedup, DedupOptions, KeepRule, MultiImage, Reference, Verify};
use packer::shard::{Member, ShardWriter};
use packer::{PackError, Progress};
use serde_json::{json, Value};

/// One sample: key and its images as (phash json value, width, height).
type Spec<'a> = (&'a str, Vec<(Value, u64, u64)>);

fn write_shards(dir: &Path, samples: &[Spec], manifest_phash: &str) {
    write_shards_with(dir, samples, json!({"phash": manifest_phash}), &|_, _| {
        Value::Null
    });
}

/// [`write_shards`] with the manifest's options and each image's dhash (by sample, image).
fn write_shards_with(
    dir: &Path,
    samples: &[Spec],
    options: Value,
    dhash: &dyn Fn(usize, usize) -> Value,
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut w = ShardWriter::create(dir, "shard", 0).unwrap();
    for (si, (key, images)) in samples.iter().enumerate() {
        let n = images.len();
        let suffix = |x: usize| {
            if n == 1 {
                "jpg".to_string()
            } else {
                format!("img{x}.jpg")
            }
        };
        let meta: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(x, (h, wd, ht))| {
                json!({"member": suffix(x), "width": wd, "height": ht, "phash": h,
                       "dhash": dhash(si, x)})
            })
            .collect();
        let doc = json!({"id": key, "kind": "caption", "caption": "c", "images": meta});
        let jb = serde_json::to_vec(&doc).unwrap();
        let sfx: Vec<String> = (0..n).map(suffix).collect();
        let data = vec![0u8; 10];
        let mut members: Vec<Member> = sfx
            .iter()
            .map(|s| Member {
                suffix: s,
                data: &data,
            })
            .collect();
        members.push(Member {
            suffix: "json",
            data: &jb,
        });
        w.append(key, &members).unwrap();
    }
    let info = w.finish().unwrap();
    let manifest = json!({"format_version": 1,
        "shards": [{"name": info.name, "samples": info.samples, "bytes": info.bytes}],
        "options": options});
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

fn h(x: u64) -> Value {
    json!(format!("{x:016x}"))
}

fn opts(input: &Path, out: &Path) -> DedupOptions {
    let mut o = DedupOptions::new(input, out);
    o.progress = Progress::Quiet;
    o
}

fn drop_keys(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("drop.txt"))
        .unwrap()
        .lines()
        .map(|l| l.to_string())
        .collect()
}

const A: u64 = 0x0123_4567_89ab_cdef;
const B: u64 = 0xfedc_ba98_7654_3210;
const C: u64 = 0x0f0f_0f0f_0f0f_0f0f;

fn corpus() -> Vec<Spec<'static>> {
    vec![
        ("s0", vec![(h(A), 100, 100)]),
        ("s1", vec![(h(A ^ 0b111), 200, 200)]), // 3 bits from s0, larger: the keeper
        ("s2", vec![(h(B), 50, 50)]),
        ("s3", vec![(h(A ^ 0b1), 100, 100)]), // joins s0's cluster
        ("s4", vec![(h(C), 10, 10), (h(B ^ 0xff), 10, 10)]), // 8 bits from s2
        ("s5", vec![(Value::Null, 10, 10)]),  // no hash: skipped, never dropped
    ]
}

#[test]
fn largest_keeper_survives_and_the_rest_are_dropped_with_reasons() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out) = (t.path().join("in"), t.path().join("out"));
    write_shards(&inp, &corpus(), "fast");
    let s = dedup(&opts(&inp, &out), &AtomicBool::new(false)).unwrap();
    assert_eq!(
        drop_keys(&out),
        vec![
            "s0\tnear-duplicate of s1",
            "s3\tnear-duplicate of s1",
            "s4\tnear-duplicate of s2"
        ]
    );
    assert_eq!(s.clusters, 2);
    assert_eq!(s.skipped_no_hash, 1);
    assert_eq!(s.hashed_images, 6);
    // Pairs: s0-s1 (3), s0-s3 (1), s1-s3 (2), s2-s4b (8).
    assert_eq!(s.distance_histogram, vec![0, 1, 1, 1, 0, 0, 0, 0, 1]);
    assert_eq!(s.dropped["near_duplicate"], 3);
    let clusters: Vec<Value> = std::fs::read_to_string(out.join("clusters.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(clusters[0]["keeper"], "s1");
    assert_eq!(clusters[0]["size"], 3);
    let kept: Vec<&Value> = clusters[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kept"] == true)
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["why"], "largest");
    let stats: Value =
        serde_json::from_slice(&std::fs::read(out.join("dedup_stats.json")).unwrap()).unwrap();
    assert_eq!(stats["clusters"], 2);
}

#[test]
fn keep_first_and_multi_image_all_change_the_drops() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    write_shards(&inp, &corpus(), "fast");
    let out = t.path().join("first");
    let mut o = opts(&inp, &out);
    o.keep = KeepRule::First;
    o.multi_image = MultiImage::All; // s4's other image is unique: s4 stays
    dedup(&o, &AtomicBool::new(false)).unwrap();
    assert_eq!(
        drop_keys(&out),
        vec!["s1\tnear-duplicate of s0", "s3\tnear-duplicate of s0"]
    );
}

#[test]
fn distance_zero_only_joins_equal_hashes_and_is_deterministic() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    let mut c = corpus();
    c.push(("s6", vec![(h(B), 50, 50)]));
    write_shards(&inp, &c, "fast");
    let mut outs = Vec::new();
    for name in ["a", "b"] {
        let out = t.path().join(name);
        let mut o = opts(&inp, &out);
        o.max_distance = 0;
        dedup(&o, &AtomicBool::new(false)).unwrap();
        assert_eq!(drop_keys(&out), vec!["s6\tnear-duplicate of s2"]);
        outs.push(std::fs::read(out.join("clusters.jsonl")).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn references_and_other_corpora_contaminate() {
    let t = tempfile::tempdir().unwrap();
    let (inp, old, out) = (
        t.path().join("in"),
        t.path().join("old"),
        t.path().join("out"),
    );
    write_shards(&inp, &corpus(), "fast");
    write_shards(&old, &[("o0", vec![(h(C ^ 0b11), 5, 5)])], "fast");
    let mut o = opts(&inp, &out);
    o.references = vec![Reference {
        hash: A ^ 0b111,
        source: "mme".into(),
        row: json!(42),
    }];
    o.against = vec![old.clone()];
    let s = dedup(&o, &AtomicBool::new(false)).unwrap();
    let drops = drop_keys(&out);
    // s1 (the would-be keeper) matches the benchmark exactly; s4 matches the old corpus.
    assert!(
        drops.contains(&"s1\tcontaminates mme row 42".to_string()),
        "{drops:?}"
    );
    let old_reason = format!("s4\tcontaminates {} row o0", old.display());
    assert!(drops.contains(&old_reason), "{drops:?}");
    assert_eq!(
        s.dropped["contamination"], 4,
        "s0, s1, s3 within 8 of the benchmark; s4"
    );
    let rows = std::fs::read_to_string(out.join("contamination.jsonl")).unwrap();
    assert!(rows.contains(r#""benchmark":"mme""#) && rows.contains(r#""row":42"#));
}

#[test]
fn bad_inputs_are_clear_errors_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let no = AtomicBool::new(false);
    // --phash off build.
    let off = t.path().join("off");
    write_shards(&off, &[("a", vec![(Value::Null, 1, 1)])], "off");
    let e = dedup(&opts(&off, &t.path().join("o1")), &no).unwrap_err();
    assert!(e.to_string().contains("--phash off"), "{e}");
    assert!(!t.path().join("o1").exists());
    // A phash of the wrong length names shard, offset, sample and image.
    let bad = t.path().join("bad");
    write_shards(
        &bad,
        &[
            ("ok", vec![(h(A), 1, 1)]),
            ("k2", vec![(json!("abc"), 1, 1)]),
        ],
        "fast",
    );
    let e = dedup(&opts(&bad, &t.path().join("o2")), &no).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("shard-000000.tar") && msg.contains("\"k2\"") && msg.contains("images[0]"),
        "{msg}"
    );
    assert!(!t.path().join("o2").exists());
    // Corrupt index.
    std::fs::write(bad.join("shard-000000.tar.idx"), [1u8, 2, 3]).unwrap();
    let e = dedup(&opts(&bad, &t.path().join("o3")), &no).unwrap_err();
    assert!(
        e.to_string().contains(".tar.idx") || e.to_string().contains("index"),
        "{e}"
    );
    // Existing output without --overwrite; distance out of range.
    let inp = t.path().join("in");
    write_shards(&inp, &corpus(), "fast");
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let e = dedup(&opts(&inp, &out), &no).unwrap_err();
    assert!(e.to_string().contains("--overwrite"), "{e}");
    let mut o = opts(&inp, &out);
    o.overwrite = true;
    o.max_distance = 17;
    assert!(matches!(dedup(&o, &no), Err(PackError::InvalidOption(m)) if m.contains("0..=16")));
    o.max_distance = 8;
    dedup(&o, &no).unwrap();
    assert!(out.join("drop.txt").exists());
    assert!(!out.join("drop.txt.tmp").exists());
}

#[test]
fn verify_dhash_splits_pairs_whose_dhashes_differ() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    // dhash per sample: s0, s1, s3 near each other, except s3 which is 20 bits away.
    let dh = |s: usize, _| match s {
        0 => h(C),
        1 => h(C ^ 0b11),
        3 => h(C ^ 0xfffff),
        _ => h(B ^ s as u64),
    };
    let opts_json = json!({"phash": "fast", "dhash": true});
    write_shards_with(&inp, &corpus(), opts_json, &dh);
    let out = t.path().join("out");
    let mut o = opts(&inp, &out);
    o.verify = Verify::Dhash;
    o.verify_distance = 4;
    let s = dedup(&o, &AtomicBool::new(false)).unwrap();
    // s0-s1 verified (2 dhash bits); s0-s3, s1-s3 rejected (20 bits); s2-s4: B^2 vs B^4.
    assert_eq!(
        drop_keys(&out),
        vec!["s0\tnear-duplicate of s1", "s4\tnear-duplicate of s2"]
    );
    assert_eq!(s.pairs_rejected_by_verify, 2);
    assert_eq!(s.pairs, 2);
    assert_eq!(s.distance_histogram.iter().sum::<u64>(), 2);
    let stats: Value =
        serde_json::from_slice(&std::fs::read(out.join("dedup_stats.json")).unwrap()).unwrap();
    assert_eq!(stats["verify"], "dhash");
    assert_eq!(stats["verify_distance"], 4);
    assert_eq!(stats["pairs_rejected_by_verify"], 2);
    // Without --verify the same corpus joins s3 too.
    o.verify = Verify::Off;
    o.overwrite = true;
    let s = dedup(&o, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.pairs_rejected_by_verify, 0);
    assert_eq!(s.dropped["near_duplicate"], 3);
}

#[test]
fn verify_dhash_without_dhashes_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let no = AtomicBool::new(false);
    // The manifest says the build had no --dhash.
    let inp = t.path().join("in");
    write_shards_with(
        &inp,
        &corpus(),
        json!({"phash": "fast", "dhash": false}),
        &|_, _| Value::Null,
    );
    let mut o = opts(&inp, &t.path().join("o1"));
    o.verify = Verify::Dhash;
    let e = dedup(&o, &no).unwrap_err().to_string();
    assert!(e.contains("manifest.json") && e.contains("--dhash"), "{e}");
    assert!(!t.path().join("o1").exists());
    // No manifest option, and one image lacks its dhash: the shard and sample are named.
    let inp = t.path().join("in2");
    let dh = |s: usize, _| if s == 2 { Value::Null } else { h(s as u64) };
    write_shards_with(&inp, &corpus(), json!({"phash": "fast"}), &dh);
    let mut o = opts(&inp, &t.path().join("o2"));
    o.verify = Verify::Dhash;
    let e = dedup(&o, &no).unwrap_err().to_string();
    assert!(
        e.contains("shard-000000.tar") && e.contains("\"s2\""),
        "{e}"
    );
    o.verify_distance = 17;
    assert!(dedup(&o, &no)
        .unwrap_err()
        .to_string()
        .contains("--verify-distance"));
}

#[test]
fn a_keeper_dropped_by_its_other_image_is_re_picked() {
    // b is the largest in a's cluster but loses its other image's cluster to c: with
    // --multi-image any b is dropped, so a's cluster keeps a instead of nothing.
    let t = tempfile::tempdir().unwrap();
    let (inp, out) = (t.path().join("in"), t.path().join("out"));
    let samples = vec![
        ("a", vec![(h(A), 10, 10)]),
        ("b", vec![(h(A ^ 1), 20, 20), (h(B), 1, 1)]),
        ("c", vec![(h(B ^ 1), 15, 15)]),
    ];
    write_shards(&inp, &samples, "fast");
    let s = dedup(&opts(&inp, &out), &AtomicBool::new(false)).unwrap();
    assert_eq!(drop_keys(&out), vec!["b\tnear-duplicate of a"]);
    assert_eq!((s.clusters_repicked, s.clusters_without_survivor), (1, 0));
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(out.join("clusters.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["keeper"], "a");
    assert_eq!(first["members"][0]["why"], "largest, re-picked");
}

#[test]
fn rewrite_keeps_exactly_the_kept_samples_atomically() {
    use packer::reader::{OpenOptions, ShardSet};
    let t = tempfile::tempdir().unwrap();
    let (inp, out, clean) = (
        t.path().join("in"),
        t.path().join("out"),
        t.path().join("clean"),
    );
    write_shards(&inp, &corpus(), "fast");
    // A leftover `.partial` that is not a rewrite's own is refused, not deleted.
    let partial = t.path().join("clean.partial");
    std::fs::create_dir(&partial).unwrap();
    let mut o = opts(&inp, &out);
    o.rewrite = Some(clean.clone());
    let e = dedup(&o, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(e.contains("clean.partial"), "{e}");
    assert!(partial.exists() && !clean.exists());
    std::fs::remove_dir(&partial).unwrap();
    o.overwrite = true;
    let s = dedup(&o, &AtomicBool::new(false)).unwrap();
    let r = s.rewrite.unwrap();
    assert_eq!((r.samples, r.dropped, r.shards), (3, 3, 1));
    let set = ShardSet::open(&clean, OpenOptions::default()).unwrap();
    let keys: Vec<String> = (0..set.len()).map(|i| set.sample(i).unwrap().key).collect();
    assert_eq!(keys, vec!["s1", "s2", "s5"]);
    assert!(!partial.exists() && !clean.join(".llava-pack").exists());
    // Again with --overwrite: replaced, not merged.
    o.max_distance = 0;
    let s = dedup(&o, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.rewrite.unwrap().samples, 6);
    let set = ShardSet::open(&clean, OpenOptions::default()).unwrap();
    assert_eq!(set.len(), 6);
}
