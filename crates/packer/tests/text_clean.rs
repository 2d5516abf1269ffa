//! Text cleaning across an interrupted job: a build cancelled after some shards and resumed
//! writes the same shards, `text_report.jsonl`, text counts and `--dedup-text` rejects as an
//! uninterrupted one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use packer::{build, BuildOptions, DedupMode, PackError, Progress};

fn corpus(dir: &Path, n: usize) -> std::path::PathBuf {
    // One tiny PNG for every caption (image dedup off): the job is about its text.
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, 2, 2);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .unwrap()
            .write_image_data(&[0, 64, 128, 255])
            .unwrap();
    }
    std::fs::write(dir.join("a.png"), png).unwrap();
    let mut lines = String::new();
    for i in 0..n {
        let caption = match i % 5 {
            0 => format!("  A <b>red</b> bus number {} &amp; a tram ", i % 97),
            1 => "IMG_1234.JPG".to_string(),
            2 => format!("cafÃ© sign {}", i % 89),
            3 => format!("一只猫 {}", i % 83),
            _ => format!("plain caption {i}"),
        };
        let rec = serde_json::json!({"id": format!("s{i}"), "image": "a.png", "caption": caption});
        lines.push_str(&rec.to_string());
        lines.push('\n');
    }
    let path = dir.join("c.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn options(input: &Path, out: &Path) -> BuildOptions {
    let mut o = BuildOptions::new(input.display().to_string(), out);
    o.samples_per_shard = 40;
    o.workers = 2;
    o.dedup = DedupMode::Off;
    o.progress = Progress::Quiet;
    o.text.dedup_text = true;
    o.text.report = 5;
    o
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text_stats(out: &Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&read(&out.join("stats.json"))).unwrap();
    v["text"].clone()
}

#[test]
fn cancelled_and_resumed_build_has_the_same_text_report_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path(), 3000);
    let reference = dir.path().join("ref");
    let no = AtomicBool::new(false);
    let s = build(&options(&input, &reference), &no).unwrap();
    assert_eq!(s.records, 3000);
    let report = read(&reference.join("text_report.jsonl"));
    assert!(!report.is_empty());

    let out = dir.path().join("out");
    let cancel = AtomicBool::new(false);
    let ckpt = out.join(".llava-pack").join("checkpoint.json");
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            // Cancel once a few shards are committed (the job is then mid-way).
            for _ in 0..20_000 {
                let shards = std::fs::read(&ckpt)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["shards"].as_array().map(Vec::len))
                    .unwrap_or(0);
                if shards >= 3 {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            cancel.store(true, Ordering::Relaxed);
        });
        build(&options(&input, &out), &cancel)
    });
    if let Err(e) = result {
        assert!(matches!(e, PackError::Cancelled), "{e}");
        assert!(!out.join("text_report.jsonl").exists());
        let mut again = options(&input, &out);
        again.resume = true;
        build(&again, &AtomicBool::new(false)).unwrap();
    }
    assert_eq!(read(&out.join("text_report.jsonl")), report);
    assert_eq!(text_stats(&out), text_stats(&reference));
    assert_eq!(
        read(&out.join("rejects.jsonl")),
        read(&reference.join("rejects.jsonl"))
    );
    for entry in std::fs::read_dir(&reference).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().ends_with(".tar") {
            assert_eq!(
                read(&out.join(&name)),
                read(&reference.join(&name)),
                "{name:?}"
            );
        }
    }
    let t = text_stats(&reference);
    assert_eq!(t["rejected"]["filename"], 600);
    assert_eq!(t["changed"]["mojibake"].as_u64().unwrap(), 89);
    let rejects = String::from_utf8(read(&reference.join("rejects.jsonl"))).unwrap();
    assert!(rejects.contains("\"duplicate_text\""));
}
