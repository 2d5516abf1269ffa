//! Pairs → connected components (union-find) → one keeper per component.

/// Which member of a cluster is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepRule {
    /// Most pixels, ties broken by the earliest input position.
    #[default]
    Largest,
    /// The earliest input position.
    First,
}

impl std::str::FromStr for KeepRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "largest" => Ok(KeepRule::Largest),
            "first" => Ok(KeepRule::First),
            _ => Err(format!("--keep must be largest or first, not {s:?}")),
        }
    }
}

impl KeepRule {
    pub fn name(self) -> &'static str {
        match self {
            KeepRule::Largest => "largest",
            KeepRule::First => "first",
        }
    }

    /// The keeper among `members` (input positions, any order) with their pixel counts.
    /// Deterministic: never depends on the order of `members`.
    pub fn pick(self, members: &[u32], pixels: impl Fn(u32) -> u64) -> u32 {
        let best = match self {
            KeepRule::Largest => members
                .iter()
                .copied()
                .max_by(|&a, &b| pixels(a).cmp(&pixels(b)).then(b.cmp(&a))),
            KeepRule::First => members.iter().copied().min(),
        };
        best.expect("a cluster has members")
    }
}

/// Disjoint sets over `0..n` with path halving and union by size.
pub struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = self.parent[x as usize];
        }
        x
    }

    /// Merge the sets of `a` and `b`; true when they were separate.
    pub fn union(&mut self, a: u32, b: u32) -> bool {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return false;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
        true
    }

    /// Components with at least two members, each sorted ascending, ordered by their first
    /// (smallest) member — a deterministic numbering.
    pub fn clusters(&mut self) -> Vec<Vec<u32>> {
        let n = self.parent.len();
        let mut slot = vec![u32::MAX; n];
        let mut out: Vec<Vec<u32>> = Vec::new();
        for x in 0..n as u32 {
            let r = self.find(x);
            if self.size[r as usize] < 2 {
                continue;
            }
            if slot[r as usize] == u32::MAX {
                slot[r as usize] = out.len() as u32;
                out.push(Vec::new());
            }
            out[slot[r as usize] as usize].push(x);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_find_is_transitive() {
        let mut uf = UnionFind::new(8);
        uf.union(0, 3);
        uf.union(3, 5);
        uf.union(6, 7);
        assert_eq!(uf.find(0), uf.find(5));
        assert_ne!(uf.find(0), uf.find(6));
        assert_eq!(uf.clusters(), vec![vec![0, 3, 5], vec![6, 7]]);
        assert!(!uf.union(5, 0), "already joined");
    }

    #[test]
    fn chains_join_in_any_order() {
        // a-b, c-d, b-c: one component whatever the pair order.
        for order in [[(0, 1), (2, 3), (1, 2)], [(1, 2), (2, 3), (0, 1)]] {
            let mut uf = UnionFind::new(4);
            for (a, b) in order {
                uf.union(a, b);
            }
            assert_eq!(uf.clusters(), vec![vec![0, 1, 2, 3]]);
        }
    }

    #[test]
    fn largest_keeps_most_pixels_then_earliest() {
        let px = |i: u32| [100u64, 400, 400, 50][i as usize];
        assert_eq!(KeepRule::Largest.pick(&[0, 1, 2, 3], px), 1);
        assert_eq!(KeepRule::Largest.pick(&[3, 2, 1, 0], px), 1);
        assert_eq!(KeepRule::Largest.pick(&[0, 3], px), 0);
        assert_eq!(KeepRule::First.pick(&[3, 2, 1], px), 1);
    }

    #[test]
    fn keep_rule_parses() {
        assert_eq!("first".parse::<KeepRule>(), Ok(KeepRule::First));
        assert!("biggest".parse::<KeepRule>().is_err());
    }
}
