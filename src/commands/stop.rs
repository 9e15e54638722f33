//! `fluxbuild stop`: stop what `fluxbuild serve --pid-file FILE` started, detached or not, and
//! what a killed server left behind (its Python-backend stubs, their shared memory).

use crate::output::Output;
use crate::pid_file::{stop_by_pid_file, Found};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The pid file `fluxbuild serve --pid-file` wrote.
    #[arg(long, value_name = "FILE")]
    pid_file: PathBuf,
    /// Seconds a detached server gets to unload its models before it is killed (a foreground
    /// `serve` gives its server 10 s itself).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let stopped = stop_by_pid_file(&args.pid_file, Duration::from_secs(args.timeout))?;
    out.result(&stopped, || {
        let what = match stopped.was {
            Found::Tritonserver if stopped.forced => format!(
                "killed tritonserver {} (it had not stopped {} s after SIGTERM)",
                stopped.pid, args.timeout
            ),
            Found::Tritonserver => format!("stopped tritonserver {}", stopped.pid),
            Found::FluxbuildServe => format!("stopped `fluxbuild serve` {} and its server", stopped.pid),
            Found::NotRunning => format!("process {} had already ended", stopped.pid),
        };
        let stubs = match stopped.stubs_killed {
            0 => String::new(),
            n => format!("; killed {n} Python-backend stub(s) it left running"),
        };
        format!("{what}{stubs}; removed {}", args.pid_file.display())
    });
    Ok(())
}
