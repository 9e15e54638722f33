//! A bounded, deterministic mutation fuzzer over safetensors headers and shard indexes.
//!
//! Seeds: the committed corpus (tests/fuzz-corpus: small files with every header feature and a
//! two-shard index) and the real transformer and CLIP fixtures. Each mutant is written to disk and
//! loaded as the export stage loads it. The outcome must be one of:
//! - refused with an error (opening, or the model's tensor checks), or
//! - parsed into exactly the clean seed's tensors (names, dtypes, shapes, bytes), or
//! - for model seeds, exported into byte-identical graphs (model.onnx and its data) as the seed, or
//! - a different but valid file (two same-size tensors trading places is a forgery no loader can
//!   see): then the reference loader (the `safetensors` crate) must accept every shard too and read
//!   exactly the same names, dtypes, shapes and bytes as fluxbuild did. A mutant fluxbuild accepts
//!   and the reference refuses, or reads differently, fails the test.
//!
//! Any panic fails the test; so does a mutant slower than `SLOW_MUTANT` (a hang stops CI's clock).
//! The seed and counts are fixed, so runs are identical.

mod common;
use common::fixtures;
use fluxbuild_contract::Network;
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::{exporter, plan, GraphOptions};
use fluxbuild_exporters::onnx::write_model;
use serde_json::Value;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HEADER_MUTANTS_PER_SEED: usize = 700;
const INDEX_MUTANTS: usize = 600;
const SLOW_MUTANT: Duration = Duration::from_secs(5);

fn corpus() -> PathBuf {
    common::repo().join("tests/fuzz-corpus")
}

/// splitmix64: a small deterministic generator (no dependency, same mutants on every machine).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values that break arithmetic and limits when they replace a number in a header.
const NUMBERS: [&str; 14] = [
    "0",
    "1",
    "-1",
    "7",
    "255",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "0.5",
    "340282366920938463463374607431768211456",
];

/// Bytes that change JSON structure when they replace one.
const JSON_BYTES: &[u8] = b"{}[]\",: 0123456789-e\\\x00\n";

/// One header mutant of `file` (the 8-byte length, the JSON and the data section as bytes).
fn mutate_file(file: &[u8], rng: &mut Rng) -> Vec<u8> {
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header_end = 8 + header_len;
    let mut out = file.to_vec();
    match rng.below(12) {
        0 => {
            let at = rng.below(header_end);
            out[at] ^= 1 << rng.below(8);
        }
        1 => {
            let at = 8 + rng.below(header_len);
            out[at] = *rng.pick(JSON_BYTES);
        }
        2 => {
            // The header length off by a little (D2 is -1 on a header ending in spaces).
            let delta = rng.below(17) as i64 - 8;
            let len = (header_len as i64 + delta).max(0) as u64;
            out[..8].copy_from_slice(&len.to_le_bytes());
        }
        3 => {
            let len = *rng.pick(&[0, 1, u64::MAX, u64::MAX - 7, 1 << 63, 100_000_001, file.len() as u64]);
            out[..8].copy_from_slice(&len.to_le_bytes());
        }
        4 => return replace_number(file, header_end, rng),
        5 => {
            // Insert or delete header bytes, keeping the length field right.
            let at = 8 + rng.below(header_len);
            let mut json = out[8..header_end].to_vec();
            if rng.below(2) == 0 {
                json.insert(at - 8, *rng.pick(JSON_BYTES));
            } else {
                json.remove(at - 8);
            }
            return with_header(&json, &file[header_end..]);
        }
        6 => out.truncate(rng.below(file.len())),
        7 => out.extend(std::iter::repeat_n(0u8, 1 + rng.below(64))),
        _ => return mutate_structure(file, header_end, rng),
    }
    out
}

