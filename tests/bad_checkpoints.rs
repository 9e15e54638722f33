//! Broken, lying and dangerous checkpoints get a clear error naming the file and tensor. Every
//! bad file is made here from a small valid one (the schnell fixture).

mod common;
use common::flux::*;
use fluxbuild_exporters::onnx::{ElemType, Problem};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// A safetensors file taken apart: header entries and the data section.
struct Raw {
    header: Map<String, Value>,
    data: Vec<u8>,
}

impl Raw {
    fn read(path: &Path) -> Raw {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        Raw {
            header,
            data: bytes[8 + n..].to_vec(),
        }
    }

    fn write(&self, path: &Path) -> PathBuf {
        let header = serde_json::to_vec(&self.header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(&header);
        bytes.extend(&self.data);
        std::fs::write(path, bytes).unwrap();
        path.to_path_buf()
    }

    fn entry(&mut self, name: &str) -> &mut Value {
        self.header.get_mut(name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Removes a tensor and its bytes, keeping the data section tiled.
    fn remove(&mut self, name: &str) {
        let [start, end] = self.offsets(name);
        self.header.remove(name);
        self.data.drain(start as usize..end as usize);
        for entry in self.header.values_mut().filter(|e| e.get("data_offsets").is_some()) {
            let [b, e]: [u64; 2] = serde_json::from_value(entry["data_offsets"].clone()).unwrap();
            if b >= end {
                entry["data_offsets"] = json!([b - (end - start), e - (end - start)]);
            }
        }
    }

    fn offsets(&self, name: &str) -> [u64; 2] {
        serde_json::from_value(self.header[name]["data_offsets"].clone()).unwrap()
    }
}

fn valid_file() -> PathBuf {
    case_dir("schnell").join("bfl.safetensors")
}

fn config() -> Value {
    diffusers_config("schnell")
}

fn load_error(path: &Path) -> String {
    match open(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "message lacks {part:?}:\n{message}");
    }
}

#[test]
fn truncated_file_names_the_file_and_first_tensor_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(valid_file()).unwrap();
    let path = dir.path().join("cut.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_error(&path);
    assert_mentions(&err, &[&path.display().to_string(), "end beyond the file", "truncated"]);
    // The tensor named is one whose bytes are really gone.
    let raw = Raw::read(&valid_file());
    let data_len = (raw.data.len() - 1000) as u64;
    let named = raw
        .header
        .keys()
        .find(|k| err.contains(&format!("tensor {k}:")))
        .expect("names a tensor");
    assert!(raw.offsets(named)[1] > data_len, "{named} is not past the cut");

    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, &bytes[..5]).unwrap();
    assert_mentions(&load_error(&tiny), &[&tiny.display().to_string(), "truncated"]);
}

#[test]
fn header_length_beyond_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(valid_file()).unwrap();
    let lie = bytes.len() as u64 * 2;
    bytes[..8].copy_from_slice(&lie.to_le_bytes());
    let path = dir.path().join("long_header.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    assert_mentions(
        &load_error(&path),
        &[&path.display().to_string(), "header length", "goes beyond the file"],
    );
}

#[test]
fn offsets_out_of_range_or_overlapping_are_refused_by_tensor_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = Raw::read(&valid_file());
    let [start, end] = raw.offsets("img_in.weight");
    let beyond = raw.data.len() as u64 + 64;
    raw.entry("img_in.weight")["data_offsets"] = json!([beyond, beyond + end - start]);
    let path = raw.write(&dir.path().join("out_of_range.safetensors"));
    assert_mentions(
        &load_error(&path),
        &[
            &path.display().to_string(),
            "tensor img_in.weight",
            "end beyond the file",
        ],
    );

    let mut raw = Raw::read(&valid_file());
    let [a_start, _] = raw.offsets("txt_in.weight");
    let [b_start, b_end] = raw.offsets("txt_in.bias");
    raw.entry("txt_in.bias")["data_offsets"] = json!([a_start + 4, a_start + 4 + (b_end - b_start)]);
    let path = raw.write(&dir.path().join("overlap.safetensors"));
    assert_mentions(
        &load_error(&path),
        &[&path.display().to_string(), "txt_in.weight", "txt_in.bias", "overlap"],
    );

    let mut raw = Raw::read(&valid_file());
    raw.entry("img_in.bias")["data_offsets"] = json!([0, 3]);
    let path = raw.write(&dir.path().join("short.safetensors"));
    assert_mentions(&load_error(&path), &["tensor img_in.bias", "hold 3 bytes", "needs"]);
}

