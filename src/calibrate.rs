//! The calibration stage: an fp32 export + calibration prompts -> the FP8 calibration table
//! (`fluxbuild export --precision fp8 --calibration FILE` reads it).
//!
//! It runs the real generation pipeline with the transformer replaced by its calibration copy
//! (`quantize::amax`: the same graph plus one `ReduceMax(Abs(x))` output per linear-layer
//! input) and keeps, for every linear layer, the largest value over all prompts and steps.

use crate::export::{ExportManifest, ExportedSubmodel};
use crate::generate::request::{check_prompt, Defaults, Limits};
use crate::generate::{generate, Event, ExportedModels, RequestOptions};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::files::{hex, sha256_file};
use fluxbuild_contract::Network;
use fluxbuild_exporters::precision::Precision;
use fluxbuild_exporters::quantize::amax::write_calibration_model;
use fluxbuild_exporters::quantize::calibration::{CalibratedModel, CalibrationTable, FORMAT};
use indicatif::ProgressBar;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The prompts shipped with fluxbuild; the first DEFAULT_PROMPTS are used when no `--prompts` file is given.
pub const BUNDLED_PROMPTS: &str = include_str!("../profiles/calibration-prompts.txt");
const BUNDLED_NAME: &str = "profiles/calibration-prompts.txt (bundled)";

// Calibration's defaults are cheaper than generation's (1024², 28 steps, and once all 16 bundled
// prompts: ~37 h for the full dev transformer on 2 cores): the FP8 image of the fixture pipelines
// is within 0.4 dB with a table from 512², 8 steps and 4 prompts (bench/calibration.md), whose
// activation ranges are only somewhat smaller (median layer 0.86x). About 1/50 of the work.
/// Image side in pixels when the request leaves height or width out.
pub const DEFAULT_SIDE: usize = 512;
/// Denoising steps when the request leaves them out, or the variant's own default if fewer (schnell: 4).
pub const DEFAULT_STEPS: usize = 8;
/// How many of the bundled prompts calibrate when no prompts file is given.
pub const DEFAULT_PROMPTS: usize = 4;

/// Calibration prompts: one a line; blank lines and `#` comments are skipped.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prompts {
    pub source: String,
    pub sha256: String,
    pub prompts: Vec<String>,
}

impl Prompts {
    pub fn bundled() -> Prompts {
        Prompts::parse(BUNDLED_NAME, BUNDLED_PROMPTS).expect("the bundled prompts are valid")
    }

    /// The first `count` prompts only (all if there are fewer).
    pub fn first(mut self, count: usize) -> Prompts {
        if count < self.prompts.len() {
            self.prompts.truncate(count);
            self.source = format!("{}, first {count}", self.source);
        }
        self
    }

    pub fn read(path: &Path) -> Result<Prompts> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the prompts file", path.display()))?;
        Prompts::parse(&path.display().to_string(), &text)
    }

    /// One prompt a line, each checked here with the rules every prompt meets (not after the
    /// prompts before it have run); a byte-order mark (Windows editors write one) is not text.
    fn parse(source: &str, text: &str) -> Result<Prompts> {
        let mut prompts: Vec<String> = Vec::new();
        let lines = text.strip_prefix('\u{feff}').unwrap_or(text).lines().map(str::trim);
        for (line, prompt) in lines.enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#')) {
            check_prompt(prompts.len(), prompt.as_bytes(), &Limits::pipeline())
                .with_context(|| format!("{source}, line {}", line + 1))?;
            prompts.push(prompt.to_string());
        }
        if prompts.is_empty() {
            bail!("{source}: no prompts (one a line; blank lines and lines starting with # are skipped)");
        }
        Ok(Prompts {
            source: source.into(),
            sha256: hex(&Sha256::digest(text.as_bytes())),
            prompts,
        })
    }
}

#[derive(Clone, Debug)]
pub struct CalibrationRequest {
    /// Folder written by `fluxbuild export --precision fp32`.
    pub models: PathBuf,
    pub prompts: Prompts,
    /// Left out: DEFAULT_SIDE, and DEFAULT_STEPS or the variant's fewer steps.
    pub steps: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// Prompt i gets initial noise from seed + i ("fluxbuild noise v1").
    pub seed: u64,
    /// Prompts per pipeline run: more loads each graph fewer times, but needs more memory.
    pub batch: usize,
}

/// What the run measured, besides the table.
pub struct Calibration {
    pub table: CalibrationTable,
    pub warnings: Vec<String>,
}

