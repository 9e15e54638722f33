//! Keeping a served repository truthful and alive (`fluxbuild serve`): Triton itself keeps calling
//! a Python-backend model READY after its backend stub process died (every request then fails),
//! and `flux` READY while a network it needs is unloaded. Once a second the supervisor looks at
//! the server's model states and its stub processes; when a network is missing or dead it unloads
//! `flux` (so its readiness, and the server's strict readiness, say "not ready"), reloads the
//! network, and loads `flux` again once every network is ready. Under explicit model control the
//! networks are loaded first and `flux` after them.

use crate::client::Client;
use crate::deploy::pbtxt::Message;
use crate::generate::request::FluxParameters;
use crate::server_process::stubs_of;
use anyhow::{Context, Result};
use fluxbuild_contract::parameters::Parameters;
use fluxbuild_contract::Network;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ORCHESTRATOR: &str = "flux";

pub struct Supervisor {
    client: Client,
    repo: PathBuf,
    server_pid: u32,
    /// Network -> its models, primary first (from the `flux` config's model_X / fallback_X).
    networks: BTreeMap<String, Vec<String>>,
    /// Models served by the Python backend, with their instances (one stub process each).
    python: BTreeMap<String, usize>,
}

/// What one check found and did.
#[derive(Debug, Default, PartialEq)]
pub struct Repair {
    /// Python-backend models READY with fewer live stub processes than instances.
    pub dead: Vec<String>,
    /// Networks with no READY model.
    pub missing: Vec<String>,
    /// Models (re)loaded.
    pub loaded: Vec<String>,
    /// The missing networks' models, with what Triton says of them.
    pub why: Vec<Unready>,
}

/// A model in Triton's repository index.
struct ModelState {
    /// READY, LOADING, UNAVAILABLE, ...
    state: String,
    /// Why it is not READY (a failed load's error), first line only.
    reason: String,
}

impl ModelState {
    fn ready(&self) -> bool {
        self.state == "READY"
    }
}

/// The networks' models as Triton has them now.
pub struct Loaded {
    /// Networks with no READY model.
    pub missing: Vec<String>,
    /// Every network model that is not READY.
    pub unready: Vec<Unready>,
}

impl Loaded {
    /// Whether a model is still loading (its outcome is not known yet).
    pub fn loading(&self) -> bool {
        self.unready.iter().any(|u| u.state == "LOADING")
    }
}

/// A network model that is not READY, and why (Triton's reason: a failed load's error).
#[derive(Clone, Debug, PartialEq)]
pub struct Unready {
    pub network: String,
    pub model: String,
    /// LOADING, UNAVAILABLE, ...; empty when the repository has no such model.
    pub state: String,
    pub reason: String,
}

/// `unready` as one line, for a warning or an error.
pub fn describe<'a>(unready: impl IntoIterator<Item = &'a Unready>) -> String {
    unready
        .into_iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (model, network) = (&self.model, &self.network);
        match (self.state.as_str(), self.reason.as_str()) {
            ("", _) => write!(f, "model `{model}` ({network}) is not in the repository"),
            (state, "") => write!(f, "model `{model}` ({network}) is {state}"),
            (state, reason) => write!(f, "model `{model}` ({network}) is {state}: {reason}"),
        }
    }
}

impl Supervisor {
    pub fn new(client: Client, repo: &Path, server_pid: u32) -> Result<Supervisor> {
        let repo = repo
            .canonicalize()
            .with_context(|| format!("{}: not found", repo.display()))?;
        let flux = std::fs::read_to_string(repo.join(ORCHESTRATOR).join("config.pbtxt"))
            .with_context(|| format!("{}: no `{ORCHESTRATOR}` model", repo.display()))?;
        let flux =
            Message::parse(&flux).with_context(|| format!("{}: `{ORCHESTRATOR}` config.pbtxt", repo.display()))?;
        let parameters = FluxParameters::from_strings(flux.string_parameters())
            .with_context(|| format!("{}: `{ORCHESTRATOR}` config.pbtxt", repo.display()))?;
        let networks: BTreeMap<String, Vec<String>> = Network::ALL
            .into_iter()
            .map(|network| (network.name().to_string(), parameters.models(network)))
            .collect();
        let mut python = BTreeMap::new();
        for model in networks
            .values()
            .flatten()
            .chain(std::iter::once(&ORCHESTRATOR.to_string()))
        {
            let config = std::fs::read_to_string(repo.join(model).join("config.pbtxt")).unwrap_or_default();
            if config.contains("backend: \"python\"") {
                python.insert(model.clone(), instances(&config));
            }
        }
        Ok(Supervisor {
            client,
            repo,
            server_pid,
            networks,
            python,
        })
    }

    /// Every network model, in load order (primaries first).
    pub fn network_models(&self) -> Vec<String> {
        self.networks.values().flatten().cloned().collect()
    }

