//! A real Triton server (the pinned PyPI build, CPU, Python backend) serving a repository that
//! `fluxbuild package --target cpu` wrote from tiny FLUX-shaped graphs. Every test starts its own
//! server on free loopback ports and stops it; every wait is bounded.
//! Needs the Triton venv: `make triton-venv`.

mod common;
mod triton_support;

use fluxbuild::client::{Client, ImageRequest};
use fluxbuild::package::{package, Options, Target};
use fluxbuild::serve::{Installation, Server, ServerOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;
use triton_support::reference::{self, psnr};

const SIZE: u32 = 32;
const STEPS: u32 = 3;
const LENGTH: u32 = 16;
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

fn options(models: &Path, out: &Path) -> Options {
    Options {
        models: models.to_path_buf(),
        out: out.to_path_buf(),
        target: Target::Cpu,
        engines: None,
        max_batch: 4,
        queue_delay_us: 200_000,
        height: SIZE,
        width: SIZE,
        max_height: 64,
        max_width: 64,
        steps: Some(STEPS),
        max_steps: 50,
        max_sequence_length: Some(LENGTH),
        alternatives: vec![],
        force: false,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    models: PathBuf,
    repo: PathBuf,
}

fn setup(edit: impl FnOnce(&mut Options)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("export");
    triton_support::write_tiny_export(&models);
    let repo = dir.path().join("repo");
    let mut opts = options(&models, &repo);
    edit(&mut opts);
    package(&opts, &|_| indicatif::ProgressBar::hidden()).unwrap();
    Setup { _dir: dir, models, repo }
}

fn start(repo: &Path, explicit: bool) -> Server {
    let install = Installation::find(None).expect("the Triton venv (run `make triton-venv`)");
    let mut opts = ServerOptions::new(repo).unwrap();
    opts.explicit_model_control = explicit;
    opts.ready_timeout = std::time::Duration::from_secs(180);
    let started = Instant::now();
    let server = Server::start(&install, &opts).unwrap();
    eprintln!("server ready in {:.1} s", started.elapsed().as_secs_f64());
    server
}

fn settings(seed: u64) -> reference::Settings {
    reference::Settings { height: SIZE as usize, width: SIZE as usize, steps: STEPS as usize, guidance: 3.5, seed, max_sequence_length: LENGTH as usize }
}

fn request(prompts: &[&str], seed: u64) -> ImageRequest {
    ImageRequest { prompts: prompts.iter().map(|p| p.to_string()).collect(), seed, ..Default::default() }
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    let db = psnr(got, want);
    assert!(db >= 60.0, "{what}: PSNR {db:.1} dB against the local pipeline (need >= 60)");
}

#[test]
fn one_prompt_gives_the_local_pipelines_image_through_the_rust_and_python_clients() {
    let s = setup(|_| {});
    let server = start(&s.repo, false);
    let prompt = PROMPTS[0];
    let want = reference::generate(&s.models, prompt, &settings(42));

    let started = Instant::now();
    let images = server.client().generate(&request(&[prompt], 42)).unwrap();
    eprintln!("one {SIZE}x{SIZE} image, {STEPS} steps: {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    assert_eq!((images.len(), images[0].width, images[0].height), (1, SIZE as usize, SIZE as usize));
    let identical = images[0].pixels == want;
    eprintln!("rust client vs local: identical={identical}, PSNR {:.1} dB", psnr(&images[0].pixels, &want));
    assert_same(&images[0].pixels, &want, "rust client");

    let raw = s.repo.parent().unwrap().join("python.rgb");
    let python = Installation::find(None).unwrap().path[0].join("python3");
    let script = common::repo().join("tests/triton_python_client.py");
    let status = std::process::Command::new(python)
        .args([script.to_str().unwrap(), &server.url(), prompt, "42", &SIZE.to_string(), &SIZE.to_string(), &STEPS.to_string()])
        .arg(&raw)
        .status()
        .unwrap();
    assert!(status.success(), "the tritonclient script failed");
    let from_python = std::fs::read(&raw).unwrap();
    assert_eq!(from_python, images[0].pixels, "tritonclient and the Rust client got different images");

    // A different seed gives a different image (the seed reaches the noise).
    let other = server.client().generate(&request(&[prompt], 43)).unwrap();
    assert_ne!(other[0].pixels, images[0].pixels);
}

fn batch_stats(client: &Client, model: &str) -> Vec<(u64, u64)> {
    let stats = client.get_json(&format!("/v2/models/{model}/stats")).unwrap();
    stats["model_stats"][0]["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["batch_size"].as_u64().unwrap(), b["compute_infer"]["count"].as_u64().unwrap()))
        .collect()
}

#[test]
fn batches_and_concurrent_requests_give_every_prompt_its_own_image() {
    let s = setup(|_| {});
    let server = start(&s.repo, false);
    let client = server.client();
    let want: Vec<Vec<u8>> = PROMPTS.iter().enumerate().map(|(i, p)| reference::generate(&s.models, p, &settings(100 + i as u64))).collect();

    // Four prompts in one request: prompt i gets seed 100 + i.
    let started = Instant::now();
    let four = client.generate(&request(&PROMPTS[..4], 100)).unwrap();
    eprintln!("one request of 4 prompts: {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    for (i, image) in four.iter().enumerate() {
        assert_same(&image.pixels, &want[i], &format!("prompt {i} of the batch of 4"));
    }

    // Eight single-prompt requests at once: the dynamic batcher groups them.
    let before = batch_stats(&client, "flux");
    let started = Instant::now();
    let eight = client.generate_many(&request(&PROMPTS, 100), 8).unwrap();
    eprintln!("8 concurrent requests: {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    for (i, image) in eight.iter().enumerate() {
        assert_same(&image.pixels, &want[i], &format!("concurrent request {i}"));
    }
    let after = batch_stats(&client, "flux");
    eprintln!("flux batch stats (batch size, executions): before {before:?}, after {after:?}");
    let batched: u64 = after.iter().filter(|(size, _)| *size > 1).map(|(_, n)| n).sum();
    let batched_before: u64 = before.iter().filter(|(size, _)| *size > 1).map(|(_, n)| n).sum();
    assert!(batched > batched_before + 0, "no execution of flux ran more than one prompt for the concurrent requests: {after:?}");
    let metrics = fluxbuild_metrics(&server);
    eprintln!("{metrics}");
    assert!(metrics.contains("flux_images_total"), "{metrics}");
}

fn fluxbuild_metrics(server: &Server) -> String {
    let out = std::process::Command::new("curl").arg("-s").arg(format!("http://127.0.0.1:{}/metrics", server.metrics_port)).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("flux_")).collect::<Vec<_>>().join("\n"),
        Err(_) => String::new(),
    }
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    use fluxbuild::client::Tensor;
    let s = setup(|_| {});
    let server = start(&s.repo, false);
    let client = server.client();
    let prompt = |p: &str| Tensor::bytes("prompt", &[1, 1], &[p.as_bytes()]);
    let int = |name: &str, v: i32| Tensor::i32(name, &[1, 1], &[v]);
    let cases: Vec<(&str, Vec<Tensor>, &str)> = vec![
        ("empty prompt", vec![prompt("  ")], "prompt 0 is empty"),
        ("no prompt", vec![int("steps", 2)], "prompt"),
        ("wrong dtype", vec![prompt("a cat"), Tensor::f32("steps", &[1, 1], &[2.0])], "data-type"),
        ("size not a multiple of 16", vec![prompt("a cat"), int("height", 40)], "height 40 is not a multiple of 16"),
        ("size too large", vec![prompt("a cat"), int("width", 4096)], "width 4096 is outside"),
        ("steps 0", vec![prompt("a cat"), int("steps", 0)], "steps 0 must be between 1 and 50"),
        ("noise of the wrong shape", vec![prompt("a cat"), Tensor::f32("noise", &[1, 16, 2, 2], &[0.0; 64])], "input 'noise' has shape [1, 16, 2, 2], expected [1, 16, 4, 4]"),
    ];
    for (what, inputs, expected) in cases {
        let err = client.infer("flux", &inputs, &["image"]).expect_err(what);
        let text = format!("{err:#}");
        eprintln!("{what}: {text}");
        assert!(text.contains(expected), "{what}: error {text:?} does not say {expected:?}");
        assert!(client.model_ready("flux").unwrap(), "flux is not ready after: {what}");
    }
    // One bad request in a dynamic batch does not fail the good ones beside it.
    std::thread::scope(|scope| {
        let bad = scope.spawn(|| client.infer("flux", &[prompt("")], &["image"]));
        let client = &client;
        let good: Vec<_> = (0..3).map(|i| scope.spawn(move || client.generate(&request(&[PROMPTS[i]], 7)))).collect();
        assert!(bad.join().unwrap().is_err());
        for g in good {
            assert_eq!(g.join().unwrap().unwrap().len(), 1);
        }
    });
    // Clear client-side errors: no server, and a server that refuses.
    let down = Client::new(&format!("http://127.0.0.1:{}", fluxbuild::serve::free_port().unwrap())).unwrap();
    let err = format!("{:#}", down.generate_many(&request(&["a cat"], 0), 1).unwrap_err());
    assert!(err.contains("not answering"), "{err}");
}

#[test]
fn unloading_the_transformer_names_it_and_loading_it_again_recovers() {
    let s = setup(|_| {});
    let server = start(&s.repo, true);
    let client = server.client();
    let want = reference::generate(&s.models, PROMPTS[1], &settings(5));
    client.repository("transformer", "unload").unwrap();
    let err = format!("{:#}", client.generate(&request(&[PROMPTS[1]], 5)).unwrap_err());
    eprintln!("with transformer unloaded: {err}");
    assert!(err.contains("network 'transformer' failed"), "{err}");
    client.repository("transformer", "load").unwrap();
    let images = client.generate(&request(&[PROMPTS[1]], 5)).unwrap();
    assert_same(&images[0].pixels, &want, "after reloading the transformer");
}

#[test]
fn a_transformer_that_fails_to_load_falls_back_to_the_alternative() {
    let dir = tempfile::tempdir().unwrap();
    let alt = dir.path().join("alt");
    triton_support::write_tiny_export(&alt);
    let s = setup(|o| o.alternatives = vec![("transformer".into(), alt.join("transformer"))]);
    // The primary's graph is damaged after packaging: ONNX Runtime cannot load it.
    let graph = s.repo.join("transformer/1/model.onnx");
    std::fs::remove_file(&graph).unwrap();
    std::fs::write(&graph, b"not an onnx graph").unwrap();
    let server = start(&s.repo, false);
    let client = server.client();
    assert!(!client.model_ready("transformer").unwrap());
    let images = client.generate(&request(&[PROMPTS[2]], 9)).unwrap();
    let want = reference::generate(&alt, PROMPTS[2], &settings(9));
    assert_same(&images[0].pixels, &want, "served by transformer_alt1");
}
