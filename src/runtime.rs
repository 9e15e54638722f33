//! ONNX Runtime, loaded at run time from the library the PyPI `onnxruntime` wheel ships
//! (`make setup` fetches it; `ORT_DYLIB_PATH` points at it).

use anyhow::{anyhow, bail, Context, Result};
use ndarray::ArrayD;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime shared library: `ORT_DYLIB_PATH`, else the copy `make setup` puts in `.cache/`.
pub fn library_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("ORT_DYLIB_PATH={} does not exist", path.display());
        }
        return Ok(path);
    }
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/onnxruntime/libonnxruntime.so");
    if bundled.is_file() {
        return Ok(bundled);
    }
    bail!(
        "the ONNX Runtime library was not found: set ORT_DYLIB_PATH to libonnxruntime.so \
         (`make setup` extracts it from the PyPI onnxruntime wheel into .cache/onnxruntime/)"
    )
}

static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, created on first use.
fn environment() -> Result<&'static Environment> {
    ENVIRONMENT
        .get_or_init(|| {
            let lib = library_path().map_err(|e| e.to_string())?;
            let builder = ort::init_from(&lib).map_err(|e| format!("cannot load {}: {e}", lib.display()))?;
            builder.with_name("fluxbuild").build().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// An input tensor.
pub enum Input {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
}

impl Input {
    /// The tensor for an input declared as `declared`: float32 data goes in as float16 where
    /// the graph takes float16 (fp16 graphs), so callers hand every graph f32.
    fn value(self, declared: Option<&ValueType>) -> Result<DynValue> {
        let wants_f16 = matches!(
            declared,
            Some(ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            })
        );
        Ok(match self {
            Input::F32(a) if wants_f16 => Tensor::from_array(a.mapv(half::f16::from_f32))?.into_dyn(),
            Input::F32(a) => Tensor::from_array(a)?.into_dyn(),
            Input::I64(a) => Tensor::from_array(a)?.into_dyn(),
            Input::I32(a) => Tensor::from_array(a)?.into_dyn(),
        })
    }
}

/// The ONNX Runtime session settings of every graph fluxbuild runs: locally here and in a cpu
/// repository (`fluxbuild package` writes them into each network's config as `ort_session_config`;
/// `scripts/ort_session_bench.py` times sessions with them). One JSON file is their only definition.
///
/// `session.prepack.enable_parallel`: the session start is MLAS packing every MatMul weight into a
/// fresh copy, one weight after the other; in parallel over the intra-op threads it took 0.58x the
/// time on 2 cores (bench/slice.md), with the same packed bytes, runs and anonymous memory.
const SESSION_CONFIG_JSON: &str = include_str!("../triton/models/onnx_network/session_config.json");

/// The settings of session_config.json as key/value pairs.
pub fn session_config() -> BTreeMap<String, String> {
    serde_json::from_str(SESSION_CONFIG_JSON)
        .expect("triton/models/onnx_network/session_config.json is a JSON object of strings")
}

/// One ONNX graph loaded for inference on the CPU.
pub struct Model {
    session: Session,
    pub path: PathBuf,
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        let env = environment()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let fail = |e: String| anyhow!("{}: ONNX Runtime cannot load the graph: {e}", path.display());
        let mut builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
        builder = builder.with_intra_threads(threads).map_err(|e| fail(e.to_string()))?;
        for (key, value) in session_config() {
            builder = builder.with_config_entry(key, value).map_err(|e| fail(e.to_string()))?;
        }
        let session = builder.commit_from_file(path).map_err(|e| fail(e.to_string()))?;
        Ok(Model {
            session,
            path: path.to_path_buf(),
        })
    }

    pub fn input_names(&self) -> Vec<String> {
        self.session.inputs().iter().map(|i| i.name().to_string()).collect()
    }

    /// Runs the graph; every float output is returned as f32 (float16 ones converted).
    pub fn run(&mut self, inputs: Vec<(&str, Input)>) -> Result<BTreeMap<String, ArrayD<f32>>> {
        let declared: BTreeMap<String, ValueType> = self
            .session
            .inputs()
            .iter()
            .map(|i| (i.name().to_string(), i.dtype().clone()))
            .collect();
        let values: Vec<(String, DynValue)> = inputs
            .into_iter()
            .map(|(n, v)| Ok((n.to_string(), v.value(declared.get(n))?)))
            .collect::<Result<_>>()?;
        let outputs = self
            .session
            .run(values)
            .with_context(|| format!("{}: inference failed", self.path.display()))?;
        let mut result = BTreeMap::new();
        for (name, value) in outputs.iter() {
            let array = match value.try_extract_array::<f32>() {
                Ok(array) => array.to_owned(),
                Err(_) => value
                    .try_extract_array::<half::f16>()
                    .with_context(|| format!("{}: output {name} is not float32 or float16", self.path.display()))?
                    .mapv(half::f16::to_f32),
            };
            result.insert(name.to_string(), array);
        }
        Ok(result)
    }
}
