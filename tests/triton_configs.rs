//! The gpu target's repository for the tiny FLUX.1-dev fixture (exported by `fluxbuild export`),
//! checked by the real server's config parser: every model's config.pbtxt must parse and
//! validate; loading may fail only because this machine has no TensorRT backend and no GPU.
//! A deliberately broken config shows the check can fail.

mod triton_support;

use fluxbuild::package::{package, Options, Target};
use fluxbuild::serve::{Installation, Server, ServerOptions};
use std::path::Path;

/// An engines manifest as `fluxbuild build` writes it, with profiles for the fixture's graphs
/// (joint_attention_dim and pooled_projection_dim 32); the plans are placeholders.
fn engines(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let shapes = |min: &[i64], opt: &[i64], max: &[i64]| serde_json::json!({ "min": min, "opt": opt, "max": max });
    let engine = |network: &str, precision: &str, inputs: serde_json::Value, profiles: usize| {
        let file = format!("{network}.{precision}.plan");
        std::fs::write(dir.join(&file), b"a TensorRT plan would be here").unwrap();
        serde_json::json!({ "network": network, "precision": precision, "file": file,
            "profiles": (0..profiles).map(|_| serde_json::json!({ "inputs": inputs.clone() })).collect::<Vec<_>>() })
    };
    let transformer_inputs = serde_json::json!({
        "hidden_states": shapes(&[1, 256, 64], &[1, 4096, 64], &[4, 4096, 64]),
        "encoder_hidden_states": shapes(&[1, 256, 32], &[1, 512, 32], &[4, 512, 32]),
        "pooled_projections": shapes(&[1, 32], &[1, 32], &[4, 32]),
        "timestep": shapes(&[1], &[1], &[4]),
        "img_ids": shapes(&[256, 3], &[4096, 3], &[4096, 3]),
        "txt_ids": shapes(&[256, 3], &[512, 3], &[512, 3]),
        "guidance": shapes(&[1], &[1], &[4]),
    });
    let manifest = serde_json::json!({ "engines": [
        engine("clip", "fp16", serde_json::json!({ "input_ids": shapes(&[1, 77], &[2, 77], &[4, 77]) }), 1),
        engine("t5", "bf16", serde_json::json!({ "input_ids": shapes(&[1, 256], &[2, 512], &[4, 512]) }), 1),
        engine("transformer", "fp8", transformer_inputs.clone(), 2),
        engine("transformer", "fp16", transformer_inputs, 1),
        engine("vae_decoder", "fp16", serde_json::json!({ "latent": shapes(&[1, 16, 32, 32], &[1, 16, 128, 128], &[4, 16, 128, 128]) }), 1),
    ]});
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

/// Loads each model through the repository API and returns (model, error message).
fn load_errors(repo: &Path, models: &[&str]) -> Vec<(String, String)> {
    let install = Installation::find(None).expect("the Triton venv (run `make triton-venv`)");
    let mut options = ServerOptions::new(repo).unwrap();
    options.explicit_model_control = true;
    options.load_models = vec![];
    options.ready_model = None;
    let server = Server::start(&install, &options).unwrap();
    let client = server.client();
    models
        .iter()
        .map(|m| {
            (
                m.to_string(),
                client
                    .repository(m, "load")
                    .map(|_| "loaded".to_string())
                    .unwrap_or_else(|e| format!("{e:#}")),
            )
        })
        .collect()
}

/// The only reasons a valid config may fail to load here: no TensorRT backend, no GPU.
fn missing_tensorrt_or_gpu(message: &str) -> bool {
    message.contains("unable to find backend library for backend 'tensorrt'")
        || message.contains("GPU")
        || message.contains("CUDA")
}

#[test]
fn every_gpu_config_is_accepted_by_the_servers_parser() {
    let dir = tempfile::tempdir().unwrap();
    let models = triton_support::export("dev", &dir.path().join("export"));
    engines(&dir.path().join("engines"));
    let repo = dir.path().join("repo");
    // gpu: the largest image comes from the engines' profiles, not from max_height/max_width.
    let options = Options {
        max_height: 0,
        max_width: 0,
        ..options(&models, &repo, Target::Gpu, Some(&dir.path().join("engines")))
    };
    let packaged = package(&options, &|_| indicatif::ProgressBar::hidden()).unwrap();
    assert_eq!(
        packaged.models,
        ["clip", "t5", "transformer", "transformer_fp16", "vae_decoder", "flux"]
    );
    let limits = &packaged.limits;
    assert_eq!(
        (
            limits.max_height,
            limits.min_height,
            limits.min_sequence_length,
            limits.max_sequence_length
        ),
        (1024, 256, 256, 512)
    );
    let transformer = std::fs::read_to_string(repo.join("transformer/config.pbtxt")).unwrap();
    assert!(
        transformer.contains("platform: \"tensorrt_plan\"") && transformer.contains("profile: [ \"0\", \"1\" ]"),
        "{transformer}"
    );
    let flux = std::fs::read_to_string(repo.join("flux/config.pbtxt")).unwrap();
    assert!(
        flux.contains("kind: KIND_GPU") && flux.contains("string_value: \"transformer_fp16\""),
        "{flux}"
    );
    assert!(repo.join("transformer/1/model.plan").is_file() && repo.join("manifest.json").is_file());

    let names = ["clip", "t5", "transformer", "transformer_fp16", "vae_decoder", "flux"];
    let errors = load_errors(&repo, &names);
    for (model, message) in &errors {
        eprintln!("{model}: {message}");
    }
    for (model, message) in &errors {
        assert!(
            missing_tensorrt_or_gpu(message),
            "{model}: the server rejected its config: {message}"
        );
    }

    // The check can fail: a config the parser rejects never reaches the backend lookup
    // (the server's log has the line and column).
    let broken = repo.join("clip/config.pbtxt");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&broken)
            .unwrap()
            .replace("max_batch_size: 4", "max_batch_size: four"),
    )
    .unwrap();
    let errors = load_errors(&repo, &["clip"]);
    eprintln!("broken clip: {}", errors[0].1);
    assert!(
        !missing_tensorrt_or_gpu(&errors[0].1) && errors[0].1.contains("failed to poll from model repository"),
        "{:?}",
        errors[0]
    );
}

