//! The parameters of a cpu-target network model: the Python-backend model that runs one network's
//! ONNX graph with ONNX Runtime (triton/models/onnx_network/model.py, which reads them through
//! onnx_network_params.py, declaring the same keys and types). `fluxbuild package` writes them into
//! each network's config.pbtxt; a field's name is its parameter key (encoding: `parameters`).

use crate::parameters::{json_text, Parameters};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnnxNetworkParameters {
    /// The graph, in the model's version folder (its external data file beside it).
    pub onnx_file: String,
    /// ONNX Runtime's intra-op threads; 0 lets ONNX Runtime use one per core.
    pub intra_op_threads: u32,
    /// ONNX Runtime session config entries: fluxbuild's settings (session_config.json).
    #[serde(with = "json_text")]
    pub ort_session_config: BTreeMap<String, String>,
    /// The most samples one ONNX Runtime run takes; a larger dynamic batch runs in slices of this
    /// size (the VAE decoder's memory peak: docs/serving.md). 0: the whole batch in one run.
    pub max_run_batch: u32,
}

impl Parameters for OnnxNetworkParameters {
    const WHAT: &'static str = "a cpu network model's parameters";
}
