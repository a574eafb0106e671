//! Builds the `ModelInferRequest` a perf run sends, from the model's `ModelMetadata`.
//!
//! Shapes: an input listed in [`PerfOptions::shapes`] is sent with exactly that shape. Otherwise the
//! metadata shape is used with its first `-1` dimension replaced by the batch size and any further
//! `-1` dimensions replaced by 1. Data: every element is a deterministic, non-zero value
//! `(i % 7) + 1` encoded in the input's datatype (little-endian, as the protocol's raw contents
//! require), carried in `raw_input_contents`. No outputs are named, so the server returns all of them.
//!
//! Routing keys: [`keyed_requests`] turns that request into one copy per key, each with the
//! `routing_key` request parameter (a string, `user-<i>`) set, so that no key is formatted while
//! the load runs. The copies share the input bytes.

use crate::grpc::pb;
use crate::grpc::pb::infer_parameter::ParameterChoice;
use crate::grpc::pb::model_infer_request::InferInputTensor;
use crate::routing::ROUTING_KEY_PARAMETER;

use super::{PerfError, PerfOptions};

/// Upper bound on one input's raw size, to turn a mistaken shape into an error instead of an
/// attempt to allocate gigabytes.
const MAX_INPUT_BYTES: usize = 256 << 20;

/// Resolves the shape to send for one input.
pub fn resolve_shape(
    name: &str,
    meta_shape: &[i64],
    batch: usize,
    overrides: &std::collections::HashMap<String, Vec<i64>>,
) -> Result<Vec<i64>, PerfError> {
    if let Some(shape) = overrides.get(name) {
        if shape.iter().any(|&d| d < 0) {
            return Err(input_err(
                name,
                format!("override shape {shape:?} has a negative dimension"),
            ));
        }
        return Ok(shape.clone());
    }
    let mut first = true;
    let mut out = Vec::with_capacity(meta_shape.len());
    for &d in meta_shape {
        if d >= 0 {
            out.push(d);
        } else if d == -1 {
            out.push(if first { batch as i64 } else { 1 });
            first = false;
        } else {
            return Err(input_err(
                name,
                format!("metadata shape {meta_shape:?} has dimension {d}"),
            ));
        }
    }
    Ok(out)
}

/// Size in bytes of one element of a fixed-size datatype; `None` for `BYTES` and unknown types.
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" | "BF16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

/// Half-precision bits of a small, exactly representable positive value (1..=7 here).
fn f16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = (bits >> 13) & 0x3ff;
    ((exp as u32) << 10 | mantissa) as u16
}

/// Appends the little-endian encoding of the small integer `v` in `datatype` to `out`.
fn push_value(out: &mut Vec<u8>, datatype: &str, v: u8) {
    match datatype {
        "BOOL" => out.push(1),
        "UINT8" | "INT8" => out.push(v),
        "UINT16" | "INT16" => out.extend_from_slice(&u16::from(v).to_le_bytes()),
        "UINT32" | "INT32" => out.extend_from_slice(&u32::from(v).to_le_bytes()),
        "UINT64" | "INT64" => out.extend_from_slice(&u64::from(v).to_le_bytes()),
        "FP16" => out.extend_from_slice(&f16_bits(f32::from(v)).to_le_bytes()),
        "BF16" => out.extend_from_slice(&((f32::from(v).to_bits() >> 16) as u16).to_le_bytes()),
        "FP32" => out.extend_from_slice(&f32::from(v).to_le_bytes()),
        "FP64" => out.extend_from_slice(&f64::from(v).to_le_bytes()),
        // BYTES: each element is a 4-byte little-endian length followed by the bytes.
        _ => {
            out.extend_from_slice(&1u32.to_le_bytes());
            out.push(b'0' + v);
        }
    }
}

/// Raw contents for `count` elements of `datatype`.
pub fn fill(datatype: &str, count: usize) -> Vec<u8> {
    let width = element_size(datatype).unwrap_or(5);
    let mut out = Vec::with_capacity(count * width);
    for i in 0..count {
        push_value(&mut out, datatype, (i % 7) as u8 + 1);
    }
    out
}

fn input_err(name: &str, reason: String) -> PerfError {
    PerfError::Input {
        input: name.to_string(),
        reason,
    }
}

