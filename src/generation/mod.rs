//! The one decode loop every text decoder shares: greedy, sampling and beam search over a
//! batch of encoder outputs, with a KV cache that shares each image's encoder states across its
//! rows and rows dropped from the batch as soon as they finish.
//!
//! Semantics follow transformers' `GenerationMixin.generate` (`_sample`, `_beam_search`).

mod beam;
pub mod logits;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::layers::kv_cache::KvCache;
use crate::models::{StopTokens, TextDecoder};

/// `generation_config`'s `early_stopping`: `False` (heuristic), `True`, or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    #[default]
    Heuristic,
    Always,
    Never,
}

impl EarlyStopping {
    /// A config's value: `true`, `false`, `"never"`; anything else (absent, null) is transformers'
    /// default, the heuristic.
    pub fn from_json(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Bool(true) => Self::Always,
            serde_json::Value::String(s) if s == "never" => Self::Never,
            _ => Self::Heuristic,
        }
    }
}

/// Decoding options, with transformers' defaults.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub do_sample: bool,
    pub temperature: f32,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub num_return_sequences: usize,
    pub seed: u64,
    /// The checkpoint's token rules (bad words, forced and suppressed tokens, n-gram blocking);
    /// a [`crate::tasks::caption::Captioner`] sets its model's own.
    pub rules: logits::TokenRules,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            num_return_sequences: 1,
            seed: 0,
            rules: logits::TokenRules::default(),
        }
    }
}

impl GenerationParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Options(m.to_string()));
        if self.num_beams == 0 {
            return bad("--num-beams must be at least 1");
        }
        if self.num_return_sequences == 0 {
            return bad("--num-return-sequences must be at least 1");
        }
        if !self.do_sample && self.num_return_sequences > self.num_beams {
            return bad("--num-return-sequences cannot exceed --num-beams without --do-sample");
        }
        if self.do_sample && self.num_beams > 1 {
            return bad("beam sampling is not supported: use --do-sample or --num-beams, not both");
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad("--min-new-tokens cannot exceed --max-new-tokens");
        }
        if self.do_sample && self.temperature <= 0.0 {
            return bad("--temperature must be positive");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("--top-p must be in (0, 1]");
        }
        if self.repetition_penalty <= 0.0 {
            return bad("--repetition-penalty must be positive");
        }
        Ok(())
    }
}

/// Decoding options a user gave (flags, a pipeline's stage table); `None` leaves the model's
/// default.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Overrides {
    pub max_new_tokens: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub num_return_sequences: Option<usize>,
    pub seed: Option<u64>,
}

impl GenerationParams {
    /// transformers' defaults under a checkpoint's `generation_config.json` (its `do_sample`,
    /// `temperature`, `top_k`, `top_p`, `repetition_penalty`, `num_beams`, `length_penalty`,
    /// `max_new_tokens`, `min_new_tokens`), as `GenerationConfig.from_pretrained` reads it;
    /// `max_new_tokens` is `fallback_max_new` where it names none.
    pub fn from_generation_config(config: &serde_json::Value, fallback_max_new: usize) -> Self {
        let d = Self::default();
        let f = |k: &str, dflt: f32| config[k].as_f64().map_or(dflt, |v| v as f32);
        let u = |k: &str| config[k].as_u64().map(|v| v as usize);
        Self {
            max_new_tokens: u("max_new_tokens").unwrap_or(fallback_max_new),
            min_new_tokens: u("min_new_tokens").unwrap_or(d.min_new_tokens),
            num_beams: u("num_beams").unwrap_or(d.num_beams),
            length_penalty: f("length_penalty", d.length_penalty),
            do_sample: config["do_sample"].as_bool().unwrap_or(d.do_sample),
            temperature: f("temperature", d.temperature),
            top_k: u("top_k").unwrap_or(d.top_k),
            top_p: f("top_p", d.top_p),
            repetition_penalty: f("repetition_penalty", d.repetition_penalty),
            ..d
        }
    }

