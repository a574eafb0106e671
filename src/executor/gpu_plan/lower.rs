//! ONNX nodes to plan steps. Every node is examined before anything fails, so a model with
//! operators outside the supported set is refused with all of them named; element types and
//! ranks are carried along, so later passes never meet an unknown type.

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;

use super::LowerError;
use super::onnx::{ElemType, Graph};
use super::plan::{Op, Plan, PlanInput, Source, Step, Value, ValueId};

/// Why a node (or graph input) cannot run on the GPU executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// An operator outside the set, or a use of it the executor does not cover.
    Op {
        op_type: String,
        node: String,
        why: Option<String>,
    },
    /// A graph input of an element type the executor does not carry.
    Input { name: String, elem_type: String },
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::Op { op_type, node, why } => {
                write!(f, "{op_type} (node {node}")?;
                if let Some(why) = why {
                    write!(f, ": {why}")?;
                }
                write!(f, ")")
            }
            Unsupported::Input { name, elem_type } => write!(f, "input {name} ({elem_type})"),
        }
    }
}

/// Lowers a graph: the plan, or every reason it cannot run.
pub fn lower(graph: &Graph) -> Result<Plan, LowerError> {
    let mut lowering = Lowering::default();
    for input in &graph.inputs {
        lowering.add_input(input);
    }
    for (name, tensor) in &graph.constants {
        lowering.add_value(
            name,
            tensor.dtype,
            tensor.dims.len(),
            Source::Constant(tensor.clone()),
        );
    }
    for node in &graph.nodes {
        lowering.node(graph, node)?;
    }
    if !lowering.unsupported.is_empty() {
        return Err(LowerError::Unsupported(lowering.unsupported));
    }
    lowering.finish(graph)
}

#[derive(Default)]
struct Lowering {
    values: Vec<Value>,
    by_name: HashMap<String, ValueId>,
    inputs: Vec<PlanInput>,
    steps: Vec<Step>,
    unsupported: Vec<Unsupported>,
    /// Values whose type is unknown because an unsupported node produced them.
    poisoned: Vec<bool>,
}

impl Lowering {
    fn add_value(&mut self, name: &str, dtype: ElemType, rank: usize, source: Source) -> ValueId {
        let id = self.values.len();
        self.values.push(Value {
            name: name.to_string(),
            dtype,
            rank,
            source,
        });
        self.poisoned.push(false);
        self.by_name.insert(name.to_string(), id);
        id
    }

    fn add_input(&mut self, input: &super::onnx::GraphInput) {
        let dtype = ElemType::from_onnx(input.elem_type);
        if dtype.is_none() {
            self.unsupported.push(Unsupported::Input {
                name: input.name.clone(),
                elem_type: ElemType::onnx_name(input.elem_type),
            });
        }
        let index = self.inputs.len();
        let id = self.add_value(
            &input.name,
            dtype.unwrap_or(ElemType::F32),
            input.dims.len(),
            Source::Input(index),
        );
        self.poisoned[id] = dtype.is_none();
        self.inputs.push(PlanInput {
            name: input.name.clone(),
            value: id,
            dims: input.dims.clone(),
        });
    }

    fn operands(&self, node: &NodeProto) -> Operands {
        let ids: Vec<Option<ValueId>> = node
            .input
            .iter()
            .map(|n| {
                if n.is_empty() {
                    None
                } else {
                    self.by_name.get(n).copied()
                }
            })
            .collect();
        let known = |id: &Option<ValueId>| id.filter(|&v| !self.poisoned[v]);
        Operands {
            dtypes: ids
                .iter()
                .map(|id| known(id).map(|v| self.values[v].dtype))
                .collect(),
            ranks: ids
                .iter()
                .map(|id| known(id).map(|v| self.values[v].rank))
                .collect(),
            ids,
        }
    }

