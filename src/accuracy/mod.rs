//! The accuracy stage: FLUX pipeline checkpoints -> how far each reduced precision lands from
//! fp32, per network on identical inputs and end to end on the image, on ONNX Runtime's CPU.
//!
//! For every checkpoint: export fp32 and generate (the reference), capturing the transformer's
//! inputs at the first and a middle step; calibrate FP8 on the fp32 export; then for each
//! configuration export every network it applies to at that precision, run the same inputs
//! through both graphs, and export the whole pipeline with the precision's defaults to
//! generate the same images again.

mod report;

pub use report::markdown;

use crate::calibrate::{calibrate, CalibrationRequest, Prompts};
use crate::export::{export, ExportManifest, ExportRequest, PrecisionSettings, SubmodelSource};
use crate::generate::pipeline::decoder_latent;
use crate::generate::{generate, Event, ExportedModels, Generation, Request, RequestOptions};
use crate::runtime::{Input, Model};
use anyhow::{Context, Result};
use fluxbuild_contract::{Network, Variant};
use fluxbuild_exporters::onnx::DEFAULT_OPSET;
use fluxbuild_exporters::precision::{NetworkPrecision, Precision, PrecisionPlan};
use indicatif::ProgressBar;
use ndarray::ArrayD;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One way of running a precision on ONNX Runtime's CPU.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Config {
    pub name: &'static str,
    pub precision: Precision,
    /// Exported with `--emulate` (fp32 graph rounding every 16-bit value to its type).
    pub emulate: bool,
}

pub const CONFIGS: [Config; 4] = [
    Config {
        name: "fp16 (emulated)",
        precision: Precision::Fp16,
        emulate: true,
    },
    Config {
        name: "fp16 (ORT CPU)",
        precision: Precision::Fp16,
        emulate: false,
    },
    Config {
        name: "bf16 (emulated)",
        precision: Precision::Bf16,
        emulate: true,
    },
    Config {
        name: "fp8 (emulated fp16 + Q/DQ)",
        precision: Precision::Fp8Fp16,
        emulate: true,
    },
];

