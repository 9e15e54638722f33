//! Builds TensorRT-RTX engines in-process through trtx (TensorRT-RTX 1.7 headers, the crate's
//! default; libtensorrt_rtx / libtensorrt_onnxparser_rtx are dlopened from the paths the probe
//! found). TensorRT-RTX builds ahead of time without a GPU: createInferBuilder, a strongly typed
//! network from the ONNX parser over the memory-mapped weights (native/mapped_parse.rs), the
//! preset's optimization profiles, the target compute capabilities, buildSerializedNetwork.
//! Progress comes from TensorRT's IProgressMonitor.
//!
//! Why TensorRT-RTX only: trtx picks one header set at compile time (RTX 1.7 by default,
//! standard TensorRT 11.4 with its `enterprise` feature), and the C++ API is inline calls through
//! versioned vtables, so one binary cannot drive both libraries natively. Standard TensorRT (10.x
//! and 11.x on GPU hosts) is driven through `trtexec` (src/trtexec.rs), which ships with it.

use crate::build::Graph;
use crate::settings::{BuildSettings, ComputeCapability, Precision};
use crate::toolchain::{TensorRtLibs, Version};
use anyhow::{anyhow, bail, Context, Result};
use fluxbuild_contract::files::AtomicFile;
use fluxbuild_profiles::ProfileShapes;
use indicatif::ProgressBar;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use trtx::builder::{BuilderFlag, MemoryPoolType};
use trtx::interfaces::MonitorProgress;
use trtx::trtx_sys::Dims64;
use trtx::{Builder, LogHandler, Logger, OptProfileSelector, Severity};

mod mapped_parse;

/// The TensorRT-RTX version of the headers trtx was compiled against.
pub fn header_version() -> Version {
    // SAFETY: returns a compile-time constant from the headers; loads nothing.
    Version::from_int(unsafe { trtx::trtx_sys::get_tensorrt_version() })
}

/// Refuses, before any work, what the TensorRT-RTX builder cannot do.
pub fn check(settings: &BuildSettings, timing_cache: Option<&Path>, graphs: &[Graph]) -> Result<()> {
    if timing_cache.is_some() {
        bail!("--timing-cache: TensorRT-RTX builds without timing (its kernels are chosen on the GPU at run time); leave it out");
    }
    if matches!(settings.precision, Precision::Fp16 | Precision::Bf16 | Precision::Fp8) {
        bail!(
            "--precision {}: TensorRT-RTX networks are always strongly typed; export the graph in the precision you want \
             (`fluxbuild export --precision ...`) and build with --precision typed",
            settings.precision.name()
        );
    }
    let fp8: Vec<String> = graphs
        .iter()
        .filter(|g| crate::capability::has_fp8(&g.model))
        .map(|g| g.network.to_string())
        .collect();
    let targets = settings.rtx_targets();
    if settings.strip_weights && !fp8.is_empty() && targets.len() != 1 {
        bail!(
            "--strip-weights with FP8 graphs ({}): TensorRT-RTX 1.7 compiles weightless FP8 plans for one GPU at a time \
             (its Myelin compiler stops at \"kernel_gen.cpp:1249: CHECK(sm_vers_.size() == 1)\"), and this build targets {}; \
             pass one --compute-capability (8.9 or 12.0), once per GPU",
            fp8.join(", "),
            crate::settings::list(&targets)
        );
    }
    Ok(())
}

pub struct NativeJob<'a> {
    pub onnx: &'a Path,
    pub plan: &'a Path,
    pub profiles: &'a [ProfileShapes],
    pub settings: &'a BuildSettings,
}

/// Everything the log said at error level, for the error message (the parser names the node).
type Errors = Arc<Mutex<Vec<String>>>;

