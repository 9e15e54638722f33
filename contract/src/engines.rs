//! The `engines` list of `ENGINES/manifest.json`: what `fluxbuild build` writes and
//! `fluxbuild package` reads, through these same types. Fields relied on (others are ignored):
//!
//! ```json
//! { "engines": [ { "network": "transformer", "precision": "fp8", "file": "transformer.fp8.plan",
//!                  "profiles": [ { "inputs": { "hidden_states": { "min": [1,256,64],
//!                                  "opt": [1,4096,64], "max": [4,4096,64] }, ... } } ] }, ... ] }
//! ```
//! - `network`: a [`Network`] name; `file`: the plan, relative to ENGINES;
//! - `precision`: a label (names the fallback model `<network>_<precision>`);
//! - `profiles[i].inputs[name].{min,opt,max}`: the optimization profile's shapes, batch first
//!   for every input the graph batches; every profile names every dynamic input.
//!
//! The first engine of a network is its primary model; the later ones are fallbacks the
//! orchestrator uses, in order, when the primary is not ready (e.g. fp16 when fp8 failed to load).

use crate::manifest::FileEntry;
use crate::Network;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnginesManifest {
    pub engines: Vec<Engine>,
    /// What built them (absent from hand-written lists, which stand for TensorRT plans).
    #[serde(default)]
    pub settings: Option<BuiltWith>,
    /// The graph files they were built from (as given then) and the plans (relative to the
    /// folder), with sizes and sha256: what `fluxbuild build` records; absent from hand-written lists.
    #[serde(default)]
    pub inputs: Vec<FileEntry>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

/// The part of the engines stage's settings a reader of the list needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuiltWith {
    pub runtime: Runtime,
}

/// Which TensorRT builds (and later runs) the engines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// Standard TensorRT on a GPU host (Triton's `tensorrt_plan`; data-centre GPUs).
    #[default]
    Tensorrt,
    /// TensorRT-RTX: built ahead of time on any machine, no GPU needed; the engines run on
    /// RTX / Ampere-or-newer GPUs of the chosen compute capabilities.
    TensorrtRtx,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Tensorrt => "tensorrt",
            Runtime::TensorrtRtx => "tensorrt-rtx",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Runtime {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Runtime> {
        [Runtime::Tensorrt, Runtime::TensorrtRtx]
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown runtime {s:?} (tensorrt, tensorrt-rtx)"))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Engine {
    pub network: String,
    #[serde(default)]
    pub precision: Option<String>,
    pub file: PathBuf,
    pub profiles: Vec<Profile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub inputs: BTreeMap<String, Shapes>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shapes {
    pub min: Vec<i64>,
    pub opt: Vec<i64>,
    pub max: Vec<i64>,
}

impl EnginesManifest {
    pub fn read(dir: &Path) -> Result<EnginesManifest> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read (expected what `fluxbuild build` writes)",
                path.display()
            )
        })?;
        let mut manifest: EnginesManifest =
            serde_json::from_str(&text).with_context(|| format!("{}: not an engines manifest", path.display()))?;
        for engine in &mut manifest.engines {
            let label = format!(
                "{}: engine {} ({})",
                path.display(),
                engine.network,
                engine.file.display()
            );
            let at = |what: String| format!("{label}: {what}");
            if let Err(e) = Network::parse(&engine.network) {
                bail!(at(e.to_string()));
            }
            engine.file = dir.join(&engine.file);
            if !engine.file.is_file() {
                bail!(at("the plan file is missing".into()));
            }
            if engine.profiles.is_empty() {
                bail!(at("has no optimization profile".into()));
            }
            for (i, profile) in engine.profiles.iter().enumerate() {
                for (name, s) in &profile.inputs {
                    let ordered = s.min.len() == s.opt.len()
                        && s.opt.len() == s.max.len()
                        && s.min
                            .iter()
                            .zip(&s.opt)
                            .zip(&s.max)
                            .all(|((a, b), c)| 0 < *a && a <= b && b <= c);
                    if !ordered {
                        bail!(at(format!(
                            "profile {i}, input {name}: expected 0 < min <= opt <= max of equal rank, got {s:?}"
                        )));
                    }
                }
            }
        }
        Ok(manifest)
    }

    /// The engines of `network`, primary first.
    pub fn of(&self, network: Network) -> Vec<&Engine> {
        self.engines.iter().filter(|e| e.network == network.name()).collect()
    }
}

impl Engine {
    /// min/max of `input`'s dimension `axis` over all profiles.
    pub fn range(&self, input: &str, axis: usize) -> Result<(i64, i64)> {
        let mut range: Option<(i64, i64)> = None;
        for (i, p) in self.profiles.iter().enumerate() {
            let s = p
                .inputs
                .get(input)
                .with_context(|| format!("{}: profile {i} has no shapes for input {input}", self.file.display()))?;
            let (lo, hi) = (*s.min.get(axis).context("rank")?, *s.max.get(axis).context("rank")?);
            range = Some(range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
        range.context("no profiles")
    }

    /// Whether dimension `axis` of `input` is the same in every profile (then Triton sees it fixed).
    pub fn fixed_dim(&self, input: &str, axis: usize) -> Option<i64> {
        let (lo, hi) = self.range(input, axis).ok()?;
        (lo == hi).then_some(lo)
    }

    /// The largest batch any profile accepts: the model's `max_batch_size` (its one instance
    /// group holds every profile, and TensorRT picks the profile that fits each batch).
    pub fn max_batch(&self, input: &str) -> Result<i64> {
        Ok(self
            .batch_ranges(input)?
            .iter()
            .map(|(_, hi)| *hi)
            .max()
            .expect("profiles"))
    }

    /// The largest n such that every batch of 1..=n prompts fits some profile: what the
    /// orchestrator may send (a gap, e.g. profiles for 1 and 4 only, stops it at 1).
    pub fn covered_batch(&self, input: &str) -> Result<i64> {
        let ranges = self.batch_ranges(input)?;
        let mut n = 0;
        while ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&(n + 1))) {
            n += 1;
        }
        if n == 0 {
            bail!("{}: no profile of {input} takes a batch of 1", self.file.display());
        }
        Ok(n)
    }

    /// (min, max) batch of `input` per profile.
    fn batch_ranges(&self, input: &str) -> Result<Vec<(i64, i64)>> {
        let ranges: Vec<(i64, i64)> = self
            .profiles
            .iter()
            .filter_map(|p| p.inputs.get(input).map(|s| (s.min[0], s.max[0])))
            .collect();
        if ranges.is_empty() {
            bail!("{}: no profile shapes for {input}", self.file.display());
        }
        Ok(ranges)
    }

    /// The model name in the repository: the network for the primary engine, else `<network>_<precision>`.
    pub fn model_name(&self, index: usize) -> String {
        if index == 0 {
            self.network.clone()
        } else {
            format!(
                "{}_{}",
                self.network,
                self.precision.clone().unwrap_or_else(|| format!("alt{index}"))
            )
        }
    }
}
