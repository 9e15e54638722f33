//! Precision choices, globally or per network: `fp16`, `transformer=fp8,t5=bf16`, `bf16,t5=fp32`.
//! FP8 quantizes the transformer's linear layers over a 16-bit base type: bf16 (`fp8`, as
//! demoDiffusion and TensorRT Model Optimizer build FLUX) or fp16 (`fp8-fp16`).

use crate::onnx::ElemType;
use anyhow::{bail, Result};
use fluxbuild_contract::Network;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
    /// FP8 linear layers, bf16 elsewhere.
    Fp8,
    /// FP8 linear layers, fp16 elsewhere.
    #[serde(rename = "fp8-fp16")]
    Fp8Fp16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Precision> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Precision::Fp32,
            "fp16" | "float16" => Precision::Fp16,
            "bf16" | "bfloat16" => Precision::Bf16,
            "fp8" | "float8" => Precision::Fp8,
            "fp8-fp16" => Precision::Fp8Fp16,
            other => bail!("unknown precision `{other}` (expected fp32, fp16, bf16, fp8 or fp8-fp16)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
            Precision::Fp8Fp16 => "fp8-fp16",
        }
    }

    pub fn is_fp8(self) -> bool {
        matches!(self, Precision::Fp8 | Precision::Fp8Fp16)
    }

    /// The precision of everything but FP8's quantized linear layers (itself when not FP8).
    pub fn base(self) -> Precision {
        match self {
            Precision::Fp8 => Precision::Bf16,
            Precision::Fp8Fp16 => Precision::Fp16,
            p => p,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A precision per network, from a spec like `bf16,t5=fp32`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PrecisionPlan {
    pub default: Option<Precision>,
    pub per_network: BTreeMap<Network, Precision>,
}

impl PrecisionPlan {
    /// Parses a spec; `NET=` entries name a [`Network`].
    pub fn parse(spec: &str) -> Result<PrecisionPlan> {
        let mut plan = PrecisionPlan {
            default: None,
            per_network: BTreeMap::new(),
        };
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((net, p)) => {
                    let net = net.trim();
                    let Ok(network) = Network::parse(net) else {
                        bail!(
                            "--precision: unknown network `{net}` (expected one of {})",
                            Network::ALL.map(Network::name).join(", ")
                        );
                    };
                    let precision = Precision::parse(p)?;
                    if let Some(before) = plan.per_network.insert(network, precision) {
                        bail!("--precision: `{net}` is given twice ({before} and {precision}) in `{spec}`");
                    }
                }
                None if plan.default.is_some() => bail!("--precision: more than one default precision in `{spec}`"),
                None => plan.default = Some(Precision::parse(item)?),
            }
        }
        Ok(plan)
    }

    /// The precision for `network`, falling back to `fallback` when the spec names none.
    pub fn for_network(&self, network: Network, fallback: Precision) -> Precision {
        self.per_network
            .get(&network)
            .copied()
            .or(self.default)
            .unwrap_or(fallback)
    }

    /// The precision `network` gets: its own entry, else the default adapted to what is known
    /// to work for it (a global fp8 quantizes the transformer only, the others get its base
    /// type; a global fp16 or fp8-fp16 leaves the VAE decoder in fp32), else fp32.
    pub fn with_defaults(&self, network: Network) -> Precision {
        if let Some(p) = self.per_network.get(&network) {
            return *p;
        }
        match (network, self.default.unwrap_or(Precision::Fp32)) {
            (Network::VaeDecoder, Precision::Fp16 | Precision::Fp8Fp16) => Precision::Fp32,
            (n, p) if p.is_fp8() && n != Network::Transformer => p.base(),
            (_, p) => p,
        }
    }

    /// `with_defaults` with what that means for the graph: the plan export and build apply.
    pub fn resolve(&self, network: Network) -> Result<NetworkPrecision> {
        NetworkPrecision::new(network, self.with_defaults(network))
    }
}

/// How one network runs at a precision: the element type of its graph, the parts kept wider
/// than that because they overflow, and whether its linear layers are FP8.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkPrecision {
    pub precision: Precision,
    /// Activations and unquantized weights.
    pub float: ElemType,
    /// Parts that overflow in `float` run in this type (T5's residual stream and FFN output
    /// projection in fp16); equal to `float` when there are none.
    pub wide: ElemType,
    /// FP8 (E4M3FN) weights and activations for the linear layers (explicit Q/DQ).
    pub fp8_linears: bool,
    /// Why the plan differs from the plain precision, for people reading the manifest.
    pub notes: Vec<String>,
}

