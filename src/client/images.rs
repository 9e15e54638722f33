//! Generation through a Triton server's `flux` model: the deployment's defaults and limits (from
//! the config `fluxbuild package` wrote), and a resolved `generate::Request` in, images out.
//! Requests are checked by the same code as local generation before anything is sent; every
//! setting travels explicitly, so the server computes exactly what `fluxbuild generate` would.

use super::{Client, Tensor};
use crate::generate::image::RgbImage;
use crate::generate::request::{Defaults, FluxParameters, Limits};
use crate::generate::{InitialNoise, Request, Variant};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::parameters::Parameters;
use serde_json::Value;

/// The orchestrator every request goes to.
const MODEL: &str = "flux";

/// What a deployment serves.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub variant: Variant,
    /// `flux`'s max_batch_size: the most prompts one request may carry.
    pub max_batch: usize,
    pub defaults: Defaults,
    pub limits: Limits,
}

impl Deployment {
    fn from_config(config: &Value, url: &str) -> Result<Deployment> {
        let strings = config["parameters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, value)| value["string_value"].as_str().map(|text| (key.as_str(), text)));
        let parameters = FluxParameters::from_strings(strings)
            .with_context(|| format!("{url}: the config of `{MODEL}` (not a fluxbuild repository?)"))?;
        Ok(Deployment {
            variant: parameters.variant,
            max_batch: config["max_batch_size"].as_u64().unwrap_or(1).max(1) as usize,
            defaults: Defaults {
                height: parameters.default_height as usize,
                width: parameters.default_width as usize,
                steps: parameters.default_steps as usize,
                guidance: parameters.default_guidance,
                max_sequence_length: parameters.default_max_sequence_length as usize,
            },
            limits: Limits {
                set_by: format!("what the Triton deployment at {url} serves"),
                ..parameters.request_rules
            },
        })
    }
}

/// What `flux` answered for a request: images, the seed of each (-1 where it came from given
/// noise) and the models that made each.
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub images: Vec<RgbImage>,
    pub seeds: Vec<i64>,
    pub made_by: Vec<MadeBy>,
}

/// The models that made one image (the output `models`): precision set 0 is the primary models,
/// a higher one a fallback set (`fluxbuild package --alternative`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MadeBy {
    pub precision_set: u32,
    /// Network -> the model that ran it.
    #[serde(flatten)]
    pub models: std::collections::BTreeMap<String, String>,
}

impl Client {
    /// The deployment behind this server, once it is live and `flux` is ready.
    pub fn deployment(&self) -> Result<Deployment> {
        if !self.live().unwrap_or(false) {
            bail!(
                "the Triton server at {} is not answering (is it running? `fluxbuild serve --repo REPO`)",
                self.url()
            );
        }
        if !self.model_ready(MODEL)? {
            bail!(
                "the Triton server at {} is up but its model `{MODEL}` is not ready (see the server log)",
                self.url()
            );
        }
        Deployment::from_config(&self.get_json(&format!("/v2/models/{MODEL}/config"))?, &self.url())
    }

    /// One request to `flux` with all of `request.prompts`.
    pub fn generate(&self, request: &Request) -> Result<Vec<RgbImage>> {
        Ok(self.generate_served(request)?.images)
    }

