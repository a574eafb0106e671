//! Warm-up before a version serves: the `model_warmup` entries of its configuration, or one
//! synthetic request when there are none. Runs on the loading (blocking) thread, through the same
//! path real requests take, so a version that cannot answer never becomes ready.

use std::path::Path;
use std::sync::Arc;

use tracing::warn;

use crate::proto::inference::ModelConfig;
use crate::proto::inference::model_warmup::input::InputDataType;
use crate::schema::{ModelSchema, config_data_type};
use crate::tensor::{DataType, InferRequest, Tensor, element_count, push_bytes_element};

use crate::executor::{ExecError, Instance, LoadedModel, Phases};

/// Largest warm-up tensor accepted, in bytes; a configuration asking for more is refused.
const MAX_WARMUP_BYTES: usize = 256 << 20;

/// Runs the configured warm-up (a failure fails the load), or one synthetic request (a failure is
/// only logged: synthetic zeros are not always valid input for a model), on a fresh instance of
/// the loaded model, before the version's scheduler exists: warm-up is not the model's traffic, so
/// it never counts in statistics, the circuit breaker or the rate limit.
pub fn run(
    config: &ModelConfig,
    model_file: &Path,
    schema: &ModelSchema,
    model: &Arc<dyn LoadedModel>,
) -> Result<(), String> {
    let mut instance = model.instance()?;
    if config.model_warmup.is_empty() {
        if let Err(e) = execute(instance.as_mut(), schema, synthetic(schema)) {
            warn!(model = %schema.model, error = %e, "synthetic warm-up request failed");
        }
        return Ok(());
    }
    let version_dir = model_file.parent().unwrap_or(Path::new("."));
    for entry in &config.model_warmup {
        let request = configured(entry, schema, version_dir)
            .map_err(|e| format!("warm-up '{}': {e}", entry.name))?;
        for _ in 0..entry.count.max(1) {
            execute(instance.as_mut(), schema, request.clone())
                .map_err(|e| format!("warm-up '{}' failed: {e}", entry.name))?;
        }
    }
    Ok(())
}

/// Checks and runs one request on the instance, containing a panic.
fn execute(
    instance: &mut dyn Instance,
    schema: &ModelSchema,
    mut request: InferRequest,
) -> Result<(), String> {
    let checked = schema.check(&mut request).map_err(|e| e.to_string())?;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        instance.execute(checked.inputs, &mut Phases::default())
    }));
    match run {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(ExecError::Input(e) | ExecError::Failed(e))) => Err(e),
        Err(_) => Err("the model panicked".into()),
    }
}

/// One request of batch 1 (when batching) with every variable dimension 1, filled with zeros
/// (BYTES elements "0").
fn synthetic(schema: &ModelSchema) -> InferRequest {
    let inputs = schema
        .inputs
        .iter()
        .filter(|spec| !spec.optional)
        .map(|spec| {
            let shape: Vec<i64> = schema
                .client_shape(spec)
                .iter()
                .map(|&d| d.max(1))
                .collect();
            let count = element_count(&shape).unwrap_or(0);
            filled(&spec.name, spec.datatype, shape, count, false)
        })
        .collect();
    InferRequest {
        model_name: schema.model.clone(),
        id: "warmup".into(),
        inputs,
        ..Default::default()
    }
}

fn configured(
    entry: &crate::proto::inference::ModelWarmup,
    schema: &ModelSchema,
    version_dir: &Path,
) -> Result<InferRequest, String> {
    let mut inputs = Vec::new();
    for (name, input) in &entry.inputs {
        let datatype = config_data_type(input.data_type, name)?;
        let batch = (schema.max_batch_size > 0).then_some(i64::from(entry.batch_size.max(1)));
        let shape: Vec<i64> = batch
            .into_iter()
            .chain(input.dims.iter().copied())
            .collect();
        let count = element_count(&shape).ok_or_else(|| format!("input '{name}': invalid dims"))?;
        if count.saturating_mul(datatype.element_size().unwrap_or(8)) > MAX_WARMUP_BYTES {
            return Err(format!(
                "input '{name}' is larger than {MAX_WARMUP_BYTES} bytes"
            ));
        }
        let tensor = match &input.input_data_type {
            Some(InputDataType::InputDataFile(file)) => {
                let path = version_dir.join("warmup").join(file);
                let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Tensor {
                    name: name.clone(),
                    datatype,
                    shape,
                    data: data.into(),
                }
            }
            Some(InputDataType::RandomData(true)) => filled(name, datatype, shape, count, true),
            _ => filled(name, datatype, shape, count, false),
        };
        inputs.push(tensor);
    }
    Ok(InferRequest {
        model_name: schema.model.clone(),
        id: format!("warmup:{}", entry.name),
        inputs,
        ..Default::default()
    })
}

/// A tensor of zeros, or of small pseudo-random values (deterministic, no RNG state needed).
fn filled(name: &str, datatype: DataType, shape: Vec<i64>, count: usize, random: bool) -> Tensor {
    let value = |i: usize| {
        if random {
            ((i * 2_654_435_761) % 97) as u8 % 7
        } else {
            0
        }
    };
    let data = match datatype.element_size() {
        Some(size) => {
            let mut data = vec![0u8; count * size];
            if random {
                // Small values in each element's lowest byte: small integers, tiny floats.
                for i in 0..count {
                    data[i * size] = value(i);
                }
            }
            data
        }
        None => {
            let mut data = Vec::new();
            for i in 0..count {
                push_bytes_element(&mut data, value(i).to_string().as_bytes());
            }
            data
        }
    };
    Tensor {
        name: name.to_string(),
        datatype,
        shape,
        data: data.into(),
    }
}
