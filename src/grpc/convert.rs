//! Conversions between the wire messages and the core's types. Typed contents are checked against
//! the declared shape before they are re-encoded, so a declared size is never allocated on trust.

use std::collections::HashMap;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::proto::inference::ModelRepositoryParameter;
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_repository_parameter::ParameterChoice as LoadChoice;
use crate::proto::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
};
use crate::tensor::{
    DataType, InferRequest, InferResponse, Parameter, Tensor, element_count, format_shape,
    push_bytes_element,
};

/// Decodes a request. Raw contents, when present, must cover every input and exclude typed ones.
pub fn infer_request(request: ModelInferRequest) -> Result<InferRequest> {
    let model = request.model_name;
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(Error::invalid(format!(
            "model '{model}': the request has {} inputs but {} raw_input_contents",
            request.inputs.len(),
            raw.len()
        )));
    }
    let mut raw = raw.into_iter();
    let inputs = request
        .inputs
        .into_iter()
        .map(|input| input_tensor(&model, input, raw.next()))
        .collect::<Result<Vec<_>>>()?;
    Ok(InferRequest {
        model_name: model,
        model_version: request.model_version,
        id: request.id,
        inputs,
        outputs: request.outputs.into_iter().map(|o| o.name).collect(),
        parameters: parameters(request.parameters),
    })
}

fn input_tensor(model: &str, input: InferInputTensor, raw: Option<Bytes>) -> Result<Tensor> {
    let datatype = DataType::from_protocol_name(&input.datatype).ok_or_else(|| {
        Error::invalid(format!(
            "input '{}' for model '{model}' has unsupported data-type '{}'",
            input.name, input.datatype
        ))
    })?;
    let data = match (raw, input.contents) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!(
                "contents field must not be specified when using raw_input_contents for '{}' \
                 for model '{model}'",
                input.name
            )));
        }
        (Some(raw), None) => raw,
        (None, contents) => typed_contents(
            model,
            &input.name,
            datatype,
            &input.shape,
            contents.unwrap_or_default(),
        )?,
    };
    Ok(Tensor {
        name: input.name,
        datatype,
        shape: input.shape,
        data,
    })
}

/// Re-encodes typed contents as raw bytes after checking their element count against the shape.
fn typed_contents(
    model: &str,
    name: &str,
    datatype: DataType,
    shape: &[i64],
    c: InferTensorContents,
) -> Result<Bytes> {
    let declared = element_count(shape).ok_or_else(|| {
        Error::invalid(format!(
            "invalid shape {} for input '{name}' for model '{model}'",
            format_shape(shape)
        ))
    })?;
    let got = match datatype {
        DataType::Bool => c.bool_contents.len(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => c.int_contents.len(),
        DataType::Int64 => c.int64_contents.len(),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => c.uint_contents.len(),
        DataType::Uint64 => c.uint64_contents.len(),
        DataType::Fp32 => c.fp32_contents.len(),
        DataType::Fp64 => c.fp64_contents.len(),
        DataType::Bytes => c.bytes_contents.len(),
        DataType::Fp16 => {
            return Err(Error::invalid(format!(
                "input '{name}' for model '{model}': FP16 has no typed contents field; \
                 send it in raw_input_contents"
            )));
        }
    };
    if got != declared {
        return Err(Error::invalid(format!(
            "unexpected number of elements in contents for input '{name}' for model '{model}'. \
             Expected {declared}, got {got}"
        )));
    }
    let narrow = |what: &str| {
        Error::invalid(format!(
            "input '{name}' for model '{model}': a value in {what} does not fit {datatype}"
        ))
    };
    let bytes: Vec<u8> = match datatype {
        DataType::Bool => c.bool_contents.iter().map(|&b| b as u8).collect(),
        DataType::Int8 => encode(&c.int_contents, |&v| i8::try_from(v).map(i8::to_le_bytes))
            .map_err(|_| narrow("int_contents"))?,
        DataType::Int16 => encode(&c.int_contents, |&v| i16::try_from(v).map(i16::to_le_bytes))
            .map_err(|_| narrow("int_contents"))?,
        DataType::Int32 => c
            .int_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Int64 => c
            .int64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint8 => encode(&c.uint_contents, |&v| u8::try_from(v).map(|v| [v]))
            .map_err(|_| narrow("uint_contents"))?,
        DataType::Uint16 => encode(&c.uint_contents, |&v| {
            u16::try_from(v).map(u16::to_le_bytes)
        })
        .map_err(|_| narrow("uint_contents"))?,
        DataType::Uint32 => c
            .uint_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint64 => c
            .uint64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp32 => c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp64 => c
            .fp64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Bytes => {
            let mut raw = Vec::new();
            for element in &c.bytes_contents {
                push_bytes_element(&mut raw, element);
            }
            raw
        }
        DataType::Fp16 => unreachable!("FP16 typed contents are rejected above"),
    };
    Ok(Bytes::from(bytes))
}

fn encode<T, const N: usize, E>(
    values: &[T],
    f: impl Fn(&T) -> std::result::Result<[u8; N], E>,
) -> std::result::Result<Vec<u8>, E> {
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&f(v)?);
    }
    Ok(out)
}

fn parameters(wire: HashMap<String, InferParameter>) -> HashMap<String, Parameter> {
    wire.into_iter()
        .filter_map(|(k, v)| {
            let value = match v.parameter_choice? {
                ParameterChoice::BoolParam(b) => Parameter::Bool(b),
                ParameterChoice::Int64Param(i) => Parameter::Int64(i),
                ParameterChoice::StringParam(s) => Parameter::String(s),
                ParameterChoice::DoubleParam(d) => Parameter::Double(d),
                ParameterChoice::Uint64Param(u) => Parameter::Uint64(u),
            };
            Some((k, value))
        })
        .collect()
}

/// Encodes a response; outputs always travel in `raw_output_contents`, aligned with `outputs`.
pub fn infer_response(response: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        outputs.push(InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.protocol_name().to_string(),
            shape: tensor.shape,
            ..Default::default()
        });
        raw.push(tensor.data);
    }
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        outputs,
        raw_output_contents: raw,
        ..Default::default()
    }
}

/// A model configuration (JSON) and model files, as a load request passes them: `config` is a
/// string parameter, each `file:<path>` a bytes parameter.
pub type LoadParameters = (Option<String>, Vec<(String, Vec<u8>)>);

/// Splits Triton's load parameters; any other parameter is refused by name.
pub fn load_parameters(
    model: &str,
    parameters: HashMap<String, ModelRepositoryParameter>,
) -> Result<LoadParameters> {
    let mut config = None;
    let mut files = Vec::new();
    for (key, value) in parameters {
        match (key.as_str(), value.parameter_choice) {
            ("config", Some(LoadChoice::StringParam(json))) => config = Some(json),
            (k, Some(LoadChoice::BytesParam(data))) if k.starts_with("file:") => {
                files.push((k["file:".len()..].to_string(), data));
            }
            (k, _) => {
                return Err(Error::invalid(format!(
                    "load of model '{model}': unsupported parameter '{k}' (expected 'config' as \
                     a string or 'file:<path>' as bytes)"
                )));
            }
        }
    }
    Ok((config, files))
}
