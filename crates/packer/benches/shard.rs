//! Tar shard writing throughput: samples of one ~200 KB image + a small json, written through
//! `ShardWriter` (buffered, SHA-256 of every byte on its hasher thread) and finished (fsync,
//! `.tar.idx`, rename). Then 8 shards in a row: each finished before the next is started,
//! against each finished in the background while the next is written (as `llava-pack build`
//! does), in the same run.

use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use packer::shard::{tar_sample_size, Member, ShardWriter};

fn write_shard(dir: &Path, no: u32, n: usize, image: &[u8], json: &[u8]) -> ShardWriter {
    let mut w = ShardWriter::create(dir, "bench", no).unwrap();
    for i in 0..n {
        let key = format!("s{i:06}");
        let members = [
            Member {
                suffix: "jpg",
                data: image,
            },
            Member {
                suffix: "json",
                data: json,
            },
        ];
        w.append(black_box(&key), &members).unwrap();
    }
    w
}

fn bench(c: &mut Criterion) {
    let image: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let json =
        br#"{"id":"x","kind":"caption","caption":"A photograph of a cat.","images":[]}"#.to_vec();
    let n = 100usize;
    let per_sample = tar_sample_size([image.len(), json.len()]);
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("tar_write");
    g.throughput(Throughput::Bytes(per_sample * n as u64));
    g.sample_size(20);
    g.bench_function("100_samples_200KB", |b| {
        b.iter(|| {
            black_box(
                write_shard(dir.path(), 0, n, &image, &json)
                    .finish()
                    .unwrap(),
            )
        })
    });
    g.finish();

    let (shards, per_shard) = (8u32, 25usize);
    let mut g = c.benchmark_group("tar_write_8_shards");
    g.throughput(Throughput::Bytes(
        per_sample * (shards as usize * per_shard) as u64,
    ));
    g.sample_size(20);
    g.bench_function("one_by_one", |b| {
        b.iter(|| {
            for no in 0..shards {
                let w = write_shard(dir.path(), no, per_shard, &image, &json);
                black_box(w.finish().unwrap());
            }
        })
    });
    g.bench_function("finished_in_background", |b| {
        b.iter(|| {
            let mut finishing = VecDeque::new();
            for no in 0..shards {
                let w = write_shard(dir.path(), no, per_shard, &image, &json);
                finishing.push_back(w.finish_in_background().unwrap());
                if finishing.len() > 3 {
                    black_box(finishing.pop_front().unwrap().wait().unwrap());
                }
            }
            for f in finishing {
                black_box(f.wait().unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
