//! The multi-index search against brute force: random, clustered and adversarial hash sets.

use std::collections::BTreeSet;

use packer::dedup::search::{brute_force, near_duplicates, search_distinct, Distinct, Pair};
use proptest::prelude::*;

fn rng(seed: &mut u64) -> u64 {
    // splitmix64: a well-mixed stream from any seed.
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random(n: usize, seed: u64) -> Vec<u64> {
    let mut s = seed;
    (0..n).map(|_| rng(&mut s)).collect()
}

/// Real phash looks like this: many groups of near-equal hashes (copies, re-encodes).
fn clustered(n: usize, spread: u32, seed: u64) -> Vec<u64> {
    let mut s = seed;
    let centres: Vec<u64> = (0..n / 10 + 1).map(|_| rng(&mut s)).collect();
    (0..n)
        .map(|_| {
            let mut h = centres[(rng(&mut s) % centres.len() as u64) as usize];
            for _ in 0..rng(&mut s) % (u64::from(spread) + 1) {
                h ^= 1 << (rng(&mut s) % 64);
            }
            h
        })
        .collect()
}

fn check(hashes: &[u64], d: u32) {
    let got = near_duplicates(hashes, d, None).unwrap();
    let want = brute_force(hashes, d);
    assert_eq!(
        got.len(),
        want.len(),
        "pair count, d={d}, n={}",
        hashes.len()
    );
    assert_eq!(got, want, "d={d}");
}

#[test]
fn random_hashes_match_brute_force_at_every_distance() {
    let h = random(3000, 1);
    for d in 0..=16 {
        check(&h, d);
    }
}

#[test]
fn clustered_hashes_match_brute_force() {
    for (d, spread) in [(2, 3), (4, 4), (8, 6), (12, 8), (16, 10)] {
        check(&clustered(3000, spread, u64::from(d)), d);
    }
}

#[test]
fn many_equal_and_all_zero_hashes_pair_up_completely() {
    // Flat images all hash to 0; copies hash equal: a few hundred equal values plus neighbours.
    let mut h = vec![0u64; 300];
    h.extend(std::iter::repeat_n(0xDEAD_BEEF_0000_0001, 200));
    h.extend((0..64).map(|b| 1u64 << b)); // every 1-bit neighbour of zero
    h.extend(random(500, 9));
    for d in [0, 1, 2, 8] {
        check(&h, d);
    }
    let got = near_duplicates(&h, 0, None).unwrap();
    assert_eq!(got.len(), 300 * 299 / 2 + 200 * 199 / 2);
}

#[test]
fn hashes_that_collide_in_every_block_are_verified_not_assumed() {
    // Every byte pattern repeated: all blocks of all block layouts look alike, so candidates
    // abound, yet only true distances may be reported.
    let mut h: Vec<u64> = (0..=255u64).map(|b| b * 0x0101_0101_0101_0101).collect();
    // Pairs that agree on all but one block per layout: low bits flipped in each byte.
    h.extend((0..256u64).map(|b| (b * 0x0101_0101_0101_0101) ^ 0x0101_0101_0101_0101));
    h.extend((0..200u64).map(|i| 0xAAAA_AAAA_AAAA_AAAA ^ (1 << (i % 64)) ^ (1 << ((i * 7) % 64))));
    for d in [1, 4, 8, 12, 16] {
        check(&h, d);
    }
}

#[test]
fn output_is_deterministic_and_each_pair_reported_once() {
    let h = clustered(5000, 5, 11);
    let a = near_duplicates(&h, 8, None).unwrap();
    let b = near_duplicates(&h, 8, None).unwrap();
    assert_eq!(a, b);
    let set: BTreeSet<(u32, u32)> = a.iter().map(|p| (p.i, p.j)).collect();
    assert_eq!(set.len(), a.len(), "a pair was reported twice");
    assert!(a.iter().all(|p| p.i < p.j));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn distinct_search_equals_brute_force(
        seed in any::<u64>(), n in 2usize..400, d in 0u32..=16, spread in 0u32..12
    ) {
        let h = clustered(n, spread, seed);
        let distinct = Distinct::new(&h).unwrap();
        let got = search_distinct(&distinct.values, d, None).unwrap();
        let want: Vec<Pair> = brute_force(&distinct.values, d);
        prop_assert_eq!(got, want);
    }
}

/// A few hundred thousand hashes against brute force (slow in debug: run with --release).
#[test]
#[ignore]
fn large_sets_match_brute_force() {
    for (h, d) in [
        (random(200_000, 5), 12),
        (clustered(300_000, 6, 6), 8),
        (clustered(200_000, 10, 8), 16),
    ] {
        let t = std::time::Instant::now();
        let got = near_duplicates(&h, d, None).unwrap();
        let dt = t.elapsed();
        assert_eq!(got, brute_force(&h, d));
        eprintln!("n={} d={d}: {} pairs in {dt:?}", h.len(), got.len());
    }
}

/// Speed probe (release): `cargo test --release --test dedup_search speed -- --ignored`.
#[test]
#[ignore]
fn speed() {
    let n: usize = std::env::var("DEDUP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    for d in [4, 8, 12] {
        for (name, h) in [("random", random(n, 1)), ("clustered", clustered(n, 4, 2))] {
            let t = std::time::Instant::now();
            let got = near_duplicates(&h, d, None).unwrap();
            eprintln!(
                "{name} n={n} d={d}: {} pairs in {:?}",
                got.len(),
                t.elapsed()
            );
        }
    }
}
