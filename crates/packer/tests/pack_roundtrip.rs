//! `packer::pack` end to end on shards written by `ShardWriter`: every sample exactly once,
//! member bytes preserved, packs within capacity, byte-identical for any worker count.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use packer::shard::{read_index, read_samples, Member, ShardWriter};
use packer::{PackOptions, Progress};
use serde_json::{json, Value};

/// A tiny word-level tokenizer with the template's special tokens.
fn write_tokenizer(path: &Path) {
    let specials = [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
    ];
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": 100 + i, "content": t, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let words = [
        "[UNK]",
        "system",
        "user",
        "assistant",
        "You",
        "are",
        "a",
        "helpful",
        ".",
    ];
    let vocab: serde_json::Map<String, Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let doc = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}});
    std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

/// 3 shards × 20 samples; sample i has (i % 3) images of growing size and a caption.
fn write_sources(dir: &Path) -> BTreeMap<String, (Vec<Vec<u8>>, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut all = BTreeMap::new();
    for s in 0..3u32 {
        let mut w = ShardWriter::create(dir, "shard", s).unwrap();
        for j in 0..20u32 {
            let i = s * 20 + j;
            let key = format!("k{i:03}");
            let n = (i % 3) as usize;
            let imgs: Vec<Vec<u8>> = (0..n)
                .map(|x| vec![(i + x as u32) as u8; 100 + 37 * i as usize])
                .collect();
            let meta: Vec<Value> = (0..n)
                .map(|x| {
                    let member = if n == 1 {
                        format!("{key}.jpg")
                    } else {
                        format!("{key}.img{x}.jpg")
                    };
                    json!({"member": member, "width": 56 + 28 * (i % 7), "height": 56 + 28 * x})
                })
                .collect();
            let caption = "word ".repeat(1 + (i as usize * 13) % 90);
            let doc = json!({"id": key, "kind": "caption", "caption": caption, "images": meta});
            let jb = serde_json::to_vec(&doc).unwrap();
            let suffixes: Vec<String> = (0..n)
                .map(|x| {
                    if n == 1 {
                        "jpg".to_string()
                    } else {
                        format!("img{x}.jpg")
                    }
                })
                .collect();
            let mut members: Vec<Member> = imgs
                .iter()
                .zip(&suffixes)
                .map(|(d, s)| Member { suffix: s, data: d })
                .collect();
            members.push(Member {
                suffix: "json",
                data: &jb,
            });
            w.append(&key, &members).unwrap();
            all.insert(key, (imgs, jb));
        }
        w.finish().unwrap();
    }
    all
}

fn run(src: &Path, out: &Path, tok: &Path, workers: usize) -> packer::PackSummary {
    let mut o = PackOptions::new(src, out, tok);
    o.max_len = 160;
    o.packs_per_shard = 4;
    o.workers = workers;
    o.progress = Progress::Quiet;
    packer::pack(&o, &AtomicBool::new(false)).unwrap()
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".tar")
            || name.ends_with(".idx")
            || name == "manifest.json"
            || name == "rejects.jsonl"
        {
            m.insert(name, std::fs::read(&p).unwrap());
        }
    }
    m
}

