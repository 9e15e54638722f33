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

/// What FluxPipeline does by default for each variant.
pub struct Defaults {
    pub steps: usize,
    pub guidance: f32,
    pub max_sequence_length: usize,
}

impl Variant {
    pub fn defaults(self) -> Defaults {
        match self {
            Variant::Dev => Defaults { steps: 28, guidance: 3.5, max_sequence_length: 512 },
            Variant::Schnell => Defaults { steps: 4, guidance: 0.0, max_sequence_length: 256 },
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
    /// Fills in defaults and checks everything; without a seed or noise file the seed comes from the clock.
    pub fn resolve(self, variant: Variant) -> Result<Request> {
        let defaults = variant.defaults();
        let (height, width) = (self.height.unwrap_or(DEFAULT_SIDE), self.width.unwrap_or(DEFAULT_SIDE));
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
        request.validate()?;
        if let Some(path) = self.noise_file {
            let noise = read_noise_file(&path, request.latent_shape())?;
            request.noise = InitialNoise::Tensor { noise, source: path.display().to_string() };
        }
        Ok(request)
    }
}

/// A seed from the clock (reported, so the image can be made again).
pub fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_secs().wrapping_mul(1_000_000_000).wrapping_add(now.subsec_nanos() as u64)
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

    pub fn validate(&self) -> Result<()> {
        if self.prompts.is_empty() {
            bail!("no prompt given (--prompt TEXT)");
        }
        for (i, prompt) in self.prompts.iter().enumerate() {
            if prompt.trim().is_empty() {
                bail!("prompt {i} is empty or only whitespace");
            }
        }
        for (name, side) in [("height", self.height), ("width", self.width)] {
            if side % SIDE_MULTIPLE != 0 || !(MIN_SIDE..=MAX_SIDE).contains(&side) {
                bail!("{name} {side} is not a multiple of {SIDE_MULTIPLE} in {MIN_SIDE}..={MAX_SIDE}");
            }
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            bail!("steps {} is out of range 1..={MAX_STEPS}", self.steps);
        }
        if !self.guidance.is_finite() {
            bail!("guidance {} is not a finite number", self.guidance);
        }
        if !(1..=MAX_SEQUENCE_LENGTH).contains(&self.max_sequence_length) {
            bail!("max sequence length {} is out of range 1..={MAX_SEQUENCE_LENGTH}", self.max_sequence_length);
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

    /// The seed of each image, when seeded.
    pub fn seeds(&self) -> Option<Vec<u64>> {
        match self.noise {
            InitialNoise::Seed(seed) => Some((0..self.batch()).map(|i| super::noise::prompt_seed(seed, i)).collect()),
            InitialNoise::Tensor { .. } => None,
        }
    }
}
