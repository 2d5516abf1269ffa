//! Tar shard writing throughput: samples of one ~200 KB image + a small json, written through
//! `ShardWriter` (buffered, SHA-256 of every byte on its hasher thread) and finished (fsync,
//! `.tar.idx`, rename).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use packer::shard::{tar_sample_size, Member, ShardWriter};

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
            let mut w = ShardWriter::create(dir.path(), "bench", 0).unwrap();
            for i in 0..n {
                let key = format!("s{i:06}");
                let members = [
                    Member {
                        suffix: "jpg",
                        data: &image,
                    },
                    Member {
                        suffix: "json",
                        data: &json,
                    },
                ];
                w.append(black_box(&key), &members).unwrap();
            }
            black_box(w.finish().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
