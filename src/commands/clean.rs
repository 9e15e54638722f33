//! `fluxbuild clean DIR...`: removes what killed runs left behind (staging folders, previous
//! results moved aside) beside DIR and beside every output inside DIR, and puts back an output a
//! crash left moved aside. Runs of live processes are left alone.

use crate::output::Output;
use anyhow::{bail, Result};
use fluxbuild_contract::output_dir;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output folders (or folders holding outputs) to clean up after.
    #[arg(required = true)]
    folders: Vec<PathBuf>,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let mut cleaned = Vec::new();
    for folder in &args.folders {
        let absolute = std::path::absolute(folder)?;
        let mut recovered = Vec::new();
        if let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) {
            recovered = output_dir::recover(parent, &name.to_owned())?;
        }
        // A typo would otherwise read as a folder with nothing to clean.
        if recovered.is_empty() && std::fs::symlink_metadata(&absolute).is_err() {
            bail!(
                "{}: no such folder, and no staging folder of a killed run beside it",
                folder.display()
            );
        }
        cleaned.extend(recovered);
        if absolute.is_dir() {
            cleaned.extend(output_dir::clean(&absolute)?);
        }
    }
    out.result(&serde_json::json!({ "cleaned": cleaned }), || match cleaned.len() {
        0 => "nothing to clean".to_string(),
        _ => cleaned
            .iter()
            .map(|p| format!("removed or restored {}", p.display()))
            .collect::<Vec<_>>()
            .join("\n"),
    });
    Ok(())
}
