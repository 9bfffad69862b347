//! Gradient-boosted decision trees for the failure model: logistic loss, second-order (Newton)
//! leaf values, shrinkage, level-wise trees of a fixed depth, split candidates from histogram
//! bins, and monotone constraints (XGBoost's scheme: a split on an increasing feature must
//! give its left child a value no higher than its right one, and the children's subtrees are
//! bounded by the midpoint, so the whole ensemble never decreases in that feature). Fully
//! deterministic: no sampling, fixed iteration order.

use std::collections::HashMap;

use anyhow::Context;
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct Params {
    pub rounds: usize,
    pub depth: usize,
    /// Shrinkage: each tree's values are scaled by this.
    pub eta: f64,
    /// L2 penalty on leaf values.
    pub lambda: f64,
    /// A child needs at least this much hessian, and this share of all the rows' weight.
    pub min_child_hess: f64,
    pub min_child_share: f64,
    /// A split must lower the loss by at least this much.
    pub min_gain: f64,
    /// Split candidates per feature (at most 255).
    pub bins: usize,
    /// Per feature: 1 = the output never decreases as it grows, 0 = free.
    pub monotone: Vec<i8>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Node {
    /// `x[feature] <= threshold` goes to `left`. `value` is what the tree would give if it
    /// stopped here (used to attribute the output to features, as in Saabas' method).
    Split {
        feature: usize,
        threshold: f64,
        value: f64,
        left: usize,
        right: usize,
    },
    Leaf {
        value: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tree {
    /// `nodes[0]` is the root.
    pub nodes: Vec<Node>,
}

impl Tree {
    fn value_of(&self, n: usize) -> f64 {
        match self.nodes[n] {
            Node::Split { value, .. } | Node::Leaf { value } => value,
        }
    }

    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut n = 0;
        loop {
            match self.nodes[n] {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                    ..
                } => n = if x[feature] <= threshold { left } else { right },
                Node::Leaf { value } => return value,
            }
        }
    }

    /// The output, as the root's value plus, per feature, the value changes along the path
    /// (added to `contrib`). Returns (root value, output).
    pub fn explain(&self, x: &[f64], contrib: &mut [f64]) -> (f64, f64) {
        let root = self.value_of(0);
        let mut n = 0;
        loop {
            match self.nodes[n] {
                Node::Split {
                    feature,
                    threshold,
                    value,
                    left,
                    right,
                } => {
                    let next = if x[feature] <= threshold { left } else { right };
                    contrib[feature] += self.value_of(next) - value;
                    n = next;
                }
                Node::Leaf { value } => return (root, value),
            }
        }
    }

    /// One line: the nodes in pre-order, a split as `FEATURE:THRESHOLD:VALUE`, a leaf as
    /// `VALUE` (numbers in Rust's shortest round-trip form).
    pub fn to_line(&self) -> String {
        fn walk(t: &Tree, n: usize, out: &mut Vec<String>) {
            match t.nodes[n] {
                Node::Split {
                    feature,
                    threshold,
                    value,
                    left,
                    right,
                } => {
                    out.push(format!("{feature}:{threshold}:{value}"));
                    walk(t, left, out);
                    walk(t, right, out);
                }
                Node::Leaf { value } => out.push(format!("{value}")),
            }
        }
        let mut out = Vec::new();
        walk(self, 0, &mut out);
        out.join(" ")
    }

    /// Reads `to_line`'s form; features must be below `features`.
    pub fn from_line(line: &str, features: usize) -> anyhow::Result<Tree> {
        fn num(s: &str) -> anyhow::Result<f64> {
            let v: f64 = s.parse().with_context(|| format!("bad number {s:?}"))?;
            anyhow::ensure!(v.is_finite(), "number not finite: {s:?}");
            Ok(v)
        }
        fn node<'a>(
            it: &mut impl Iterator<Item = &'a str>,
            nodes: &mut Vec<Node>,
            features: usize,
            depth: usize,
        ) -> anyhow::Result<usize> {
            anyhow::ensure!(depth <= 32, "tree deeper than 32");
            let tok = it.next().context("tree ends early")?;
            let me = nodes.len();
            let parts: Vec<&str> = tok.split(':').collect();
            match parts.as_slice() {
                [v] => nodes.push(Node::Leaf { value: num(v)? }),
                [f, t, v] => {
                    let feature: usize = f.parse().with_context(|| format!("bad feature {f:?}"))?;
                    anyhow::ensure!(feature < features, "feature {feature} out of range");
                    nodes.push(Node::Leaf { value: 0.0 });
                    let (threshold, value) = (num(t)?, num(v)?);
                    let left = node(it, nodes, features, depth + 1)?;
                    let right = node(it, nodes, features, depth + 1)?;
                    nodes[me] = Node::Split {
                        feature,
                        threshold,
                        value,
                        left,
                        right,
                    };
                }
                _ => anyhow::bail!("bad tree node {tok:?}"),
            }
            Ok(me)
        }
        let mut it = line.split_whitespace();
        let mut nodes = Vec::new();
        node(&mut it, &mut nodes, features, 0)?;
        anyhow::ensure!(it.next().is_none(), "tree has extra nodes");
        Ok(Tree { nodes })
    }
}

