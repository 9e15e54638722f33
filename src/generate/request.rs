//! A generation request and its checks, shared by local generation and the Triton client: every bad
//! value is refused with a message naming it before any model is touched.

use super::latents::{latent_shape, LATENT_CHANNELS};
use super::noise::{read_noise_file, seeded_noise};
use super::Variant;
use anyhow::{bail, Result};
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

/// What a request gets for each setting it leaves out.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub height: usize,
    pub width: usize,
    pub steps: usize,
    pub guidance: f32,
    pub max_sequence_length: usize,
}

impl Variant {
    /// What FluxPipeline does by default for each variant.
    pub fn defaults(self) -> Defaults {
        let (height, width) = (DEFAULT_SIDE, DEFAULT_SIDE);
        match self {
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
/// Triton deployment serve less.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub min_height: usize,
    pub max_height: usize,
    pub min_width: usize,
    pub max_width: usize,
    pub max_steps: usize,
    pub min_sequence_length: usize,
    pub max_sequence_length: usize,
    /// Who sets these limits, for messages (empty for the pipeline's own).
    pub set_by: String,
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
        self.resolve_within(&variant.defaults(), &Limits::pipeline())
    }

    /// Fills in `defaults` and checks everything against `limits`; without a seed or noise file
    /// the seed comes from the clock.
    pub fn resolve_within(self, defaults: &Defaults, limits: &Limits) -> Result<Request> {
        let (height, width) = (
            self.height.unwrap_or(defaults.height),
            self.width.unwrap_or(defaults.width),
        );
        if self.seed.is_some() && self.noise_file.is_some() {
            bail!("--seed and --noise both choose the initial noise: give one");
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
            bail!("no prompt given (--prompt TEXT)");
        }
        for (i, prompt) in self.prompts.iter().enumerate() {
            if prompt.trim().is_empty() {
                bail!("prompt {i} is empty or only whitespace");
            }
        }
        let sides = [
            ("height", self.height, limits.min_height, limits.max_height),
            ("width", self.width, limits.min_width, limits.max_width),
        ];
        for (name, side, low, high) in sides {
            if side % SIDE_MULTIPLE != 0 {
                bail!("{name} {side} is not a multiple of {SIDE_MULTIPLE}");
            }
            if !(low..=high).contains(&side) {
                bail!("{name} {side} is out of range {}", limits.range(low, high));
            }
        }
        if !(1..=limits.max_steps).contains(&self.steps) {
            bail!(
                "steps {} is out of range {}",
                self.steps,
                limits.range(1, limits.max_steps)
            );
        }
        if !self.guidance.is_finite() {
            bail!("guidance {} is not a finite number", self.guidance);
        }
        if !(limits.min_sequence_length..=limits.max_sequence_length).contains(&self.max_sequence_length) {
            bail!(
                "max sequence length {} is out of range {}",
                self.max_sequence_length,
                limits.range(limits.min_sequence_length, limits.max_sequence_length)
            );
        }
        if let InitialNoise::Tensor { noise, source } = &self.noise {
            let expected = self.latent_shape();
            if noise.shape() != expected {
                bail!(
                    "{source}: noise has shape {:?}, expected {expected:?} ([{} prompts, {LATENT_CHANNELS}, height/8, width/8])",
                    noise.shape(),
                    self.batch()
                );
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
