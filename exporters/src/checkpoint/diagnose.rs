//! One-line diagnoses of files that are not what a submodel expects, given before any list of
//! tensor problems: a LoRA, another model family, the other text encoder, a git-lfs pointer, GGUF.

use super::Checkpoint;
use fluxbuild_contract::Network;
use std::path::Path;

/// What a file that cannot be opened as safetensors is, from its first bytes.
pub fn foreign_file(path: &Path, head: &[u8]) -> Option<String> {
    let name = path.display();
    if head.starts_with(b"version https://git-lfs") {
        return Some(format!(
            "{name}: a git-lfs pointer, not the weights: fetch them with `git lfs pull` (or download the file itself)"
        ));
    }
    if head.starts_with(b"GGUF") {
        return Some(format!(
            "{name}: a GGUF file (llama.cpp / ComfyUI-GGUF quantization); fluxbuild reads .safetensors: use the original safetensors weights"
        ));
    }
    None
}

/// Why `ckpt` is not `network` (any FLUX network when `None`), if it is recognisably something else.
pub fn mismatch(ckpt: &Checkpoint, network: Option<Network>) -> Option<String> {
    let any = |pattern: &str| ckpt.names().any(|n| n.contains(pattern));
    let count = |pattern: &str| ckpt.names().filter(|n| n.contains(pattern)).count();
    let what = if any("lora_up") || any("lora_down") || any(".lora_A.") || any(".lora_B.") {
        let style = if any("lora_up") { "kohya" } else { "diffusers/PEFT" };
        format!(
            "a LoRA ({style} style, {} low-rank pairs), not a full model: merge it into the base model first",
            count("lora_up").max(count(".lora_A."))
        )
    } else if any("joint_blocks.") {
        "a Stable Diffusion 3 model (joint_blocks), not FLUX.1".to_string()
    } else if any("input_blocks.") || any("conditioner.embedders.") {
        "a Stable Diffusion / SDXL model (UNet input_blocks), not FLUX.1".to_string()
    } else {
        let is_t5 = any("encoder.block.0.layer.0.SelfAttention.q.weight");
        let is_clip = any("embeddings.token_embedding.weight");
        match network {
            Some(Network::Clip) if is_t5 && !is_clip => {
                "the T5 encoder, given where CLIP-L was expected (swapped?)".to_string()
            }
            Some(Network::T5) if is_clip && !is_t5 => {
                "the CLIP-L encoder, given where T5-XXL was expected (swapped?)".to_string()
            }
            _ => return None,
        }
    };
    let file = ckpt
        .source_files()
        .first()
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    Some(format!("{file}: {what}"))
}
