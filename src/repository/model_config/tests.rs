use super::*;
use crate::proto::inference::model_config::SchedulingChoice;
use crate::proto::inference::model_instance_group::Kind;
use crate::proto::inference::model_version_policy::PolicyChoice;
use crate::proto::inference::{DataType, ModelParameter};

/// Written the way Triton's documentation writes configurations: lists of messages without a
/// colon, comments, nested lists, and string values containing brackets and '#'.
const TRITON_STYLE: &str = r#"
# A comment with input [ brackets ]
name: "densenet"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { latest { num_versions: 2 } }
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels [v2] #1.txt"
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  },
  { kind: KIND_GPU gpus: [ 0, 1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
model_warmup [
  {
    name: "zeros"
    batch_size: 1
    inputs { key: "data_0" value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } }
  }
]
"#;

#[test]
fn parses_configs_written_as_triton_documents_them() {
    let config = parse(TRITON_STYLE).unwrap();
    assert_eq!(config.name, "densenet");
    assert_eq!(config.max_batch_size, 8);
    assert_eq!(config.input.len(), 1);
    assert_eq!(config.input[0].dims, vec![3, 224, 224]);
    assert_eq!(config.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(
        config.input[0].reshape.as_ref().unwrap().shape,
        vec![1, 3, 224, 224]
    );
    assert_eq!(config.output[0].label_filename, "labels [v2] #1.txt");
    assert_eq!(config.instance_group.len(), 2);
    assert_eq!(config.instance_group[0].count, 2);
    assert_eq!(config.instance_group[1].kind, Kind::Gpu as i32);
    assert_eq!(config.instance_group[1].gpus, vec![0, 1]);
    let Some(SchedulingChoice::DynamicBatching(batching)) = &config.scheduling_choice else {
        panic!(
            "dynamic_batching not parsed: {:?}",
            config.scheduling_choice
        );
    };
    assert_eq!(batching.preferred_batch_size, vec![4, 8]);
    assert_eq!(batching.max_queue_delay_microseconds, 100);
    match config.version_policy.and_then(|p| p.policy_choice) {
        Some(PolicyChoice::Latest(l)) => assert_eq!(l.num_versions, 2),
        other => panic!("unexpected policy {other:?}"),
    }
    let param = &config.parameters["intra_op_thread_count"];
    assert_eq!(
        param,
        &ModelParameter {
            string_value: "1".into()
        }
    );
    assert_eq!(
        config.model_warmup[0].inputs["data_0"].dims,
        vec![3, 224, 224]
    );
}

#[test]
fn colons_are_added_only_between_field_names_and_lists() {
    assert_eq!(normalize_list_colons("input [ { } ]"), "input: [ { } ]");
    assert_eq!(normalize_list_colons("dims: [ 1 ]"), "dims: [ 1 ]");
    assert_eq!(
        normalize_list_colons("name: \"a [b]\" # c [d]\nx [ 1 ]"),
        "name: \"a [b]\" # c [d]\nx: [ 1 ]"
    );
    assert_eq!(
        normalize_list_colons("kind: [ KIND_CPU, KIND_GPU ]"),
        "kind: [ KIND_CPU, KIND_GPU ]"
    );
    assert_eq!(
        normalize_list_colons("a { b [ { c [ 1 ] } ] }"),
        "a { b: [ { c: [ 1 ] } ] }"
    );
    assert_eq!(
        normalize_list_colons("s: 'it''s [x]' y [1]"),
        "s: 'it''s [x]' y: [1]"
    );
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let err = parse("name: \"x\"\nmax_batch_size: \"eight\"").unwrap_err();
    assert!(err.starts_with("config.pbtxt"), "{err}");
    assert!(err.contains("eight"), "{err}");
    let err = parse("no_such_field: 1").unwrap_err();
    assert!(err.contains("no_such_field"), "{err}");
}

#[test]
fn text_rendering_round_trips() {
    let config = parse(TRITON_STYLE).unwrap();
    let again = parse(&to_text(&config)).unwrap();
    assert_eq!(config, again);
}
