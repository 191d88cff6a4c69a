//! The decoder's state across decoding steps: cached self-attention keys and values per layer,
//! and the images' encoder states that cross-attention reads, shared by each image's rows.

use candle_core::Tensor;

use crate::error::Result;

/// One layer's cached self-attention keys/values, shape `[rows, heads, len, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub self_kv: Option<(Tensor, Tensor)>,
}

/// A decoder's state across steps: one entry per layer, the number of cached positions and the
/// images' encoder states that every layer's cross-attention reads (see
/// [`super::cross_attention`]).
///
/// The encoder states hold one row per image; the decoder runs `group` consecutive rows per
/// image (beams, or several samples), which share them instead of copying them.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub seq_len: usize,
    pub group: usize,
    /// `[images, positions, dim]`.
    pub memory: Tensor,
}

impl KvCache {
    /// A fresh cache for `layers` layers attending to `memory` (the encoder states), with no
    /// self-attention entries yet.
    pub fn new(layers: usize, memory: Tensor) -> Self {
        Self {
            layers: vec![LayerCache::default(); layers],
            seq_len: 0,
            group: 1,
            memory,
        }
    }

    /// Runs `group` rows per image from now on (before the first step).
    pub fn set_group(&mut self, group: usize) {
        self.group = group.max(1);
    }

    /// Keeps, reorders or drops decoder rows; `rows` index the current rows. While every image
    /// keeps whole groups of consecutive rows, encoder states stay shared (one per image); when
    /// rows of an image finish at different times (sampling several captions), they are
    /// expanded to one per row.
    pub fn select(&mut self, rows: &[u32], device: &candle_core::Device) -> Result<()> {
        let group = self.group.max(1) as u32;
        let whole_groups = rows.len().is_multiple_of(group as usize)
            && rows
                .chunks(group as usize)
                .all(|c| c.iter().all(|r| r / group == c[0] / group));
        let images: Vec<u32> = if whole_groups {
            rows.iter()
                .step_by(group as usize)
                .map(|r| r / group)
                .collect()
        } else {
            self.group = 1;
            rows.iter().map(|r| r / group).collect()
        };
        let unchanged = self.memory.dim(0)? == images.len()
            && images.iter().enumerate().all(|(i, &m)| i as u32 == m);
        let rows = Tensor::new(rows, device)?;
        for layer in &mut self.layers {
            if let Some((k, v)) = &layer.self_kv {
                layer.self_kv = Some((k.index_select(&rows, 0)?, v.index_select(&rows, 0)?));
            }
        }
        if !unchanged {
            self.memory = self.memory.index_select(&Tensor::new(images, device)?, 0)?;
        }
        Ok(())
    }
}
