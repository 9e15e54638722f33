//! `fluxbuild`: FLUX.1 checkpoints -> ONNX -> TensorRT -> Triton.

use clap::{Parser, Subcommand};
use fluxbuild::commands;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fluxbuild",
    version,
    about = "FLUX.1 safetensors -> ONNX graphs -> TensorRT engines -> Triton model repository"
)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a checkpoint (file, component folder or pipeline folder) and report its problems.
    Inspect(commands::inspect::Args),
    /// Export submodels to ONNX graphs (checkpoint -> graphs).
    Export(commands::export::Args),
    /// Generate images from a text prompt with the exported graphs (ONNX Runtime) or a Triton server.
    Generate(commands::generate_shared::Args),
    /// Write a Triton model repository from exported graphs or engines.
    Package(commands::package::Args),
    /// Write perf_analyzer's input-data file for a repository's `flux` model.
    PerfData(commands::perf_data::Args),
    /// Start a Triton server on a model repository and wait until it is ready.
    Serve(commands::serve::Args),
    /// Stop what `serve --pid-file` started (detached or not) and what a killed server left behind.
    Stop(commands::stop::Args),
    /// Build TensorRT engines from exported graphs with an optimization profile.
    Build(commands::build::Args),
    /// Show or validate optimization-profile presets.
    Profile(commands::profile::Args),
    /// Check exported graphs against TensorRT's ONNX parser support.
    Lint(commands::lint::Args),
    /// Record activation ranges over calibration prompts for FP8 export.
    Calibrate(commands::calibrate::Args),
    /// Measure each precision's error against fp32 and write a report.
    Accuracy(commands::accuracy::Args),
    /// Remove what killed runs left beside output folders (staging folders, old results).
    Clean(commands::clean::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The commands that register cleanups (staging folders; serve's server and pid file); the
    // others keep the signals' default actions.
    if matches!(
        cli.command,
        Command::Export(_) | Command::Build(_) | Command::Package(_) | Command::Serve(_)
    ) {
        fluxbuild_contract::interrupted::run_cleanups_on_interrupt();
    }
    let out = fluxbuild::output::Output { json: cli.json };
    let result = match cli.command {
        Command::Inspect(a) => commands::inspect::run(a, &out),
        Command::Export(a) => commands::export::run(a, &out),
        Command::Generate(a) if a.server.is_some() => commands::generate_remote::run(a, &out),
        Command::Generate(a) => commands::generate::run(a, &out),
        Command::Package(a) => commands::package::run(a, &out),
        Command::PerfData(a) => commands::perf_data::run(a, &out),
        Command::Serve(a) => commands::serve::run(a, &out),
        Command::Stop(a) => commands::stop::run(a, &out),
        Command::Build(a) => commands::build::run(a, &out),
        Command::Profile(a) => commands::profile::run(a, &out),
        Command::Lint(a) => commands::lint::run(a, &out),
        Command::Calibrate(a) => commands::calibrate::run(a, &out),
        Command::Accuracy(a) => commands::accuracy::run(a, &out),
        Command::Clean(a) => commands::clean::run(a, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses: its text on stderr as usual and, with `--json` anywhere on the
/// line, the one JSON document on stdout too (clap's diagnosis on one line), exit 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let wants_json = std::env::args_os().any(|a| a == "--json");
    let for_people = matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if wants_json && !for_people {
        // clap's first paragraph, on one line: "invalid value 'tpu' for '--target <TARGET>' [possible values: cpu, gpu]".
        // A command given without its subcommand renders as help: said as what it is.
        let text = error.render().to_string();
        let first: Vec<&str> = text
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        let joined = match error.kind() {
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let usage = text.lines().find(|l| l.starts_with("Usage: ")).unwrap_or_default();
                format!("a subcommand is missing ({usage})")
            }
            _ => first.join(" "),
        };
        let message = joined.strip_prefix("error: ").unwrap_or(&joined);
        println!(
            "{}",
            serde_json::json!({ "error": message, "causes": [message], "usage": true })
        );
    }
    let _ = error.print();
    ExitCode::from(if error.use_stderr() { 2 } else { 0 })
}
