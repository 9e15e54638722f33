//! The generation stage: exported graphs + a request -> images, as FluxPipeline computes them.
//! Text encoders -> denoising loop -> VAE, each graph loaded once per run and dropped as soon as
//! its work is done, so at most one graph is in memory at a time (the transformer alone is the
//! largest). All prompts of a request run as one batch through every graph but the VAE decoder,
//! which decodes one image at a time (its activations are the memory peak).

use super::image::{batch_to_rgb, RgbImage};
use super::latents::{image_ids, pack, text_ids, unpack, VAE_SCALE};
use super::models::ExportedModels;
use super::request::Request;
use super::scheduler::euler_step;
use super::tokenize::PromptTokenizer;
use crate::runtime::{Input, Model};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::Network;
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayD, Axis, Ix2, Ix3, Ix4};
use std::collections::BTreeMap;
use std::time::Instant;

/// What the pipeline reports while it works.
pub enum Event<'a> {
    Warning(String),
    /// A graph is being loaded / run.
    Stage(&'static str),
    /// Denoising step `done` of `total` finished.
    Step {
        done: usize,
        total: usize,
    },
    /// The transformer ran for denoising step `step` (from 0): the inputs it was fed and all of
    /// its outputs (with a graph override, e.g. a calibration graph, more than `noise_pred`).
    Transformer {
        step: usize,
        inputs: &'a [(&'static str, ArrayD<f32>)],
        outputs: &'a BTreeMap<String, ArrayD<f32>>,
    },
}

/// Seconds spent on one graph.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageTime {
    pub stage: &'static str,
    pub load_s: f64,
    pub run_s: f64,
}

/// The images and every intermediate a parity check looks at.
pub struct Generation {
    pub images: Vec<RgbImage>,
    pub clip_ids: Array2<i64>,
    pub t5_ids: Array2<i64>,
    pub pooled_embeds: Array2<f32>,
    pub prompt_embeds: Array3<f32>,
    /// N + 1 values, the last 0.
    pub sigmas: Vec<f32>,
    /// The exponential time shift's mu (dev-style dynamic shifting only).
    pub mu: Option<f64>,
    /// Packed [B, Li, 64].
    pub final_latents: Array3<f32>,
    /// VAE output [B, 3, H, W] in [-1, 1].
    pub decoded: Array4<f32>,
    pub times: Vec<StageTime>,
    pub warnings: Vec<String>,
}

pub fn generate(models: &ExportedModels, request: &Request, on: &mut dyn FnMut(Event)) -> Result<Generation> {
    request.validate()?;
    let batch = request.batch();
    let started = Instant::now();
    let clip_tokens = PromptTokenizer::clip(&models.clip_tokenizer)?.encode(&request.prompts)?;
    let t5_tokens = PromptTokenizer::t5(&models.t5_tokenizer, request.max_sequence_length)?.encode(&request.prompts)?;
    let warnings: Vec<String> = clip_tokens
        .warnings
        .iter()
        .chain(&t5_tokens.warnings)
        .cloned()
        .collect();
    warnings.iter().for_each(|w| on(Event::Warning(w.clone())));
    let clip_ids = Array2::from_shape_vec((batch, clip_tokens.length), clip_tokens.ids).expect("batch × length");
    let t5_ids = Array2::from_shape_vec((batch, t5_tokens.length), t5_tokens.ids).expect("batch × length");
    let mut times = vec![StageTime {
        stage: "tokenize",
        load_s: 0.0,
        run_s: started.elapsed().as_secs_f64(),
    }];

    let pooled_embeds = with_graph(models, Network::Clip, &mut times, on, |clip, _| {
        let mut out = clip.run(vec![("input_ids", Input::I64(clip_ids.clone().into_dyn()))])?;
        take(&mut out, clip, "pooled_embeddings", &[batch, 0])?
            .into_dimensionality::<Ix2>()
            .map_err(Into::into)
    })?;
    let prompt_embeds = with_graph(models, Network::T5, &mut times, on, |t5, _| {
        let mut out = t5.run(vec![("input_ids", Input::I64(t5_ids.clone().into_dyn()))])?;
        take(&mut out, t5, "text_embeddings", &[batch, t5_tokens.length, 0])?
            .into_dimensionality::<Ix3>()
            .map_err(Into::into)
    })?;

    let scheduler = &models.scheduler.value;
    let sigmas = scheduler.sigmas(request.steps, request.image_seq_len());
    let [_, _, h, w] = request.latent_shape();
    let mut latents = pack(&request.initial_noise());
    let img_ids = image_ids(h / 2, w / 2).into_dyn();
    let txt_ids = text_ids(t5_tokens.length).into_dyn();
    with_graph(models, Network::Transformer, &mut times, on, |transformer, on| {
        check_transformer_inputs(transformer, models.guidance_embeds)?;
        for step in 0..request.steps {
            let timestep = Array1::from_elem(batch, scheduler.model_timestep(sigmas[step]));
            let mut inputs = vec![
                ("hidden_states", latents.clone().into_dyn()),
                ("encoder_hidden_states", prompt_embeds.clone().into_dyn()),
                ("pooled_projections", pooled_embeds.clone().into_dyn()),
                ("timestep", timestep.into_dyn()),
                ("img_ids", img_ids.clone()),
                ("txt_ids", txt_ids.clone()),
            ];
            if models.guidance_embeds {
                inputs.push(("guidance", Array1::from_elem(batch, request.guidance).into_dyn()));
            }
            let mut out = transformer.run(inputs.iter().map(|(n, a)| (*n, Input::F32(a.clone()))).collect())?;
            on(Event::Transformer {
                step,
                inputs: &inputs,
                outputs: &out,
            });
            let velocity = take(&mut out, transformer, "noise_pred", latents.shape())
                .with_context(|| format!("denoising step {}", step + 1))?;
            euler_step(
                latents.as_slice_mut().expect("standard layout"),
                velocity.as_slice().context("noise_pred layout")?,
                sigmas[step],
                sigmas[step + 1],
            );
            on(Event::Step {
                done: step + 1,
                total: request.steps,
            });
        }
        Ok(())
    })?;

    let z = decoder_latent(models, request, &latents);
    let decoded = with_graph(models, Network::VaeDecoder, &mut times, on, |vae, _| {
        decode_sliced(vae, &z)
    })?;
    let images = batch_to_rgb(&decoded);
    let mu = scheduler
        .use_dynamic_shifting
        .then(|| scheduler.mu(request.image_seq_len()));
    Ok(Generation {
        images,
        clip_ids,
        t5_ids,
        pooled_embeds,
        prompt_embeds,
        sigmas,
        mu,
        final_latents: latents,
        decoded,
        times,
        warnings,
    })
}

