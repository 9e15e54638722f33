//! The schedule bit for bit against diffusers 0.42 (`FlowMatchEulerDiscreteScheduler.set_timesteps`
//! fed as FluxPipeline feeds it: `np.linspace(1, 1/N, N)` and `calculate_shift`), and against the
//! tiny pipelines' recorded runs.

mod generate_common;

use fluxbuild::generate::scheduler::{euler_step, SchedulerConfig};
use fluxbuild::generate::Variant;
use generate_common::Reference;

fn config(json: &str) -> SchedulerConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(&path, json).unwrap();
    SchedulerConfig::read(&path).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const DEV: &str = r#"{"shift": 3.0, "use_dynamic_shifting": true}"#;

/// (config, steps, image tokens, mu, sigmas as float32 bits, from diffusers)
#[allow(clippy::type_complexity)]
fn diffusers_cases() -> Vec<(&'static str, usize, usize, f64, Vec<u32>)> {
    vec![
        (
            DEV,
            28,
            4096,
            1.15,
            vec![
                0x3f800000, 0x3f7d0859, 0x3f79e9b7, 0x3f76a104, 0x3f732ad9, 0x3f6f8369, 0x3f6ba67a, 0x3f678f54,
                0x3f6338ab, 0x3f5e9c87, 0x3f59b430, 0x3f547806, 0x3f4edf59, 0x3f48e03d, 0x3f426f4f, 0x3f3b7f68,
                0x3f34014b, 0x3f2be327, 0x3f23101b, 0x3f196f71, 0x3f0ee3c3, 0x3f0349c1, 0x3eeced5c, 0x3ed06c95,
                0x3eb0900a, 0x3e8cb641, 0x3e482540, 0x3dd677e9, 0,
            ],
        ),
        (
            DEV,
            20,
            1536,
            0.7166666666666666,
            vec![
                0x3f800000, 0x3f7995ac, 0x3f72d2c9, 0x3f6baffd, 0x3f642512, 0x3f5c28df, 0x3f53b120, 0x3f4ab248,
                0x3f411f4f, 0x3f36e96d, 0x3f2bffd7, 0x3f204f5d, 0x3f13c1f9, 0x3f063e42, 0x3eef4d8d, 0x3ecfb25e,
                0x3ead5a63, 0x3e87e66f, 0x3e3dca9a, 0x3dc73ce3, 0,
            ],
        ),
        (DEV, 1, 4096, 1.15, vec![0x3f800000, 0]),
        (
            r#"{"shift": 1.0, "use_dynamic_shifting": false}"#,
            4,
            4096,
            1.15,
            vec![0x3f800000, 0x3f400000, 0x3f000000, 0x3e800000, 0],
        ),
        (
            r#"{"shift": 3.0, "use_dynamic_shifting": true, "time_shift_type": "linear"}"#,
            6,
            1024,
            0.63,
            vec![
                0x3f800000, 0x3f425031, 0x3f0eb9c5, 0x3ec5e3bb, 0x3e754af3, 0x3de52c1b, 0,
            ],
        ),
        (
            r#"{"shift": 3.0, "use_dynamic_shifting": true, "shift_terminal": 0.1}"#,
            5,
            1024,
            0.63,
            vec![0x3f800000, 0x3f58382b, 0x3f274a80, 0x3ed34c86, 0x3dccccd0, 0],
        ),
        (
            r#"{"shift": 3.0, "use_dynamic_shifting": false}"#,
            5,
            1024,
            0.63,
            vec![0x3f800000, 0x3f6c4ec6, 0x3f51745d, 0x3f2aaaab, 0x3edb6db8, 0],
        ),
    ]
}

#[test]
fn sigmas_match_diffusers_bit_for_bit() {
    for (json, steps, tokens, mu, want) in diffusers_cases() {
        let c = config(json);
        assert_eq!(c.mu(tokens), mu, "{json} mu");
        assert_eq!(
            bits(&c.sigmas(steps, tokens)),
            want,
            "{json} {steps} steps {tokens} tokens"
        );
    }
}

