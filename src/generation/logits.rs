//! Logits processors and warpers, applied per row on the CPU in transformers' order
//! (`GenerationMixin._get_logits_processor`): repetition penalty → no-repeat n-grams → bad words
//! → min-new-tokens → forced bos → forced eos → suppressed tokens → suppressed at the start;
//! then, when sampling, temperature → top-k → top-p.

use serde_json::Value;

use super::GenerationParams;

/// The token rules a checkpoint's `generation_config.json` can set, which change what is
/// generated whatever the decoding strategy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenRules {
    /// Sequences never generated: a single token is always banned, a longer one when the
    /// sequence so far ends with all but its last token (`NoBadWordsLogitsProcessor`).
    pub bad_words_ids: Vec<Vec<u32>>,
    /// The only token allowed after the first one (`ForcedBOSTokenLogitsProcessor`).
    pub forced_bos_token_id: Option<u32>,
    /// The tokens allowed at the last position (`ForcedEOSTokenLogitsProcessor`).
    pub forced_eos_token_id: Vec<u32>,
    /// No n-gram of this size occurs twice (`NoRepeatNGramLogitsProcessor`); 0 is off.
    pub no_repeat_ngram_size: usize,
    /// Never generated (`SuppressTokensLogitsProcessor`).
    pub suppress_tokens: Vec<u32>,
    /// Not generated as the first new token (`SuppressTokensAtBeginLogitsProcessor`).
    pub begin_suppress_tokens: Vec<u32>,
}

