//! Will TensorRT's ONNX parser take this graph? A check that runs without TensorRT: every node
//! against the operator table of the targeted TensorRT 10 or 11 release (operator, data types,
//! checkable restrictions), plus opset, IR version and the types of inputs, outputs and
//! initializers. External data is never read.

mod restrictions;
mod table;
mod types;

pub use table::{TrtVersion, TABLE_VERSION};

use anyhow::Result;
use fluxbuild_onnx::{check_external_data, declared, default_opset, elem_name, pb, read_model};
use serde::Serialize;
use std::path::{Path, PathBuf};
use types::Facts;

/// One reason TensorRT would not parse (or would silently change) the graph.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// Node name, or the tensor / "(model)" for graph-level findings.
    pub node: String,
    /// Operator type; "initializer", "input", "output" or "model" for graph-level findings.
    pub op: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct GraphReport {
    pub path: PathBuf,
    pub opset: Option<i64>,
    pub ir_version: i64,
    pub nodes: usize,
    pub findings: Vec<Finding>,
}

impl GraphReport {
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Types a network input or output may have (UINT8 only as I/O; quantized types never).
const IO_TYPES: [i32; 7] = [1, 10, 16, 6, 7, 2, 9];
/// Initializer types the parser imports (quantized ones for Q/DQ and constants).
const INITIALIZER_TYPES: [i32; 11] = [1, 10, 16, 6, 7, 2, 3, 9, 17, 22, 23];
const DOUBLE: i32 = 11;

pub fn lint_file(path: &Path, target: TrtVersion) -> Result<GraphReport> {
    let model = read_model(path)?;
    let mut report = lint_model(&model, path, target);
    // The parser reads the weights too: a graph whose data file is missing or cut short fails there.
    if let Err(problem) = check_external_data(path, &model) {
        report.findings.push(Finding {
            node: "(model)".into(),
            op: "external data".into(),
            reason: format!("{problem:#}"),
        });
    }
    Ok(report)
}

pub fn lint_model(model: &pb::ModelProto, path: &Path, target: TrtVersion) -> GraphReport {
    let graph = model.graph.get_or_default();
    let opset = default_opset(model);
    let mut findings = model_findings(model, opset, target);
    for v in &graph.input {
        io_finding(v, "input", &mut findings);
    }
    for v in &graph.output {
        io_finding(v, "output", &mut findings);
    }
    lint_graph(graph, opset.unwrap_or(0), target, &mut findings);
    GraphReport {
        path: path.to_path_buf(),
        opset,
        ir_version: model.ir_version,
        nodes: count_nodes(graph),
        findings,
    }
}

fn model_findings(model: &pb::ModelProto, opset: Option<i64>, target: TrtVersion) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut model_level = |reason: String| {
        findings.push(Finding {
            node: "(model)".into(),
            op: "model".into(),
            reason,
        })
    };
    let (max_opset, max_ir) = (table::max_opset(target), table::max_ir_version(target));
    match opset {
        None => model_level("no ai.onnx opset import".into()),
        Some(o) if !(table::MIN_OPSET..=max_opset).contains(&o) => model_level(format!(
            "opset {o} is outside TensorRT {target}'s range {}..{max_opset}",
            table::MIN_OPSET
        )),
        _ => {}
    }
    if model.ir_version > max_ir {
        model_level(format!(
            "IR version {} is newer than TensorRT {target}'s ONNX ({max_ir})",
            model.ir_version
        ));
    }
    for o in model
        .opset_import
        .iter()
        .filter(|o| !o.domain.is_empty() && o.domain != "ai.onnx")
    {
        model_level(format!(
            "imports domain {:?}: its nodes need TensorRT plugins of the same name",
            o.domain
        ));
    }
    findings
}

fn io_finding(v: &pb::ValueInfoProto, kind: &str, findings: &mut Vec<Finding>) {
    let elem = declared(v).elem;
    if !IO_TYPES.contains(&elem) {
        findings.push(Finding {
            node: v.name.clone(),
            op: kind.into(),
            reason: format!(
                "{} network {kind}s are unsupported (FLOAT, FLOAT16, BFLOAT16, INT32, INT64, UINT8, BOOL)",
                elem_name(elem)
            ),
        });
    }
}

