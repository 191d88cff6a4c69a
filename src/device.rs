//! `--device` and `--dtype`: where and in which precision models run.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            s if s.starts_with("cuda:") => s[5..]
                .parse()
                .map(Self::Cuda)
                .map_err(|_| format!("bad device {s:?}: use cuda:N")),
            s => Err(format!(
                "unknown device {s:?}: use auto, cpu, cuda, cuda:N or metal"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    Auto,
    F32,
    F16,
    BF16,
}

impl FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            s => Err(format!("unknown dtype {s:?}: use auto, f32, f16 or bf16")),
        }
    }
}

/// Opens the device: `auto` takes CUDA or Metal when compiled in and present, else the CPU.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    let unavailable = |what: &str, e: candle_core::Error| {
        Error::Options(format!(
            "{what} is not available ({e}); build with --features {what} or use --device cpu"
        ))
    };
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(i) => Device::new_cuda(i).map_err(|e| unavailable("cuda", e)),
        DeviceChoice::Metal => Device::new_metal(0).map_err(|e| unavailable("metal", e)),
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// `auto` is f32 on the CPU (exact parity with transformers) and bf16 on GPUs.
pub fn dtype(choice: DTypeChoice, device: &Device) -> DType {
    match choice {
        DTypeChoice::F32 => DType::F32,
        DTypeChoice::F16 => DType::F16,
        DTypeChoice::BF16 => DType::BF16,
        DTypeChoice::Auto if device.is_cpu() => DType::F32,
        DTypeChoice::Auto => DType::BF16,
    }
}

/// The dtype models are loaded in and whether their linear layers take glance's bf16 kernel:
/// `bf16` on a CPU with AVX512-BF16 keeps the model in f32 and runs the matrix products of the
/// linear layers with bf16 inputs and f32 sums (twice the f32 rate); on GPUs it is candle's bf16.
/// candle has no bf16 matmul on the CPU, so there `bf16` without that kernel is refused up front
/// rather than failing on every batch.
pub fn precision(choice: DTypeChoice, device: &Device) -> Result<(DType, bool)> {
    match dtype(choice, device) {
        DType::BF16 if device.is_cpu() => {
            if !crate::kernels::gemm_bf16::available() {
                return Err(Error::Options(
                    "--dtype bf16 on the CPU needs AVX512-BF16, which this CPU lacks: \
                     use --dtype f32 (exact) or f16"
                        .into(),
                ));
            }
            if !crate::kernels::own_kernels() {
                return Err(Error::Options(
                    "--dtype bf16 on the CPU runs on glance's bf16 kernel, which \
                     GLANCE_CANDLE_OPS turns off: use --dtype f32 or f16"
                        .into(),
                ));
            }
            Ok((DType::F32, true))
        }
        d => Ok((d, false)),
    }
}

/// How the precision is shown to people: "F32", "BF16", or "bf16 matmuls, f32 activations".
/// Also what tells cached results of one precision from another's.
pub fn describe_precision(dtype: DType) -> String {
    if dtype == DType::F32 && crate::kernels::cpu_bf16_matmul() {
        "bf16 matmuls, f32 activations".into()
    } else {
        format!("{dtype:?}")
    }
}

/// The announcement's note for an f32 run on a CPU with AVX512-BF16, where `--dtype bf16` is
/// two to four times faster: f32 stays the default because its outputs equal transformers'.
pub fn precision_hint(device: &Device, dtype: DType) -> Option<&'static str> {
    let f32_on_cpu = device.is_cpu() && dtype == DType::F32 && !crate::kernels::cpu_bf16_matmul();
    (f32_on_cpu && crate::kernels::gemm_bf16::available()).then_some(
        "as transformers computes; --dtype bf16 is 2-4x faster on this CPU, not bit-exact",
    )
}

/// "cpu", "cuda:0", "metal".
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dtype_flags_parse() {
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!("bf16".parse::<DTypeChoice>().unwrap(), DTypeChoice::BF16);
        assert_eq!(dtype(DTypeChoice::Auto, &Device::Cpu), DType::F32);
    }

    #[test]
    fn cpu_bf16_is_the_kernel_or_refused() {
        match precision(DTypeChoice::BF16, &Device::Cpu) {
            Ok(p) => {
                assert!(crate::kernels::gemm_bf16::available());
                assert_eq!(p, (DType::F32, true));
            }
            Err(e) => assert!(e.to_string().contains("--dtype bf16"), "{e}"),
        }
        assert_eq!(
            precision(DTypeChoice::Auto, &Device::Cpu).unwrap(),
            (DType::F32, false)
        );
    }
}
