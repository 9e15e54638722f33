//! Bad requests are refused before any work, with a message naming what is wrong.

mod common;

use fluxbuild::generate::request::Defaults;
use fluxbuild::generate::{InitialNoise, RequestOptions, Variant};

fn options() -> RequestOptions {
    RequestOptions {
        prompts: vec!["a cat".into()],
        height: Some(48),
        width: Some(80),
        seed: Some(1),
        ..Default::default()
    }
}

fn refused(options: RequestOptions) -> String {
    format!("{:#}", options.resolve(Variant::Dev).unwrap_err())
}

#[test]
fn defaults_follow_the_variant() {
    let dev = RequestOptions {
        prompts: vec!["a cat".into()],
        ..Default::default()
    }
    .resolve(Variant::Dev)
    .unwrap();
    assert_eq!(
        (dev.height, dev.width, dev.steps, dev.guidance, dev.max_sequence_length),
        (1024, 1024, 28, 3.5, 512)
    );
    assert!(matches!(dev.noise, InitialNoise::Seed(_)), "a seed from the clock");
    let schnell = options().resolve(Variant::Schnell).unwrap();
    assert_eq!((schnell.steps, schnell.max_sequence_length), (4, 256));
    assert_eq!(schnell.image_seq_len(), 3 * 5);
    assert_eq!(schnell.latent_shape(), [1, 16, 6, 10]);
}

#[test]
fn bad_values_are_named() {
    let cases: Vec<(RequestOptions, &str)> = vec![
        (
            RequestOptions {
                prompts: vec![],
                ..options()
            },
            "no prompt",
        ),
        (
            RequestOptions {
                prompts: vec!["ok".into(), " \t\n".into()],
                ..options()
            },
            "prompt 1 is empty",
        ),
        (
            RequestOptions {
                prompts: vec!["".into()],
                ..options()
            },
            "prompt 0 is empty",
        ),
        (
            RequestOptions {
                height: Some(50),
                ..options()
            },
            "height 50 is not a multiple of 16",
        ),
        (
            RequestOptions {
                width: Some(0),
                ..options()
            },
            "width 0",
        ),
        (
            RequestOptions {
                width: Some(4112),
                ..options()
            },
            "width 4112",
        ),
        (
            RequestOptions {
                steps: Some(0),
                ..options()
            },
            "steps 0",
        ),
        (
            RequestOptions {
                guidance: Some(f32::NAN),
                ..options()
            },
            "guidance NaN",
        ),
        (
            RequestOptions {
                max_sequence_length: Some(513),
                ..options()
            },
            "max sequence length 513",
        ),
        (
            RequestOptions {
                noise_file: Some("x.safetensors".into()),
                ..options()
            },
            "--seed and --noise",
        ),
    ];
    for (options, want) in cases {
        let err = refused(options);
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
}

#[test]
fn noise_of_the_wrong_shape_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.safetensors");
    common::write_f32_safetensors(&path, &[("noise", vec![1, 16, 6, 8], vec![0.0; 16 * 6 * 8])]);
    let err = refused(RequestOptions {
        seed: None,
        noise_file: Some(path.clone()),
        ..options()
    });
    assert!(
        err.contains("[1, 16, 6, 8]") && err.contains("expected [1, 16, 6, 10]"),
        "{err}"
    );
    // two prompts need a batch of two
    let err = refused(RequestOptions {
        prompts: vec!["a".into(), "b".into()],
        seed: None,
        height: Some(48),
        width: Some(64),
        noise_file: Some(path),
        ..options()
    });
    assert!(err.contains("expected [2, 16, 6, 8]"), "{err}");
}

#[test]
fn seeds_per_prompt() {
    let request = RequestOptions {
        prompts: vec!["a".into(), "b".into(), "c".into()],
        seed: Some(u64::MAX - 1),
        ..options()
    }
    .resolve(Variant::Dev)
    .unwrap();
    assert_eq!(request.seeds().unwrap(), vec![u64::MAX - 1, u64::MAX, 0]);
    let noise = request.initial_noise();
    assert_eq!(noise.shape(), &[3, 16, 6, 10]);
    assert_eq!(
        noise
            .index_axis(ndarray::Axis(0), 2)
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        fluxbuild::generate::noise::gaussian(0, 960)
    );
}

