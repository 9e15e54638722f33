//! The models of a repository, per target: what each model's folder holds and its config.
//! cpu: every network is a Python-backend model running its ONNX graph with ONNX Runtime;
//! gpu: every network is a `tensorrt_plan` model on its engine. Both get the same orchestrator.

use super::config::{
    DataType, DynamicBatching, InstanceGroup, InstanceKind, ModelConfig, QueuePolicy, Tensor, Warmup, WarmupData,
    WarmupInput,
};
use super::source::{data_type, fixed, numpy_dtype, Exported, ExportedNetwork};
use super::{Options, Target};
use crate::generate::request::{Defaults, FluxParameters, InitialNoise, Limits as RequestLimits, Request};
use crate::generate::tokenize::{CLIP_PAD_TOKEN, T5_PAD_TOKEN};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::engines::Engine;
use fluxbuild_contract::onnx_network::OnnxNetworkParameters;
use fluxbuild_contract::parameters::Parameters;
use fluxbuild_contract::Network;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const ORCHESTRATOR: &str = "flux";
const ORCHESTRATOR_PY: &str = include_str!("../../triton/models/flux/model.py");
/// The orchestrator's modules, imported by model.py from its version folder: tensor code (numpy or
/// torch), the precision sets of the fallback rule, and BYTES inputs decoded with sizes checked first.
const ORCHESTRATOR_ARRAYS_PY: &str = include_str!("../../triton/models/flux/flux_arrays.py");
const ORCHESTRATOR_FALLBACK_PY: &str = include_str!("../../triton/models/flux/flux_fallback.py");
const ORCHESTRATOR_BYTES_PY: &str = include_str!("../../triton/models/flux/flux_bytes.py");
/// The typed reader of the orchestrator's parameters (`OrchestratorParameters` on the Rust side).
const ORCHESTRATOR_PARAMS_PY: &str = include_str!("../../triton/models/flux/flux_params.py");
const ONNX_NETWORK_PY: &str = include_str!("../../triton/models/onnx_network/model.py");
/// The typed reader of a cpu network's parameters (`OnnxNetworkParameters` on the Rust side).
const ONNX_NETWORK_PARAMS_PY: &str = include_str!("../../triton/models/onnx_network/onnx_network_params.py");
/// What both typed readers are made of, shipped beside each.
const TYPED_PARAMS_PY: &str = include_str!("../../triton/models/typed_params.py");

/// One model folder: its config and its files (relative to the model folder).
pub struct ModelDir {
    pub config: ModelConfig,
    pub files: Vec<(PathBuf, Source)>,
}

pub enum Source {
    /// Hard-linked (copied across file systems).
    Link(PathBuf),
    Bytes(Vec<u8>),
}

/// Whether Triton batches this network (every input has a leading batch dim). The transformer
/// does not: its `img_ids` / `txt_ids` have none, so it is a `max_batch_size: 0` model with an
/// explicit batch dim and the orchestrator forms its batches.
pub fn batched(network: Network) -> bool {
    network != Network::Transformer
}

/// What the orchestrator may ask of the networks (from the graphs on cpu, the profiles on gpu).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub min_height: i64,
    pub max_height: i64,
    pub min_width: i64,
    pub max_width: i64,
    pub clip_length: i64,
    /// T5 tokens: what the T5 graph or engine and the transformer's text axis both take.
    pub min_sequence_length: i64,
    pub max_sequence_length: i64,
    pub network_max_batch: i64,
}

/// Triton dims of a graph value: symbolic dims become -1, the batch dim is dropped when batched.
fn graph_dims(network: &ExportedNetwork, value: &fluxbuild_exporters::onnx::ValueInfo) -> Result<Vec<i64>> {
    let dims: Vec<i64> = value.dims.iter().map(|d| fixed(d).unwrap_or(-1)).collect();
    if !batched(network.name) {
        return Ok(dims);
    }
    if dims.first() != Some(&-1) {
        bail!(
            "{}: `{}` must have a dynamic batch dim first, has {:?}",
            network.graph.display(),
            value.name,
            value.dims
        );
    }
    Ok(dims[1..].to_vec())
}

fn tensors(network: &ExportedNetwork, values: &[fluxbuild_exporters::onnx::ValueInfo]) -> Result<Vec<Tensor>> {
    values
        .iter()
        .map(|v| Ok(Tensor::new(&v.name, data_type(v.elem)?, &graph_dims(network, v)?)))
        .collect()
}