    /// `generate`, with the seeds `flux` returned (output `seed`, one per image; -1 where the
    /// image came from given noise), checked against the ones sent, and the models that made
    /// each image (output `models`).
    pub fn generate_served(&self, request: &Request) -> Result<Served> {
        let n = request.batch();
        let shape = [n as i64, 1];
        let prompts: Vec<&[u8]> = request.prompts.iter().map(|p| p.as_bytes()).collect();
        let int = |name: &str, value: usize| -> Result<Tensor> {
            let value = i32::try_from(value).with_context(|| format!("{name} {value} does not fit the INT32 input"))?;
            Ok(Tensor::i32(name, &shape, &vec![value; n]))
        };
        let mut inputs = vec![
            Tensor::bytes("prompt", &shape, &prompts),
            int("height", request.height)?,
            int("width", request.width)?,
            int("steps", request.steps)?,
            int("max_sequence_length", request.max_sequence_length)?,
            Tensor::f32("guidance", &shape, &vec![request.guidance; n]),
        ];
        match &request.noise {
            InitialNoise::Seed(_) => {
                let seeds: Vec<i64> = request.seeds().expect("seeded").into_iter().map(|s| s as i64).collect();
                inputs.push(Tensor::i64("seed", &shape, &seeds));
            }
            InitialNoise::Tensor { noise, .. } => {
                let dims: Vec<i64> = noise.shape().iter().map(|&d| d as i64).collect();
                inputs.push(Tensor::f32(
                    "noise",
                    &dims,
                    &noise.iter().copied().collect::<Vec<f32>>(),
                ));
            }
        }
        let outputs = self.infer(MODEL, &inputs, &["image", "seed", "models"])?;
        let seeds = returned_seeds(&outputs, n)?;
        let made_by = returned_models(&outputs, n)?;
        let sent: Vec<i64> = request
            .seeds()
            .map_or(vec![-1; n], |s| s.into_iter().map(|s| s as i64).collect());
        if seeds != sent {
            bail!("flux answered seeds {seeds:?} for a request with seeds {sent:?} (-1: given noise)");
        }
        let image = outputs
            .into_iter()
            .find(|t| t.name == "image")
            .context("flux answered without an image")?;
        let expected = [n as i64, request.height as i64, request.width as i64, 3];
        if image.shape != expected
            || image.datatype != "UINT8"
            || image.data.len() != n * request.height * request.width * 3
        {
            bail!(
                "flux answered {} {:?} ({} bytes), expected UINT8 {expected:?}",
                image.datatype,
                image.shape,
                image.data.len()
            );
        }
        let images = image
            .data
            .chunks_exact(request.height * request.width * 3)
            .map(|pixels| RgbImage {
                width: request.width,
                height: request.height,
                pixels: pixels.to_vec(),
            })
            .collect();
        Ok(Served { images, seeds, made_by })
    }

    /// All prompts, as requests of at most `max_batch` prompts, `concurrency` in flight at once;
    /// images and the seeds the server returned, in prompt order (prompt i keeps seed + i, or its
    /// noise, however the requests are cut).
    pub fn generate_many(&self, request: &Request, concurrency: usize, max_batch: usize) -> Result<Served> {
        let n = request.batch();
        let per_request = n.div_ceil(concurrency.max(1)).clamp(1, max_batch.max(1));
        let parts: Vec<(usize, Request)> = (0..n)
            .step_by(per_request)
            .map(|start| (start, request.part(start..(start + per_request).min(n))))
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..concurrency.max(1).min(parts.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((start, part)) = parts.get(i) else { break };
                    let result = self
                        .generate_served(part)
                        .with_context(|| format!("prompts {start}..{}", start + part.batch()));
                    results.lock().expect("no panics").push((*start, result));
                });
            }
        });
        let mut results = results.into_inner().expect("no panics");
        results.sort_by_key(|(start, _)| *start);
        let mut served = Served::default();
        for (_, result) in results {
            let part = result?;
            served.images.extend(part.images);
            served.seeds.extend(part.seeds);
            served.made_by.extend(part.made_by);
        }
        Ok(served)
    }
}

/// The output `models`: BYTES [n, 1], one JSON object per image.
fn returned_models(outputs: &[Tensor], n: usize) -> Result<Vec<MadeBy>> {
    let models = outputs
        .iter()
        .find(|t| t.name == "models")
        .context("flux answered without the output `models`")?;
    let items = models.byte_items()?;
    if models.datatype != "BYTES" || models.shape != [n as i64, 1] || items.len() != n {
        bail!(
            "flux answered models {} {:?} ({} items), expected BYTES [{n}, 1]",
            models.datatype,
            models.shape,
            items.len()
        );
    }
    items
        .into_iter()
        .map(|item| {
            serde_json::from_slice(item).with_context(|| {
                format!(
                    "flux answered models {:?}, not a JSON object of precision_set and network models",
                    String::from_utf8_lossy(&item[..item.len().min(200)])
                )
            })
        })
        .collect()
}

/// The output `seed`: INT64 [n, 1], the seed each image was made from.
fn returned_seeds(outputs: &[Tensor], n: usize) -> Result<Vec<i64>> {
    let seed = outputs
        .iter()
        .find(|t| t.name == "seed")
        .context("flux answered without the output `seed`")?;
    if seed.datatype != "INT64" || seed.shape != [n as i64, 1] || seed.data.len() != n * 8 {
        bail!(
            "flux answered seed {} {:?}, expected INT64 [{n}, 1]",
            seed.datatype,
            seed.shape
        );
    }
    Ok(seed
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect())
}
