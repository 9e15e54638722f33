//! Triton's `ModelConfig` (model_config.proto), the part fluxbuild writes, as typed structures
//! rendered to protobuf text format. Field names and enum spellings are the proto's own, so
//! each rendered `config.pbtxt` reads like one written by hand.

use std::fmt::Write;

/// `DataType` of model_config.proto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Uint8,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Bf16,
    /// TYPE_STRING: KServe's BYTES.
    String,
}

impl DataType {
    pub fn proto_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Bf16 => "TYPE_BF16",
            DataType::String => "TYPE_STRING",
        }
    }
}

/// `ModelInput` / `ModelOutput` (the fields both share, plus `optional` for inputs).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub data_type: DataType,
    /// Without the batch dimension when `max_batch_size > 0`; -1 is dynamic.
    pub dims: Vec<i64>,
    pub optional: bool,
}

impl Tensor {
    pub fn new(name: &str, data_type: DataType, dims: &[i64]) -> Tensor {
        Tensor {
            name: name.to_string(),
            data_type,
            dims: dims.to_vec(),
            optional: false,
        }
    }
    pub fn optional(mut self) -> Tensor {
        self.optional = true;
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    Cpu,
    Gpu,
    Model,
}

/// `ModelInstanceGroup`.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceGroup {
    pub count: u32,
    pub kind: InstanceKind,
    /// GPU ids (empty: all visible GPUs).
    pub gpus: Vec<u32>,
    /// TensorRT optimization profiles this group's instances use (by index).
    pub profile: Vec<String>,
}

/// `ModelDynamicBatching`.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicBatching {
    pub preferred_batch_size: Vec<u32>,
    pub max_queue_delay_microseconds: u64,
    /// `default_queue_policy`: None leaves Triton's default (unbounded queue, no timeout).
    pub queue_policy: Option<QueuePolicy>,
}

/// `ModelQueuePolicy`: requests beyond `max_queue_size` are rejected at once (UNAVAILABLE), and a
/// request still queued after the timeout is rejected instead of run late.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuePolicy {
    pub max_queue_size: u32,
    pub default_timeout_microseconds: u64,
}

/// `ModelWarmup`: one synthetic request run at load time (zeros, or the given text).
#[derive(Clone, Debug, PartialEq)]
pub struct Warmup {
    pub name: String,
    pub batch_size: u32,
    pub inputs: Vec<WarmupInput>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WarmupInput {
    pub name: String,
    pub data_type: DataType,
    pub dims: Vec<i64>,
    pub data: WarmupData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WarmupData {
    Zero,
    Random,
    /// `input_data_file`, relative to the model's `warmup/` folder.
    File(String),
}

/// `ModelConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    /// e.g. `tensorrt_plan` (set either this or `backend`).
    pub platform: Option<String>,
    /// e.g. `python`.
    pub backend: Option<String>,
    pub max_batch_size: u32,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    pub dynamic_batching: Option<DynamicBatching>,
    pub instance_groups: Vec<InstanceGroup>,
    /// `parameters { key: ... value { string_value: ... } }`, in this order.
    pub parameters: Vec<(String, String)>,
    pub warmup: Vec<Warmup>,
    /// `model_transaction_policy { decoupled: ... }`; None leaves Triton's default (false).
    pub decoupled: Option<bool>,
    /// `default_model_filename` (a TensorRT plan's file name inside the version folder).
    pub default_model_filename: Option<String>,
}

impl ModelConfig {
    pub fn new(name: &str) -> ModelConfig {
        ModelConfig {
            name: name.to_string(),
            platform: None,
            backend: None,
            max_batch_size: 0,
            inputs: vec![],
            outputs: vec![],
            dynamic_batching: None,
            instance_groups: vec![],
            parameters: vec![],
            warmup: vec![],
            decoupled: None,
            default_model_filename: None,
        }
    }