/// Stand-in engines for `preset` (placeholder plans, the manifest `fluxbuild build` would write
/// from the preset's shapes for the fixture's dims).
fn preset_engines(dir: &Path, preset: &fluxbuild_profiles::Preset, precision: &str, guidance: bool) {
    use fluxbuild_profiles::{ModelDims, Network};
    std::fs::create_dir_all(dir).unwrap();
    let dims = ModelDims {
        joint_dim: 32,
        pooled_dim: 32,
        guidance: Some(guidance),
        ..ModelDims::FLUX
    };
    let engines: Vec<serde_json::Value> = [Network::Clip, Network::T5, Network::Transformer, Network::VaeDecoder]
        .into_iter()
        .map(|network| {
            let file = format!("{}.plan", network.name());
            std::fs::write(dir.join(&file), b"a TensorRT plan would be here").unwrap();
            let profiles: Vec<serde_json::Value> = preset
                .shapes(network, &dims)
                .iter()
                .map(|p| {
                    let inputs: serde_json::Map<String, serde_json::Value> = p
                        .inputs
                        .iter()
                        .map(|i| {
                            (
                                i.name.clone(),
                                serde_json::json!({ "min": i.min, "opt": i.opt, "max": i.max }),
                            )
                        })
                        .collect();
                    serde_json::json!({ "inputs": inputs })
                })
                .collect();
            serde_json::json!({ "network": network.name(), "precision": precision, "file": file, "profiles": profiles })
        })
        .collect();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "engines": engines })).unwrap(),
    )
    .unwrap();
}

fn options(models: &Path, out: &Path, target: Target, engines: Option<&Path>) -> Options {
    Options {
        models: models.to_path_buf(),
        out: out.to_path_buf(),
        target,
        engines: engines.map(Path::to_path_buf),
        max_batch: 4,
        queue_delay_us: 10_000,
        height: None,
        width: None,
        max_height: 128,
        max_width: 128,
        steps: None,
        max_steps: 100,
        max_sequence_length: None,
        alternatives: vec![],
        force: false,
        serving: Default::default(),
    }
}

