//! Broken CLIP, T5 and VAE checkpoints get one clear error naming the file and the tensor (or
//! the missing setting and how to give it), never a graph. Each case edits a parity fixture.

mod common;
use common::*;
use fluxbuild_exporters::models::GraphOptions;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

enum Edit {
    Keep,
    Drop,
    Reshape(Vec<usize>),
}

/// Copies the safetensors file `src` to `dst`, changing tensors as `edit` says (data unchanged).
fn rewrite(src: &Path, dst: &Path, edit: impl Fn(&str, &[usize]) -> Edit) {
    use safetensors::tensor::TensorView;
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views = Vec::new();
    for (name, t) in st.tensors() {
        let shape = match edit(&name, t.shape()) {
            Edit::Keep => t.shape().to_vec(),
            Edit::Drop => continue,
            Edit::Reshape(shape) => shape,
        };
        views.push((name, TensorView::new(t.dtype(), shape, t.data()).unwrap()));
    }
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

/// The export error for `path` (which must fail).
fn export_error(name: &str, path: &Path, config: Option<&Value>) -> String {
    let out = tempfile::tempdir().unwrap();
    match export_submodel(name, path, config, &GraphOptions::default(), &out.path().join(name)) {
        Ok(_) => panic!("{}: export succeeded", path.display()),
        Err(e) => {
            assert!(
                !out.path().join(name).join("model.onnx").exists(),
                "a model was written"
            );
            format!("{e:#}")
        }
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "error does not mention `{part}`:\n{message}");
    }
}

/// `file` of a fixture folder copied into a fresh folder (without the fixture's config.json).
fn alone(dir: &tempfile::TempDir, fixture: &str, file: &str) -> PathBuf {
    let dst = dir.path().join(file);
    std::fs::copy(fixtures().join(fixture).join(file), &dst).unwrap();
    dst
}

fn vae_config() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("vae/diffusers/config.json")).unwrap()).unwrap()
}

/// The diffusers VAE folder with its weights edited.
fn edited_vae_folder(dir: &tempfile::TempDir, edit: impl Fn(&str, &[usize]) -> Edit) -> PathBuf {
    let src = fixtures().join("vae/diffusers");
    let dst = dir.path().join("vae");
    std::fs::create_dir(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    rewrite(
        &src.join("diffusion_pytorch_model.safetensors"),
        &dst.join("diffusion_pytorch_model.safetensors"),
        edit,
    );
    dst
}

#[test]
fn vae_decoder_with_an_up_block_missing() {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_vae_folder(&dir, |n, _| {
        if n.starts_with("decoder.up_blocks.1.") {
            Edit::Drop
        } else {
            Edit::Keep
        }
    });
    let message = export_error("vae_decoder", &folder, None);
    assert_mentions(
        &message,
        &[
            "diffusion_pytorch_model.safetensors",
            "decoder.up_blocks.1 is missing",
            "found 0, 2, 3",
        ],
    );

    // The last block gone leaves no gap: the channel count at conv_out gives it away.
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_vae_folder(&dir, |n, _| {
        if n.starts_with("decoder.up_blocks.3.") {
            Edit::Drop
        } else {
            Edit::Keep
        }
    });
    let message = export_error("vae_decoder", &folder, None);
    assert_mentions(
        &message,
        &[
            "decoder.conv_out.weight takes 8 channels",
            "decoder.up_blocks.2",
            "is an up block missing?",
        ],
    );
}

#[test]
fn vae_decoder_with_a_resnet_tensor_missing_or_misshaped_lists_each_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_vae_folder(&dir, |n, shape| match n {
        "decoder.up_blocks.2.resnets.1.conv1.weight" => Edit::Drop,
        "decoder.mid_block.attentions.0.to_k.weight" => Edit::Reshape(vec![shape[0], shape[1], 1, 1]),
        _ => Edit::Keep,
    });
    let message = export_error("vae_decoder", &folder, None);
    assert_mentions(
        &message,
        &[
            "diffusion_pytorch_model.safetensors: 2 problem(s)",
            "missing tensor decoder.up_blocks.2.resnets.1.conv1.weight (expected shape [16, 16, 3, 3])",
            "tensor decoder.mid_block.attentions.0.to_k.weight has shape [32, 32, 1, 1], expected [32, 32]",
        ],
    );
}