#[test]
fn a_deployments_defaults_and_limits_apply_and_parts_keep_their_noise() {
    use fluxbuild::generate::request::{Defaults, Limits};
    let limits = Limits {
        max_height: 128,
        min_sequence_length: 8,
        set_by: "what the deployment serves".into(),
        ..Limits::pipeline()
    };
    let defaults = Defaults {
        height: 64,
        width: 96,
        ..Defaults::of(Variant::Schnell)
    };
    let three = RequestOptions {
        prompts: vec!["a".into(), "b".into(), "c".into()],
        seed: Some(u64::MAX),
        ..Default::default()
    };
    let request = three.clone().resolve_within(&defaults, &limits).unwrap();
    assert_eq!(
        (
            request.height,
            request.width,
            request.steps,
            request.max_sequence_length
        ),
        (64, 96, 4, 256)
    );
    let part = request.part(1..3);
    assert_eq!(
        (part.prompts.clone(), part.seeds()),
        (vec!["b".to_string(), "c".to_string()], Some(vec![0, 1]))
    );
    assert_eq!(
        part.initial_noise(),
        request.initial_noise().slice(ndarray::s![1..3, .., .., ..])
    );
    for (options, want) in [
        (
            RequestOptions {
                height: Some(256),
                ..three.clone()
            },
            "height 256 is out of range 16..=128 (what the deployment serves)",
        ),
        (
            RequestOptions {
                max_sequence_length: Some(4),
                ..three
            },
            "max sequence length 4 is out of range 8..=512",
        ),
    ] {
        let err = format!("{:#}", options.resolve_within(&defaults, &limits).unwrap_err());
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
}

/// The memory model sets the largest image: the last square side within it is accepted, the next
/// (16 more) is refused with its rule, before any buffer exists; and a batch of images of the
/// largest size fits the budget with one image in the VAE decoder at a time.
#[test]
fn the_memory_model_refuses_an_image_above_the_budget() {
    use fluxbuild::generate::request::{
        max_batch_pixels, max_image_pixels, Limits, BATCH_BYTES_PER_PIXEL, MEMORY_BUDGET_BYTES, VAE_BYTES_PER_PIXEL,
    };
    let mut limits = Limits::pipeline();
    assert_eq!(limits.max_image_pixels, max_image_pixels(MEMORY_BUDGET_BYTES));
    let largest = (limits.max_image_pixels as f64).sqrt() as usize / 16 * 16;
    let side = |side: usize| RequestOptions {
        height: Some(side),
        width: Some(side),
        ..options()
    };
    side(largest)
        .resolve_within(&Defaults::of(Variant::Dev), &limits)
        .unwrap();
    let above = format!(
        "{:#}",
        side(largest + 16)
            .resolve_within(&Defaults::of(Variant::Dev), &limits)
            .unwrap_err()
    );
    assert!(above.ends_with("[rule image_pixels]"), "{above}");
    assert!(
        above.contains(&format!("more than the {}", limits.max_image_pixels)),
        "{above}"
    );
    // The old default admitted 4096x4096 (a 32.5 GiB buffer): refused now, locally too.
    assert!(refused(side(4096)).ends_with("[rule image_pixels]"));
    // A smaller budget (a deployment's) refuses what the default accepts.
    limits.max_image_pixels = max_image_pixels(1 << 30);
    let small = format!(
        "{:#}",
        side(1024)
            .resolve_within(&Defaults::of(Variant::Dev), &limits)
            .unwrap_err()
    );
    assert!(small.ends_with("[rule image_pixels]"), "{small}");

    // A batch: one image in the decoder, every image's batch memory; within the budget.
    let image = 1024 * 1024;
    let batch = max_batch_pixels(MEMORY_BUDGET_BYTES, image);
    assert!(batch >= 4 * image, "4 x 1024² fit 8 GiB in one batch ({batch} pixels)");
    assert!(VAE_BYTES_PER_PIXEL * image + BATCH_BYTES_PER_PIXEL * batch <= MEMORY_BUDGET_BYTES);
    // An image as large as the budget allows leaves room for itself only.
    let alone = max_image_pixels(1 << 30);
    assert!((alone..2 * alone).contains(&max_batch_pixels(1 << 30, alone)));
}
