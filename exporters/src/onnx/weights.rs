//! Checkpoint weights as a model definition sees them: a prefix builder that mirrors the
//! checkpoint's module names (`w.pp("transformer_blocks").pp(3).pp("attn")`), shape checks that
//! are collected rather than thrown, so one run reports every missing or mis-shaped tensor.

use super::builder::{GraphBuilder, V};
use super::ir::{ElemType, InitData, Part, WeightPlan};
use crate::checkpoint::{Checkpoint, TensorRef};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::{self, Display};
use std::rc::Rc;

/// One thing wrong with a checkpoint, by tensor name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    Missing {
        tensor: String,
        expected: Vec<usize>,
    },
    WrongShape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    Unexpected {
        tensor: String,
        shape: Vec<usize>,
    },
}

impl Problem {
    /// The serialized `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Missing { .. } => "missing",
            Problem::WrongShape { .. } => "wrong_shape",
            Problem::Unexpected { .. } => "unexpected",
        }
    }

    pub fn tensor(&self) -> &str {
        match self {
            Problem::Missing { tensor, .. }
            | Problem::WrongShape { tensor, .. }
            | Problem::Unexpected { tensor, .. } => tensor,
        }
    }
}

impl Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { tensor, expected } => write!(f, "missing tensor {tensor} (expected shape {expected:?})"),
            Problem::WrongShape {
                tensor,
                expected,
                found,
            } => {
                write!(f, "tensor {tensor} has shape {found:?}, expected {expected:?}")
            }
            Problem::Unexpected { tensor, shape } => write!(f, "unexpected tensor {tensor} {shape:?}"),
        }
    }
}

#[derive(Default)]
struct Log {
    used: BTreeSet<String>,
    problems: Vec<Problem>,
}

/// A view of the checkpoint under a name prefix.
#[derive(Clone)]
pub struct Weights<'a> {
    ckpt: &'a Checkpoint,
    prefix: String,
    log: Rc<RefCell<Log>>,
}

/// A weight matrix or vector to become one initializer; `None` plan when the tensor was
/// missing or mis-shaped (already logged: the graph is then never written).
#[derive(Clone)]
pub struct Param<'a> {
    pub name: String,
    /// PyTorch layout: [out, in, ...] for matrices.
    pub shape: Vec<usize>,
    plan: Option<WeightPlan<'a>>,
}

impl<'a> Weights<'a> {
    pub fn new(ckpt: &'a Checkpoint) -> Self {
        Weights {
            ckpt,
            prefix: String::new(),
            log: Rc::default(),
        }
    }

    /// The sub-view `prefix.name`.
    pub fn pp(&self, name: impl Display) -> Weights<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Weights { prefix, ..self.clone() }
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.ckpt
    }

    /// Whether `name` exists under this prefix (for optional parts such as the guidance embedder).
    pub fn has(&self, name: &str) -> bool {
        self.ckpt.contains(&self.path(name))
    }

    /// The tensor `name` with exactly `shape`, or a logged problem.
    pub fn get(&self, name: &str, shape: &[usize]) -> Param<'a> {
        let full = self.path(name);
        let plan = self.lookup(&full, shape).map(|t| WeightPlan {
            cols: shape[1..].iter().product(),
            parts: vec![Part {
                tensor: t,
                rows: 0..shape.first().copied().unwrap_or(1),
            }],
            transpose: false,
            scale: None,
        });
        Param {
            name: full,
            shape: shape.to_vec(),
            plan,
        }
    }

    /// Rows `rows` of tensor `name` whose full shape is `shape` (one of BFL's fused tensors).
    pub fn rows(&self, name: &str, shape: &[usize], rows: std::ops::Range<usize>) -> Param<'a> {
        let mut param = self.get(name, shape);
        param.shape[0] = rows.len();
        if let Some(plan) = &mut param.plan {
            plan.parts[0].rows = rows;
        }
        param
    }

    fn lookup(&self, full: &str, shape: &[usize]) -> Option<TensorRef<'a>> {
        let mut log = self.log.borrow_mut();
        // A tensor read in several pieces (BFL's fused tensors) is reported once.
        let first_use = log.used.insert(full.to_string());
        match self.ckpt.get(full) {
            _ if !first_use && log.problems.iter().any(|p| p.tensor() == full) => None,
            None => {
                log.problems.push(Problem::Missing {
                    tensor: full.into(),
                    expected: shape.to_vec(),
                });
                None
            }
            Some(t) if t.shape() != shape => {
                log.problems.push(Problem::WrongShape {
                    tensor: full.into(),
                    expected: shape.to_vec(),
                    found: t.shape().to_vec(),
                });
                None
            }
            Some(t) => Some(t),
        }
    }

    /// Marks tensors as intentionally unused (e.g. the VAE encoder when exporting the decoder).
    pub fn ignore(&self, keep: impl Fn(&str) -> bool) {
        let mut log = self.log.borrow_mut();
        for name in self.ckpt.names().filter(|n| keep(n)) {
            log.used.insert(name.to_string());
        }
    }

    /// Every problem found so far, plus the checkpoint's tensors nobody asked for.
    pub fn problems(&self) -> Vec<Problem> {
        let log = self.log.borrow();
        let mut problems = log.problems.clone();
        for t in self.ckpt.tensors().filter(|t| !log.used.contains(t.name)) {
            problems.push(Problem::Unexpected {
                tensor: t.name.to_string(),
                shape: t.shape().to_vec(),
            });
        }
        problems
    }
}

