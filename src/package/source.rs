//! What `fluxbuild export` wrote, read back for packaging: the four graphs and their interfaces,
//! plus everything local generation reads (`generate::ExportedModels`: variant, tokenizers,
//! scheduler config, the VAE's scaling and shift), read by the same code so that the served
//! pipeline computes what `fluxbuild generate` computes.
//!
//! The graphs' inputs and outputs are read from the graphs themselves (the names in the brief's
//! graph interfaces); a transformer whose `guidance` input disagrees with the manifest's variant
//! is refused.

use crate::generate::ExportedModels;
use anyhow::{bail, Result};
use fluxbuild_contract::Network;
use fluxbuild_onnx::{read_interface, Dim, ElemType, Interface, ValueInfo};
use std::path::{Path, PathBuf};

/// One network's exported graph.
#[derive(Clone, Debug)]
pub struct ExportedNetwork {
    pub name: Network,
    pub graph: PathBuf,
    /// The external data file beside the graph, if any.
    pub data: Option<PathBuf>,
    pub interface: Interface,
}

#[derive(Clone, Debug)]
pub struct Exported {
    pub models: ExportedModels,
    pub networks: Vec<ExportedNetwork>,
}

impl Exported {
    pub fn read(dir: &Path) -> Result<Exported> {
        let models = ExportedModels::open(dir)?;
        let networks = Network::ALL
            .into_iter()
            .map(|n| read_network(dir, n, &dir.join(n.name())))
            .collect::<Result<Vec<_>>>()?;
        let transformer = networks.iter().find(|n| n.name == Network::Transformer).expect("read");
        let takes_guidance = transformer.interface.input("guidance").is_some();
        if takes_guidance != models.guidance_embeds {
            bail!(
                "{}: the graph {} a `guidance` input, but {} says guidance_embeds = {}",
                transformer.graph.display(),
                if takes_guidance { "has" } else { "has no" },
                models.variant.source,
                models.guidance_embeds
            );
        }
        Ok(Exported { models, networks })
    }

    pub fn network(&self, network: Network) -> &ExportedNetwork {
        self.networks
            .iter()
            .find(|n| n.name == network)
            .expect("every network is read")
    }
}

/// Reads one network's graph from `folder` and checks it has the inputs and outputs of `network`.
pub fn read_network(dir: &Path, network: Network, folder: &Path) -> Result<ExportedNetwork> {
    let graph = folder.join("model.onnx");
    if !graph.is_file() {
        bail!(
            "{}: missing (run `fluxbuild export --out {}` first)",
            graph.display(),
            dir.display()
        );
    }
    let interface = read_interface(&graph)?;
    let inputs = network.inputs().iter().filter(|p| !p.dev_only).map(|p| p.name);
    for name in inputs {
        if interface.input(name).is_none() {
            bail!(
                "{}: has no input `{name}` (inputs: {})",
                graph.display(),
                names(&interface.inputs)
            );
        }
    }
    for name in network.outputs().iter().map(|p| p.name) {
        if interface.output(name).is_none() {
            bail!(
                "{}: has no output `{name}` (outputs: {})",
                graph.display(),
                names(&interface.outputs)
            );
        }
    }
    let data = folder.join("model.onnx.data");
    Ok(ExportedNetwork {
        name: network,
        graph,
        data: data.is_file().then_some(data),
        interface,
    })
}

fn names(values: &[ValueInfo]) -> String {
    values.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// A fixed dimension, if it is one.
pub fn fixed(dim: &Dim) -> Option<i64> {
    match dim {
        Dim::Fixed(n) if *n > 0 => Some(*n),
        _ => None,
    }
}

/// Triton's data type of an ONNX element type.
pub fn data_type(elem: ElemType) -> Result<super::config::DataType> {
    use super::config::DataType as T;
    Ok(match elem {
        ElemType::F32 => T::Fp32,
        ElemType::F16 => T::Fp16,
        ElemType::BF16 => T::Bf16,
        ElemType::I64 => T::Int64,
        ElemType::I32 => T::Int32,
        ElemType::U8 => T::Uint8,
        ElemType::Bool => T::Bool,
        ElemType::F8E4M3 => bail!("FLOAT8 graph inputs cannot cross Triton's interface (keep I/O in fp32/fp16)"),
    })
}

/// numpy's name of an element type (the orchestrator casts to these).
pub fn numpy_dtype(elem: ElemType) -> &'static str {
    match elem {
        ElemType::F32 => "float32",
        ElemType::F16 => "float16",
        ElemType::BF16 => "bfloat16",
        ElemType::I64 => "int64",
        ElemType::I32 => "int32",
        ElemType::U8 => "uint8",
        ElemType::Bool => "bool",
        ElemType::F8E4M3 => "float8_e4m3fn",
    }
}
