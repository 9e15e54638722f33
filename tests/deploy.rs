//! deploy/ checked with real tools against a repository `fluxbuild package` wrote: the Helm chart
//! rendered and linted by Helm's SDK, manifests validated by kubernetes-validate, the KServe files
//! against the KServe SDK's CRD models, the Dockerfile by hadolint (tests/deploy_check.py in the
//! venv `make deploy-venv` builds); the readiness probe and `fluxbuild perf-data`'s requests against
//! a real Triton server.

mod triton_support;

use fluxbuild::client::Tensor;
use fluxbuild::deploy::perf_data::model_inputs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use triton_support::{export, fluxbuild, fluxbuild_ok, package_cpu, path, start, stub_pid};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn packaged(dir: &Path) -> PathBuf {
    let models = export("dev", &dir.join("models"));
    let repo = dir.join("repo");
    package_cpu(&models, &repo, &[]);
    repo
}

#[test]
fn chart_kserve_and_dockerfile_validate_with_real_tools() {
    let python = root().join(".cache/deploy-venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make deploy-venv` (scripts/deploy-venv.sh)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = packaged(dir.path());
    let output = Command::new(&python)
        .arg(root().join("tests/deploy_check.py"))
        .args(["--repo", path(&repo)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "deploy checks failed:\n{stdout}");
    assert!(stdout.contains("ok   pvc values: valid Kubernetes"), "{stdout}");
}

/// Each perf-data request as the KServe v2 tensors perf_analyzer sends (batch 1).
fn requests(repo: &Path, file: &Path) -> Vec<Vec<Tensor>> {
    let inputs = model_inputs(repo, "flux").unwrap();
    let data: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    data["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            entry
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, values)| {
                    let input = inputs.iter().find(|i| &i.name == name).expect("a declared input");
                    let value = &values[0];
                    match input.data_type.as_str() {
                        "TYPE_STRING" => Tensor::bytes(name, &[1, 1], &[value.as_str().unwrap().as_bytes()]),
                        "TYPE_INT32" => Tensor::i32(name, &[1, 1], &[value.as_i64().unwrap() as i32]),
                        "TYPE_INT64" => Tensor::i64(name, &[1, 1], &[value.as_i64().unwrap()]),
                        "TYPE_FP32" => Tensor::f32(name, &[1, 1], &[value.as_f64().unwrap() as f32]),
                        other => panic!("{name}: {other}"),
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn perf_data_requests_are_served_and_the_readiness_probe_tells_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let repo = packaged(dir.path());
    let file = dir.path().join("input-data.json");
    fluxbuild_ok(&[
        "perf-data",
        "--repo",
        path(&repo),
        "--prompt",
        "a photo of a cat",
        "--prompt",
        "a red bicycle",
        "--height",
        "32",
        "--width",
        "48",
        "--steps",
        "2",
        "--seed",
        "7",
        "--out",
        path(&file),
    ]);
    let requests = requests(&repo, &file);
    assert_eq!(requests.len(), 2);
    let seeds: Vec<&[u8]> = requests
        .iter()
        .map(|r| r.iter().find(|t| t.name == "seed").unwrap().data.as_slice())
        .collect();
    assert_eq!(seeds, [&7i64.to_le_bytes()[..], &8i64.to_le_bytes()[..]]);
    // Seeds count as `generate` counts them (u64, wrapping) and go as its client sends them (the
    // bits as an INT64): not through a float, which lost every seed above 2^53.
    let wide = dir.path().join("wide-seeds.json");
    let seed = u64::MAX.to_string();
    fluxbuild_ok(&[
        "perf-data",
        "--repo",
        path(&repo),
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--seed",
        &seed,
        "--out",
        path(&wide),
    ]);
    let data: serde_json::Value = serde_json::from_slice(&std::fs::read(&wide).unwrap()).unwrap();
    let seeds: Vec<i64> = data["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seed"][0].as_i64().unwrap())
        .collect();
    assert_eq!(seeds, [-1, 0]);
    // Requests the server would refuse are refused here, with its rule: not written for the load.
    let long = "x".repeat(5000);
    for (extra, rule) in [
        (&["--prompt", ""][..], "[rule prompt_empty]"),
        (&["--prompt", &long], "[rule prompt_too_long]"),
        (&["--prompt", "a", "--guidance", "nan"], "[rule guidance_range]"),
    ] {
        let rejected = dir.path().join("rejected.json");
        let mut args = vec!["perf-data", "--repo", path(&repo), "--out", path(&rejected)];
        args.extend(extra);
        let (ok, _, stderr) = fluxbuild(&args);
        assert!(
            !ok && stderr.contains(rule) && !rejected.exists(),
            "{extra:?}: {stderr}"
        );
    }

    let mut server = start(&repo, true);
    let client = server.client();
    for request in &requests {
        let outputs = client.infer("flux", request, &["image"]).unwrap();
        assert_eq!(outputs[0].shape, [1, 32, 48, 3], "one 32x48 RGB image per request");
    }

    let url = server.url();
    let probe = |models: &str| probe_with(&url, &["--models", models]);
    let all = "clip,t5,transformer,vae_decoder,flux";
    assert_eq!(probe(all), (true, String::new()));
    client.repository("transformer", "unload").unwrap();
    let (ready, why) = probe(all);
    eprintln!("transformer unloaded: {why}");
    assert!(!ready && why.starts_with("not ready: /v2/"), "{why}");
    client.repository("transformer", "load").unwrap();
    assert_eq!(probe(all), (true, String::new()));

    // Liveness: a killed backend stub leaves its model READY (Triton does not notice); the
    // liveness probe does, so the kubelet restarts the container.
    let live = || probe_with(&url, &["--live"]);
    assert_eq!(live(), (true, String::new()));
    let pid = stub_pid(&repo, "transformer");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // And one of `flux`'s instances: the others live on, but requests routed to it fail.
    unsafe { libc::kill(stub_pid(&repo, "flux"), libc::SIGKILL) };
    let started = Instant::now();
    let why = loop {
        match live() {
            (false, why) => break why,
            (true, _) => assert!(started.elapsed().as_secs() < 5, "live 5 s after its stub was killed"),
        }
    };
    eprintln!(
        "transformer stub killed: not live after {:.2} s: {why}",
        started.elapsed().as_secs_f64()
    );
    let flux = triton_support::instances(&repo, "flux");
    for expected in [
        format!("flux ({} of {flux} instances)", flux - 1),
        "transformer (0 of 1 instances)".into(),
        "READY without a live".into(),
    ] {
        assert!(why.contains(&expected), "{why}");
    }
    assert!(
        client.model_ready("transformer").unwrap(),
        "Triton itself still calls it ready"
    );

    server.stop().unwrap();
    let (ready, why) = probe(all);
    assert!(!ready && why.contains("/v2/health/ready"), "server stopped: {why}");
    let (alive, why) = live();
    assert!(!alive && why.starts_with("not live: "), "server stopped: {why}");
}

/// `deploy/ready.py --url URL ARGS`: (exit 0, its stderr).
fn probe_with(url: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("python3")
        .arg(root().join("deploy/ready.py"))
        .args(["--url", url])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn perf_data_refuses_what_the_repository_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let repo = packaged(dir.path());
    let out = dir.path().join("input-data.json");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "perf-data",
            "--repo",
            path(&repo),
            "--prompt",
            "a cat",
            "--out",
            path(&out),
        ];
        args.extend(extra);
        fluxbuild(&args)
    };
    for (extra, expected) in [
        (
            &["--height", "72"][..],
            "height 72: the repository serves 16..=128, a multiple of 16",
        ),
        (&["--width", "256"][..], "width 256: the repository serves 16..=128"),
        (&["--steps", "51"][..], "steps 51: the repository serves 1..=50"),
    ] {
        let (ok, _, err) = run(extra);
        assert!(!ok && err.contains(expected), "{extra:?}: {err}");
        assert!(!out.exists(), "nothing written for {extra:?}");
    }
    let models = dir.path().join("models");
    let (ok, _, err) = fluxbuild(&[
        "perf-data",
        "--repo",
        path(&models),
        "--prompt",
        "a cat",
        "--out",
        path(&out),
    ]);
    assert!(!ok && err.contains("flux/config.pbtxt: cannot read"), "{err}");

    // A config whose orchestrator requires an input perf-data cannot write.
    let config = repo.join("flux/config.pbtxt");
    let text = std::fs::read_to_string(&config).unwrap();
    let required_noise = text.replacen(
        "name: \"noise\"\n    data_type: TYPE_FP32\n    dims: [ 16, -1, -1 ]\n    optional: true",
        "name: \"noise\"\n    data_type: TYPE_FP32\n    dims: [ 16, -1, -1 ]",
        1,
    );
    assert_ne!(required_noise, text, "the noise input as package writes it:\n{text}");
    std::fs::write(&config, required_noise).unwrap();
    let (ok, _, err) = run(&[]);
    assert!(!ok && err.contains("flux requires input \"noise\""), "{err}");
    assert!(!out.exists());
}
