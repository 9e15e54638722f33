//! Engine cache keys. A plan is reused only when the key of the requested build equals the
//! key it was built under: sha256 over the graph's files, the build settings, the exact
//! profile shapes, the runtime (TensorRT or TensorRT-RTX), its version and the GPUs it targets.

use crate::settings::{BuildSettings, Runtime};
use fluxbuild_contract::files::hex;
use fluxbuild_profiles::{Network, ProfileShapes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One file of an exported graph (`model.onnx`, `model.onnx.data`), named relative to the
/// graph's folder so that moving the models folder keeps the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Everything a plan depends on.
#[derive(Serialize)]
pub struct KeyInputs<'a> {
    pub runtime: Runtime,
    pub network: Network,
    pub graph: &'a [FileDigest],
    pub settings: &'a BuildSettings,
    pub profiles: &'a [ProfileShapes],
    /// Full version of the runtime, e.g. "10.13.0" (TensorRT) or "1.7.1" (TensorRT-RTX).
    pub tensorrt: &'a str,
    /// The target GPUs: "9.0" for a TensorRT build on an H100/H200, "8.9, 12.0" for TensorRT-RTX.
    pub compute_capability: &'a str,
}

/// Bumped when the plan format or what fluxbuild passes to TensorRT changes meaning.
const KEY_SCHEMA: &str = "fluxbuild-engine-key-v2";

pub fn cache_key(inputs: &KeyInputs<'_>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(KEY_SCHEMA.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(inputs).expect("key inputs serialize"));
    hex(&hasher.finalize())
}
