//! Preset parsing, validation errors and the shape arithmetic of every network.

use fluxbuild_profiles::{ModelDims, Network, Preset, PresetVariant, Range};

fn parse(text: &str) -> anyhow::Result<Preset> {
    Preset::parse(text, "test", "test.toml")
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).expect_err("should be rejected"))
}

const BASE: &str = "description = \"d\"\n[[profile]]\n";

#[test]
fn every_builtin_preset_parses_and_covers_every_network() {
    let presets = Preset::builtins().unwrap();
    assert_eq!(
        presets.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        Preset::builtin_names()
    );
    for p in &presets {
        for n in Network::ALL {
            assert!(!p.profiles(n).is_empty(), "{} has no profile for {n}", p.name);
        }
    }
    assert!(Preset::load("static-1024").is_ok());
    let unknown = format!("{:#}", Preset::load("static-2048").unwrap_err());
    assert!(
        unknown.contains("static-1024") && unknown.contains("tiny-check"),
        "{unknown}"
    );
}

#[test]
fn static_1024_gives_4096_image_tokens_and_a_128x128_latent() {
    let p = Preset::load("static-1024").unwrap();
    let t = &p.shapes(Network::Transformer, &ModelDims::FLUX)[0];
    let get = |name: &str| t.inputs.iter().find(|i| i.name == name).unwrap().clone();
    let hidden = get("hidden_states");
    assert_eq!(
        (hidden.min, hidden.opt, hidden.max),
        (vec![1, 4096, 64], vec![1, 4096, 64], vec![4, 4096, 64])
    );
    assert_eq!(get("encoder_hidden_states").max, vec![4, 512, 4096]);
    assert_eq!(get("pooled_projections").max, vec![4, 768]);
    assert_eq!(get("timestep").max, vec![4]);
    assert_eq!(get("img_ids").max, vec![4096, 3]);
    assert_eq!(get("txt_ids").min, vec![512, 3]);
    // Variant "any" without a graph: guidance is listed, marked dev-only.
    assert!(get("guidance").dev_only);
    let names: Vec<&str> = t.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "hidden_states",
            "encoder_hidden_states",
            "pooled_projections",
            "timestep",
            "img_ids",
            "txt_ids",
            "guidance"
        ]
    );
    let vae = &p.shapes(Network::VaeDecoder, &ModelDims::FLUX)[0].inputs[0];
    assert_eq!((vae.name.as_str(), vae.max.clone()), ("latent", vec![4, 16, 128, 128]));
    let clip = &p.shapes(Network::Clip, &ModelDims::FLUX)[0].inputs[0];
    assert_eq!((clip.min.clone(), clip.max.clone()), (vec![1, 77], vec![4, 77]));
    let t5 = &p.shapes(Network::T5, &ModelDims::FLUX)[0].inputs[0];
    assert_eq!(t5.max, vec![4, 512]);
}

#[test]
fn non_square_dynamic_sizes_follow_h_over_16_times_w_over_16() {
    let p = parse(&format!("{BASE}batch = 2\nheight = {{ min = 512, opt = 768, max = 1344 }}\nwidth = [256, 1024, 1024]\ntext_len = [128, 256, 512]\n")).unwrap();
    let t = &p.shapes(Network::Transformer, &ModelDims::FLUX)[0];
    let hidden = &t.inputs[0];
    assert_eq!(hidden.min[1], (512 / 16) * (256 / 16));
    assert_eq!(hidden.opt[1], (768 / 16) * (1024 / 16));
    assert_eq!(hidden.max[1], (1344 / 16) * (1024 / 16));
    assert_eq!(t.inputs[1].opt, vec![2, 256, 4096]);
    let latent = &p.shapes(Network::VaeDecoder, &ModelDims::FLUX)[0].inputs[0];
    assert_eq!(
        (latent.min.clone(), latent.opt.clone(), latent.max.clone()),
        (vec![2, 16, 64, 32], vec![2, 16, 96, 128], vec![2, 16, 168, 128])
    );
    // CLIP ignores image sizes and text length: always 77 tokens.
    assert_eq!(p.shapes(Network::Clip, &ModelDims::FLUX)[0].inputs[0].opt, vec![2, 77]);
}

