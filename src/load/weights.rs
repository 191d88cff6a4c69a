//! Weights to a `VarBuilder`.
//!
//! Safetensors files (single or sharded): where glance's allocator is the global one (the
//! `glance` binary), f32 tensors are the file's own pages — a private mapping whose buffers
//! [`crate::load::alloc`] knows how to free — so loading copies nothing and a tensor's pages are read
//! in when first used. Elsewhere (the library in other programs, tests) tensors are read one by
//! one into their own buffers, which keeps memory at the weights plus one tensor, where candle's
//! memory-mapped loader would hold every mapped page until the end. `pytorch_model.bin` goes
//! through candle's pickle reader.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::load::hub::Weights;

pub fn var_builder(
    weights: &Weights,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    match weights {
        Weights::Safetensors(paths) => {
            let backend = SafetensorsFiles::open(paths)?;
            Ok(VarBuilder::from_backend(
                Box::new(backend),
                dtype,
                device.clone(),
            ))
        }
        Weights::PyTorch(path) => {
            VarBuilder::from_pth(path, dtype, device).map_err(|e| Error::Config {
                file: path.display().to_string(),
                message: format!("cannot read weights: {e}"),
            })
        }
    }
}

#[derive(Debug, Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    len: usize,
    /// No other tensor's bytes overlap this one's, so a buffer in the mapping can own them.
    exclusive: bool,
}

/// An index of the tensors in one or more safetensors files, read on demand.
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, Mutex<File>)>,
    /// Each file's private mapping, where [`crate::load::alloc::map_file`] made one.
    mappings: Vec<Option<Mapping>>,
    entries: HashMap<String, Entry>,
    /// Tensors already handed out as buffers in a mapping: a second load of one is read
    /// instead, so no two buffers own the same bytes.
    mapped: Mutex<HashSet<String>>,
}

/// Clears `exclusive` on entries whose byte ranges overlap another's (a well-formed file has
/// none; such tensors are read rather than mapped).
fn mark_overlaps(entries: &mut HashMap<String, Entry>) {
    let mut ranges: Vec<(usize, u64, u64, String)> = entries
        .iter()
        .map(|(name, e)| (e.file, e.start, e.start + e.len as u64, name.clone()))
        .collect();
    ranges.sort();
    let mut overlapping = HashSet::new();
    for pair in ranges.windows(2) {
        let ((f0, _, end0, n0), (f1, start1, _, n1)) = (&pair[0], &pair[1]);
        if f0 == f1 && start1 < end0 {
            overlapping.insert(n0.clone());
            overlapping.insert(n1.clone());
        }
    }
    for name in overlapping {
        if let Some(e) = entries.get_mut(&name) {
            e.exclusive = false;
        }
    }
}

/// A file mapping registered with [`crate::load::alloc`]; it lives as long as the process.
struct Mapping(*mut u8);

// SAFETY: the mapping is never unmapped, and each tensor's range is handed out to one buffer
// at most (see `SafetensorsFiles::load`).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