impl<'a> Param<'a> {
    /// Stacks params along dim 0 (diffusers' separate q, k, v into one fused qkv matrix).
    pub fn stack(name: impl Into<String>, params: Vec<Param<'a>>) -> Param<'a> {
        let mut shape = params[0].shape.clone();
        shape[0] = params.iter().map(|p| p.shape[0]).sum();
        let plans: Option<Vec<WeightPlan<'a>>> = params.into_iter().map(|p| p.plan).collect();
        let plan = plans.map(|plans| WeightPlan {
            cols: plans[0].cols,
            transpose: false,
            scale: None,
            parts: plans.into_iter().flat_map(|p| p.parts).collect(),
        });
        Param {
            name: name.into(),
            shape,
            plan,
        }
    }

    /// The same values under another dims (e.g. a 1×1 conv kernel read as a matrix).
    pub fn reshaped(mut self, shape: &[usize]) -> Param<'a> {
        assert_eq!(shape.iter().product::<usize>(), self.shape.iter().product::<usize>());
        self.shape = shape.to_vec();
        if let Some(plan) = &mut self.plan {
            plan.cols = shape[1..].iter().product();
            let rows_per = plan.parts.iter().map(|p| p.rows.len()).sum::<usize>();
            debug_assert_eq!(rows_per * plan.cols, shape.iter().product::<usize>());
        }
        self
    }

    /// Adds the param to the graph in its own layout.
    pub fn add_to(self, b: &mut GraphBuilder<'a>) -> V {
        let elem = b.float;
        self.add_as(b, elem)
    }

    /// Adds the param in element type `elem`.
    pub fn add_as(self, b: &mut GraphBuilder<'a>, elem: ElemType) -> V {
        let data = self.plan.map_or(InitData::Bytes(vec![]), InitData::Weights);
        b.initializer(&self.name, elem, &self.shape, data)
    }

    /// Adds a 2-D [out, in] matrix transposed to [in, out], the right operand of MatMul.
    pub fn add_transposed(self, b: &mut GraphBuilder<'a>) -> V {
        assert_eq!(self.shape.len(), 2, "{}: only matrices are transposed", self.name);
        let dims = [self.shape[1], self.shape[0]];
        let data = self.plan.map_or(InitData::Bytes(vec![]), |p| {
            InitData::Weights(WeightPlan { transpose: true, ..p })
        });
        let elem = b.float;
        b.initializer(&self.name, elem, &dims, data)
    }
}

/// Lists longer than this are summarised: counts by kind and the first few of each.
const LISTED: usize = 20;
const FIRST_OF_KIND: usize = 5;

/// Problems as one error message, by tensor name; a long list as counts by kind with the first
/// few names of each (`inspect --json` lists all).
pub fn problems_error(source: &str, problems: &[Problem]) -> anyhow::Error {
    let head = format!("{source}: {} problem(s) in the checkpoint", problems.len());
    if problems.len() <= LISTED {
        let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        return anyhow::anyhow!("{head}:\n{}", list.join("\n"));
    }
    let mut text = format!("{head} (the first {FIRST_OF_KIND} of each kind; `inspect --json` lists all):");
    for (kind, label) in [
        ("missing", "missing"),
        ("wrong_shape", "with a wrong shape"),
        ("unexpected", "unexpected"),
    ] {
        let of_kind: Vec<&Problem> = problems.iter().filter(|p| p.kind() == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        text += &format!("\n  {} {label}:", of_kind.len());
        for p in of_kind.iter().take(FIRST_OF_KIND) {
            text += &format!("\n    - {p}");
        }
        if of_kind.len() > FIRST_OF_KIND {
            text += &format!("\n    - ... and {} more", of_kind.len() - FIRST_OF_KIND);
        }
    }
    anyhow::anyhow!(text)
}
