//! Tokenizers and scheduler config: export writes them from the checkpoint (tokenizer.json,
//! vocab.json + merges.txt as the official FLUX.1 repositories ship CLIP's, spiece.model), from
//! `--tokenizer`/`--tokenizer-2`/`--scheduler`, or from the copies bundled with fluxbuild; the
//! official hub layout, read through a symlinked Hugging Face cache, generates an image that
//! matches diffusers' FluxPipeline without any file added by hand.

mod common;
mod generate_common;
mod layouts;

use fluxbuild::generate::tokenize::PromptTokenizer;
use fluxbuild::generate::{generate, ExportedModels, InitialNoise, Request};
use generate_common::{psnr, Reference};
use ndarray::Array4;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fluxbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .expect("fluxbuild runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fixture_pipeline(variant: &str) -> PathBuf {
    Reference::load(variant).dir
}

/// The ids the real tokenizers give (ENVIRONMENT.md, checked against transformers).
const CLIP_CAT: [i64; 7] = [49406, 320, 1125, 539, 320, 2368, 49407];
const T5_CAT: [i64; 8] = [3, 9, 1202, 13, 3, 9, 1712, 1];

fn ids(tokenizer: &PromptTokenizer, prompt: &str) -> Vec<i64> {
    let tokens = tokenizer.encode(&[prompt.to_string()]).unwrap();
    tokens.ids
}

fn check_cat(models: &Path) {
    let clip = PromptTokenizer::clip(&models.join("tokenizer/tokenizer.json")).unwrap();
    let t5 = PromptTokenizer::t5(&models.join("tokenizer_2/tokenizer.json"), 8).unwrap();
    assert_eq!(&ids(&clip, "a photo of a cat")[..7], CLIP_CAT);
    assert!(ids(&clip, "a photo of a cat")[7..].iter().all(|&i| i == 49407));
    assert_eq!(ids(&t5, "a photo of a cat"), T5_CAT);
}

/// A SentencePiece model (pieces and scores only) of the fixture's T5 vocabulary.
fn write_spiece(tokenizer_json: &Path, path: &Path) {
    let json: Value = serde_json::from_slice(&std::fs::read(tokenizer_json).unwrap()).unwrap();
    let mut model = Vec::new();
    let pieces = json["model"]["vocab"].as_array().unwrap();
    for piece in pieces
        .iter()
        .filter(|p| !p[0].as_str().unwrap().starts_with("<extra_id_"))
    {
        let text = piece[0].as_str().unwrap().as_bytes();
        let mut message = vec![0x0a];
        varint(&mut message, text.len() as u64);
        message.extend_from_slice(text);
        message.push(0x15);
        message.extend_from_slice(&(piece[1].as_f64().unwrap() as f32).to_le_bytes());
        model.push(0x0a);
        varint(&mut model, message.len() as u64);
        model.extend(message);
    }
    std::fs::write(path, model).unwrap();
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn manifest(models: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(models.join("manifest.json")).unwrap()).unwrap()
}

/// Generates from `models` with the reference's noise and prompts: every image within 40 dB of
/// diffusers' FluxPipeline (uint8 and float), token ids exact.
fn matches_flux_pipeline(variant: &str, models: &Path) {
    let r = Reference::load(variant);
    let models = ExportedModels::open(models).unwrap();
    let (s, noise) = r.f32("noise");
    let request = Request {
        prompts: r.prompts(),
        height: r.usize("height"),
        width: r.usize("width"),
        steps: r.usize("num_inference_steps"),
        guidance: r.json["guidance_scale"].as_f64().unwrap_or(0.0) as f32,
        max_sequence_length: r.usize("max_sequence_length"),
        noise: InitialNoise::Tensor {
            noise: Array4::from_shape_vec((s[0], s[1], s[2], s[3]), noise).unwrap(),
            source: "reference.safetensors".into(),
        },
    };
    let g = generate(&models, &request, &mut |_| {}).unwrap();
    assert_eq!(
        g.clip_ids.iter().copied().collect::<Vec<_>>(),
        r.i64("clip_input_ids").1
    );
    assert_eq!(g.t5_ids.iter().copied().collect::<Vec<_>>(), r.i64("t5_input_ids").1);
    let (_, want) = r.u8("image_uint8");
    let per_image = want.len() / request.batch();
    for (i, image) in g.images.iter().enumerate() {
        let as_f64 = |v: &[u8]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let db = psnr(
            &as_f64(&image.pixels),
            &as_f64(&want[i * per_image..(i + 1) * per_image]),
            255.0,
        );
        eprintln!("{variant} image {i}: {db:.1} dB");
        assert!(db >= 40.0, "{variant} image {i}: {db:.1} dB");
    }
}

