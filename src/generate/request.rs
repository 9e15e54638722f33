//! A generation request and its checks, shared by local generation and the Triton client: every bad
//! value is refused with a message naming it before any model is touched.

use super::latents::{latent_shape, LATENT_CHANNELS};
use super::noise::{read_noise_file, seeded_noise};
use super::Variant;
use anyhow::{anyhow, Result};
use ndarray::Array4;
use std::path::PathBuf;

/// Image sides are multiples of 16 (8× VAE, 2×2 patches).
pub const SIDE_MULTIPLE: usize = 16;
pub const MIN_SIDE: usize = 16;
pub const MAX_SIDE: usize = 4096;
pub const MAX_STEPS: usize = 1000;
/// FluxPipeline refuses longer T5 sequences.
pub const MAX_SEQUENCE_LENGTH: usize = 512;
pub const DEFAULT_SIDE: usize = 1024;
/// Prompt bytes a request may carry per prompt by default: T5 reads at most 512 tokens (a few KB
/// of text); anything longer is truncated anyway, and tokenizing megabytes costs seconds and GBs.
pub const MAX_PROMPT_BYTES: usize = 4096;
/// FluxPipeline's guidance is a scale around 1..10; larger values only give black images.
pub const MAX_GUIDANCE: f32 = 100.0;
/// Memory model (docs/serving.md, measured by `make bench-memory` into bench/memory.md): the VAE
/// decoder's peak activation memory per output pixel of one image (fp32, 128 to 512 channels at up
/// to full resolution). It decodes one image at a time, so a batch pays this for one image only.
/// Served at 1472² (the largest image 3700 allowed) the decoder's backend grew by 4236 B/px, more
/// than the 3074-3654 B/px measured alone at 512²-1024²: 4400 covers it (bench/memory-notes.md).
pub const VAE_BYTES_PER_PIXEL: usize = 4400;
/// What each image of a batch holds besides, per pixel: its latents, its decoded fp32 image as it
/// passes between the processes (a few copies) and its 8-bit result.
pub const BATCH_BYTES_PER_PIXEL: usize = 200;
/// The memory one request may take by default (local generation and `package`'s default budget).
pub const MEMORY_BUDGET_BYTES: usize = 8 << 30;

/// The pixels one image may have within `budget` bytes (alone in its batch).
pub fn max_image_pixels(budget: usize) -> usize {
    budget / (VAE_BYTES_PER_PIXEL + BATCH_BYTES_PER_PIXEL)
}

/// The pixels a batch of images of `image_pixels` each may hold within `budget` bytes: one image
/// at a time in the VAE decoder, every image's batch memory at once (at least one image).
pub fn max_batch_pixels(budget: usize, image_pixels: usize) -> usize {
    let decoder = VAE_BYTES_PER_PIXEL * image_pixels;
    (budget.saturating_sub(decoder) / BATCH_BYTES_PER_PIXEL).max(image_pixels)
}

/// What a request gets for each setting it leaves out.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub height: usize,
    pub width: usize,
    pub steps: usize,
    pub guidance: f32,
    pub max_sequence_length: usize,
}

impl Defaults {
    /// What FluxPipeline does by default for each variant.
    pub fn of(variant: Variant) -> Defaults {
        let (height, width) = (DEFAULT_SIDE, DEFAULT_SIDE);
        match variant {
            Variant::Dev => Defaults {
                height,
                width,
                steps: 28,
                guidance: 3.5,
                max_sequence_length: 512,
            },
            Variant::Schnell => Defaults {
                height,
                width,
                steps: 4,
                guidance: 0.0,
                max_sequence_length: 256,
            },
        }
    }
}

/// What a request may ask for: what the pipeline's math allows, or less where the graphs or a
/// Triton deployment serve less. This is the one validation table: `fluxbuild package` writes it
/// as JSON into the `flux` config (parameter `request_rules`), the orchestrator checks every
/// request against it before any batch work, and `generate --server` reads it back and checks
/// the same rules locally. Each refusal names its rule as `[rule NAME]` on both sides.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub min_height: usize,
    pub max_height: usize,
    pub min_width: usize,
    pub max_width: usize,
    pub side_multiple: usize,
    pub max_steps: usize,
    pub min_sequence_length: usize,
    pub max_sequence_length: usize,
    pub min_guidance: f32,
    pub max_guidance: f32,
    /// Bytes per prompt (UTF-8).
    pub max_prompt_bytes: usize,
    /// height x width of one image: `max_image_pixels(memory budget)`.
    pub max_image_pixels: usize,
    /// Who sets these limits, for messages (empty for the pipeline's own).
    #[serde(skip)]
    pub set_by: String,
}

/// The `flux` model's parameters, with this table as its `request_rules`.
pub type FluxParameters = fluxbuild_contract::orchestrator::OrchestratorParameters<Limits>;

/// A refusal naming its rule of the table (`[rule NAME]`, as the orchestrator words it).
pub fn refuse(rule: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{message} [rule {rule}]")
}