/// Parses the ONNX graph (external data beside it), builds, and writes the plan atomically.
/// Returns the seconds spent parsing.
pub fn build(libs: &TensorRtLibs, job: &NativeJob<'_>, bar: &ProgressBar) -> Result<f64> {
    trtx::dynamically_load_tensorrt(Some(&libs.nvinfer))
        .map_err(|e| anyhow!("loading {}: {e}", libs.nvinfer.display()))?;
    trtx::dynamically_load_tensorrt_onnxparser(Some(&libs.onnxparser))
        .map_err(|e| anyhow!("loading {}: {e}", libs.onnxparser.display()))?;
    let log = TensorRtLog {
        errors: Arc::default(),
        bar: bar.clone(),
    };
    let parser_log = log.clone();
    let errors = log.errors.clone();
    let with_log = move |what: &str, e: &dyn std::fmt::Display| {
        let logged = errors.lock().expect("log lock");
        // The parser's verdict names the node: "[6] Invalid Node - decoder.mid/Reshape_153".
        let node = logged
            .iter()
            .find_map(|l| l.split_once("Invalid Node - ").map(|(_, n)| n.trim().to_string()));
        let what = match node {
            Some(node) => format!("{what}: TensorRT-RTX's ONNX parser rejects node {node}"),
            None => format!("{what}: {e}"),
        };
        // TensorRT-RTX probes for a GPU and logs its absence; on a CPU-only build host that is no error.
        let said: Vec<&str> = logged
            .iter()
            .filter(|l| !l.contains("catchCudaError"))
            .map(String::as_str)
            .collect();
        anyhow!(
            "{what}{}{}",
            if said.is_empty() { "" } else { "\nTensorRT said:\n" },
            said.join("\n")
        )
    };
    let logger = Logger::new(log).map_err(|e| anyhow!("TensorRT logger: {e}"))?;
    let mut builder = Builder::new(&logger).map_err(|e| with_log("creating the TensorRT-RTX builder", &e))?;
    // No creation flags: TensorRT-RTX networks are strongly typed by definition.
    let network = builder
        .create_network(0)
        .map_err(|e| with_log("creating the network", &e))?;
    let mut config = builder
        .create_config()
        .map_err(|e| with_log("creating the builder config", &e))?;
    if let Some(bytes) = job.settings.workspace_bytes {
        config.set_memory_pool_limit(MemoryPoolType::kWORKSPACE, bytes as usize);
    }
    if let Some(level) = job.settings.optimization_level {
        config.set_builder_optimization_level(level as i32);
    }
    if job.settings.precision == Precision::Fp32 {
        config.clear_flag(BuilderFlag::kTF32);
    }
    if job.settings.strip_weights {
        // The weights of MatMul/Gemm/Conv become parser placeholders, left out of the plan and
        // refitted at deploy time (see mapped_parse::MappedParser::parse_with_placeholders).
        config.set_flag(BuilderFlag::kSTRIP_PLAN);
        config.set_flag(BuilderFlag::kREFIT_INDIVIDUAL);
    }
    bar.set_message("parsing ONNX");
    let parse_started = std::time::Instant::now();
    let weightless = job.settings.strip_weights.then_some(&config);
    let mut parser =
        mapped_parse::MappedParser::parse(job.onnx, network, &libs.onnxparser, Box::new(parser_log), weightless)
            .map_err(|e| with_log("parsing the ONNX graph", &format!("{e:#}")))?;
    let parse_seconds = parse_started.elapsed().as_secs_f64();
    let targets = &job.settings.compute_capabilities;
    if !targets.is_empty() {
        config
            .set_nb_compute_capabilities(targets.len() as i32)
            .map_err(|e| with_log("setting the compute capabilities", &e))?;
        for (index, target) in targets.iter().enumerate() {
            config
                .set_compute_capability(sm(*target)?, index as i32)
                .map_err(|e| with_log(&format!("compute capability {target}"), &e))?;
        }
    }
    let mut profiles = Vec::new();
    for (index, shapes) in job.profiles.iter().enumerate() {
        let mut profile = builder
            .creata_optimization_profile()
            .map_err(|e| with_log("creating an optimization profile", &e))?;
        for input in &shapes.inputs {
            for (selector, dims) in [
                (OptProfileSelector::kMIN, &input.min),
                (OptProfileSelector::kOPT, &input.opt),
                (OptProfileSelector::kMAX, &input.max),
            ] {
                profile
                    .set_dimensions(&input.name, selector, &Dims64::from_slice(dims))
                    .map_err(|e| with_log(&format!("profile {index}: {} {selector:?} {dims:?}", input.name), &e))?;
            }
        }
        config
            .add_optimization_profile(&mut profile)
            .map_err(|e| with_log(&format!("adding profile {index}"), &e))?;
        profiles.push(profile);
    }
    config
        .set_progress_monitor(Box::new(Monitor {
            bar: bar.clone(),
            phases: Mutex::default(),
        }))
        .map_err(|e| with_log("progress monitor", &e))?;

    bar.set_message("building");
    let plan = builder
        .build_serialized_network(parser.network_mut(), &mut config)
        .map_err(|e| with_log("building the engine", &e))?;
    let mut file = AtomicFile::create(job.plan)?;
    file.write_all(plan.as_ref())
        .with_context(|| format!("{}: write failed", job.plan.display()))?;
    file.commit()?;
    drop(profiles);
    Ok(parse_seconds)
}

fn sm(target: ComputeCapability) -> Result<trtx::builder::ComputeCapability> {
    use trtx::builder::ComputeCapability as Sm;
    Ok(match target.0 {
        75 => Sm::kSM75,
        80 => Sm::kSM80,
        86 => Sm::kSM86,
        89 => Sm::kSM89,
        120 => Sm::kSM120,
        121 => Sm::kSM121,
        _ => bail!("compute capability {target} is not a TensorRT-RTX target"),
    })
}

/// TensorRT's log: errors are kept for the error message, warnings shown above the bar.
#[derive(Clone)]
struct TensorRtLog {
    errors: Errors,
    bar: ProgressBar,
}

impl LogHandler for TensorRtLog {
    fn log(&self, severity: Severity, message: &str) {
        match severity {
            Severity::InternalError | Severity::Error => {
                self.errors.lock().expect("log lock").push(message.to_string())
            }
            Severity::Warning => self.bar.suspend(|| eprintln!("TensorRT warning: {message}")),
            Severity::Info | Severity::Verbose => {}
        }
    }
}

/// Shows the build phases TensorRT reports ("Building engine" > "Tactic selection" ...).
struct Monitor {
    bar: ProgressBar,
    phases: Mutex<Vec<(String, i32)>>,
}

impl MonitorProgress for Monitor {
    fn phase_start(&self, phase_name: &str, _parent: Option<&str>, num_steps: i32) {
        let mut phases = self.phases.lock().expect("phase lock");
        phases.push((phase_name.to_string(), num_steps));
        if phases.len() == 1 {
            self.bar.set_length(num_steps.max(1) as u64);
            self.bar.set_position(0);
        }
        self.bar
            .set_message(phases.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(" > "));
    }

    fn step_complete(&self, phase_name: &str, step: i32) -> ControlFlow<()> {
        let phases = self.phases.lock().expect("phase lock");
        if phases.first().is_some_and(|(p, _)| p == phase_name) {
            self.bar.set_position(step as u64 + 1);
        }
        ControlFlow::Continue(())
    }

    fn phase_finish(&self, phase_name: &str) {
        let mut phases = self.phases.lock().expect("phase lock");
        if let Some(i) = phases.iter().rposition(|(p, _)| p == phase_name) {
            phases.truncate(i);
        }
    }
}