/// Split candidates of one feature: midpoints between neighbouring distinct values, at most
/// `bins - 1` of them, half spread evenly over the rows and half over the distinct values (so
/// that rare large counter values still get thresholds of their own).
fn cuts(values: &mut [f64], bins: usize) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    let mut uniq: Vec<(f64, usize)> = Vec::new();
    for v in values.iter() {
        match uniq.last_mut() {
            Some((u, c)) if *u == *v => *c += 1,
            _ => uniq.push((*v, 1)),
        }
    }
    if uniq.len() < 2 {
        return Vec::new();
    }
    let mid = |i: usize| (uniq[i].0 + uniq[i + 1].0) / 2.0;
    if uniq.len() <= bins {
        return (0..uniq.len() - 1).map(mid).collect();
    }
    let half = (bins - 1) / 2;
    let mut at: Vec<usize> = Vec::new();
    // By rows: cut after the distinct value where the running count passes k/half of all.
    let n = values.len();
    let mut seen = 0;
    let mut k = 1;
    for (i, (_, c)) in uniq.iter().enumerate().take(uniq.len() - 1) {
        seen += c;
        while k <= half && seen * (half + 1) >= k * n {
            at.push(i);
            k += 1;
        }
    }
    // By distinct values.
    let u = uniq.len() - 1;
    at.extend((1..=bins - 1 - half).map(|k| (k * u / (bins - half)).min(u - 1)));
    at.sort_unstable();
    at.dedup();
    at.into_iter().map(mid).collect()
}

fn bin_of(cuts: &[f64], x: f64) -> u8 {
    cuts.partition_point(|c| *c < x) as u8
}

struct Hist {
    g: f64,
    h: f64,
    w: f64,
}

/// Rows merged by bins and label: each distinct (bins, label) once, with the summed weight.
struct Binned {
    x: Vec<Vec<u8>>,
    y: Vec<f64>,
    w: Vec<f64>,
}

/// Trees only see bins: rows with the same bins and label are merged (their weights
/// summed), which is exact and shrinks the daily rows of steady drives to a few.
fn binned(x: &[Vec<f64>], y: &[f64], w: &[f64], cuts: &[Vec<f64>]) -> Binned {
    let d = cuts.len();
    let mut index: HashMap<(Vec<u8>, bool), usize> = HashMap::new();
    let mut xb: Vec<Vec<u8>> = Vec::new();
    let mut yb: Vec<f64> = Vec::new();
    let mut wb: Vec<f64> = Vec::new();
    for ((r, yy), ww) in x.iter().zip(y).zip(w) {
        let b: Vec<u8> = (0..d).map(|f| bin_of(&cuts[f], r[f])).collect();
        let key = (b, *yy > 0.5);
        let k = *index.entry(key.clone()).or_insert_with(|| {
            xb.push(key.0);
            yb.push(f64::from(u8::from(key.1)));
            wb.push(0.0);
            xb.len() - 1
        });
        wb[k] += ww;
    }
    Binned {
        x: xb,
        y: yb,
        w: wb,
    }
}

