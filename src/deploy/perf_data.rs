//! perf_analyzer's `--input-data` file for the orchestrator `flux` of a packaged repository: one
//! request per prompt, every field checked against the inputs `flux/config.pbtxt` declares (name,
//! data type, one element) and the repository's limits, so every request the load generator sends
//! is one the server accepts.

use super::pbtxt::{Message, Value};
use crate::generate::request::{check_guidance, check_prompt};
use crate::package::RepositoryManifest;
use crate::serve::repository_request_rules;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map};
use std::path::Path;

/// The model perf_analyzer drives.
pub const MODEL: &str = "flux";

/// One input of a model as its config declares it (without the batch dimension).
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub name: String,
    pub data_type: String,
    pub dims: Vec<i64>,
    pub optional: bool,
}

/// A numeric request field and its value (`height`, 64).
pub type Field = (String, f64);

/// The inputs of `REPO/<model>/config.pbtxt`.
pub fn model_inputs(repo: &Path, model: &str) -> Result<Vec<Input>> {
    let path = repo.join(model).join("config.pbtxt");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read (is {} a fluxbuild repository?)",
            path.display(),
            repo.display()
        )
    })?;
    let config = Message::parse(&text).with_context(|| format!("{}: not protobuf text format", path.display()))?;
    config
        .all("input")
        .into_iter()
        .map(|v| {
            let Value::Message(m) = v else {
                bail!("{}: an `input` that is not a message", path.display())
            };
            let field = |k: &str| {
                m.scalar(k)
                    .with_context(|| format!("{}: an input without {k}", path.display()))
            };
            let dims = m
                .scalars("dims")
                .iter()
                .map(|d| d.parse::<i64>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: input dims are not integers", path.display()))?;
            Ok(Input {
                name: field("name")?.to_string(),
                data_type: field("data_type")?.to_string(),
                dims,
                optional: m.scalar("optional") == Some("true"),
            })
        })
        .collect()
}

/// The `--input-data` document: `{"data": [{"prompt": ["..."], "steps": [4], ...}, ...]}`, one
/// entry per prompt. With a `seed`, entry i gets seed + i (wrapping, as `generate` counts: different,
/// reproducible images), sent as `generate --server` sends a u64 seed: its bits as an INT64.
pub fn input_data(repo: &Path, prompts: &[String], fields: &[Field], seed: Option<u64>) -> Result<serde_json::Value> {
    if prompts.is_empty() {
        bail!("no prompt: perf_analyzer needs at least one request");
    }
    let inputs = model_inputs(repo, MODEL)?;
    let config = repo.join(MODEL).join("config.pbtxt");
    let declared = |name: &str| {
        inputs
            .iter()
            .find(|i| i.name == name)
            .with_context(|| format!("{}: {MODEL} has no input {name:?}", config.display()))
    };
    let prompt = declared("prompt")?;
    check_one_element(prompt, &config)?;
    if prompt.data_type != "TYPE_STRING" {
        bail!(
            "{}: input \"prompt\" is {}, expected TYPE_STRING",
            config.display(),
            prompt.data_type
        );
    }
    let given: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(missing) = inputs
        .iter()
        .find(|i| !i.optional && i.name != "prompt" && !given.contains(&i.name.as_str()))
    {
        bail!(
            "{}: {MODEL} requires input {:?}, which perf-data does not write",
            config.display(),
            missing.name
        );
    }
    check_limits(repo, fields)?;
    // The rules `flux` applies to every request: no request the load generator sends is a 400.
    let (rules, _) = repository_request_rules(repo)?;
    for (i, text) in prompts.iter().enumerate() {
        check_prompt(i, text.as_bytes(), &rules)?;
    }
    if let Some((_, guidance)) = fields.iter().find(|(name, _)| name == "guidance") {
        check_guidance(*guidance as f32, &rules)?;
    }
    let mut entries = Vec::new();
    for (i, text) in prompts.iter().enumerate() {
        let mut entry = Map::new();
        entry.insert("prompt".into(), json!([text]));
        if let Some(seed) = seed {
            let input = declared("seed")?;
            check_one_element(input, &config)?;
            if input.data_type != "TYPE_INT64" {
                bail!(
                    "{}: input \"seed\" is {}, expected TYPE_INT64",
                    config.display(),
                    input.data_type
                );
            }
            entry.insert("seed".into(), json!([seed.wrapping_add(i as u64) as i64]));
        }
        for (name, value) in fields {
            let input = declared(name)?;
            check_one_element(input, &config)?;
            let value = *value;
            let number = match input.data_type.as_str() {
                "TYPE_INT32" | "TYPE_INT64" | "TYPE_UINT32" | "TYPE_UINT64" => {
                    if value.fract() != 0.0 || value < 0.0 {
                        bail!(
                            "{name} {value}: {MODEL} takes a non-negative integer ({})",
                            input.data_type
                        );
                    }
                    json!(value as u64)
                }
                "TYPE_FP32" | "TYPE_FP64" => json!(value),
                other => bail!(
                    "{}: input {name:?} is {other}, which perf-data cannot write",
                    config.display()
                ),
            };
            entry.insert(name.clone(), json!([number]));
        }
        entries.push(serde_json::Value::Object(entry));
    }
    Ok(json!({ "data": entries }))
}

/// perf_analyzer sends each value as a tensor of the declared shape: only one-element inputs are written.
fn check_one_element(input: &Input, config: &Path) -> Result<()> {
    if input.dims.iter().product::<i64>() != 1 {
        bail!(
            "{}: input {:?} has dims {:?}; perf-data writes one-element inputs only",
            config.display(),
            input.name,
            input.dims
        );
    }
    Ok(())
}

/// Sizes and steps within what the repository serves (its manifest.json), so no request is a 400.
fn check_limits(repo: &Path, fields: &[Field]) -> Result<()> {
    let path = repo.join("manifest.json");
    let manifest = RepositoryManifest::read(repo)?;
    let limits = &manifest.limits;
    for (name, value) in fields {
        let (min, max) = match name.as_str() {
            "height" => (limits.min_height as f64, limits.max_height as f64),
            "width" => (limits.min_width as f64, limits.max_width as f64),
            "steps" => (1.0, f64::from(manifest.settings.max_steps)),
            _ => continue,
        };
        if *value < min || *value > max || (name != "steps" && value % 16.0 != 0.0) {
            let multiple = if name == "steps" { "" } else { ", a multiple of 16" };
            bail!(
                "{name} {value}: the repository serves {min}..={max}{multiple} ({})",
                path.display()
            );
        }
    }
    Ok(())
}
