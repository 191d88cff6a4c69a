//! Logits processors and warpers, applied per row on the CPU in transformers' order:
//! repetition penalty → min-new-tokens → temperature → top-k → top-p.

use super::GenerationParams;

/// `RepetitionPenaltyLogitsProcessor`: every token already in the sequence (prompt included) has
/// its score divided by the penalty when positive, multiplied when negative.
pub fn repetition_penalty(scores: &mut [f32], tokens: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = tokens.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for &t in &seen {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// `MinNewTokensLengthLogitsProcessor`: end-of-sequence is impossible before `min_new_tokens`.
pub fn min_new_tokens(scores: &mut [f32], generated: usize, min_new: usize, eos: &[u32]) {
    if generated < min_new {
        for &e in eos {
            if let Some(s) = scores.get_mut(e as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// The processors every decoding strategy applies.
pub fn process(
    scores: &mut [f32],
    tokens: &[u32],
    generated: usize,
    p: &GenerationParams,
    eos: &[u32],
) {
    repetition_penalty(scores, tokens, p.repetition_penalty);
    min_new_tokens(scores, generated, p.min_new_tokens, eos);
}

/// Temperature, top-k and top-p for sampling, in place; filtered entries become -inf.
pub fn warp(scores: &mut [f32], p: &GenerationParams) {
    if p.temperature != 1.0 && p.temperature > 0.0 {
        for s in scores.iter_mut() {
            *s /= p.temperature;
        }
    }
    if p.top_k > 0 && p.top_k < scores.len() {
        let mut sorted: Vec<f32> = scores.to_vec();
        let (_, kth, _) = sorted.select_nth_unstable_by(p.top_k - 1, |a, b| b.total_cmp(a));
        let kth = *kth;
        for s in scores.iter_mut() {
            if *s < kth {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    if p.top_p < 1.0 {
        // Keep the smallest set of most likely tokens whose probability mass reaches top_p.
        let probs = softmax(scores);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let mut mass = 0.0f32;
        let mut keep = 0;
        for &i in &order {
            keep += 1;
            mass += probs[i];
            if mass >= p.top_p {
                break;
            }
        }
        for &i in &order[keep..] {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = out.iter().sum();
    for o in out.iter_mut() {
        *o /= sum;
    }
    out
}

/// In-place `log_softmax` over one row.
pub fn log_softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = scores.iter().map(|&s| (s - max).exp()).sum();
    let log_sum = sum.ln() + max;
    for s in scores.iter_mut() {
        *s -= log_sum;
    }
}

/// Index of the largest score; the first one on ties, as `torch.argmax`.
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
        let mut s = vec![2.0, -2.0, 1.0];
        repetition_penalty(&mut s, &[0, 1, 1], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn min_new_tokens_blocks_eos() {
        let mut s = vec![0.0, 5.0];
        min_new_tokens(&mut s, 0, 1, &[1]);
        assert_eq!(argmax(&s), 0);
    }

    #[test]
    fn top_k_and_top_p_filter() {
        let p = GenerationParams {
            top_k: 2,
            ..GenerationParams::default()
        };
        let mut s = vec![1.0, 3.0, 2.0, 0.0];
        warp(&mut s, &p);
        assert!(s[0].is_infinite() && s[3].is_infinite() && s[1] == 3.0 && s[2] == 2.0);
        let p = GenerationParams {
            top_p: 0.5,
            ..GenerationParams::default()
        };
        let mut s = vec![0.0, 10.0, 0.0];
        warp(&mut s, &p);
        assert_eq!(s.iter().filter(|v| v.is_finite()).count(), 1);
    }
}