    fn node(&mut self, graph: &Graph, node: &NodeProto) -> Result<(), LowerError> {
        let operands = self.operands(node);
        let outcome = if node.domain.is_empty() || node.domain == "ai.onnx" {
            super::ops::lower_node(&*self, graph.opset, node, &operands)
        } else {
            Err(NodeError::Unsupported(None))
        };
        match outcome {
            Ok(lowered) => return self.push_steps(node, lowered),
            Err(NodeError::Invalid(reason)) => return Err(LowerError::invalid(node, reason)),
            // Already reported: the node producing that input is unsupported.
            Err(NodeError::UnknownInput) => {}
            Err(NodeError::Unsupported(why)) => {
                let op_type = if node.domain.is_empty() {
                    node.op_type.clone()
                } else {
                    format!("{}.{}", node.domain, node.op_type)
                };
                self.unsupported.push(Unsupported::Op {
                    op_type,
                    node: node.name.clone(),
                    why,
                });
            }
        }
        // Placeholders, so later nodes find their inputs; no plan is built from them, since
        // lowering fails once anything is unsupported.
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            let id = self.add_value(out, ElemType::F32, 0, Source::Input(usize::MAX));
            self.poisoned[id] = true;
        }
        Ok(())
    }

    fn push_steps(&mut self, node: &NodeProto, lowered: Vec<Lowered>) -> Result<(), LowerError> {
        for l in lowered {
            let inputs = l
                .inputs
                .iter()
                .map(|arg| match arg {
                    Arg::Name(n) => self.by_name[n],
                    Arg::Scalar(name, value) => self.add_value(
                        name,
                        ElemType::F32,
                        0,
                        Source::Constant(std::sync::Arc::new(super::onnx::HostTensor {
                            dims: vec![],
                            dtype: ElemType::F32,
                            bytes: value.to_le_bytes().to_vec(),
                        })),
                    ),
                })
                .collect();
            let step = self.steps.len();
            let output = self.add_value(&l.output, l.dtype, l.rank, Source::Step(step));
            self.steps.push(Step {
                node: node.name.clone(),
                op: l.op,
                inputs,
                output,
            });
        }
        Ok(())
    }

    fn finish(self, graph: &Graph) -> Result<Plan, LowerError> {
        let outputs = graph
            .outputs
            .iter()
            .map(|name| {
                self.by_name.get(name).copied().ok_or_else(|| {
                    LowerError::Read(format!("graph output '{name}' is produced by no node"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut consumers = vec![Vec::new(); self.values.len()];
        for (s, step) in self.steps.iter().enumerate() {
            for &v in &step.inputs {
                if !consumers[v].contains(&s) {
                    consumers[v].push(s);
                }
            }
        }
        Ok(Plan {
            values: self.values,
            inputs: self.inputs,
            outputs,
            steps: self.steps,
            consumers,
        })
    }
}

/// Why a node did not lower.
pub(super) enum NodeError {
    /// Outside the supported set (None: the operator itself; Some: the use of it).
    Unsupported(Option<String>),
    /// A malformed node (bad attribute, wrong arity): the model is wrong, not just unsupported.
    Invalid(String),
    /// An input's type is unknown because an unsupported node upstream produced it.
    UnknownInput,
}

/// An operand of a lowered step: a value of the graph by name, or a scalar made by lowering.
pub(super) enum Arg {
    Name(String),
    Scalar(String, f32),
}

/// One step made from a node (a node makes one or two).
pub(super) struct Lowered {
    pub op: Op,
    pub inputs: Vec<Arg>,
    pub output: String,
    pub dtype: ElemType,
    pub rank: usize,
}

/// What lowering knows about a node's inputs: types and ranks (None where absent or unknown).
pub(super) struct Operands {
    pub dtypes: Vec<Option<ElemType>>,
    pub ranks: Vec<Option<usize>>,
    pub ids: Vec<Option<ValueId>>,
}

/// Constants' integer values (shapes, axes) by value name, for `ops`.
pub(super) trait Known {
    fn ints(&self, name: &str) -> Option<Vec<i64>>;
}

impl Known for Lowering {
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let id = *self.by_name.get(name)?;
        match &self.values[id].source {
            Source::Constant(c) => c.to_i64s(),
            _ => None,
        }
    }
}