#[test]
fn official_hub_layout_through_a_symlinked_cache_matches_flux_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, snapshot) = layouts::hub_cache("dev", dir.path());
    let models = dir.path().join("models");

    // The cache's repository folder is not a checkpoint: the diagnosis names the snapshot.
    let out = fluxbuild(&[
        "export",
        "--checkpoint",
        repo.to_str().unwrap(),
        "--out",
        models.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("Hugging Face cache") && message.contains("snapshots/0123456789abcdef"),
        "{message}"
    );
    assert!(!models.exists(), "nothing in --out");

    let out = fluxbuild(&[
        "export",
        "--checkpoint",
        snapshot.to_str().unwrap(),
        "--out",
        models.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = &manifest(&models)["settings"]["pipeline_files"];
    assert_eq!(files["tokenizer"]["kind"], "checkpoint");
    assert_eq!(files["tokenizer"]["form"], "vocab.json + merges.txt");
    assert_eq!(files["tokenizer_2"]["form"], "tokenizer.json");
    assert_eq!(files["scheduler"]["kind"], "checkpoint");
    assert!(
        models.join("tokenizer/merges.txt").is_file(),
        "the source files travel along"
    );
    // The converted tokenizer is the fast one diffusers uses, id for id.
    let converted = PromptTokenizer::clip(&models.join("tokenizer/tokenizer.json")).unwrap();
    let original = PromptTokenizer::clip(&fixture_pipeline("dev").join("tokenizer/tokenizer.json")).unwrap();
    for prompt in [
        "a photo of a cat",
        "Ünïcode, digits 1234 and   spaces!",
        "don't stop; it's <|endoftext|>",
    ] {
        assert_eq!(ids(&converted, prompt), ids(&original, prompt), "{prompt}");
    }
    check_cat(&models);
    matches_flux_pipeline("dev", &models);
}

#[test]
fn without_tokenizers_or_scheduler_the_bundled_ones_are_written() {
    // The schnell pipeline's weights with no tokenizer or scheduler folders (as ComfyUI users have).
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare");
    layouts::copy_tree(&fixture_pipeline("schnell"), &bare);
    for folder in ["tokenizer", "tokenizer_2", "scheduler"] {
        std::fs::remove_dir_all(bare.join(folder)).unwrap();
    }
    let models = dir.path().join("models");
    let out = fluxbuild(&[
        "export",
        "--checkpoint",
        bare.to_str().unwrap(),
        "--out",
        models.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = &manifest(&models)["settings"]["pipeline_files"];
    for folder in ["tokenizer", "tokenizer_2", "scheduler"] {
        assert_eq!(files[folder]["kind"], "bundled", "{folder}: {files}");
    }
    assert!(files["scheduler"]["name"].as_str().unwrap().contains("schnell"));
    let scheduler: Value =
        serde_json::from_slice(&std::fs::read(models.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    assert_eq!(scheduler["use_dynamic_shifting"], false);
    assert_eq!(scheduler["shift"], 1.0);
    check_cat(&models);
    matches_flux_pipeline("schnell", &models);
}

#[test]
fn overrides_take_precedence_and_spiece_converts() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture_pipeline("dev");
    let clip = dir.path().join("clip-tok");
    layouts::write_vocab_and_merges(&source.join("tokenizer/tokenizer.json"), &clip);
    let t5 = dir.path().join("t5-tok");
    std::fs::create_dir_all(&t5).unwrap();
    write_spiece(&source.join("tokenizer_2/tokenizer.json"), &t5.join("spiece.model"));
    let scheduler = dir.path().join("scheduler.json");
    std::fs::copy(source.join("scheduler/scheduler_config.json"), &scheduler).unwrap();

    let models = dir.path().join("models");
    let schnell = fixture_pipeline("schnell");
    let args = [
        "export",
        "--checkpoint",
        schnell.to_str().unwrap(),
        "--only",
        "clip,t5,transformer",
        "--tokenizer",
        clip.to_str().unwrap(),
        "--tokenizer-2",
        t5.to_str().unwrap(),
        "--scheduler",
        scheduler.to_str().unwrap(),
        "--out",
        models.to_str().unwrap(),
    ];
    let out = fluxbuild(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = &manifest(&models)["settings"]["pipeline_files"];
    assert_eq!(files["tokenizer"]["kind"], "override");
    assert_eq!(files["tokenizer_2"]["form"], "spiece.model");
    assert_eq!(files["scheduler"]["kind"], "override");
    check_cat(&models);
    let converted = PromptTokenizer::t5(&models.join("tokenizer_2/tokenizer.json"), 40).unwrap();
    let original = PromptTokenizer::t5(&source.join("tokenizer_2/tokenizer.json"), 40).unwrap();
    for prompt in ["a photo of a cat", "Ünïcode, digits 1234 and   spaces! <extra_id_3>"] {
        assert_eq!(ids(&converted, prompt), ids(&original, prompt), "{prompt}");
    }
}

#[test]
fn unusable_tokenizers_stop_the_export_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let pipeline = fixture_pipeline("dev");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let t5_dir = pipeline.join("tokenizer_2");
    let cases: [(&str, &Path, &str); 3] = [
        ("--tokenizer", &empty, "no CLIP tokenizer here"),
        // T5's tokenizer given as CLIP's: it has no <|endoftext|>.
        ("--tokenizer", &t5_dir, "<|endoftext|>"),
        ("--tokenizer-2", Path::new("/nonexistent/tok"), "no such folder"),
    ];
    for (flag, path, expected) in cases {
        let out = fluxbuild(&[
            "export",
            "--checkpoint",
            pipeline.to_str().unwrap(),
            "--only",
            "clip,t5",
            flag,
            path.to_str().unwrap(),
            "--out",
            models.to_str().unwrap(),
        ]);
        let message = stderr(&out);
        assert!(!out.status.success(), "{flag} {}", path.display());
        assert!(message.contains(expected), "{flag} {}: {message}", path.display());
        assert!(!models.exists(), "{flag} {}: nothing in --out", path.display());
    }
}

/// ComfyUI's `models/` folder with the separate files (the fixture pipeline's weights in
/// ComfyUI's names and layouts: BFL transformer, LDM VAE), no tokenizer and no scheduler anywhere: export finds each file, writes the
/// bundled tokenizers and dev scheduler, and the image matches diffusers' FluxPipeline.
#[test]
fn comfyui_models_folder_exports_and_matches_flux_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture_pipeline("dev");
    let comfy_root = layouts::comfyui_folder(&source, &dir.path().join("ComfyUI"));
    let models_dir = comfy_root.join("models");
    // A config.json beside the text encoders describes neither the VAE nor the transformer: it
    // must not be applied to them (the tiny models' head counts come from --config).
    std::fs::copy(
        source.join("text_encoder/config.json"),
        models_dir.join("text_encoders/config.json"),
    )
    .unwrap();
    let config = |name: &str, sub: &str| format!("{name}={}", source.join(sub).join("config.json").display());
    let models = dir.path().join("out");
    let args = [
        "export".to_string(),
        "--checkpoint".into(),
        comfy_root.display().to_string(),
        "--config".into(),
        config("transformer", "transformer"),
        "--config".into(),
        config("t5", "text_encoder_2"),
        "--config".into(),
        config("vae_decoder", "vae"),
        "--out".into(),
        models.display().to_string(),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&models);
    assert_eq!(m["submodels"]["transformer"]["layout"], "bfl");
    assert_eq!(m["submodels"]["vae_decoder"]["layout"], "ldm");
    assert_eq!(m["settings"]["pipeline_files"]["tokenizer"]["kind"], "bundled");
    assert_eq!(m["settings"]["pipeline_files"]["scheduler"]["kind"], "bundled");
    assert!(m["submodels"]["clip"]["source"][0]
        .as_str()
        .unwrap()
        .ends_with("text_encoders/clip_l.safetensors"));
    assert!(m["submodels"]["t5"]["source"][0]
        .as_str()
        .unwrap()
        .ends_with("text_encoders/t5xxl_fp16.safetensors"));
    matches_flux_pipeline("dev", &models);

    // Two transformers to choose from: the diagnosis lists them; nothing is written.
    std::fs::copy(
        models_dir.join("diffusion_models/flux1-dev.safetensors"),
        models_dir.join("diffusion_models/flux1-schnell.safetensors"),
    )
    .unwrap();
    let again = dir.path().join("again");
    let out = fluxbuild(&[
        "export",
        "--checkpoint",
        comfy_root.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    let message = stderr(&out);
    assert!(!out.status.success());
    assert!(
        message.contains("2 candidates for --transformer") && message.contains("flux1-schnell"),
        "{message}"
    );
    assert!(!again.exists());
}

/// A ComfyUI all-in-one checkpoint of the fixture pipeline through `--checkpoint FILE`: every
/// part found under its root, the bundled tokenizers and dev scheduler, the image within 40 dB.
#[test]
fn all_in_one_checkpoint_exports_and_matches_flux_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture_pipeline("dev");
    let file = dir.path().join("flux1-dev-all-in-one.safetensors");
    layouts::all_in_one(&source, &file);
    let models = dir.path().join("models");
    let mut args = vec!["export".to_string(), "--checkpoint".into(), file.display().to_string()];
    args.extend(layouts::comfyui_configs(&source));
    args.extend(["--out".to_string(), models.display().to_string()]);
    let out = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&models);
    assert_eq!(
        m["submodels"]["clip"]["all_in_one_part"],
        "text_encoders.clip_l.transformer."
    );
    assert_eq!(m["submodels"]["transformer"]["layout"], "bfl");
    assert_eq!(m["settings"]["pipeline_files"]["tokenizer_2"]["kind"], "bundled");
    matches_flux_pipeline("dev", &models);
}
