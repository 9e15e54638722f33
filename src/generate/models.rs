//! What `fluxbuild export` wrote, read for generation: the four graphs, the tokenizers, the
//! scheduler config and the settings in `manifest.json` (`submodels.NAME`) the pipeline needs.
//! Every missing file or field is named in the error; optional ones fall back to the published
//! FLUX.1 values and say so.

use super::scheduler::SchedulerConfig;
use super::Variant;
use crate::export::ExportManifest;
use anyhow::{bail, Context, Result};
use fluxbuild_contract::Network;
use fluxbuild_exporters::precision::Precision;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The VAE latent normalization of FLUX.1, used when the manifest has none (older exports).
use fluxbuild_exporters::models::vae::{FLUX_VAE_SCALING, FLUX_VAE_SHIFT};

/// A value and where it came from (for `--json` and messages).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sourced<T> {
    pub value: T,
    pub source: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportedModels {
    pub dir: PathBuf,
    pub variant: Sourced<Variant>,
    /// Whether the transformer takes `guidance` (dev).
    pub guidance_embeds: bool,
    pub vae_scaling_factor: Sourced<f64>,
    pub vae_shift_factor: Sourced<f64>,
    pub scheduler: Sourced<SchedulerConfig>,
    pub clip_tokenizer: PathBuf,
    pub t5_tokenizer: PathBuf,
    /// Graphs run in place of the exported ones, by name (`fluxbuild calibrate` runs a copy of
    /// the transformer with extra outputs).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub replaced: BTreeMap<Network, PathBuf>,
}

impl ExportedModels {
    /// Checks that `dir` holds everything generation needs, before any graph is loaded.
    pub fn open(dir: &Path) -> Result<ExportedModels> {
        if !dir.is_dir() {
            bail!(
                "--models {}: not a folder (expected what `fluxbuild export` writes)",
                dir.display()
            );
        }
        let missing: Vec<String> = Network::ALL
            .iter()
            .map(|n| dir.join(n.name()).join("model.onnx"))
            .chain([
                dir.join("tokenizer/tokenizer.json"),
                dir.join("tokenizer_2/tokenizer.json"),
            ])
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{}: missing {} (run `fluxbuild export` for all four submodels)",
                dir.display(),
                missing.join(", ")
            );
        }
        let manifest_path = dir.join("manifest.json");
        let manifest = ExportManifest::read(&manifest_path)?;
        let entry = |network: Network| manifest.submodels.get(network.name());
        let manifest_name = manifest_path.display().to_string();

        let transformer = entry(Network::Transformer)
            .with_context(|| format!("{manifest_name}: no entry for the transformer (submodels.transformer)"))?;
        let guidance_field = transformer.config.get("guidance_embeds").and_then(Value::as_bool);
        let variant = match transformer.variant.as_deref() {
            Some(name) => Sourced {
                value: Variant::parse(name)
                    .with_context(|| format!("{manifest_name}: submodels.transformer.variant"))?,
                source: format!("{manifest_name}: submodels.transformer.variant"),
            },
            None => match guidance_field {
                Some(g) => Sourced {
                    value: Variant::from_guidance(g),
                    source: format!("{manifest_name}: submodels.transformer guidance_embeds"),
                },
                None => {
                    bail!("{manifest_name}: submodels.transformer has neither `variant` nor `config.guidance_embeds`")
                }
            },
        };
        let guidance_embeds = guidance_field.unwrap_or(variant.value == Variant::Dev);

        let vae = entry(Network::VaeDecoder);
        let vae_value = |name: &str, default: f64| match vae.and_then(|v| v.config.get(name)).and_then(Value::as_f64) {
            Some(value) => Sourced {
                value,
                source: format!("{manifest_name}: submodels.vae_decoder {name}"),
            },
            None => Sourced {
                value: default,
                source: format!("FLUX.1 default (not in {manifest_name})"),
            },
        };
        let vae_scaling_factor = vae_value("scaling_factor", FLUX_VAE_SCALING);
        let vae_shift_factor = vae_value("shift_factor", FLUX_VAE_SHIFT);
        if vae_scaling_factor.value == 0.0 || !vae_scaling_factor.value.is_finite() {
            bail!(
                "{}: VAE scaling_factor must be a non-zero number",
                vae_scaling_factor.source
            );
        }

        let scheduler_path = dir.join("scheduler/scheduler_config.json");
        let scheduler = if scheduler_path.is_file() {
            Sourced {
                value: SchedulerConfig::read(&scheduler_path)?,
                source: scheduler_path.display().to_string(),
            }
        } else {
            Sourced {
                value: SchedulerConfig::for_variant(variant.value),
                source: format!(
                    "FLUX.1 {} default ({} not found)",
                    variant.value.name(),
                    scheduler_path.display()
                ),
            }
        };
        Ok(ExportedModels {
            dir: dir.to_path_buf(),
            variant,
            guidance_embeds,
            vae_scaling_factor,
            vae_shift_factor,
            scheduler,
            clip_tokenizer: dir.join("tokenizer/tokenizer.json"),
            t5_tokenizer: dir.join("tokenizer_2/tokenizer.json"),
            replaced: BTreeMap::new(),
        })
    }

    pub fn graph(&self, network: Network) -> PathBuf {
        self.replaced
            .get(&network)
            .cloned()
            .unwrap_or_else(|| self.dir.join(network.name()).join("model.onnx"))
    }

    /// Runs the graph at `path` in place of the exported `network`'s (which must have the same interface).
    pub fn replace_graph(&mut self, network: Network, path: &Path) {
        self.replaced.insert(network, path.to_path_buf());
    }
}

/// ONNX Runtime's CPU kernels lack bf16 MatMul, Conv and Softmax: a bf16 graph (not emulated in
/// fp32) cannot run locally. Said before any graph is loaded, with the ways out.
pub fn check_runs_on_cpu(dir: &Path) -> Result<()> {
    let manifest = ExportManifest::read(&dir.join("manifest.json"))?;
    let bf16: Vec<&str> = Network::ALL
        .iter()
        .map(|n| n.name())
        .filter(|name| {
            manifest.submodels.get(*name).is_some_and(|entry| {
                let emulated = entry
                    .precision_plan
                    .as_ref()
                    .is_some_and(|plan| plan.notes.iter().any(|n| n.starts_with("emulated")));
                entry.precision == Precision::Bf16 && !emulated
            })
        })
        .collect();
    if !bf16.is_empty() {
        bail!(
            "{}: {} exported in bf16, which ONNX Runtime's CPU cannot run (no bf16 MatMul/Conv kernels): \
             export with --precision fp32 (or fp16) to generate locally, or add --emulate for bf16-rounded fp32 graphs; \
             bf16 graphs are for TensorRT engines (`fluxbuild build`)",
            dir.display(),
            bf16.join(", ")
        );
    }
    Ok(())
}