/// Evaluation prompts: not among the calibration prompts, so fp8 is measured out of sample.
pub const PROMPTS: [&str; 2] = [
    "a red bicycle leaning against a brick wall covered in ivy",
    "an aerial photograph of a winding river through autumn forests, golden hour",
];

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub prompts: Vec<String>,
    pub height: usize,
    pub width: usize,
    pub steps: usize,
    pub seed: u64,
    pub max_sequence_length: usize,
    /// FP8 calibration: the bundled prompts, at the same size and steps.
    pub calibration_prompts: Prompts,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub fluxbuild_version: String,
    pub runtime: String,
    pub settings: Settings,
    pub configs: Vec<Config>,
    pub checkpoints: Vec<CheckpointReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointReport {
    pub checkpoint: PathBuf,
    pub variant: Variant,
    pub networks: Vec<NetworkError>,
    pub end_to_end: Vec<EndToEnd>,
    /// Bytes of `transformer/model.onnx.data`: "fp32" and each configuration.
    pub transformer_weights: BTreeMap<String, WeightsSize>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct WeightsSize {
    /// `model.onnx.data`, page padding included.
    pub file: u64,
    /// The bytes of the tensors stored in it.
    pub tensors: u64,
}

/// One output of one network on one input set, at one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkError {
    pub network: String,
    pub inputs: String,
    pub output: String,
    pub config: String,
    /// ||y - y_fp32|| / ||y_fp32||
    pub relative_error: f64,
    pub max_abs_error: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndToEnd {
    pub config: String,
    /// What each network ran in (the precision's defaults).
    pub precisions: BTreeMap<String, Precision>,
    /// 8-bit RGB PSNR of each image against the fp32 pipeline's; `None`: identical.
    pub psnr_db: Vec<Option<f64>>,
    pub final_latents_relative_error: f64,
}

/// Runs everything in `work` (which should be empty; its contents are replaced).
pub fn measure(checkpoints: &[PathBuf], settings: &Settings, work: &Path, progress: &ProgressBar) -> Result<Report> {
    progress.set_length((checkpoints.len() * (2 + CONFIGS.len())) as u64);
    let reports = checkpoints
        .iter()
        .enumerate()
        .map(|(i, c)| {
            measure_checkpoint(c, settings, &work.join(i.to_string()), progress)
                .with_context(|| c.display().to_string())
        })
        .collect::<Result<_>>()?;
    progress.finish_and_clear();
    Ok(Report {
        fluxbuild_version: env!("CARGO_PKG_VERSION").into(),
        runtime: format!(
            "ONNX Runtime (CPU, {})",
            crate::runtime::library_path()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        settings: settings.clone(),
        configs: CONFIGS.to_vec(),
        checkpoints: reports,
    })
}

fn measure_checkpoint(
    checkpoint: &Path,
    settings: &Settings,
    work: &Path,
    progress: &ProgressBar,
) -> Result<CheckpointReport> {
    let name = checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    progress.set_message(format!("{name} fp32"));
    let fp32_dir = work.join("fp32");
    export_pipeline(
        checkpoint,
        &fp32_dir,
        "fp32",
        &Network::ALL,
        &PrecisionSettings::default(),
    )?;
    let models = ExportedModels::open(&fp32_dir)?;
    let request = RequestOptions {
        prompts: settings.prompts.clone(),
        height: Some(settings.height),
        width: Some(settings.width),
        steps: Some(settings.steps),
        seed: Some(settings.seed),
        max_sequence_length: Some(settings.max_sequence_length),
        ..RequestOptions::default()
    }
    .resolve(models.variant.value)?;
    let (reference, probes) = reference_run(&models, &request)?;
    let expected: Vec<Vec<BTreeMap<String, ArrayD<f32>>>> = Network::ALL
        .iter()
        .zip(&probes)
        .map(|(net, p)| run_probes(&models.graph(*net), p))
        .collect::<Result<_>>()?;
    progress.inc(1);

    progress.set_message(format!("{name} calibrate"));
    let calibration = work.join("calibration.json");
    let calibration_request = CalibrationRequest {
        models: fp32_dir.clone(),
        prompts: settings.calibration_prompts.clone(),
        steps: Some(settings.steps),
        height: Some(settings.height),
        width: Some(settings.width),
        seed: settings.seed,
        batch: settings.calibration_prompts.prompts.len(),
    };
    calibrate(&calibration_request, &calibration, &ProgressBar::hidden())?;
    progress.inc(1);

    let mut report = CheckpointReport {
        checkpoint: checkpoint.to_path_buf(),
        variant: models.variant.value,
        networks: vec![],
        end_to_end: vec![],
        transformer_weights: BTreeMap::from([("fp32".into(), weights_bytes(&fp32_dir)?)]),
    };
    for config in CONFIGS {
        progress.set_message(format!("{name} {}", config.name));
        let precision = PrecisionSettings {
            calibration: config.precision.is_fp8().then(|| calibration.clone()),
            emulate: config.emulate,
            ..PrecisionSettings::default()
        };
        // Every network the precision applies to, at that precision, on the reference inputs.
        let networks: Vec<Network> = Network::ALL
            .into_iter()
            .filter(|n| NetworkPrecision::new(*n, config.precision).is_ok())
            .collect();
        let spec: Vec<String> = networks.iter().map(|n| format!("{n}={}", config.precision)).collect();
        let dir = work.join("networks");
        export_pipeline(checkpoint, &dir, &spec.join(","), &networks, &precision)?;
        for (i, net) in Network::ALL.iter().enumerate().filter(|(_, n)| networks.contains(n)) {
            let got = run_probes(&dir.join(net.name()).join("model.onnx"), &probes[i])?;
            for ((probe, want), got) in probes[i].iter().zip(&expected[i]).zip(&got) {
                for (output, want) in want {
                    let (relative_error, max_abs_error) = compare(&got[output], want);
                    report.networks.push(NetworkError {
                        network: net.to_string(),
                        inputs: probe.label.clone(),
                        output: output.clone(),
                        config: config.name.into(),
                        relative_error,
                        max_abs_error,
                    });
                }
            }
        }
        // How much of the transformer's error is the rounding of 1000·σ and 1000·g alone.
        if config.emulate {
            let t = Network::ALL
                .iter()
                .position(|n| *n == Network::Transformer)
                .expect("transformer is a submodel");
            let rounded: Vec<Probe> = probes[t]
                .iter()
                .map(|p| p.with_conditioning_rounded(config.precision))
                .collect();
            let got = run_probes(&models.graph(Network::Transformer), &rounded)?;
            for ((probe, want), got) in rounded.iter().zip(&expected[t]).zip(&got) {
                let (relative_error, max_abs_error) = compare(&got["noise_pred"], &want["noise_pred"]);
                report.networks.push(NetworkError {
                    network: Network::Transformer.to_string(),
                    inputs: probe.label.clone(),
                    output: "noise_pred".into(),
                    config: config.name.into(),
                    relative_error,
                    max_abs_error,
                });
            }
        }
        report
            .transformer_weights
            .insert(config.name.into(), weights_bytes(&dir)?);

        // The whole pipeline with the precision's defaults, as `export --precision P` gives it.
        let pipeline = work.join("pipeline");
        let manifest = export_pipeline(
            checkpoint,
            &pipeline,
            config.precision.name(),
            &Network::ALL,
            &precision,
        )?;
        let generation = generate(&ExportedModels::open(&pipeline)?, &request, &mut |_| {})?;
        report.end_to_end.push(EndToEnd {
            config: config.name.into(),
            precisions: manifest.settings.precision.clone(),
            psnr_db: generation
                .images
                .iter()
                .zip(&reference.images)
                .map(|(a, b)| psnr(&a.pixels, &b.pixels))
                .collect(),
            final_latents_relative_error: compare(
                &generation.final_latents.into_dyn(),
                &reference.final_latents.clone().into_dyn(),
            )
            .0,
        });
        progress.inc(1);
    }
    std::fs::remove_dir_all(work).with_context(|| format!("{}: cannot remove", work.display()))?;
    Ok(report)
}

/// Exports `networks` of the pipeline folder with the precision `spec` (`--precision`).
fn export_pipeline(
    checkpoint: &Path,
    out: &Path,
    spec: &str,
    networks: &[Network],
    precision: &PrecisionSettings,
) -> Result<ExportManifest> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("{}: cannot remove", out.display()))?;
    }
    let plan = PrecisionPlan::parse(spec)?;
    let submodels = Network::ALL
        .into_iter()
        .filter(|n| networks.contains(n))
        .map(|network| {
            Ok(SubmodelSource {
                network,
                path: checkpoint.into(),
                config: None,
                plan: plan.resolve(network)?,
            })
        })
        .collect::<Result<_>>()?;
    let request = ExportRequest {
        submodels,
        files: crate::pipeline_files::PipelineFileSources {
            pipeline: crate::pipeline_files::pipeline_folder(checkpoint),
            ..Default::default()
        },
        out: out.into(),
        existing: fluxbuild_contract::output_dir::Existing::Replace,
        opset: DEFAULT_OPSET,
        precision: precision.clone(),
    };
    export(&request, &ProgressBar::hidden()).with_context(|| format!("export --precision {spec}"))
}

