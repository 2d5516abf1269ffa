//! `--verify dhash`: a pair of training images within the phash distance only counts (joins a
//! cluster) when their dhashes are within `--verify-distance` too, which cuts the false pairs
//! of a 64-bit phash between distinct photos with the same coarse layout.
//!
//! Pairs come in groups (every image of one phash value, or every image of one value against
//! every image of another), and a group can be huge (thousands of flat all-zero images). So
//! large groups are not checked pair by pair: their dhashes are grouped by value (equal dhashes
//! always pass) and the distinct values searched with the same exact search as the phashes;
//! the verified pairs are then counted and linked per value, never listed.

use std::path::Path;

use super::corpus::Corpus;
use super::search::{search_distinct, Distinct, MAX_DISTANCE};
use crate::error::{PackError, Result};

/// What a candidate pair is verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    #[default]
    Off,
    /// The build's 64-bit dhash (`llava-pack build --dhash`).
    Dhash,
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" | "none" => Ok(Verify::Off),
            "dhash" => Ok(Verify::Dhash),
            _ => Err(format!("--verify must be dhash, not {s:?}")),
        }
    }
}

impl Verify {
    pub fn name(self) -> &'static str {
        match self {
            Verify::Off => "off",
            Verify::Dhash => "dhash",
        }
    }
}

/// Default `--verify-distance` (dhash bits).
pub const DEFAULT_VERIFY_DISTANCE: u32 = 10;

/// Groups smaller than this are checked pair by pair.
const SMALL: usize = 48;

/// The dhash of each training image in `hashed` (corpus image ids), or a clear error naming
/// the manifest or the first image without one.
pub(crate) fn dhashes(c: &Corpus, dir: &Path, hashed: &[u32]) -> Result<Vec<u64>> {
    if c.dhash_built == Some(false) {
        return Err(PackError::input(
            dir.join("manifest.json"),
            "--verify dhash: this build has no dhashes (built without --dhash); rebuild with \
             --dhash or drop --verify",
        ));
    }
    hashed
        .iter()
        .map(|&img| {
            c.dhash[img as usize].ok_or_else(|| {
                let s = &c.samples[c.sample_of[img as usize] as usize];
                PackError::input(
                    dir.join(&c.shards[s.shard as usize]),
                    format!(
                        "--verify dhash: sample {:?} images[{}] has a phash but no dhash \
                         (build with --dhash)",
                        s.key,
                        img - s.first_image
                    ),
                )
            })
        })
        .collect()
}

/// Counts and links the verified pairs of candidate groups.
pub(crate) struct Linker<'a> {
    /// dhash by training position (the ids in the groups).
    dhash: &'a [u64],
    max: u32,
    /// Candidate pairs whose dhash distance exceeded `max`.
    pub rejected: u64,
}

impl<'a> Linker<'a> {
    pub fn new(dhash: &'a [u64], max: u32) -> Self {
        assert!(max <= MAX_DISTANCE);
        Linker {
            dhash,
            max,
            rejected: 0,
        }
    }

    fn close(&self, x: u32, y: u32) -> bool {
        (self.dhash[x as usize] ^ self.dhash[y as usize]).count_ones() <= self.max
    }

    /// Verified pairs among `a` (all one phash value): calls `join` with enough of them to
    /// connect what they connect, returns how many there are.
    pub fn within(&mut self, a: &[u32], join: &mut dyn FnMut(u32, u32)) -> u64 {
        self.link(a, &[], join)
    }

    /// Verified pairs `(x in a, y in b)` (two phash values within the distance).
    pub fn cross(&mut self, a: &[u32], b: &[u32], join: &mut dyn FnMut(u32, u32)) -> u64 {
        if a.is_empty() || b.is_empty() {
            return 0;
        }
        self.link(a, b, join)
    }

    fn link(&mut self, a: &[u32], b: &[u32], join: &mut dyn FnMut(u32, u32)) -> u64 {
        let cross = !b.is_empty();
        let (na, nb) = (a.len() as u64, b.len() as u64);
        let candidates = if cross {
            na * nb
        } else {
            na * na.saturating_sub(1) / 2
        };
        let ok = if a.len() + b.len() <= SMALL {
            self.pairwise(a, b, join)
        } else {
            self.grouped(a, b, join)
        };
        self.rejected += candidates - ok;
        ok
    }

    fn pairwise(&self, a: &[u32], b: &[u32], join: &mut dyn FnMut(u32, u32)) -> u64 {
        let mut ok = 0;
        for (i, &x) in a.iter().enumerate() {
            let others = if b.is_empty() { &a[i + 1..] } else { b };
            for &y in others {
                if self.close(x, y) {
                    ok += 1;
                    join(x, y);
                }
            }
        }
        ok
    }