    /// The user's choices over these.
    pub fn with(mut self, o: &Overrides) -> Self {
        macro_rules! take {
            ($($field:ident),*) => {$(
                if let Some(v) = o.$field {
                    self.$field = v;
                }
            )*};
        }
        take!(
            max_new_tokens,
            min_new_tokens,
            num_beams,
            length_penalty,
            do_sample,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            num_return_sequences,
            seed
        );
        self
    }
}

/// One generated sequence: the prompt followed by new tokens (end-of-sequence included when
/// reached, no padding), and the beam score where beam search produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub score: Option<f32>,
}

/// Generates for each row of `encoder_hidden` (`[images, positions, dim]`), starting from
/// `prompt`. `seeds` gives each image its own sampling stream, so results do not depend on how
/// images are batched. Returns `num_return_sequences` sequences per image.
pub fn generate(
    decoder: &dyn TextDecoder,
    encoder_hidden: &Tensor,
    prompt: &[u32],
    params: &GenerationParams,
    stop: &StopTokens,
    seeds: &[u64],
) -> Result<Vec<Vec<Generated>>> {
    params.validate()?;
    if params.num_beams > 1 {
        return beam::beam_search(decoder, encoder_hidden, prompt, params, stop);
    }
    let images = encoder_hidden.dim(0)?;
    let n = if params.do_sample {
        params.num_return_sequences
    } else {
        1
    };
    let mut cache = decoder.new_cache(encoder_hidden)?;
    // Row r belongs to image r / n.
    let rows = images * n;
    cache.set_group(n);
    let input = Tensor::new(prompt, decoder.device())?
        .unsqueeze(0)?
        .repeat((rows, 1))?;
    let first = decoder.forward(&input, &mut cache)?;
    let mut session = Cached { decoder, cache };
    let seqs = decode(
        first,
        &mut session,
        vec![prompt.to_vec(); rows],
        params,
        &stop.eos,
        &row_seeds(seeds, n),
    )?;
    let mut out: Vec<Vec<Generated>> = vec![Vec::with_capacity(n); images];
    for (r, tokens) in seqs.into_iter().enumerate() {
        out[r / n].push(Generated {
            tokens,
            score: None,
        });
    }
    Ok(out)
}

/// A batch being decoded one token at a time: what the shared loop needs of a model once its
/// prompts are in.
pub trait Decoding {
    /// Feeds each active row its next token; returns the next logits, `[active rows, vocab]`.
    fn step(&mut self, tokens: &[u32]) -> candle_core::Result<Tensor>;
    /// Keeps only these rows (indices among the active ones): finished rows leave the batch.
    fn keep(&mut self, rows: &[u32]) -> candle_core::Result<()>;
}

/// A [`TextDecoder`] and its cache as a [`Decoding`].
struct Cached<'a> {
    decoder: &'a dyn TextDecoder,
    cache: KvCache,
}

impl Decoding for Cached<'_> {
    fn step(&mut self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(tokens, self.decoder.device())?.unsqueeze(1)?;
        self.decoder
            .forward(&ids, &mut self.cache)
            .map_err(candle_core::Error::wrap)
    }

    fn keep(&mut self, rows: &[u32]) -> candle_core::Result<()> {
        self.cache
            .select(rows, self.decoder.device())
            .map_err(candle_core::Error::wrap)
    }
}

/// Each row's sampling seed when every image has `n` rows: the image's seed, varied per row.
pub fn row_seeds(image_seeds: &[u64], n: usize) -> Vec<u64> {
    (0..image_seeds.len() * n)
        .map(|r| image_seeds[r / n] ^ (r % n) as u64)
        .collect()
}

thread_local! {
    static OBSERVER: std::cell::RefCell<Option<TokenObserver>> = const { std::cell::RefCell::new(None) };
}

/// Told `(row, token)` for each token the greedy / sampling loop picks.
pub type TokenObserver = Box<dyn FnMut(usize, u32)>;