/// The rule a refusal names, if it names one.
pub fn rule_of(message: &str) -> Option<&str> {
    let start = message.rfind("[rule ")? + 6;
    message[start..].split(']').next()
}

/// The prompt rules, on the bytes as they arrive (the server gets bytes; the CLI's strings are
/// UTF-8 already): length first (before any decoding), UTF-8, control characters (NUL included;
/// tab and line breaks allowed), then emptiness.
pub fn check_prompt(index: usize, bytes: &[u8], limits: &Limits) -> Result<()> {
    if bytes.len() > limits.max_prompt_bytes {
        return Err(refuse(
            "prompt_too_long",
            format!(
                "prompt {index} is {} bytes, more than the {} allowed",
                bytes.len(),
                limits.max_prompt_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| refuse("prompt_not_utf8", format!("prompt {index} is not valid UTF-8 ({e})")))?;
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(refuse(
            "prompt_control",
            format!("prompt {index} contains the control character U+{:04X}", c as u32),
        ));
    }
    if text.trim().is_empty() {
        return Err(refuse(
            "prompt_empty",
            format!("prompt {index} is empty or only whitespace"),
        ));
    }
    Ok(())
}

/// The guidance rule: a finite scale within the limits (NaN compares as in range otherwise).
pub fn check_guidance(guidance: f32, limits: &Limits) -> Result<()> {
    if !(guidance.is_finite() && (limits.min_guidance..=limits.max_guidance).contains(&guidance)) {
        return Err(refuse(
            "guidance_range",
            format!(
                "guidance {guidance} is out of range {}..={}",
                limits.min_guidance, limits.max_guidance
            ),
        ));
    }
    Ok(())
}

impl Limits {
    pub fn pipeline() -> Limits {
        Limits {
            min_height: MIN_SIDE,
            max_height: MAX_SIDE,
            min_width: MIN_SIDE,
            max_width: MAX_SIDE,
            max_steps: MAX_STEPS,
            min_sequence_length: 1,
            max_sequence_length: MAX_SEQUENCE_LENGTH,
            side_multiple: SIDE_MULTIPLE,
            min_guidance: 0.0,
            max_guidance: MAX_GUIDANCE,
            max_prompt_bytes: MAX_PROMPT_BYTES,
            max_image_pixels: max_image_pixels(MEMORY_BUDGET_BYTES),
            set_by: String::new(),
        }
    }

    fn range(&self, low: usize, high: usize) -> String {
        match self.set_by.as_str() {
            "" => format!("{low}..={high}"),
            by => format!("{low}..={high} ({by})"),
        }
    }
}

/// Where the initial latents come from.
#[derive(Clone, Debug)]
pub enum InitialNoise {
    /// "fluxbuild noise v1": image i from seed + i.
    Seed(u64),
    /// Given [B, 16, H/8, W/8] (from a `--noise` file).
    Tensor { noise: Array4<f32>, source: String },
}

#[derive(Clone, Debug)]
pub struct Request {
    pub prompts: Vec<String>,
    pub height: usize,
    pub width: usize,
    pub steps: usize,
    /// Guidance scale; only graphs with a `guidance` input (dev) use it.
    pub guidance: f32,
    pub max_sequence_length: usize,
    pub noise: InitialNoise,
}

/// A request as people write it: anything left out takes the variant's default.
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    pub prompts: Vec<String>,
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub seed: Option<u64>,
    pub max_sequence_length: Option<usize>,
    pub noise_file: Option<PathBuf>,
}

impl RequestOptions {
    /// Fills in the variant's defaults and checks everything against the pipeline's limits.
    pub fn resolve(self, variant: Variant) -> Result<Request> {
        self.resolve_within(&Defaults::of(variant), &Limits::pipeline())
    }

    /// Fills in `defaults` and checks everything against `limits`; without a seed or noise file
    /// the seed comes from the clock.
    pub fn resolve_within(self, defaults: &Defaults, limits: &Limits) -> Result<Request> {
        let (height, width) = (
            self.height.unwrap_or(defaults.height),
            self.width.unwrap_or(defaults.width),
        );
        if self.seed.is_some() && self.noise_file.is_some() {
            return Err(refuse(
                "seed_and_noise",
                "--seed and --noise (the inputs seed and noise) both choose the initial noise: give one",
            ));
        }
        let mut request = Request {
            prompts: self.prompts,
            height,
            width,
            steps: self.steps.unwrap_or(defaults.steps),
            guidance: self.guidance.unwrap_or(defaults.guidance),
            max_sequence_length: self.max_sequence_length.unwrap_or(defaults.max_sequence_length),
            noise: InitialNoise::Seed(self.seed.unwrap_or_else(clock_seed)),
        };
        request.check(limits)?;
        if let Some(path) = self.noise_file {
            let noise = read_noise_file(&path, request.latent_shape())?;
            request.noise = InitialNoise::Tensor {
                noise,
                source: path.display().to_string(),
            };
        }
        Ok(request)
    }
}

/// A seed from the clock (reported, so the image can be made again).
pub fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs()
        .wrapping_mul(1_000_000_000)
        .wrapping_add(now.subsec_nanos() as u64)
}