fn with_header(json: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

/// Replaces one number of the header JSON with an extreme one.
fn replace_number(file: &[u8], header_end: usize, rng: &mut Rng) -> Vec<u8> {
    let json = &file[8..header_end];
    let numbers: Vec<(usize, usize)> = {
        let mut spans = Vec::new();
        let mut i = 0;
        while i < json.len() {
            if json[i].is_ascii_digit() && (i == 0 || !json[i - 1].is_ascii_alphanumeric()) {
                let start = i;
                while i < json.len() && json[i].is_ascii_digit() {
                    i += 1;
                }
                spans.push((start, i));
            }
            i += 1;
        }
        spans
    };
    if numbers.is_empty() {
        return file.to_vec();
    }
    let (start, end) = *rng.pick(&numbers);
    let mut new = json[..start].to_vec();
    new.extend(rng.pick(&NUMBERS).as_bytes());
    new.extend(&json[end..]);
    with_header(&new, &file[header_end..])
}

/// Mutations that keep the JSON valid: the attacks a careful forger would make.
fn mutate_structure(file: &[u8], header_end: usize, rng: &mut Rng) -> Vec<u8> {
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&file[8..header_end]).unwrap();
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let name = rng.pick(&names).clone();
    let entry = header[&name].clone();
    let offsets = |e: &Value| -> [u64; 2] { serde_json::from_value(e["data_offsets"].clone()).unwrap() };
    let [begin, end] = offsets(&entry);
    let huge = "X".repeat(100_000);
    match rng.below(10) {
        0 => {
            header.remove(&name);
        }
        1 => {
            header.insert(format!("{name}.copy"), entry);
        }
        2 => header[&name]["dtype"] = Value::from(*rng.pick(&["F16", "BF16", "F32", "I64", "F8_E4M3", "U8", "F64"])),
        3 => header[&name]["dtype"] = Value::from(huge),
        4 => header[&name]["shape"] = Value::from(vec![1u64; 100_000]),
        5 => {
            let mut shape: Vec<u64> = serde_json::from_value(entry["shape"].clone()).unwrap();
            shape.reverse();
            header[&name]["shape"] = Value::from(shape);
        }
        6 => {
            let shift = *rng.pick(&[1u64, 2, 4, 8]);
            header[&name]["data_offsets"] = serde_json::json!([begin + shift, end + shift]);
        }
        7 => {
            header.insert(huge, entry);
        }
        8 => {
            // Swap two tensors' places (same sizes or not: only exact tiling and shapes decide).
            let other = rng.pick(&names).clone();
            let theirs = header[&other]["data_offsets"].clone();
            header[&other]["data_offsets"] = header[&name]["data_offsets"].clone();
            header[&name]["data_offsets"] = theirs;
        }
        _ => {
            header.insert("__metadata__".into(), serde_json::json!({"format": {"nested": [1, 2]}}));
        }
    }
    with_header(&serde_json::to_vec(&header).unwrap(), &file[header_end..])
}

/// What a loaded checkpoint says: name -> (dtype, shape, sha of its bytes).
type Meaning = BTreeMap<String, (String, Vec<usize>, u64)>;

fn meaning(ckpt: &Checkpoint) -> Meaning {
    ckpt.tensors()
        .map(|t| {
            (
                t.name.to_string(),
                (t.dtype().to_string(), t.shape().to_vec(), digest(t.bytes())),
            )
        })
        .collect()
}

/// FNV-1a of a tensor's bytes.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A model seed: the network, the file or folder to load, and the config the export uses.
struct ModelSeed {
    network: &'static str,
    config: Option<Value>,
}

/// Exports `ckpt` as `seed.network`: None when the model's checks refuse it, else the sha256 of
/// model.onnx and model.onnx.data.
fn graph_digest(seed: &ModelSeed, ckpt: &Checkpoint, out: &Path) -> Option<(String, String)> {
    let (_, graph, problems) = plan(
        exporter(Network::parse(seed.network).unwrap()),
        ckpt,
        seed.config.as_ref(),
        &GraphOptions::default(),
    )
    .ok()?;
    if !problems.is_empty() {
        return None;
    }
    let written = write_model(&graph, out, &mut |_, _| {}).ok()?;
    Some((written.model_sha256, written.data_sha256))
}

fn load(network: &str, path: &Path) -> anyhow::Result<Checkpoint> {
    let exporter = exporter(Network::parse(network).unwrap());
    Checkpoint::load(path, exporter.subfolder(), exporter.key_prefixes())
}

#[derive(Default, Debug)]
struct Tally {
    mutants: usize,
    refused: usize,
    same_tensors: usize,
    model_refused: usize,
    same_graph: usize,
    valid_other_file: usize,
    slowest: Duration,
    failures: Vec<String>,
}

impl Tally {
    fn run(&mut self, what: &str, check: impl FnOnce() -> Result<Outcome, String>) {
        self.mutants += 1;
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(check));
        let took = started.elapsed();
        self.slowest = self.slowest.max(took);
        if took > SLOW_MUTANT {
            self.failures.push(format!("{what}: took {took:?}"));
        }
        match outcome {
            Err(_) => self.failures.push(format!("{what}: panicked")),
            Ok(Err(failure)) => self.failures.push(format!("{what}: {failure}")),
            Ok(Ok(Outcome::Refused)) => self.refused += 1,
            Ok(Ok(Outcome::SameTensors)) => self.same_tensors += 1,
            Ok(Ok(Outcome::ModelRefused)) => self.model_refused += 1,
            Ok(Ok(Outcome::SameGraph)) => self.same_graph += 1,
            Ok(Ok(Outcome::ValidOtherFile)) => self.valid_other_file += 1,
        }
    }
}