#[test]
fn packs_every_sample_once_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tokenizer.json");
    write_tokenizer(&tok);
    let src = tmp.path().join("src");
    let sources = write_sources(&src);
    let out1 = tmp.path().join("o1");
    let s = run(&src, &out1, &tok, 1);
    assert!(s.packs > 4 && s.shards > 1, "{s:?}");

    let mut seen = BTreeMap::new();
    for e in std::fs::read_dir(&out1).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tar") {
            let idx = read_index(format!("{}.idx", p.display())).unwrap();
            let samples = read_samples(&p).unwrap();
            assert_eq!(idx.len(), samples.len() + 1);
            for (_, members) in samples {
                let (_, json_bytes) = members.last().unwrap();
                let doc: Value = serde_json::from_slice(json_bytes).unwrap();
                let total = doc["total_tokens"].as_u64().unwrap();
                assert!(total <= 160);
                let mut sum = 0;
                for sub in doc["samples"].as_array().unwrap() {
                    let key = sub["source_key"].as_str().unwrap().to_string();
                    sum += sub["length"].as_u64().unwrap();
                    let (imgs, jb) = &sources[&key];
                    assert_eq!(sub["sample"], serde_json::from_slice::<Value>(jb).unwrap());
                    for (name, data) in sub["images"].as_array().unwrap().iter().zip(imgs) {
                        let m = members
                            .iter()
                            .find(|(s, _)| s == name.as_str().unwrap())
                            .unwrap();
                        assert_eq!(&m.1, data);
                    }
                    *seen.entry(key).or_insert(0) += 1;
                }
                assert_eq!(sum, total);
            }
        }
    }
    let rejects = std::fs::read_to_string(out1.join("rejects.jsonl")).unwrap();
    for line in rejects.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert!(r["length"].as_u64().unwrap() > 160);
        *seen
            .entry(r["key"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), sources.len());
    assert!(seen.values().all(|&n| n == 1));

    let out3 = tmp.path().join("o3");
    run(&src, &out3, &tok, 3);
    assert_eq!(files(&out1), files(&out3));
}

fn manifest_options(out: &Path) -> Value {
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    m["options"].clone()
}

#[test]
fn manifest_records_the_training_strings_and_a_tokenizer_copy() {
    use sha2::{Digest, Sha256};
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tokenizer.json");
    write_tokenizer(&tok);
    let src = tmp.path().join("src");
    let sources = write_sources(&src);
    let out = tmp.path().join("pre");
    run(&src, &out, &tok, 1);
    let o = manifest_options(&out);
    let tok_bytes = std::fs::read(&tok).unwrap();
    assert_eq!(o["caption_format"], "pretrain");
    assert_eq!(o["eos_token"], "<|im_end|>");
    assert_eq!(o["system"], "You are a helpful assistant.");
    assert_eq!(o["caption_prompt"], "");
    assert_eq!(o["tokenizer_file"], "tokenizer.json");
    assert_eq!(
        o["tokenizer_sha256"],
        hex::encode(Sha256::digest(&tok_bytes)).as_str()
    );
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        tok_bytes
    );
    // A text-only pretraining caption is its words plus the eos token.
    let words = |k: &str| {
        let doc: Value = serde_json::from_slice(&sources[k].1).unwrap();
        doc["caption"].as_str().unwrap().split_whitespace().count() as u64
    };
    let lengths = |dir: &Path| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "tar") {
                for (_, members) in read_samples(&p).unwrap() {
                    let doc: Value = serde_json::from_slice(&members.last().unwrap().1).unwrap();
                    for sub in doc["samples"].as_array().unwrap() {
                        let k = sub["source_key"].as_str().unwrap().to_string();
                        m.insert(k, sub["length"].as_u64().unwrap());
                    }
                }
            }
        }
        m
    };
    let pre = lengths(&out);
    assert_eq!(pre["k000"], words("k000") + 1);

    // The chat form costs the template's system turn and roles on every caption.
    let chat = tmp.path().join("chat");
    let mut opts = PackOptions::new(&src, &chat, &tok);
    opts.max_len = 160;
    opts.progress = Progress::Quiet;
    opts.caption_format = bucketer::CaptionFormat::Chat;
    packer::pack(&opts, &AtomicBool::new(false)).unwrap();
    assert_eq!(manifest_options(&chat)["caption_format"], "chat");
    let chat_lengths = lengths(&chat);
    for (k, n) in &chat_lengths {
        if let Some(p) = pre.get(k) {
            assert!(n > p, "{k}: chat {n} <= pretrain {p}");
        }
    }
    // Resuming with another caption format is refused; packing again with the pack's own
    // tokenizer copy over the same directory keeps that copy.
    opts.resume = true;
    opts.output = out.clone();
    assert!(packer::pack(&opts, &AtomicBool::new(false)).is_err());
    let mut again = PackOptions::new(&src, &out, out.join("tokenizer.json"));
    again.max_len = 160;
    again.progress = Progress::Quiet;
    again.overwrite = true;
    packer::pack(&again, &AtomicBool::new(false)).unwrap();
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        tok_bytes
    );
    assert_eq!(lengths(&out), pre);
}