#[test]
fn ldm_vae_without_a_config_and_with_unknown_widths_asks_for_the_group_count() {
    let dir = tempfile::tempdir().unwrap();
    let file = alone(&dir, "vae", "ae.safetensors");
    let message = export_error("vae_decoder", &file, None);
    assert_mentions(
        &message,
        &["ae.safetensors", "GroupNorm group count", "norm_num_groups", "--config"],
    );
    // A config that contradicts the weights is refused too.
    let mut config = vae_config();
    config["block_out_channels"] = json!([128, 256, 512, 512]);
    let message = export_error("vae_decoder", &file, Some(&config));
    assert_mentions(
        &message,
        &[
            "--config says block_out_channels = [128, 256, 512, 512]",
            "[8, 16, 32, 32]",
        ],
    );
}

#[test]
fn t5_with_neither_embedding_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t5.safetensors");
    rewrite(&fixtures().join("t5/shared.safetensors"), &file, |n, _| {
        if n == "shared.weight" {
            Edit::Drop
        } else {
            Edit::Keep
        }
    });
    std::fs::copy(fixtures().join("t5/config.json"), dir.path().join("config.json")).unwrap();
    let message = export_error("t5", &file, None);
    assert_mentions(
        &message,
        &[
            "t5.safetensors",
            "neither shared.weight nor encoder.embed_tokens.weight",
        ],
    );
}

#[test]
fn t5_with_two_different_embeddings_or_a_lying_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t5.safetensors");
    rewrite(&fixtures().join("t5/both.safetensors"), &file, |n, shape| match n {
        "encoder.embed_tokens.weight" => Edit::Reshape(vec![shape[0] / 2, shape[1] * 2]),
        _ => Edit::Keep,
    });
    let message = export_error("t5", &file, None);
    assert_mentions(
        &message,
        &[
            "t5.safetensors",
            "shared.weight [1000, 32]",
            "encoder.embed_tokens.weight [500, 64]",
        ],
    );

    let file = alone(&dir, "t5", "shared.safetensors");
    let message = export_error("t5", &file, Some(&json!({"t5": {"num_heads": 8}})));
    assert_mentions(
        &message,
        &[
            "--config says num_heads = 8",
            "the weights say 4",
            "relative_attention_bias.weight",
        ],
    );
}

#[test]
fn t5_with_an_encoder_block_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t5.safetensors");
    rewrite(&fixtures().join("t5/shared.safetensors"), &file, |n, _| {
        if n.starts_with("encoder.block.0.") && !n.contains("relative_attention_bias") {
            Edit::Drop
        } else {
            Edit::Keep
        }
    });
    let message = export_error("t5", &file, None);
    assert_mentions(
        &message,
        &[
            "t5.safetensors",
            "encoder.block.0.layer.0.SelfAttention.q.weight is missing",
        ],
    );
}

#[test]
fn clip_with_a_misshaped_layer_or_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("clip/config.json"), dir.path().join("config.json")).unwrap();
    let file = dir.path().join("clip.safetensors");
    rewrite(&fixtures().join("clip/model.safetensors"), &file, |n, shape| match n {
        "text_model.encoder.layers.1.mlp.fc1.weight" => Edit::Reshape(vec![shape[1], shape[0]]),
        _ => Edit::Keep,
    });
    let message = export_error("clip", &file, None);
    assert_mentions(
        &message,
        &[
            "clip.safetensors",
            "1 problem(s)",
            "encoder.layers.1.mlp.fc1.weight has shape [32, 64], expected [64, 32]",
        ],
    );

    rewrite(&fixtures().join("clip/model.safetensors"), &file, |n, _| {
        if n.starts_with("text_model.encoder.layers.1.") {
            Edit::Drop
        } else {
            Edit::Keep
        }
    });
    let message = export_error("clip", &file, None);
    assert_mentions(
        &message,
        &[
            "clip.safetensors",
            "encoder layer text_model.encoder.layers.1 is missing (found 0, 2 only)",
        ],
    );
}

#[test]
fn clip_single_file_of_unknown_width_needs_the_head_count_from_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = alone(&dir, "clip", "model_noprefix.safetensors");
    let message = export_error("clip", &file, None);
    assert_mentions(
        &message,
        &[
            "model_noprefix.safetensors",
            "number of attention heads",
            "num_attention_heads",
            "--config",
        ],
    );
    let message = export_error("clip", &file, Some(&json!({"num_attention_heads": 5})));
    assert_mentions(&message, &["num_attention_heads = 5 does not divide the width 32"]);
    // With the head count given the same file exports (its parity is in encoder_parity.rs).
    let out = tempfile::tempdir().unwrap();
    let (analysis, _) = export_submodel(
        "clip",
        &file,
        Some(&json!({"clip": {"num_attention_heads": 4}})),
        &GraphOptions::default(),
        out.path(),
    )
    .unwrap();
    assert_eq!(analysis.config["origins"]["num_attention_heads"], "--config");
}