/// cpu: the network's graph run by ONNX Runtime inside a Python-backend model.
pub fn cpu_network(network: &ExportedNetwork, name: &str, options: &Options) -> Result<ModelDir> {
    let mut config = ModelConfig::new(name);
    config.backend = Some("python".into());
    config.inputs = tensors(network, &network.interface.inputs)?;
    config.outputs = tensors(network, &network.interface.outputs)?;
    if batched(network.name) {
        config.max_batch_size = options.max_batch;
        config.dynamic_batching = Some(DynamicBatching {
            preferred_batch_size: vec![],
            max_queue_delay_microseconds: 0,
            queue_policy: None,
        });
    }
    config.instance_groups.push(InstanceGroup {
        count: 1,
        kind: InstanceKind::Cpu,
        gpus: vec![],
        profile: vec![],
    });
    config.parameters = OnnxNetworkParameters {
        onnx_file: "model.onnx".into(),
        intra_op_threads: 0,
        ort_session_config: crate::runtime::session_config(),
        // The VAE decoder decodes one image per ONNX Runtime run (its activations are the memory
        // peak: docs/serving.md); the other networks run a dynamic batch whole.
        max_run_batch: u32::from(network.name == Network::VaeDecoder),
    }
    .to_strings()?;
    let mut files = vec![
        (
            PathBuf::from("1/model.py"),
            Source::Bytes(ONNX_NETWORK_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/onnx_network_params.py"),
            Source::Bytes(ONNX_NETWORK_PARAMS_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/typed_params.py"),
            Source::Bytes(TYPED_PARAMS_PY.as_bytes().to_vec()),
        ),
        (PathBuf::from("1/model.onnx"), Source::Link(network.graph.clone())),
    ];
    if let Some(data) = &network.data {
        files.push((PathBuf::from("1/model.onnx.data"), Source::Link(data.clone())));
    }
    Ok(ModelDir { config, files })
}

/// gpu: a TensorRT plan; one instance group whose instances hold every optimization profile
/// (TensorRT picks the one that fits each request), warmed up at profile 0's opt shapes, which
/// every instance can serve.
pub fn gpu_network(network: &ExportedNetwork, engine: &Engine, name: &str) -> Result<ModelDir> {
    let mut config = ModelConfig::new(name);
    config.platform = Some("tensorrt_plan".into());
    config.default_model_filename = Some("model.plan".into());
    let is_batched = batched(network.name);
    let skip = usize::from(is_batched);
    let mut inputs = Vec::new();
    for value in &network.interface.inputs {
        let dims: Vec<i64> = (0..value.dims.len())
            .map(|axis| {
                fixed(&value.dims[axis])
                    .or_else(|| engine.fixed_dim(&value.name, axis))
                    .unwrap_or(-1)
            })
            .collect();
        inputs.push(Tensor::new(&value.name, data_type(value.elem)?, &dims[skip..]));
    }
    config.inputs = inputs;
    config.outputs = tensors(network, &network.interface.outputs)?;
    if is_batched {
        let first = &network.interface.inputs[0].name;
        config.max_batch_size = u32::try_from(engine.max_batch(first)?).context("batch")?;
        let mut preferred: Vec<u32> = engine
            .profiles
            .iter()
            .filter_map(|p| p.inputs.get(first))
            .map(|s| s.opt[0] as u32)
            .filter(|b| *b > 1 && *b <= config.max_batch_size)
            .collect();
        preferred.sort();
        preferred.dedup();
        config.dynamic_batching = Some(DynamicBatching {
            preferred_batch_size: preferred,
            max_queue_delay_microseconds: 100,
            queue_policy: None,
        });
    }
    config.instance_groups.push(InstanceGroup {
        count: 1,
        kind: InstanceKind::Gpu,
        gpus: vec![],
        profile: (0..engine.profiles.len()).map(|i| i.to_string()).collect(),
    });
    let opt = &engine.profiles[0].inputs;
    let mut warmup = Warmup {
        name: "profile_0_opt".into(),
        batch_size: 1,
        inputs: vec![],
    };
    for value in &network.interface.inputs {
        let shape = match opt.get(&value.name) {
            Some(s) => s.opt.clone(),
            None => value
                .dims
                .iter()
                .map(|d| fixed(d).context("a dynamic dim without profile shapes"))
                .collect::<Result<_>>()?,
        };
        if is_batched {
            warmup.batch_size = shape[0] as u32;
        }
        warmup.inputs.push(WarmupInput {
            name: value.name.clone(),
            data_type: data_type(value.elem)?,
            dims: shape[skip..].to_vec(),
            data: WarmupData::Zero,
        });
    }
    config.warmup.push(warmup);
    let files = vec![(PathBuf::from("1/model.plan"), Source::Link(engine.file.clone()))];
    Ok(ModelDir { config, files })
}

/// The validation table of this deployment (`generate::request::Limits`): what the networks
/// serve, the steps allowed, the prompt and memory limits.
fn request_rules(options: &Options, limits: &Limits) -> Result<RequestLimits> {
    let size = |v: i64| usize::try_from(v).context("a negative limit");
    Ok(RequestLimits {
        min_height: size(limits.min_height)?,
        max_height: size(limits.max_height)?,
        min_width: size(limits.min_width)?,
        max_width: size(limits.max_width)?,
        max_steps: options.max_steps as usize,
        min_sequence_length: size(limits.min_sequence_length)?,
        max_sequence_length: size(limits.max_sequence_length)?,
        max_prompt_bytes: options.serving.max_prompt_bytes,
        max_image_pixels: options.serving.max_image_pixels(),
        ..RequestLimits::pipeline()
    })
}

/// A deployment must serve a one-prompt request with its own defaults (else its settings
/// contradict each other: a size it does not serve, steps beyond --max-steps, a memory budget below
/// the smallest image, no prompt byte allowed); checked by the rules every request meets.
fn check_default_request(parameters: &FluxParameters) -> Result<()> {
    let size = |v: u32| v as usize;
    let request = Request {
        prompts: vec!["a".into()],
        height: size(parameters.default_height),
        width: size(parameters.default_width),
        steps: size(parameters.default_steps),
        guidance: parameters.default_guidance,
        max_sequence_length: size(parameters.default_max_sequence_length),
        noise: InitialNoise::Seed(0),
    };
    request.check(&parameters.request_rules).with_context(|| {
        format!(
            "the repository would refuse a request with its own defaults ({}x{} px, {} steps, T5 length {}); \
             change --height/--width, --steps/--max-steps, --max-sequence-length, --memory-budget-mib or \
             --max-prompt-bytes",
            request.height, request.width, request.steps, request.max_sequence_length
        )
    })
}

/// The orchestrator: prompt in, image out, driving the networks by BLS.
pub fn orchestrator(
    exported: &Exported,
    options: &Options,
    limits: &Limits,
    models: &BTreeMap<String, Vec<String>>,
) -> Result<ModelDir> {
    let mut c = ModelConfig::new(ORCHESTRATOR);
    c.backend = Some("python".into());
    c.max_batch_size = options.max_batch;
    c.inputs = vec![
        Tensor::new("prompt", DataType::String, &[1]),
        Tensor::new("height", DataType::Int32, &[1]).optional(),
        Tensor::new("width", DataType::Int32, &[1]).optional(),
        Tensor::new("steps", DataType::Int32, &[1]).optional(),
        Tensor::new("guidance", DataType::Fp32, &[1]).optional(),
        Tensor::new("seed", DataType::Int64, &[1]).optional(),
        Tensor::new("max_sequence_length", DataType::Int32, &[1]).optional(),
        Tensor::new("noise", DataType::Fp32, &[16, -1, -1]).optional(),
    ];
    // The seed each image was made from (random unless given): the image can be made again; and
    // the models that made it (a JSON object: precision set index, network -> model), which
    // says when a fallback precision set served it.
    c.outputs = vec![
        Tensor::new("image", DataType::Uint8, &[-1, -1, 3]),
        Tensor::new("seed", DataType::Int64, &[1]),
        Tensor::new("models", DataType::String, &[1]),
    ];
    let serving = &options.serving;
    c.dynamic_batching = Some(DynamicBatching {
        preferred_batch_size: vec![options.max_batch],
        max_queue_delay_microseconds: options.queue_delay_us,
        queue_policy: Some(QueuePolicy {
            max_queue_size: serving.max_queue_size,
            default_timeout_microseconds: serving.queue_timeout_ms * 1000,
        }),
    });
    let kind = match options.target {
        Target::Cpu => InstanceKind::Cpu,
        Target::Gpu => InstanceKind::Gpu,
    };
    if serving.running_jobs == 0 || serving.running_jobs > serving.instances {
        bail!(
            "--running-jobs {} must be within 1..=--instances ({})",
            serving.running_jobs,
            serving.instances
        );
    }
    c.instance_groups.push(InstanceGroup {
        count: serving.instances,
        kind,
        gpus: vec![],
        profile: vec![],
    });

    let exported_models = &exported.models;
    // Local generation's defaults (FluxPipeline's), the T5 length capped by what the graphs or engines take.
    let defaults = Defaults::of(exported_models.variant.value);
    // FluxPipeline's defaults are clamped to what the deployment serves; given ones are not (the
    // default request's check below names them).
    let given_or = |given: Option<u32>, default: usize, low: i64, high: i64| {
        given.map_or((default as i64).clamp(low, high), i64::from)
    };
    let default_length = given_or(
        options.max_sequence_length,
        defaults.max_sequence_length,
        limits.min_sequence_length,
        limits.max_sequence_length,
    );
    let default_height = given_or(options.height, defaults.height, limits.min_height, limits.max_height);
    let default_width = given_or(options.width, defaults.width, limits.min_width, limits.max_width);
    let mut dtypes = BTreeMap::new();
    for value in &exported.network(Network::Transformer).interface.inputs {
        dtypes.insert(value.name.clone(), numpy_dtype(value.elem).to_string());
    }
    dtypes.insert(
        "latent".into(),
        numpy_dtype(
            exported
                .network(Network::VaeDecoder)
                .interface
                .input("latent")
                .expect("checked")
                .elem,
        )
        .to_string(),
    );
    let mut parameters = FluxParameters {
        target: options.target,
        variant: exported_models.variant.value,
        default_height: u32::try_from(default_height).context("default height")?,
        default_width: u32::try_from(default_width).context("default width")?,
        default_steps: options.steps.unwrap_or(defaults.steps as u32),
        default_guidance: defaults.guidance,
        default_max_sequence_length: u32::try_from(default_length).context("default T5 length")?,
        request_rules: request_rules(options, limits)?,
        max_batch_pixels: serving
            .max_batch_pixels(usize::try_from(limits.max_height * limits.max_width).context("image size")?)
            as u64,
        network_timeout_ms: serving.network_timeout_ms,
        running_jobs: serving.running_jobs,
        clip_length: u32::try_from(limits.clip_length).context("CLIP length")?,
        clip_pad_token: CLIP_PAD_TOKEN.into(),
        t5_pad_token: T5_PAD_TOKEN.into(),
        vae_scaling_factor: exported_models.vae_scaling_factor.value,
        vae_shift_factor: exported_models.vae_shift_factor.value,
        network_max_batch: u32::try_from(limits.network_max_batch).context("network batch")?,
        input_dtypes: dtypes,
        model_clip: String::new(),
        model_t5: String::new(),
        model_transformer: String::new(),
        model_vae_decoder: String::new(),
        fallback_clip: vec![],
        fallback_t5: vec![],
        fallback_transformer: vec![],
        fallback_vae_decoder: vec![],
        torch_on_cpu: None,
        step_order: None,
    };
    check_default_request(&parameters)?;
    for (network, names) in models {
        parameters.set_models(fluxbuild_contract::Network::parse(network)?, names);
    }
    c.parameters = parameters.to_strings()?;
    let files = vec![
        (
            PathBuf::from("1/model.py"),
            Source::Bytes(ORCHESTRATOR_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/flux_arrays.py"),
            Source::Bytes(ORCHESTRATOR_ARRAYS_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/flux_fallback.py"),
            Source::Bytes(ORCHESTRATOR_FALLBACK_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/flux_bytes.py"),
            Source::Bytes(ORCHESTRATOR_BYTES_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/flux_params.py"),
            Source::Bytes(ORCHESTRATOR_PARAMS_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/typed_params.py"),
            Source::Bytes(TYPED_PARAMS_PY.as_bytes().to_vec()),
        ),
        (
            PathBuf::from("1/tokenizer/tokenizer.json"),
            Source::Link(exported_models.clip_tokenizer.clone()),
        ),
        (
            PathBuf::from("1/tokenizer_2/tokenizer.json"),
            Source::Link(exported_models.t5_tokenizer.clone()),
        ),
        // The schedule local generation uses (the export's scheduler_config.json as read, or the
        // variant's published one), so both compute the same sigmas.
        (
            PathBuf::from("1/scheduler/scheduler_config.json"),
            Source::Bytes(serde_json::to_vec_pretty(&exported_models.scheduler.value)?),
        ),
    ];
    Ok(ModelDir { config: c, files })
}