#[test]
fn missing_misshaped_and_unexpected_tensors_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = Raw::read(&valid_file());
    raw.remove("double_blocks.1.txt_attn.qkv.weight");
    raw.remove("single_blocks.0.norm.key_norm.scale");
    // Same bytes, transposed shape: only the shape check can catch it.
    let shape = raw.entry("double_blocks.0.img_mlp.2.weight")["shape"].clone();
    raw.entry("double_blocks.0.img_mlp.2.weight")["shape"] = json!([shape[1], shape[0]]);
    // A diffusers name in a BFL file.
    let at = raw.data.len();
    raw.data.extend([0u8; 32 * 4]);
    raw.header.insert(
        "x_embedder.bias".into(),
        json!({"dtype": "F32", "shape": [32], "data_offsets": [at, at + 128]}),
    );
    let path = raw.write(&dir.path().join("bad.safetensors"));
    let (_, problems) = problems(&path, Some(&config())).unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "tensor double_blocks.0.img_mlp.2.weight has shape [128, 32], expected [32, 128]",
            "missing tensor double_blocks.1.txt_attn.qkv.weight (expected shape [96, 32])",
            "missing tensor single_blocks.0.norm.key_norm.scale (expected shape [16])",
            "unexpected tensor x_embedder.bias [32]",
        ]
    );
    assert!(matches!(problems[1], Problem::Missing { .. }));
}

#[test]
fn anchors_missing_for_the_dimensions_are_listed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = Raw::read(&valid_file());
    raw.remove("txt_in.weight");
    raw.remove("final_layer.linear.weight");
    let path = raw.write(&dir.path().join("anchors.safetensors"));
    let err = format!("{:#}", problems(&path, Some(&config())).unwrap_err());
    assert_mentions(
        &err,
        &[
            &path.display().to_string(),
            "txt_in.weight (gives joint_attention_dim) is missing",
            "final_layer.linear.weight",
        ],
    );
}

#[test]
fn not_a_transformer_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = Raw::read(&valid_file());
    raw.remove("img_in.weight");
    let path = raw.write(&dir.path().join("other.safetensors"));
    let err = format!("{:#}", problems(&path, Some(&config())).unwrap_err());
    assert_mentions(
        &err,
        &[
            &path.display().to_string(),
            "not a FLUX transformer",
            "x_embedder.weight",
            "img_in.weight",
        ],
    );
}

/// A sharded diffusers component folder made from the schnell fixture's single file.
fn sharded_folder(dir: &Path, shard_names: [&str; 2]) -> PathBuf {
    let src = case_dir("schnell").join("diffusers");
    let raw = Raw::read(&src.join("diffusion_pytorch_model.safetensors"));
    let folder = dir.join("transformer");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(src.join("config.json"), folder.join("config.json")).unwrap();
    let mut weight_map = Map::new();
    let names: Vec<&String> = raw.header.keys().filter(|k| *k != "__metadata__").collect();
    for (i, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let mut shard = Raw {
            header: Map::new(),
            data: vec![],
        };
        for name in chunk {
            let [start, end] = raw.offsets(name);
            let mut entry = raw.header[*name].clone();
            let at = shard.data.len() as u64;
            entry["data_offsets"] = json!([at, at + end - start]);
            shard.data.extend(&raw.data[start as usize..end as usize]);
            shard.header.insert(name.to_string(), entry);
            weight_map.insert(name.to_string(), json!(shard_names[i]));
        }
        // A `../` shard gets a real file where it points: only the name can be refused.
        match shard_names[i].strip_prefix("../") {
            Some(outside) => shard.write(&dir.join(outside)),
            None if !shard_names[i].contains('/') => shard.write(&folder.join(shard_names[i])),
            None => continue,
        };
    }
    let index = json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        folder.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    folder
}

