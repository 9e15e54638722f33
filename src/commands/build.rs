//! `fluxbuild build --models DIR --profile NAME --out ENGINES`: graphs -> TensorRT plans.
//!
//! Nothing is written until the graphs are checked and the toolchain (TensorRT or trtexec, a
//! GPU) is found; then `fluxbuild_engines::stage` builds and commits the folder engine by engine.

use crate::output::Output;
use anyhow::{bail, Result};
use fluxbuild_engines::build::{self, BuildRequest};
use fluxbuild_engines::settings::{list, BuildSettings, BuilderKind, ComputeCapability, Precision, Runtime};
use fluxbuild_engines::toolchain::{self, Version};
use fluxbuild_engines::trtexec;
use fluxbuild_engines::{rtx, stage};
use fluxbuild_profiles::{Network, Preset};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Exported graphs (`fluxbuild export --out`): DIR/{clip,t5,transformer,vae_decoder}/model.onnx.
    #[arg(long)]
    models: PathBuf,
    /// Optimization-profile preset: a built-in name (`fluxbuild profile list`) or a .toml file.
    #[arg(long)]
    profile: String,
    /// Engines folder: NET/model.plan plus manifest.json.
    #[arg(long)]
    out: PathBuf,
    /// typed (the graph's own types, strongly typed), or weakly typed fp32 | fp16 | bf16 | fp8.
    #[arg(long, default_value = "typed")]
    precision: Precision,
    /// TensorRT timing cache file, read if present and updated (trtexec builder).
    #[arg(long)]
    timing_cache: Option<PathBuf>,
    /// 0 (fast build) .. 5 (most tactics); TensorRT's default is 3.
    #[arg(long)]
    builder_optimization_level: Option<u8>,
    /// Workspace memory pool limit in GiB (default: TensorRT's, the GPU's memory).
    #[arg(long, value_name = "GiB")]
    workspace: Option<f64>,
    /// tensorrt (standard TensorRT on a GPU host, for Triton) or tensorrt-rtx (TensorRT-RTX,
    /// built ahead of time on any machine, no GPU; engines for RTX / Ampere-or-newer GPUs).
    #[arg(long, default_value = "tensorrt")]
    runtime: Runtime,
    /// TensorRT-RTX target GPUs, comma-separated compute capabilities (7.5, 8.0, 8.6, 8.9, 12.0,
    /// 12.1); default: TensorRT-RTX's own set (8.0 and newer). FP8 graphs need 8.9 or newer.
    #[arg(long, value_delimiter = ',', value_name = "X.Y")]
    compute_capability: Vec<ComputeCapability>,
    /// Weightless plans (TensorRT-RTX: kSTRIP_PLAN): about the size of the kernels, not of the
    /// weights; the deployment refits them from the same graph's weights.
    #[arg(long)]
    strip_weights: bool,
    /// native (TensorRT builder API through trtx: TensorRT-RTX) or trtexec (standard TensorRT).
    /// Default: native for tensorrt-rtx, trtexec for tensorrt.
    #[arg(long)]
    builder: Option<BuilderKind>,
    /// Print the trtexec command line of every network and stop: no TensorRT or GPU needed.
    #[arg(long)]
    dry_run: bool,
    /// TensorRT release the --dry-run lines are for (default: the trtexec or libnvinfer found here).
    #[arg(long, value_name = "X.Y", requires = "dry_run")]
    tensorrt_version: Option<toolchain::Version>,
    /// Build only these networks (comma-separated: clip,t5,transformer,vae_decoder).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let builder = match (args.builder, args.dry_run, args.runtime) {
        (_, true, Runtime::TensorrtRtx) => {
            bail!("--dry-run prints trtexec command lines for standard TensorRT: use --runtime tensorrt")
        }
        (Some(BuilderKind::Native), true, _) => bail!("--dry-run prints trtexec command lines: use --builder trtexec"),
        (Some(builder), _, _) => builder,
        (None, _, Runtime::Tensorrt) => BuilderKind::Trtexec,
        (None, _, Runtime::TensorrtRtx) => BuilderKind::Native,
    };
    let request = BuildRequest {
        preset: Preset::load(&args.profile)?,
        settings: BuildSettings::new(builder, args.precision, args.workspace, args.builder_optimization_level)?
            .with_runtime(args.runtime, args.compute_capability)?
            .with_strip_weights(args.strip_weights)?,
        only: args
            .only
            .iter()
            .map(|n| Network::parse(n.trim()))
            .collect::<Result<_>>()?,
        models: args.models,
        out: args.out,
        timing_cache: args.timing_cache,
    };
    let graphs = build::read_graphs(&request)?;
    if args.dry_run {
        return dry_run(&request, &graphs, args.tensorrt_version, out);
    }
    let toolchain = match request.settings.runtime {
        Runtime::Tensorrt => toolchain::probe(request.settings.builder)?,
        Runtime::TensorrtRtx => rtx::probe()?,
    };
    build::check_builder(&request, &toolchain, &graphs)?;
    build::check_targets(&request, &graphs, &toolchain)?;
    let manifest_path = request.out.join("manifest.json");
    let built = stage::build_engines(&request, &toolchain, graphs, &|warning| out.warn(warning))?;
    let value = serde_json::json!({ "engines": request.out, "toolchain": toolchain, "built": built });
    out.result(&value, || {
        let lines: Vec<String> = built
            .iter()
            .map(|b| {
                let what = if b.reused {
                    "reused (key matches)".to_string()
                } else {
                    format!("built in {:.1} s", b.build_seconds)
                };
                format!(
                    "{:<12} {:<22} {:>10.1} MB  key {}  {}",
                    b.network.name(),
                    what,
                    b.plan_bytes as f64 / 1e6,
                    &b.key[..16],
                    b.plan.display()
                )
            })
            .collect();
        let host = match &toolchain.gpu {
            Some(gpu) => format!(
                "TensorRT {} on {} (sm {})",
                toolchain.tensorrt, gpu.name, gpu.compute_capability
            ),
            None => format!(
                "TensorRT-RTX {} ahead of time, for compute capability {}",
                toolchain.tensorrt,
                list(&build::targets(&request.settings, &toolchain))
            ),
        };
        format!("{}\n{host}; manifest {}", lines.join("\n"), manifest_path.display())
    });
    Ok(())
}

/// `--dry-run`: the trtexec line per network, for TensorRT `tensorrt` (else the one found here).
fn dry_run(request: &BuildRequest, graphs: &[build::Graph], tensorrt: Option<Version>, out: &Output) -> Result<()> {
    let Some(tensorrt) = tensorrt.or_else(toolchain::local_tensorrt) else {
        bail!("--dry-run: no trtexec or libnvinfer here to take the TensorRT version from; give --tensorrt-version (10.13, 11.1, ...)");
    };
    let commands = trtexec::dry_run(request, graphs, tensorrt)?;
    let value = serde_json::json!({ "tensorrt": tensorrt.to_string(), "engines": request.out, "commands": commands });
    out.result(&value, || {
        let lines: Vec<String> = commands
            .iter()
            .map(|c| format!("# {}\n{}", c.network, c.shell_line()))
            .collect();
        format!(
            "# trtexec lines for TensorRT {tensorrt} (nothing was built)\n{}",
            lines.join("\n")
        )
    });
    Ok(())
}