/// The leaf value `tree` gives a row of bins (a row's bin is below a cut's index iff its
/// value is at or under that cut).
fn leaf_value(tree: &Tree, cuts: &[Vec<f64>], row: &[u8]) -> f64 {
    let mut k = 0;
    loop {
        match tree.nodes[k] {
            Node::Split {
                feature,
                threshold,
                left,
                right,
                ..
            } => {
                let c = cuts[feature].partition_point(|c| *c < threshold);
                k = if (row[feature] as usize) <= c {
                    left
                } else {
                    right
                };
            }
            Node::Leaf { value } => return value,
        }
    }
}

/// Fits `rounds` trees to rows `x` (row-major, `d` features each), labels `y` (0/1) and row
/// weights `w`. Returns the base log-odds and the trees; the model's log-odds for a row are
/// `base + sum of tree outputs`.
pub fn fit(x: &[Vec<f64>], y: &[f64], w: &[f64], p: &Params) -> (f64, Vec<Tree>) {
    let d = p.monotone.len();
    let bins = p.bins.clamp(2, 255);
    let cuts: Vec<Vec<f64>> = (0..d)
        .map(|f| {
            let mut v: Vec<f64> = x.iter().map(|r| r[f]).collect();
            cuts(&mut v, bins)
        })
        .collect();
    let Binned {
        x: xb,
        y: yb,
        w: wb,
    } = binned(x, y, w, &cuts);
    let n = xb.len();
    let pos: f64 = yb.iter().zip(&wb).map(|(y, w)| y * w).sum();
    let all: f64 = wb.iter().sum();
    let base = (pos.max(1e-12) / (all - pos).max(1e-12)).ln();
    let mut z = vec![base; n];
    let mut trees = Vec::with_capacity(p.rounds);
    let mut g = vec![0.0; n];
    let mut h = vec![0.0; n];
    for _ in 0..p.rounds {
        for i in 0..n {
            let q = 1.0 / (1.0 + (-z[i]).exp());
            g[i] = wb[i] * (q - yb[i]);
            h[i] = wb[i] * q * (1.0 - q);
        }
        let tree = Grower {
            xb: &xb,
            g: &g,
            h: &h,
            w: &wb,
            cuts: &cuts,
            p,
            bins,
            min_weight: p.min_child_share * wb.iter().sum::<f64>(),
        }
        .grow();
        // The rows' new outputs.
        for i in 0..n {
            z[i] += leaf_value(&tree, &cuts, &xb[i]);
        }
        trees.push(tree);
    }
    (base, merge_stumps(trees))
}

/// Depth-1 trees with the same split add up to one: merged (same outputs and attributions,
/// a much shorter model file). Others are kept as they are, in order.
fn merge_stumps(trees: Vec<Tree>) -> Vec<Tree> {
    let mut out: Vec<Tree> = Vec::new();
    let mut at: HashMap<(usize, u64), usize> = HashMap::new();
    for t in trees {
        let (
            Node::Split {
                feature,
                threshold,
                value,
                ..
            },
            [_, Node::Leaf { value: l }, Node::Leaf { value: r }],
        ) = (&t.nodes[0], t.nodes.as_slice())
        else {
            out.push(t);
            continue;
        };
        match at.get(&(*feature, threshold.to_bits())) {
            Some(&k) => {
                for (node, add) in out[k].nodes.iter_mut().zip([*value, *l, *r]) {
                    match node {
                        Node::Split { value, .. } | Node::Leaf { value } => *value += add,
                    }
                }
            }
            None => {
                at.insert((*feature, threshold.to_bits()), out.len());
                out.push(t);
            }
        }
    }
    out
}

/// A node being grown: its index in the tree, its rows, and the bounds on its value (set by
/// monotone splits above it).
struct Open {
    id: usize,
    rows: Vec<u32>,
    lo: f64,
    hi: f64,
}

/// The best split of a node: gain, feature, cut index, left and right values.
struct Split {
    gain: f64,
    feature: usize,
    cut: usize,
    left: f64,
    right: f64,
}

