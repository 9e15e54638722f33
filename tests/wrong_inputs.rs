//! Files that are not what was asked for get a one-line diagnosis first (naming the file once),
//! a non-zero exit and nothing in --out: git-lfs pointers, GGUF, LoRAs (kohya and diffusers),
//! another model family, CLIP and T5 swapped; `inspect --json` prints exactly one document.

mod common;

use common::{fixtures, write_f32_safetensors};
use std::path::Path;
use std::process::{Command, Output};

fn fluxbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .unwrap()
}

/// A copy of the dev fixture pipeline in `dir` (`FLUX.1-dev/`), to break.
fn copy_dev_pipeline(dir: &Path) -> std::path::PathBuf {
    let source = fixtures().join("pipeline/dev");
    let pipeline = dir.join("FLUX.1-dev");
    for file in fluxbuild::export::list_files(&source).unwrap() {
        let to = pipeline.join(file.strip_prefix(&source).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
    pipeline
}

fn refused(flag: &str, file: &Path, expected: &str) {
    refused_naming(flag, file, file, expected)
}

/// `given` is refused with `expected` on the first line, naming `named` (a file in it) once.
fn refused_naming(flag: &str, given: &Path, named: &Path, expected: &str) {
    let out_dir = given.with_file_name("out");
    let out = fluxbuild(&[
        "export",
        flag,
        given.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: exported", given.display());
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(expected),
        "{}: first line {first:?}\n{stderr}",
        given.display()
    );
    let name = named.display().to_string();
    assert_eq!(stderr.matches(&name).count(), 1, "the path once:\n{stderr}");
    assert!(!out_dir.exists(), "{}: nothing in --out", given.display());
}

#[test]
fn foreign_files_get_a_one_line_diagnosis() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| {
        let sub = dir.path().join(name.replace('.', "_"));
        std::fs::create_dir_all(&sub).unwrap();
        sub.join(name)
    };

    let pointer = at("flux1-dev.safetensors");
    std::fs::write(
        &pointer,
        "version https://git-lfs.github.com/spec/v1\noid sha256:4610115bb0c89560703c892c59ac2742fa821e60ef5871b33493ba544683abd7\nsize 23802932552\n",
    )
    .unwrap();
    refused("--transformer", &pointer, "a git-lfs pointer, not the weights");

    let gguf = at("flux1-dev-Q8_0.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00").unwrap();
    refused("--transformer", &gguf, "a GGUF file");

    let kohya = at("my_flux_lora.safetensors");
    write_f32_safetensors(
        &kohya,
        &[
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                vec![4, 32],
                vec![0.0; 128],
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                vec![96, 4],
                vec![0.0; 384],
            ),
            ("lora_unet_double_blocks_0_img_attn_qkv.alpha", vec![], vec![4.0]),
        ],
    );
    refused("--transformer", &kohya, "a LoRA (kohya style, 1 low-rank pairs)");

    let peft = at("pytorch_lora_weights.safetensors");
    write_f32_safetensors(
        &peft,
        &[
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                vec![4, 32],
                vec![0.0; 128],
            ),
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight",
                vec![32, 4],
                vec![0.0; 128],
            ),
        ],
    );
    refused("--transformer", &peft, "a LoRA (diffusers/PEFT style");

    let sd3 = at("sd3_medium.safetensors");
    write_f32_safetensors(
        &sd3,
        &[(
            "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
            vec![6, 2],
            vec![0.0; 12],
        )],
    );
    refused("--transformer", &sd3, "a Stable Diffusion 3 model");

    // CLIP and T5 swapped on the command line.
    let t5 = at("t5xxl_fp16.safetensors");
    std::fs::copy(fixtures().join("t5/shared.safetensors"), &t5).unwrap();
    refused("--clip", &t5, "the T5 encoder, given where CLIP-L was expected");
    let clip = at("clip_l.safetensors");
    std::fs::copy(fixtures().join("clip/model.safetensors"), &clip).unwrap();
    refused("--t5", &clip, "the CLIP-L encoder, given where T5-XXL was expected");
}

