//! Beam search, ported from transformers' vectorised `_beam_search` (v4.50+): the same
//! candidate count, length penalty, finished-beam bookkeeping and early-stopping heuristic, so
//! the chosen sequences match token for token. Images whose search is over leave the batch.

use candle_core::{DType, Tensor};

use super::{logits, EarlyStopping, Generated, GenerationParams, KvCache, StopTokens, TextDecoder};
use crate::error::Result;

const NEG: f32 = -1.0e9;

#[derive(Clone)]
struct Beam {
    tokens: Vec<u32>,
    score: f32,
}

/// The search state of one image.
struct Search {
    running: Vec<Beam>,
    /// Best finished hypotheses, best first; `None` slots are still empty (score -1e9).
    finished: Vec<Option<Beam>>,
    heuristic_unsatisfied: bool,
    done: bool,
}

struct Candidate {
    beam: usize,
    token: u32,
    score: f32,
}

pub(super) fn beam_search(
    decoder: &dyn TextDecoder,
    encoder_hidden: &Tensor,
    prompt: &[u32],
    params: &GenerationParams,
    stop: &StopTokens,
) -> Result<Vec<Vec<Generated>>> {
    let nb = params.num_beams;
    let images = encoder_hidden.dim(0)?;
    let prompt_len = prompt.len();
    let max_length = prompt_len + params.max_new_tokens;
    let keep_k = (2usize.max(1 + stop.eos.len())) * nb;
    let device = decoder.device();

    let mut cache: KvCache = decoder.new_cache(encoder_hidden)?;
    cache.set_group(nb);

    let mut searches: Vec<Search> = (0..images)
        .map(|_| Search {
            running: (0..nb)
                .map(|b| Beam {
                    tokens: prompt.to_vec(),
                    score: if b == 0 { 0.0 } else { NEG },
                })
                .collect(),
            finished: vec![None; nb],
            heuristic_unsatisfied: true,
            done: false,
        })
        .collect();
    // Images still searching, in cache row order (each owns `nb` consecutive rows).
    let mut active: Vec<usize> = (0..images).collect();
    let mut input = Tensor::new(prompt, device)?
        .unsqueeze(0)?
        .repeat((images * nb, 1))?;
    let mut cur_len = prompt_len;

    while cur_len < max_length && !active.is_empty() {
        let all_logits = decoder
            .forward(&input, &mut cache)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut rows_kept: Vec<u32> = Vec::new();
        let mut next_tokens: Vec<u32> = Vec::new();
        let mut still_active = Vec::new();
        for (slot, &img) in active.iter().enumerate() {
            let search = &mut searches[img];
            let mut candidates: Vec<Candidate> = Vec::with_capacity(keep_k * nb);
            for b in 0..nb {
                let mut scores = all_logits[slot * nb + b].clone();
                logits::log_softmax(&mut scores);
                let beam = &search.running[b];
                logits::process(
                    &mut scores,
                    &beam.tokens,
                    cur_len - prompt_len,
                    params,
                    &stop.eos,
                );
                let base = beam.score;
                top_k_into(&scores, base, b, keep_k, &mut candidates);
            }
            // Best `keep_k` over all beams, ordered by accumulated score (beam-major on ties).
            candidates.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then(a.beam.cmp(&b.beam))
                    .then(a.token.cmp(&b.token))
            });
            candidates.truncate(keep_k);

            let hits: Vec<bool> = candidates
                .iter()
                .map(|c| stop.eos.contains(&c.token) || cur_len + 1 >= max_length)
                .collect();
            let new_len = cur_len + 1 - prompt_len;
            let penalty = (new_len as f32).powf(params.length_penalty);
            // _update_finished_beams: only the top `nb` candidates may finish.
            let full = search.finished.iter().all(Option::is_some)
                && params.early_stopping == EarlyStopping::Always;
            if search.heuristic_unsatisfied && !full {
                for (c, _) in candidates.iter().zip(&hits).take(nb).filter(|(_, h)| **h) {
                    let mut tokens = search.running[c.beam].tokens.clone();
                    tokens.push(c.token);
                    insert_finished(
                        &mut search.finished,
                        Beam {
                            tokens,
                            score: c.score / penalty,
                        },
                    );
                }
            }
            // _get_running_beams_for_next_iteration: best `nb` that did not stop.
            let mut running: Vec<(f32, usize)> = candidates
                .iter()
                .zip(&hits)
                .enumerate()
                .map(|(i, (c, h))| (if *h { c.score + NEG } else { c.score }, i))
                .collect();
            running.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let old_rows = slot * nb;
            let mut new_running = Vec::with_capacity(nb);
            for &(score, i) in running.iter().take(nb) {
                let c = &candidates[i];
                let mut tokens = search.running[c.beam].tokens.clone();
                tokens.push(c.token);
                rows_kept.push((old_rows + c.beam) as u32);
                next_tokens.push(c.token);
                new_running.push(Beam { tokens, score });
            }
            search.running = new_running;

            // _check_early_stop_heuristic, after cur_len += 1.
            let hyp_len =
                if params.early_stopping == EarlyStopping::Never && params.length_penalty > 0.0 {
                    max_length - prompt_len
                } else {
                    cur_len + 1 - prompt_len
                };
            let best_running =
                search.running[0].score / (hyp_len as f32).powf(params.length_penalty);
            let all_finished = search.finished.iter().all(Option::is_some);
            let worst_finished = if all_finished {
                search
                    .finished
                    .iter()
                    .flatten()
                    .map(|b| b.score)
                    .fold(f32::INFINITY, f32::min)
            } else {
                NEG
            };
            search.heuristic_unsatisfied &= best_running > worst_finished;
            let all_hit = hits.iter().all(|h| *h);
            search.done = !search.heuristic_unsatisfied
                || (all_finished && params.early_stopping == EarlyStopping::Always)
                || all_hit;
            if search.done {
                rows_kept.truncate(rows_kept.len() - nb);
                next_tokens.truncate(next_tokens.len() - nb);
            } else {
                still_active.push(img);
            }
        }
        cur_len += 1;
        active = still_active;
        if active.is_empty() || cur_len >= max_length {
            break;
        }
        cache.select(&rows_kept, device)?;
        input = Tensor::new(next_tokens, device)?.unsqueeze(1)?;
    }

    Ok(searches
        .into_iter()
        .map(|s| {
            s.finished
                .into_iter()
                .take(params.num_return_sequences)
                .map(|b| match b {
                    Some(b) => Generated {
                        tokens: b.tokens,
                        score: Some(b.score),
                    },
                    None => Generated {
                        tokens: prompt.to_vec(),
                        score: None,
                    },
                })
                .collect()
        })
        .collect())
}