#[test]
fn model_timestep_is_rounded_through_1000() {
    // FluxPipeline feeds (1000σ)/1000 in float32: for dev 1024² at 28 steps two of them are not σ.
    let c = config(DEV);
    let sigmas = c.sigmas(28, 4096);
    let timesteps: Vec<f32> = sigmas[..28].iter().map(|&s| c.model_timestep(s)).collect();
    assert_eq!(timesteps[23].to_bits(), 0x3ed06c96);
    assert_eq!(timesteps[26].to_bits(), 0x3e48253f);
    assert_eq!(timesteps.iter().zip(&sigmas).filter(|(t, s)| t != s).count(), 2);
}

#[test]
fn tiny_pipelines_recorded_schedule() {
    for variant in ["dev", "schnell"] {
        let r = Reference::load(variant);
        let c = SchedulerConfig::read(&r.dir.join("scheduler/scheduler_config.json")).unwrap();
        let (steps, tokens) = (r.usize("num_inference_steps"), r.usize("image_seq_len"));
        let sigmas = c.sigmas(steps, tokens);
        assert_eq!(bits(&sigmas), bits(&r.f32("sigmas").1), "{variant} sigmas");
        let (shape, recorded) = r.f32("transformer_timestep"); // [steps, B]
        let fed: Vec<f32> = sigmas[..steps]
            .iter()
            .flat_map(|&s| std::iter::repeat_n(c.model_timestep(s), shape[1]))
            .collect();
        assert_eq!(bits(&fed), bits(&recorded), "{variant} transformer timesteps");
        if let Some(mu) = r.json["mu"].as_f64() {
            assert_eq!(c.mu(tokens), mu);
        }
    }
}

#[test]
fn euler_steps_replay_the_recorded_latents() {
    // x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_i with the recorded velocities must give the recorded latents exactly.
    for variant in ["dev", "schnell"] {
        let r = Reference::load(variant);
        let sigmas = r.f32("sigmas").1;
        let (_, mut x) = r.f32("initial_latents");
        let (shape, v) = r.f32("noise_pred_steps");
        let (_, recorded) = r.f32("latents_steps");
        let n = x.len();
        for step in 0..shape[0] {
            euler_step(&mut x, &v[step * n..(step + 1) * n], sigmas[step], sigmas[step + 1]);
            assert_eq!(
                bits(&x),
                bits(&recorded[step * n..(step + 1) * n]),
                "{variant} step {step}"
            );
        }
    }
}

/// diffusers' own keys and the settings of a newer diffusers left off are read past: a pipeline
/// saved by a later diffusers still exports.
#[test]
fn keys_the_schedule_does_not_read_are_fine_while_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    let json = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.50.0",
        "_use_default_values": ["shift"], "shift": 3.0, "use_dynamic_shifting": true,
        "use_some_future_sigmas": false, "future_terminal": null}"#;
    std::fs::write(&path, json).unwrap();
    let config = SchedulerConfig::read(&path).unwrap();
    assert_eq!(
        bits(&config.sigmas(4, 4096)),
        bits(&SchedulerConfig::for_variant(Variant::Dev).sigmas(4, 4096))
    );
}

#[test]
fn variant_defaults_and_refused_settings() {
    let dev = SchedulerConfig::for_variant(Variant::Dev);
    assert!(dev.use_dynamic_shifting && dev.base_shift == 0.5 && dev.max_shift == 1.15);
    assert_eq!(
        bits(&SchedulerConfig::for_variant(Variant::Schnell).sigmas(4, 4096)),
        diffusers_cases()[3].4
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    for (json, field) in [
        (r#"{"use_karras_sigmas": true}"#, "use_karras_sigmas"),
        (r#"{"stochastic_sampling": true}"#, "stochastic_sampling"),
        (r#"{"time_shift_type": "cosine"}"#, "time_shift_type"),
        // Another file given as the scheduler config is refused, not read as the defaults.
        (
            r#"{"shift": 3.0, "foo": 1}"#,
            "foo set, which FLUX.1's schedule does not read",
        ),
        (
            r#"{"_class_name": "FluxTransformer2DModel", "in_channels": 64}"#,
            "the config of a FluxTransformer2DModel, not of FLUX.1's scheduler",
        ),
        (
            r#"{"in_channels": 64, "num_layers": 19}"#,
            "in_channels, num_layers set",
        ),
        (r#"[1, 2]"#, "not a scheduler config"),
    ] {
        std::fs::write(&path, json).unwrap();
        let err = format!("{:#}", SchedulerConfig::read(&path).unwrap_err());
        assert!(err.contains(field) && err.contains("scheduler_config.json"), "{err}");
    }
}