#[test]
fn inspect_json_is_one_document_even_with_problems() {
    let dir = tempfile::tempdir().unwrap();
    // The dev fixture with one block's tensors renamed: many problems, one document.
    let file = dir.path().join("broken.safetensors");
    let ckpt =
        fluxbuild_exporters::checkpoint::Checkpoint::load(&fixtures().join("transformer/dev/bfl.safetensors"), "", &[])
            .unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = ckpt
        .tensors()
        .map(|t| {
            (
                t.name.replace("double_blocks.1.", "double_blocks.1.x"),
                t.shape().to_vec(),
                t.to_f32(),
            )
        })
        .collect();
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_f32_safetensors(&file, &refs);
    let config = fixtures().join("transformer/dev/diffusers/config.json");
    let out = fluxbuild(&[
        "--json",
        "inspect",
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(docs.len(), 1, "{stdout}");
    let problems = docs[0]["problems"].as_u64().unwrap();
    assert!(problems > 20, "{stdout}");
    let listed = docs[0]["submodels"][0]["problems"].as_array().unwrap().len() as u64;
    assert_eq!(listed, problems, "--json lists every problem");
    let tokenizer = docs[0]["pipeline_files"]["tokenizer"].as_str().unwrap();
    assert!(tokenizer.contains("bundled"), "{tokenizer}");

    // The text form of the export error is a summary: counts by kind, a few names each.
    let out_dir = dir.path().join("out");
    let out = fluxbuild(&[
        "export",
        "--transformer",
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("missing:") && stderr.contains("unexpected:") && stderr.contains("more"),
        "{stderr}"
    );
    assert!(stderr.lines().count() < 20, "{stderr}");
    assert!(!out_dir.exists());
}

#[test]
fn bf16_graphs_are_refused_by_local_generate_with_the_ways_out() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixtures().join("pipeline/schnell");
    let export = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "export",
            "--checkpoint",
            pipeline.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = fluxbuild(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let generate = |models: &Path| {
        let png = models.with_extension("png");
        let out = fluxbuild(&[
            "generate",
            "--models",
            models.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--height",
            "16",
            "--width",
            "16",
            "--steps",
            "1",
            "--out",
            png.to_str().unwrap(),
        ]);
        (out, png)
    };
    let bf16 = dir.path().join("bf16");
    export(&["--precision", "transformer=bf16"], &bf16);
    let (out, png) = generate(&bf16);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("transformer exported in bf16, which ONNX Runtime's CPU cannot run")
            && stderr.contains("--emulate"),
        "{stderr}"
    );
    assert!(!png.exists());

    let emulated = dir.path().join("emulated");
    export(&["--precision", "transformer=bf16", "--emulate"], &emulated);
    let (out, _) = generate(&emulated);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_network_given_two_precisions_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let pipeline = fixtures().join("pipeline/schnell");
    let out = fluxbuild(&[
        "export",
        "--checkpoint",
        pipeline.to_str().unwrap(),
        "--precision",
        "transformer=fp16,transformer=bf16",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("transformer") && stderr.contains("twice"), "{stderr}");
    assert!(!out_dir.exists());
}

#[test]
fn checkpoint_file_that_is_not_all_in_one_names_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let file = fixtures().join("transformer/dev/bfl.safetensors");
    let out = fluxbuild(&[
        "export",
        "--checkpoint",
        file.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let first = stderr.lines().next().unwrap();
    assert!(
        first.contains("holds transformer, not clip, t5, vae_decoder (not an all-in-one checkpoint)")
            && first.contains("--clip FILE --t5 FILE --vae FILE")
            && first.contains("--only transformer"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("CLIP"),
        "no CLIP error for a transformer file: {stderr}"
    );
    assert!(!out_dir.exists());
}

/// A command line clap refuses is, with `--json`, still exactly one JSON document on stdout (and
/// clap's text on stderr), exit 2; `--help` stays text.
#[test]
fn json_usage_errors_are_one_document() {
    for (args, expected) in [
        (&["--json", "export", "--checkpoint", "x"][..], "--out <OUT>"),
        (&["--json", "bogus"], "unrecognized subcommand 'bogus'"),
        (
            &["package", "--json", "--models", "m", "--out", "o", "--target", "tpu"],
            "[possible values: cpu, gpu]",
        ),
        (
            &["generate", "--prompt", "a", "--steps", "abc", "--json"],
            "invalid value 'abc' for '--steps <STEPS>'",
        ),
        (
            &[
                "generate",
                "--server",
                "http://h:1",
                "--prompt",
                "a",
                "--concurrency",
                "0",
                "--json",
            ],
            "0 is not in 1..=1024",
        ),
        (
            &["serve", "--repo", "r", "--timeout", "0", "--json"],
            "0 is not in 1..=86400",
        ),
        (
            &["--json", "profile"],
            "a subcommand is missing (Usage: fluxbuild profile",
        ),
        // --server's options with local generation would be ignored.
        (
            &[
                "generate",
                "--models",
                "m",
                "--prompt",
                "a",
                "--out",
                "a.png",
                "--concurrency",
                "8",
                "--json",
            ],
            "cannot be used with '--concurrency <CONCURRENCY>'",
        ),
        // Older opsets lack LayerNormalization: their graphs would not load.
        (
            &["export", "--checkpoint", "c", "--out", "o", "--opset", "13", "--json"],
            "13 is not in 17..=21",
        ),
    ] {
        let out = fluxbuild(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let document: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {stdout}"));
        let error = document["error"].as_str().unwrap();
        assert!(error.contains(expected) && !error.contains('\n'), "{args:?}: {error}");
        // clap's own text on stderr: its error, or the help a missing subcommand shows.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: ") || stderr.contains("Usage: "), "{args:?}");
    }
    let help = fluxbuild(&["--json", "export", "--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage: fluxbuild export"));
}

/// A diffusers pipeline folder that lost its model_index.json (a partial download) is named as
/// such, not taken for a ComfyUI folder (it has `vae/`) and answered with ComfyUI's file names.
#[test]
fn a_pipeline_without_model_index_json_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = copy_dev_pipeline(dir.path());
    let index = pipeline.join("model_index.json");
    let original = std::fs::read_to_string(&index).unwrap();

    // Truncated (an interrupted download), another family's: named by the index file.
    std::fs::write(&index, &original[..original.len() / 2]).unwrap();
    refused_naming("--checkpoint", &pipeline, &index, "not JSON (an interrupted download?)");
    std::fs::write(&index, original.replace("FluxPipeline", "StableDiffusion3Pipeline")).unwrap();
    refused_naming(
        "--checkpoint",
        &pipeline,
        &index,
        "the pipeline of a StableDiffusion3Pipeline, not a FLUX.1 pipeline",
    );

    std::fs::remove_file(&index).unwrap();
    refused("--checkpoint", &pipeline, "a diffusers pipeline folder");
    refused("--checkpoint", &pipeline, "without model_index.json");
}

/// The folder above the pipelines (a models/ folder with FLUX.1-dev/ and FLUX.1-schnell/ in it)
/// is answered with the pipelines to choose from.
#[test]
fn a_folder_of_pipelines_names_them() {
    let parent = fixtures().join("pipeline");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = fluxbuild(&[
        "export",
        "--checkpoint",
        parent.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("it holds the pipelines dev/, schnell/: give one of them"),
        "{stderr}"
    );
    assert!(!out_dir.exists());

    // Shards whose index an interrupted download lost: the index is what to restore.
    let shards = dir.path().join("vae");
    std::fs::create_dir(&shards).unwrap();
    for i in 1..=2 {
        let shard = shards.join(format!("diffusion_pytorch_model-0000{i}-of-00002.safetensors"));
        std::fs::copy(fixtures().join("vae/ae.safetensors"), shard).unwrap();
    }
    refused(
        "--vae",
        &shards,
        "without their *.safetensors.index.json: restore the index",
    );
}

/// Options that shape another precision or target than the one asked for would be ignored, and
/// the user would believe them applied: refused before any work, naming the flag and the way out.
#[test]
fn options_for_another_precision_or_target_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out_arg = out_dir.to_str().unwrap();
    let pipeline = fixtures().join("pipeline/dev");
    let pipeline = pipeline.to_str().unwrap();
    let calibration = dir.path().join("calibration.json");
    std::fs::write(&calibration, "{}").unwrap();
    let calibration = calibration.to_str().unwrap();
    for (extra, flag) in [
        (&["--calibration", calibration][..], "--calibration"),
        (&["--fp8-weights", "per-channel"], "--fp8-weights"),
        (&["--fp8-keep", "*.norm1.linear.weight"], "--fp8-keep"),
        (
            &["--precision", "fp8", "--only", "clip,t5", "--calibration", calibration],
            "--calibration",
        ),
    ] {
        let mut args = vec!["export", "--checkpoint", pipeline, "--out", out_arg];
        args.extend(extra);
        let out = fluxbuild(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: exported");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} applies to fp8 submodels")) && stderr.contains("or drop"),
            "{extra:?}: {stderr}"
        );
        assert!(!out_dir.exists(), "{extra:?}: nothing in --out");
    }

    let models = dir.path().join("models");
    let models = models.to_str().unwrap();
    for (target, extra, expected) in [
        ("cpu", ["--engines", models], "--engines is for --target gpu"),
        ("gpu", ["--alternative", "clip=x"], "--alternative is for --target cpu"),
        ("gpu", ["--max-height", "512"], "--max-height is for --target cpu"),
    ] {
        let mut args = vec!["package", "--models", models, "--out", out_arg, "--target", target];
        args.extend(extra);
        let out = fluxbuild(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{target}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!out_dir.exists());
    }
}

/// A pipeline with one truncated component (an interrupted download): inspect reports every
/// component, the unreadable one with its file and why, and exits non-zero.
#[test]
fn inspect_reports_every_component_of_a_pipeline_with_a_truncated_one() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = copy_dev_pipeline(dir.path());
    let truncated = pipeline.join("text_encoder/model.safetensors");
    std::fs::File::options()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let out = fluxbuild(&["--json", "inspect", pipeline.to_str().unwrap()]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let submodels = report["submodels"].as_array().unwrap();
    let names: Vec<&str> = submodels.iter().map(|s| s["submodel"].as_str().unwrap()).collect();
    assert_eq!(names, ["clip", "t5", "transformer", "vae_decoder"]);
    assert_eq!(report["problems"], 1, "{report}");
    let clip = &submodels[0]["problems"][0].as_str().unwrap();
    assert!(
        clip.contains(truncated.to_str().unwrap()) && clip.contains("truncated"),
        "{clip}"
    );
    assert!(submodels[1..].iter().all(|s| s["tensors"].as_u64().unwrap() > 0));
}

/// calibrate and perf-data write one file: never over what they read (the export's manifest or a
/// graph, the prompts file, the repository's configs), refused before any work.
#[test]
fn single_file_outputs_over_their_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let models = copy_dev_pipeline(dir.path());
    let manifest = models.join("model_index.json");
    let before = std::fs::read(&manifest).unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a cat\n").unwrap();
    let (m, p, o) = (
        models.to_str().unwrap(),
        prompts.to_str().unwrap(),
        manifest.to_str().unwrap(),
    );
    for (args, why) in [
        (&["calibrate", "--models", m, "--out", o][..], "lies inside the input"),
        (
            &["calibrate", "--models", m, "--prompts", p, "--out", p],
            "is the input",
        ),
        (
            &["perf-data", "--repo", m, "--prompt", "a", "--out", o],
            "lies inside the input",
        ),
    ] {
        let out = fluxbuild(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{args:?}: {stderr}");
        assert!(stderr.contains("fluxbuild never writes over its inputs"), "{stderr}");
    }
    assert_eq!(std::fs::read(&manifest).unwrap(), before);
    assert_eq!(std::fs::read_to_string(&prompts).unwrap(), "a cat\n");

    // A folder that is not there (a typo) is said, not reported clean.
    let missing = dir.path().join("no-such-out");
    let out = fluxbuild(&["clean", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no such folder"), "{stderr}");
}
