//! Exporting the FLUX transformer fixtures and running them (transformer_parity, bad_checkpoints).

use super::{fixtures, relative_error};
use fluxbuild::runtime::{Input, Model};
use fluxbuild_contract::Network;
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::{exporter, plan, Analysis, GraphOptions};
use fluxbuild_exporters::onnx::{write_model, ElemType, Problem};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};

pub fn case_dir(case: &str) -> PathBuf {
    fixtures().join("transformer").join(case)
}

/// A BFL single file carries no RoPE axes: tests pass the diffusers config as `--config`.
pub fn diffusers_config(case: &str) -> serde_json::Value {
    read_json(Some(&case_dir(case).join("diffusers/config.json")))
        .unwrap()
        .unwrap()
}

pub fn open(source: &Path) -> anyhow::Result<Checkpoint> {
    let transformer = exporter(Network::Transformer);
    Checkpoint::load(source, transformer.subfolder(), transformer.key_prefixes())
}

/// Analysis and tensor problems of `source`, without writing anything.
pub fn problems(source: &Path, config: Option<&serde_json::Value>) -> anyhow::Result<(Analysis, Vec<Problem>)> {
    let ckpt = open(source)?;
    let (analysis, _, problems) = plan(exporter(Network::Transformer), &ckpt, config, &GraphOptions::default())?;
    Ok((analysis, problems))
}

/// Exports `source` into `out` (which must have no problems) and returns the analysis.
pub fn export(source: &Path, config: Option<&serde_json::Value>, float: ElemType, out: &Path) -> Analysis {
    let ckpt = open(source).unwrap();
    let options = GraphOptions {
        float,
        ..GraphOptions::default()
    };
    let (analysis, graph, problems) = plan(exporter(Network::Transformer), &ckpt, config, &options).unwrap();
    assert!(problems.is_empty(), "{}: {problems:?}", source.display());
    write_model(&graph, out, &mut |_, _| {}).unwrap();
    analysis
}

/// The tensors of a fixture `io*.safetensors` file as f32 arrays.
pub fn io_tensors(path: &Path) -> Vec<(String, ArrayD<f32>)> {
    let ckpt = Checkpoint::load(path, "", &[]).unwrap();
    ckpt.tensors()
        .map(|t| {
            (
                t.name.to_string(),
                ArrayD::from_shape_vec(t.shape().to_vec(), t.to_f32()).unwrap(),
            )
        })
        .collect()
}

/// Runs the graph in `model_dir` on the fixture inputs: (relative error, max abs error) of
/// `noise_pred` against the reference.
pub fn compare(model_dir: &Path, io: &Path) -> (f64, f64) {
    let mut model = Model::load(&model_dir.join("model.onnx")).unwrap();
    let tensors = io_tensors(io);
    let inputs: Vec<(&str, Input)> = tensors
        .iter()
        .filter(|(name, _)| name != "noise_pred")
        .map(|(name, a)| (name.as_str(), Input::F32(a.clone())))
        .collect();
    let want = &tensors.iter().find(|(n, _)| n == "noise_pred").unwrap().1;
    let got = &model.run(inputs).unwrap()["noise_pred"];
    assert_eq!(got.shape(), want.shape());
    let (got, want) = (got.as_slice().unwrap(), want.as_slice().unwrap());
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    (relative_error(got, want), max_abs)
}