    /// Same result as [`Linker::pairwise`] without visiting every pair. In cross mode, the
    /// members of one side with equal dhash are already linked (they share the phash value
    /// and the dhash, so the `within` pass joined them): one representative per side suffices.
    fn grouped(&self, a: &[u32], b: &[u32], join: &mut dyn FnMut(u32, u32)) -> u64 {
        let cross = !b.is_empty();
        let items: Vec<u32> = a.iter().chain(b).copied().collect();
        let vals: Vec<u64> = items.iter().map(|&x| self.dhash[x as usize]).collect();
        let dist = Distinct::new(&vals).expect("a group fits in u32");
        // Per dhash value: first member and member count on each side (members ascending,
        // so side a's positions come first).
        let reps: Vec<([Option<u32>; 2], [u64; 2])> = (0..dist.values.len())
            .map(|u| {
                let m = dist.members(u);
                let t = m.partition_point(|&p| (p as usize) < a.len());
                let first = |s: &[u32]| s.first().map(|&p| items[p as usize]);
                (
                    [first(&m[..t]), first(&m[t..])],
                    [t as u64, (m.len() - t) as u64],
                )
            })
            .collect();
        let mut ok = 0;
        for (u, (r, c)) in reps.iter().enumerate() {
            if cross {
                ok += c[0] * c[1];
                if let (Some(x), Some(y)) = (r[0], r[1]) {
                    join(x, y);
                }
            } else {
                ok += c[0] * c[0].saturating_sub(1) / 2;
                for w in dist.members(u).windows(2) {
                    join(items[w[0] as usize], items[w[1] as usize]);
                }
            }
        }
        let pairs = search_distinct(&dist.values, self.max, None).expect("distance checked");
        for p in pairs {
            let ((ru, cu), (rv, cv)) = (reps[p.i as usize], reps[p.j as usize]);
            ok += cu[0] * cv[1] + cu[1] * cv[0];
            if !cross {
                ok += cu[0] * cv[0];
            }
            let links = if cross {
                [(ru[0], rv[1]), (ru[1], rv[0])]
            } else {
                [(ru[0], rv[0]), (None, None)]
            };
            for (x, y) in links {
                if let (Some(x), Some(y)) = (x, y) {
                    join(x, y);
                }
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::UnionFind;

    fn lcg(s: &mut u64) -> u64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s ^ (*s >> 31)
    }

    /// Grouped and pairwise linking agree on the count and the components, within and cross,
    /// on groups with many equal dhashes and near ones.
    #[test]
    fn grouped_linking_equals_pairwise() {
        let mut s = 9u64;
        let centres: Vec<u64> = (0..6).map(|_| lcg(&mut s)).collect();
        let dh: Vec<u64> = (0..300)
            .map(|_| {
                let mut h = centres[(lcg(&mut s) % 6) as usize];
                for _ in 0..lcg(&mut s) % 5 {
                    h ^= 1 << (lcg(&mut s) % 64);
                }
                h
            })
            .collect();
        let ids: Vec<u32> = (0..300).collect();
        for max in [0u32, 2, 6] {
            for (a, b) in [(&ids[..], &ids[..0]), (&ids[..120], &ids[120..])] {
                let mut results = Vec::new();
                for grouped in [false, true] {
                    let l = Linker::new(&dh, max);
                    let mut uf = UnionFind::new(300);
                    let mut join = |x: u32, y: u32| {
                        uf.union(x, y);
                    };
                    // As in the job: each side's own pairs are linked before the cross pairs.
                    if !b.is_empty() {
                        l.pairwise(a, &[], &mut join);
                        l.pairwise(b, &[], &mut join);
                    }
                    let n = if grouped {
                        l.grouped(a, b, &mut join)
                    } else {
                        l.pairwise(a, b, &mut join)
                    };
                    results.push((n, uf.clusters()));
                }
                assert_eq!(results[0], results[1], "max={max} cross={}", !b.is_empty());
            }
        }
    }

    #[test]
    fn rejected_counts_candidates_minus_verified() {
        let dh = [0u64, 0b1, 0xff, 0xffff];
        let mut l = Linker::new(&dh, 1);
        let mut pairs = Vec::new();
        let n = l.within(&[0, 1, 2, 3], &mut |x, y| pairs.push((x, y)));
        assert_eq!((n, l.rejected), (1, 5));
        assert_eq!(pairs, vec![(0, 1)]);
        assert_eq!(l.cross(&[0], &[1, 2], &mut |_, _| {}), 1);
        assert_eq!(l.rejected, 6);
        assert_eq!("dhash".parse::<Verify>(), Ok(Verify::Dhash));
        assert!("phash".parse::<Verify>().is_err());
    }
}