    pub fn parameter(&self, key: &str) -> Option<&str> {
        self.parameters.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The protobuf text format Triton reads from `config.pbtxt`.
    pub fn to_pbtxt(&self) -> String {
        let mut p = Pbtxt::default();
        p.string("name", &self.name);
        if let Some(platform) = &self.platform {
            p.string("platform", platform);
        }
        if let Some(backend) = &self.backend {
            p.string("backend", backend);
        }
        if let Some(file) = &self.default_model_filename {
            p.string("default_model_filename", file);
        }
        p.raw("max_batch_size", &self.max_batch_size.to_string());
        p.list("input", &self.inputs, |p, t| {
            tensor(p, t);
            if t.optional {
                p.raw("optional", "true");
            }
        });
        p.list("output", &self.outputs, tensor);
        if let Some(batching) = &self.dynamic_batching {
            p.block("dynamic_batching", |p| {
                if !batching.preferred_batch_size.is_empty() {
                    p.raw("preferred_batch_size", &ints(&batching.preferred_batch_size));
                }
                p.raw(
                    "max_queue_delay_microseconds",
                    &batching.max_queue_delay_microseconds.to_string(),
                );
                if let Some(policy) = &batching.queue_policy {
                    p.block("default_queue_policy", |p| {
                        p.raw("timeout_action", "REJECT");
                        p.raw(
                            "default_timeout_microseconds",
                            &policy.default_timeout_microseconds.to_string(),
                        );
                        p.raw("allow_timeout_override", "true");
                        p.raw("max_queue_size", &policy.max_queue_size.to_string());
                    });
                }
            });
        }
        p.list("instance_group", &self.instance_groups, |p, g| {
            p.raw("count", &g.count.to_string());
            p.raw(
                "kind",
                match g.kind {
                    InstanceKind::Cpu => "KIND_CPU",
                    InstanceKind::Gpu => "KIND_GPU",
                    InstanceKind::Model => "KIND_MODEL",
                },
            );
            if !g.gpus.is_empty() {
                p.raw("gpus", &ints(&g.gpus));
            }
            if !g.profile.is_empty() {
                let quoted: Vec<String> = g.profile.iter().map(|s| quote(s)).collect();
                p.raw("profile", &format!("[ {} ]", quoted.join(", ")));
            }
        });
        for (key, value) in &self.parameters {
            p.block("parameters", |p| {
                p.string("key", key);
                p.block("value", |p| p.string("string_value", value));
            });
        }
        p.list("model_warmup", &self.warmup, |p, w| {
            p.string("name", &w.name);
            p.raw("batch_size", &w.batch_size.to_string());
            for input in &w.inputs {
                p.block("inputs", |p| {
                    p.string("key", &input.name);
                    p.block("value", |p| {
                        p.raw("data_type", input.data_type.proto_name());
                        p.raw("dims", &ints(&input.dims));
                        match &input.data {
                            WarmupData::Zero => p.raw("zero_data", "true"),
                            WarmupData::Random => p.raw("random_data", "true"),
                            WarmupData::File(file) => p.string("input_data_file", file),
                        }
                    });
                });
            }
        });
        if let Some(decoupled) = self.decoupled {
            p.block("model_transaction_policy", |p| {
                p.raw("decoupled", &decoupled.to_string())
            });
        }
        p.text
    }
}

fn tensor(p: &mut Pbtxt, t: &Tensor) {
    p.string("name", &t.name);
    p.raw("data_type", t.data_type.proto_name());
    p.raw("dims", &ints(&t.dims));
}

fn ints<T: ToString>(values: &[T]) -> String {
    let items: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    format!("[ {} ]", items.join(", "))
}

/// A protobuf text-format string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An indenting text-format writer.
#[derive(Default)]
struct Pbtxt {
    text: String,
    depth: usize,
}

impl Pbtxt {
    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.text.push_str("  ");
        }
    }
    fn raw(&mut self, key: &str, value: &str) {
        self.indent();
        let _ = writeln!(self.text, "{key}: {value}");
    }
    fn string(&mut self, key: &str, value: &str) {
        self.raw(key, &quote(value));
    }
    fn block(&mut self, key: &str, body: impl FnOnce(&mut Pbtxt)) {
        self.indent();
        let _ = writeln!(self.text, "{key} {{");
        self.depth += 1;
        body(self);
        self.depth -= 1;
        self.indent();
        self.text.push_str("}\n");
    }
    /// A repeated message field: `key [ { ... }, { ... } ]`.
    fn list<T>(&mut self, key: &str, items: &[T], mut body: impl FnMut(&mut Pbtxt, &T)) {
        if items.is_empty() {
            return;
        }
        self.indent();
        let _ = writeln!(self.text, "{key} [");
        self.depth += 1;
        for (i, item) in items.iter().enumerate() {
            self.indent();
            self.text.push_str("{\n");
            self.depth += 1;
            body(self, item);
            self.depth -= 1;
            self.indent();
            self.text.push_str(if i + 1 < items.len() { "},\n" } else { "}\n" });
        }
        self.depth -= 1;
        self.indent();
        self.text.push_str("]\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_proto_text_format() {
        let mut c = ModelConfig::new(fluxbuild_contract::Network::Clip.name());
        c.backend = Some("python".into());
        c.max_batch_size = 4;
        c.inputs.push(Tensor::new("input_ids", DataType::Int64, &[77]));
        c.inputs.push(Tensor::new("seed", DataType::Int64, &[1]).optional());
        c.outputs.push(Tensor::new("pooled_embeddings", DataType::Fp32, &[-1]));
        c.dynamic_batching = Some(DynamicBatching {
            preferred_batch_size: vec![2, 4],
            max_queue_delay_microseconds: 500,
            queue_policy: Some(QueuePolicy {
                max_queue_size: 16,
                default_timeout_microseconds: 1_000_000,
            }),
        });
        c.instance_groups.push(InstanceGroup {
            count: 1,
            kind: InstanceKind::Gpu,
            gpus: vec![0],
            profile: vec!["1".into()],
        });
        c.parameters.push(("note".into(), "say \"hi\"".into()));
        let text = c.to_pbtxt();
        assert!(
            text.starts_with(
                "name: \"clip\"\nbackend: \"python\"\nmax_batch_size: 4\ninput [\n  {\n    name: \"input_ids\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("    dims: [ 77 ]\n"), "{text}");
        assert!(text.contains("preferred_batch_size: [ 2, 4 ]"), "{text}");
        assert!(
            text.contains("  default_queue_policy {\n    timeout_action: REJECT\n"),
            "{text}"
        );
        assert!(text.contains("profile: [ \"1\" ]"), "{text}");
        assert!(text.contains("string_value: \"say \\\"hi\\\"\""), "{text}");
        // `optional` exists for inputs only.
        assert_eq!(text.matches("optional: true").count(), 1, "{text}");
    }
}