    fn states(&self) -> Result<BTreeMap<String, ModelState>> {
        let index = self.client.post_json("/v2/repository/index", &serde_json::json!({}))?;
        Ok(index
            .as_array()
            .context("the repository index is not a list")?
            .iter()
            .filter_map(|m| {
                let state = ModelState {
                    state: m["state"].as_str()?.to_string(),
                    reason: m["reason"]
                        .as_str()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                };
                Some((m["name"].as_str()?.to_string(), state))
            })
            .collect())
    }

    /// The networks' models now: which networks have none READY, and why each unready one is not.
    pub fn loaded(&self) -> Result<Loaded> {
        Ok(self.loaded_in(&self.states()?, &[]))
    }

    /// `loaded` from `states`, where the `dead` models (READY without a live stub) do not count as
    /// ready; they are not listed as unready either (`Repair::dead` names them).
    fn loaded_in(&self, states: &BTreeMap<String, ModelState>, dead: &[String]) -> Loaded {
        let mut loaded = Loaded {
            missing: vec![],
            unready: vec![],
        };
        for (network, models) in &self.networks {
            if !models
                .iter()
                .any(|m| states.get(m).is_some_and(ModelState::ready) && !dead.contains(m))
            {
                loaded.missing.push(network.clone());
            }
            for model in models {
                let (state, reason) = match states.get(model) {
                    Some(s) if s.ready() => continue,
                    Some(s) => (s.state.clone(), s.reason.clone()),
                    None => (String::new(), String::new()),
                };
                loaded.unready.push(Unready {
                    network: network.clone(),
                    model: model.clone(),
                    state,
                    reason,
                });
            }
        }
        loaded
    }

    /// Per model, its live (not zombie) backend stubs among the server's children.
    fn live_stubs(&self) -> BTreeMap<String, usize> {
        let mut live = BTreeMap::new();
        for stub in stubs_of(self.server_pid) {
            if let Some(model) = stub.model().filter(|_| stub.script.starts_with(&self.repo)) {
                *live.entry(model).or_default() += 1;
            }
        }
        live
    }

    /// One look, and the repairs it calls for.
    pub fn check(&self) -> Result<Repair> {
        let states = self.states()?;
        let live = self.live_stubs();
        let ready = |m: &str| states.get(m).is_some_and(ModelState::ready);
        let mut repair = Repair::default();
        for model in self
            .network_models()
            .iter()
            .chain(std::iter::once(&ORCHESTRATOR.to_string()))
        {
            // One dead instance fails every request routed to it (`flux` runs 8): it counts.
            let stubs = live.get(model).copied().unwrap_or(0);
            if ready(model) && self.python.get(model).is_some_and(|&instances| stubs < instances) {
                repair.dead.push(model.clone());
            }
        }
        let loaded = self.loaded_in(&states, &repair.dead);
        repair.why = loaded
            .unready
            .into_iter()
            .filter(|u| loaded.missing.contains(&u.network))
            .collect();
        repair.missing = loaded.missing;
        let flux_ok = ready(ORCHESTRATOR) && !repair.dead.iter().any(|m| m == ORCHESTRATOR);
        if repair.missing.is_empty() && repair.dead.is_empty() && flux_ok {
            return Ok(repair);
        }
        if !repair.missing.is_empty() && ready(ORCHESTRATOR) {
            // Not ready while a network is: the probes see it, the balancer sends no traffic.
            let _ = self.client.repository(ORCHESTRATOR, "unload");
        }
        for model in &repair.dead {
            // A dead stub never answers the unload; a load then starts a fresh one.
            let _ = self.client.repository(model, "unload");
        }
        for network in &repair.missing {
            let model = &self.networks[network][0];
            if self.client.repository(model, "load").is_ok() {
                repair.loaded.push(model.clone());
            }
        }
        for model in repair.dead.iter().filter(|m| *m != ORCHESTRATOR) {
            if !repair.loaded.contains(model) && self.client.repository(model, "load").is_ok() {
                repair.loaded.push(model.clone());
            }
        }
        let states = self.states()?;
        let networks_ready = self.loaded_in(&states, &[]).missing.is_empty();
        let flux_ready =
            states.get(ORCHESTRATOR).is_some_and(ModelState::ready) && !repair.dead.iter().any(|m| m == ORCHESTRATOR);
        if networks_ready && !flux_ready && self.client.repository(ORCHESTRATOR, "load").is_ok() {
            repair.loaded.push(ORCHESTRATOR.to_string());
        }
        Ok(repair)
    }
}

/// A model's instances, all groups together (Triton's default: one group of one).
fn instances(config: &str) -> usize {
    let Ok(config) = Message::parse(config) else {
        return 1;
    };
    let groups = config.all("instance_group");
    let counts = groups.iter().map(|group| match group {
        crate::deploy::pbtxt::Value::Message(m) => m.scalar("count").and_then(|c| c.parse().ok()).unwrap_or(1),
        _ => 1,
    });
    counts.sum::<usize>().max(1)
}
