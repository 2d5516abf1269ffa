//! Offline sequence packing: best-fit-decreasing over token lengths, with an optional second
//! cap on vision-tower cost (image tokens) per pack. Pure: no I/O.
//!
//! Algorithm
//! - Items are visited by (length desc, index asc) — a counting sort over `0..=max_len`, so the
//!   order is O(n + max_len) and fully deterministic.
//! - Open packs are grouped by their remaining token capacity `r ∈ 0..=max_len`; a two-level
//!   bitset marks the non-empty groups, so "the smallest r ≥ len" (best fit) is a couple of
//!   word scans (O(max_len / 4096) worst case, effectively O(1)).
//! - Within a group all packs fit equally well on tokens. Each group is a max-heap on the
//!   remaining image budget (ties → lowest pack id), so the pack with the most vision budget
//!   left is tried. Without `max_image_tokens` every budget is "infinite" and the first group
//!   found is the answer: plain best-fit-decreasing.
//! - With `max_image_tokens`, a group whose best budget is too small is skipped and the next
//!   larger group tried, up to [`MAX_GROUPS_SEARCHED`] groups (bounded search); if none fits,
//!   a new pack is opened. Best fit on tokens among packs whose image budget fits, in other
//!   words, with a bounded look-ahead so the worst case stays O(n · 64 log n).
//! - Items over either cap are rejected with a reason, never truncated or dropped.
//!
//! Output: packs ordered by their smallest item index (packs roughly follow corpus order), and
//! each pack's items in ascending index order, so a reader streaming the corpus touches packs
//! in a predictable order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How many capacity groups a single item may inspect when the image cap is active.
pub const MAX_GROUPS_SEARCHED: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackConfig {
    /// Capacity of a pack in tokens.
    pub max_len: u32,
    /// Optional cap on Σ image tokens per pack (vision-tower cost).
    pub max_image_tokens: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The sample alone is longer than `max_len`.
    TooLong { length: u32, max_len: u32 },
    /// The sample alone has more image tokens than `max_image_tokens`.
    TooManyImageTokens {
        image_tokens: u32,
        max_image_tokens: u32,
    },
}

impl RejectReason {
    /// A short category for statistics (`rejects_by_reason`).
    pub fn category(&self) -> &'static str {
        match self {
            RejectReason::TooLong { .. } => "longer than max_len",
            RejectReason::TooManyImageTokens { .. } => "more image tokens than max_image_tokens",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::TooLong { length, max_len } => {
                write!(f, "length {length} > max_len {max_len}")
            }
            RejectReason::TooManyImageTokens {
                image_tokens,
                max_image_tokens,
            } => {
                write!(
                    f,
                    "image tokens {image_tokens} > max_image_tokens {max_image_tokens}"
                )
            }
        }
    }
}

/// Result of packing: packs in compressed (CSR) form plus rejects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Packing {
    /// `items[offsets[p]..offsets[p + 1]]` are the sample indices of pack `p`.
    pub offsets: Vec<usize>,
    pub items: Vec<u32>,
    /// Rejected sample indices (ascending) with their reasons.
    pub rejects: Vec<(u32, RejectReason)>,
}

impl Packing {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn pack(&self, p: usize) -> &[u32] {
        &self.items[self.offsets[p]..self.offsets[p + 1]]
    }
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> + '_ {
        (0..self.len()).map(move |p| self.pack(p))
    }
}

/// A set of integers in `0..n` with "next member ≥ x" in two word scans per level.
struct BitTree {
    low: Vec<u64>,
    high: Vec<u64>,
}

