//! Weights to a `VarBuilder`.
//!
//! Safetensors files and `pytorch_model.bin` archives (single or sharded) are indexed alike:
//! each tensor is a byte range of its file. A `.bin` is a zip archive whose entries torch stores
//! uncompressed, so its tensors' bytes lie in the file just as a safetensors file's do; candle's
//! pickle reader supplies their names, dtypes and shapes. Where glance's allocator is the global
//! one (the `glance` binary), f32 tensors are the file's own pages — a private mapping whose
//! buffers [`crate::load::alloc`] knows how to free — so loading copies nothing and a tensor's
//! pages are read in when first used. Elsewhere (the library in other programs, tests) tensors
//! are read one by one into their own buffers, which keeps memory at the weights plus one
//! tensor. A tensor of a dtype glance cannot hold (a BOOL mask buffer, say) is indexed but only
//! an error when something asks for it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
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
        Weights::Safetensors(paths) => Ok(VarBuilder::from_backend(
            Box::new(WeightFiles::open(paths)?),
            dtype,
            device.clone(),
        )),
        Weights::PyTorch(paths) => Ok(VarBuilder::from_backend(
            Box::new(WeightFiles::open_pytorch(paths)?),
            dtype,
            device.clone(),
        )),
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
    /// The dtype, or why the tensor cannot be read (an unsupported dtype or layout).
    dtype: std::result::Result<DType, String>,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    len: usize,
    /// No other tensor's bytes overlap this one's, so a buffer in the mapping can own them.
    exclusive: bool,
}

/// An index of the tensors in one or more safetensors or `pytorch_model.bin` files, read on
/// demand.
pub struct WeightFiles {
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
// at most (see `WeightFiles::load`).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

/// The size of an element of a safetensors dtype glance does not read, to check the file's
/// offsets all the same.
fn st_unsupported_size(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "I16" | "U16" => 2,
        "I32" => 4,
        "U64" => 8,
        _ => return None,
    })
}

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

