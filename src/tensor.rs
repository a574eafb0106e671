//! Protocol-free request and response types. The gRPC layer (and later HTTP) converts into these, so
//! the rest of the server never sees a wire format. Tensor contents are kept in the protocol's raw
//! form (little-endian elements; BYTES as 4-byte little-endian length prefixes followed by the bytes),
//! which is what clients send and what the model runtime reads.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use crate::error::{Error, Result};

/// Element types shared by Triton's protocol and ONNX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    /// Variable-length byte strings.
    Bytes,
}

/// Every data type, in protocol order; handy for tests and tables.
pub const ALL_DATA_TYPES: [DataType; 13] = [
    DataType::Bool,
    DataType::Uint8,
    DataType::Uint16,
    DataType::Uint32,
    DataType::Uint64,
    DataType::Int8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::Fp16,
    DataType::Fp32,
    DataType::Fp64,
    DataType::Bytes,
];

impl DataType {
    /// The protocol's name, as in `ModelInferRequest.inputs[].datatype` ("INT32", "BYTES", ...).
    pub fn protocol_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a protocol name; `None` for names outside the shared set (e.g. BF16).
    pub fn from_protocol_name(name: &str) -> Option<DataType> {
        ALL_DATA_TYPES
            .into_iter()
            .find(|dt| dt.protocol_name() == name)
    }

    /// The model configuration's name (`TYPE_INT32`, `TYPE_STRING`, ...).
    pub fn config_name(self) -> &'static str {
        match self {
            DataType::Bytes => "TYPE_STRING",
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
        }
    }

    /// Bytes per element, or `None` for variable-length BYTES.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol_name())
    }
}

/// Formats a shape the way Triton prints one in messages: `[-1,16]`.
pub fn format_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// Number of elements of a concrete shape, or `None` if a dimension is negative or the product
/// overflows. Checked before anything of that size is allocated.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Splits raw BYTES contents into its elements, checking every length prefix against what is there.
pub fn split_bytes_elements(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        let (element, tail) = tail.split_at(len);
        elements.push(element);
        rest = tail;
    }
    Some(elements)
}

/// Appends one element to raw BYTES contents.
pub fn push_bytes_element(raw: &mut Vec<u8>, element: &[u8]) {
    raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
    raw.extend_from_slice(element);
}

/// A named tensor in the protocol's raw layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// Raw little-endian contents (length-prefixed elements for BYTES).
    pub data: Bytes,
}

impl Tensor {
    /// Checks that `data` holds exactly the elements `shape` declares, without allocating anything
    /// of the declared size. `model` names the model in the error.
    pub fn check_contents(&self, model: &str) -> Result<()> {
        let declared = element_count(&self.shape).ok_or_else(|| {
            let problem = if self.shape.iter().any(|&d| d < 0) {
                "is invalid"
            } else {
                "is too large"
            };
            Error::invalid(format!(
                "shape {} of input '{}' for model '{model}' {problem}",
                format_shape(&self.shape),
                self.name
            ))
        })?;
        match self.datatype.element_size() {
            Some(size) => {
                let expected = declared.checked_mul(size).ok_or_else(|| {
                    Error::invalid(format!(
                        "shape {} of input '{}' for model '{model}' is too large",
                        format_shape(&self.shape),
                        self.name
                    ))
                })?;
                if expected != self.data.len() {
                    return Err(Error::invalid(format!(
                        "input byte size mismatch for input '{}' for model '{model}'. \
                         Expected {expected}, got {}",
                        self.name,
                        self.data.len()
                    )));
                }
            }
            None => {
                let got = split_bytes_elements(&self.data)
                    .map(|e| e.len())
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "input '{}' for model '{model}': malformed BYTES contents \
                         (an element's length prefix runs past the end of the data)",
                            self.name
                        ))
                    })?;
                if got != declared {
                    return Err(Error::invalid(format!(
                        "unexpected number of string elements for input '{}' for model \
                         '{model}'. Expected {declared}, got {got}",
                        self.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A request parameter value, as the protocol carries them.
#[derive(Debug, Clone, PartialEq)]
pub enum Parameter {
    Bool(bool),
    Int64(i64),
    Uint64(u64),
    Double(f64),
    String(String),
}

/// One inference request, already decoded from the wire.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub model_name: String,
    /// The version asked for; empty means "as the model's policy says".
    pub model_version: String,
    /// Echoed back in the response.
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Names of the outputs wanted; empty means all.
    pub outputs: Vec<String>,
    pub parameters: HashMap<String, Parameter>,
}

/// One inference response.
#[derive(Debug, Clone, Default)]
pub struct InferResponse {
    pub model_name: String,
    /// The version that served the request.
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(datatype: DataType, shape: &[i64], data: Vec<u8>) -> Tensor {
        Tensor {
            name: "INPUT0".into(),
            datatype,
            shape: shape.to_vec(),
            data: data.into(),
        }
    }

    #[test]
    fn names_round_trip() {
        for dt in ALL_DATA_TYPES {
            assert_eq!(DataType::from_protocol_name(dt.protocol_name()), Some(dt));
        }
        assert_eq!(DataType::from_protocol_name("BF16"), None);
    }

    #[test]
    fn raw_size_is_checked_against_shape() {
        let ok = tensor(DataType::Int32, &[1, 16], vec![0; 64]);
        assert!(ok.check_contents("simple").is_ok());
        let short = tensor(DataType::Int32, &[1, 16], vec![0; 60]);
        let msg = short.check_contents("simple").unwrap_err().to_string();
        assert!(
            msg.contains("'INPUT0'") && msg.contains("Expected 64, got 60"),
            "{msg}"
        );
    }

    #[test]
    fn huge_shapes_are_rejected_without_allocating() {
        let t = tensor(DataType::Fp64, &[1 << 40, 1 << 40], vec![0; 8]);
        let msg = t.check_contents("m").unwrap_err().to_string();
        assert!(msg.contains("too large"), "{msg}");
        let negative = tensor(DataType::Fp32, &[-1, 4], vec![]);
        assert!(negative.check_contents("m").is_err());
    }

    #[test]
    fn bytes_elements_are_counted_and_bounds_checked() {
        let mut raw = Vec::new();
        push_bytes_element(&mut raw, b"12");
        push_bytes_element(&mut raw, b"");
        assert_eq!(split_bytes_elements(&raw), Some(vec![&b"12"[..], &b""[..]]));
        assert!(
            tensor(DataType::Bytes, &[2], raw.clone())
                .check_contents("m")
                .is_ok()
        );
        let msg = tensor(DataType::Bytes, &[3], raw.clone())
            .check_contents("m")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("Expected 3, got 2"), "{msg}");
        raw.truncate(raw.len() - 1);
        raw.extend_from_slice(&[9, 0, 0, 0]);
        assert_eq!(split_bytes_elements(&raw), None);
    }

    #[test]
    fn shapes_format_like_triton() {
        assert_eq!(format_shape(&[-1, 16]), "[-1,16]");
        assert_eq!(element_count(&[2, 3, 4]), Some(24));
        assert_eq!(element_count(&[]), Some(1));
    }
}