/// Pushes the `k` best continuations of one beam (score = beam score + token log-prob).
fn top_k_into(scores: &[f32], base: f32, beam: usize, k: usize, out: &mut Vec<Candidate>) {
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        scores[b as usize]
            .total_cmp(&scores[a as usize])
            .then(a.cmp(&b))
    });
    for &t in &idx[..k] {
        out.push(Candidate {
            beam,
            token: t,
            score: base + scores[t as usize],
        });
    }
}

/// Keeps the `finished.len()` best hypotheses, best first; an earlier one wins ties.
fn insert_finished(finished: &mut [Option<Beam>], beam: Beam) {
    let pos = finished.iter().position(|f| match f {
        None => true,
        Some(f) => beam.score > f.score,
    });
    if let Some(pos) = pos {
        for i in (pos + 1..finished.len()).rev() {
            finished[i] = finished[i - 1].take();
        }
        finished[pos] = Some(beam);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beam(score: f32) -> Beam {
        Beam {
            tokens: vec![],
            score,
        }
    }

    #[test]
    fn finished_hypotheses_stay_sorted_and_bounded() {
        let mut f = vec![None, None];
        insert_finished(&mut f, beam(-3.0));
        insert_finished(&mut f, beam(-1.0));
        insert_finished(&mut f, beam(-2.0));
        let scores: Vec<f32> = f.iter().flatten().map(|b| b.score).collect();
        assert_eq!(scores, vec![-1.0, -2.0]);
    }
}
