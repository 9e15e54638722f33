//! The flow-matching Euler schedule exactly as FluxPipeline drives diffusers'
//! `FlowMatchEulerDiscreteScheduler`, down to the float precision of every operation:
//! the pipeline's `np.linspace(1, 1/N, N)` is float64, the scheduler casts it to float32 and
//! shifts it with numpy float32 arithmetic (NumPy 2 casts the Python scalars `e^mu` and `1` to
//! float32), `mu` itself is Python float64, and the Euler step is float32.

use super::Variant;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The settings of `scheduler/scheduler_config.json` that FluxPipeline's schedule depends on;
/// absent keys take diffusers' defaults.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: u32,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: u32,
    pub max_image_seq_len: u32,
    pub time_shift_type: String,
    pub shift_terminal: Option<f64>,
    /// Settings that change the schedule in ways FluxPipeline on FLUX.1 never uses: refused, not ignored.
    #[serde(skip_serializing)]
    use_karras_sigmas: bool,
    #[serde(skip_serializing)]
    use_exponential_sigmas: bool,
    #[serde(skip_serializing)]
    use_beta_sigmas: bool,
    #[serde(skip_serializing)]
    invert_sigmas: bool,
    #[serde(skip_serializing)]
    stochastic_sampling: bool,
    #[serde(skip_serializing)]
    use_flow_sigmas: bool,
    /// Keys the schedule does not read: diffusers' own (`_class_name`, `_diffusers_version`, ...)
    /// and the settings of a newer diffusers, fine while off (false or null). One that is set is
    /// refused: it would change the schedule, or the file is another one (`{"foo": 1}`, a model's
    /// config.json without its class), which would otherwise read as the defaults.
    #[serde(flatten, skip_serializing)]
    other: BTreeMap<String, serde_json::Value>,
}

const SCHEDULER_CLASS: &str = "FlowMatchEulerDiscreteScheduler";

/// `FlowMatchEulerDiscreteScheduler.__init__`'s defaults.
impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift_type: "exponential".into(),
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            invert_sigmas: false,
            stochastic_sampling: false,
            use_flow_sigmas: false,
            other: BTreeMap::new(),
        }
    }
}

impl SchedulerConfig {
    /// The published FLUX.1 configs: dev shifts with the image size, schnell does not.
    pub fn for_variant(variant: Variant) -> SchedulerConfig {
        match variant {
            Variant::Dev => SchedulerConfig {
                shift: 3.0,
                use_dynamic_shifting: true,
                ..Default::default()
            },
            Variant::Schnell => SchedulerConfig::default(),
        }
    }

    /// Reads and checks `scheduler_config.json`.
    pub fn read(path: &Path) -> Result<SchedulerConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        if !value.is_object() {
            // serde would fill the struct's fields from an array, in order.
            bail!("{}: not a scheduler config: expected a JSON object", path.display());
        }
        if let Some(class) = value.get("_class_name").filter(|c| *c != SCHEDULER_CLASS) {
            bail!(
                "{}: the config of a {}, not of FLUX.1's scheduler ({SCHEDULER_CLASS})",
                path.display(),
                class.as_str().map_or_else(|| class.to_string(), str::to_string)
            );
        }
        let config: SchedulerConfig =
            serde_json::from_value(value).with_context(|| format!("{}: not a scheduler config", path.display()))?;
        config
            .check()
            .with_context(|| format!("{}: unsupported scheduler setting", path.display()))?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        let set: Vec<&str> = self
            .other
            .iter()
            // diffusers' own keys, and settings left off.
            .filter(|(key, value)| !(key.starts_with('_') || value.is_null() || **value == false))
            .map(|(key, _)| key.as_str())
            .collect();
        if !set.is_empty() {
            bail!(
                "{} set, which FLUX.1's schedule does not read (a newer diffusers' setting, or another file?)",
                set.join(", ")
            );
        }
        let refused = [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("invert_sigmas", self.invert_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
            ("use_flow_sigmas", self.use_flow_sigmas),
        ];
        if let Some((name, _)) = refused.iter().find(|(_, on)| *on) {
            bail!("`{name}: true` is not implemented (FluxPipeline's FLUX.1 schedulers leave it false)");
        }
        if !matches!(self.time_shift_type.as_str(), "exponential" | "linear") {
            bail!(
                "time_shift_type is {:?}, expected \"exponential\" or \"linear\"",
                self.time_shift_type
            );
        }
        if self.max_image_seq_len == self.base_image_seq_len {
            bail!(
                "max_image_seq_len equals base_image_seq_len ({}): mu is undefined",
                self.base_image_seq_len
            );
        }
        if self.shift_terminal == Some(1.0) {
            bail!("shift_terminal 1.0 divides by zero");
        }
        Ok(())
    }

    /// FluxPipeline's `calculate_shift` (Python float64): mu from the number of image tokens.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let (base, max) = (self.base_image_seq_len as f64, self.max_image_seq_len as f64);
        let m = (self.max_shift - self.base_shift) / (max - base);
        let b = self.base_shift - m * base;
        image_seq_len as f64 * m + b
    }

    /// The N + 1 sigmas (last 0) for `steps` steps on an image of `image_seq_len` tokens.
    pub fn sigmas(&self, steps: usize, image_seq_len: usize) -> Vec<f32> {
        let mut sigmas: Vec<f32> = linspace(1.0, 1.0 / steps as f64, steps)
            .into_iter()
            .map(|s| s as f32)
            .collect();
        if self.use_dynamic_shifting {
            let mu = self.mu(image_seq_len);
            let exponential = self.time_shift_type == "exponential";
            let numerator = if exponential { mu.exp() as f32 } else { mu as f32 };
            // numerator / (numerator + (1/t - 1) ** 1.0): the power of exponent 1 is exact.
            for s in &mut sigmas {
                *s = numerator / (numerator + (1.0f32 / *s - 1.0));
            }
        } else {
            let (shift, shift_minus_one) = (self.shift as f32, (self.shift - 1.0) as f32);
            for s in &mut sigmas {
                *s = shift * *s / (1.0 + shift_minus_one * *s);
            }
        }
        if let Some(terminal) = self.shift_terminal.filter(|t| *t != 0.0) {
            let last_one_minus = 1.0 - *sigmas.last().expect("steps >= 1");
            let scale = last_one_minus / (1.0 - terminal) as f32;
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
        sigmas.push(0.0);
        sigmas
    }

    /// The `timestep` the pipeline feeds the transformer at step i: (1000·σ)/1000 in float32, which is
    /// not always σ itself.
    pub fn model_timestep(&self, sigma: f32) -> f32 {
        let train = self.num_train_timesteps as f32;
        (sigma * train) / 1000.0
    }
}

/// numpy.linspace(start, stop, num) in float64: `start + i·step`, the last value set to `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    values[num - 1] = stop;
    values
}

/// One Euler step in place, float32 as the scheduler runs it: x += (σ_next − σ)·v.
pub fn euler_step(latents: &mut [f32], velocity: &[f32], sigma: f32, sigma_next: f32) {
    let dt = sigma_next - sigma;
    for (x, v) in latents.iter_mut().zip(velocity) {
        *x += dt * *v;
    }
}