impl BitTree {
    fn new(n: usize) -> Self {
        let words = n.div_ceil(64).max(1);
        BitTree {
            low: vec![0; words],
            high: vec![0; words.div_ceil(64)],
        }
    }
    fn insert(&mut self, i: usize) {
        self.low[i / 64] |= 1 << (i % 64);
        self.high[i / 4096] |= 1 << ((i / 64) % 64);
    }
    fn remove(&mut self, i: usize) {
        self.low[i / 64] &= !(1 << (i % 64));
        if self.low[i / 64] == 0 {
            self.high[i / 4096] &= !(1 << ((i / 64) % 64));
        }
    }
    /// Smallest member ≥ `from`.
    fn next(&self, from: usize) -> Option<usize> {
        let w = from / 64;
        if w >= self.low.len() {
            return None;
        }
        let bits = self.low[w] & (!0u64 << (from % 64));
        if bits != 0 {
            return Some(w * 64 + bits.trailing_zeros() as usize);
        }
        // Next non-empty low word after `w`, via the high level.
        let (hw, hb) = ((w + 1) / 64, (w + 1) % 64);
        if hw >= self.high.len() {
            return None;
        }
        let mut bits = if hb == 0 {
            self.high[hw]
        } else {
            self.high[hw] & (!0u64 << hb)
        };
        let mut h = hw;
        loop {
            if bits != 0 {
                let lw = h * 64 + bits.trailing_zeros() as usize;
                return Some(lw * 64 + self.low[lw].trailing_zeros() as usize);
            }
            h += 1;
            if h >= self.high.len() {
                return None;
            }
            bits = self.high[h];
        }
    }
}

/// Pack items of `lengths` tokens (and `image_tokens[i]` image tokens, if given) into packs of
/// at most `cfg.max_len` tokens (and `cfg.max_image_tokens` image tokens).
///
/// Panics if `image_tokens` is given with a different length than `lengths`, or if there are
/// more than `u32::MAX` items.
pub fn pack(lengths: &[u32], image_tokens: Option<&[u32]>, cfg: &PackConfig) -> Packing {
    let n = lengths.len();
    assert!(n <= u32::MAX as usize, "at most u32::MAX items");
    if let Some(it) = image_tokens {
        assert_eq!(it.len(), n, "image_tokens must have one entry per length");
    }
    let cap = cfg.max_len as usize;
    // Image tokens only matter under a cap; without one every budget is infinite.
    let img = |i: usize| match (cfg.max_image_tokens, image_tokens) {
        (Some(_), Some(t)) => t[i],
        _ => 0,
    };
    let img_cap = cfg.max_image_tokens.unwrap_or(u32::MAX);

    // Rejects, then a counting sort of the rest by length descending (index ascending within
    // a length, because indices are visited in order).
    let mut rejects = Vec::new();
    let mut count = vec![0usize; cap + 2];
    for (i, &l) in lengths.iter().enumerate() {
        if l > cfg.max_len {
            rejects.push((
                i as u32,
                RejectReason::TooLong {
                    length: l,
                    max_len: cfg.max_len,
                },
            ));
        } else if img(i) > img_cap {
            let reason = RejectReason::TooManyImageTokens {
                image_tokens: img(i),
                max_image_tokens: img_cap,
            };
            rejects.push((i as u32, reason));
        } else {
            count[cap - l as usize + 1] += 1;
        }
    }
    for k in 1..count.len() {
        count[k] += count[k - 1];
    }
    let placed = n - rejects.len();
    let mut order = vec![0u32; placed];
    let mut next_reject = 0;
    for (i, &l) in lengths.iter().enumerate() {
        if rejects.get(next_reject).is_some_and(|r| r.0 as usize == i) {
            next_reject += 1;
            continue;
        }
        let slot = &mut count[cap - l as usize];
        order[*slot] = i as u32;
        *slot += 1;
    }
    drop(count);

    // Best fit over capacity groups.
    let mut bin_of = vec![0u32; n];
    let mut groups: Vec<BinaryHeap<(u32, Reverse<u32>)>> =
        (0..=cap).map(|_| BinaryHeap::new()).collect();
    let mut nonempty = BitTree::new(cap + 1);
    let mut bins = 0u32;
    for &i in &order {
        let (l, need) = (lengths[i as usize] as usize, img(i as usize));
        let mut found = None;
        let mut from = l;
        for _ in 0..MAX_GROUPS_SEARCHED {
            let Some(r) = nonempty.next(from) else { break };
            let &(budget, Reverse(b)) = groups[r].peek().expect("non-empty group");
            if budget >= need {
                groups[r].pop();
                if groups[r].is_empty() {
                    nonempty.remove(r);
                }
                found = Some((r, budget, b));
                break;
            }
            debug_assert!(
                cfg.max_image_tokens.is_some(),
                "infinite budget always fits"
            );
            from = r + 1;
        }
        let (r, budget, b) = found.unwrap_or_else(|| {
            bins += 1;
            (cap, img_cap, bins - 1)
        });
        bin_of[i as usize] = b;
        let (r2, budget2) = (r - l, budget - need);
        if groups[r2].is_empty() {
            nonempty.insert(r2);
        }
        groups[r2].push((budget2, Reverse(b)));
    }
    drop(groups);
    drop(order);

    // Renumber packs by their smallest item; fill CSR in index order.
    let unassigned = u32::MAX;
    let mut rank = vec![unassigned; bins as usize];
    let mut sizes: Vec<usize> = Vec::with_capacity(bins as usize);
    let mut next_reject = 0;
    for (i, bin) in bin_of.iter_mut().enumerate() {
        if rejects.get(next_reject).is_some_and(|r| r.0 as usize == i) {
            next_reject += 1;
            *bin = unassigned;
            continue;
        }
        let b = *bin as usize;
        if rank[b] == unassigned {
            rank[b] = sizes.len() as u32;
            sizes.push(0);
        }
        *bin = rank[b];
        sizes[rank[b] as usize] += 1;
    }
    let mut offsets = Vec::with_capacity(sizes.len() + 1);
    offsets.push(0);
    for s in &sizes {
        offsets.push(offsets.last().unwrap() + s);
    }
    let mut fill = offsets[..sizes.len()].to_vec();
    let mut items = vec![0u32; placed];
    for (i, &p) in bin_of.iter().enumerate() {
        if p != unassigned {
            items[fill[p as usize]] = i as u32;
            fill[p as usize] += 1;
        }
    }
    Packing {
        offsets,
        items,
        rejects,
    }
}

