//! Cache keys: the same inputs give the same key; any change of graph, setting, shape,
//! TensorRT version or GPU gives a different one.

use fluxbuild_engines::key::{cache_key, FileDigest, KeyInputs};
use fluxbuild_engines::settings::{BuildSettings, BuilderKind, Precision, Runtime};
use fluxbuild_profiles::{ModelDims, Network, Preset, ProfileShapes};
use std::collections::BTreeSet;

struct Case {
    network: Network,
    graph: Vec<FileDigest>,
    settings: BuildSettings,
    profiles: Vec<ProfileShapes>,
    tensorrt: String,
    cc: String,
}

impl Case {
    fn key(&self) -> String {
        cache_key(&KeyInputs {
            runtime: Runtime::Tensorrt,
            network: self.network,
            graph: &self.graph,
            settings: &self.settings,
            profiles: &self.profiles,
            tensorrt: &self.tensorrt,
            compute_capability: &self.cc,
        })
    }
}

type Change = Box<dyn Fn(&mut Case)>;

fn base() -> Case {
    let preset = Preset::load("static-1024").unwrap();
    Case {
        network: Network::Transformer,
        graph: vec![
            FileDigest {
                name: "model.onnx".into(),
                bytes: 1000,
                sha256: "a".repeat(64),
            },
            FileDigest {
                name: "model.onnx.data".into(),
                bytes: 23_802_816_640,
                sha256: "b".repeat(64),
            },
        ],
        settings: BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, Some(8.0), Some(3)).unwrap(),
        profiles: preset.shapes(Network::Transformer, &ModelDims::FLUX),
        tensorrt: "10.13.0".into(),
        cc: "9.0".into(),
    }
}

#[test]
fn same_inputs_give_the_same_key() {
    let (a, b) = (base(), base());
    assert_eq!(a.key(), b.key());
    assert_eq!(a.key().len(), 64);
    assert!(a.key().chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn every_input_changes_the_key() {
    let changes: Vec<(&str, Change)> = vec![
        ("network", Box::new(|c| c.network = Network::T5)),
        ("graph sha256", Box::new(|c| c.graph[0].sha256 = "c".repeat(64))),
        ("weights sha256", Box::new(|c| c.graph[1].sha256 = "d".repeat(64))),
        ("weights size", Box::new(|c| c.graph[1].bytes += 1)),
        ("precision", Box::new(|c| c.settings.precision = Precision::Fp16)),
        ("builder", Box::new(|c| c.settings.builder = BuilderKind::Native)),
        ("workspace", Box::new(|c| c.settings.workspace_bytes = Some(1 << 30))),
        ("no workspace limit", Box::new(|c| c.settings.workspace_bytes = None)),
        (
            "optimization level",
            Box::new(|c| c.settings.optimization_level = Some(5)),
        ),
        ("max batch", Box::new(|c| c.profiles[0].inputs[0].max[0] = 8)),
        ("opt text length", Box::new(|c| c.profiles[0].inputs[1].opt[1] = 256)),
        ("min image tokens", Box::new(|c| c.profiles[0].inputs[0].min[1] = 1024)),
        ("second profile", Box::new(|c| c.profiles.push(c.profiles[0].clone()))),
        (
            "guidance input",
            Box::new(|c| c.profiles[0].inputs.retain(|i| i.name != "guidance")),
        ),
        ("TensorRT patch version", Box::new(|c| c.tensorrt = "10.13.1".into())),
        ("TensorRT major version", Box::new(|c| c.tensorrt = "11.4.0".into())),
        ("GPU compute capability", Box::new(|c| c.cc = "8.9".into())),
    ];
    let original = base().key();
    let mut keys = BTreeSet::new();
    for (what, change) in &changes {
        let mut c = base();
        change(&mut c);
        let key = c.key();
        assert_ne!(key, original, "changing the {what} kept the key");
        keys.insert(key);
    }
    assert_eq!(keys.len(), changes.len(), "two different changes gave the same key");
}

#[test]
fn a_different_preset_with_the_same_shapes_keeps_the_key() {
    // The key depends on the shapes given to TensorRT, not on the preset's name.
    let mut c = base();
    let renamed = Preset::parse(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../profiles/presets/static-1024.toml"
        ))
        .unwrap(),
        "my-static",
        "copy.toml",
    )
    .unwrap();
    c.profiles = renamed.shapes(Network::Transformer, &ModelDims::FLUX);
    assert_eq!(c.key(), base().key());
}