impl Request {
    pub fn batch(&self) -> usize {
        self.prompts.len()
    }

    /// The unpacked latent shape [B, 16, H/8, W/8].
    pub fn latent_shape(&self) -> [usize; 4] {
        latent_shape(self.batch(), self.height, self.width)
    }

    /// The number of image tokens the transformer sees, (H/16)(W/16).
    pub fn image_seq_len(&self) -> usize {
        (self.height / SIDE_MULTIPLE) * (self.width / SIDE_MULTIPLE)
    }

    /// Checks the request against what the pipeline's math allows.
    pub fn validate(&self) -> Result<()> {
        self.check(&Limits::pipeline())
    }

    pub fn check(&self, limits: &Limits) -> Result<()> {
        if self.prompts.is_empty() {
            return Err(refuse("prompt_missing", "no prompt given"));
        }
        for (i, prompt) in self.prompts.iter().enumerate() {
            check_prompt(i, prompt.as_bytes(), limits)?;
        }
        let sides = [
            ("height", self.height, limits.min_height, limits.max_height),
            ("width", self.width, limits.min_width, limits.max_width),
        ];
        for (name, side, low, high) in sides {
            if side % limits.side_multiple != 0 {
                return Err(refuse(
                    "size_multiple",
                    format!("{name} {side} is not a multiple of {}", limits.side_multiple),
                ));
            }
            if !(low..=high).contains(&side) {
                return Err(refuse(
                    "size_range",
                    format!("{name} {side} is out of range {}", limits.range(low, high)),
                ));
            }
        }
        let pixels = self.height * self.width;
        if pixels > limits.max_image_pixels {
            return Err(refuse(
                "image_pixels",
                format!(
                    "{}x{} is {pixels} pixels, more than the {} one image may have (memory model: {} bytes per pixel)",
                    self.width,
                    self.height,
                    limits.max_image_pixels,
                    VAE_BYTES_PER_PIXEL + BATCH_BYTES_PER_PIXEL
                ),
            ));
        }
        if !(1..=limits.max_steps).contains(&self.steps) {
            return Err(refuse(
                "steps_range",
                format!(
                    "steps {} is out of range {}",
                    self.steps,
                    limits.range(1, limits.max_steps)
                ),
            ));
        }
        check_guidance(self.guidance, limits)?;
        if !(limits.min_sequence_length..=limits.max_sequence_length).contains(&self.max_sequence_length) {
            return Err(refuse(
                "sequence_length_range",
                format!(
                    "max sequence length {} is out of range {}",
                    self.max_sequence_length,
                    limits.range(limits.min_sequence_length, limits.max_sequence_length)
                ),
            ));
        }
        if let InitialNoise::Tensor { noise, source } = &self.noise {
            let expected = self.latent_shape();
            if noise.shape() != expected {
                return Err(refuse(
                    "noise_shape",
                    format!(
                        "{source}: noise has shape {:?}, expected {expected:?} ([{} prompts, {LATENT_CHANNELS}, height/8, width/8])",
                        noise.shape(),
                        self.batch()
                    ),
                ));
            }
            if noise.iter().any(|v| !v.is_finite()) {
                return Err(refuse(
                    "noise_finite",
                    format!("{source}: noise holds non-finite values"),
                ));
            }
        }
        Ok(())
    }

    /// The unpacked initial latents [B, 16, H/8, W/8].
    pub fn initial_noise(&self) -> Array4<f32> {
        match &self.noise {
            InitialNoise::Seed(seed) => seeded_noise(*seed, self.latent_shape()),
            InitialNoise::Tensor { noise, .. } => noise.clone(),
        }
    }

    /// Prompts `range` as a request of their own: each keeps its seed (seed + i) or its noise.
    pub fn part(&self, range: std::ops::Range<usize>) -> Request {
        let noise = match &self.noise {
            InitialNoise::Seed(seed) => InitialNoise::Seed(super::noise::prompt_seed(*seed, range.start)),
            InitialNoise::Tensor { noise, source } => InitialNoise::Tensor {
                noise: noise.slice(ndarray::s![range.clone(), .., .., ..]).to_owned(),
                source: format!("{source} [prompts {}..{}]", range.start, range.end),
            },
        };
        Request {
            prompts: self.prompts[range].to_vec(),
            height: self.height,
            width: self.width,
            steps: self.steps,
            guidance: self.guidance,
            max_sequence_length: self.max_sequence_length,
            noise,
        }
    }

    /// The seed of each image, when seeded.
    pub fn seeds(&self) -> Option<Vec<u64>> {
        match self.noise {
            InitialNoise::Seed(seed) => Some((0..self.batch()).map(|i| super::noise::prompt_seed(seed, i)).collect()),
            InitialNoise::Tensor { .. } => None,
        }
    }
}