/// Summary numbers of a packing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PackSummary {
    pub packs: u64,
    pub samples: u64,
    pub rejects: u64,
    pub total_tokens: u64,
    /// ⌈Σ len / max_len⌉ over the placed samples: no packing can use fewer packs.
    pub lower_bound: u64,
    /// lower_bound / packs (1.0 = optimal).
    pub fill_efficiency: f64,
    /// Σ len / (packs · max_len).
    pub mean_fill: f64,
    /// Packs filled below 90% of max_len.
    pub packs_under_90: u64,
}

pub fn summarize(lengths: &[u32], p: &Packing, max_len: u32) -> PackSummary {
    let mut total = 0u64;
    let mut under = 0u64;
    for items in p.iter() {
        let t: u64 = items.iter().map(|&i| lengths[i as usize] as u64).sum();
        total += t;
        under += (t * 10 < max_len as u64 * 9) as u64;
    }
    let packs = p.len() as u64;
    let lower_bound = total.div_ceil(max_len as u64);
    PackSummary {
        packs,
        samples: p.items.len() as u64,
        rejects: p.rejects.len() as u64,
        total_tokens: total,
        lower_bound,
        fill_efficiency: if packs == 0 {
            1.0
        } else {
            lower_bound as f64 / packs as f64
        },
        mean_fill: if packs == 0 {
            0.0
        } else {
            total as f64 / (packs as f64 * max_len as f64)
        },
        packs_under_90: under,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(max_len: u32, cap: Option<u32>) -> PackConfig {
        PackConfig {
            max_len,
            max_image_tokens: cap,
        }
    }

    /// Every index exactly once (pack or reject), no pack over either cap.
    fn check(lengths: &[u32], imgs: Option<&[u32]>, c: &PackConfig, p: &Packing) {
        let mut seen = vec![0u8; lengths.len()];
        for items in p.iter() {
            assert!(!items.is_empty());
            assert!(items.windows(2).all(|w| w[0] < w[1]), "items ascending");
            let t: u64 = items.iter().map(|&i| lengths[i as usize] as u64).sum();
            assert!(t <= c.max_len as u64, "pack over max_len");
            if let (Some(cap), Some(im)) = (c.max_image_tokens, imgs) {
                let v: u64 = items.iter().map(|&i| im[i as usize] as u64).sum();
                assert!(v <= cap as u64, "pack over image cap");
            }
            for &i in items {
                seen[i as usize] += 1;
            }
        }
        for (i, _) in &p.rejects {
            seen[*i as usize] += 1;
        }
        assert!(seen.iter().all(|&s| s == 1), "every item exactly once");
        let firsts: Vec<u32> = p.iter().map(|x| x[0]).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "packs ordered by smallest index"
        );
    }

    #[test]
    fn bittree_next() {
        let mut t = BitTree::new(10_000);
        assert_eq!(t.next(0), None);
        for i in [3, 64, 4095, 4096, 9999] {
            t.insert(i);
        }
        assert_eq!(t.next(0), Some(3));
        assert_eq!(t.next(4), Some(64));
        assert_eq!(t.next(65), Some(4095));
        assert_eq!(t.next(4096), Some(4096));
        assert_eq!(t.next(4097), Some(9999));
        t.remove(9999);
        assert_eq!(t.next(4097), None);
        assert_eq!(t.next(20_000), None);
    }

    #[test]
    fn best_fit_decreasing_small_example() {
        // Sorted: 6(0) 5(2) 4(1) 3(4) 2(3) 1(5); capacity 10.
        let l = [6, 4, 5, 2, 3, 1];
        let p = pack(&l, None, &cfg(10, None));
        check(&l, None, &cfg(10, None), &p);
        // 6 → A(4 left); 5 → B(5); 4 → A (best fit, 0 left); 3 → B(2); 2 → B(0); 1 → C.
        let packs: Vec<Vec<u32>> = p.iter().map(|x| x.to_vec()).collect();
        assert_eq!(packs, vec![vec![0, 1], vec![2, 3, 4], vec![5]]);
    }

    #[test]
    fn rejects_carry_reasons() {
        let l = [10, 11, 3];
        let im = [0, 0, 9];
        let c = cfg(10, Some(8));
        let p = pack(&l, Some(&im), &c);
        check(&l, Some(&im), &c, &p);
        assert_eq!(
            p.rejects[0],
            (
                1,
                RejectReason::TooLong {
                    length: 11,
                    max_len: 10
                }
            )
        );
        assert_eq!(
            p.rejects[1],
            (
                2,
                RejectReason::TooManyImageTokens {
                    image_tokens: 9,
                    max_image_tokens: 8
                }
            )
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn image_cap_splits_vision_heavy_items() {
        // Token-wise all four fit in one pack; the image cap forces two.
        let l = [10, 10, 10, 10];
        let im = [6, 6, 1, 1];
        let c = cfg(100, Some(8));
        let p = pack(&l, Some(&im), &c);
        check(&l, Some(&im), &c, &p);
        assert_eq!(p.len(), 2);
        assert_eq!(pack(&l, None, &cfg(100, None)).len(), 1);
    }

    #[test]
    fn summary_counts() {
        let l = [5, 5, 9];
        let p = pack(&l, None, &cfg(10, None));
        let s = summarize(&l, &p, 10);
        assert_eq!(
            (s.packs, s.lower_bound, s.total_tokens, s.packs_under_90),
            (2, 2, 19, 0)
        );
        assert_eq!(s.fill_efficiency, 1.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn every_item_once_and_within_caps(
            items in prop::collection::vec((0u32..1200, 0u32..600), 0..400),
            max_len in 1u32..1100,
            img_cap in prop::option::of(1u32..700),
        ) {
            let l: Vec<u32> = items.iter().map(|x| x.0).collect();
            let im: Vec<u32> = items.iter().map(|x| x.1.min(x.0)).collect();
            let c = cfg(max_len, img_cap);
            let p = pack(&l, Some(&im), &c);
            check(&l, Some(&im), &c, &p);
            // Deterministic.
            prop_assert_eq!(&p, &pack(&l, Some(&im), &c));
            // Without the image cap, never worse than one pack per item and never below the bound.
            let p2 = pack(&l, None, &cfg(max_len, None));
            check(&l, None, &cfg(max_len, None), &p2);
            let s = summarize(&l, &p2, max_len);
            prop_assert!(s.packs >= s.lower_bound);
        }
    }
}
