//! A model's tensor interface as the server enforces it: built once from the configuration when a
//! model loads, then used on every request to check names, types, shapes and sizes before anything
//! reaches an executor.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::proto::inference::{ModelConfig, ModelInput, ModelOutput};
use crate::tensor::{DataType, InferRequest, Tensor, format_shape};

/// One input or output as declared in the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub datatype: DataType,
    /// Dimensions without the batch dimension; -1 means any size.
    pub dims: Vec<i64>,
    /// The shape the model itself sees, when the configuration reshapes the tensor.
    pub reshape: Option<Vec<i64>>,
    /// An optional input may be left out of a request.
    pub optional: bool,
}

/// The checked interface of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSchema {
    pub model: String,
    /// 0: no batch dimension; otherwise the largest batch a request may carry.
    pub max_batch_size: usize,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

/// A request that passed every check: inputs in the schema's order (None for an absent optional one).
#[derive(Debug)]
pub struct CheckedInputs {
    pub batch_size: usize,
    pub inputs: Vec<Option<Tensor>>,
}

/// Converts a configuration data type into ours, naming the tensor on failure.
pub fn config_data_type(value: i32, tensor: &str) -> Result<DataType, String> {
    use crate::proto::inference::DataType as Cfg;
    let dt = match Cfg::try_from(value) {
        Ok(Cfg::TypeBool) => DataType::Bool,
        Ok(Cfg::TypeUint8) => DataType::Uint8,
        Ok(Cfg::TypeUint16) => DataType::Uint16,
        Ok(Cfg::TypeUint32) => DataType::Uint32,
        Ok(Cfg::TypeUint64) => DataType::Uint64,
        Ok(Cfg::TypeInt8) => DataType::Int8,
        Ok(Cfg::TypeInt16) => DataType::Int16,
        Ok(Cfg::TypeInt32) => DataType::Int32,
        Ok(Cfg::TypeInt64) => DataType::Int64,
        Ok(Cfg::TypeFp16) => DataType::Fp16,
        Ok(Cfg::TypeFp32) => DataType::Fp32,
        Ok(Cfg::TypeFp64) => DataType::Fp64,
        Ok(Cfg::TypeString) => DataType::Bytes,
        Ok(other) => {
            return Err(format!(
                "tensor '{tensor}': data type {} is not supported",
                other.as_str_name()
            ));
        }
        Err(_) => return Err(format!("tensor '{tensor}': unknown data type {value}")),
    };
    Ok(dt)
}

fn check_dims(dims: &[i64], what: &str) -> Result<(), String> {
    match dims.iter().find(|&&d| d < -1 || d == 0) {
        Some(d) => Err(format!(
            "{what}: dimension {d} is invalid (use -1 for any size)"
        )),
        None => Ok(()),
    }
}

fn io_spec(
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&[i64]>,
    optional: bool,
) -> Result<IoSpec, String> {
    if name.is_empty() {
        return Err("a tensor has no name".into());
    }
    let datatype = config_data_type(data_type, name)?;
    check_dims(dims, &format!("tensor '{name}'"))?;
    if let Some(shape) = reshape {
        check_dims(shape, &format!("tensor '{name}' reshape"))?;
    }
    Ok(IoSpec {
        name: name.to_string(),
        datatype,
        dims: dims.to_vec(),
        reshape: reshape.map(<[i64]>::to_vec),
        optional,
    })
}

fn input_spec(input: &ModelInput) -> Result<IoSpec, String> {
    let reshape = input.reshape.as_ref().map(|r| r.shape.as_slice());
    io_spec(
        &input.name,
        input.data_type,
        &input.dims,
        reshape,
        input.optional,
    )
}

fn output_spec(output: &ModelOutput) -> Result<IoSpec, String> {
    let reshape = output.reshape.as_ref().map(|r| r.shape.as_slice());
    io_spec(&output.name, output.data_type, &output.dims, reshape, false)
}

fn unique_names(specs: &[IoSpec], what: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    match specs.iter().find(|s| !seen.insert(s.name.as_str())) {
        Some(dup) => Err(format!("{what} '{}' is declared twice", dup.name)),
        None => Ok(()),
    }
}