enum Outcome {
    Refused,
    SameTensors,
    ModelRefused,
    SameGraph,
    ValidOtherFile,
}

/// Loads a mutant at `path` and classifies it against the clean seed.
fn judge(
    network: &str,
    path: &Path,
    clean: &Meaning,
    model: Option<(&ModelSeed, &(String, String))>,
    scratch: &Path,
) -> Result<Outcome, String> {
    let ckpt = match load(network, path) {
        Err(e) => {
            let message = format!("{e:#}");
            if message.len() > 2000 {
                return Err(format!("a {}-byte error message", message.len()));
            }
            return Ok(Outcome::Refused);
        }
        Ok(ckpt) => ckpt,
    };
    if &meaning(&ckpt) == clean {
        return Ok(Outcome::SameTensors);
    }
    if let Some((seed, clean_graph)) = model {
        match graph_digest(seed, &ckpt, scratch) {
            None => return Ok(Outcome::ModelRefused),
            Some(graph) if &graph == clean_graph => return Ok(Outcome::SameGraph),
            Some(_) => {}
        }
    }
    agrees_with_reference(&ckpt).map(|_| Outcome::ValidOtherFile)
}

/// An accepted checkpoint must read, shard by shard, exactly as the reference loader reads it.
fn agrees_with_reference(ckpt: &Checkpoint) -> Result<(), String> {
    let mut reference = Meaning::new();
    for file in ckpt.source_files() {
        let bytes = std::fs::read(&file).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("accepted, but the reference loader refuses {}: {e}", file.display()))?;
        for (name, view) in tensors.tensors() {
            let name = name.strip_prefix(ckpt.prefix.as_str()).unwrap_or(&name).to_string();
            let dtype = format!("{:?}", view.dtype());
            reference.insert(name, (dtype, view.shape().to_vec(), digest(view.data())));
        }
    }
    let ours = meaning(ckpt);
    if ours != reference {
        let differing: Vec<&String> = ours
            .iter()
            .filter(|(k, v)| reference.get(*k) != Some(v))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        return Err(format!(
            "accepted, and read differently than the reference loader reads it: {differing:?}"
        ));
    }
    Ok(())
}

fn fuzz_file(tally: &mut Tally, rng: &mut Rng, seed_file: &Path, network: &str, model: Option<&ModelSeed>) {
    let dir = tempfile::tempdir().unwrap();
    let seed_bytes = std::fs::read(seed_file).unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &seed_bytes).unwrap();
    let clean = meaning(&load(network, &path).unwrap());
    let clean_graph =
        model.map(|m| graph_digest(m, &load(network, &path).unwrap(), &dir.path().join("clean")).unwrap());
    let scratch = dir.path().join("mutant");
    for i in 0..HEADER_MUTANTS_PER_SEED {
        let mutant = mutate_file(&seed_bytes, rng);
        std::fs::write(&path, &mutant).unwrap();
        let what = format!("{} mutant {i}", seed_file.display());
        let graph = model.zip(clean_graph.as_ref());
        tally.run(&what, || judge(network, &path, &clean, graph, &scratch));
    }
}

#[test]
fn mutated_headers_are_refused_or_harmless() {
    let started = Instant::now();
    let mut rng = Rng(0x5eed_f1c5);
    let mut tally = Tally::default();
    for seed in [
        "mixed.safetensors",
        "zero_and_scalar.safetensors",
        "fp8_i64.safetensors",
    ] {
        // Any network's loader opens any file; the model checks are not used for these seeds.
        fuzz_file(&mut tally, &mut rng, &corpus().join(seed), "transformer", None);
    }
    let transformer = ModelSeed {
        network: "transformer",
        config: read_json(Some(&fixtures().join("transformer/schnell/diffusers/config.json"))).unwrap(),
    };
    let bfl = fixtures().join("transformer/schnell/bfl.safetensors");
    fuzz_file(&mut tally, &mut rng, &bfl, "transformer", Some(&transformer));
    let clip = ModelSeed {
        network: "clip",
        config: read_json(Some(&fixtures().join("clip/config.json"))).unwrap(),
    };
    fuzz_file(
        &mut tally,
        &mut rng,
        &fixtures().join("clip/model.safetensors"),
        "clip",
        Some(&clip),
    );
    report("header", &tally, started);
}

