//! Precision choices, globally or per network: `fp16`, `transformer=fp8,t5=bf16`, `bf16,t5=fp32`.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
    Fp8,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Precision> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Precision::Fp32,
            "fp16" | "float16" => Precision::Fp16,
            "bf16" | "bfloat16" => Precision::Bf16,
            "fp8" | "float8" => Precision::Fp8,
            other => bail!("unknown precision `{other}` (expected fp32, fp16, bf16 or fp8)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
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
    pub per_network: BTreeMap<String, Precision>,
}

impl PrecisionPlan {
    /// Parses a spec; `networks` are the valid names for `NET=` entries.
    pub fn parse(spec: &str, networks: &[&str]) -> Result<PrecisionPlan> {
        let mut plan = PrecisionPlan { default: None, per_network: BTreeMap::new() };
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((net, p)) => {
                    let net = net.trim();
                    if !networks.contains(&net) {
                        bail!("--precision: unknown network `{net}` (expected one of {})", networks.join(", "));
                    }
                    plan.per_network.insert(net.to_string(), Precision::parse(p)?);
                }
                None if plan.default.is_some() => bail!("--precision: more than one default precision in `{spec}`"),
                None => plan.default = Some(Precision::parse(item)?),
            }
        }
        Ok(plan)
    }

    /// The precision for `network`, falling back to `fallback` when the spec names none.
    pub fn for_network(&self, network: &str, fallback: Precision) -> Precision {
        self.per_network.get(network).copied().or(self.default).unwrap_or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_network_entries_override_the_default() {
        let plan = PrecisionPlan::parse("bf16, t5=fp32", &["t5", "clip"]).unwrap();
        assert_eq!(plan.for_network("t5", Precision::Fp16), Precision::Fp32);
        assert_eq!(plan.for_network("clip", Precision::Fp16), Precision::Bf16);
        let empty = PrecisionPlan::parse("", &["t5"]).unwrap();
        assert_eq!(empty.for_network("t5", Precision::Fp16), Precision::Fp16);
    }

    #[test]
    fn bad_specs_are_refused_with_the_offending_part() {
        let err = PrecisionPlan::parse("vae=fp9", &["vae"]).unwrap_err().to_string();
        assert!(err.contains("fp9"), "{err}");
        let err = PrecisionPlan::parse("unet=fp16", &["vae"]).unwrap_err().to_string();
        assert!(err.contains("unet"), "{err}");
        assert!(PrecisionPlan::parse("fp16,bf16", &[]).is_err());
    }
}
