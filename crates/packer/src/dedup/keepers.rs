//! One keeper per cluster, and which samples the clusters drop.
//!
//! A sample is dropped as a near-duplicate when one of its images is a non-keeper of a cluster
//! whose keeper belongs to another sample (`--multi-image any`), or when all its hashed images
//! are (`all`). With `any`, a multi-image sample can be its cluster's keeper and still be
//! dropped, because another of its images lost in another cluster; that cluster would then
//! keep nothing. The rule, deterministic and documented in the README:
//!
//! 1. Each cluster's keeper is the best member by the keep rule (`--keep`) among the members
//!    of samples that are not contaminated (among all members if every one is).
//! 2. Then, in cluster order, each cluster whose keeper's sample is dropped picks again, by the
//!    keep rule, among the members whose sample would survive if it were the keeper here: not
//!    contaminated and not dropped by any other cluster.
//!
//! A re-pick never drops a sample that was kept (the other samples of the cluster were
//! non-keepers of it already, or are dropped elsewhere), so the kept samples only grow, and
//! one pass reaches the fixed point: afterwards a cluster keeps no sample only when each of its
//! samples is contaminated or dropped by another cluster's keeper. (Keeping a survivor in every
//! cluster whenever any assignment could is an exact-cover problem; the rule above is the
//! local guarantee, and it leaves clusters whose keeper survives untouched.)

use super::cluster::KeepRule;
use super::job::MultiImage;

/// What [`assign`] needs to know about the corpus.
pub struct Input<'a> {
    /// Clusters of image ids.
    pub clusters: &'a [Vec<u32>],
    pub sample_of: &'a [u32],
    pub pixels: &'a [u64],
    /// Per sample: dropped for contamination, whatever the clusters say.
    pub contaminated: &'a [bool],
    /// Per sample: images with a hash (what `--multi-image all` compares against).
    pub hashed_images: &'a [u32],
    pub keep: KeepRule,
    pub multi_image: MultiImage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepers {
    /// Per cluster: the keeper image.
    pub keeper: Vec<u32>,
    /// Per sample: the keeper of the first cluster (by id) that makes it a near-duplicate,
    /// `None` when the clusters keep it.
    pub dropped_by: Vec<Option<u32>>,
    /// Per cluster: its first keeper was replaced (step 2).
    pub repicked: Vec<bool>,
}

impl Input<'_> {
    fn dup(&self, s: usize, hits: u32) -> bool {
        match self.multi_image {
            MultiImage::Any => hits > 0,
            MultiImage::All => hits > 0 && hits >= self.hashed_images[s],
        }
    }

    fn sample(&self, img: u32) -> usize {
        self.sample_of[img as usize] as usize
    }

    /// Add (`sign` 1) or remove (`u32::MAX`, wrapping) cluster `c`'s hits under keeper `k`.
    fn count(&self, c: usize, k: u32, hits: &mut [u32], sign: u32) {
        let ks = self.sample(k);
        for &m in &self.clusters[c] {
            let s = self.sample(m);
            if s != ks {
                hits[s] = hits[s].wrapping_add(sign);
            }
        }
    }

    /// Best member by the keep rule among those passing `ok`, if any.
    fn best(&self, c: usize, ok: impl Fn(u32) -> bool) -> Option<u32> {
        let eligible: Vec<u32> = self.clusters[c]
            .iter()
            .copied()
            .filter(|&m| ok(m))
            .collect();
        (!eligible.is_empty()).then(|| self.keep.pick(&eligible, |i| self.pixels[i as usize]))
    }
}

