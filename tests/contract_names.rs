//! The network and variant names are spelled in one place, `fluxbuild_contract`: no other Rust
//! file of the workspace (tests and the Python orchestrator aside) has them as string literals.
//! A literal that is another vocabulary's word (a ComfyUI folder, a substring of a config class
//! name) says so with the comment `// not a network name: WHY` on its line.

use fluxbuild_contract::{Network, Variant};
use std::path::{Path, PathBuf};

const EXEMPT: &str = "// not a network name";

/// Every `.rs` file under `dir`, skipping the contract crate, test folders and build output.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let skipped = name.starts_with('.') || ["target", "tests", "contract", "triton"].contains(&name.as_str());
            if !skipped {
                rust_files(&path, files);
            }
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
}

/// The code of a line: without its `//` comment (a `//` inside a string literal is kept).
fn code(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// `file:line: "name"` for every name literal of `text`.
fn spelled(file: &Path, text: &str, names: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.contains(EXEMPT) {
            continue;
        }
        let code = code(line);
        for name in names {
            if code.contains(&format!("\"{name}\"")) {
                found.push(format!("{}:{}: \"{name}\"", file.display(), i + 1));
            }
        }
    }
    found
}

fn names() -> Vec<&'static str> {
    let mut names: Vec<&str> = Network::ALL.iter().flat_map(|n| [n.name(), n.folder()]).collect();
    names.extend([Variant::Dev, Variant::Schnell].map(Variant::name));
    names.sort();
    names.dedup();
    names
}

#[test]
fn no_rust_file_outside_the_contract_spells_a_network_or_variant_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("src/export.rs")),
        "the walk found no sources under {}",
        root.display()
    );
    let names = names();
    let found: Vec<String> = files
        .iter()
        .flat_map(|f| {
            spelled(
                f.strip_prefix(root).unwrap(),
                &std::fs::read_to_string(f).unwrap(),
                &names,
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "network or variant names spelled outside fluxbuild_contract (use Network / Variant, or mark another \
         vocabulary's word with `{EXEMPT}: WHY`):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_literals_in_code_and_not_in_comments() {
    let names = names();
    let file = Path::new("x.rs");
    let text = "let a = \"clip\"; // \"t5\"\n/// \"vae\"\nlet url = \"http://x\"; let b = \"dev\";\n\
                let c = \"vae\"; // not a network name: ComfyUI's folder\nlet d = \"clip_l\";";
    assert_eq!(spelled(file, text, &names), ["x.rs:1: \"clip\"", "x.rs:3: \"dev\""]);
}

/// The graph interfaces `Network` declares are the ones `fluxbuild export` writes: every input and
/// output by name, element type and rank; batch, sequence and image dims dynamic, the model's fixed.
/// fp16 graphs, so that `Float32` (the transformer's I/O) and `Float` (the graph's type) differ.
#[test]
fn exported_graphs_have_the_interfaces_the_contract_declares() {
    use fluxbuild_contract::{Axis, Dtype, Port};
    use fluxbuild_onnx::{read_interface, Dim, ElemType, ValueInfo};
    let dir = tempfile::tempdir().unwrap();
    let check = |graph: &Path, port: &Port, value: Option<&ValueInfo>| {
        let value = value.unwrap_or_else(|| panic!("{}: no `{}`", graph.display(), port.name));
        let elem_fits = match port.dtype {
            Dtype::Int64 => value.elem == ElemType::I64,
            Dtype::Float32 => value.elem == ElemType::F32,
            Dtype::Float => matches!(value.elem, ElemType::F32 | ElemType::F16 | ElemType::BF16),
        };
        assert!(
            elem_fits,
            "{}: `{}` is {:?}, the contract says {:?}",
            graph.display(),
            port.name,
            value.elem,
            port.dtype
        );
        assert_eq!(
            value.dims.len(),
            port.dims.len(),
            "{}: rank of `{}`",
            graph.display(),
            port.name
        );
        for (dim, axis) in value.dims.iter().zip(port.dims) {
            let dim_fits = match axis {
                Axis::Model => matches!(dim, Dim::Fixed(_)),
                // CLIP's 77 tokens are fixed by its position embedding.
                Axis::Text => true,
                _ => matches!(dim, Dim::Sym(_)),
            };
            assert!(
                dim_fits,
                "{}: `{}` dim {dim:?} is not {axis:?}",
                graph.display(),
                port.name
            );
        }
    };
    for variant in [Variant::Dev, Variant::Schnell] {
        let pipeline = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pipeline")
            .join(variant.name());
        let out = dir.path().join(variant.name());
        let export = std::process::Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
            .args(["export", "--precision", "fp16", "--checkpoint"])
            .arg(&pipeline)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    }
    for variant in [Variant::Dev, Variant::Schnell] {
        for network in Network::ALL {
            let graph = dir.path().join(variant.name()).join(network.name()).join("model.onnx");
            let interface = read_interface(&graph).unwrap();
            let inputs: Vec<&Port> = network
                .inputs()
                .iter()
                .filter(|p| !p.dev_only || variant == Variant::Dev)
                .collect();
            let names: Vec<&str> = interface.inputs.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(
                names,
                inputs.iter().map(|p| p.name).collect::<Vec<_>>(),
                "{}",
                graph.display()
            );
            for port in inputs {
                check(&graph, port, interface.input(port.name));
            }
            for port in network.outputs() {
                check(&graph, port, interface.output(port.name));
            }
        }
    }
}
