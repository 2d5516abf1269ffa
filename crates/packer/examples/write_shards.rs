//! Write shards + `.nv-meta/` from a JSON spec (used by `tests/test_shards_compat.py`).
//!
//! ```text
//! write_shards SPEC.json OUT_DIR
//! ```
//! SPEC: `{"prefix": "shard", "samples_per_shard": 3, "samples": [{"key": "k0", "members":
//! [{"suffix": "jpg", "path": "/tmp/a.jpg"}, {"suffix": "json", "text": "{...}"}]}, ...]}`.
//! Prints the list of `ShardInfo` as JSON on stdout.

use std::path::PathBuf;

use packer::shard::{write_energon_meta, Member, ShardWriter};
use serde::Deserialize;

#[derive(Deserialize)]
struct Spec {
    prefix: String,
    samples_per_shard: u64,
    samples: Vec<SampleSpec>,
}

#[derive(Deserialize)]
struct SampleSpec {
    key: String,
    members: Vec<MemberSpec>,
}

#[derive(Deserialize)]
struct MemberSpec {
    suffix: String,
    path: Option<PathBuf>,
    text: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: write_shards SPEC.json OUT_DIR".into());
    }
    let spec: Spec = serde_json::from_slice(&std::fs::read(&args[1])?)?;
    let out = PathBuf::from(&args[2]);
    std::fs::create_dir_all(&out)?;
    if spec.samples_per_shard == 0 {
        return Err("samples_per_shard must be > 0".into());
    }

    let mut shards = Vec::new();
    let mut writer: Option<ShardWriter> = None;
    for sample in &spec.samples {
        let data: Vec<Vec<u8>> = sample
            .members
            .iter()
            .map(|m| match (&m.path, &m.text) {
                (Some(p), None) => std::fs::read(p),
                (None, Some(t)) => Ok(t.clone().into_bytes()),
                _ => Err(std::io::Error::other(
                    "member needs exactly one of path/text",
                )),
            })
            .collect::<Result<_, _>>()?;
        let members: Vec<Member<'_>> = sample
            .members
            .iter()
            .zip(&data)
            .map(|(m, d)| Member {
                suffix: &m.suffix,
                data: d,
            })
            .collect();
        if writer
            .as_ref()
            .is_some_and(|w| w.samples() >= spec.samples_per_shard)
        {
            shards.push(writer.take().expect("open writer").finish()?);
        }
        if writer.is_none() {
            writer = Some(ShardWriter::create(
                &out,
                &spec.prefix,
                shards.len() as u32,
            )?);
        }
        writer
            .as_mut()
            .expect("open writer")
            .append(&sample.key, &members)?;
    }
    if let Some(w) = writer {
        shards.push(w.finish()?);
    }
    write_energon_meta(&out, &shards)?;
    println!("{}", serde_json::to_string(&shards)?);
    Ok(())
}
