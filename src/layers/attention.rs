//! Small tensor helpers shared by model implementations.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{DType, Device, Module, Result, Tensor};
use rayon::prelude::*;

/// Whether glance's own CPU kernels (softmax, GELU, attention, few-row and bf16 matmuls, folded
/// cross-attention) run where they apply. With `GLANCE_CANDLE_OPS=1` in the environment they do
/// not, and every op goes through candle the way it does on a GPU: the tests run the parity
/// checks that way too, so the GPU's code path is checked against transformers on any machine.
pub fn own_kernels() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("GLANCE_CANDLE_OPS").is_none_or(|v| v.is_empty() || v == "0")
    })
}

/// Whether `t` is a CPU f32 tensor that glance's own kernels may take.
pub(crate) fn host_f32(t: &Tensor) -> bool {
    own_kernels() && matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// `hidden_act` from a config: candle's activations plus CLIP's `quick_gelu`, which candle lacks.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum HiddenAct {
    /// `x * sigmoid(1.702 x)`, transformers' `QuickGELUActivation`.
    QuickGelu,
    Other(candle_nn::Activation),
}

impl TryFrom<String> for HiddenAct {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, String> {
        if name == "quick_gelu" {
            return Ok(Self::QuickGelu);
        }
        serde_json::from_value(serde_json::Value::String(name.clone()))
            .map(Self::Other)
            .map_err(|_| format!("unsupported hidden_act {name:?}"))
    }
}

impl Module for HiddenAct {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        use crate::models::activation::{gelu, Gelu};
        use candle_nn::Activation;
        let fast = match self {
            Self::QuickGelu => Some(Gelu::Quick),
            Self::Other(Activation::Gelu) => Some(Gelu::Erf),
            Self::Other(Activation::NewGelu | Activation::GeluPytorchTanh) => Some(Gelu::Tanh),
            Self::Other(_) => None,
        };
        if let Some(kind) = fast {
            if let Some(y) = gelu(xs, kind)? {
                return Ok(y);
            }
        }
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Other(act) => act.forward(xs),
        }
    }
}

/// The most positions a stack of encoder layers runs at once, see [`by_batch_slices`].
const SLICE_POSITIONS: usize = 1024;

