//! Caption metrics as the COCO caption evaluation toolkit (pycocoevalcap) computes them, on
//! pre-tokenized text (space-separated tokens): BLEU-1..4 (`bleu_scorer.py`, "closest" reference
//! length), ROUGE-L (`rouge.py`, β = 1.2) and CIDEr-D (`cider_scorer.py`, σ = 6, clipped,
//! ×10). Each port keeps the toolkit's quirks; they are named where they appear.

use std::collections::HashMap;

type Ngram = Vec<String>;
type Counts = HashMap<Ngram, usize>;

const N: usize = 4;

/// Tokens of a tokenized sentence. Matches Python's `str.split()` (CIDEr, BLEU).
fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// n-gram counts for n = 1..=4 (`precook`).
fn ngram_counts(tokens: &[String]) -> Counts {
    let mut counts = Counts::new();
    for n in 1..=N {
        for w in tokens.windows(n) {
            *counts.entry(w.to_vec()).or_default() += 1;
        }
    }
    counts
}

/// One image: its tokenized prediction and references.
pub struct Sample<'a> {
    pub prediction: &'a str,
    pub references: &'a [String],
}

/// BLEU-1..4 for the corpus and per image.
pub struct Bleu {
    pub corpus: [f64; N],
    pub per_image: Vec<[f64; N]>,
}

// Matches BleuScorer.compute_score(option="closest"): n-gram matches clipped by the maximum count
// in any reference, the reference length closest to the hypothesis length (ties: the shorter),
// tiny/small constants against zero divisions, brevity penalty when shorter.
pub fn bleu(samples: &[Sample]) -> Bleu {
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let (mut test_total, mut ref_total) = (0usize, 0usize);
    let (mut guess_total, mut correct_total) = ([0usize; N], [0usize; N]);
    let mut per_image = Vec::with_capacity(samples.len());
    for s in samples {
        let test = words(s.prediction);
        let test_counts = ngram_counts(&test);
        let mut max_ref: Counts = Counts::new();
        let mut ref_lens = Vec::new();
        for r in s.references {
            let r = words(r);
            ref_lens.push(r.len());
            for (g, c) in ngram_counts(&r) {
                let e = max_ref.entry(g).or_default();
                *e = (*e).max(c);
            }
        }
        let testlen = test.len();
        let reflen = ref_lens
            .iter()
            .copied()
            .min_by_key(|&l| (l.abs_diff(testlen), l))
            .unwrap_or(0);
        let mut guess = [0usize; N];
        let mut correct = [0usize; N];
        for (k, g) in guess.iter_mut().enumerate() {
            *g = (testlen + 1).saturating_sub(k + 1);
        }
        for (g, c) in &test_counts {
            correct[g.len() - 1] += (*c).min(max_ref.get(g).copied().unwrap_or(0));
        }
        per_image.push(scores(&correct, &guess, testlen, reflen, TINY, SMALL));
        test_total += testlen;
        ref_total += reflen;
        for k in 0..N {
            guess_total[k] += guess[k];
            correct_total[k] += correct[k];
        }
    }
    Bleu {
        corpus: scores(
            &correct_total,
            &guess_total,
            test_total,
            ref_total,
            TINY,
            SMALL,
        ),
        per_image,
    }
}

fn scores(
    correct: &[usize; N],
    guess: &[usize; N],
    testlen: usize,
    reflen: usize,
    tiny: f64,
    small: f64,
) -> [f64; N] {
    let mut out = [0.0; N];
    let mut product = 1.0;
    for k in 0..N {
        product *= (correct[k] as f64 + tiny) / (guess[k] as f64 + small);
        out[k] = product.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen as f64 + tiny) / (reflen as f64 + small);
    if ratio < 1.0 {
        for v in &mut out {
            *v *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

/// Longest common subsequence length of two token lists.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

// Matches Rouge.calc_score: tokens by split(" ") (so "" is one empty token), the best precision
// and the best recall over the references (not the same reference's), F with β = 1.2.
pub fn rouge_l(prediction: &str, references: &[String]) -> f64 {
    const BETA: f64 = 1.2;
    let c: Vec<&str> = prediction.split(' ').collect();
    let (mut p_max, mut r_max) = (0.0f64, 0.0f64);
    for r in references {
        let r: Vec<&str> = r.split(' ').collect();
        let l = lcs(&r, &c) as f64;
        p_max = p_max.max(l / c.len() as f64);
        r_max = r_max.max(l / r.len() as f64);
    }
    if p_max != 0.0 && r_max != 0.0 {
        (1.0 + BETA * BETA) * p_max * r_max / (r_max + BETA * BETA * p_max)
    } else {
        0.0
    }
}

/// CIDEr-D for the corpus (the mean) and per image.
// Matches CiderScorer.compute_score: document frequencies over each image's set of reference
// n-grams, idf = log(#images) − log(max(1, df)), tf·idf vectors per n, clipped dot products
// (min(hyp, ref)·ref), a Gaussian length penalty with σ = 6 — on the *bigram* counts, a quirk of
// counts2vec — averaged over n and references, times 10.
pub fn cider_d(samples: &[Sample]) -> (f64, Vec<f64>) {
    const SIGMA: f64 = 6.0;
    let refs: Vec<Vec<Counts>> = samples
        .iter()
        .map(|s| {
            s.references
                .iter()
                .map(|r| ngram_counts(&words(r)))
                .collect()
        })
        .collect();
    let mut df: HashMap<&Ngram, f64> = HashMap::new();
    for image in &refs {
        let mut seen = std::collections::HashSet::new();
        for r in image {
            seen.extend(r.keys());
        }
        for g in seen {
            *df.entry(g).or_default() += 1.0;
        }
    }
    let ref_len = (samples.len() as f64).ln();
    let vec_of = |counts: &Counts| {
        let mut vec: [HashMap<Ngram, f64>; N] = Default::default();
        let mut norm = [0.0f64; N];
        let mut length = 0usize;
        for (g, &tf) in counts {
            let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
            let n = g.len() - 1;
            let v = tf as f64 * (ref_len - d);
            norm[n] += v * v;
            vec[n].insert(g.clone(), v);
            if n == 1 {
                length += tf;
            }
        }
        (vec, norm.map(f64::sqrt), length)
    };
    let mut per_image = Vec::with_capacity(samples.len());
    for (s, image_refs) in samples.iter().zip(&refs) {
        let (vh, nh, lh) = vec_of(&ngram_counts(&words(s.prediction)));
        let mut score = [0.0f64; N];
        for r in image_refs {
            let (vr, nr, lr) = vec_of(r);
            let delta = lh as f64 - lr as f64;
            for n in 0..N {
                let mut val = 0.0;
                for (g, &h) in &vh[n] {
                    let rv = vr[n].get(g).copied().unwrap_or(0.0);
                    val += h.min(rv) * rv;
                }
                if nh[n] != 0.0 && nr[n] != 0.0 {
                    val /= nh[n] * nr[n];
                }
                score[n] += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
            }
        }
        let mean = score.iter().sum::<f64>() / N as f64;
        per_image.push(mean / image_refs.len().max(1) as f64 * 10.0);
    }
    let corpus = if per_image.is_empty() {
        0.0
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    (corpus, per_image)
}