/// Builds the request sent by every task: one input per metadata input, raw contents.
pub fn build_request(
    meta: &pb::ModelMetadataResponse,
    opts: &PerfOptions,
) -> Result<pb::ModelInferRequest, PerfError> {
    if let Some(unknown) = opts
        .shapes
        .keys()
        .find(|k| !meta.inputs.iter().any(|i| &i.name == *k))
    {
        return Err(input_err(
            unknown,
            "a shape was given for an input the model does not have".into(),
        ));
    }
    if meta.inputs.is_empty() {
        return Err(input_err(
            "",
            format!("model {:?} reports no inputs", opts.model),
        ));
    }
    let mut inputs = Vec::with_capacity(meta.inputs.len());
    let mut raw = Vec::with_capacity(meta.inputs.len());
    for input in &meta.inputs {
        if input.datatype != "BYTES" && element_size(&input.datatype).is_none() {
            return Err(input_err(
                &input.name,
                format!("unsupported datatype {:?}", input.datatype),
            ));
        }
        let shape = resolve_shape(&input.name, &input.shape, opts.batch, &opts.shapes)?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize));
        let width = element_size(&input.datatype).unwrap_or(5);
        let count = match count {
            Some(c) if c.saturating_mul(width) <= MAX_INPUT_BYTES => c,
            _ => {
                return Err(input_err(
                    &input.name,
                    format!("shape {shape:?} is too large"),
                ));
            }
        };
        raw.push(fill(&input.datatype, count).into());
        inputs.push(InferInputTensor {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape,
            ..Default::default()
        });
    }
    Ok(pb::ModelInferRequest {
        model_name: opts.model.clone(),
        model_version: opts.version.clone().unwrap_or_default(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    })
}

/// The `i`-th routing key a perf run sends.
pub fn routing_key(i: usize) -> String {
    format!("user-{i}")
}

/// The requests the tasks cycle through: `base` alone when `keys` is 0, else `keys` copies of it
/// whose `routing_key` parameter is `user-0` .. `user-{keys-1}` (other parameters kept).
pub fn keyed_requests(base: pb::ModelInferRequest, keys: usize) -> Vec<pb::ModelInferRequest> {
    if keys == 0 {
        return vec![base];
    }
    (0..keys)
        .map(|i| {
            let mut request = base.clone();
            request.parameters.insert(
                ROUTING_KEY_PARAMETER.to_string(),
                pb::InferParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(routing_key(i))),
                },
            );
            request
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn variable_dims_take_batch_then_one() {
        let none = HashMap::new();
        assert_eq!(
            resolve_shape("a", &[-1, 16], 4, &none).unwrap(),
            vec![4, 16]
        );
        assert_eq!(
            resolve_shape("a", &[-1, -1, 3], 2, &none).unwrap(),
            vec![2, 1, 3]
        );
        assert_eq!(resolve_shape("a", &[16], 8, &none).unwrap(), vec![16]);
        let over = HashMap::from([("a".to_string(), vec![3, 5])]);
        assert_eq!(resolve_shape("a", &[-1, -1], 1, &over).unwrap(), vec![3, 5]);
        assert!(resolve_shape("a", &[-2], 1, &none).is_err());
    }

    #[test]
    fn fill_is_little_endian_and_non_zero() {
        let raw = fill("INT32", 9);
        let vals: Vec<i32> = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, vec![1, 2, 3, 4, 5, 6, 7, 1, 2]);
        assert_eq!(f16_bits(1.0), 0x3c00);
        assert_eq!(f16_bits(3.0), 0x4200);
        assert_eq!(fill("FP64", 2).len(), 16);
        assert_eq!(fill("BYTES", 2), vec![1, 0, 0, 0, b'1', 1, 0, 0, 0, b'2']);
    }

    #[test]
    fn request_from_metadata() {
        use pb::model_metadata_response::TensorMetadata;
        let t = |n: &str| TensorMetadata {
            name: n.into(),
            datatype: "INT32".into(),
            shape: vec![-1, 16],
        };
        let meta = pb::ModelMetadataResponse {
            name: "simple".into(),
            inputs: vec![t("INPUT0"), t("INPUT1")],
            ..Default::default()
        };
        let mut opts = PerfOptions::new("http://x", "simple");
        opts.batch = 2;
        let req = build_request(&meta, &opts).unwrap();
        assert_eq!(req.inputs.len(), 2);
        assert_eq!(req.inputs[1].shape, vec![2, 16]);
        assert_eq!(req.raw_input_contents[0].len(), 2 * 16 * 4);
        opts.shapes.insert("NOPE".into(), vec![1]);
        assert!(build_request(&meta, &opts).is_err());
    }

    #[test]
    fn routing_keys_are_prebuilt_string_parameters() {
        let base = pb::ModelInferRequest {
            model_name: "simple".into(),
            raw_input_contents: vec![fill("INT32", 16).into()],
            ..Default::default()
        };
        let one = keyed_requests(base.clone(), 0);
        assert_eq!(one, vec![base.clone()]);
        assert!(one[0].parameters.is_empty());

        let keyed = keyed_requests(base.clone(), 3);
        assert_eq!(keyed.len(), 3);
        for (i, request) in keyed.iter().enumerate() {
            assert_eq!(request.model_name, "simple");
            assert_eq!(request.raw_input_contents, base.raw_input_contents);
            assert_eq!(request.parameters.len(), 1);
            let choice = &request.parameters[ROUTING_KEY_PARAMETER].parameter_choice;
            assert_eq!(
                choice,
                &Some(ParameterChoice::StringParam(format!("user-{i}")))
            );
        }
        // The copies share the input bytes rather than copying them.
        assert_eq!(
            keyed[2].raw_input_contents[0].as_ptr(),
            base.raw_input_contents[0].as_ptr()
        );
    }
}
