//! Deriving a submodel's configuration: sizes from tensor shapes, the rest (head counts, epsilons,
//! group counts) from `--config`, then the checkpoint's `config.json`, then a default that is only
//! known for the full-size FLUX model. Every value remembers where it came from (`inspect` shows
//! it), a config that contradicts the shapes is an error, and every error names the file and tensor.

use crate::checkpoint::Checkpoint;
use anyhow::Result;
use fluxbuild_contract::Network;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;

pub struct Derivation<'c> {
    ckpt: &'c Checkpoint,
    /// The checkpoint's file(s), for messages.
    source: String,
    /// (where it came from, the config object), in order of precedence.
    configs: Vec<(String, Value)>,
    /// Where each derived value came from.
    origins: BTreeMap<String, String>,
}

impl<'c> Derivation<'c> {
    /// `config` is `--config`; a config shared by several submodels holds `network`'s part under
    /// its name or its diffusers folder (e.g. `clip` or `text_encoder`).
    pub fn new(ckpt: &'c Checkpoint, config: Option<&Value>, network: Network) -> Result<Self> {
        let sections = [network.name(), network.folder()];
        let source = ckpt
            .source_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let section = |v: &Value| {
            sections
                .iter()
                .find_map(|s| v.get(s).filter(|s| s.is_object()).cloned())
                .unwrap_or_else(|| v.clone())
        };
        let mut configs = Vec::new();
        let beside = ckpt.config()?.map(|v| section(&v));
        if let Some(cli) = config.map(section) {
            if Some(&cli) != beside.as_ref() {
                configs.push(("--config".to_string(), cli));
            }
        }
        if let (Some(v), Some(path)) = (beside, &ckpt.located.config) {
            configs.push((path.display().to_string(), v));
        }
        Ok(Derivation {
            ckpt,
            source,
            configs,
            origins: BTreeMap::new(),
        })
    }

    pub fn checkpoint(&self) -> &'c Checkpoint {
        self.ckpt
    }

    /// A tensor name as the file spells it (with the stripped key prefix).
    pub fn file_name(&self, name: &str) -> String {
        format!("{}{name}", self.ckpt.prefix)
    }

    /// An error about this checkpoint.
    pub fn error(&self, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {message}", self.source)
    }

    /// The shape of `name`, which must exist with `rank` dims.
    pub fn shape(&self, name: &str, rank: usize) -> Result<Vec<usize>> {
        let Some(t) = self.ckpt.get(name) else {
            return Err(self.error(format!(
                "tensor {} is missing (the model's sizes are read from it)",
                self.file_name(name)
            )));
        };
        if t.shape().len() != rank {
            return Err(self.error(format!(
                "tensor {} has shape {:?}, expected {rank} dims",
                self.file_name(name),
                t.shape()
            )));
        }
        Ok(t.shape().to_vec())
    }

    /// How many consecutive blocks `prefix0.`, `prefix1.`, ... there are; a gap is an error.
    pub fn count(&self, prefix: &str, what: &str) -> Result<usize> {
        let found = self.ckpt.indices_under(prefix);
        if found.is_empty() {
            return Err(self.error(format!(
                "no {what} found (no tensor named {}N.*)",
                self.file_name(prefix)
            )));
        }
        if let Some(gap) = (0..found.len()).find(|i| !found.contains(i)) {
            let list: Vec<String> = found.iter().map(|i| i.to_string()).collect();
            return Err(self.error(format!(
                "{what} {} is missing (found {} only)",
                self.file_name(&format!("{prefix}{gap}")),
                list.join(", ")
            )));
        }
        Ok(found.len())
    }

    /// Records `value` of `key`, read from the shape of `tensor`; a config saying otherwise is an error.
    pub fn from_shape(&mut self, key: &str, value: usize, tensor: &str) -> Result<usize> {
        self.record(key, value, format!("shape of {}", self.file_name(tensor)))
    }

    /// Records `value` of `key`, the number of blocks `prefix`N. Without a config saying so, a
    /// model whose width is a known full-size one must also have its depth, `known` = (depth,
    /// model name): fewer blocks than that is a damaged file, not a smaller model.
    pub fn from_count(&mut self, key: &str, value: usize, prefix: &str, known: Option<(usize, &str)>) -> Result<usize> {
        if let (None, Some((depth, model))) = (self.lookup::<usize>(key)?, known) {
            if value != depth {
                return Err(self.error(format!(
                    "{value} blocks {}N, but {model} has {depth}: is a block missing? (a config with `{key}` = {value} exports it anyway)",
                    self.file_name(prefix)
                )));
            }
        }
        self.record(key, value, format!("count of {}N", self.file_name(prefix)))
    }

    /// Records `value` of `key`, which the weights give (`origin` says how); a config saying
    /// otherwise is an error.
    pub fn record<T: DeserializeOwned + PartialEq + std::fmt::Debug>(
        &mut self,
        key: &str,
        value: T,
        origin: String,
    ) -> Result<T> {
        if let Some((said, config)) = self.lookup::<T>(key)? {
            if said != value {
                return Err(self.error(format!(
                    "{config} says {key} = {said:?}, but the weights say {value:?} ({origin})"
                )));
            }
        }
        self.origins.insert(key.to_string(), origin);
        Ok(value)
    }

    /// `key` from the configs, else `default` (value, why it applies), else an error explaining
    /// how to provide it; `what` says in words what is missing.
    pub fn required<T: DeserializeOwned>(&mut self, key: &str, default: Option<(T, &str)>, what: &str) -> Result<T> {
        if let Some((value, origin)) = self.lookup(key)? {
            self.origins.insert(key.to_string(), origin);
            return Ok(value);
        }
        match default {
            Some((value, why)) => {
                self.origins.insert(key.to_string(), why.to_string());
                Ok(value)
            }
            None => Err(self.error(format!(
                "the {what} is not in the tensor shapes and no config gives it: put the model's config.json \
                 (with `{key}`) beside the weights, or pass --config FILE"
            ))),
        }
    }

    /// `key` from the configs, else the architecture's fixed `default`.
    pub fn or_default<T: DeserializeOwned>(&mut self, key: &str, default: T) -> Result<T> {
        self.required(key, Some((default, "default")), key)
    }

    /// The first config that has `key`, with its origin.
    pub fn lookup<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, String)>> {
        for (origin, config) in &self.configs {
            if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                return match serde_json::from_value(v.clone()) {
                    Ok(value) => Ok(Some((value, origin.clone()))),
                    Err(e) => Err(self.error(format!("{origin}: `{key}` = {v} is not valid here: {e}"))),
                };
            }
        }
        Ok(None)
    }

    /// Where each value came from.
    pub fn origins(&self) -> BTreeMap<String, String> {
        self.origins.clone()
    }
}
