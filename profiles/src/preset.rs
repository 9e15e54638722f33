//! Parsing and validating presets. Every error names the preset, the optimization profile and
//! the field, and says what was expected.

use crate::{IMAGE_MULTIPLE, T5_MAX_TOKENS};
use anyhow::{anyhow, bail, Context, Result};
use fluxbuild_contract::{Network, PresetVariant};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Presets shipped inside the binary, so that `--profile NAME` works anywhere.
const BUILTIN: [(&str, &str); 4] = [
    ("static-1024", include_str!("../presets/static-1024.toml")),
    ("dynamic-512-1344", include_str!("../presets/dynamic-512-1344.toml")),
    ("schnell-fast", include_str!("../presets/schnell-fast.toml")),
    ("tiny-check", include_str!("../presets/tiny-check.toml")),
];

/// A min/opt/max range (TensorRT builds kernels for min..max and tunes them for opt).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Range {
    pub min: u32,
    pub opt: u32,
    pub max: u32,
}

impl Range {
    pub fn fixed(v: u32) -> Range {
        Range { min: v, opt: v, max: v }
    }
    pub fn is_static(&self) -> bool {
        self.min == self.max
    }
}

/// One TensorRT optimization profile. Fields a network does not use are `None` for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptProfile {
    pub batch: Range,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<Range>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<Range>,
    /// T5 sequence length (`max_sequence_length`), also the transformer's text tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_len: Option<Range>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Preset {
    pub name: String,
    pub description: String,
    pub variant: PresetVariant,
    /// Optimization profiles of each network, in TensorRT's profile order.
    pub networks: BTreeMap<Network, Vec<OptProfile>>,
    /// "builtin" or the file it was read from.
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    name: Option<String>,
    description: String,
    #[serde(default)]
    variant: PresetVariant,
    /// Profiles shared by every network that has no `[networks.NAME]` list of its own.
    #[serde(default)]
    profile: Vec<RawProfile>,
    #[serde(default)]
    networks: BTreeMap<String, RawNetwork>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    profile: Vec<RawProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    batch: Option<toml::Value>,
    height: Option<toml::Value>,
    width: Option<toml::Value>,
    text_len: Option<toml::Value>,
}

impl Preset {
    /// Names of the built-in presets.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    pub fn builtins() -> Result<Vec<Preset>> {
        BUILTIN
            .iter()
            .map(|(name, text)| Preset::parse(text, name, "builtin"))
            .collect()
    }

    /// A built-in preset by name, or a TOML file by path (anything ending in `.toml` or
    /// containing a `/`).
    pub fn load(name_or_path: &str) -> Result<Preset> {
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            return Preset::from_file(Path::new(name_or_path));
        }
        match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => Preset::parse(text, name, "builtin"),
            None => bail!(
                "no profile preset named {name_or_path:?} (built-in: {}; or give a path to a .toml file)",
                Preset::builtin_names().join(", ")
            ),
        }
    }

    pub fn from_file(path: &Path) -> Result<Preset> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read profile preset", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Preset::parse(&text, &stem, &path.display().to_string())
    }

    /// Parses and validates a preset; `default_name` is used when the file has no `name`.
    pub fn parse(text: &str, default_name: &str, source: &str) -> Result<Preset> {
        let raw: RawPreset =
            toml::from_str(text).map_err(|e| anyhow!("profile preset {source}: {}", one_line(&e, text)))?;
        let name = raw.name.unwrap_or_else(|| default_name.to_string());
        let at = |what: &str| format!("profile preset {name:?} ({source}): {what}");
        let mut own = BTreeMap::new();
        for (net_name, net) in &raw.networks {
            own.insert(
                Network::parse(net_name).with_context(|| at(&format!("[networks.{net_name}]")))?,
                net,
            );
        }
        let mut networks = BTreeMap::new();
        for network in Network::ALL {
            // A network's own list replaces the shared one; fields it has no input for are errors there.
            let (profiles, strict, place) = match own.get(&network) {
                Some(net) => (&net.profile, true, format!("networks.{network}.profile")),
                None => (&raw.profile, false, "profile".to_string()),
            };
            if profiles.is_empty() {
                bail!("{}", at(&format!("no [[{place}]] entries for {network}")));
            }
            let list = profiles
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    validate(p, network, strict).with_context(|| at(&format!("{place}[{i}] (for {network})")))
                })
                .collect::<Result<Vec<_>>>()?;
            networks.insert(network, list);
        }
        Ok(Preset {
            name,
            description: raw.description,
            variant: raw.variant,
            networks,
            source: source.to_string(),
        })
    }

    pub fn profiles(&self, network: Network) -> &[OptProfile] {
        &self.networks[&network]
    }
}

