//! The fixture pipelines laid out as users have them: the official hub repository (CLIP's
//! tokenizer as vocab.json + merges.txt) in a symlinked Hugging Face cache, and ComfyUI's
//! `models/` folder of separate files (pipeline_files, triton_layouts).
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};

/// `vocab.json` + `merges.txt` as the official repositories keep CLIP's tokenizer, written from
/// the fixture's tokenizer.json.
pub fn write_vocab_and_merges(tokenizer_json: &Path, dir: &Path) {
    let json: Value = serde_json::from_slice(&std::fs::read(tokenizer_json).unwrap()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.json"), json["model"]["vocab"].to_string()).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for pair in json["model"]["merges"].as_array().unwrap() {
        merges += &format!("{} {}\n", pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
    }
    std::fs::write(dir.join("merges.txt"), merges).unwrap();
}

/// The fixture pipeline as the official hub repository lays it out (CLIP's tokenizer as
/// vocab.json + merges.txt, no tokenizer.json), inside a Hugging Face cache whose snapshot
/// files are relative symlinks into `blobs/`. Returns (repo root, snapshot).
pub fn hub_cache(variant: &str, root: &Path) -> (PathBuf, PathBuf) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipeline")
        .join(variant);
    let staged = root.join("staged");
    copy_tree(&source, &staged);
    std::fs::remove_file(staged.join("tokenizer/tokenizer.json")).unwrap();
    write_vocab_and_merges(&source.join("tokenizer/tokenizer.json"), &staged.join("tokenizer"));
    let repo = root.join(format!("hub/models--black-forest-labs--FLUX.1-{variant}"));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, file) in list(&staged).iter().enumerate() {
        let rel = file.strip_prefix(&staged).unwrap();
        let blob = repo.join("blobs").join(format!("blob{i:04}"));
        std::fs::rename(file, &blob).unwrap();
        let link = snapshot.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(rel.components().count() + 1);
        std::os::unix::fs::symlink(format!("{up}blobs/blob{i:04}"), &link).unwrap();
        assert!(link.is_file(), "{}", link.display());
    }
    (repo, snapshot)
}

pub fn list(dir: &Path) -> Vec<PathBuf> {
    fluxbuild::export::list_files(dir).unwrap()
}

