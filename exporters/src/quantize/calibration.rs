//! Calibration tables: the largest |activation| seen at the input of every linear layer while
//! the fp32 graph ran over calibration prompts, keyed by the layer's weight name (the
//! checkpoint name, which is also the graph's initializer name).

use anyhow::{bail, Context, Result};
use fluxbuild_contract::files::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "fluxbuild-calibration-v1";

/// Which model a table was measured on: the graph that ran and the checkpoint files it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibratedModel {
    pub submodel: String,
    pub model_sha256: String,
    pub data_sha256: String,
    /// sha256 of the checkpoint files the graph was exported from (from the export manifest).
    pub checkpoint_sha256: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationTable {
    pub format: String,
    pub model: CalibratedModel,
    /// How the activations were produced (prompts file and its sha256, steps, size, seed).
    pub settings: serde_json::Value,
    /// Weight name -> amax of that layer's input over all prompts and steps.
    pub amax: BTreeMap<String, f32>,
}

impl CalibrationTable {
    pub fn read(path: &Path) -> Result<CalibrationTable> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the calibration file", path.display()))?;
        let table: CalibrationTable = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a fluxbuild calibration file", path.display()))?;
        if table.format != FORMAT {
            bail!(
                "{}: calibration format `{}`, expected `{FORMAT}`",
                path.display(),
                table.format
            );
        }
        for (name, amax) in &table.amax {
            if !amax.is_finite() || *amax < 0.0 {
                bail!(
                    "{}: amax of {name} is {amax}; expected a finite value >= 0 (did the fp32 graph overflow?)",
                    path.display()
                );
            }
        }
        Ok(table)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Refuses a table measured on another checkpoint than the one being exported.
    pub fn check_checkpoint(&self, path: &Path, checkpoint_sha256: &[String]) -> Result<()> {
        let mut expected = self.model.checkpoint_sha256.clone();
        let mut found = checkpoint_sha256.to_vec();
        expected.sort();
        found.sort();
        if expected != found {
            bail!(
                "{}: calibrated on checkpoint {:?}, but the {} being exported is {:?}; run `fluxbuild calibrate` on graphs exported from this checkpoint",
                path.display(),
                self.model.checkpoint_sha256,
                self.model.submodel,
                checkpoint_sha256
            );
        }
        Ok(())
    }
}
