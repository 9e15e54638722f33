//! Building a `Graph` one operator at a time. Model definitions call the typed helpers here
//! (`matmul`, `layer_norm`, `softmax`, ...) and never touch protobuf.

use super::ir::{Attr, Dim, ElemType, Graph, InitData, Initializer, Node, ValueInfo};
use half::{bf16, f16};

/// A value in the graph under construction (its ONNX name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V(pub String);

pub struct GraphBuilder<'a> {
    graph: Graph<'a>,
    /// Element type of activations and weights in this graph (f32 for validation graphs).
    pub float: ElemType,
    scope: Vec<String>,
    count: usize,
}

/// Attributes as written at call sites: `&[("axis", Attr::Int(-1))]`.
pub type Attrs<'s> = &'s [(&'s str, Attr)];

impl<'a> GraphBuilder<'a> {
    pub fn new(name: &str, opset: i64, float: ElemType) -> Self {
        let graph = Graph {
            name: name.to_string(),
            opset,
            inputs: vec![],
            outputs: vec![],
            nodes: vec![],
            initializers: vec![],
            metadata: vec![],
        };
        GraphBuilder {
            graph,
            float,
            scope: vec![],
            count: 0,
        }
    }

    pub fn opset(&self) -> i64 {
        self.graph.opset
    }

    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> V {
        self.graph.inputs.push(ValueInfo {
            name: name.into(),
            elem,
            dims: dims.to_vec(),
        });
        V(name.into())
    }

    /// Declares `value` a graph output called `name`.
    pub fn output(&mut self, value: &V, name: &str, elem: ElemType, dims: &[Dim]) {
        let value = if value.0 == name {
            value.clone()
        } else {
            self.rename(value, name)
        };
        self.graph.outputs.push(ValueInfo {
            name: value.0,
            elem,
            dims: dims.to_vec(),
        });
    }

    fn rename(&mut self, value: &V, name: &str) -> V {
        self.push_node("Identity", &[value], &[], vec![name.to_string()]);
        V(name.into())
    }

    pub fn metadata(&mut self, key: &str, value: impl Into<String>) {
        self.graph.metadata.push((key.into(), value.into()));
    }

    /// Runs `f` with node names prefixed by `name` (mirrors the checkpoint's module path).
    pub fn scoped<R>(&mut self, name: impl std::fmt::Display, f: impl FnOnce(&mut Self) -> R) -> R {
        self.scope.push(name.to_string());
        let out = f(self);
        self.scope.pop();
        out
    }

    fn fresh(&mut self, op: &str) -> String {
        self.count += 1;
        let mut name = self.scope.join(".");
        if !name.is_empty() {
            name.push('/');
        }
        name.push_str(&format!("{op}_{}", self.count));
        name
    }

    fn push_node(&mut self, op: &str, inputs: &[&V], attrs: Attrs<'_>, outputs: Vec<String>) {
        let name = self.fresh(op);
        self.graph.nodes.push(Node {
            op: op.into(),
            domain: String::new(),
            name,
            inputs: inputs.iter().map(|v| v.0.clone()).collect(),
            outputs,
            attrs: attrs.iter().map(|(k, a)| (k.to_string(), a.clone())).collect(),
        });
    }

    /// Adds a node with one output.
    pub fn op(&mut self, op: &str, inputs: &[&V], attrs: Attrs<'_>) -> V {
        self.op_n(op, inputs, attrs, 1).pop().unwrap()
    }

    /// Adds a node with `n` outputs.
    pub fn op_n(&mut self, op: &str, inputs: &[&V], attrs: Attrs<'_>, n: usize) -> Vec<V> {
        let base = self.fresh(op);
        let outputs: Vec<String> = (0..n).map(|i| format!("{base}:{i}")).collect();
        self.push_node(op, inputs, attrs, outputs.clone());
        outputs.into_iter().map(V).collect()
    }

    /// An empty optional input (ONNX's "" name).
    pub fn none() -> V {
        V(String::new())
    }

    pub fn initializer(&mut self, name: &str, elem: ElemType, dims: &[usize], data: InitData<'a>) -> V {
        debug_assert!(
            !self.graph.initializers.iter().any(|i| i.name == name),
            "initializer {name} added twice"
        );
        self.graph.initializers.push(Initializer {
            name: name.into(),
            elem,
            dims: dims.to_vec(),
            data,
        });
        V(name.into())
    }

    /// A float constant in `elem` (rounded to nearest even for f16/bf16).
    pub fn const_float(&mut self, elem: ElemType, dims: &[usize], values: &[f32]) -> V {
        let bytes: Vec<u8> = match elem {
            ElemType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ElemType::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            ElemType::BF16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
            other => panic!("const_float of {other:?}"),
        };
        let name = self.fresh("const");
        self.initializer(&name, elem, dims, InitData::Bytes(bytes))
    }

    /// A scalar in the graph's float type.
    pub fn scalar(&mut self, value: f32) -> V {
        self.const_float(self.float, &[], &[value])
    }

    pub fn const_i64(&mut self, values: &[i64]) -> V {
        let name = self.fresh("const");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(&name, ElemType::I64, &[values.len()], InitData::Bytes(bytes))
    }

    /// A 0-d int64 (Range's operands).
    pub fn scalar_i64(&mut self, value: i64) -> V {
        let name = self.fresh("const");
        self.initializer(&name, ElemType::I64, &[], InitData::Bytes(value.to_le_bytes().to_vec()))
    }

    pub fn const_i32(&mut self, values: &[i32]) -> V {
        let name = self.fresh("const");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(&name, ElemType::I32, &[values.len()], InitData::Bytes(bytes))
    }

    pub fn finish(self) -> Graph<'a> {
        self.graph
    }

    // ---- elementwise -------------------------------------------------------------------------

    pub fn add(&mut self, a: &V, b: &V) -> V {
        self.op("Add", &[a, b], &[])
    }
    pub fn sub(&mut self, a: &V, b: &V) -> V {
        self.op("Sub", &[a, b], &[])
    }
    pub fn mul(&mut self, a: &V, b: &V) -> V {
        self.op("Mul", &[a, b], &[])
    }
    pub fn div(&mut self, a: &V, b: &V) -> V {
        self.op("Div", &[a, b], &[])
    }
    pub fn mul_scalar(&mut self, a: &V, s: f32) -> V {
        let s = self.scalar(s);
        self.mul(a, &s)
    }
    pub fn div_scalar(&mut self, a: &V, s: f32) -> V {
        let s = self.scalar(s);
        self.div(a, &s)
    }
    pub fn add_scalar(&mut self, a: &V, s: f32) -> V {
        let s = self.scalar(s);
        self.add(a, &s)
    }
    pub fn unary(&mut self, op: &str, x: &V) -> V {
        self.op(op, &[x], &[])
    }
    pub fn sigmoid(&mut self, x: &V) -> V {
        self.unary("Sigmoid", x)
    }
    /// SiLU as x·σ(x) (TensorRT fuses the pair; Swish-24 is too new for its parser).
    pub fn silu(&mut self, x: &V) -> V {
        let s = self.sigmoid(x);
        self.mul(x, &s)
    }
    /// GELU, tanh approximation: 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))), written out so that
    /// opset-17 parsers accept it (Gelu-20 is newer).
    pub fn gelu_tanh(&mut self, x: &V) -> V {
        let x2 = self.mul(x, x);
        let x3 = self.mul(&x2, x);
        let cubic = self.mul_scalar(&x3, 0.044715);
        let inner = self.add(x, &cubic);
        let scaled = self.mul_scalar(&inner, (2.0f64 / std::f64::consts::PI).sqrt() as f32);
        let t = self.unary("Tanh", &scaled);
        let one_plus = self.add_scalar(&t, 1.0);
        let half_x = self.mul_scalar(x, 0.5);
        self.mul(&half_x, &one_plus)
    }
    pub fn cast(&mut self, x: &V, to: ElemType) -> V {
        self.op("Cast", &[x], &[("to", Attr::Int(to.onnx_code() as i64))])
    }
    /// `x` (of type `from`) as `to`: a Cast only where the types differ.
    pub fn convert(&mut self, x: &V, from: ElemType, to: ElemType) -> V {
        if from == to {
            x.clone()
        } else {
            self.cast(x, to)
        }
    }
    /// `x` (float32) in the graph's float type.
    pub fn to_float(&mut self, x: &V) -> V {
        self.convert(x, ElemType::F32, self.float)
    }
    /// `x` (in the graph's float type) as float32.
    pub fn to_f32(&mut self, x: &V) -> V {
        self.convert(x, self.float, ElemType::F32)
    }
    /// Runs `f` with `float` as the graph's float type, for the parts of a mixed-precision graph
    /// that must run wider (weights and constants made inside `f` take that type).
    pub fn with_float<R>(&mut self, float: ElemType, f: impl FnOnce(&mut Self) -> R) -> R {
        let outer = std::mem::replace(&mut self.float, float);
        let out = f(self);
        self.float = outer;
        out
    }

    // ---- linear algebra and normalization -----------------------------------------------------

    pub fn matmul(&mut self, a: &V, b: &V) -> V {
        self.op("MatMul", &[a, b], &[])
    }
    pub fn softmax(&mut self, x: &V, axis: i64) -> V {
        self.op("Softmax", &[x], &[("axis", Attr::Int(axis))])
    }
    /// LayerNormalization-17 over the last axis with the given (or unit) affine.
    pub fn layer_norm(&mut self, x: &V, scale: &V, bias: &V, eps: f32) -> V {
        self.op(
            "LayerNormalization",
            &[x, scale, bias],
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        )
    }
    /// InstanceNormalization over the trailing axes of [N, C, ...], per-C `scale` and `bias`.
    pub fn instance_norm(&mut self, x: &V, scale: &V, bias: &V, eps: f32) -> V {
        self.op(
            "InstanceNormalization",
            &[x, scale, bias],
            &[("epsilon", Attr::Float(eps))],
        )
    }
    /// 2-D convolution, NCHW, `pads` = [top, left, bottom, right].
    pub fn conv(&mut self, x: &V, weight: &V, bias: Option<&V>, pads: [i64; 4], stride: i64) -> V {
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        let attrs = [
            ("pads", Attr::Ints(pads.to_vec())),
            ("strides", Attr::Ints(vec![stride, stride])),
        ];
        self.op("Conv", &inputs, &attrs)
    }
    /// Nearest-neighbour resize by per-axis `scales`. Source index = floor(dst / scale), which
    /// is what torch's `F.interpolate(mode="nearest")` computes.
    pub fn resize_nearest(&mut self, x: &V, scales: &[f32]) -> V {
        let scales = self.const_float(ElemType::F32, &[scales.len()], scales);
        let attrs = [
            ("mode", Attr::Str("nearest".into())),
            ("coordinate_transformation_mode", Attr::Str("asymmetric".into())),
            ("nearest_mode", Attr::Str("floor".into())),
        ];
        self.op("Resize", &[x, &Self::none(), &scales], &attrs)
    }
    pub fn reduce_mean(&mut self, x: &V, axes: &[i64], keepdims: bool) -> V {
        let attrs = [("keepdims", Attr::Int(keepdims as i64))];
        if self.opset() >= 18 {
            let axes = self.const_i64(axes);
            self.op("ReduceMean", &[x, &axes], &attrs)
        } else {
            self.op(
                "ReduceMean",
                &[x],
                &[attrs[0].clone(), ("axes", Attr::Ints(axes.to_vec()))],
            )
        }
    }

    // ---- shapes -------------------------------------------------------------------------------

    /// Reshape to `shape` (0 copies a dim, -1 infers one), as ONNX defines it.
    pub fn reshape(&mut self, x: &V, shape: &[i64]) -> V {
        let shape = self.const_i64(shape);
        self.op("Reshape", &[x, &shape], &[])
    }
    /// Reshape to a shape computed in the graph.
    pub fn reshape_to(&mut self, x: &V, shape: &V) -> V {
        self.op("Reshape", &[x, shape], &[])
    }
    pub fn transpose(&mut self, x: &V, perm: &[i64]) -> V {
        self.op("Transpose", &[x], &[("perm", Attr::Ints(perm.to_vec()))])
    }
    pub fn concat(&mut self, xs: &[&V], axis: i64) -> V {
        self.op("Concat", xs, &[("axis", Attr::Int(axis))])
    }
    /// Splits `x` along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: &V, axis: i64, sizes: &[i64]) -> Vec<V> {
        let split = self.const_i64(sizes);
        self.op_n("Split", &[x, &split], &[("axis", Attr::Int(axis))], sizes.len())
    }
    pub fn slice(&mut self, x: &V, axis: i64, start: i64, end: i64) -> V {
        let (s, e, a) = (
            self.const_i64(&[start]),
            self.const_i64(&[end]),
            self.const_i64(&[axis]),
        );
        self.op("Slice", &[x, &s, &e, &a], &[])
    }
    pub fn unsqueeze(&mut self, x: &V, axes: &[i64]) -> V {
        let axes = self.const_i64(axes);
        self.op("Unsqueeze", &[x, &axes], &[])
    }
    pub fn squeeze(&mut self, x: &V, axes: &[i64]) -> V {
        let axes = self.const_i64(axes);
        self.op("Squeeze", &[x, &axes], &[])
    }
    /// `Shape(x)[start..end]` as an int64 vector.
    /// Shape(x)[start..end]. The whole shape is written as a plain Shape: TensorRT-RTX 1.7's
    /// shape analysis drops the last dimension of `Shape(x, start=0, end=INT64_MAX)` (a later
    /// Reshape to it then fails with "reshape changes volume").
    pub fn shape_of(&mut self, x: &V, start: i64, end: i64) -> V {
        let mut attrs = Vec::new();
        if start != 0 {
            attrs.push(("start", Attr::Int(start)));
        }
        if end != i64::MAX {
            attrs.push(("end", Attr::Int(end)));
        }
        self.op("Shape", &[x], &attrs)
    }
    pub fn gather(&mut self, x: &V, indices: &V, axis: i64) -> V {
        self.op("Gather", &[x, indices], &[("axis", Attr::Int(axis))])
    }
}