/// The two-shard folder the committed index describes, built from the diffusers fixture.
fn sharded_folder(dir: &Path) -> PathBuf {
    let index = corpus().join("diffusion_pytorch_model.safetensors.index.json");
    let weight_map: BTreeMap<String, String> =
        serde_json::from_value(read_json(Some(&index)).unwrap().unwrap()["weight_map"].clone()).unwrap();
    let source = fixtures().join("transformer/schnell/diffusers/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&source).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let folder = dir.join("transformer");
    std::fs::create_dir_all(&folder).unwrap();
    let mut shards: BTreeMap<&String, Vec<(String, safetensors::tensor::TensorView<'_>)>> = BTreeMap::new();
    for (name, shard) in &weight_map {
        shards
            .entry(shard)
            .or_default()
            .push((name.clone(), tensors.tensor(name).unwrap()));
    }
    for (shard, views) in shards {
        safetensors::serialize_to_file(views, None, &folder.join(shard)).unwrap();
    }
    std::fs::copy(&index, folder.join("diffusion_pytorch_model.safetensors.index.json")).unwrap();
    std::fs::copy(
        fixtures().join("transformer/schnell/diffusers/config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    folder
}

/// One index mutant: bytes, or a weight_map whose shard names and entries are attacked.
fn mutate_index(text: &[u8], rng: &mut Rng) -> Vec<u8> {
    if rng.below(3) == 0 {
        let mut out = text.to_vec();
        let at = rng.below(out.len());
        match rng.below(3) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = *rng.pick(JSON_BYTES),
            _ => out.truncate(at),
        }
        return out;
    }
    let mut index: Value = serde_json::from_slice(text).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let names: Vec<String> = map.keys().cloned().collect();
    let name = rng.pick(&names).clone();
    let shard_names = [
        "../outside.safetensors",
        "/dev/zero",
        "",
        ".",
        "missing.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "sub/x.safetensors",
        "config.json",
        "loop.safetensors",
        "folder.safetensors",
        "zero.safetensors",
    ];
    match rng.below(7) {
        0 => map[&name] = Value::from(*rng.pick(&shard_names)),
        1 => {
            map.remove(&name);
        }
        2 => {
            map.insert(format!("{name}.extra"), map[&name].clone());
        }
        3 => map[&name] = Value::from(12),
        4 => map[&name] = Value::from("y".repeat(100_000)),
        5 => {
            map.insert("z".repeat(100_000), Value::from(*rng.pick(&shard_names)));
        }
        _ => index["weight_map"] = rng.pick(&[Value::Null, Value::from(vec![1, 2])]).clone(),
    }
    serde_json::to_vec(&index).unwrap()
}

#[test]
fn mutated_shard_indexes_are_refused_or_harmless() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let folder = sharded_folder(dir.path());
    // Shard names an attacker can point at: a symlink loop, a folder, a link to /dev/zero.
    std::os::unix::fs::symlink("loop.safetensors", folder.join("loop.safetensors")).unwrap();
    std::fs::create_dir(folder.join("folder.safetensors")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", folder.join("zero.safetensors")).unwrap();
    let index_path = folder.join("diffusion_pytorch_model.safetensors.index.json");
    let seed = std::fs::read(&index_path).unwrap();
    let model = ModelSeed {
        network: "transformer",
        config: None,
    };
    let clean_ckpt = load("transformer", &folder).unwrap();
    let clean = meaning(&clean_ckpt);
    let clean_graph = graph_digest(&model, &clean_ckpt, &dir.path().join("clean")).unwrap();
    drop(clean_ckpt);
    let mut rng = Rng(0x1de5_5eed);
    let mut tally = Tally::default();
    for i in 0..INDEX_MUTANTS {
        std::fs::write(&index_path, mutate_index(&seed, &mut rng)).unwrap();
        let scratch = dir.path().join("mutant");
        tally.run(&format!("index mutant {i}"), || {
            judge("transformer", &folder, &clean, Some((&model, &clean_graph)), &scratch)
        });
    }
    report("index", &tally, started);
}

fn report(kind: &str, tally: &Tally, started: Instant) {
    eprintln!(
        "{kind} fuzz: {} mutants in {:.1} s (slowest {:?}): {} refused on opening, {} refused by the model's checks, \
         {} parsed to the clean tensors, {} exported to the clean graph, {} valid files the reference loader reads identically; {} failures",
        tally.mutants,
        started.elapsed().as_secs_f64(),
        tally.slowest,
        tally.refused,
        tally.model_refused,
        tally.same_tensors,
        tally.same_graph,
        tally.valid_other_file,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
}
