//! TensorRT 10's ONNX-parser support table (data in `onnx_tensorrt_10.15.txt`) and the
//! model-level limits (opset, IR version) of each 10.x release. TensorRT 11.0 and 11.1 are
//! checked against the same table: their parser changelogs only add operators (Swish, the
//! TRT_Attention/TRT_MoE/TRT_KVCacheUpdate custom ops) and remove none that fluxbuild emits.

use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("onnx_tensorrt_10.15.txt");
/// The TensorRT release the table describes; newer releases are checked against it.
pub const TABLE_VERSION: TrtVersion = TrtVersion { major: 10, minor: 15 };
/// The newest release of each major version the lint knows (what a bare major means).
const NEWEST: [TrtVersion; 2] = [TABLE_VERSION, TrtVersion { major: 11, minor: 1 }];

/// A TensorRT release, major.minor (patch releases do not change the parser's coverage).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct TrtVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::str::FromStr for TrtVersion {
    type Err = anyhow::Error;
    /// "10", "10.8", "10.13.2", "11.1" (a bare major means its newest release known here).
    fn from_str(s: &str) -> Result<TrtVersion> {
        let mut parts = s.trim().trim_start_matches('v').split('.');
        let number = |p: Option<&str>| {
            p.map(|p| {
                p.parse::<u32>()
                    .map_err(|_| anyhow!("TensorRT version {s:?}: {p:?} is not a number"))
            })
        };
        let major = number(parts.next()).ok_or_else(|| anyhow!("empty TensorRT version"))??;
        let Some(newest) = NEWEST.iter().find(|n| n.major == major) else {
            bail!("TensorRT version {s}: the lint knows TensorRT 10.x and 11.x parsers (table {TABLE_VERSION})");
        };
        let minor = number(parts.next()).transpose()?.unwrap_or(newest.minor);
        Ok(TrtVersion { major, minor })
    }
}

impl std::fmt::Display for TrtVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

const fn v(minor: u32) -> TrtVersion {
    TrtVersion { major: 10, minor }
}

/// Highest ONNX opset each release is known to parse. 10.0 and 10.1 document opset 20;
/// 10.9 added opset-21 GroupNormalization, 10.14 the opset-23 Attention operator, and 10.15
/// documents opset 24. Releases in between get the newest point at or below them
/// (conservative: a graph may be rejected here that a release would in fact parse).
const MAX_OPSET: [(TrtVersion, i64); 4] = [(v(0), 20), (v(9), 21), (v(14), 23), (v(15), 24)];
/// Lowest opset the parser supports (all 10.x releases).
pub const MIN_OPSET: i64 = 9;
/// Highest ONNX IR version: the parser links ONNX 1.16/1.17 (IR 10) up to 10.10 and ONNX 1.18
/// (IR 11) from 10.11 on (Changelog: "Updated ONNX version to 1.18").
const MAX_IR: [(TrtVersion, i64); 2] = [(v(0), 10), (v(11), 11)];

fn at(points: &[(TrtVersion, i64)], version: TrtVersion) -> i64 {
    points
        .iter()
        .rev()
        .find(|(p, _)| *p <= version)
        .map_or(points[0].1, |(_, n)| *n)
}

pub fn max_opset(version: TrtVersion) -> i64 {
    at(&MAX_OPSET, version)
}

pub fn max_ir_version(version: TrtVersion) -> i64 {
    at(&MAX_IR, version)
}

#[derive(Clone, Debug)]
pub struct OpSupport {
    pub supported: bool,
    /// ONNX TensorProto.DataType codes the op's data input may have.
    pub types: Vec<i32>,
    pub since: TrtVersion,
}

pub fn lookup(op: &str) -> Option<&'static OpSupport> {
    static PARSED: OnceLock<BTreeMap<String, OpSupport>> = OnceLock::new();
    PARSED
        .get_or_init(|| parse(TABLE).expect("the built-in operator table parses"))
        .get(op)
}

/// TensorRT's type names in the table -> ONNX data type codes.
fn type_code(name: &str) -> Option<i32> {
    Some(match name {
        "FP32" => 1,
        "UINT8" => 2,
        "INT8" => 3,
        "INT32" => 6,
        "INT64" => 7,
        "BOOL" => 9,
        "FP16" => 10,
        "BF16" => 16,
        "FP8" => 17,
        "INT4" => 22,
        "FP4" => 23,
        _ => return None,
    })
}

fn parse(text: &str) -> Result<BTreeMap<String, OpSupport>> {
    let mut ops = BTreeMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = || anyhow!("operator table line {}: {line:?}", n + 1);
        let (op, flag) = (fields.first().ok_or_else(bad)?, fields.get(1).ok_or_else(bad)?);
        let mut support = OpSupport {
            supported: *flag == "Y",
            types: vec![],
            since: v(0),
        };
        for field in &fields[2..] {
            if let Some(since) = field.strip_prefix("since=") {
                support.since = since.parse()?;
            } else {
                support.types = field
                    .split(',')
                    .map(|t| type_code(t).ok_or_else(bad))
                    .collect::<Result<_>>()?;
            }
        }
        ops.insert(op.to_string(), support);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_with_every_row() {
        let ops = parse(TABLE).unwrap();
        assert_eq!(
            ops.len(),
            TABLE.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
        );
        assert!(ops["MatMul"].supported && ops["MatMul"].types == vec![1, 10, 16]);
        assert!(!ops["NonMaxSuppression"].types.contains(&16));
        assert!(!ops["Unique"].supported);
        assert_eq!(ops["Attention"].since, v(14));
    }

    #[test]
    fn limits_follow_the_release() {
        assert_eq!(max_opset(v(0)), 20);
        assert_eq!(max_opset(v(8)), 20);
        assert_eq!(max_opset(v(13)), 21);
        assert_eq!(max_opset(v(15)), 24);
        assert_eq!(max_opset(v(20)), 24);
        assert_eq!(max_ir_version(v(10)), 10);
        assert_eq!(max_ir_version(v(11)), 11);
        assert_eq!("10".parse::<TrtVersion>().unwrap(), TABLE_VERSION);
        assert_eq!("10.13.2".parse::<TrtVersion>().unwrap(), v(13));
        let eleven = "11".parse::<TrtVersion>().unwrap();
        assert_eq!((eleven.major, eleven.minor), (11, 1));
        assert_eq!((max_opset(eleven), max_ir_version(eleven)), (24, 11));
        assert!("9.3".parse::<TrtVersion>().is_err());
        assert!("12.0".parse::<TrtVersion>().is_err());
        assert!("ten".parse::<TrtVersion>().is_err());
    }
}