fn lint_graph(graph: &pb::GraphProto, opset: i64, target: TrtVersion, findings: &mut Vec<Finding>) {
    for init in &graph.initializer {
        let reason = match init.data_type {
            DOUBLE => Some(
                "DOUBLE initializer: TensorRT casts it down to FLOAT, clamping to +-FLT_MAX; export it as FLOAT"
                    .to_string(),
            ),
            t if !INITIALIZER_TYPES.contains(&t) => Some(format!("{} initializers are unsupported", elem_name(t))),
            _ => None,
        };
        if let Some(reason) = reason {
            findings.push(Finding {
                node: init.name.clone(),
                op: "initializer".into(),
                reason,
            });
        }
    }
    let facts = Facts::new(graph);
    for node in &graph.node {
        for reason in node_reasons(node, opset, target, &facts) {
            findings.push(Finding {
                node: node_label(node),
                op: node.op_type.clone(),
                reason,
            });
        }
        for sub in node.attribute.iter().flat_map(|a| a.g.iter().chain(&a.graphs)) {
            lint_graph(sub, opset, target, findings);
        }
    }
}

fn node_reasons(node: &pb::NodeProto, opset: i64, target: TrtVersion, facts: &Facts) -> Vec<String> {
    if !node.domain.is_empty() && node.domain != "ai.onnx" {
        return vec![format!(
            "custom domain {:?}: needs a TensorRT plugin named {}",
            node.domain, node.op_type
        )];
    }
    let Some(support) = table::lookup(&node.op_type) else {
        return vec![format!(
            "{} is not an operator TensorRT's ONNX parser knows",
            node.op_type
        )];
    };
    if !support.supported {
        return vec![format!("{} is not supported by TensorRT's ONNX parser", node.op_type)];
    }
    let mut why = Vec::new();
    if support.since > target {
        why.push(format!(
            "{} needs TensorRT {} or newer (target {target})",
            node.op_type, support.since
        ));
    }
    if node.op_type == "GroupNormalization" && opset >= 21 && target < (TrtVersion { major: 10, minor: 9 }) {
        why.push(format!(
            "opset-21 GroupNormalization needs TensorRT 10.9 or newer (target {target})"
        ));
    }
    let data_type = match node.op_type.as_str() {
        "Constant" => facts.get(&node.output[0]).elem,
        _ => node.input.first().and_then(|i| facts.get(i).elem),
    };
    if let Some(t) = data_type.filter(|t| !support.types.contains(t)) {
        why.push(format!(
            "{} input of type {} is unsupported",
            node.op_type,
            elem_name(t)
        ));
    }
    if node.op_type == "Cast" {
        if let Some(to) = node
            .attribute
            .iter()
            .find(|a| a.name == "to")
            .map(|a| a.i as i32)
            .filter(|t| !support.types.contains(t))
        {
            why.push(format!("Cast to {} is unsupported", elem_name(to)));
        }
    }
    why.extend(restrictions::check(node, facts));
    why
}

fn node_label(node: &pb::NodeProto) -> String {
    if node.name.is_empty() {
        format!(
            "(unnamed {} -> {})",
            node.op_type,
            node.output.first().map_or("", |o| o.as_str())
        )
    } else {
        node.name.clone()
    }
}

fn count_nodes(graph: &pb::GraphProto) -> usize {
    graph
        .node
        .iter()
        .map(|n| {
            1 + n
                .attribute
                .iter()
                .flat_map(|a| a.g.iter().chain(&a.graphs))
                .map(count_nodes)
                .sum::<usize>()
        })
        .sum()
}

/// The graphs under a models folder (`DIR/*/model.onnx`, sorted), a graph's own folder
/// (`DIR/model.onnx`), or the one file given.
pub fn graph_paths(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if path.join("model.onnx").is_file() {
        return Ok(vec![path.join("model.onnx")]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("{}: cannot list ({e})", path.display()))? {
        let candidate = entry?.path().join("model.onnx");
        if candidate.is_file() {
            found.push(candidate);
        }
    }
    found.sort();
    anyhow::ensure!(
        !found.is_empty(),
        "{}: no */model.onnx found (give an export folder or one .onnx file)",
        path.display()
    );
    // An export folder's manifest says which graphs it holds: one of them gone is a finding, not
    // a graph less to lint.
    let manifest = path.join("manifest.json");
    if let Some(listed) = std::fs::read(&manifest)
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .and_then(|value| {
            value["submodels"]
                .as_object()
                .map(|s| s.keys().cloned().collect::<Vec<_>>())
        })
    {
        for name in listed {
            let graph = path.join(&name).join("model.onnx");
            anyhow::ensure!(
                found.contains(&graph),
                "{}: missing ({} lists {name}); export it again",
                graph.display(),
                manifest.display()
            );
        }
    }
    Ok(found)
}
