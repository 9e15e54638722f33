//! The tiny FLUX.1 fixture pipelines, exported (`fluxbuild export`), packaged for the cpu target
//! (`fluxbuild package --target cpu`) and served by a real Triton server, against local
//! generation (`fluxbuild generate --models`, ONNX Runtime in-process). Both run the same graphs
//! on the same ONNX Runtime (1.32, CPU) from the same noise ("fluxbuild noise v1"), so a single
//! prompt gives the same pixels bit for bit. Batches go through the networks as one batch, where
//! ONNX Runtime may pick other kernel blockings; those are held to the issue's PSNR >= 60 dB
//! (about one pixel value in 16 off by one) and the log says whether they are identical.
//! Needs the Triton venv: `make triton-venv`.

mod common;
mod triton_support;

use fluxbuild::client::{Client, MadeBy};
use fluxbuild::generate::image::{read_png, RgbImage};
use fluxbuild::generate::{generate, ExportedModels, Request, RequestOptions};
use fluxbuild::serve::{Installation, Server, ServerOptions};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use triton_support::{
    assert_nothing_left, assert_served_equals_local, export, fluxbuild, fluxbuild_ok, package_cpu, path, processes_of,
    psnr, start, stub_pid,
};

/// The package's default size and steps (`package_cpu`).
const SIZE: usize = 64;
const STEPS: usize = 2;
const PROMPTS: [&str; 8] = [
    "a photo of a cat",
    "a red dog on the moon",
    "astronaut riding a horse",
    "painting of a sunset over mountains",
    "a city at night",
    "a green forest river",
    "a blue lighthouse",
    "the cat riding the dog",
];

fn options(prompts: &[&str], seed: u64) -> RequestOptions {
    RequestOptions {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        seed: Some(seed),
        ..Default::default()
    }
}

/// The image `prompt` gets alone from local generation (SIZE x SIZE, STEPS steps).
fn local(models: &ExportedModels, prompt: &str, seed: u64) -> Vec<u8> {
    let request = RequestOptions {
        height: Some(SIZE),
        width: Some(SIZE),
        steps: Some(STEPS),
        ..options(&[prompt], seed)
    }
    .resolve(models.variant.value)
    .unwrap();
    generate(models, &request, &mut |_| {}).unwrap().images.remove(0).pixels
}

/// A request with the deployment's defaults, checked as `fluxbuild generate --server` checks it.
fn remote(client: &Client, prompts: &[&str], seed: u64) -> Request {
    let deployment = client.deployment().unwrap();
    options(prompts, seed)
        .resolve_within(&deployment.defaults, &deployment.limits)
        .unwrap()
}

/// Every image within PSNR >= 60 dB of the prompt alone; returns how many are identical.
fn count_identical(images: &[RgbImage], alone: &[Vec<u8>], what: &str) -> usize {
    assert_eq!(images.len(), alone.len(), "{what}: one image per prompt");
    let close = |(i, (image, want)): (usize, (&RgbImage, &Vec<u8>))| {
        let db = psnr(&image.pixels, want);
        assert!(
            db >= 60.0,
            "{what}, prompt {i}: PSNR {db:.1} dB against the prompt alone (need >= 60)"
        );
        db.is_infinite()
    };
    images
        .iter()
        .zip(alone)
        .enumerate()
        .map(close)
        .filter(|identical| *identical)
        .count()
}

#[test]
fn dev_through_triton_gives_the_local_images_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &["--queue-delay-us", "100000"]);
    let server = start(&repo, true);
    let exported = ExportedModels::open(&models).unwrap();

    one_prompt_matches_local_generate(&server, &models, dir.path());
    batches_and_concurrent_requests_match_single_prompts(&server, &exported);
    bad_requests_get_clear_errors(&server, dir.path());
    unloading_the_transformer_names_it_and_loading_recovers(&server, &exported);
    copies_reported(&server);
}