impl ModelSchema {
    /// Builds and validates the schema of a configuration; the error is a reason for the model.
    pub fn from_config(config: &ModelConfig) -> Result<ModelSchema, String> {
        if config.max_batch_size < 0 {
            return Err(format!(
                "max_batch_size {} is negative",
                config.max_batch_size
            ));
        }
        let inputs = config
            .input
            .iter()
            .map(input_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = config
            .output
            .iter()
            .map(output_spec)
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.is_empty() || outputs.is_empty() {
            return Err("the configuration declares no inputs or no outputs".into());
        }
        unique_names(&inputs, "input")?;
        unique_names(&outputs, "output")?;
        Ok(ModelSchema {
            model: config.name.clone(),
            max_batch_size: config.max_batch_size as usize,
            inputs,
            outputs,
        })
    }

    /// The shape a client sees for a tensor: the batch dimension (-1) first when batching.
    pub fn client_shape(&self, spec: &IoSpec) -> Vec<i64> {
        let batch = (self.max_batch_size > 0).then_some(-1);
        batch.into_iter().chain(spec.dims.iter().copied()).collect()
    }

    /// Checks a request against the schema and puts its inputs in the schema's order.
    pub fn check(&self, request: &mut InferRequest) -> Result<CheckedInputs> {
        let model = &self.model;
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for tensor in request.inputs.drain(..) {
            let Some(ix) = self.inputs.iter().position(|s| s.name == tensor.name) else {
                return Err(Error::invalid(format!(
                    "unexpected inference input '{}' for model '{model}'",
                    tensor.name
                )));
            };
            if slots[ix].is_some() {
                return Err(Error::invalid(format!(
                    "input '{}' for model '{model}' is given more than once",
                    tensor.name
                )));
            }
            slots[ix] = Some(tensor);
        }
        let missing: Vec<&str> = self
            .inputs
            .iter()
            .zip(&slots)
            .filter(|(spec, slot)| slot.is_none() && !spec.optional)
            .map(|(spec, _)| spec.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "model '{model}' is missing required input(s) '{}'",
                missing.join("', '")
            )));
        }
        let mut batch_size = None;
        for (spec, tensor) in self.inputs.iter().zip(&slots) {
            if let Some(tensor) = tensor {
                let batch = self.check_tensor(spec, tensor)?;
                if *batch_size.get_or_insert(batch) != batch {
                    return Err(Error::invalid(format!(
                        "input '{}' for model '{model}' has batch size {batch}, \
                         but other inputs have {}",
                        spec.name,
                        batch_size.unwrap_or_default()
                    )));
                }
            }
        }
        self.check_outputs(&request.outputs)?;
        Ok(CheckedInputs {
            batch_size: batch_size.unwrap_or(1),
            inputs: slots,
        })
    }

    fn check_outputs(&self, requested: &[String]) -> Result<()> {
        match requested
            .iter()
            .find(|name| !self.outputs.iter().any(|o| &o.name == *name))
        {
            Some(name) => Err(Error::invalid(format!(
                "unexpected inference output '{name}' for model '{}'",
                self.model
            ))),
            None => Ok(()),
        }
    }

    /// Checks one tensor's type, shape and contents; returns its batch size.
    fn check_tensor(&self, spec: &IoSpec, tensor: &Tensor) -> Result<usize> {
        let model = &self.model;
        if tensor.datatype != spec.datatype {
            return Err(Error::invalid(format!(
                "inference input '{}' data-type is '{}', but model '{model}' expects '{}'",
                spec.name, tensor.datatype, spec.datatype
            )));
        }
        let expected = self.client_shape(spec);
        let fits = tensor.shape.len() == expected.len()
            && tensor
                .shape
                .iter()
                .zip(&expected)
                .all(|(&got, &want)| got >= 0 && (want == -1 || got == want));
        if !fits {
            return Err(Error::invalid(format!(
                "unexpected shape for input '{}' for model '{model}'. Expected {}, got {}",
                spec.name,
                format_shape(&expected),
                format_shape(&tensor.shape)
            )));
        }
        let batch = if self.max_batch_size > 0 {
            let batch = tensor.shape[0] as usize;
            if batch == 0 || batch > self.max_batch_size {
                return Err(Error::invalid(format!(
                    "inference request batch-size must be between 1 and {} for '{model}', \
                     got {batch}",
                    self.max_batch_size
                )));
            }
            batch
        } else {
            1
        };
        tensor.check_contents(model)?;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests;
