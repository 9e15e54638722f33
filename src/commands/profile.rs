//! `fluxbuild profile list | show NAME [--models DIR]`: the optimization-profile presets and
//! the exact min/opt/max shape of every input they give each network.

use crate::output::Output;
use anyhow::{bail, Result};
use fluxbuild_engines::interface;
use fluxbuild_onnx::read_model;
use fluxbuild_profiles::{InputShape, ModelDims, Network, OptProfile, Preset, ProfileShapes};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List the built-in presets.
    List,
    /// Print every network's input shapes (min/opt/max) under a preset.
    Show {
        /// A built-in preset name or a path to a preset .toml file.
        name: String,
        /// Exported graphs (`fluxbuild export --out`): take fixed sizes and the transformer's
        /// `guidance` input from them, and check them against the shapes.
        #[arg(long)]
        models: Option<PathBuf>,
    },
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    match args.action {
        Action::List => list(out),
        Action::Show { name, models } => show(&name, models, out),
    }
}

fn list(out: &Output) -> Result<()> {
    let presets = Preset::builtins()?;
    #[derive(Serialize)]
    struct Entry<'a> {
        name: &'a str,
        description: &'a str,
        variant: fluxbuild_profiles::PresetVariant,
        profiles: BTreeMap<Network, usize>,
    }
    let entries: Vec<Entry> = presets
        .iter()
        .map(|p| Entry {
            name: &p.name,
            description: &p.description,
            variant: p.variant,
            profiles: p.networks.iter().map(|(n, v)| (*n, v.len())).collect(),
        })
        .collect();
    out.result(&entries, || {
        entries
            .iter()
            .map(|e| format!("{:<18} {}", e.name, e.description))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

#[derive(Serialize)]
struct NetworkShapes<'a> {
    profile: &'a OptProfile,
    inputs: &'a [InputShape],
}

fn show(name: &str, models: Option<PathBuf>, out: &Output) -> Result<()> {
    let preset = Preset::load(name)?;
    let dims = match &models {
        Some(dir) => graph_dims(&preset, dir)?,
        None => ModelDims::FLUX,
    };
    let shapes: BTreeMap<Network, Vec<ProfileShapes>> =
        Network::ALL.iter().map(|n| (*n, preset.shapes(*n, &dims))).collect();
    let networks: BTreeMap<Network, Vec<NetworkShapes>> = shapes
        .iter()
        .map(|(n, profiles)| {
            (
                *n,
                preset
                    .profiles(*n)
                    .iter()
                    .zip(profiles)
                    .map(|(profile, s)| NetworkShapes {
                        profile,
                        inputs: &s.inputs,
                    })
                    .collect(),
            )
        })
        .collect();
    let value = serde_json::json!({
        "name": preset.name, "description": preset.description, "variant": preset.variant, "source": preset.source,
        "model_dims": dims, "networks": networks,
    });
    out.result(&value, || text(&preset, &networks));
    Ok(())
}

/// Model sizes from the graphs in `dir`, each present graph checked against the shapes.
fn graph_dims(preset: &Preset, dir: &std::path::Path) -> Result<ModelDims> {
    let path = |n: Network| dir.join(n.name()).join("model.onnx");
    // A path with no graph would read as FLUX.1's own sizes, unchecked.
    if !Network::ALL.iter().any(|n| path(*n).is_file()) {
        let expected: Vec<String> = Network::ALL
            .iter()
            .map(|n| format!("{}/model.onnx", n.name()))
            .collect();
        bail!(
            "--models {}: no exported graph ({}) there; give the folder `fluxbuild export --out` wrote",
            dir.display(),
            expected.join(", ")
        );
    }
    let read = |n: Network| path(n).is_file().then(|| read_model(&path(n))).transpose();
    let (transformer, vae) = (read(Network::Transformer)?, read(Network::VaeDecoder)?);
    let dims = interface::model_dims(transformer.as_ref(), vae.as_ref());
    interface::check_variant(preset, &dims)?;
    for network in Network::ALL.into_iter().filter(|n| path(*n).is_file()) {
        interface::check(
            network,
            &path(network),
            &read_model(&path(network))?,
            &preset.shapes(network, &dims),
        )?;
    }
    Ok(dims)
}

fn text(preset: &Preset, networks: &BTreeMap<Network, Vec<NetworkShapes>>) -> String {
    let dims = |d: &[i64]| format!("[{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
    let range = |name: &str, r: Option<fluxbuild_profiles::Range>| {
        r.map(|r| {
            if r.is_static() {
                format!(" {name} {}", r.min)
            } else {
                format!(" {name} {}..{} (opt {})", r.min, r.max, r.opt)
            }
        })
        .unwrap_or_default()
    };
    let variant = serde_json::to_value(preset.variant)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let mut s = format!(
        "{} ({}): {}\nvariant: {variant}\n",
        preset.name, preset.source, preset.description
    );
    for (network, profiles) in networks {
        s.push_str(&format!("{network}\n"));
        for (i, p) in profiles.iter().enumerate() {
            let o = p.profile;
            s.push_str(&format!(
                "  profile {i}:{}{}{}{}\n",
                range("batch", Some(o.batch)),
                range("height", o.height),
                range("width", o.width),
                range("text_len", o.text_len)
            ));
            for input in p.inputs {
                let name = if input.dev_only {
                    format!("{} (dev only)", input.name)
                } else {
                    input.name.clone()
                };
                s.push_str(&format!(
                    "    {name:<24} min {:<18} opt {:<18} max {}\n",
                    dims(&input.min),
                    dims(&input.opt),
                    dims(&input.max)
                ));
            }
        }
    }
    s.trim_end().to_string()
}