/// Runs the calibration and writes the table to `out` (atomically). `progress` counts prompts × steps.
pub fn calibrate(request: &CalibrationRequest, out: &Path, progress: &ProgressBar) -> Result<Calibration> {
    if request.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut models = ExportedModels::open(&request.models)?;
    let model = calibrated_model(&request.models)?;
    let transformer_dir = request.models.join(Network::Transformer.name());
    let hashing = std::thread::spawn({
        let dir = transformer_dir.clone();
        move || -> Result<(String, String)> {
            Ok((
                sha256_file(&dir.join("model.onnx"))?,
                sha256_file(&dir.join("model.onnx.data"))?,
            ))
        }
    });
    // Inside the export, so that the calibration graph can hard-link the weights file.
    let scratch = tempfile::Builder::new()
        .prefix(".fluxbuild-calibration-")
        .tempdir_in(&request.models)
        .with_context(|| format!("{}: cannot create a scratch folder", request.models.display()))?;
    let calibration_graph = write_calibration_model(&transformer_dir, scratch.path())?;
    models.replace_graph(Network::Transformer, &calibration_graph.path);

    let variant = models.variant.value;
    let steps = request.steps.unwrap_or(Defaults::of(variant).steps.min(DEFAULT_STEPS));
    let options = |prompts: &[String], first: usize| RequestOptions {
        prompts: prompts.to_vec(),
        height: Some(request.height.unwrap_or(DEFAULT_SIDE)),
        width: Some(request.width.unwrap_or(DEFAULT_SIDE)),
        steps: Some(steps),
        seed: Some(request.seed.wrapping_add(first as u64)),
        ..RequestOptions::default()
    };
    let settings_request = options(&request.prompts.prompts[..1], 0).resolve(variant)?;
    progress.set_length((request.prompts.prompts.len() * settings_request.steps) as u64);
    progress.set_message("calibrate");

    let mut amax: BTreeMap<String, f32> = calibration_graph.outputs.keys().map(|w| (w.clone(), 0.0)).collect();
    let mut warnings = Vec::new();
    let mut non_finite: Option<String> = None;
    for (chunk, prompts) in request.prompts.prompts.chunks(request.batch).enumerate() {
        let first = chunk * request.batch;
        let generation_request = options(prompts, first).resolve(variant)?;
        generate(&models, &generation_request, &mut |event| match event {
            Event::Transformer { step, outputs, .. } => {
                for (weight, output) in &calibration_graph.outputs {
                    match outputs.get(output).and_then(|a| a.first()).copied() {
                        Some(v) if v.is_finite() => {
                            let m = amax.get_mut(weight).expect("every weight has an entry");
                            *m = m.max(v);
                        }
                        v => {
                            non_finite.get_or_insert(format!(
                                "the input of {weight} has amax {v:?} at step {} of prompts {first}..{}: the fp32 graph overflowed",
                                step + 1,
                                first + prompts.len()
                            ));
                        }
                    }
                }
            }
            Event::Step { .. } => progress.inc(prompts.len() as u64),
            Event::Warning(w) => warnings.push(format!("prompts {first}..{}: {w}", first + prompts.len())),
            Event::Stage(_) => {}
        })?;
    }
    progress.finish_and_clear();
    if let Some(problem) = non_finite {
        bail!("nothing was written: {problem}");
    }

    let (model_sha256, data_sha256) = hashing.join().expect("hashing thread")?;
    if (model_sha256.as_str(), data_sha256.as_str()) != (model.model_sha256.as_str(), model.data_sha256.as_str()) {
        bail!(
            "{}: the transformer graph does not match its manifest entry (changed since export?)",
            transformer_dir.display()
        );
    }
    let table = CalibrationTable {
        format: FORMAT.into(),
        model,
        settings: json!({
            "prompts": { "source": request.prompts.source, "sha256": request.prompts.sha256, "count": request.prompts.prompts.len() },
            "variant": variant.name(),
            "steps": settings_request.steps,
            "height": settings_request.height,
            "width": settings_request.width,
            "guidance": models.guidance_embeds.then_some(settings_request.guidance),
            "max_sequence_length": settings_request.max_sequence_length,
            "seed": request.seed,
            "noise": "fluxbuild noise v1, prompt i from seed + i",
            "batch": request.batch,
            "fluxbuild_version": env!("CARGO_PKG_VERSION"),
        }),
        amax,
    };
    table.write(out)?;
    Ok(Calibration { table, warnings })
}

/// The transformer of an fp32 export, as the table records it (hashes from the manifest).
fn calibrated_model(dir: &Path) -> Result<CalibratedModel> {
    let manifest_path = dir.join("manifest.json");
    let manifest = ExportManifest::read(&manifest_path)?;
    let entry: &ExportedSubmodel = manifest
        .submodels
        .get(Network::Transformer.name())
        .with_context(|| format!("{}: no transformer entry", manifest_path.display()))?;
    if entry.precision != Precision::Fp32 {
        bail!(
            "{}: the transformer was exported as {}; calibrate the fp32 export (`fluxbuild export --precision fp32`), whose activations are the reference",
            dir.display(),
            entry.precision
        );
    }
    let file_sha = |name: &str| {
        manifest
            .files
            .iter()
            .find(|f| f.path == Path::new(Network::Transformer.name()).join(name))
            .map(|f| f.sha256.clone())
            .with_context(|| format!("{}: no entry for transformer/{name}", manifest_path.display()))
    };
    let checkpoint_sha256 = entry
        .source
        .iter()
        .map(|f| {
            // Older exports recorded the source as given, relative to the folder export ran in.
            manifest
                .inputs
                .iter()
                .find(|i| i.path == *f || (f.is_relative() && i.path.ends_with(f)))
                .map(|i| i.sha256.clone())
                .with_context(|| {
                    format!(
                        "{}: the transformer source {} is not among the inputs",
                        manifest_path.display(),
                        f.display()
                    )
                })
        })
        .collect::<Result<_>>()?;
    Ok(CalibratedModel {
        submodel: Network::Transformer.name().into(),
        model_sha256: file_sha("model.onnx")?,
        data_sha256: file_sha("model.onnx.data")?,
        checkpoint_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::Prompts;

    #[test]
    fn prompts_are_checked_by_line_and_a_byte_order_mark_is_not_text() {
        let with_mark = Prompts::parse("p.txt", "\u{feff}a cat\r\n# skipped\n\nb dog\n").unwrap();
        assert_eq!(with_mark.prompts, ["a cat", "b dog"]);
        let long = format!("a cat\n# skipped\n{}\n", "x".repeat(5000));
        let error = format!("{:#}", Prompts::parse("p.txt", &long).unwrap_err());
        assert!(error.starts_with("p.txt, line 3: prompt 1 is 5000 bytes"), "{error}");
        let error = format!("{:#}", Prompts::parse("p.txt", "a\u{7}b\n").unwrap_err());
        assert!(
            error.contains("line 1: prompt 0 contains the control character U+0007"),
            "{error}"
        );
    }
}