/// Runs `f` with `observer` told of every token [`decode`] picks on this thread, as it picks
/// it: how a server streams a reply while it is generated. Beam search tells nothing (its
/// tokens are final only at the end). The observer is dropped when `f` returns.
pub fn observing<R>(observer: TokenObserver, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            OBSERVER.with(|o| o.borrow_mut().take());
        }
    }
    OBSERVER.with(|o| *o.borrow_mut() = Some(observer));
    let _reset = Reset;
    f()
}

fn observe(row: usize, token: u32) {
    OBSERVER.with(|o| {
        if let Some(f) = o.borrow_mut().as_mut() {
            f(row, token)
        }
    });
}

/// The greedy and sampling loop: `first` are the logits after each row's prompt `seqs[r]`,
/// `seeds` one sampling stream per row. A row ends at any of `eos` or after
/// `params.max_new_tokens`; finished rows leave the batch. Returns each row's prompt followed
/// by its new tokens (the stop token included when reached).
pub fn decode(
    first: Tensor,
    model: &mut dyn Decoding,
    mut seqs: Vec<Vec<u32>>,
    params: &GenerationParams,
    eos: &[u32],
    seeds: &[u64],
) -> Result<Vec<Vec<u32>>> {
    let mut rngs: Vec<Rng> = (0..seqs.len())
        .map(|r| Rng::new(seeds.get(r).copied().unwrap_or(0)))
        .collect();
    let mut active: Vec<usize> = (0..seqs.len()).collect();
    let mut logits = first;
    for step in 0..params.max_new_tokens {
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut keep = Vec::with_capacity(active.len());
        let mut next = Vec::with_capacity(active.len());
        for (row, mut scores) in rows.into_iter().enumerate() {
            let seq = active[row];
            logits::process(&mut scores, &seqs[seq], step, params, eos);
            let token = if params.do_sample {
                logits::warp(&mut scores, params);
                rngs[seq].sample(&logits::softmax(&scores))
            } else {
                logits::argmax(&scores)
            };
            seqs[seq].push(token);
            observe(seq, token);
            if !eos.contains(&token) {
                keep.push(row as u32);
                next.push(token);
            }
        }
        if next.is_empty() || step + 1 == params.max_new_tokens {
            break;
        }
        if keep.len() < active.len() {
            model.keep(&keep)?;
            active = keep.iter().map(|&r| active[r as usize]).collect();
        }
        logits = model.step(&next)?;
    }
    Ok(seqs)
}

/// A small, fast, seedable generator (SplitMix64): reproducible sampling without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Draws an index from a probability vector.
    fn sample(&mut self, probs: &[f32]) -> u32 {
        let mut target = self.next_f32() * probs.iter().sum::<f32>();
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last = i;
                if target < p {
                    return i as u32;
                }
                target -= p;
            }
        }
        last as u32
    }
}

/// A 64-bit FNV-1a hash, to derive a per-image seed from its name.
pub fn seed_for(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_sets_the_defaults_and_flags_override_them() {
        // Qwen3-VL-2B-Instruct's generation_config.json.
        let config = serde_json::json!({
            "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
            "eos_token_id": [151645, 151643], "top_k": 20, "top_p": 0.8,
            "repetition_penalty": 1.0, "temperature": 0.7
        });
        let p = GenerationParams::from_generation_config(&config, 256);
        assert!(p.do_sample);
        assert_eq!((p.top_k, p.top_p, p.temperature), (20, 0.8, 0.7));
        assert_eq!((p.max_new_tokens, p.num_beams), (256, 1));
        let o = Overrides {
            temperature: Some(0.2),
            max_new_tokens: Some(64),
            ..Overrides::default()
        };
        let p = p.with(&o);
        assert_eq!((p.temperature, p.max_new_tokens, p.top_k), (0.2, 64, 20));
        // A config without sampling keys leaves transformers' defaults.
        let p = GenerationParams::from_generation_config(
            &serde_json::json!({"max_new_tokens": 9}),
            256,
        );
        assert!(!p.do_sample);
        assert_eq!((p.top_k, p.max_new_tokens), (50, 9));
    }
}
