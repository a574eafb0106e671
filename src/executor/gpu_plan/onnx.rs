//! Reading an ONNX file for the GPU planner: the model protobuf (as tract-onnx decodes it), its
//! constants (initializers and `Constant` nodes) as little-endian bytes, its declared inputs with
//! their symbolic dimensions, and its nodes in a topological order.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb::{self, AttributeProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::Framework;

use super::LowerError;

/// An element type the planner knows. Others (strings, complex, 8-bit floats) are unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F64,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl ElemType {
    /// The type of an ONNX `TensorProto.DataType` code, if the planner knows it.
    pub fn from_onnx(code: i32) -> Option<ElemType> {
        use pb::tensor_proto::DataType as D;
        Some(match D::try_from(code).ok()? {
            D::Float => ElemType::F32,
            D::Double => ElemType::F64,
            D::Float16 => ElemType::F16,
            D::Int64 => ElemType::I64,
            D::Int32 => ElemType::I32,
            D::Int8 => ElemType::I8,
            D::Uint8 => ElemType::U8,
            D::Bool => ElemType::Bool,
            _ => return None,
        })
    }

    /// ONNX's name for an element type code, for messages (`STRING`, `FLOAT`).
    pub fn onnx_name(code: i32) -> String {
        pb::tensor_proto::DataType::try_from(code)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| format!("type {code}"))
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F16 => 2,
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
        }
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, ElemType::F32 | ElemType::F64 | ElemType::F16)
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "FLOAT",
            ElemType::F64 => "DOUBLE",
            ElemType::F16 => "FLOAT16",
            ElemType::I64 => "INT64",
            ElemType::I32 => "INT32",
            ElemType::I8 => "INT8",
            ElemType::U8 => "UINT8",
            ElemType::Bool => "BOOL",
        }
    }
}

/// A dimension as the model declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named (`batch`) or unnamed (`?`) variable dimension.
    Var(String),
}

/// A tensor in host memory (a constant of the model, an input or a result): its shape, element
/// type and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub dims: Vec<usize>,
    pub dtype: ElemType,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The values as i64 (integer tensors only).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        let chunks = self.bytes.chunks_exact(self.dtype.size());
        match self.dtype {
            ElemType::I64 => Some(
                chunks
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            ElemType::I32 => Some(
                chunks
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The only value of a one-element float or integer tensor, as f64.
    pub fn scalar(&self) -> Option<f64> {
        if self.numel() != 1 {
            return None;
        }
        let b = &self.bytes;
        Some(match self.dtype {
            ElemType::F32 => f32::from_le_bytes(b[..4].try_into().ok()?) as f64,
            ElemType::F64 => f64::from_le_bytes(b[..8].try_into().ok()?),
            ElemType::I64 => i64::from_le_bytes(b[..8].try_into().ok()?) as f64,
            ElemType::I32 => i32::from_le_bytes(b[..4].try_into().ok()?) as f64,
            ElemType::F16 | ElemType::I8 | ElemType::U8 | ElemType::Bool => return None,
        })
    }
}

/// A declared graph input.
#[derive(Debug, Clone)]
pub struct GraphInput {
    pub name: String,
    /// The ONNX element type code (kept raw so unsupported types can be named).
    pub elem_type: i32,
    pub dims: Vec<Dim>,
}

/// The parts of a model the planner reads.
#[derive(Debug)]
pub struct Graph {
    pub opset: i64,
    pub inputs: Vec<GraphInput>,
    pub outputs: Vec<String>,
    /// Initializers then `Constant` node outputs, in file order (so plans are deterministic).
    pub constants: Vec<(String, Arc<HostTensor>)>,
    /// Every node except `Constant`, in an order where each node follows its inputs' producers.
    pub nodes: Vec<NodeProto>,
}

/// Decodes an ONNX file (protobuf only; no tract model is built).
pub fn read_model(path: &Path) -> Result<ModelProto, LowerError> {
    tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| LowerError::Read(format!("{}: {e:#}", path.display())))
}

impl Graph {
    /// The graph of a decoded model.
    pub fn from_model(model: &ModelProto) -> Result<Graph, LowerError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| LowerError::Read("the model has no graph".into()))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version);
        let mut constants = Vec::new();
        for init in &graph.initializer {
            constants.push((init.name.clone(), Arc::new(const_tensor(init)?)));
        }
        let mut nodes = Vec::new();
        for node in &graph.node {
            if node.op_type == "Constant" && node.domain.is_empty() {
                let tensor = constant_node(node)?;
                constants.push((node.output[0].clone(), Arc::new(tensor)));
            } else {
                nodes.push(node.clone());
            }
        }
        let inputs = graph
            .input
            .iter()
            .filter(|i| !constants.iter().any(|(name, _)| *name == i.name))
            .map(graph_input)
            .collect();
        let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
        let mut graph = Graph {
            opset,
            inputs,
            outputs,
            constants,
            nodes,
        };
        graph.sort_nodes()?;
        Ok(graph)
    }

    /// Orders the nodes so that every node comes after the producers of its inputs, keeping the
    /// file's order where it already is one.
    fn sort_nodes(&mut self) -> Result<(), LowerError> {
        let mut known: HashSet<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        known.extend(self.constants.iter().map(|(name, _)| name.as_str()));
        known.insert("");
        let mut done = vec![false; self.nodes.len()];
        let mut order = Vec::with_capacity(self.nodes.len());
        while order.len() < self.nodes.len() {
            let next = (0..self.nodes.len()).find(|&i| {
                !done[i]
                    && self.nodes[i]
                        .input
                        .iter()
                        .all(|x| known.contains(x.as_str()))
            });
            let Some(i) = next else {
                let node = (0..self.nodes.len())
                    .find(|&i| !done[i])
                    .map(|i| &self.nodes[i])
                    .expect("a node is left");
                let missing = node
                    .input
                    .iter()
                    .find(|x| !known.contains(x.as_str()))
                    .cloned()
                    .unwrap_or_default();
                return Err(LowerError::invalid(
                    node,
                    format!(
                        "input '{missing}' is not a graph input, a constant or the output of an earlier node"
                    ),
                ));
            };
            done[i] = true;
            order.push(i);
            known.extend(self.nodes[i].output.iter().map(String::as_str));
        }
        let nodes = std::mem::take(&mut self.nodes);
        let mut slots: Vec<Option<NodeProto>> = nodes.into_iter().map(Some).collect();
        self.nodes = order
            .into_iter()
            .map(|i| slots[i].take().unwrap())
            .collect();
        Ok(())
    }
}

