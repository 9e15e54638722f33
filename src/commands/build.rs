//! `fluxbuild build` (not yet implemented).

use crate::output::Output;
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _out: &Output) -> Result<()> {
    bail!("`fluxbuild build` is not implemented yet")
}
