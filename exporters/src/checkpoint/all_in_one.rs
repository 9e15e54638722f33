//! ComfyUI's all-in-one checkpoints (Comfy-Org `flux1-dev-fp8.safetensors` and the like): the
//! four submodels in one file, each under its own key root. A submodel loaded from such a file
//! sees only its own part, with the root stripped, as if it were a file of its own.

use fluxbuild_contract::Network;

/// (the submodel, its key root in an all-in-one file, its name in messages).
pub const PARTS: [(Network, &str, &str); 4] = [
    (Network::Transformer, "model.diffusion_model.", "the transformer"),
    (Network::Clip, "text_encoders.clip_l.transformer.", "CLIP-L"),
    (Network::T5, "text_encoders.t5xxl.transformer.", "T5-XXL"),
    (Network::VaeDecoder, "vae.", "the VAE"),
];

/// The parts (by message name) whose roots some of `names` carry.
pub fn parts_present<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Vec<&'static str> {
    PARTS
        .iter()
        .filter(|(_, root, _)| names.clone().any(|n| n.starts_with(root)))
        .map(|(_, _, what)| *what)
        .collect()
}

/// The key root of the part of the submodel whose diffusers folder is `subfolder`.
pub fn root_of(subfolder: &str) -> Option<&'static str> {
    PARTS
        .iter()
        .find(|(n, _, _)| n.folder() == subfolder)
        .map(|(_, root, _)| *root)
}

/// Whether `name` belongs to a part other than the one under `root`.
pub fn belongs_elsewhere(name: &str, root: &str) -> bool {
    PARTS
        .iter()
        .any(|(_, other, _)| *other != root && name.starts_with(other))
}