impl WeightFiles {
    /// Opens each of `paths`, indexes its tensors with `index`, and maps it.
    fn open_with(
        paths: &[PathBuf],
        index: impl Fn(&Path, &mut File, u64, usize, &mut HashMap<String, Entry>) -> Result<()>,
    ) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut mappings = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
            let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
            index(path, &mut file, file_len, i, &mut entries)?;
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

    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        Self::open_with(paths, Self::index_safetensors)
    }

    /// Indexes `pytorch_model.bin` files (see [`Self::index_pytorch`]).
    pub fn open_pytorch(paths: &[PathBuf]) -> Result<Self> {
        Self::open_with(paths, Self::index_pytorch)
    }

    /// Indexes one safetensors file's tensors (its header) into `entries`.
    fn index_safetensors(
        path: &Path,
        file: &mut File,
        file_len: u64,
        i: usize,
        entries: &mut HashMap<String, Entry>,
    ) -> Result<()> {
        let bad = |m: String| Error::config(path, format!("not a safetensors file: {m}"));
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
        let header_len = u64::from_le_bytes(len);
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
            let (dtype, size) = match st_dtype(&info.dtype) {
                Some(dtype) => (Ok(dtype), dtype.size_in_bytes()),
                None => match st_unsupported_size(&info.dtype) {
                    Some(size) => (Err(format!("dtype {}", info.dtype)), size),
                    None => return Err(bad(format!("{name} has unknown dtype {}", info.dtype))),
                },
            };
            let (a, b) = info.data_offsets;
            let expected = info.shape.iter().product::<usize>() * size;
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
        Ok(())
    }

    /// Indexes one `pytorch_model.bin`'s tensors into `entries`: the metadata from the
    /// archive's pickle, the bytes where the zip entry of their storage lies in the file.
    fn index_pytorch(
        path: &Path,
        file: &mut File,
        file_len: u64,
        i: usize,
        entries: &mut HashMap<String, Entry>,
    ) -> Result<()> {
        let bad = |m: String| Error::config(path, format!("not a PyTorch checkpoint: {m}"));
        let infos = candle_core::pickle::read_pth_tensor_info(path, false, None)
            .map_err(|e| bad(e.to_string()))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(
            file.try_clone().map_err(|e| Error::io(path, e))?,
        ))
        .map_err(|e| bad(e.to_string()))?;
        // Storage entry -> its first byte in the file and its length.
        let mut storages: HashMap<String, (u64, u64)> = HashMap::new();
        for info in infos {
            let name = info.name.clone();
            let storage = match storages.get(&info.path) {
                Some(s) => *s,
                None => {
                    let entry = zip
                        .by_name(&info.path)
                        .map_err(|e| bad(format!("{name}: {e}")))?;
                    if entry.compression() != zip::CompressionMethod::Stored {
                        return Err(bad(format!("{name}: compressed storage")));
                    }
                    let start = entry
                        .data_start()
                        .ok_or_else(|| bad(format!("{name}: no data offset")))?;
                    let s = (start, entry.size());
                    storages.insert(info.path.clone(), s);
                    s
                }
            };
            let layout = &info.layout;
            let shape = layout.dims().to_vec();
            let len = shape.iter().product::<usize>() * info.dtype.size_in_bytes();
            // candle's pickle reader gives the storage offset in bytes.
            let offset = layout.start_offset() as u64;
            if offset + len as u64 > storage.1 || storage.0 + storage.1 > file_len {
                return Err(bad(format!("{name} lies outside its storage")));
            }
            let dtype = match layout.is_contiguous() {
                true => Ok(info.dtype),
                false => Err(format!("strided layout {:?}", layout.stride())),
            };
            entries.insert(
                name,
                Entry {
                    file: i,
                    dtype,
                    shape,
                    start: storage.0 + offset,
                    len,
                    exclusive: true,
                },
            );
        }
        Ok(())
    }

    fn load(&self, name: &str) -> candle_core::Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let dtype = entry.dtype.clone().map_err(|why| {
            candle_core::Error::Msg(format!("tensor {name} cannot be read by glance: {why}"))
        })?;
        // f32 (the common case): both formats store little-endian values, which on a
        // little-endian host are the in-memory layout, so the tensor can be the file's pages.
        #[cfg(target_endian = "little")]
        if dtype == DType::F32 {
            let values: Vec<f32> = self.values(entry, name)?;
            return Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu);
        }
        let mut bytes = vec![0u8; entry.len];
        self.read_into(entry, name, &mut bytes)?;
        Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, &Device::Cpu)
    }

    /// The values of `entry`, stored as little-endian `T` (on a little-endian host): a buffer
    /// in the file's mapping where one can own them, else read into a buffer of their own.
    #[cfg(target_endian = "little")]
    fn values<T: Copy + Default>(&self, entry: &Entry, name: &str) -> candle_core::Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        let n = entry.len / size;
        if let Some(Mapping(base)) = &self.mappings[entry.file] {
            let first_time = || {
                let mut mapped = self.mapped.lock().unwrap_or_else(|p| p.into_inner());
                mapped.insert(name.to_string())
            };
            let aligned = entry.start.is_multiple_of(std::mem::align_of::<T>() as u64);
            if n > 0 && entry.exclusive && aligned && first_time() {
                // SAFETY: the range lies in the file (checked at open), is aligned for `T`,
                // overlaps no other tensor and is handed out once (`exclusive`, `mapped`), and
                // the callers' `T` (f32, bf16) take any bit pattern; the mapping is private
                // (writes stay in this process) and registered, so the allocator frees the
                // buffer by releasing its pages.
                return Ok(unsafe {
                    Vec::from_raw_parts(base.add(entry.start as usize).cast::<T>(), n, n)
                });
            }
        }
        let mut values = vec![T::default(); n];
        // SAFETY: the callers' `T` take any bit pattern, and the byte view covers exactly
        // `values`.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), n * size) };
        self.read_into(entry, name, bytes)?;
        Ok(values)
    }

    /// A bf16 tensor as it is stored, for a layer that packs it for the bf16 kernel
    /// ([`PACK_AS_STORED`]): no f32 copy (twice its size in fresh pages, which the kernel must
    /// clear: half of Qwen3-VL-2B's start-up). `None` when it is stored in another dtype.
    #[cfg(target_endian = "little")]
    fn load_bf16_as_stored(&self, name: &str) -> candle_core::Result<Option<Tensor>> {
        match self.entries.get(name) {
            Some(entry) if entry.dtype == Ok(DType::BF16) => {
                let values: Vec<half::bf16> = self.values(entry, name)?;
                Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu).map(Some)
            }
            _ => Ok(None),
        }
    }

    #[cfg(not(target_endian = "little"))]
    fn load_bf16_as_stored(&self, _: &str) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }

    /// A bf16 tensor read straight into f32 (a bf16 is the top half of an f32: exact), in one
    /// pass over the bytes, where reading it as bf16 and then converting took three.
    fn load_bf16_as_f32(&self, name: &str) -> candle_core::Result<Option<Tensor>> {
        let Some(entry) = self.entries.get(name) else {
            return Ok(None);
        };
        if entry.dtype != Ok(DType::BF16) {
            return Ok(None);
        }
        // From the file's mapping where there is one: its pages come from the page cache,
        // where a buffer to read into is fresh memory the kernel must clear first.
        let read;
        let bytes: &[u8] = match &self.mappings[entry.file] {
            Some(Mapping(base)) => unsafe {
                std::slice::from_raw_parts(base.add(entry.start as usize), entry.len)
            },
            None => {
                let mut buf = vec![0u8; entry.len];
                self.read_into(entry, name, &mut buf)?;
                read = buf;
                &read
            }
        };
        let mut values = vec![0f32; entry.len / 2];
        use rayon::prelude::*;
        values
            .par_chunks_mut(1 << 16)
            .zip(bytes.par_chunks(2 << 16))
            .for_each(|(out, raw)| {
                for (v, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                }
            });
        if let (Some(Mapping(base)), true) = (&self.mappings[entry.file], entry.exclusive) {
            // Read once: its pages need not stay in this process's memory.
            crate::load::alloc::release(unsafe { base.add(entry.start as usize) }, entry.len);
        }
        Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu).map(Some)
    }

    /// `name` as `dtype`, on the CPU.
    fn load_as(&self, name: &str, dtype: DType) -> candle_core::Result<Tensor> {
        if dtype == DType::F32 && cfg!(target_endian = "little") {
            if let Some(t) = self.load_bf16_as_f32(name)? {
                return Ok(t);
            }
        }
        self.load(name)
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

/// `t`, or an error naming `name` if it is not of shape `s`.
fn of_shape(t: Tensor, s: Shape, name: &str) -> candle_core::Result<Tensor> {
    if t.shape() != &s {
        return Err(candle_core::Error::UnexpectedShape {
            msg: format!("shape mismatch for {name}"),
            expected: s,
            got: t.shape().clone(),
        }
        .bt());
    }
    Ok(t)
}

/// The initialisation hint with which a layer asks for a weight it will pack for the CPU's bf16
/// kernel: candle's `VarBuilder` can only ask for a tensor in one dtype, so glance's backend
/// reads this hint (a NaN with a payload of its own, which no initialiser uses) as "in bf16 if
/// the file stores bf16, else in the dtype asked for". Other backends ignore hints for tensors
/// they hold, so they answer in the dtype asked for, which packs to the same bits.
pub const PACK_AS_STORED: candle_nn::Init = candle_nn::Init::Const(f64::from_bits(PACK_BITS));
const PACK_BITS: u64 = 0x7ff8_0000_6c61_6e63;

fn is_pack_hint(init: &candle_nn::Init) -> bool {
    matches!(init, candle_nn::Init::Const(x) if x.to_bits() == PACK_BITS)
}

impl SimpleBackend for WeightFiles {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if dev.is_cpu() && is_pack_hint(&init) {
            if let Some(t) = self.load_bf16_as_stored(name)? {
                return of_shape(t, s, name);
            }
        }
        let t = match dev.is_cpu() {
            true => self.load_as(name, dtype)?,
            false => self.load(name)?,
        };
        place(of_shape(t, s, name)?, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = match dev.is_cpu() {
            true => self.load_as(name, dtype)?,
            false => self.load(name)?,
        };
        place(t, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_tensors_read_as_f32_hold_their_exact_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let w = Tensor::randn(0f32, 3.0, (70_000, 3), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        candle_core::safetensors::save(&HashMap::from([("w", w.clone())]), &path).unwrap();
        let files = WeightFiles::open(&[path]).unwrap();
        let got = files
            .get(
                (70_000, 3).into(),
                "w",
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let expected = w.to_dtype(DType::F32).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn the_packing_hint_reads_bf16_as_stored_and_other_dtypes_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let w = Tensor::randn(0f32, 3.0, (5, 3), &Device::Cpu).unwrap();
        let narrow = w.to_dtype(DType::BF16).unwrap();
        let tensors = HashMap::from([("wide", w.clone()), ("narrow", narrow.clone())]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let files = WeightFiles::open(&[path]).unwrap();
        let get = |name, init| {
            files
                .get((5, 3).into(), name, init, DType::F32, &Device::Cpu)
                .unwrap()
        };
        let as_stored = get("narrow", PACK_AS_STORED);
        assert_eq!(as_stored.dtype(), DType::BF16);
        let bits = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(bits(&as_stored), bits(&narrow));
        assert_eq!(get("wide", PACK_AS_STORED).dtype(), DType::F32);
        assert_eq!(
            get("wide", PACK_AS_STORED).to_vec2::<f32>().unwrap(),
            bits(&w)
        );
        assert_eq!(
            get("narrow", candle_nn::Init::Const(0.)).dtype(),
            DType::F32
        );
        assert!(files
            .get(
                (3, 5).into(),
                "narrow",
                PACK_AS_STORED,
                DType::F32,
                &Device::Cpu
            )
            .is_err());
    }

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
        let files = WeightFiles::open(&[path]).unwrap();
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
        let err = WeightFiles::open(&[junk]).err().unwrap().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }

    #[test]
    fn a_tensor_of_an_unread_dtype_is_an_error_only_when_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let w = [1f32, 2.0].map(f32::to_le_bytes).concat();
        let views = vec![
            (
                "w",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &w).unwrap(),
            ),
            (
                "mask",
                safetensors::tensor::TensorView::new(safetensors::Dtype::BOOL, vec![3], &[1, 0, 1])
                    .unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let files = WeightFiles::open(&[path]).unwrap();
        let w = files.get_unchecked("w", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(w.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        let err = files
            .get_unchecked("mask", DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mask") && err.contains("BOOL"), "{err}");
    }

    #[test]
    fn overlapping_tensors_are_not_exclusive() {
        let entry = |file, start, len| Entry {
            file,
            dtype: Ok(DType::F32),
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