/// Keepers and drops by the rule in the module docs.
pub fn assign(inp: &Input<'_>) -> Keepers {
    let ns = inp.contaminated.len();
    let mut keeper: Vec<u32> = (0..inp.clusters.len())
        .map(|c| {
            inp.best(c, |m| !inp.contaminated[inp.sample(m)])
                .unwrap_or_else(|| inp.best(c, |_| true).expect("a cluster has members"))
        })
        .collect();
    let mut hits = vec![0u32; ns];
    for (c, &k) in keeper.iter().enumerate() {
        inp.count(c, k, &mut hits, 1);
    }
    let kept = |s: usize, hits: &[u32]| !inp.contaminated[s] && !inp.dup(s, hits[s]);
    let mut repicked = vec![false; inp.clusters.len()];
    let mut in_c = vec![0u32; ns];
    for c in 0..inp.clusters.len() {
        let k = keeper[c];
        if kept(inp.sample(k), &hits) {
            continue;
        }
        // Hits each sample takes in this cluster under the current keeper.
        let ks = inp.sample(k);
        for &m in &inp.clusters[c] {
            let s = inp.sample(m);
            in_c[s] += u32::from(s != ks);
        }
        let survives = |m: u32| {
            let s = inp.sample(m);
            !inp.contaminated[s] && !inp.dup(s, hits[s] - in_c[s])
        };
        let pick = inp.best(c, survives);
        for &m in &inp.clusters[c] {
            in_c[inp.sample(m)] = 0;
        }
        if let Some(new) = pick {
            inp.count(c, k, &mut hits, u32::MAX);
            inp.count(c, new, &mut hits, 1);
            keeper[c] = new;
            repicked[c] = true;
        }
    }
    let mut dropped_by = vec![None; ns];
    for (c, &k) in keeper.iter().enumerate() {
        let ks = inp.sample(k);
        for &m in &inp.clusters[c] {
            let s = inp.sample(m);
            if s != ks && inp.dup(s, hits[s]) {
                dropped_by[s].get_or_insert(k);
            }
        }
    }
    Keepers {
        keeper,
        dropped_by,
        repicked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples as lists of (cluster or None, pixels) per image.
    struct Case {
        clusters: Vec<Vec<u32>>,
        sample_of: Vec<u32>,
        pixels: Vec<u64>,
        hashed: Vec<u32>,
    }

    fn case(samples: &[&[(Option<usize>, u64)]], n_clusters: usize) -> Case {
        let mut c = Case {
            clusters: vec![Vec::new(); n_clusters],
            sample_of: Vec::new(),
            pixels: Vec::new(),
            hashed: Vec::new(),
        };
        for (s, images) in samples.iter().enumerate() {
            for &(cl, px) in images.iter() {
                let img = c.pixels.len() as u32;
                if let Some(cl) = cl {
                    c.clusters[cl].push(img);
                }
                c.sample_of.push(s as u32);
                c.pixels.push(px);
            }
            c.hashed.push(images.len() as u32);
        }
        c
    }

    fn run(c: &Case, contaminated: &[bool], keep: KeepRule, multi: MultiImage) -> Keepers {
        assign(&Input {
            clusters: &c.clusters,
            sample_of: &c.sample_of,
            pixels: &c.pixels,
            contaminated,
            hashed_images: &c.hashed,
            keep,
            multi_image: multi,
        })
    }

    #[test]
    fn a_keeper_dropped_elsewhere_is_replaced_by_the_next_best() {
        // a: one image in cluster 0 (small); b: images in clusters 0 (largest) and 1 (small);
        // c: cluster 1 (largest). b loses cluster 1 to c, so cluster 0 keeps a instead.
        let c = case(
            &[
                &[(Some(0), 10)],
                &[(Some(0), 99), (Some(1), 5)],
                &[(Some(1), 50)],
            ],
            2,
        );
        let k = run(&c, &[false; 3], KeepRule::Largest, MultiImage::Any);
        assert_eq!(k.keeper, vec![0, 3]);
        assert_eq!(k.dropped_by, vec![None, Some(0), None]);
        assert_eq!(k.repicked, vec![true, false]);
        // With `all`, b keeps cluster 0 (its image there is no duplicate): no re-pick.
        let k = run(&c, &[false; 3], KeepRule::Largest, MultiImage::All);
        assert_eq!((k.keeper, k.repicked), (vec![1, 3], vec![false; 2]));
    }

    #[test]
    fn contaminated_samples_are_not_keepers_unless_all_are() {
        let c = case(&[&[(Some(0), 10)], &[(Some(0), 99)]], 1);
        let k = run(&c, &[false, true], KeepRule::Largest, MultiImage::Any);
        assert_eq!(k.keeper, vec![0]);
        assert_eq!(k.dropped_by, vec![None, Some(0)]);
        let k = run(&c, &[true, true], KeepRule::Largest, MultiImage::Any);
        assert_eq!(k.keeper, vec![1]);
    }

    fn lcg(s: &mut u64) -> u64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s >> 33
    }

    /// On random corpora of one- to three-image samples: every cluster keeps a sample unless
    /// each of its samples is contaminated or dropped by another cluster (no cluster could fix
    /// itself alone); the result is a fixed point of the re-pick; the same input gives the
    /// same keepers.
    #[test]
    fn every_cluster_keeps_a_survivor_when_it_alone_can() {
        let mut seed = 11u64;
        for round in 0..400 {
            let n_clusters = 1 + (lcg(&mut seed) % 6) as usize;
            let ns = 2 + (lcg(&mut seed) % 8) as usize;
            let mut specs: Vec<Vec<(Option<usize>, u64)>> = Vec::new();
            for _ in 0..ns {
                let n = 1 + (lcg(&mut seed) % 3) as usize;
                specs.push(
                    (0..n)
                        .map(|_| {
                            let cl = lcg(&mut seed) % (n_clusters as u64 + 1);
                            let cl = (cl < n_clusters as u64).then_some(cl as usize);
                            (cl, lcg(&mut seed) % 5)
                        })
                        .collect(),
                );
            }
            let refs: Vec<&[(Option<usize>, u64)]> = specs.iter().map(|v| v.as_slice()).collect();
            let mut c = case(&refs, n_clusters);
            c.clusters.retain(|m| {
                let mut s: Vec<u32> = m.iter().map(|&i| c.sample_of[i as usize]).collect();
                s.dedup();
                m.len() >= 2 && s.len() >= 2
            });
            let contaminated: Vec<bool> = (0..ns).map(|_| lcg(&mut seed) % 7 == 0).collect();
            for multi in [MultiImage::Any, MultiImage::All] {
                let k = run(&c, &contaminated, KeepRule::Largest, multi);
                assert_eq!(k, run(&c, &contaminated, KeepRule::Largest, multi));
                let dropped = |s: usize| contaminated[s] || k.dropped_by[s].is_some();
                for (ci, members) in c.clusters.iter().enumerate() {
                    let ks = c.sample_of[k.keeper[ci] as usize] as usize;
                    assert!(members.contains(&k.keeper[ci]));
                    if !dropped(ks) {
                        continue;
                    }
                    // No survivor: each member's sample is lost outside this cluster.
                    for &m in members {
                        let s = c.sample_of[m as usize] as usize;
                        let outside = c.clusters.iter().enumerate().any(|(cj, other)| {
                            let kj = c.sample_of[k.keeper[cj] as usize] as usize;
                            cj != ci
                                && kj != s
                                && other.iter().any(|&x| c.sample_of[x as usize] as usize == s)
                        });
                        let lost = match multi {
                            MultiImage::Any => outside,
                            MultiImage::All => false,
                        };
                        assert!(
                            contaminated[s] || lost,
                            "round {round} {multi:?}: cluster {ci} could keep sample {s}"
                        );
                    }
                }
            }
        }
    }
}
