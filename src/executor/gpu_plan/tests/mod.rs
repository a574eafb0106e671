//! Unit tests of the planner on small graphs built in code: lowering here, shape inference in
//! `shapes`, fusion and kernel source in `fusion`.

mod fusion;
mod shapes;

use tract_onnx::pb::{self, AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use super::fusion::KernelKind;
use super::kernel_src::{broadcast_strides, elementwise_meta};
use super::plan::{EwOp, Op};
use super::*;

const F32: i32 = 1;
const I64: i32 = 7;
const STRING: i32 = 8;

/// A small ONNX graph under construction.
pub(super) struct G {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    opset: i64,
}

pub(super) fn a_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: 2,
        ..Default::default()
    }
}
pub(super) fn a_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: 1,
        ..Default::default()
    }
}
pub(super) fn a_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: 7,
        ..Default::default()
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[&str]) -> ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d.parse::<i64>() {
                Ok(n) => Value::DimValue(n),
                Err(_) => Value::DimParam(d.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

impl G {
    pub(super) fn new() -> G {
        G {
            nodes: vec![],
            inits: vec![],
            inputs: vec![],
            outputs: vec![],
            opset: 17,
        }
    }
    pub(super) fn input(mut self, name: &str, elem_type: i32, dims: &[&str]) -> G {
        self.inputs.push(value_info(name, elem_type, dims));
        self
    }
    pub(super) fn output(mut self, name: &str) -> G {
        self.outputs.push(value_info(name, F32, &[]));
        self
    }
    pub(super) fn f32s(mut self, name: &str, dims: &[i64], values: &[f32]) -> G {
        let tensor = TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: F32,
            float_data: values.to_vec(),
            ..Default::default()
        };
        self.inits.push(tensor);
        self
    }
    pub(super) fn weight(self, name: &str, dims: &[i64]) -> G {
        let n: i64 = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 17) as f32 - 8.0) / 16.0)
            .collect();
        self.f32s(name, dims, &values)
    }
    pub(super) fn i64s(mut self, name: &str, values: &[i64]) -> G {
        let tensor = TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: I64,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        };
        self.inits.push(tensor);
        self
    }
    pub(super) fn node(
        mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> G {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }
    pub(super) fn domain(mut self, domain: &str) -> G {
        self.nodes.last_mut().unwrap().domain = domain.into();
        self
    }
    pub(super) fn model(self) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: "test".into(),
                initializer: self.inits,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    pub(super) fn program(self) -> Result<Program, LowerError> {
        Program::from_model(&self.model())
    }
}

/// features[batch, 4] -> Gemm(W[8, 4]^T, b[8]) -> Relu -> Gemm(W2[3, 8]^T, b2[3]) -> Softmax.
pub(super) fn mlp() -> G {
    G::new()
        .input("x", F32, &["batch", "4"])
        .weight("w1", &[8, 4])
        .weight("b1", &[8])
        .weight("w2", &[3, 8])
        .weight("b2", &[3])
        .node(
            "Gemm",
            "fc1",
            &["x", "w1", "b1"],
            &["h"],
            vec![a_i("transB", 1)],
        )
        .node("Relu", "relu1", &["h"], &["r"], vec![])
        .node(
            "Gemm",
            "fc2",
            &["r", "w2", "b2"],
            &["logits"],
            vec![a_i("transB", 1)],
        )
        .node(
            "Softmax",
            "softmax",
            &["logits"],
            &["y"],
            vec![a_i("axis", -1)],
        )
        .output("y")
}

pub(super) fn step_names(program: &Program, kernel: &Kernel) -> Vec<String> {
    kernel
        .steps
        .iter()
        .map(|&s| {
            format!(
                "{}:{}",
                program.plan.steps[s].node,
                program.plan.steps[s].op.name()
            )
        })
        .collect()
}

// === lowering ===

#[test]
fn a_gemm_with_bias_lowers_to_a_gemm_and_an_add() {
    let p = mlp().program().unwrap();
    let ops: Vec<(&str, &str)> = p
        .plan
        .steps
        .iter()
        .map(|s| (s.node.as_str(), s.op.name()))
        .collect();
    assert_eq!(
        ops,
        [
            ("fc1", "Gemm"),
            ("fc1", "Add"),
            ("relu1", "Relu"),
            ("fc2", "Gemm"),
            ("fc2", "Add"),
            ("softmax", "Softmax")
        ]
    );
    assert_eq!(
        p.plan.steps[0].op,
        Op::Gemm {
            trans_a: false,
            trans_b: true,
            alpha: 1.0
        }
    );
    assert_eq!(p.plan.values[p.plan.outputs[0]].name, "y");
}