/// What growing one tree reads: the rows' bins, gradients, hessians and weights, the cuts.
struct Grower<'a> {
    xb: &'a [Vec<u8>],
    g: &'a [f64],
    h: &'a [f64],
    w: &'a [f64],
    cuts: &'a [Vec<f64>],
    p: &'a Params,
    bins: usize,
    /// The least weight of a child: `min_child_share` of all the rows' weight.
    min_weight: f64,
}

fn clip(v: f64, lo: f64, hi: f64) -> f64 {
    v.max(lo).min(hi)
}

impl Grower<'_> {
    /// The loss of giving rows with gradient sum `g` and hessian sum `h` the value `v`.
    fn obj(&self, g: f64, h: f64, v: f64) -> f64 {
        g * v + 0.5 * (h + self.p.lambda) * v * v
    }

    /// Level by level: every open node gets its own value, and below `depth` its best split.
    fn grow(&self) -> Tree {
        let (p, lam) = (self.p, self.p.lambda);
        let mut nodes: Vec<Node> = vec![Node::Leaf { value: 0.0 }];
        let mut frontier: Vec<Open> = vec![Open {
            id: 0,
            rows: (0..self.xb.len() as u32).collect(),
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
        }];
        for level in 0..=p.depth {
            let mut next = Vec::new();
            for node in frontier {
                let (gs, hs) = node.rows.iter().fold((0.0, 0.0), |a, &i| {
                    (a.0 + self.g[i as usize], a.1 + self.h[i as usize])
                });
                let own = clip(-gs / (hs + lam), node.lo, node.hi);
                nodes[node.id] = Node::Leaf { value: own * p.eta };
                if level == p.depth {
                    continue;
                }
                let Some(split) = self.best_split(&node, gs, hs, own) else {
                    continue;
                };
                self.split(&mut nodes, &mut next, node, &split, own);
            }
            frontier = next;
        }
        Tree { nodes }
    }

    /// Per feature and bin: the sums of g, h and w of `rows`.
    fn histograms(&self, rows: &[u32]) -> Vec<Vec<Hist>> {
        let mut hist: Vec<Vec<Hist>> = (0..self.cuts.len())
            .map(|_| {
                (0..=self.bins)
                    .map(|_| Hist {
                        g: 0.0,
                        h: 0.0,
                        w: 0.0,
                    })
                    .collect()
            })
            .collect();
        for &i in rows {
            let i = i as usize;
            for (f, hf) in hist.iter_mut().enumerate() {
                let b = &mut hf[self.xb[i][f] as usize];
                b.g += self.g[i];
                b.h += self.h[i];
                b.w += self.w[i];
            }
        }
        hist
    }

    /// The split of `node` (gradient sum `gs`, hessian sum `hs`, value `own`) that lowers the
    /// loss most, within the child limits and monotone constraints; None if none gains.
    fn best_split(&self, node: &Open, gs: f64, hs: f64, own: f64) -> Option<Split> {
        let (p, lam) = (self.p, self.p.lambda);
        let hist = self.histograms(&node.rows);
        let ws: f64 = node.rows.iter().map(|&i| self.w[i as usize]).sum();
        let parent = self.obj(gs, hs, own);
        let mut best: Option<Split> = None;
        for (f, hf) in hist.iter().enumerate() {
            let (mut gl, mut hl, mut wl) = (0.0, 0.0, 0.0);
            for (c, b) in hf.iter().enumerate().take(self.cuts[f].len()) {
                gl += b.g;
                hl += b.h;
                wl += b.w;
                let (gr, hr, wr) = (gs - gl, hs - hl, ws - wl);
                if hl < p.min_child_hess
                    || hr < p.min_child_hess
                    || wl < self.min_weight
                    || wr < self.min_weight
                {
                    continue;
                }
                let vl = clip(-gl / (hl + lam), node.lo, node.hi);
                let vr = clip(-gr / (hr + lam), node.lo, node.hi);
                if p.monotone[f] > 0 && vl > vr {
                    continue;
                }
                let gain = parent - self.obj(gl, hl, vl) - self.obj(gr, hr, vr);
                if gain > p.min_gain && best.as_ref().is_none_or(|b| gain > b.gain) {
                    best = Some(Split {
                        gain,
                        feature: f,
                        cut: c,
                        left: vl,
                        right: vr,
                    });
                }
            }
        }
        best
    }

    /// Makes `node` a split with two open children (bounded by the midpoint of their values
    /// on a monotone feature).
    fn split(&self, nodes: &mut Vec<Node>, next: &mut Vec<Open>, node: Open, s: &Split, own: f64) {
        let (f, c) = (s.feature, s.cut);
        let (left, right): (Vec<u32>, Vec<u32>) = node
            .rows
            .iter()
            .partition(|&&i| (self.xb[i as usize][f] as usize) <= c);
        let (l, r) = (nodes.len(), nodes.len() + 1);
        nodes.push(Node::Leaf { value: 0.0 });
        nodes.push(Node::Leaf { value: 0.0 });
        nodes[node.id] = Node::Split {
            feature: f,
            threshold: self.cuts[f][c],
            value: own * self.p.eta,
            left: l,
            right: r,
        };
        let (lo, hi) = (node.lo, node.hi);
        let (bl, br) = if self.p.monotone[f] > 0 {
            let m = (s.left + s.right) / 2.0;
            ((lo, m), (m, hi))
        } else {
            ((lo, hi), (lo, hi))
        };
        next.push(Open {
            id: l,
            rows: left,
            lo: bl.0,
            hi: bl.1,
        });
        next.push(Open {
            id: r,
            rows: right,
            lo: br.0,
            hi: br.1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_rare_values_and_round_trip() {
        let mut v: Vec<f64> = (0..1000)
            .map(|i| if i < 950 { 0.0 } else { i as f64 })
            .collect();
        let c = cuts(&mut v, 16);
        assert!(c.len() <= 15 && c[0] == 475.0, "{c:?}");
        assert!(c.iter().filter(|x| **x > 975.0).count() >= 3, "{c:?}");
        let t = Tree {
            nodes: vec![
                Node::Split {
                    feature: 1,
                    threshold: 0.5,
                    value: 0.1,
                    left: 1,
                    right: 2,
                },
                Node::Leaf { value: -0.25 },
                Node::Leaf { value: 1.0 / 3.0 },
            ],
        };
        assert_eq!(Tree::from_line(&t.to_line(), 2).unwrap(), t);
        assert!(Tree::from_line(&t.to_line(), 1).is_err());
        assert!(Tree::from_line("1:0.5:0.1 2", 2).is_err());
        let mut contrib = [0.0; 2];
        let (root, out) = t.explain(&[0.0, 1.0], &mut contrib);
        assert_eq!((root, out), (0.1, 1.0 / 3.0));
        assert!((root + contrib[1] - out).abs() < 1e-12);
    }

    #[test]
    fn monotone_features_never_lower_the_output() {
        // y rises with x0 except for a dip the constraint must ignore; x1 is noise.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..2000 {
            let a = (i % 100) as f64;
            let b = ((i * 37) % 11) as f64;
            let dip = (40.0..60.0).contains(&a);
            let pos = if dip {
                i % 10 == 0
            } else {
                (i % 100) < (a as usize) / 2
            };
            x.push(vec![a, b]);
            y.push(f64::from(u8::from(pos)));
        }
        let w = vec![1.0; x.len()];
        let p = Params {
            rounds: 30,
            depth: 3,
            eta: 0.3,
            lambda: 1.0,
            min_child_hess: 0.1,
            min_child_share: 0.0005,
            min_gain: 0.0,
            bins: 32,
            monotone: vec![1, 0],
        };
        let (_, trees) = fit(&x, &y, &w, &p);
        let f = |a: f64, b: f64| trees.iter().map(|t| t.predict(&[a, b])).sum::<f64>();
        for b in 0..11 {
            for a in 0..99 {
                let (lo, hi) = (f(a as f64, b as f64), f(a as f64 + 1.0, b as f64));
                assert!(hi >= lo - 1e-12, "a={a} b={b}: {lo} > {hi}");
            }
        }
        assert!(f(90.0, 0.0) > f(10.0, 0.0) + 1.0);
    }
}