#[test]
fn symlinked_shards_load_and_export_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ];
    let folder = sharded_folder(dir.path(), names);
    // Hugging Face cache style: the snapshot folder links to blobs stored elsewhere.
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for (i, name) in names.iter().enumerate() {
        let blob = blobs.join(format!("blob{i}"));
        std::fs::rename(folder.join(name), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, folder.join(name)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let analysis = export(&folder, None, ElemType::F32, out.path());
    assert_eq!(analysis.layout, "diffusers");
    let (rel, _) = compare(out.path(), &case_dir("schnell").join("io.safetensors"));
    assert!(rel < 1e-5, "sharded export differs from diffusers: {rel:.3e}");
}

#[test]
fn shard_names_escaping_the_folder_are_refused() {
    for escaping in [
        "../outside.safetensors",
        "/tmp/outside.safetensors",
        "sub/../../outside.safetensors",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let folder = sharded_folder(
            dir.path(),
            ["diffusion_pytorch_model-00001-of-00002.safetensors", escaping],
        );
        let err = load_error(&folder);
        assert_mentions(
            &err,
            &[
                "diffusion_pytorch_model.safetensors.index.json",
                escaping,
                "outside the index's folder",
            ],
        );
    }
}

#[test]
fn pickle_checkpoints_are_refused_unopened() {
    let dir = tempfile::tempdir().unwrap();
    // Protocol-2 pickle of os.system("touch PWNED"): never to be unpickled.
    let pickle = b"\x80\x02cposix\nsystem\nq\x00X\x0b\x00\x00\x00touch PWNEDq\x01\x85q\x02Rq\x03.";
    for ext in ["ckpt", "pt", "pth", "bin"] {
        let path = dir.path().join(format!("flux1-dev.{ext}"));
        std::fs::write(&path, pickle).unwrap();
        assert_mentions(
            &load_error(&path),
            &[&path.display().to_string(), "refusing a pickle checkpoint"],
        );
    }
    // Disguised as safetensors: caught by its magic bytes.
    let disguised = dir.path().join("flux1-dev.safetensors");
    std::fs::write(&disguised, pickle).unwrap();
    assert_mentions(
        &load_error(&disguised),
        &[&disguised.display().to_string(), "pickle", "refusing"],
    );
    let zipped = dir.path().join("zipped.safetensors");
    std::fs::write(&zipped, b"PK\x03\x04 torch.save archive").unwrap();
    assert_mentions(&load_error(&zipped), &["zipped.safetensors", "pickle/zip", "refusing"]);
    // A component folder holding only pickles.
    let folder = dir.path().join("transformer");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("diffusion_pytorch_model.bin"), pickle).unwrap();
    assert_mentions(
        &load_error(&folder),
        &["only pickle weights found", "diffusion_pytorch_model.bin", "refusing"],
    );
    assert!(!Path::new("PWNED").exists() && !dir.path().join("PWNED").exists());
}

/// `fluxbuild export --transformer SOURCE --config CONFIG --out OUT`: (success, stderr).
fn cli_export(source: &Path, out: &Path) -> (bool, String) {
    let config = case_dir("schnell").join("diffusers/config.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(["export", "--transformer"])
        .arg(source)
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(out)
        // Replacing an earlier export: a failed one must leave it as it was.
        .arg("--force")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every file under `dir` with its content, to show that a failed export changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn cli_refuses_bad_checkpoints_with_nonzero_exit_and_leaves_the_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(valid_file()).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut raw = Raw::read(&valid_file());
    raw.remove("single_blocks.1.linear2.weight");
    let missing = raw.write(&dir.path().join("missing.safetensors"));
    let pickle = dir.path().join("flux1-schnell.pt");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    let escaping = sharded_folder(&dir.path().join("escaping"), ["a.safetensors", "../b.safetensors"]);
    let cases: [(&Path, &[&str]); 4] = [
        (&truncated, &["truncated.safetensors", "truncated"]),
        (
            &missing,
            &[
                "missing.safetensors",
                "missing tensor single_blocks.1.linear2.weight",
                "nothing was written",
            ],
        ),
        (&pickle, &["flux1-schnell.pt", "pickle"]),
        (&escaping, &["../b.safetensors", "outside the index's folder"]),
    ];

    // A previous good export in OUT must survive every failed one unchanged.
    let out = dir.path().join("out");
    let (ok, stderr) = cli_export(&valid_file(), &out);
    assert!(ok, "good export failed: {stderr}");
    let (rel, _) = compare(&out.join("transformer"), &case_dir("schnell").join("io.safetensors"));
    assert!(rel < 1e-5, "CLI export differs from diffusers: {rel:.3e}");
    let before = snapshot(&out);
    for (source, expected) in cases {
        let (ok, stderr) = cli_export(source, &out);
        assert!(!ok, "{} exported", source.display());
        assert_mentions(&stderr, expected);
        assert!(
            snapshot(&out) == before,
            "{}: the failed export changed {}",
            source.display(),
            out.display()
        );
        // Into a fresh folder: nothing at all is left behind.
        let fresh = dir.path().join("fresh");
        let (ok, _) = cli_export(source, &fresh);
        assert!(!ok && !fresh.exists(), "{}: left {}", source.display(), fresh.display());
    }
}