pub fn copy_tree(from: &Path, to: &Path) {
    for file in list(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// ComfyUI's `models/` folder with the fixture pipeline's weights as ComfyUI users have them:
/// the transformer in black-forest-labs layout (`flux1-dev.safetensors`), the VAE in LDM layout
/// (`ae.safetensors`), the text encoders as transformers saves them; no tokenizer, no scheduler.
/// Returns the ComfyUI root.
pub fn comfyui_folder(pipeline: &Path, root: &Path) -> PathBuf {
    let models_dir = root.join("models");
    for folder in ["diffusion_models", "text_encoders", "vae"] {
        std::fs::create_dir_all(models_dir.join(folder)).unwrap();
    }
    let transformer = tensors(&pipeline.join("transformer/diffusion_pytorch_model.safetensors"));
    write(
        &models_dir.join("diffusion_models/flux1-dev.safetensors"),
        &bfl_transformer(&transformer),
    );
    let vae = tensors(&pipeline.join("vae/diffusion_pytorch_model.safetensors"));
    write(&models_dir.join("vae/ae.safetensors"), &ldm_vae(&vae));
    for (from, to) in [
        ("text_encoder/model.safetensors", "text_encoders/clip_l.safetensors"),
        (
            "text_encoder_2/model.safetensors",
            "text_encoders/t5xxl_fp16.safetensors",
        ),
    ] {
        std::fs::copy(pipeline.join(from), models_dir.join(to)).unwrap();
    }
    root.to_path_buf()
}

/// The fixture pipeline as one ComfyUI all-in-one file: BFL transformer under
/// `model.diffusion_model.`, CLIP under `text_encoders.clip_l.transformer.text_model.`, T5 under
/// `text_encoders.t5xxl.transformer.`, the LDM VAE under `vae.`.
pub fn all_in_one(pipeline: &Path, path: &Path) {
    let mut all = Vec::new();
    let transformer = tensors(&pipeline.join("transformer/diffusion_pytorch_model.safetensors"));
    let vae = tensors(&pipeline.join("vae/diffusion_pytorch_model.safetensors"));
    let clip = tensors(&pipeline.join("text_encoder/model.safetensors"));
    let t5 = tensors(&pipeline.join("text_encoder_2/model.safetensors"));
    let parts = [
        ("model.diffusion_model.", bfl_transformer(&transformer)),
        ("vae.", ldm_vae(&vae)),
        ("text_encoders.t5xxl.transformer.", t5),
    ];
    for (root, tensors) in parts {
        all.extend(tensors.into_iter().map(|(n, s, v)| (format!("{root}{n}"), s, v)));
    }
    for (name, shape, values) in clip {
        let name = if name.starts_with("text_model.") {
            name
        } else {
            format!("text_model.{name}")
        };
        all.push((format!("text_encoders.clip_l.transformer.{name}"), shape, values));
    }
    write(path, &all);
}

type Tensor = (String, Vec<usize>, Vec<f32>);

fn tensors(file: &Path) -> Vec<Tensor> {
    let ckpt = fluxbuild_exporters::checkpoint::Checkpoint::load(file, "", &[]).unwrap();
    ckpt.tensors()
        .map(|t| (t.name.to_string(), t.shape().to_vec(), t.to_f32()))
        .collect()
}

fn write(path: &Path, tensors: &[Tensor]) {
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    super::common::write_f32_safetensors(path, &refs);
}

/// Stacks tensors along dim 0 (BFL's fused qkv and linear1).
fn stack(name: String, parts: &[&Tensor]) -> Tensor {
    let mut shape = parts[0].1.clone();
    shape[0] = parts.iter().map(|p| p.1[0]).sum();
    (name, shape, parts.iter().flat_map(|p| p.2.iter().copied()).collect())
}

/// diffusers' FluxTransformer2DModel names -> black-forest-labs' (FLUX_FACTS.md section 3, reversed).
fn bfl_transformer(diffusers: &[Tensor]) -> Vec<Tensor> {
    let get = |name: &str| {
        diffusers
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let renames = [
        ("x_embedder.", "img_in."),
        ("context_embedder.", "txt_in."),
        ("time_text_embed.timestep_embedder.linear_1.", "time_in.in_layer."),
        ("time_text_embed.timestep_embedder.linear_2.", "time_in.out_layer."),
        ("time_text_embed.text_embedder.linear_1.", "vector_in.in_layer."),
        ("time_text_embed.text_embedder.linear_2.", "vector_in.out_layer."),
        ("time_text_embed.guidance_embedder.linear_1.", "guidance_in.in_layer."),
        ("time_text_embed.guidance_embedder.linear_2.", "guidance_in.out_layer."),
        ("proj_out.", "final_layer.linear."),
    ];
    let double = [
        ("norm1.linear.", "img_mod.lin."),
        ("norm1_context.linear.", "txt_mod.lin."),
        ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
        ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
        ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
        ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
        ("attn.to_out.0.", "img_attn.proj."),
        ("attn.to_add_out.", "txt_attn.proj."),
        ("ff.net.0.proj.", "img_mlp.0."),
        ("ff.net.2.", "img_mlp.2."),
        ("ff_context.net.0.proj.", "txt_mlp.0."),
        ("ff_context.net.2.", "txt_mlp.2."),
    ];
    let single = [
        ("attn.norm_q.weight", "norm.query_norm.scale"),
        ("attn.norm_k.weight", "norm.key_norm.scale"),
        ("norm.linear.", "modulation.lin."),
        ("proj_out.", "linear2."),
    ];
    let mut out = Vec::new();
    for (name, shape, values) in diffusers {
        let renamed = |to: String| (to, shape.clone(), values.clone());
        if let Some((from, to)) = renames.iter().find(|(from, _)| name.starts_with(from)) {
            out.push(renamed(name.replacen(from, to, 1)));
        } else if let Some(rest) = name.strip_prefix("norm_out.linear.") {
            // diffusers [scale; shift] -> BFL [shift; scale]
            let half = values.len() / 2;
            let swapped = [&values[half..], &values[..half]].concat();
            out.push((format!("final_layer.adaLN_modulation.1.{rest}"), shape.clone(), swapped));
        } else if let Some(rest) = name.strip_prefix("transformer_blocks.") {
            let (n, part) = rest.split_once('.').unwrap();
            if let Some((from, to)) = double.iter().find(|(from, _)| part.starts_with(from)) {
                out.push(renamed(format!("double_blocks.{n}.{}", part.replacen(from, to, 1))));
            }
        } else if let Some(rest) = name.strip_prefix("single_transformer_blocks.") {
            let (n, part) = rest.split_once('.').unwrap();
            if let Some((from, to)) = single.iter().find(|(from, _)| part.starts_with(from)) {
                out.push(renamed(format!("single_blocks.{n}.{}", part.replacen(from, to, 1))));
            }
        }
    }
    // The fused tensors.
    let blocks = |prefix: &str| {
        let mut n: Vec<usize> = diffusers
            .iter()
            .filter_map(|t| t.0.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .collect();
        n.sort();
        n.dedup();
        n
    };
    for n in blocks("transformer_blocks.") {
        for kind in ["weight", "bias"] {
            let p = |x: &str| get(&format!("transformer_blocks.{n}.attn.{x}.{kind}"));
            out.push(stack(
                format!("double_blocks.{n}.img_attn.qkv.{kind}"),
                &[p("to_q"), p("to_k"), p("to_v")],
            ));
            let parts = [p("add_q_proj"), p("add_k_proj"), p("add_v_proj")];
            out.push(stack(format!("double_blocks.{n}.txt_attn.qkv.{kind}"), &parts));
        }
    }
    for n in blocks("single_transformer_blocks.") {
        for kind in ["weight", "bias"] {
            let p = |x: &str| get(&format!("single_transformer_blocks.{n}.{x}.{kind}"));
            let parts = [p("attn.to_q"), p("attn.to_k"), p("attn.to_v"), p("proj_mlp")];
            out.push(stack(format!("single_blocks.{n}.linear1.{kind}"), &parts));
        }
    }
    out
}

/// diffusers' AutoencoderKL names -> LDM's (`ae.safetensors`): up blocks numbered from the
/// bottom, attention projections as 1x1 convolutions.
fn ldm_vae(diffusers: &[Tensor]) -> Vec<Tensor> {
    let ups = diffusers
        .iter()
        .filter_map(|t| {
            t.0.strip_prefix("decoder.up_blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap()
        + 1;
    diffusers
        .iter()
        .map(|(name, shape, values)| {
            let mut n = name.clone();
            if let Some(rest) = n.clone().strip_prefix("decoder.up_blocks.") {
                let (i, tail) = rest.split_once('.').unwrap();
                n = format!("decoder.up.{}.{tail}", ups - 1 - i.parse::<usize>().unwrap());
            }
            for (from, to) in [
                ("down_blocks.", "down."),
                (".resnets.", ".block."),
                ("downsamplers.0.", "downsample."),
                ("upsamplers.0.", "upsample."),
                ("conv_shortcut", "nin_shortcut"),
                ("mid_block.block.0.", "mid.block_1."),
                ("mid_block.block.1.", "mid.block_2."),
                ("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."),
                ("mid_block.attentions.0.to_q.", "mid.attn_1.q."),
                ("mid_block.attentions.0.to_k.", "mid.attn_1.k."),
                ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
                ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out."),
                ("conv_norm_out.", "norm_out."),
            ] {
                n = n.replace(from, to);
            }
            let shape = if n.contains("attn_1.") && shape.len() == 2 {
                vec![shape[0], shape[1], 1, 1]
            } else {
                shape.clone()
            };
            (n, shape, values.clone())
        })
        .collect()
}

/// `--config NAME=FILE` for the tiny models, whose head counts no shape gives.
pub fn comfyui_configs(pipeline: &Path) -> Vec<String> {
    [
        ("transformer", "transformer"),
        ("clip", "text_encoder"),
        ("t5", "text_encoder_2"),
        ("vae_decoder", "vae"),
    ]
    .iter()
    .flat_map(|(name, sub)| {
        [
            "--config".to_string(),
            format!("{name}={}", pipeline.join(sub).join("config.json").display()),
        ]
    })
    .collect()
}