fn graph_input(info: &pb::ValueInfoProto) -> GraphInput {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as Type;
    let tensor = match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Type::TensorType(t)) => Some(t),
        _ => None,
    };
    let dims = tensor
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as usize),
                    Some(Value::DimParam(p)) if !p.is_empty() => Dim::Var(p.clone()),
                    _ => Dim::Var("?".into()),
                })
                .collect()
        })
        .unwrap_or_default();
    GraphInput {
        name: info.name.clone(),
        elem_type: tensor.map_or(0, |t| t.elem_type),
        dims,
    }
}

/// Decodes a tensor held in the model file.
pub fn const_tensor(t: &TensorProto) -> Result<HostTensor, LowerError> {
    let what = |why: &str| LowerError::Read(format!("constant '{}': {why}", t.name));
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(what("external data is not supported by the GPU planner"));
    }
    let dtype = ElemType::from_onnx(t.data_type).ok_or_else(|| {
        what(&format!(
            "{} constants are not supported",
            ElemType::onnx_name(t.data_type)
        ))
    })?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let numel: usize = dims.iter().product();
    let bytes = if !t.raw_data.is_empty() {
        t.raw_data.clone()
    } else {
        typed_bytes(t, dtype)
    };
    if bytes.len() != numel * dtype.size() {
        return Err(what(&format!(
            "holds {} bytes for shape {dims:?} of {}",
            bytes.len(),
            dtype.name()
        )));
    }
    Ok(HostTensor { dims, dtype, bytes })
}

fn typed_bytes(t: &TensorProto, dtype: ElemType) -> Vec<u8> {
    match dtype {
        ElemType::F32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElemType::F64 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElemType::I64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElemType::I32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElemType::F16 => t
            .int32_data
            .iter()
            .flat_map(|v| (*v as u16).to_le_bytes())
            .collect(),
        ElemType::I8 | ElemType::U8 | ElemType::Bool => {
            t.int32_data.iter().map(|v| *v as u8).collect()
        }
    }
}

fn constant_node(node: &NodeProto) -> Result<HostTensor, LowerError> {
    let scalar_f32 = |v: f32| HostTensor {
        dims: vec![],
        dtype: ElemType::F32,
        bytes: v.to_le_bytes().to_vec(),
    };
    let i64s = |dims: Vec<usize>, v: &[i64]| HostTensor {
        dims,
        dtype: ElemType::I64,
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let attr = node
        .attribute
        .first()
        .ok_or_else(|| LowerError::invalid(node, "Constant without a value".into()))?;
    match attr.name.as_str() {
        "value" => {
            const_tensor(attr.t.as_ref().ok_or_else(|| {
                LowerError::invalid(node, "Constant value is not a tensor".into())
            })?)
        }
        "value_float" => Ok(scalar_f32(attr.f)),
        "value_floats" => Ok(HostTensor {
            dims: vec![attr.floats.len()],
            dtype: ElemType::F32,
            bytes: attr.floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }),
        "value_int" => Ok(i64s(vec![], &[attr.i])),
        "value_ints" => Ok(i64s(vec![attr.ints.len()], &attr.ints)),
        other => Err(LowerError::invalid(
            node,
            format!("Constant with a '{other}' attribute is not supported"),
        )),
    }
}

/// A node's attribute by name.
pub fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute, or its default.
pub fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

/// A float attribute, or its default.
pub fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

/// An integer-list attribute, if present.
pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// A string attribute, if present.
pub fn attr_string(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}
