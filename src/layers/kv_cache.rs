//! The decoder's state across decoding steps: cached self-attention keys and values per layer,
//! and the images' encoder states that cross-attention reads, shared by each image's rows.

use candle_core::Tensor;

use crate::error::Result;

/// One layer's cached self-attention keys/values, shape `[rows, heads, len, head_dim]`, and,
/// for decoders that project cross-attention's keys and values
/// ([`super::cross_attention::ProjectedCrossAttention`]), those of each image,
/// `[images, heads, positions, head_dim]` (one per image of `KvCache::memory`).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub self_kv: Option<(Tensor, Tensor)>,
    pub cross_kv: Option<(Tensor, Tensor)>,
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
            let images = Tensor::new(images, device)?;
            self.memory = self.memory.index_select(&images, 0)?;
            for layer in &mut self.layers {
                if let Some((k, v)) = &layer.cross_kv {
                    layer.cross_kv =
                        Some((k.index_select(&images, 0)?, v.index_select(&images, 0)?));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};

    /// A cache of 2 layers for `images` images of `group` rows, where every value of an image's
    /// states and projected keys/values is the image's number, and every row's self-attention
    /// entries are the row's number.
    fn cache(images: usize, group: usize) -> Result<KvCache> {
        let dev = Device::Cpu;
        let per_image = |shape: &[usize]| -> Result<Tensor> {
            let ids: Vec<f32> = (0..images).map(|i| i as f32).collect();
            let mut dims = shape.to_vec();
            dims[0] = 1;
            let ones = Tensor::ones(dims.as_slice(), DType::F32, &dev)?;
            Ok(Tensor::new(ids, &dev)?
                .reshape([&[images][..], &vec![1; shape.len() - 1]].concat())?
                .broadcast_mul(&ones)?)
        };
        let mut cache = KvCache::new(2, per_image(&[images, 5, 8])?);
        cache.set_group(group);
        let rows: Vec<f32> = (0..images * group).map(|r| r as f32).collect();
        let self_kv = Tensor::new(rows, &dev)?
            .reshape((images * group, 1, 1, 1))?
            .broadcast_as((images * group, 2, 3, 4))?
            .contiguous()?;
        for layer in &mut cache.layers {
            layer.self_kv = Some((self_kv.clone(), self_kv.clone()));
            let kv = per_image(&[images, 2, 5, 4])?;
            layer.cross_kv = Some((kv.clone(), kv));
        }
        Ok(cache)
    }

    fn firsts(t: &Tensor) -> Vec<f32> {
        (0..t.dim(0).unwrap())
            .map(|i| {
                t.i(i)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .i(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn dropping_an_image_drops_its_states_and_projected_keys() -> Result<()> {
        // 3 images of 2 beams; image 0 finishes, image 2's beams swap.
        let mut cache = cache(3, 2)?;
        cache.select(&[2, 3, 5, 4], &Device::Cpu)?;
        assert_eq!(firsts(&cache.memory), [1.0, 2.0]);
        for layer in &cache.layers {
            let (k, v) = layer.cross_kv.as_ref().unwrap();
            assert_eq!((firsts(k), firsts(v)), (vec![1.0, 2.0], vec![1.0, 2.0]));
            assert_eq!(
                firsts(&layer.self_kv.as_ref().unwrap().0),
                [2.0, 3.0, 5.0, 4.0]
            );
        }
        assert_eq!(cache.group, 2);
        Ok(())
    }

    #[test]
    fn rows_of_one_image_apart_get_their_own_states() -> Result<()> {
        // 2 images of 2 samples; one sample of image 0 finishes.
        let mut cache = cache(2, 2)?;
        cache.select(&[1, 2, 3], &Device::Cpu)?;
        assert_eq!(cache.group, 1);
        assert_eq!(firsts(&cache.memory), [0.0, 1.0, 1.0]);
        for layer in &cache.layers {
            let (k, _) = layer.cross_kv.as_ref().unwrap();
            assert_eq!(firsts(k), [0.0, 1.0, 1.0]);
        }
        Ok(())
    }
}