impl TokenRules {
    /// The rules of a `generation_config.json` (or of a `config.json`, which transformers 4
    /// checkpoints used for the same fields). Nulls and missing fields mean no rule; `eos` are
    /// the model's end tokens, which transformers drops from single-token bad words.
    pub fn from_config(config: &Value, eos: &[u32]) -> std::result::Result<Self, String> {
        let id = |v: &Value, what: &str| -> std::result::Result<u32, String> {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("{what} holds {v}, not a token id"))
        };
        let ids = |key: &str| -> std::result::Result<Vec<u32>, String> {
            match &config[key] {
                Value::Null => Ok(Vec::new()),
                Value::Array(a) => a.iter().map(|v| id(v, key)).collect(),
                v => Ok(vec![id(v, key)?]),
            }
        };
        let bad_words_ids = match &config["bad_words_ids"] {
            Value::Null => Vec::new(),
            Value::Array(words) => words
                .iter()
                .map(|w| match w {
                    Value::Array(seq) if !seq.is_empty() => {
                        seq.iter().map(|v| id(v, "bad_words_ids")).collect()
                    }
                    other => Err(format!("bad_words_ids holds {other}, not a list of ids")),
                })
                .collect::<std::result::Result<Vec<Vec<u32>>, String>>()?
                .into_iter()
                .filter(|w| !(w.len() == 1 && eos.contains(&w[0])))
                .collect(),
            other => return Err(format!("bad_words_ids is {other}, not a list of lists")),
        };
        Ok(Self {
            bad_words_ids,
            forced_bos_token_id: ids("forced_bos_token_id")?.first().copied(),
            forced_eos_token_id: ids("forced_eos_token_id")?,
            no_repeat_ngram_size: config["no_repeat_ngram_size"].as_u64().unwrap_or(0) as usize,
            suppress_tokens: ids("suppress_tokens")?,
            begin_suppress_tokens: ids("begin_suppress_tokens")?,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn ban(scores: &mut [f32], token: u32) {
    if let Some(s) = scores.get_mut(token as usize) {
        *s = f32::NEG_INFINITY;
    }
}

/// Every score but `allowed`'s is -inf; those become 0, as transformers' forcing does.
fn force(scores: &mut [f32], allowed: &[u32]) {
    scores.fill(f32::NEG_INFINITY);
    for &t in allowed {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = 0.0;
        }
    }
}

/// `NoRepeatNGramLogitsProcessor`: bans each token that would complete an n-gram already in
/// `tokens` (prompt included).
pub fn no_repeat_ngrams(scores: &mut [f32], tokens: &[u32], n: usize) {
    if n == 0 || tokens.len() < n {
        return;
    }
    let prefix = &tokens[tokens.len() + 1 - n..];
    for window in tokens.windows(n) {
        if &window[..n - 1] == prefix {
            ban(scores, window[n - 1]);
        }
    }
}

/// `NoBadWordsLogitsProcessor`.
pub fn bad_words(scores: &mut [f32], tokens: &[u32], words: &[Vec<u32>]) {
    for word in words {
        let (last, prefix) = word.split_last().expect("bad words are not empty");
        if tokens.ends_with(prefix) {
            ban(scores, *last);
        }
    }
}

/// The rules of [`TokenRules`] for the next token after `tokens`, of which the first
/// `prompt_len` are the prompt; `max_new_tokens` places the forced end.
fn token_rules(
    scores: &mut [f32],
    tokens: &[u32],
    prompt_len: usize,
    max_new_tokens: usize,
    rules: &TokenRules,
) {
    let len = tokens.len();
    if let Some(bos) = rules.forced_bos_token_id.filter(|_| len == 1) {
        force(scores, &[bos]);
    }
    if !rules.forced_eos_token_id.is_empty() && len + 1 == prompt_len + max_new_tokens {
        force(scores, &rules.forced_eos_token_id);
    }
    for &t in &rules.suppress_tokens {
        ban(scores, t);
    }
    // Matches transformers' begin_index: one later when a forced bos takes the first place.
    let begin = match prompt_len == 1 && rules.forced_bos_token_id.is_some() {
        true => prompt_len + 1,
        false => prompt_len,
    };
    if len == begin {
        for &t in &rules.begin_suppress_tokens {
            ban(scores, t);
        }
    }
}

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

/// The processors every decoding strategy applies, to the scores of the token after `tokens`
/// (prompt and the `generated` tokens after it).
pub fn process(
    scores: &mut [f32],
    tokens: &[u32],
    generated: usize,
    p: &GenerationParams,
    eos: &[u32],
) {
    repetition_penalty(scores, tokens, p.repetition_penalty);
    no_repeat_ngrams(scores, tokens, p.rules.no_repeat_ngram_size);
    bad_words(scores, tokens, &p.rules.bad_words_ids);
    min_new_tokens(scores, generated, p.min_new_tokens, eos);
    let prompt_len = tokens.len() - generated;
    token_rules(scores, tokens, prompt_len, p.max_new_tokens, &p.rules);
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
    fn no_repeat_ngrams_bans_what_would_complete_a_seen_ngram() {
        let mut s = vec![0.0; 6];
        // Bigrams seen: (1,2) (2,3) (3,1); the last token is 1, so 2 would repeat (1,2).
        no_repeat_ngrams(&mut s, &[1, 2, 3, 1], 2);
        assert_eq!(s.iter().filter(|v| v.is_infinite()).count(), 1);
        assert!(s[2].is_infinite());
        let mut s = vec![0.0; 6];
        no_repeat_ngrams(&mut s, &[1, 2, 3, 1], 3);
        assert!(
            s.iter().all(|v| v.is_finite()),
            "no trigram starts with (3, 1)"
        );
    }

    #[test]
    fn bad_words_ban_single_tokens_always_and_sequences_after_their_prefix() {
        let words = vec![vec![4], vec![1, 2, 5]];
        let mut s = vec![0.0; 6];
        bad_words(&mut s, &[0, 1], &words);
        assert!(s[4].is_infinite() && s[5].is_finite());
        let mut s = vec![0.0; 6];
        bad_words(&mut s, &[0, 1, 2], &words);
        assert!(s[4].is_infinite() && s[5].is_infinite());
    }

    #[test]
    fn token_rules_read_from_a_generation_config() {
        let cfg = serde_json::json!({
            "bad_words_ids": [[7], [3], [8, 9]], "forced_bos_token_id": null,
            "forced_eos_token_id": 3, "no_repeat_ngram_size": 2, "suppress_tokens": [5, 6],
            "begin_suppress_tokens": null
        });
        let rules = TokenRules::from_config(&cfg, &[3]).unwrap();
        // A single-token bad word equal to eos is dropped, as transformers does.
        assert_eq!(rules.bad_words_ids, vec![vec![7], vec![8, 9]]);
        assert_eq!(rules.forced_eos_token_id, vec![3]);
        assert_eq!(
            (rules.forced_bos_token_id, rules.no_repeat_ngram_size),
            (None, 2)
        );
        assert_eq!(rules.suppress_tokens, vec![5, 6]);
        assert!(rules.begin_suppress_tokens.is_empty());
        assert!(TokenRules::from_config(&serde_json::json!({}), &[])
            .unwrap()
            .is_empty());
        assert!(TokenRules::from_config(&serde_json::json!({"bad_words_ids": [1]}), &[]).is_err());
    }

    #[test]
    fn forced_tokens_take_the_first_and_last_places() {
        let rules = TokenRules {
            forced_bos_token_id: Some(4),
            forced_eos_token_id: vec![2],
            begin_suppress_tokens: vec![1],
            ..TokenRules::default()
        };
        let mut s = vec![1.0; 6];
        token_rules(&mut s, &[0], 1, 5, &rules);
        assert_eq!(argmax(&s), 4);
        assert_eq!(s.iter().filter(|v| v.is_finite()).count(), 1);
        // After a forced bos, the start is the next position.
        let mut s = vec![1.0; 6];
        token_rules(&mut s, &[0, 4], 1, 5, &rules);
        assert!(s[1].is_infinite() && s[3].is_finite());
        // The last of 5 new tokens after a 1-token prompt is at length 5.
        let mut s = vec![1.0; 6];
        token_rules(&mut s, &[0, 4, 3, 3, 3], 1, 5, &rules);
        assert_eq!(argmax(&s), 2);
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
