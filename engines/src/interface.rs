//! Checking an exported graph against the interface the profile shapes assume, before any
//! build: TensorRT would otherwise fail late (or build an engine that rejects some sizes).

use anyhow::{bail, Result};
use fluxbuild_onnx::{declared_inputs, pb, Declared, Dim};
use fluxbuild_profiles::{ModelDims, Network, Preset, PresetVariant, ProfileShapes};
use std::path::Path;

/// Fixed sizes (joint/pooled/channels) and the guidance input, read from the graphs at hand.
pub fn model_dims(transformer: Option<&pb::ModelProto>, vae: Option<&pb::ModelProto>) -> ModelDims {
    let mut dims = ModelDims::FLUX;
    let fixed = |inputs: &[Declared], name: &str, axis: usize| -> Option<i64> {
        match inputs.iter().find(|i| i.name == name)?.dims.get(axis)? {
            Dim::Fixed(n) => Some(*n),
            _ => None,
        }
    };
    if let Some(model) = transformer {
        let inputs = declared_inputs(model);
        dims.packed_channels = fixed(&inputs, "hidden_states", 2).unwrap_or(dims.packed_channels);
        dims.joint_dim = fixed(&inputs, "encoder_hidden_states", 2).unwrap_or(dims.joint_dim);
        dims.pooled_dim = fixed(&inputs, "pooled_projections", 1).unwrap_or(dims.pooled_dim);
        dims.guidance = Some(inputs.iter().any(|i| i.name == "guidance"));
    }
    if let Some(model) = vae {
        dims.latent_channels = fixed(&declared_inputs(model), "latent", 1).unwrap_or(dims.latent_channels);
    }
    dims
}

/// The preset's variant must match the transformer graph (dev has `guidance`).
pub fn check_variant(preset: &Preset, dims: &ModelDims) -> Result<()> {
    match (preset.variant, dims.guidance) {
        (PresetVariant::Dev, Some(false)) => bail!(
            "profile preset {:?} targets FLUX.1-dev, but the transformer graph has no `guidance` input (schnell)",
            preset.name
        ),
        (PresetVariant::Schnell, Some(true)) => bail!(
            "profile preset {:?} targets FLUX.1-schnell, but the transformer graph has a `guidance` input (dev)",
            preset.name
        ),
        _ => Ok(()),
    }
}

/// Every input the shapes name exists with that rank, no other input exists, and the graph's
/// fixed dimensions equal what every profile asks for.
pub fn check(network: Network, path: &Path, model: &pb::ModelProto, profiles: &[ProfileShapes]) -> Result<()> {
    let inputs = declared_inputs(model);
    let Some(first) = profiles.first() else {
        bail!("{network}: the preset has no optimization profile")
    };
    let expected: Vec<String> = first
        .inputs
        .iter()
        .map(|i| format!("{} (rank {})", i.name, i.min.len()))
        .collect();
    let at = path.display();
    for input in &inputs {
        if !first.inputs.iter().any(|s| s.name == input.name) {
            bail!(
                "{at}: input `{}` is not in the {network} interface [{}]",
                input.name,
                expected.join(", ")
            );
        }
    }
    for (p, profile) in profiles.iter().enumerate() {
        for shape in &profile.inputs {
            let Some(input) = inputs.iter().find(|i| i.name == shape.name) else {
                bail!(
                    "{at}: has no input `{}` (the {network} interface is [{}])",
                    shape.name,
                    expected.join(", ")
                );
            };
            if input.dims.len() != shape.min.len() {
                bail!(
                    "{at}: input `{}` has rank {}, the {network} interface says {}",
                    shape.name,
                    input.dims.len(),
                    shape.min.len()
                );
            }
            for (axis, dim) in input.dims.iter().enumerate() {
                let Dim::Fixed(n) = dim else { continue };
                let wanted = [shape.min[axis], shape.opt[axis], shape.max[axis]];
                if wanted.iter().any(|w| w != n) {
                    bail!(
                        "{at}: input `{}` dimension {axis} is fixed to {n} in the graph, but optimization profile {p} needs {}..{} (opt {}); \
                         export it with that dimension dynamic or choose a preset that keeps it at {n}",
                        shape.name, wanted[0], wanted[2], wanted[1]
                    );
                }
            }
        }
    }
    Ok(())
}