/// The VAE decoder's input for packed final latents: unpacked, then `x / scaling + shift`.
pub fn decoder_latent(models: &ExportedModels, request: &Request, latents: &Array3<f32>) -> Array4<f32> {
    let [_, _, h, w] = request.latent_shape();
    let (scale, shift) = (
        models.vae_scaling_factor.value as f32,
        models.vae_shift_factor.value as f32,
    );
    unpack(latents, h, w).mapv(|x| x / scale + shift)
}

/// The VAE decoder's images [B, 3, H, W] for latents [B, 16, H/8, W/8], one image per run: the
/// decoder's full-resolution activations (the pipeline's memory peak, docs/serving.md) are then
/// those of one image whatever the batch. Each image's computation does not depend on the others,
/// so the result is the batched run's, byte for byte (tests/generate_pipeline.rs checks it).
pub fn decode_sliced(vae: &mut Model, latents: &Array4<f32>) -> Result<Array4<f32>> {
    let [batch, _, h, w] = *latents.shape() else {
        unreachable!("four axes")
    };
    let (height, width) = (h * VAE_SCALE, w * VAE_SCALE);
    let mut images = Array4::zeros((batch, 3, height, width));
    for (i, latent) in latents.axis_chunks_iter(Axis(0), 1).enumerate() {
        let mut out = vae.run(vec![("latent", Input::F32(latent.to_owned().into_dyn()))])?;
        let image = take(&mut out, vae, "images", &[1, 3, height, width]).with_context(|| format!("image {i}"))?;
        images
            .slice_mut(s![i..i + 1, .., .., ..])
            .assign(&image.into_dimensionality::<Ix4>()?);
    }
    Ok(images)
}

/// Loads one graph, runs `work` on it, records the seconds, and drops it.
fn with_graph<T>(
    models: &ExportedModels,
    network: Network,
    times: &mut Vec<StageTime>,
    on: &mut dyn FnMut(Event),
    work: impl FnOnce(&mut Model, &mut dyn FnMut(Event)) -> Result<T>,
) -> Result<T> {
    on(Event::Stage(network.name()));
    let started = Instant::now();
    let mut model = Model::load(&models.graph(network))?;
    let loaded = Instant::now();
    let result = work(&mut model, on).with_context(|| format!("{}", models.graph(network).display()))?;
    times.push(StageTime {
        stage: network.name(),
        load_s: (loaded - started).as_secs_f64(),
        run_s: loaded.elapsed().as_secs_f64(),
    });
    Ok(result)
}

/// Takes output `name` and checks its shape (0 = any size) and that every value is finite.
fn take(
    outputs: &mut BTreeMap<String, ArrayD<f32>>,
    model: &Model,
    name: &str,
    shape: &[usize],
) -> Result<ArrayD<f32>> {
    let Some(array) = outputs.remove(name) else {
        let found: Vec<&String> = outputs.keys().collect();
        bail!(
            "{}: the graph has no output `{name}` (outputs: {found:?})",
            model.path.display()
        );
    };
    let fits = array.ndim() == shape.len() && array.shape().iter().zip(shape).all(|(&a, &s)| s == 0 || a == s);
    if !fits {
        bail!(
            "{}: output `{name}` has shape {:?}, expected {shape:?} (0 = any)",
            model.path.display(),
            array.shape()
        );
    }
    if let Some(i) = array.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: output `{name}` holds a non-finite value at flat index {i}",
            model.path.display()
        );
    }
    Ok(array.as_standard_layout().into_owned())
}

/// The transformer's inputs must be the interface generation feeds (with `guidance` exactly for dev).
fn check_transformer_inputs(transformer: &Model, guidance_embeds: bool) -> Result<()> {
    let mut expected = vec![
        "encoder_hidden_states",
        "hidden_states",
        "img_ids",
        "pooled_projections",
        "timestep",
        "txt_ids",
    ];
    if guidance_embeds {
        expected.push("guidance");
    }
    let mut found = transformer.input_names();
    found.sort();
    expected.sort();
    if found != expected {
        bail!(
            "{}: inputs are {found:?}, expected {expected:?} (the manifest says guidance_embeds = {guidance_embeds})",
            transformer.path.display()
        );
    }
    Ok(())
}
