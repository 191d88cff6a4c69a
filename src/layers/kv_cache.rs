//! The decoder's state across decoding steps: cached self-attention keys and values per layer,
//! and the images' encoder states that cross-attention reads, shared by each image's rows.

use candle_core::{Result as CandleResult, Tensor};

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

/// Positions a [`GrowingKv`] makes room for at a time.
const GROW_BY: usize = 128;

/// One layer's self-attention keys and values `[rows, heads, len, head_dim]`, in buffers with
/// room for more positions: a decoding step writes its one new position in place, where
/// `Tensor::cat` copied the whole cache every step (at batch 4, 300 positions and 28 layers,
/// 275 MB per step for Qwen3-VL-2B). A write only fills positions past every view handed out
/// before it; the type is not `Clone`, since two clones would write the same positions.
#[derive(Debug)]
pub struct GrowingKv {
    /// `[rows, heads, capacity, head_dim]`.
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl GrowingKv {
    /// Appends `k`, `v` `[rows, heads, new, head_dim]` to `cache` (a new one if `None`) and
    /// returns views of all its keys and values so far.
    pub fn append(
        cache: &mut Option<Self>,
        k: &Tensor,
        v: &Tensor,
    ) -> CandleResult<(Tensor, Tensor)> {
        let new = k.dim(2)?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let c = match cache.take() {
            Some(c) if c.len + new <= c.k.dim(2)? => c,
            old => {
                let len = old.as_ref().map_or(0, |c| c.len);
                let (rows, heads, _, d) = k.dims4()?;
                let room = (len + new).next_multiple_of(GROW_BY);
                let k2 = Tensor::zeros((rows, heads, room, d), k.dtype(), k.device())?;
                let v2 = Tensor::zeros((rows, heads, room, d), v.dtype(), v.device())?;
                if let Some(old) = old {
                    k2.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                    v2.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Self { k: k2, v: v2, len }
            }
        };
        c.k.slice_set(&k, 2, c.len)?;
        c.v.slice_set(&v, 2, c.len)?;
        let c = Self {
            len: c.len + new,
            ..c
        };
        let views = (c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?);
        *cache = Some(c);
        Ok(views)
    }

    /// Keeps only `rows`, in this order.
    pub fn select(&mut self, rows: &Tensor) -> CandleResult<()> {
        self.k = self.k.index_select(rows, 0)?;
        self.v = self.v.index_select(rows, 0)?;
        Ok(())
    }

    pub fn device(&self) -> &candle_core::Device {
        self.k.device()
    }

    /// The cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    fn a_growing_cache_equals_concatenation_across_its_growth() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = None;
        let mut all: Option<(Tensor, Tensor)> = None;
        // A prompt, then single steps past the first GROW_BY positions, then a select.
        let steps = std::iter::once(GROW_BY - 3).chain(std::iter::repeat_n(1, 5));
        for (i, new) in steps.enumerate() {
            let k = Tensor::randn(0f32, 1.0, (3, 2, new, 4), &dev)?;
            let v = (Tensor::randn(0f32, 1.0, (3, 2, new, 4), &dev)? + i as f64)?;
            let (gk, gv) = GrowingKv::append(&mut cache, &k, &v)?;
            all = Some(match all {
                Some((ak, av)) => (Tensor::cat(&[&ak, &k], 2)?, Tensor::cat(&[&av, &v], 2)?),
                None => (k, v),
            });
            let (ak, av) = all.as_ref().unwrap();
            assert_eq!(gk.dims(), ak.dims());
            assert_eq!(crate::kernels::max_abs_diff(&gk, ak), 0.0);
            assert_eq!(crate::kernels::max_abs_diff(&gv, av), 0.0);
        }
        let mut cache = cache.unwrap();
        assert_eq!(cache.len(), GROW_BY + 2);
        let rows = Tensor::new(&[2u32, 0], &dev)?;
        cache.select(&rows)?;
        let mut cache = Some(cache);
        let (k, v) = (
            Tensor::zeros((2, 2, 1, 4), DType::F32, &dev)?,
            Tensor::ones((2, 2, 1, 4), DType::F32, &dev)?,
        );
        let (gk, gv) = GrowingKv::append(&mut cache, &k, &v)?;
        let (ak, av) = all.unwrap();
        let want_k = Tensor::cat(&[&ak.index_select(&rows, 0)?, &k], 2)?;
        let want_v = Tensor::cat(&[&av.index_select(&rows, 0)?, &v], 2)?;
        assert_eq!(crate::kernels::max_abs_diff(&gk, &want_k), 0.0);
        assert_eq!(crate::kernels::max_abs_diff(&gv, &want_v), 0.0);
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
