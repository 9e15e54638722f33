//! The ONNX layer under the exporters and the engines: the typed vocabulary both speak
//! (`ElemType`, `Dim`, `ValueInfo`, `Attr`, `Node`), reading a model's protobuf (its interface,
//! opset and external data files, never the weights), and turning typed values, nodes and
//! tensors into protobuf messages, for the writer and for edits of a written model.
//!
//! Only this crate depends on `onnx-protobuf`; the rest of the workspace reaches the messages
//! through [`pb`] (the lint and the native builder inspect them as they are).

mod proto;
mod read;
mod types;

pub use onnx_protobuf as pb;
pub use proto::{
    add_nodes, add_outputs, encode, external_tensor, inline_tensor, model_proto, node_proto, value_info_proto,
    write_model_proto, Outline,
};
pub use read::{
    check_external_data, declared, declared_inputs, default_opset, elem_name, external_extents, external_field,
    external_files, initializers, nodes, parse_model, read_interface, read_model, Declared, Interface, NodeDecl,
    TensorDecl,
};
pub use types::{Attr, Dim, ElemType, Node, ValueInfo};