#[test]
fn a_gemm_beta_scales_the_bias_through_a_fused_multiply() {
    let p = G::new()
        .input("x", F32, &["batch", "4"])
        .weight("w", &[4, 2])
        .weight("c", &[2])
        .node(
            "Gemm",
            "g",
            &["x", "w", "c"],
            &["y"],
            vec![a_f("beta", 0.5), a_f("alpha", 2.0)],
        )
        .output("y")
        .program()
        .unwrap();
    let ops: Vec<&Op> = p.plan.steps.iter().map(|s| &s.op).collect();
    assert_eq!(
        ops[0],
        &Op::Gemm {
            trans_a: false,
            trans_b: false,
            alpha: 2.0
        }
    );
    assert_eq!(ops[1], &Op::Elementwise(EwOp::Mul));
    assert_eq!(ops[2], &Op::Elementwise(EwOp::Add));
    assert_eq!(p.plan.inline_scalar(p.plan.steps[1].inputs[1]), Some(0.5));
    let fused: Vec<&Kernel> = p
        .fusion
        .kernels
        .iter()
        .filter(|k| k.kind == KernelKind::Elementwise)
        .collect();
    assert_eq!(fused.len(), 1);
    assert_eq!(fused[0].steps, vec![1, 2]);
}

#[test]
fn every_unsupported_operator_is_named_with_its_node() {
    let e = G::new()
        .input("x", F32, &["batch", "1", "8", "8"])
        .weight("k", &[2, 1, 3, 3])
        .node("Conv", "conv1", &["x", "k"], &["c"], vec![])
        .node("Relu", "relu1", &["c"], &["r"], vec![])
        .node(
            "MaxPool",
            "pool1",
            &["r"],
            &["p"],
            vec![a_ints("kernel_shape", &[2, 2])],
        )
        .node("FusedGelu", "fast_gelu", &["p"], &["g"], vec![])
        .domain("com.microsoft")
        .node("Flatten", "flat", &["g"], &["f"], vec![])
        .node(
            "LayerNormalization",
            "ln",
            &["f", "k"],
            &["y", "mean"],
            vec![],
        )
        .output("y")
        .program()
        .unwrap_err();
    let LowerError::Unsupported(list) = &e else {
        panic!("{e}")
    };
    let names: Vec<String> = list.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "Conv (node conv1)",
            "MaxPool (node pool1)",
            "com.microsoft.FusedGelu (node fast_gelu)",
            "LayerNormalization (node ln: Mean/InvStdDev outputs)",
        ],
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("unsupported operators: Conv (node conv1), MaxPool"),
        "{e}"
    );
}

#[test]
fn unsupported_uses_of_supported_operators_say_why() {
    let e = G::new()
        .input("x", F32, &["batch", "8"])
        .input("shape", I64, &["2"])
        .input("s", STRING, &["batch"])
        .weight("g", &[8])
        .node(
            "Reshape",
            "dynamic_reshape",
            &["x", "shape"],
            &["r"],
            vec![],
        )
        .node(
            "LayerNormalization",
            "ln",
            &["x", "g"],
            &["y", "mean"],
            vec![],
        )
        .node("Squeeze", "squeeze_all", &["x"], &["q"], vec![])
        .output("y")
        .program()
        .unwrap_err();
    let text = e.to_string();
    for needle in [
        "input s (STRING)",
        "Reshape (node dynamic_reshape: target shape computed at run time)",
        "LayerNormalization (node ln: Mean/InvStdDev outputs)",
        "Squeeze (node squeeze_all: no axes",
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
}

#[test]
fn constant_nodes_feed_shapes_and_nodes_are_put_in_order() {
    let mut g = G::new()
        .input("x", F32, &["batch", "2", "3"])
        // Listed before the Constant node that produces its shape.
        .node("Reshape", "flat", &["x", "shape"], &["y"], vec![])
        .output("y");
    g.nodes.push(NodeProto {
        op_type: "Constant".into(),
        name: "shape_const".into(),
        output: vec!["shape".into()],
        attribute: vec![a_ints("value_ints", &[0, -1])],
        ..Default::default()
    });
    let p = g.program().unwrap();
    assert_eq!(p.plan.steps.len(), 1);
    assert_eq!(
        Shapes::for_batch(&p.plan, 5).unwrap().values[p.plan.outputs[0]],
        vec![5, 6]
    );
}

#[test]
fn a_missing_input_is_a_malformed_model() {
    let e = G::new()
        .input("x", F32, &["batch", "2"])
        .node("Add", "add", &["x", "nowhere"], &["y"], vec![])
        .output("y")
        .program()
        .unwrap_err();
    assert!(
        matches!(&e, LowerError::Invalid { node, .. } if node == "add"),
        "{e}"
    );
    assert!(e.to_string().contains("'nowhere'"), "{e}");
}

#[test]
fn a_cast_to_the_same_type_is_a_view() {
    let p = G::new()
        .input("x", F32, &["batch", "2"])
        .node("Cast", "same", &["x"], &["y"], vec![a_i("to", 1)])
        .node("Cast", "to_i64", &["y"], &["z"], vec![a_i("to", 7)])
        .output("z")
        .program()
        .unwrap();
    assert_eq!(p.plan.steps[0].op, Op::View(plan::View::Identity));
    assert_eq!(
        p.plan.steps[1].op,
        Op::Elementwise(EwOp::Cast {
            to: onnx::ElemType::I64
        })
    );
}