/// `fluxbuild generate --server` (the Rust client) and tritonclient against `fluxbuild generate --models`.
fn one_prompt_matches_local_generate(server: &Server, models: &Path, dir: &Path) {
    let (local_png, served_png) = (dir.join("local.png"), dir.join("served.png"));
    let args = [
        "--prompt", PROMPTS[0], "--seed", "42", "--height", "32", "--width", "48", "--steps", "3",
    ];
    let generate = |source: &[&str], out: &Path| {
        let started = Instant::now();
        fluxbuild_ok(&[&["generate"], source, &args, &["--out", path(out)]].concat());
        started.elapsed().as_secs_f64()
    };
    let local_s = generate(&["--models", path(models)], &local_png);
    let served_s = generate(&["--server", &server.url()], &served_png);
    eprintln!(
        "one 48x32 image, 3 steps: local (process, load included) {local_s:.2} s, through Triton {served_s:.2} s"
    );
    let (want, got) = (read_png(&local_png).unwrap(), read_png(&served_png).unwrap());
    assert_eq!((got.width, got.height), (48, 32));
    assert!(
        got.pixels == want.pixels,
        "Rust client: PSNR {:.1} dB against local generate, expected identical pixels",
        psnr(&got.pixels, &want.pixels)
    );
    assert_eq!(
        std::fs::read(&served_png).unwrap(),
        std::fs::read(&local_png).unwrap(),
        "same pixels and settings, same PNG file"
    );
    let distinct: std::collections::BTreeSet<&[u8]> = got.pixels.chunks(3).collect();
    assert!(
        distinct.len() > 100,
        "a real image, not a flat one: {} distinct colors",
        distinct.len()
    );

    // NVIDIA's own client, from the Triton venv.
    let raw = dir.join("python.rgb");
    let python = fluxbuild::serve::Installation::find(None).unwrap().path[0].join("python3");
    let script = common::repo().join("tests/triton_python_client.py");
    let status = std::process::Command::new(python)
        .args([
            path(&script),
            &server.url(),
            PROMPTS[0],
            "42",
            "32",
            "48",
            "3",
            path(&raw),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "the tritonclient script failed");
    assert!(
        std::fs::read(&raw).unwrap() == want.pixels,
        "tritonclient got other pixels than local generate"
    );

    // Initial noise from a file travels as the orchestrator's `noise` input.
    let noise = dir.join("noise.safetensors");
    common::write_f32_safetensors(
        &noise,
        &[("noise", vec![1, 16, 4, 6], common::pseudo_random(16 * 4 * 6, 3))],
    );
    let noise_args = [
        "--prompt",
        PROMPTS[3],
        "--noise",
        path(&noise),
        "--height",
        "32",
        "--width",
        "48",
        "--steps",
        "3",
    ];
    assert_served_equals_local(server, models, &noise_args, dir, "noise");

    // The seed reaches the noise: another seed, another image.
    let other = dir.join("other.png");
    let other_seed = args.map(|a| if a == "42" { "43" } else { a });
    fluxbuild_ok(
        &[
            &["generate", "--server", &server.url()],
            &other_seed[..],
            &["--out", path(&other)],
        ]
        .concat(),
    );
    assert_ne!(read_png(&other).unwrap().pixels, want.pixels);
}

/// (batch size, executions) of `model` from Triton's statistics.
fn batch_stats(client: &Client, model: &str) -> Vec<(u64, u64)> {
    let stats = client.get_json(&format!("/v2/models/{model}/stats")).unwrap();
    stats["model_stats"][0]["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["batch_size"].as_u64().unwrap(),
                b["compute_infer"]["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn batched_executions(stats: &[(u64, u64)]) -> u64 {
    stats.iter().filter(|(size, _)| *size > 1).map(|(_, n)| n).sum()
}

fn batches_and_concurrent_requests_match_single_prompts(server: &Server, models: &ExportedModels) {
    let client = server.client();
    let max_batch = client.deployment().unwrap().max_batch;
    let want: Vec<Vec<u8>> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| local(models, p, 100 + i as u64))
        .collect();
    let started = Instant::now();
    let alone = client.generate(&remote(&client, &PROMPTS[..1], 100)).unwrap();
    eprintln!(
        "one request of 1 prompt ({SIZE}x{SIZE}, {STEPS} steps): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        alone[0].pixels == want[0],
        "a single prompt through Triton differs from local generation"
    );

    // Four prompts in one request: prompt i gets seed 100 + i.
    let started = Instant::now();
    let four = client.generate(&remote(&client, &PROMPTS[..4], 100)).unwrap();
    let four_s = started.elapsed().as_secs_f64();
    let identical = count_identical(&four, &want[..4], "the batch of 4");
    eprintln!("one request of 4 prompts: {four_s:.2} s; {identical} of 4 images identical to the prompt alone");

    // Eight single-prompt requests at once: the dynamic batcher groups them.
    let before = batch_stats(&client, "flux");
    let started = Instant::now();
    let served = client
        .generate_many(&remote(&client, &PROMPTS, 100), 8, max_batch)
        .unwrap();
    let (eight, seeds) = (served.images, served.seeds);
    assert!(
        served.made_by.len() == PROMPTS.len()
            && served
                .made_by
                .iter()
                .all(|m| m.precision_set == 0 && m.models["transformer"] == "transformer"),
        "every image on the primary models: {:?}",
        served.made_by
    );
    assert_eq!(
        seeds,
        (100..100 + PROMPTS.len() as i64).collect::<Vec<_>>(),
        "seeds as flux returned them"
    );
    let eight_s = started.elapsed().as_secs_f64();
    let after = batch_stats(&client, "flux");
    let identical = count_identical(&eight, &want, "8 concurrent requests");
    eprintln!("8 concurrent requests: {eight_s:.2} s; {identical} of 8 images identical to the prompt alone");
    eprintln!("flux batch stats (batch size, executions): before {before:?}, after {after:?}");
    assert!(
        batched_executions(&after) > batched_executions(&before),
        "no execution of flux ran more than one of the concurrent requests: {after:?}"
    );
    let metrics = flux_metrics(server);
    eprintln!("{metrics}");
    assert!(metrics.contains("flux_images_total"), "{metrics}");
}

/// The orchestrator's own metrics (`flux_*`) from Triton's metrics endpoint.
fn flux_metrics(server: &Server) -> String {
    let client = Client::new(&format!("http://127.0.0.1:{}", server.metrics_port)).unwrap();
    let text = client.get_text("/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with("flux_"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn bad_requests_get_clear_errors(server: &Server, dir: &Path) {
    use fluxbuild::client::Tensor;
    let client = server.client();
    let prompt = |p: &str| Tensor::bytes("prompt", &[1, 1], &[p.as_bytes()]);
    let int = |name: &str, v: i32| Tensor::i32(name, &[1, 1], &[v]);
    let cases: Vec<(&str, Vec<Tensor>, &str)> = vec![
        (
            "empty prompt",
            vec![prompt("  ")],
            "prompt 0 is empty or only whitespace [rule prompt_empty]",
        ),
        ("NUL bytes", vec![prompt("\0\0\0")], "[rule prompt_control]"),
        (
            "guidance 3e38",
            vec![prompt("a cat"), Tensor::f32("guidance", &[1, 1], &[3e38])],
            "[rule guidance_range]",
        ),
        (
            "seed and noise",
            vec![
                prompt("a cat"),
                Tensor::i64("seed", &[1, 1], &[1]),
                Tensor::f32("noise", &[1, 16, 8, 8], &[0.0; 1024]),
            ],
            "[rule seed_and_noise]",
        ),
        ("no prompt", vec![int("steps", 2)], "prompt"),
        (
            "wrong dtype",
            vec![prompt("a cat"), Tensor::f32("steps", &[1, 1], &[2.0])],
            "data-type",
        ),
        (
            "size not a multiple of 16",
            vec![prompt("a cat"), int("height", 40)],
            "height 40 is not a multiple of 16",
        ),
        (
            "size too large",
            vec![prompt("a cat"), int("width", 4096)],
            "width 4096 is out of range 16..=128 [rule size_range]",
        ),
        (
            "steps 0",
            vec![prompt("a cat"), int("steps", 0)],
            "steps 0 is out of range 1..=50 [rule steps_range]",
        ),
        (
            "noise of the wrong shape",
            vec![prompt("a cat"), Tensor::f32("noise", &[1, 16, 2, 2], &[0.0; 64])],
            "input 'noise' has shape [1, 16, 2, 2], expected [1, 16, 8, 8]",
        ),
    ];
    // Not UTF-8, and a 10 MB prompt: refused before any decoding or tokenizing.
    let invalid: &[u8] = b"a \xff cat";
    let huge = vec![b'x'; 10 << 20];
    let byte_cases: Vec<(&str, Vec<Tensor>, &str)> = vec![
        (
            "invalid UTF-8",
            vec![Tensor::bytes("prompt", &[1, 1], &[invalid])],
            "[rule prompt_not_utf8]",
        ),
        (
            "a 10 MB prompt",
            vec![Tensor::bytes("prompt", &[1, 1], &[&huge])],
            "[rule prompt_too_long]",
        ),
    ];
    for (what, inputs, expected) in cases.into_iter().chain(byte_cases) {
        let started = Instant::now();
        let err = client.infer("flux", &inputs, &["image"]).expect_err(what);
        eprintln!("{what}: refused in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        let text = format!("{err:#}");
        eprintln!("{what}: {text}");
        assert!(
            text.contains(expected),
            "{what}: error {text:?} does not say {expected:?}"
        );
        assert!(
            text.contains("(400)"),
            "{what}: a bad request is answered 400 Bad Request: {text}"
        );
        assert!(client.model_ready("flux").unwrap(), "flux is not ready after: {what}");
    }
    // One bad request in a dynamic batch does not fail the good ones beside it.
    std::thread::scope(|scope| {
        let bad = scope.spawn(|| client.infer("flux", &[prompt("")], &["image"]));
        let client = &client;
        let good: Vec<_> = (0..3)
            .map(|i| scope.spawn(move || client.generate(&remote(client, &PROMPTS[i..=i], 7))))
            .collect();
        assert!(bad.join().unwrap().is_err());
        for g in good {
            assert_eq!(g.join().unwrap().unwrap().len(), 1);
        }
    });
    // The shared table of bad requests: `generate --server` (checked locally against the table
    // the server publishes) and the server itself refuse each by the same rule.
    let long = "x".repeat(5000);
    let shared: Vec<(Vec<&str>, Vec<Tensor>)> = vec![
        (
            vec!["--prompt", "a cat", "--guidance", "3e38"],
            vec![prompt("a cat"), Tensor::f32("guidance", &[1, 1], &[3e38])],
        ),
        (
            vec!["--prompt", "a cat", "--steps", "0"],
            vec![prompt("a cat"), int("steps", 0)],
        ),
        (
            vec!["--prompt", "a cat", "--height", "40"],
            vec![prompt("a cat"), int("height", 40)],
        ),
        (
            vec!["--prompt", "a cat", "--width", "4096"],
            vec![prompt("a cat"), int("width", 4096)],
        ),
        (vec!["--prompt", "a\u{1}cat"], vec![prompt("a\u{1}cat")]),
        (vec!["--prompt", "   "], vec![prompt("   ")]),
        (vec!["--prompt", &long], vec![prompt(&long)]),
        (
            vec!["--prompt", "a cat", "--seed", "1", "--noise", "noise.safetensors"],
            vec![
                prompt("a cat"),
                Tensor::i64("seed", &[1, 1], &[1]),
                Tensor::f32("noise", &[1, 16, 8, 8], &[0.0; 1024]),
            ],
        ),
    ];
    for (args, inputs) in shared {
        let out = dir.join("never.png");
        let (ok, _, cli) = fluxbuild(
            &[
                &["generate", "--server", &server.url()],
                &args[..],
                &["--out", path(&out)],
            ]
            .concat(),
        );
        let served = format!("{:#}", client.infer("flux", &inputs, &["image"]).expect_err("bad"));
        let (cli_rule, server_rule) = (
            fluxbuild::generate::request::rule_of(&cli),
            fluxbuild::generate::request::rule_of(&served),
        );
        eprintln!("{:?}: CLI {cli_rule:?}, server {server_rule:?}", &args[..2]);
        assert!(
            !ok && cli_rule.is_some() && cli_rule == server_rule,
            "CLI: {cli}\nserver: {served}"
        );
    }

    // `fluxbuild generate --server` checks a request against the deployment before sending it,
    // and says when there is no server.
    let (url, never_written) = (server.url(), dir.join("never-written.png"));
    let (ok, _, err) = fluxbuild(&[
        "generate",
        "--server",
        &url,
        "--prompt",
        "a cat",
        "--width",
        "256",
        "--out",
        path(&never_written),
    ]);
    assert!(
        !ok && err.contains("width 256 is out of range 16..=128 (what the Triton deployment at"),
        "{err}"
    );
    let down = format!("http://127.0.0.1:{}", fluxbuild::serve::free_port().unwrap());
    let (ok, _, err) = fluxbuild(&[
        "generate",
        "--server",
        &down,
        "--prompt",
        "a cat",
        "--out",
        path(&never_written),
    ]);
    assert!(!ok && err.contains("not answering"), "{err}");
    assert!(!never_written.exists());
}

fn unloading_the_transformer_names_it_and_loading_recovers(server: &Server, models: &ExportedModels) {
    let client = server.client();
    let want = local(models, PROMPTS[1], 5);
    client.repository("transformer", "unload").unwrap();
    let err = format!(
        "{:#}",
        client.generate(&remote(&client, &PROMPTS[1..2], 5)).unwrap_err()
    );
    eprintln!("with transformer unloaded: {err}");
    assert!(
        err.contains("network 'transformer' failed") && err.contains("(503)"),
        "with a network missing, flux answers 503 UNAVAILABLE: {err}"
    );
    assert!(client.model_ready("flux").unwrap());
    client.repository("transformer", "load").unwrap();
    let images = client.generate(&remote(&client, &PROMPTS[1..2], 5)).unwrap();
    assert!(
        images[0].pixels == want,
        "after reloading the transformer the image differs from local generation"
    );
}

/// The orchestrator counts host<->device copies (none on the cpu target: no device).
fn copies_reported(server: &Server) {
    let log = server.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("host<->device copies"))
        .expect("the orchestrator logs its copies");
    eprintln!("{}", line.trim());
    assert!(
        line.contains("0 host->device, 0 device->host") && line.contains("on cpu"),
        "{line}"
    );
    let metrics = flux_metrics(server);
    assert!(metrics.contains("flux_host_device_copies_total"), "{metrics}");
}

#[test]
fn schnell_with_a_broken_transformer_falls_back_to_the_alternative() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    let alternative = format!("transformer={}", path(&models.join("transformer")));
    package_cpu(&models, &repo, &["--alternative", &alternative]);
    // The primary's graph is damaged after packaging (the repository holds a link: replace it).
    let graph = repo.join("transformer/1/model.onnx");
    std::fs::remove_file(&graph).unwrap();
    std::fs::write(&graph, b"not an onnx graph").unwrap();
    let server = start(&repo, false);
    let client = server.client();
    assert!(!client.model_ready("transformer").unwrap());
    let deployment = client.deployment().unwrap();
    assert_eq!(
        (
            deployment.variant.name(),
            deployment.defaults.steps,
            deployment.defaults.max_sequence_length
        ),
        ("schnell", 2, 256)
    );
    let served = client.generate_served(&remote(&client, &PROMPTS[2..3], 9)).unwrap();
    let images = served.images;
    let want = local(&ExportedModels::open(&models).unwrap(), PROMPTS[2], 9);
    assert!(
        images[0].pixels == want,
        "served by transformer_alt1: PSNR {:.1} dB against local generation",
        psnr(&images[0].pixels, &want)
    );
    // The whole image on the fallback precision set (transformer_alt1 with the primary others), said so.
    let log = server.log_text();
    assert!(
        log.contains("on fallback precision set 1: {'clip': 'clip', 't5': 't5', 'transformer': 'transformer_alt1', 'vae_decoder': 'vae_decoder'}"),
        "{log}"
    );
    // And in the response (output `models`), as `generate --server` reports it.
    let fallback = MadeBy {
        precision_set: 1,
        models: [
            ("clip", "clip"),
            ("t5", "t5"),
            ("transformer", "transformer_alt1"),
            ("vae_decoder", "vae_decoder"),
        ]
        .into_iter()
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect(),
    };
    assert_eq!(served.made_by, std::slice::from_ref(&fallback));
    let png = dir.path().join("fallback.png");
    let report = fluxbuild_ok(&[
        "generate",
        "--server",
        &server.url(),
        "--prompt",
        PROMPTS[2],
        "--seed",
        "9",
        "--out",
        path(&png),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let reported: Vec<MadeBy> = serde_json::from_value(report["server_models"].clone()).unwrap();
    assert_eq!(reported, [fallback], "{report}");
    let (ok, out, err) = fluxbuild(&[
        "generate",
        "--server",
        &server.url(),
        "--prompt",
        PROMPTS[2],
        "--out",
        path(&png),
    ]);
    assert!(
        ok && out.contains(
            "on fallback precision set 1 (clip=clip, t5=t5, transformer=transformer_alt1, vae_decoder=vae_decoder)"
        ),
        "{out}{err}"
    );
}

/// `fluxbuild serve` supervises: a killed backend stub makes `flux` not ready within 5 s, the
/// network is reloaded, and the deployment serves again.
#[test]
fn a_killed_backend_is_noticed_and_the_deployment_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let port = fluxbuild::serve::free_port().unwrap();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(["serve", "--repo", path(&repo), "--http-port", &port.to_string()])
        .args(["--grpc-port", &fluxbuild::serve::free_port().unwrap().to_string()])
        .args(["--metrics-port", &fluxbuild::serve::free_port().unwrap().to_string()])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let wait = |ready: bool, limit: f64| {
        let started = Instant::now();
        while client.model_ready("flux").unwrap_or(false) != ready {
            assert!(
                started.elapsed().as_secs_f64() < limit,
                "flux ready != {ready} after {limit} s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        started.elapsed().as_secs_f64()
    };
    wait(true, 180.0);
    let before = client.generate(&remote(&client, &PROMPTS[..1], 3)).unwrap();
    let pid = stub_pid(&repo, "transformer");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let noticed = wait(false, 5.0);
    let recovered = wait(true, 60.0);
    eprintln!("killed transformer stub: flux not ready after {noticed:.2} s, ready again {recovered:.2} s later");
    let after = client.generate(&remote(&client, &PROMPTS[..1], 3)).unwrap();
    assert!(
        after[0].pixels == before[0].pixels,
        "after recovery the same seed gives another image"
    );
    // One of `flux`'s instances (the others live on; requests routed to the dead one would fail).
    // The recovery reloaded `flux`: its old instances' stubs exit a few seconds after the new
    // ones are up (Triton drains the old version). Once only the new ones are left:
    let instances = triton_support::instances(&repo, "flux");
    let started = Instant::now();
    while processes_of(&repo.join("flux")).len() != instances {
        assert!(
            started.elapsed().as_secs() < 30,
            "old flux stubs still there after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc::kill(stub_pid(&repo, "flux"), libc::SIGKILL) };
    let noticed = wait(false, 5.0);
    let recovered = wait(true, 60.0);
    eprintln!("killed one flux stub: flux not ready after {noticed:.2} s, ready again {recovered:.2} s later");
    for seed in 0..8 {
        let request = remote(&client, &PROMPTS[..1], seed);
        client
            .generate(&request)
            .unwrap_or_else(|e| panic!("seed {seed} after recovery: {e:#}"));
    }
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    assert_nothing_left(&repo, "serve stopped");
}

/// Stops, when dropped, the server a detached serve left running: a failing test does not leave
/// it serving (and holding about 1 GB) for the tests after it.
struct StopOnDrop(std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fluxbuild(&["stop", "--pid-file", path(&self.0)]);
        }
    }
}

/// A foreground `fluxbuild serve`, stopped (SIGTERM: it stops its server) if its test ends first.
struct ServeChild(std::process::Child);

impl Drop for ServeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

/// `fluxbuild serve --detach` on `repo` (free ports, the pid file beside it): whether it
/// succeeded, its stderr, the HTTP port and the pid file (whose server is stopped at the end of
/// the calling test, also when it fails; see `StopOnDrop`).
fn serve_detached(repo: &Path) -> (bool, String, String, std::path::PathBuf, StopOnDrop) {
    let port = fluxbuild::serve::free_port().unwrap().to_string();
    let pid_file = repo.with_extension("pid");
    let log = repo.with_extension("log");
    let (ok, _, stderr) = fluxbuild(&[
        "serve",
        "--repo",
        path(repo),
        "--http-port",
        &port,
        "--grpc-port",
        &fluxbuild::serve::free_port().unwrap().to_string(),
        "--metrics-port",
        &fluxbuild::serve::free_port().unwrap().to_string(),
        "--detach",
        "--pid-file",
        path(&pid_file),
        "--log",
        path(&log),
        "--timeout",
        "180",
    ]);
    let stop = StopOnDrop(pid_file.clone());
    (ok, stderr, port, pid_file, stop)
}

/// `fluxbuild serve` on a repository where a network's only model fails to load: Triton still
/// calls `flux` ready, but serve names the model with Triton's reason, stops the server and exits
/// non-zero (no pid file, nothing left listening). With an alternative that loads, it serves on
/// that and says why the primary is not ready.
#[test]
fn a_network_that_fails_to_load_is_named_and_serve_stops() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    // clip's config with an ill-typed parameter: its model.py refuses it at load.
    let break_clip = |repo: &Path| {
        let config = repo.join("clip/config.pbtxt");
        let text = std::fs::read_to_string(&config).unwrap();
        let at = text
            .find("key: \"intra_op_threads\"")
            .expect("intra_op_threads in clip's config");
        let (head, tail) = text.split_at(at);
        let tail = tail.replacen("string_value: \"0\"", "string_value: \"all\"", 1);
        std::fs::write(&config, format!("{head}{tail}")).unwrap();
    };
    let why = "model `clip` (clip) is UNAVAILABLE: Internal: ParameterError: config.pbtxt of clip: \
               parameter 'intra_op_threads' is 'all', expected int";

    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    break_clip(&repo);
    let (ok, stderr, port, pid_file, _stop) = serve_detached(&repo);
    assert!(!ok, "serve succeeded with clip unloadable:\n{stderr}");
    assert!(
        stderr.contains(&format!("error: no ready model for clip ({why}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("the deployment cannot serve; stopped the server"),
        "{stderr}"
    );
    assert!(!pid_file.exists(), "a pid file for a stopped server");
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    assert!(client.model_ready("flux").is_err(), "a server still answers on {port}");

    let repo = dir.path().join("repo-alt");
    let alternative = format!("clip={}", path(&models.join("clip")));
    package_cpu(&models, &repo, &["--alternative", &alternative]);
    break_clip(&repo);
    let (ok, stderr, port, pid_file, _stop) = serve_detached(&repo);
    assert!(ok, "serve with a loadable alternative failed:\n{stderr}");
    assert!(stderr.contains(&format!("warning: {why}")), "{stderr}");
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    assert!(client.model_ready("flux").unwrap() && client.model_ready("clip_alt1").unwrap());
    fluxbuild_ok(&["stop", "--pid-file", path(&pid_file)]);
    assert_nothing_left(&repo, "fluxbuild stop");
}

/// Triton's Python backend sometimes aborts the whole server while it starts the stubs
/// (triton-inference-server/server#8882). A model whose stub aborts the server (SIGABRT, as that
/// crash does) at its first load only: serve starts the server once more, says so, and serves.
/// One that aborts it every time: serve fails after the second attempt, naming the signal.
#[test]
fn a_server_that_aborts_while_starting_is_started_once_more() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    // The repository plus a model whose stub aborts its parent, tritonserver, at load: at every
    // load, or at the first only (the stub leaves a marker file).
    let with_aborting_model = |name: &str, every_load: bool| {
        let repo = dir.path().join(name);
        package_cpu(&models, &repo, &[]);
        let model = repo.join("aborts_tritonserver");
        std::fs::create_dir_all(model.join("1")).unwrap();
        let config = r#"backend: "python"
max_batch_size: 0
input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"#;
        std::fs::write(model.join("config.pbtxt"), config).unwrap();
        let marker = dir.path().join(format!("{name}.aborted"));
        let script = format!(
            r#"import os, signal

class TritonPythonModel:
    def initialize(self, args):
        if {every_load} or not os.path.exists({marker:?}):
            open({marker:?}, "w").close()
            os.kill(os.getppid(), signal.SIGABRT)

    def execute(self, requests):
        return []
"#,
            every_load = if every_load { "True" } else { "False" },
        );
        std::fs::write(model.join("1/model.py"), script).unwrap();
        (repo, marker)
    };
    let restarts = |repo: &Path| {
        let log = std::fs::read_to_string(repo.with_extension("log")).unwrap();
        log.matches("fluxbuild: tritonserver was killed (signal: 6").count()
    };

    let (repo, marker) = with_aborting_model("aborts-once", false);
    let (ok, stderr, port, pid_file, _stop) = serve_detached(&repo);
    assert!(ok, "serve after one abort failed:\n{stderr}");
    assert!(marker.exists(), "the model never aborted the server");
    assert!(
        stderr.contains(
            "warning: tritonserver was killed (signal: 6 (SIGABRT)) before it was ready; started it once more"
        ),
        "{stderr}"
    );
    assert_eq!(
        restarts(&repo),
        1,
        "{}",
        std::fs::read_to_string(repo.with_extension("log")).unwrap()
    );
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    assert!(client.model_ready("flux").unwrap());
    fluxbuild_ok(&["stop", "--pid-file", path(&pid_file)]);
    // The first attempt's stubs outlived it (Triton leaves them, and they then kept the second
    // server from shutting down): killed, so nothing of either is left.
    assert_nothing_left(&repo, "after the restarted server was stopped");

    let (repo, _) = with_aborting_model("aborts-always", true);
    let (ok, stderr, port, pid_file, _stop) = serve_detached(&repo);
    assert!(!ok, "serve succeeded with a server that aborts at every start");
    assert!(
        stderr.contains("error: serving")
            && stderr.contains("tritonserver exited (signal: 6 (SIGABRT)) before it was ready"),
        "{stderr}"
    );
    assert_eq!(restarts(&repo), 1, "one more attempt, not more:\n{stderr}");
    assert!(!pid_file.exists(), "a pid file for a server that never started");
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    assert!(client.model_ready("flux").is_err(), "a server still answers on {port}");
    assert_nothing_left(&repo, "after both attempts died");
}

/// Ctrl-C or `kill PID` of a foreground serve stops its server (stubs included) and removes the
/// pid file, exit 128 + the signal; SIGTERM while a detached serve is still starting its server
/// stops that server too (it would otherwise run on, unknown: no pid file yet).
#[test]
fn an_interrupted_serve_leaves_no_server_nor_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let serve_stderr = dir.path().join("serve.stderr");
    let serve = |extra: &[&str]| {
        let port = fluxbuild::serve::free_port().unwrap().to_string();
        let (grpc, metrics) = (
            fluxbuild::serve::free_port().unwrap(),
            fluxbuild::serve::free_port().unwrap(),
        );
        std::process::Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
            .args(["serve", "--repo", path(&repo), "--http-port", &port])
            .args(["--grpc-port", &grpc.to_string(), "--metrics-port", &metrics.to_string()])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&serve_stderr).unwrap())
            .spawn()
            .unwrap()
    };
    let pid_file = dir.path().join("serve.pid");
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut child = serve(&["--pid-file", path(&pid_file)]);
        let deadline = Instant::now() + Duration::from_secs(180);
        while !pid_file.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "serve ended before it was ready: {}",
                std::fs::read_to_string(&serve_stderr).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "serve was not ready in 180 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(child.wait().unwrap().code(), Some(128 + signal));
        assert!(!pid_file.exists(), "the pid file is left after signal {signal}");
        assert_nothing_left(&repo, &format!("serve stopped by signal {signal}"));
    }

    let detached_pid = dir.path().join("detached.pid");
    let mut child = serve(&["--detach", "--pid-file", path(&detached_pid)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_of(&repo).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve ended before starting its server"
        );
        assert!(Instant::now() < deadline, "no server started in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    assert!(!detached_pid.exists());
    assert_nothing_left(&repo, "detached serve stopped while starting");
}

/// `fluxbuild stop --pid-file FILE` ends what serve started: a detached server (its stubs end with
/// it), a foreground serve (which stops its own server), and after a server was killed (kill -9)
/// the stubs and step table it left. The pid file goes; a stale one naming another program is
/// left alone, and a missing one is said as such.
#[test]
fn fluxbuild_stop_ends_what_serve_started_and_what_a_killed_server_left() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let stop = |pid_file: &Path| -> serde_json::Value {
        let stdout = fluxbuild_ok(&["stop", "--pid-file", path(pid_file), "--json"]);
        serde_json::from_str(&stdout).unwrap()
    };
    let step_table = |server_pid: &str| Path::new("/dev/shm").join(format!("fluxbuild-steps-{server_pid}-flux"));

    let (ok, stderr, _, pid_file, _stop) = serve_detached(&repo);
    assert!(ok, "{stderr}");
    let server = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    assert!(
        step_table(&server).exists(),
        "no step table named as server_process.rs expects"
    );
    // A pid file older than its process (a pid taken since) is refused, the server left running.
    let older = dir.path().join("older.pid");
    std::fs::copy(&pid_file, &older).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&older)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let (ok, _, stderr) = fluxbuild(&["stop", "--pid-file", path(&older)]);
    assert!(!ok && stderr.contains("started after the file was written"), "{stderr}");
    assert!(older.exists() && !processes_of(&repo).is_empty());

    let stopped = stop(&pid_file);
    assert_eq!(
        (stopped["was"].as_str(), stopped["forced"].as_bool()),
        (Some("tritonserver"), Some(false))
    );
    assert!(!pid_file.exists());
    assert_nothing_left(&repo, "fluxbuild stop");
    assert!(!step_table(&server).exists());

    // A killed server leaves its stubs (one per instance) and its step table, forever.
    let (ok, stderr, _, pid_file, _stop) = serve_detached(&repo);
    assert!(ok, "{stderr}");
    let server = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    unsafe { libc::kill(server.parse().unwrap(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(1));
    let stubs = processes_of(&repo).len();
    assert!(
        stubs > 0,
        "the killed server's stubs ended by themselves: nothing to test"
    );
    let stopped = stop(&pid_file);
    assert_eq!(stopped["was"], "not_running");
    assert_eq!(stopped["stubs_killed"], stubs);
    assert_nothing_left(&repo, "fluxbuild stop after kill -9");
    assert!(!step_table(&server).exists(), "the killed server's step table is left");
    let (ok, _, stderr) = fluxbuild(&["stop", "--pid-file", path(&pid_file)]);
    assert!(!ok && stderr.contains("no such file, so nothing to stop"), "{stderr}");

    // A foreground serve: it stops its server and removes the pid file itself.
    let foreground_pid = dir.path().join("foreground.pid");
    let port = fluxbuild::serve::free_port().unwrap().to_string();
    let (grpc, metrics) = (
        fluxbuild::serve::free_port().unwrap(),
        fluxbuild::serve::free_port().unwrap(),
    );
    let mut serve = ServeChild(
        std::process::Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
            .args([
                "serve",
                "--repo",
                path(&repo),
                "--http-port",
                &port,
                "--pid-file",
                path(&foreground_pid),
            ])
            .args(["--grpc-port", &grpc.to_string(), "--metrics-port", &metrics.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while !foreground_pid.exists() {
        assert!(serve.0.try_wait().unwrap().is_none(), "serve ended before it was ready");
        assert!(Instant::now() < deadline, "serve was not ready in 180 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stop(&foreground_pid)["was"], "fluxbuild_serve");
    assert_eq!(serve.0.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    assert!(!foreground_pid.exists());
    assert_nothing_left(&repo, "fluxbuild stop of a foreground serve");

    // A stale pid file whose pid another program has now (this test): both left alone.
    let stale = dir.path().join("stale.pid");
    std::fs::write(&stale, format!("{}\n", std::process::id())).unwrap();
    let (ok, _, stderr) = fluxbuild(&["stop", "--pid-file", path(&stale)]);
    assert!(
        !ok && stderr.contains("not a tritonserver or `fluxbuild serve`"),
        "{stderr}"
    );
    assert!(stale.exists());
}

/// With Triton's tracing on, the orchestrator's network calls (BLS) are traced as children of the
/// `flux` request and carry its request id (the trace file Triton writes, one file per trace).
#[test]
fn network_calls_carry_the_request_id_and_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let traces = dir.path().join("trace.json");
    let install = Installation::find(None).expect("the Triton venv (run `make triton-venv`)");
    let mut options = ServerOptions::new(&repo).unwrap();
    options.ready_timeout = Duration::from_secs(180);
    for setting in [
        format!("triton,file={}", path(&traces)),
        "triton,log-frequency=1".into(),
        "rate=1".into(),
        "level=TIMESTAMPS".into(),
    ] {
        options.extra_args.extend(["--trace-config".to_string(), setting]);
    }
    let server = Server::start(&install, &options).unwrap();
    let body = serde_json::json!({
        "id": "traced-request-7",
        "inputs": [
            { "name": "prompt", "datatype": "BYTES", "shape": [1, 1], "data": ["a traced cat"] },
            { "name": "steps", "datatype": "INT32", "shape": [1, 1], "data": [2] },
        ],
    });
    let answer = server.client().post_json("/v2/models/flux/infer", &body).unwrap();
    assert_eq!(answer["id"], "traced-request-7", "{answer}");

    // Triton writes the traces as they complete, to trace.json.0, trace.json.1, ...
    let read = || -> Vec<serde_json::Value> {
        let mut entries = Vec::new();
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let file = file.unwrap().path();
            if file.file_name().unwrap().to_string_lossy().starts_with("trace.json") {
                if let Ok(serde_json::Value::Array(list)) =
                    serde_json::from_slice(&std::fs::read(&file).unwrap_or_default())
                {
                    entries.extend(list);
                }
            }
        }
        entries
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let children = loop {
        let entries = read();
        let parent = entries
            .iter()
            .find(|e| e["model_name"] == "flux" && e["request_id"] == "traced-request-7")
            .map(|e| e["id"].clone());
        let children: BTreeSet<String> = entries
            .iter()
            .filter(|e| parent.is_some() && e["parent_id"] == *parent.as_ref().unwrap())
            .map(|e| {
                assert_eq!(
                    e["request_id"], "traced-request-7",
                    "a child without the request id: {e}"
                );
                e["model_name"].as_str().unwrap().to_string()
            })
            .collect();
        if children.len() == 4 || Instant::now() > deadline {
            break children;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        children,
        ["clip", "t5", "transformer", "vae_decoder"].map(String::from).into(),
        "the network calls traced under the flux request"
    );
}

/// Mistakes `serve` catches before it starts a server: a port another process holds (its server
/// would otherwise answer the readiness check), port 0, and a pid file it could not write (which
/// would otherwise leave a server nobody knows of).
#[test]
fn serve_refuses_taken_ports_and_unwritable_pid_files_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("schnell", &dir.path().join("models"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let free = || fluxbuild::serve::free_port().unwrap().to_string();
    let pid_file = dir.path().join("triton.pid");
    let serve = |ports: [&str; 3], pid_file: &Path| {
        let mut args = vec!["serve", "--repo", path(&repo), "--detach", "--pid-file", path(pid_file)];
        args.extend([
            "--http-port",
            ports[0],
            "--grpc-port",
            ports[1],
            "--metrics-port",
            ports[2],
        ]);
        fluxbuild(&args)
    };
    let (http, metrics) = (free(), free());
    let (ok, _, stderr) = serve([&http, &taken_port, &metrics], &pid_file);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("--grpc-port {taken_port}: 127.0.0.1:{taken_port} is taken")),
        "{stderr}"
    );
    let (ok, _, stderr) = serve(["0", &free(), &free()], &pid_file);
    assert!(!ok && stderr.contains("0 is not a port to listen on"), "{stderr}");
    let nowhere = dir.path().join("no-such-folder/triton.pid");
    let (ok, _, stderr) = serve([&free(), &free(), &free()], &nowhere);
    assert!(
        !ok && stderr.contains("the folder") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!pid_file.exists());
    let client = Client::new(&format!("http://127.0.0.1:{http}")).unwrap();
    assert!(client.live().is_err(), "a server answers on {http}");
}