/// The transformer's weights: the data file, and the bytes of the tensors in it (the writer pads
/// every tensor to a 4 KiB page, which dominates a tiny checkpoint).
fn weights_bytes(dir: &Path) -> Result<WeightsSize> {
    let transformer = dir.join(Network::Transformer.name());
    let path = transformer.join("model.onnx.data");
    let file = std::fs::metadata(&path)
        .with_context(|| format!("{}: cannot stat", path.display()))?
        .len();
    let model = fluxbuild_onnx::read_model(&transformer.join("model.onnx"))?;
    let tensors = model
        .graph
        .initializer
        .iter()
        .filter_map(|t| {
            t.external_data
                .iter()
                .find(|e| e.key == "length")
                .and_then(|e| e.value.parse::<u64>().ok())
        })
        .sum();
    Ok(WeightsSize { file, tensors })
}

/// A named set of graph inputs.
struct Probe {
    label: String,
    inputs: Vec<(String, Feed)>,
}

enum Feed {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl Probe {
    /// The same transformer inputs with `timestep` and `guidance` replaced by what the graph at
    /// `precision` embeds (see `rounded_conditioning`), for the fp32 graph.
    fn with_conditioning_rounded(&self, precision: Precision) -> Probe {
        let inputs = self
            .inputs
            .iter()
            .map(|(n, f)| {
                let feed = match f {
                    Feed::F32(a) if n == "timestep" || n == "guidance" => {
                        Feed::F32(a.mapv(|x| rounded_conditioning(x, precision)))
                    }
                    Feed::F32(a) => Feed::F32(a.clone()),
                    Feed::I64(a) => Feed::I64(a.clone()),
                };
                (n.clone(), feed)
            })
            .collect();
        Probe {
            label: format!("{}, fp32 but 1000·σ, 1000·g rounded", self.label),
            inputs,
        }
    }
}

/// The transformer embeds 1000·x after rounding x to its float type and multiplying there, as
/// diffusers does (`timestep.to(dtype) * 1000`): the value (divided by 1000 again) an fp32
/// graph must be fed to embed the same number. fp8 graphs do this part in their base type.
pub fn rounded_conditioning(x: f32, precision: Precision) -> f32 {
    let round = |v: f32| match precision.base() {
        Precision::Bf16 => half::bf16::from_f32(v).to_f32(),
        Precision::Fp16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    };
    round(round(x) * 1000.0) / 1000.0
}

/// The fp32 generation, and each network's inputs from it (in `Network::ALL` order): the token ids,
/// the transformer's inputs at the first and the middle step, the decoder's final latent.
fn reference_run(models: &ExportedModels, request: &Request) -> Result<(Generation, Vec<Vec<Probe>>)> {
    let probe_steps = [0, request.steps / 2];
    let mut transformer = Vec::new();
    let generation = generate(models, request, &mut |event| {
        if let Event::Transformer { step, inputs, .. } = event {
            if probe_steps.contains(&step) {
                transformer.push(Probe {
                    label: format!("step {} of {}", step + 1, request.steps),
                    inputs: inputs
                        .iter()
                        .map(|(n, a)| (n.to_string(), Feed::F32(a.clone())))
                        .collect(),
                });
            }
        }
    })?;
    let ids = |ids: &ndarray::Array2<i64>| {
        vec![Probe {
            label: "prompt tokens".into(),
            inputs: vec![("input_ids".into(), Feed::I64(ids.clone().into_dyn()))],
        }]
    };
    let latent = decoder_latent(models, request, &generation.final_latents).into_dyn();
    let vae = vec![Probe {
        label: "final latents".into(),
        inputs: vec![("latent".into(), Feed::F32(latent))],
    }];
    let probes = vec![ids(&generation.clip_ids), ids(&generation.t5_ids), transformer, vae];
    Ok((generation, probes))
}

fn run_probes(graph: &Path, probes: &[Probe]) -> Result<Vec<BTreeMap<String, ArrayD<f32>>>> {
    let mut model = Model::load(graph)?;
    probes
        .iter()
        .map(|p| {
            let inputs = p
                .inputs
                .iter()
                .map(|(n, f)| {
                    let input = match f {
                        Feed::F32(a) => Input::F32(a.clone()),
                        Feed::I64(a) => Input::I64(a.clone()),
                    };
                    (n.as_str(), input)
                })
                .collect();
            model
                .run(inputs)
                .with_context(|| format!("{} on {}", graph.display(), p.label))
        })
        .collect()
}

/// (||a - b|| / ||b||, max |a - b|), in f64.
pub fn compare(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f64, f64) {
    assert_eq!(a.shape(), b.shape(), "compared outputs differ in shape");
    let (mut diff, mut norm, mut max) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (*x as f64 - *y as f64).abs();
        diff += d * d;
        norm += (*y as f64).powi(2);
        max = max.max(d);
    }
    (
        if norm == 0.0 {
            if diff == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (diff / norm).sqrt()
        },
        max,
    )
}

/// PSNR in dB of 8-bit `a` against `b` (peak 255); `None` when identical.
pub fn psnr(a: &[u8], b: &[u8]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "images differ in size");
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    (mse > 0.0).then(|| 10.0 * (255.0f64.powi(2) / mse).log10())
}
