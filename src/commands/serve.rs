//! `fluxbuild serve`: start a Triton server on a model repository (127.0.0.1), wait until the
//! `flux` model is ready, then keep serving until the server exits or this process is stopped.

use crate::output::Output;
use crate::serve::{Installation, Server, ServerOptions};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The model repository (`fluxbuild package --out`).
    #[arg(long)]
    repo: PathBuf,
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
    #[arg(long, default_value_t = 8002)]
    metrics_port: u16,
    /// The Triton venv (default: $FLUXBUILD_TRITON_VENV or .cache/triton-venv; `make triton-venv`).
    #[arg(long)]
    venv: Option<PathBuf>,
    /// Let models be unloaded and loaded at run time (`/v2/repository/models/NAME/{load,unload}`).
    #[arg(long)]
    explicit_model_control: bool,
    /// Seconds to wait for the server to be ready.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let install = Installation::find(args.venv.as_deref())?;
    let options = ServerOptions {
        repository: args.repo.clone(),
        http_port: args.http_port,
        grpc_port: args.grpc_port,
        metrics_port: args.metrics_port,
        explicit_model_control: args.explicit_model_control,
        load_models: vec!["*".into()],
        ready_model: Some("flux".into()),
        ready_timeout: Duration::from_secs(args.timeout),
        extra_args: vec![],
    };
    let mut server = Server::start(&install, &options).with_context(|| format!("serving {}", args.repo.display()))?;
    server.keep_log();
    let report = serde_json::json!({
        "url": server.url(), "metrics": format!("http://127.0.0.1:{}/metrics", server.metrics_port),
        "log": server.log, "pid": std::process::id(),
    });
    out.result(&report, || {
        format!(
            "Triton is ready at {} (metrics on :{}, log {}); stop it with Ctrl-C or `kill {}`",
            server.url(),
            server.metrics_port,
            server.log.display(),
            std::process::id()
        )
    });
    let status = server.wait()?;
    anyhow::ensure!(status.success(), "tritonserver exited with {status}; see {}", server.log.display());
    Ok(())
}
