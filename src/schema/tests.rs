use super::*;
use crate::error::Code;
use crate::repository::model_config::parse;

const SIMPLE: &str = r#"
name: "simple"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"#;

fn schema() -> ModelSchema {
    ModelSchema::from_config(&parse(SIMPLE).unwrap()).unwrap()
}

fn input(name: &str, dt: DataType, shape: &[i64]) -> Tensor {
    let count = crate::tensor::element_count(shape).unwrap_or(0);
    let size = dt.element_size().unwrap_or(1);
    Tensor {
        name: name.into(),
        datatype: dt,
        shape: shape.to_vec(),
        data: vec![1u8; count * size].into(),
    }
}

fn request(inputs: Vec<Tensor>) -> InferRequest {
    InferRequest {
        model_name: "simple".into(),
        inputs,
        ..Default::default()
    }
}

fn error_of(inputs: Vec<Tensor>) -> (Code, String) {
    let e = schema().check(&mut request(inputs)).unwrap_err();
    (e.code(), e.to_string())
}

#[test]
fn a_good_request_comes_back_in_schema_order() {
    let mut req = request(vec![
        input("INPUT1", DataType::Int32, &[3, 16]),
        input("INPUT0", DataType::Int32, &[3, 16]),
    ]);
    let checked = schema().check(&mut req).unwrap();
    assert_eq!(checked.batch_size, 3);
    let names: Vec<_> = checked
        .inputs
        .iter()
        .map(|t| t.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["INPUT0", "INPUT1"]);
}

#[test]
fn each_mismatch_names_tensor_expected_and_got() {
    let ok = || input("INPUT1", DataType::Int32, &[1, 16]);
    let (code, msg) = error_of(vec![input("INPUT0", DataType::Fp32, &[1, 16]), ok()]);
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        msg.contains("'INPUT0'") && msg.contains("'FP32'") && msg.contains("'INT32'"),
        "{msg}"
    );

    let (_, msg) = error_of(vec![input("INPUT0", DataType::Int32, &[1, 8]), ok()]);
    assert!(msg.contains("Expected [-1,16], got [1,8]"), "{msg}");

    let (_, msg) = error_of(vec![ok()]);
    assert!(msg.contains("missing") && msg.contains("'INPUT0'"), "{msg}");

    let (_, msg) = error_of(vec![input("FOO", DataType::Int32, &[1, 16]), ok()]);
    assert!(msg.contains("'FOO'") && msg.contains("'simple'"), "{msg}");

    let (_, msg) = error_of(vec![
        input("INPUT0", DataType::Int32, &[9, 16]),
        input("INPUT1", DataType::Int32, &[9, 16]),
    ]);
    assert!(msg.contains("8") && msg.contains("got 9"), "{msg}");

    let (_, msg) = error_of(vec![
        input("INPUT0", DataType::Int32, &[2, 16]),
        input("INPUT1", DataType::Int32, &[3, 16]),
    ]);
    assert!(
        msg.contains("batch size 3") && msg.contains("have 2"),
        "{msg}"
    );
}

#[test]
fn a_declared_shape_is_checked_against_the_bytes_sent() {
    let mut short = input("INPUT0", DataType::Int32, &[1, 16]);
    short.data = vec![0u8; 60].into();
    let (_, msg) = error_of(vec![short, input("INPUT1", DataType::Int32, &[1, 16])]);
    assert!(msg.contains("Expected 64, got 60"), "{msg}");
}

#[test]
fn unknown_outputs_are_refused() {
    let mut req = request(vec![
        input("INPUT0", DataType::Int32, &[1, 16]),
        input("INPUT1", DataType::Int32, &[1, 16]),
    ]);
    req.outputs = vec!["OUTPUT9".into()];
    let msg = schema().check(&mut req).unwrap_err().to_string();
    assert!(msg.contains("'OUTPUT9'"), "{msg}");
}

#[test]
fn invalid_configurations_are_reasons_not_panics() {
    let reason = |text: &str| ModelSchema::from_config(&parse(text).unwrap()).unwrap_err();
    assert!(reason("max_batch_size: -1").contains("negative"));
    assert!(
        reason("input [ { name: \"a\" data_type: TYPE_FP32 dims: [ 0 ] } ]")
            .contains("dimension 0")
    );
    let dup = "input [ { name: \"a\" data_type: TYPE_FP32 dims: [ 1 ] }, { name: \"a\" data_type: TYPE_FP32 dims: [ 1 ] } ] output [ { name: \"b\" data_type: TYPE_FP32 dims: [ 1 ] } ]";
    assert!(reason(dup).contains("declared twice"));
    let untyped = "input [ { name: \"a\" dims: [ 1 ] } ] output [ { name: \"b\" data_type: TYPE_FP32 dims: [ 1 ] } ]";
    assert!(
        reason(untyped).contains("TYPE_INVALID"),
        "{}",
        reason(untyped)
    );
}