impl NetworkPrecision {
    pub fn new(network: Network, precision: Precision) -> Result<NetworkPrecision> {
        let float = match precision.base() {
            Precision::Bf16 => ElemType::BF16,
            Precision::Fp16 => ElemType::F16,
            _ => ElemType::F32,
        };
        let mut plan = NetworkPrecision {
            precision,
            float,
            wide: float,
            fp8_linears: precision.is_fp8(),
            notes: vec![],
        };
        match (network, precision) {
            (Network::Transformer, p) if p.is_fp8() => plan.notes.push(format!(
                "linear layers in FP8 E4M3 (weights from their amax, activations from calibration); embedders, \
                 final projection, norms and attention in {}",
                p.base()
            )),
            (_, p) if p.is_fp8() => {
                bail!("--precision {network}={p}: FP8 quantization is implemented for the transformer only")
            }
            (Network::T5, Precision::Fp16) => {
                plan.wide = ElemType::F32;
                plan.notes.push(
                    "T5 overflows fp16 in its FFN output: residual stream and `wo` projections run in fp32".into(),
                );
            }
            _ => {}
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_network_entries_override_the_default() {
        let plan = PrecisionPlan::parse("bf16, t5=fp32").unwrap();
        assert_eq!(plan.for_network(Network::T5, Precision::Fp16), Precision::Fp32);
        assert_eq!(plan.for_network(Network::Clip, Precision::Fp16), Precision::Bf16);
        let empty = PrecisionPlan::parse("").unwrap();
        assert_eq!(empty.for_network(Network::T5, Precision::Fp16), Precision::Fp16);
    }

    #[test]
    fn defaults_avoid_the_known_failures() {
        let nets = Network::ALL;
        let fp8 = PrecisionPlan::parse("fp8").unwrap();
        let got: Vec<Precision> = nets.iter().map(|n| fp8.with_defaults(*n)).collect();
        // fp8's base is bf16: bf16 has fp32's range, so T5 and the VAE need no wider parts.
        assert_eq!(
            got,
            vec![Precision::Bf16, Precision::Bf16, Precision::Fp8, Precision::Bf16]
        );
        let t5 = fp8.resolve(Network::T5).unwrap();
        assert_eq!((t5.float, t5.wide), (ElemType::BF16, ElemType::BF16));
        assert_eq!(fp8.resolve(Network::Transformer).unwrap().float, ElemType::BF16);
        assert!(fp8.resolve(Network::Transformer).unwrap().fp8_linears);
        let fp8_fp16 = PrecisionPlan::parse("fp8-fp16").unwrap();
        let got: Vec<Precision> = nets.iter().map(|n| fp8_fp16.with_defaults(*n)).collect();
        assert_eq!(
            got,
            vec![Precision::Fp16, Precision::Fp16, Precision::Fp8Fp16, Precision::Fp32]
        );
        let t5 = fp8_fp16.resolve(Network::T5).unwrap();
        assert_eq!((t5.float, t5.wide), (ElemType::F16, ElemType::F32));
        let transformer = fp8_fp16.resolve(Network::Transformer).unwrap();
        assert!(transformer.fp8_linears && transformer.float == ElemType::F16);
        let explicit = PrecisionPlan::parse("fp16,vae_decoder=fp16").unwrap();
        assert_eq!(explicit.with_defaults(Network::VaeDecoder), Precision::Fp16);
        assert_eq!(
            PrecisionPlan::parse("").unwrap().with_defaults(Network::T5),
            Precision::Fp32
        );
        let err = PrecisionPlan::parse("clip=fp8")
            .unwrap()
            .resolve(Network::Clip)
            .unwrap_err()
            .to_string();
        assert!(err.contains("transformer only"), "{err}");
    }

    #[test]
    fn bad_specs_are_refused_with_the_offending_part() {
        let err = PrecisionPlan::parse("vae_decoder=fp9").unwrap_err().to_string();
        assert!(err.contains("fp9"), "{err}");
        let err = PrecisionPlan::parse("unet=fp16").unwrap_err().to_string();
        assert!(err.contains("unet"), "{err}");
        assert!(PrecisionPlan::parse("fp16,bf16").is_err());
    }
}