fn st_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl SafetensorsFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut mappings = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
            let bad = |m: String| Error::config(path, format!("not a safetensors file: {m}"));
            let mut len = [0u8; 8];
            file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
            let header_len = u64::from_le_bytes(len);
            let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
            if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
                return Err(bad(format!("header of {header_len} bytes")));
            }
            let mut header = vec![0u8; header_len as usize];
            file.read_exact(&mut header)
                .map_err(|e| bad(e.to_string()))?;
            let header: HashMap<String, serde_json::Value> =
                serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
            let data_start = 8 + header_len;
            for (name, value) in header {
                if name == "__metadata__" {
                    continue;
                }
                let info: TensorInfo =
                    serde_json::from_value(value).map_err(|e| bad(format!("{name}: {e}")))?;
                let dtype = st_dtype(&info.dtype)
                    .ok_or_else(|| bad(format!("{name} has unsupported dtype {}", info.dtype)))?;
                let (a, b) = info.data_offsets;
                let expected = info.shape.iter().product::<usize>() * dtype.size_in_bytes();
                if b < a || (b - a) as usize != expected || data_start + b > file_len {
                    return Err(bad(format!("{name} has inconsistent offsets")));
                }
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype,
                        shape: info.shape,
                        start: data_start + a,
                        len: expected,
                        exclusive: true,
                    },
                );
            }
            mappings.push(crate::load::alloc::map_file(&file, file_len as usize).map(Mapping));
            files.push((path.clone(), Mutex::new(file)));
        }
        mark_overlaps(&mut entries);
        Ok(Self {
            files,
            mappings,
            entries,
            mapped: Mutex::new(HashSet::new()),
        })
    }

    fn load(&self, name: &str) -> candle_core::Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        // f32 (the common case): safetensors stores little-endian values, which on a
        // little-endian host are the in-memory layout, so the tensor can be the file's pages.
        #[cfg(target_endian = "little")]
        if entry.dtype == DType::F32 {
            let n = entry.len / 4;
            if let Some(Mapping(base)) = &self.mappings[entry.file] {
                let first_time = || {
                    let mut mapped = self.mapped.lock().unwrap_or_else(|p| p.into_inner());
                    mapped.insert(name.to_string())
                };
                if n > 0 && entry.exclusive && entry.start.is_multiple_of(4) && first_time() {
                    // SAFETY: the range lies in the file (checked at open), is aligned for f32,
                    // overlaps no other tensor and is handed out once (`exclusive`, `mapped`),
                    // and any bit pattern is a valid f32; the mapping is private (writes stay in
                    // this process) and registered, so the allocator frees the buffer by
                    // releasing its pages.
                    let values = unsafe {
                        Vec::from_raw_parts(base.add(entry.start as usize).cast::<f32>(), n, n)
                    };
                    return Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu);
                }
            }
            let mut values = vec![0f32; n];
            // SAFETY: any bit pattern is a valid f32, and the byte view covers exactly `values`.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), entry.len)
            };
            self.read_into(entry, name, bytes)?;
            return Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu);
        }
        let mut bytes = vec![0u8; entry.len];
        self.read_into(entry, name, &mut bytes)?;
        Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, &Device::Cpu)
    }

    fn read_into(&self, entry: &Entry, name: &str, buf: &mut [u8]) -> candle_core::Result<()> {
        let (path, file) = &self.files[entry.file];
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        file.seek(SeekFrom::Start(entry.start))
            .and_then(|_| file.read_exact(buf))
            .map_err(|e| {
                candle_core::Error::Msg(format!("{}: reading {name}: {e}", path.display()))
            })
    }
}

/// A tensor read from the file, in `dtype` on `dev`. A GPU converts the dtype itself: candle
/// converts on the CPU with one thread (f32 -> f16 of BLIP-base's 247 M weights: 1.0-1.5 s on
/// this machine); a GPU does it at its memory bandwidth once the f32 values are uploaded.
fn place(t: Tensor, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    if dev.is_cpu() {
        t.to_dtype(dtype)
    } else {
        t.to_device(dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        place(t, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        place(self.load(name)?, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_candle_writes_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::new(&[7u8, 8], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("a.weight", a.clone()), ("b", b)]), &path)
            .unwrap();
        let files = SafetensorsFiles::open(&[path]).unwrap();
        let got = files
            .get(
                (2, 3).into(),
                "a.weight",
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert!(files
            .get(
                (3, 2).into(),
                "a.weight",
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu
            )
            .is_err());
        assert!(!files.contains_tensor("missing"));

        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
        let err = SafetensorsFiles::open(&[junk]).err().unwrap().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }

    #[test]
    fn overlapping_tensors_are_not_exclusive() {
        let entry = |file, start, len| Entry {
            file,
            dtype: DType::F32,
            shape: vec![len / 4],
            start,
            len,
            exclusive: true,
        };
        let mut entries = HashMap::from([
            ("a".to_string(), entry(0, 0, 16)),
            ("b".to_string(), entry(0, 16, 16)),
            ("c".to_string(), entry(0, 24, 16)),
            ("d".to_string(), entry(1, 24, 16)),
        ]);
        mark_overlaps(&mut entries);
        let exclusive: Vec<bool> = ["a", "b", "c", "d"].map(|n| entries[n].exclusive).to_vec();
        assert_eq!(exclusive, [true, false, false, true]);
    }
}