/// Runs a stack of encoder layers `f(start, slice)` over `x` `[batch, len, d]` in slices of
/// the batch of about [`SLICE_POSITIONS`] positions (at least one item; `start` is the slice's
/// first item) and joins the results.
///
/// The work per item is the same either way (the GEMMs have hundreds of rows in a slice too),
/// but every layer's temporaries — queries, keys and values, attention output, the MLP's
/// intermediate, four times as wide as the hidden state — exist for one slice instead of the
/// whole batch: 14 MB per hidden-state-sized tensor for a BLIP-base batch of 8 at 384², which
/// added up to 270 MB above the weights.
pub fn by_batch_slices(x: &Tensor, f: impl Fn(usize, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, len) = (x.dim(0)?, x.dim(1)?);
    let items = (SLICE_POSITIONS / len.max(1)).max(1);
    if b <= items {
        return f(0, x);
    }
    let parts = (0..b)
        .step_by(items)
        .map(|i| f(i, &x.narrow(0, i, items.min(b - i))?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// The transpose of a 2-D tensor, contiguous. On the CPU in f32 it is copied in 32 × 32 tiles:
/// candle's strided copy walks the source a column at a time, which took 0.4 s for GPT-2's
/// `Conv1D` weights at load.
pub fn transposed(t: &Tensor) -> Result<Tensor> {
    const TILE: usize = 32;
    if !host_f32(t) {
        return t.t()?.contiguous();
    }
    let (rows, cols) = t.dims2()?;
    let out = with_f32_values(t, |src| {
        // Each task writes TILE rows of the result (TILE columns of the source).
        par_filled(rows * cols, TILE * rows, 0f32, |b, block| {
            let c0 = b * TILE;
            let n = block.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for j in 0..n {
                    for r in r0..(r0 + TILE).min(rows) {
                        block[j * rows + r] = src[r * cols + c0 + j];
                    }
                }
            }
        })
    })?;
    Tensor::from_vec(out, (cols, rows), t.device())
}

/// `len` values in pieces of `piece` (the last may be shorter), each set to `zero` and then
/// handed to `fill(index, piece)` by one of the pool's threads. Unlike `vec![zero; len]` — one
/// thread faulting in and clearing every page before the work starts, 0.1 s for CLIP-B/32's
/// 300 MB of packed bf16 weights — each page is touched once, in parallel, by the thread that
/// fills it, while its piece is in cache.
pub(crate) fn par_filled<T: Copy + Send + Sync>(
    len: usize,
    piece: usize,
    zero: T,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(piece)
        .enumerate()
        .for_each(|(i, values)| {
            values.fill(MaybeUninit::new(zero));
            // SAFETY: every element was just initialized, and `MaybeUninit<T>` has the layout
            // of `T`.
            let values = unsafe { &mut *(values as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(i, values);
        });
    // SAFETY: the pieces cover the first `len` elements, all initialized above.
    unsafe { out.set_len(len) };
    out
}

/// Calls `f` with the values of a CPU f32 tensor, in row-major order, without copying them out of
/// the tensor (only a non-contiguous tensor is first made contiguous).
pub(crate) fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor, found one on {:?}", t.device())
    };
    Ok(f(
        &cpu.as_slice::<f32>()?[layout.start_offset()..][..t.elem_count()]
    ))
}

/// Scaled dot-product attention over `[batch, heads, len, head_dim]` tensors; `mask` is added to
/// the scores (0 keeps, -inf drops) and broadcast over batch and heads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    if mask.is_none() && q.dim(2)? == 1 && all_cpu_f32(q, k, v) {
        return single_query_attention(q, k, v);
    }
    if mask.is_none()
        && q.dim(2)? > 32
        && crate::models::linear::cpu_bf16_matmul()
        && all_cpu_f32(q, k, v)
    {
        return bf16_attention(q, k, v);
    }
    // The score matrix is [batch, heads, len, len]: for a ViT at 384² and batch 8 that is 128 MB
    // per layer, twice over with the softmax. In slices of the batch it stays near
    // SCORES_BYTES, which keeps the peak memory close to the weights' size.
    const SCORES_BYTES: usize = 32 << 20;
    let (b, h, n, _) = q.dims4()?;
    let per_item = h * n * k.dim(2)? * q.dtype().size_in_bytes();
    let step = (SCORES_BYTES / per_item.max(1)).max(1);
    if b > step {
        let parts = (0..b)
            .step_by(step)
            .map(|i| {
                let len = step.min(b - i);
                let mask = match mask {
                    Some(m) if m.rank() == 4 && m.dim(0)? == b => Some(m.narrow(0, i, len)?),
                    other => other.cloned(),
                };
                attention(
                    &q.narrow(0, i, len)?,
                    &k.narrow(0, i, len)?,
                    &v.narrow(0, i, len)?,
                    mask.as_ref(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&parts, 0);
    }
    let hd = q.dim(3)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let q = (q.contiguous()? * scale)?;
    let scores = q.matmul(&k.contiguous()?.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = crate::models::softmax::softmax_last_dim(&scores)?;
    probs.matmul(&v.contiguous()?)
}

/// Unmasked attention with many queries (vision towers) in `--dtype bf16` on the CPU: per
/// (batch, head), `softmax(Q·Kᵀ/√d)·V` with both products on the bf16 kernel and the scores
/// (`len × len`, about 1.3 MB at 577 tokens) kept in cache instead of a `[b, h, len, len]` tensor.
fn bf16_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    use crate::models::gemm_bf16::{matmul, PackedWeights};
    let (b, h, n, d) = q.dims4()?;
    let s = k.dim(2)?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; b * h * n * d];
    with_f32_values(q, |qs| {
        with_f32_values(k, |ks| {
            with_f32_values(v, |vs| {
                out.par_chunks_mut(n * d).enumerate().for_each(|(bh, o)| {
                    let qh: Vec<f32> = qs[bh * n * d..][..n * d]
                        .iter()
                        .map(|x| x * scale)
                        .collect();
                    let keys = PackedWeights::new(&ks[bh * s * d..][..s * d], s, d);
                    let mut scores = matmul(&qh, n, &keys, None);
                    crate::models::softmax::softmax_rows(&mut scores, s);
                    // P·V as P·(Vᵀ)ᵀ: the kernel's weights are Vᵀ, packed straight from V.
                    let values = PackedWeights::from_transposed(&vs[bh * s * d..][..s * d], s, d);
                    o.copy_from_slice(&matmul(&scores, n, &values, None));
                })
            })
        })
    })???;
    Tensor::from_vec(out, (b, h, n, d), q.device())
}

/// Additive causal mask `[new, past + new]` for `new` query positions after `past` cached ones.
pub fn causal_mask(new: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = past + new;
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (new, total), device)?.to_dtype(dtype)
}

fn all_cpu_f32(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    [q, k, v].into_iter().all(host_f32)
}

/// Attention for one query position per (batch, head), the shape of every decoding step: a
/// general batched GEMM would pack each head's keys for a single row, so instead each head
/// streams its keys and values once.
fn single_query_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, _, d) = q.dims4()?;
    let s = k.dim(2)?;
    let scale = 1.0 / (d as f32).sqrt();
    let dot = crate::models::linear::dot_fn();
    let mut out = vec![0f32; b * h * d];
    with_f32_values(q, |qs| {
        with_f32_values(k, |kd| {
            with_f32_values(v, |vd| {
                out.par_chunks_mut(d).enumerate().for_each(|(bh, o)| {
                    let q = &qs[bh * d..(bh + 1) * d];
                    let keys = &kd[bh * s * d..(bh + 1) * s * d];
                    let values = &vd[bh * s * d..(bh + 1) * s * d];
                    let mut scores: Vec<f32> = keys
                        .chunks_exact(d)
                        .map(|key| dot(q, key) * scale)
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for x in scores.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    for (p, value) in scores.iter().zip(values.chunks_exact(d)) {
                        let p = p / sum;
                        for (o, x) in o.iter_mut().zip(value) {
                            *o += p * x;
                        }
                    }
                })
            })
        })
    })???;
    Tensor::from_vec(out, (b, h, 1, d), q.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random `[b, h, len, d]` queries and `[b, h, keys, d]` keys and values.
    fn qkv(b: usize, h: usize, n: usize, keys: usize, d: usize) -> [Tensor; 3] {
        let dev = Device::Cpu;
        [n, keys, keys].map(|len| Tensor::randn(0f32, 1.0, (b, h, len, d), &dev).unwrap())
    }

    /// The largest difference between `got` and candle's own softmax(QKᵀ/√d)·V.
    fn max_diff_from_reference(got: Tensor, [q, k, v]: &[Tensor; 3]) -> f32 {
        let d = q.dim(3).unwrap();
        let scores = (q * (1.0 / (d as f64).sqrt()))
            .unwrap()
            .matmul(&k.t().unwrap())
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(v)
            .unwrap();
        crate::models::max_abs_diff(&got, &want)
    }

    #[test]
    fn tiled_transpose_equals_candles() -> Result<()> {
        for (r, c) in [(1, 1), (3, 70), (65, 33), (64, 64)] {
            let t = Tensor::randn(0f32, 1.0, (r, c), &Device::Cpu)?;
            let ours = transposed(&t)?;
            assert_eq!(ours.dims(), &[c, r]);
            assert_eq!(ours.to_vec2::<f32>()?, t.t()?.to_vec2::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn attention_in_batch_slices_equals_the_whole_batch() {
        // 1 head of 2100 × 2100 scores: 17.6 MB per item, so a batch of 3 runs in slices.
        let t = qkv(3, 1, 2100, 2100, 4);
        let sliced = attention(&t[0], &t[1], &t[2], None).unwrap();
        let diff = max_diff_from_reference(sliced, &t);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn bf16_attention_is_close_to_f32() {
        if !crate::models::gemm_bf16::available() {
            return;
        }
        let t = qkv(2, 3, 50, 57, 16);
        let diff = max_diff_from_reference(bf16_attention(&t[0], &t[1], &t[2]).unwrap(), &t);
        // bf16 keeps 8 bits of mantissa: errors of a few 1e-2 on values of order 1.
        assert!(diff < 0.05, "{diff}");
    }

    #[test]
    fn hidden_act_parses_quick_gelu_and_candle_names() {
        let act: HiddenAct = serde_json::from_str(r#""quick_gelu""#).unwrap();
        assert_eq!(act, HiddenAct::QuickGelu);
        let act: HiddenAct = serde_json::from_str(r#""gelu_pytorch_tanh""#).unwrap();
        assert_eq!(
            act,
            HiddenAct::Other(candle_nn::Activation::GeluPytorchTanh)
        );
        assert!(serde_json::from_str::<HiddenAct>(r#""nope""#).is_err());
    }

    #[test]
    fn single_query_path_equals_batched_matmul() {
        let t = qkv(2, 3, 1, 9, 16);
        let fast = single_query_attention(&t[0], &t[1], &t[2]).unwrap();
        let diff = max_diff_from_reference(fast, &t);
        assert!(diff < 1e-5, "{diff}");
    }
}
