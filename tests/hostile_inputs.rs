//! The reproductions of issue 14's parser defects, each made here from a valid file: offsets near
//! 2^64 (D1), a header length one byte short (D2), a missing CLIP bias (D3), huge echoed values
//! (D13) and every kind of broken symlink (D14). Each must be refused with a one-line diagnosis.

mod common;
use common::fixtures;
use fluxbuild_contract::Network;
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::{exporter, plan, GraphOptions};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus(name: &str) -> PathBuf {
    common::repo().join("tests/fuzz-corpus").join(name)
}

fn load(network: &str, path: &Path) -> anyhow::Result<Checkpoint> {
    let exporter = exporter(Network::parse(network).unwrap());
    Checkpoint::load(path, exporter.subfolder(), exporter.key_prefixes())
}

fn load_error(path: &Path) -> String {
    match load("transformer", path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// The header of a safetensors file, parsed, and the bytes after it.
fn split(bytes: &[u8]) -> (Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn join(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    bytes.extend(data);
    bytes
}

#[test]
fn offsets_near_two_to_the_64_are_refused_without_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let (mut header, data) = split(&std::fs::read(corpus("mixed.safetensors")).unwrap());
    for offsets in [
        // 24 bytes, the size of a.weight: only the bounds check can refuse them.
        json!([u64::MAX - 24, u64::MAX]),
        json!([u64::MAX - 30, u64::MAX - 6]),
        json!([0, u64::MAX]),
    ] {
        header["a.weight"]["data_offsets"] = offsets.clone();
        let path = dir.path().join("near-2-64.safetensors");
        std::fs::write(&path, join(&header, &data)).unwrap();
        let err = load_error(&path);
        assert!(err.contains("tensor a.weight: data_offsets"), "{offsets}: {err}");
        // Through the CLI as well: an error exit (1), not a panic (101).
        let out = dir.path().join("out");
        let status = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
            .args([
                "export",
                "--transformer",
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(
            status.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        assert!(!out.exists());
    }
}

#[test]
fn a_header_length_one_byte_short_is_refused_not_shifted() {
    // The reference writer pads headers with spaces; dropping the last one still parses as JSON,
    // and every tensor would start one byte early.
    let bytes = std::fs::read(corpus("mixed.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(bytes[8 + n as usize - 1], b' ', "the seed's header must end in padding");
    let mut short = bytes.clone();
    short[..8].copy_from_slice(&(n - 1).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.safetensors");
    std::fs::write(&path, &short).unwrap();
    let err = load_error(&path);
    assert!(
        err.contains("1 byte(s) after the last tensor belong to no tensor"),
        "{err}"
    );
    assert!(err.contains("wrong header length"), "{err}");
}

#[test]
fn trailing_bytes_and_gaps_in_the_data_section_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(corpus("mixed.safetensors")).unwrap();
    let path = dir.path().join("trailing.safetensors");
    std::fs::write(&path, [&bytes[..], &[0u8; 3][..]].concat()).unwrap();
    assert!(load_error(&path).contains("3 byte(s) after the last tensor"));

    let (mut header, mut data) = split(&bytes);
    // Two bytes of nothing before tensor b: offsets still describe a file of the right length.
    let [begin, end]: [u64; 2] = serde_json::from_value(header["b"]["data_offsets"].clone()).unwrap();
    header["b"]["data_offsets"] = json!([begin + 2, end + 2]);
    data.splice(begin as usize..begin as usize, [0u8, 0]);
    std::fs::write(&path, join(&header, &data)).unwrap();
    let err = load_error(&path);
    assert!(
        err.contains(&format!(
            "bytes [{begin}, {}) of the data section belong to no tensor",
            begin + 2
        )),
        "{err}"
    );
}

#[test]
fn a_tensor_listed_twice_is_refused() {
    let bytes = std::fs::read(corpus("mixed.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let entry = r#""b":{"dtype":"BF16","shape":[2,2],"data_offsets":[30,38]}"#;
    assert!(json.contains(entry), "{json}");
    let doubled = json.replacen(entry, &format!("{entry},{entry}"), 1);
    let mut file = (doubled.len() as u64).to_le_bytes().to_vec();
    file.extend(doubled.as_bytes());
    file.extend(&bytes[8 + n..]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twice.safetensors");
    std::fs::write(&path, file).unwrap();
    assert!(load_error(&path).contains("tensor b is listed twice in the header"));
}

#[test]
fn huge_untrusted_values_are_cut_in_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (header, data) = split(&std::fs::read(corpus("mixed.safetensors")).unwrap());
    let cases: [(&str, Value, &str); 3] = [
        ("dtype", Value::from("Q".repeat(100_000)), "is not a safetensors dtype"),
        (
            "shape",
            Value::from(vec![1u64; 100_000]),
            "shape has 100000 dimensions (at most 8)",
        ),
        ("name", Value::Null, "is 100001 bytes long (at most 1024)"),
    ];
    for (field, value, want) in cases {
        let mut header = header.clone();
        if field == "name" {
            let entry = header.remove("b").unwrap();
            header.insert(format!("b{}", "\n".repeat(100_000)), entry);
        } else {
            header["b"][field] = value;
        }
        let path = dir.path().join("huge.safetensors");
        std::fs::write(&path, join(&header, &data)).unwrap();
        let err = load_error(&path);
        assert!(err.contains(want), "{field}: {}", &err[..err.len().min(400)]);
        assert!(err.len() < 600, "{field}: a {}-byte message", err.len());
        assert!(!err.contains('\n'), "{field}: the message spans lines");
    }
}

/// The two-shard diffusers folder of the committed index, with `shard` of the second replaced.
fn sharded_with(dir: &Path, second: impl FnOnce(&Path)) -> PathBuf {
    let folder = dir.join("transformer");
    std::fs::create_dir_all(&folder).unwrap();
    let index = corpus("diffusion_pytorch_model.safetensors.index.json");
    std::fs::copy(&index, folder.join(index.file_name().unwrap())).unwrap();
    std::fs::copy(
        fixtures().join("transformer/schnell/diffusers/config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    // The first shard only needs to be a file for locate(); the second is the case under test.
    std::fs::copy(
        corpus("mixed.safetensors"),
        folder.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
    )
    .unwrap();
    second(&folder.join("diffusion_pytorch_model-00002-of-00002.safetensors"));
    folder
}

#[test]
fn each_broken_symlink_gets_its_own_message() {
    use std::os::unix::fs::symlink;
    // What the second shard is, how to make it, and the words its message must have.
    type Case = (&'static str, fn(&Path), &'static str);
    let cases: [Case; 5] = [
        (
            "/dev/zero",
            |p| symlink("/dev/zero", p).unwrap(),
            "is a device or special file (a symlink to /dev/zero)",
        ),
        (
            "a folder",
            |p| symlink(p.parent().unwrap(), p).unwrap(),
            "is a folder (a symlink to",
        ),
        ("itself", |p| symlink(p, p).unwrap(), "is a symlink loop"),
        (
            "a missing target",
            |p| symlink(p.with_file_name("gone.safetensors"), p).unwrap(),
            "is a symlink whose target does not exist",
        ),
        ("nothing", |_| {}, "does not exist"),
    ];
    for (what, make, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let folder = sharded_with(dir.path(), make);
        let err = load_error(&folder);
        assert!(
            err.contains("diffusion_pytorch_model-00002-of-00002.safetensors"),
            "{what}: {err}"
        );
        assert!(err.contains(want), "{what}: expected {want:?} in {err}");
    }
    // The same words for a file given directly.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("clip_l.safetensors");
    symlink("/dev/zero", &link).unwrap();
    assert!(load_error(&link).contains("is a device or special file (a symlink to /dev/zero)"));
    std::fs::remove_file(&link).unwrap();
    symlink(&link, &link).unwrap();
    assert!(load_error(&link).contains("is a symlink loop"));
}

/// The CLIP fixture without one tensor (the data section repacked, so the file itself is valid).
fn clip_without(tensor: &str, path: &Path) {
    let bytes = std::fs::read(fixtures().join("clip/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.ends_with(tensor))
        .collect();
    assert_eq!(kept.len() + 1, file.len(), "{tensor} is in the fixture once");
    safetensors::serialize_to_file(kept, None, path).unwrap();
}

#[test]
fn every_clip_linear_bias_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let config = read_json(Some(&fixtures().join("clip/config.json"))).unwrap();
    for layer in [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "mlp.fc1",
        "mlp.fc2",
    ] {
        let tensor = format!("encoder.layers.1.{layer}.bias");
        let path = dir.path().join("clip.safetensors");
        clip_without(&tensor, &path);
        let ckpt = load("clip", &path).unwrap();
        let (_, _, problems) = plan(
            exporter(Network::Clip),
            &ckpt,
            config.as_ref(),
            &GraphOptions::default(),
        )
        .unwrap();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 1, "{tensor}: {text:?}");
        assert!(text[0].starts_with(&format!("missing tensor {tensor}")), "{text:?}");
    }
}
