//! Rotary position embeddings in the rotate-half layout of Llama-style decoders, with the
//! multimodal variant (M-RoPE) of Qwen-VL: every position has three coordinates (time, height,
//! width), and each frequency of the rotation follows one of them. Text tokens have the same
//! value on all three, so for text M-RoPE is plain RoPE; an image's tokens share the time and
//! take their row and column in the merged grid.

use candle_core::{Device, Result, Tensor, D};

/// Which coordinate each rotary frequency follows, from `rope_scaling` / `rope_parameters`:
/// `mrope_section` gives how many of the `head_dim / 2` frequencies go to time, height and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MRope {
    pub section: [usize; 3],
    /// Qwen3-VL: frequencies cycle t, h, w, t, h, w … (each axis keeps its count); Qwen2-VL and
    /// Qwen2.5-VL: contiguous blocks, all of time's, then height's, then width's.
    pub interleaved: bool,
}

impl MRope {
    /// The axis (0 time, 1 height, 2 width) frequency `j` follows.
    fn axis(&self, j: usize) -> usize {
        let [t, h, w] = self.section;
        if self.interleaved {
            // transformers' recomposition: index j ≡ 1 (mod 3) below 3·h is height's, j ≡ 2
            // below 3·w width's, every other one time's.
            match j % 3 {
                1 if j < 3 * h => 1,
                2 if j < 3 * w => 2,
                _ => 0,
            }
        } else if j < t {
            0
        } else if j < t + h {
            1
        } else {
            2
        }
    }
}

/// Rotary embeddings for heads of `head_dim` values.
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f32>,
    mrope: Option<MRope>,
}

impl Rotary {
    /// `inv_freq[j] = 1 / theta^(2j / head_dim)`, in f32 as transformers computes it.
    pub fn new(
        head_dim: usize,
        theta: f64,
        mrope: Option<MRope>,
    ) -> std::result::Result<Self, String> {
        if head_dim == 0 || head_dim % 2 == 1 {
            return Err(format!(
                "rotary head_dim {head_dim} must be even and positive"
            ));
        }
        if let Some(m) = mrope {
            let total: usize = m.section.iter().sum();
            if total != head_dim / 2 {
                return Err(format!(
                    "mrope_section {:?} adds up to {total}, not head_dim / 2 = {}",
                    m.section,
                    head_dim / 2
                ));
            }
        }
        let theta = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|j| 1.0 / theta.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        Ok(Self { inv_freq, mrope })
    }

    pub fn head_dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// `(cos, sin)`, each `[positions.len(), head_dim]` f32, for positions given as
    /// (time, height, width); without M-RoPE only the first coordinate counts.
    pub fn cos_sin(&self, positions: &[[i64; 3]], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half * 2);
        let mut sin = Vec::with_capacity(positions.len() * half * 2);
        for p in positions {
            let start = cos.len();
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let axis = self.mrope.map_or(0, |m| m.axis(j));
                let angle = p[axis] as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
            // Both halves of a head rotate by the same angles.
            cos.extend_from_within(start..start + half);
            sin.extend_from_within(start..start + half);
        }
        let shape = (positions.len(), half * 2);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }
}

/// `x · cos + rotate_half(x) · sin` for `x` `[batch, heads, seq, head_dim]` and `cos`, `sin`
/// `[batch, seq, head_dim]` (or `[seq, head_dim]` for every row alike), in `x`'s dtype.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = match cos.rank() {
        2 => (
            cos.unsqueeze(0)?.unsqueeze(0)?,
            sin.unsqueeze(0)?.unsqueeze(0)?,
        ),
        _ => (cos.unsqueeze(1)?, sin.unsqueeze(1)?),
    };
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// One stretch of a prompt for [`mrope_positions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// `n` text tokens.
    Text(usize),
    /// An image's tokens: its patch grid `(t, h, w)` before the `merge × merge` merge.
    Image {
        grid: (usize, usize, usize),
        merge: usize,
    },
}

/// The M-RoPE positions of a prompt (transformers' `get_rope_index` for one unpadded sequence):
/// text counts on from the last position on all three axes; an image's tokens take the current
/// position plus their (time, row, column) in the merged grid, and the text after it continues
/// from the current position plus the larger of the grid's merged height and width. Returns the
/// positions and the delta to add to the cache position of each later (generated) token.
pub fn mrope_positions(spans: &[Span]) -> (Vec<[i64; 3]>, i64) {
    let mut out = Vec::new();
    let mut current = 0i64;
    for span in spans {
        match *span {
            Span::Text(n) => {
                out.extend((0..n as i64).map(|i| [current + i; 3]));
                current += n as i64;
            }
            Span::Image {
                grid: (t, h, w),
                merge,
            } => {
                let (h, w) = (h / merge, w / merge);
                for ti in 0..t as i64 {
                    for hi in 0..h as i64 {
                        for wi in 0..w as i64 {
                            out.push([current + ti, current + hi, current + wi]);
                        }
                    }
                }
                current += h.max(w) as i64;
            }
        }
    }
    let max = out.iter().flatten().copied().max().unwrap_or(-1);
    let delta = max + 1 - out.len() as i64;
    (out, delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_and_sectioned_axes() {
        let m = MRope {
            section: [3, 3, 2],
            interleaved: true,
        };
        let axes: Vec<usize> = (0..8).map(|j| m.axis(j)).collect();
        assert_eq!(axes, [0, 1, 2, 0, 1, 2, 0, 1]);
        let m = MRope {
            section: [3, 3, 2],
            interleaved: false,
        };
        let axes: Vec<usize> = (0..8).map(|j| m.axis(j)).collect();
        assert_eq!(axes, [0, 0, 0, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn text_positions_count_on_after_an_image() {
        let (pos, delta) = mrope_positions(&[
            Span::Text(2),
            Span::Image {
                grid: (1, 4, 6),
                merge: 2,
            },
            Span::Text(1),
        ]);
        assert_eq!(pos.len(), 2 + 6 + 1);
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[7], [2, 3, 4]);
        assert_eq!(pos[8], [5, 5, 5]);
        assert_eq!(delta, 6 - 9);
    }
}
