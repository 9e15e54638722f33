//! `fluxbuild lint DIR|FILE [--trt-version 10.x|11.x]`: checks exported graphs against TensorRT's
//! ONNX parser support without TensorRT. Exits non-zero when any graph fails.

use crate::output::Output;
use anyhow::{bail, Result};
use fluxbuild_engines::lint::{graph_paths, lint_file, TrtVersion, TABLE_VERSION};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An export folder (checks every DIR/*/model.onnx) or one .onnx file.
    path: PathBuf,
    /// TensorRT release to check for (10.0 .. 10.15, 11.x; later releases are checked against the 10.15 table).
    #[arg(long, default_value_t = TABLE_VERSION.to_string())]
    trt_version: String,
}

#[derive(Serialize)]
struct Report {
    target: TrtVersion,
    table: TrtVersion,
    passed: bool,
    graphs: Vec<fluxbuild_engines::lint::GraphReport>,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let target: TrtVersion = args.trt_version.parse()?;
    if target > TABLE_VERSION {
        out.warn(&format!(
            "TensorRT {target} is newer than the operator table ({TABLE_VERSION}): operators checked as in \
             {TABLE_VERSION} (later parsers added operators and removed none fluxbuild emits)"
        ));
    }
    let graphs = graph_paths(&args.path)?
        .iter()
        .map(|p| lint_file(p, target))
        .collect::<Result<Vec<_>>>()?;
    let report = Report {
        target,
        table: TABLE_VERSION,
        passed: graphs.iter().all(|g| g.passed()),
        graphs,
    };
    out.result(&report, || text(&report));
    let failed = report.graphs.iter().filter(|g| !g.passed()).count();
    if failed > 0 {
        if out.json {
            // The report on stdout already says why; a second JSON document would break parsers.
            std::process::exit(1);
        }
        bail!(
            "{failed} of {} graphs would not parse in TensorRT {target}",
            report.graphs.len()
        );
    }
    Ok(())
}

fn text(report: &Report) -> String {
    let mut s = String::new();
    for g in &report.graphs {
        let status = if g.passed() { "ok" } else { "FAIL" };
        let opset = g.opset.map_or("none".to_string(), |o| o.to_string());
        s.push_str(&format!(
            "{status:<4} {} ({} nodes, opset {opset}, IR {})\n",
            g.path.display(),
            g.nodes,
            g.ir_version
        ));
        for f in &g.findings {
            s.push_str(&format!("     {} [{}]: {}\n", f.node, f.op, f.reason));
        }
    }
    s.push_str(&format!(
        "TensorRT {} (table {}): {}",
        report.target,
        report.table,
        if report.passed {
            "all graphs pass"
        } else {
            "failures above"
        }
    ));
    s
}
