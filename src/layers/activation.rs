//! `hidden_act` from a config as a module: candle's activations plus CLIP's `quick_gelu`, with
//! the GELUs on glance's vectorised kernel where it applies.

use candle_core::{Module, Result, Tensor};

use crate::kernels::activation::{gelu, Gelu};

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

impl HiddenAct {
    /// The GELU of glance's kernels this is, if it is one.
    pub fn fast_gelu(&self) -> Option<Gelu> {
        use candle_nn::Activation;
        match self {
            Self::QuickGelu => Some(Gelu::Quick),
            Self::Other(Activation::Gelu) => Some(Gelu::Erf),
            Self::Other(Activation::NewGelu | Activation::GeluPytorchTanh) => Some(Gelu::Tanh),
            Self::Other(_) => None,
        }
    }
}

impl Module for HiddenAct {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(kind) = self.fast_gelu() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