#[test]
fn the_graph_decides_guidance_and_fixed_sizes() {
    let p = Preset::load("tiny-check").unwrap();
    let tiny = ModelDims {
        joint_dim: 32,
        pooled_dim: 24,
        packed_channels: 64,
        latent_channels: 16,
        guidance: Some(false),
    };
    let t = &p.shapes(Network::Transformer, &tiny)[0];
    assert!(t.inputs.iter().all(|i| i.name != "guidance"));
    assert_eq!(t.inputs[1].max, vec![2, 64, 32]);
    assert_eq!(t.inputs[2].min, vec![1, 24]);
    let dev = ModelDims {
        guidance: Some(true),
        ..tiny
    };
    let g = p.shapes(Network::Transformer, &dev)[0]
        .inputs
        .iter()
        .find(|i| i.name == "guidance")
        .cloned()
        .unwrap();
    assert!(!g.dev_only);
    // A schnell preset without a graph leaves guidance out.
    let schnell = Preset::load("schnell-fast").unwrap();
    assert_eq!(schnell.variant, PresetVariant::Schnell);
    assert!(schnell.shapes(Network::Transformer, &ModelDims::FLUX)[0]
        .inputs
        .iter()
        .all(|i| i.name != "guidance"));
}

#[test]
fn several_profiles_and_per_network_lists() {
    let p = Preset::load("schnell-fast").unwrap();
    let shapes = p.shapes(Network::Transformer, &ModelDims::FLUX);
    assert_eq!(shapes.len(), 2);
    assert_eq!(
        (
            shapes[0].inputs[0].max[0],
            shapes[1].inputs[0].min[0],
            shapes[1].inputs[0].max[0]
        ),
        (1, 2, 4)
    );
    let text = format!(
        "{BASE}batch = [1, 1, 4]\nheight = 1024\nwidth = 1024\ntext_len = 512\n[[networks.clip.profile]]\nbatch = [1, 2, 8]\n[[networks.clip.profile]]\nbatch = 16\n"
    );
    let p = parse(&text).unwrap();
    assert_eq!(
        p.profiles(Network::Clip).iter().map(|o| o.batch).collect::<Vec<_>>(),
        [Range { min: 1, opt: 2, max: 8 }, Range::fixed(16)]
    );
    assert_eq!(p.profiles(Network::T5).len(), 1);
    assert_eq!(p.profiles(Network::T5)[0].batch.max, 4);
    // Fields a network has no input for are dropped from the shared profile for it.
    assert_eq!(p.profiles(Network::T5)[0].height, None);
}

#[test]
fn validation_names_the_field_and_what_was_expected() {
    let full = |extra: &str| format!("{BASE}batch = [1, 1, 4]\nheight = 1024\nwidth = 1024\ntext_len = 512\n{extra}");
    let cases = [
        (
            format!("{BASE}batch = [1, 5, 4]\nheight = 1024\nwidth = 1024\ntext_len = 512\n"),
            "batch: opt 5 is outside min..max 1..4",
        ),
        (
            format!("{BASE}batch = [4, 4, 1]\nheight = 1024\nwidth = 1024\ntext_len = 512\n"),
            "batch: min 4 is larger than max 1",
        ),
        (
            format!("{BASE}batch = 0\nheight = 1024\nwidth = 1024\ntext_len = 512\n"),
            "batch: value must be at least 1",
        ),
        (
            format!("{BASE}batch = 1\nheight = [512, 1000, 1024]\nwidth = 1024\ntext_len = 512\n"),
            "height: opt 1000 is not a multiple of 16",
        ),
        (
            format!("{BASE}batch = 1\nheight = 1024\nwidth = 1030\ntext_len = 512\n"),
            "nearest: 1024 or 1040",
        ),
        (
            format!("{BASE}batch = 1\nheight = 1024\nwidth = 1024\ntext_len = [64, 512, 600]\n"),
            "text_len: max 600 exceeds T5's maximum sequence length 512",
        ),
        (
            format!("{BASE}batch = 1\nheight = 1024\ntext_len = 512\n"),
            "width is missing (transformer needs it)",
        ),
        (
            format!("{BASE}batch = {{ min = 1, max = 4 }}\nheight = 1024\nwidth = 1024\ntext_len = 512\n"),
            "batch: opt is missing",
        ),
        (
            format!("{BASE}batch = 1\nheight = 1024\nwidth = 1024\ntext_len = 512\nsteps = 4\n"),
            "unknown field `steps`",
        ),
        (
            full("[[networks.clip.profile]]\nbatch = 1\nheight = 512\n"),
            "networks.clip.profile[0] (for clip): height does not apply to clip",
        ),
        (
            full("[[networks.unet.profile]]\nbatch = 1\n"),
            "unknown network \"unet\"",
        ),
        ("description = \"d\"\n".to_string(), "no [[profile]] entries"),
        (
            full("").replace("description = \"d\"", "description = \"d\"\nvariant = \"pro\""),
            "unknown variant",
        ),
        (
            format!("{BASE}batch = [1, 2\n"),
            "test.toml: line 3, column 14: unclosed array, expected `]`",
        ),
    ];
    for (text, expected) in cases {
        let e = err(&text);
        assert!(e.contains(expected), "expected {expected:?} in: {e}");
        assert!(e.contains("test.toml"), "the error names the file: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
