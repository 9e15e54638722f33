//! The orchestrator's torch code path (the gpu target's: torch tensors exchanged with Triton by
//! DLPack) served on CPU torch next to its numpy path (the cpu target's), both by the real Triton
//! server: the same requests give byte-identical PNGs. Torch comes from PyPI into its own folder
//! (`make torch-site`), put on the Python backend stubs' import path for the torch server only (as FLUXBUILD_PYTHON_PATH).

mod triton_support;

use fluxbuild::serve::{Installation, Server};
use std::path::{Path, PathBuf};
use triton_support::*;

/// `make torch-site`'s folder ($FLUXBUILD_TORCH_SITE, else .cache/torch-site in the source tree).
fn torch_site() -> PathBuf {
    let site = std::env::var_os("FLUXBUILD_TORCH_SITE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/torch-site"),
        PathBuf::from,
    );
    assert!(
        site.join(".complete").is_file(),
        "{}: no torch install (run `make torch-site`, i.e. scripts/torch-site.sh)",
        site.display()
    );
    site
}

/// The packaged `flux` switched to the torch path on CPU (the documented config parameter).
fn use_torch_on_cpu(repo: &Path) {
    let config = repo.join("flux/config.pbtxt");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("parameters {\n  key: \"torch_on_cpu\"\n  value {\n    string_value: \"true\"\n  }\n}\n");
    std::fs::write(&config, text).unwrap();
}

/// `fluxbuild generate --server` with `args` through both servers: the PNGs (one per prompt) must
/// be equal.
fn assert_same_png(numpy: &Server, torch: &Server, args: &[&str], dir: &Path, name: &str) {
    let mut outputs = vec![];
    for (server, path_name) in [(numpy, "numpy"), (torch, "torch")] {
        let folder = dir.join(format!("{name}-{path_name}"));
        std::fs::create_dir_all(&folder).unwrap();
        let out = folder.join("image.png");
        fluxbuild_ok(&[&["generate", "--server", &server.url()], args, &["--out", path(&out)]].concat());
        let mut files: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
            .collect();
        files.sort();
        outputs.push(files);
    }
    let prompts = args.iter().filter(|a| **a == "--prompt").count();
    assert_eq!(
        outputs[0].len(),
        prompts,
        "{name}: {:?}",
        outputs[0].iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(
        outputs[0] == outputs[1],
        "{name}: the torch path's PNGs differ from the numpy path's"
    );
}

/// Exports `variant` at `precision`, serves it both ways and compares requests of several shapes.
fn compare(variant: &str, precision: &str, dir: &Path) {
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipeline")
        .join(variant);
    let models = dir.join("models");
    fluxbuild_ok(&[
        "export",
        "--checkpoint",
        path(&pipeline),
        "--out",
        path(&models),
        "--precision",
        precision,
    ]);
    let (numpy_repo, torch_repo) = (dir.join("numpy-repo"), dir.join("torch-repo"));
    package_cpu(&models, &numpy_repo, &[]);
    package_cpu(&models, &torch_repo, &[]);
    use_torch_on_cpu(&torch_repo);
    let mut install = Installation::find(None).expect("the Triton venv (run `make triton-venv`)");
    install.python_path.push(torch_site());
    let numpy = start(&numpy_repo, false);
    let torch = start_on(&install, &torch_repo, false);
    let log = torch.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("flux: tensors in torch"))
        .unwrap_or_else(|| panic!("the torch server's flux does not say it runs torch:\n{log}"));
    eprintln!("{variant} {precision}: {}", line.trim());
    assert!(!numpy.log_text().contains("flux: tensors in torch"));

    let cases: [(&str, &[&str]); 3] = [
        ("one", &["--prompt", "a red fox in the snow", "--seed", "7"]),
        (
            "batch",
            &[
                "--prompt",
                "a lighthouse",
                "--prompt",
                "two cats",
                "--seed",
                "1234567890123",
                "--steps",
                "3",
            ],
        ),
        (
            "wide",
            &[
                "--prompt",
                "a city at night",
                "--seed",
                "42",
                "--width",
                "96",
                "--guidance",
                "2.5",
            ],
        ),
    ];
    for (name, args) in cases {
        assert_same_png(&numpy, &torch, args, dir, &format!("{variant}-{precision}-{name}"));
    }
    for server in [&numpy, &torch] {
        seeds_are_read_back(server, dir);
    }
    // Every copy counted on CPU torch too: none (no device).
    let log = torch.log_text();
    let copies = log
        .lines()
        .rev()
        .find(|l| l.contains("host<->device copies"))
        .expect("the orchestrator logs its copies");
    assert!(copies.contains("0 host->device, 0 device->host"), "{copies}");
}

/// `generate --server --json` reports the seeds `flux` returned: the clock's when none was given,
/// seed + i per prompt otherwise (the client refuses an answer with other seeds).
fn seeds_are_read_back(server: &Server, dir: &Path) {
    let run = |args: &[&str]| -> serde_json::Value {
        let out = dir.join("seeded.png");
        let text = fluxbuild_ok(
            &[
                &["generate", "--json", "--server", &server.url()],
                args,
                &["--out", path(&out)],
            ]
            .concat(),
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
    };
    let clock = run(&["--prompt", "a boat"]);
    let sent = clock["seeds"][0].as_i64().expect("a clock seed");
    assert_eq!(clock["server_seeds"], serde_json::json!([sent]), "{clock}");
    let given = run(&["--prompt", "a boat", "--prompt", "a tree", "--seed", "9007199254740993"]);
    assert_eq!(
        given["server_seeds"],
        serde_json::json!([9007199254740993_i64, 9007199254740994_i64]),
        "{given}"
    );
}

#[test]
fn the_torch_path_gives_the_numpy_paths_images_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    compare("dev", "fp32", dir.path());
}

/// 16-bit networks: the casts between the fp32 latents and the network types (numpy's float16
/// against torch's) must round alike.
#[test]
fn the_torch_path_matches_with_fp16_networks() {
    let dir = tempfile::tempdir().unwrap();
    compare("schnell", "fp16", dir.path());
}