/// Checks one profile for `network`. In a network's own list (`strict`), fields the network
/// has no input for are errors; in the shared list they are simply not used by it.
fn validate(raw: &RawProfile, network: Network, strict: bool) -> Result<OptProfile> {
    let field = |value: &Option<toml::Value>, name: &str, used: bool| -> Result<Option<Range>> {
        match (value, used) {
            (Some(v), true) => Ok(Some(range(v).with_context(|| name.to_string())?)),
            (None, true) => bail!("{name} is missing ({network} needs it)"),
            (Some(_), false) if strict => bail!("{name} does not apply to {network} (it has no such input); remove it"),
            _ => Ok(None),
        }
    };
    let batch = field(&raw.batch, "batch", true)?.expect("required");
    let height = field(&raw.height, "height", network.uses_image())?;
    let width = field(&raw.width, "width", network.uses_image())?;
    let text_len = field(&raw.text_len, "text_len", network.uses_text())?;
    for (name, r) in [("height", height), ("width", width)] {
        let Some(r) = r else { continue };
        for (which, v) in [("min", r.min), ("opt", r.opt), ("max", r.max)] {
            if v % IMAGE_MULTIPLE != 0 {
                bail!(
                    "{name}: {which} {v} is not a multiple of {IMAGE_MULTIPLE} (the 8x VAE latent is packed in 2x2 patches; nearest: {} or {})",
                    v / IMAGE_MULTIPLE * IMAGE_MULTIPLE,
                    (v / IMAGE_MULTIPLE + 1) * IMAGE_MULTIPLE
                );
            }
        }
    }
    if let Some(r) = text_len {
        if r.max > T5_MAX_TOKENS {
            bail!(
                "text_len: max {} exceeds T5's maximum sequence length {T5_MAX_TOKENS}",
                r.max
            );
        }
    }
    Ok(OptProfile {
        batch,
        height,
        width,
        text_len,
    })
}

/// toml's error on one line: "line L, column C: MESSAGE" (its own text draws the line with a caret).
fn one_line(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim();
    let Some(before) = error.span().and_then(|span| text.get(..span.start)) else {
        return message.to_string();
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    format!("line {line}, column {column}: {message}")
}

/// `N` (static), `{ min = .., opt = .., max = .. }` or `[min, opt, max]`.
fn range(value: &toml::Value) -> Result<Range> {
    let int = |v: &toml::Value, what: &str| -> Result<u32> {
        let i = v
            .as_integer()
            .ok_or_else(|| anyhow!("{what} must be an integer, got {v}"))?;
        if i < 1 {
            bail!("{what} must be at least 1, got {i}");
        }
        u32::try_from(i).map_err(|_| anyhow!("{what} {i} is too large"))
    };
    let r = match value {
        toml::Value::Integer(_) => Range::fixed(int(value, "value")?),
        toml::Value::Array(a) if a.len() == 3 => Range {
            min: int(&a[0], "min")?,
            opt: int(&a[1], "opt")?,
            max: int(&a[2], "max")?,
        },
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| !["min", "opt", "max"].contains(&k.as_str())) {
                bail!("unknown key {k:?} (expected min, opt, max)");
            }
            let get = |k: &str| {
                t.get(k)
                    .ok_or_else(|| anyhow!("{k} is missing"))
                    .and_then(|v| int(v, k))
            };
            Range {
                min: get("min")?,
                opt: get("opt")?,
                max: get("max")?,
            }
        }
        other => bail!("expected an integer, [min, opt, max] or {{ min, opt, max }}, got {other}"),
    };
    if r.min > r.max {
        bail!("min {} is larger than max {}", r.min, r.max);
    }
    if r.opt < r.min || r.opt > r.max {
        bail!("opt {} is outside min..max {}..{}", r.opt, r.min, r.max);
    }
    Ok(r)
}