/// Every built-in preset x precision: the gpu repository passes the real server's config parser
/// (every model fails only for want of TensorRT or a GPU), its transformer holds all the preset's
/// profiles in one instance group with max_batch_size the largest maximum; the cpu target loads
/// fp32 and fp16 repositories (every model READY) and refuses bf16 at `package` with the reason.
#[test]
fn every_preset_and_precision_packages_into_a_repository_the_server_loads() {
    use fluxbuild_profiles::{Network, PresetVariant};
    let dir = tempfile::tempdir().unwrap();
    let presets = fluxbuild_profiles::Preset::builtins().unwrap();
    let names = ["clip", "t5", "transformer", "vae_decoder", "flux"];
    for precision in ["fp32", "fp16", "bf16"] {
        for variant in ["dev", "schnell"] {
            let models = dir.path().join(format!("{variant}-{precision}"));
            let pipeline = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/pipeline")
                .join(variant);
            triton_support::fluxbuild_ok(&[
                "export",
                "--checkpoint",
                triton_support::path(&pipeline),
                "--out",
                triton_support::path(&models),
                "--precision",
                precision,
            ]);
            let fits = |v: PresetVariant| match v {
                PresetVariant::Dev => variant == "dev",
                PresetVariant::Schnell => variant == "schnell",
                PresetVariant::Any => true,
            };
            for preset in presets.iter().filter(|p| fits(p.variant)) {
                let label = format!("{} x {precision} ({variant})", preset.name);
                let engines = dir.path().join(format!("engines-{label}"));
                preset_engines(&engines, preset, precision, variant == "dev");
                let repo = dir.path().join(format!("repo-{label}"));
                let packaged = package(&options(&models, &repo, Target::Gpu, Some(&engines)), &|_| {
                    indicatif::ProgressBar::hidden()
                })
                .unwrap_or_else(|e| panic!("{label}: {e:#}"));
                let transformer = std::fs::read_to_string(repo.join("transformer/config.pbtxt")).unwrap();
                let profiles = preset.profiles(Network::Transformer).len();
                let listed: Vec<String> = (0..profiles).map(|i| format!("\"{i}\"")).collect();
                assert!(
                    transformer.matches("instance_group").count() == 1
                        && transformer.contains(&format!("profile: [ {} ]", listed.join(", "))),
                    "{label}: {transformer}"
                );
                let clip = std::fs::read_to_string(repo.join("clip/config.pbtxt")).unwrap();
                let largest = preset
                    .profiles(Network::Clip)
                    .iter()
                    .map(|p| p.batch.max)
                    .max()
                    .unwrap();
                assert!(
                    clip.contains(&format!("max_batch_size: {largest}\n")),
                    "{label}: {clip}"
                );
                for (model, message) in load_errors(&repo, &names) {
                    assert!(
                        missing_tensorrt_or_gpu(&message),
                        "{label}: {model}: the server rejected its config: {message}"
                    );
                }
                eprintln!(
                    "{label}: gpu repository parsed ({} models, network batch {})",
                    packaged.models.len(),
                    packaged.limits.network_max_batch
                );
            }
            let repo = dir.path().join(format!("cpu-{variant}-{precision}"));
            let result = package(&options(&models, &repo, Target::Cpu, None), &|_| {
                indicatif::ProgressBar::hidden()
            });
            if precision == "bf16" {
                let message = format!("{:#}", result.expect_err("bf16 on the cpu target"));
                assert!(message.contains("bf16") && message.contains("cpu target"), "{message}");
                assert!(!repo.exists(), "nothing written when refused");
                continue;
            }
            result.unwrap_or_else(|e| panic!("cpu {variant} {precision}: {e:#}"));
            for (model, message) in load_errors(&repo, &names) {
                assert_eq!(message, "loaded", "cpu {variant} {precision}: {model}");
            }
            eprintln!("cpu {variant} x {precision}: every model loaded");
        }
    }
}
