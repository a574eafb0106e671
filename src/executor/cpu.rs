//! The CPU backend: ONNX models through tract. At load the configuration's shapes become the input
//! facts (the batch dimension and every -1 as named symbols), so one optimized plan serves every
//! batch size; each instance keeps its own run state and throws it away after any error.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::proto::inference::{ModelConfig, ModelInput, ModelOutput};
use crate::schema::{IoSpec, ModelSchema};
use crate::tensor::{self, DataType};

use super::{Backend, ExecError, Instance, LoadedModel, Phases};

mod convert;

/// Triton's batch size for configurations it completes from a model whose first dimension is
/// variable.
pub const AUTOCOMPLETE_MAX_BATCH_SIZE: i32 = 4;

/// ONNX on the CPU through tract.
#[derive(Debug, Default)]
pub struct OnnxCpu;

/// A loaded, optimized plan with the mapping between schema and graph.
struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    schema: Arc<ModelSchema>,
    /// For each graph input, the index of its schema input.
    input_order: Vec<usize>,
    /// For each schema output, the index of its graph output.
    output_order: Vec<usize>,
}

struct OnnxInstance {
    model: Arc<OnnxModel>,
    state: Option<TypedSimpleState>,
}

fn reason(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

fn graph_input_names(model: &InferenceModel) -> TractResult<Vec<String>> {
    Ok(model
        .input_outlets()?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect())
}

fn graph_output_names(model: &InferenceModel) -> TractResult<Vec<String>> {
    Ok(model
        .output_outlets()?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect())
}

impl Backend for OnnxCpu {
    fn name(&self) -> &'static str {
        "onnx-cpu"
    }

    fn complete_config(&self, model: &str, model_file: &Path) -> Result<ModelConfig, String> {
        let mut graph = tract_onnx::onnx()
            .model_for_path(model_file)
            .map_err(|e| format!("{}: {}", model_file.display(), reason(e)))?;
        // Output types are often left to inference; propagate what the inputs declare.
        graph
            .analyse(false)
            .map_err(|e| format!("{}: {}", model_file.display(), reason(e)))?;
        let inputs = graph.input_outlets().map_err(reason)?.to_vec();
        let outputs = graph.output_outlets().map_err(reason)?.to_vec();
        let input_names = graph_input_names(&graph).map_err(reason)?;
        let output_names = graph_output_names(&graph).map_err(reason)?;
        let facts = |outlets: &[OutletId]| -> Result<Vec<(DataType, Vec<i64>)>, String> {
            outlets
                .iter()
                .map(|o| {
                    graph
                        .outlet_fact(*o)
                        .map_err(reason)
                        .and_then(completed_fact)
                })
                .collect()
        };
        let input_facts = facts(&inputs)?;
        let output_facts = facts(&outputs)?;
        let batched = input_facts
            .iter()
            .chain(&output_facts)
            .all(|(_, dims)| dims.first() == Some(&-1));
        let strip = |dims: &Vec<i64>| {
            if batched {
                dims[1..].to_vec()
            } else {
                dims.clone()
            }
        };
        let cfg_type = |dt: DataType| convert::config_type(dt) as i32;
        Ok(ModelConfig {
            name: model.to_string(),
            platform: "onnxruntime_onnx".into(),
            backend: "onnxruntime".into(),
            max_batch_size: if batched {
                AUTOCOMPLETE_MAX_BATCH_SIZE
            } else {
                0
            },
            input: input_names
                .into_iter()
                .zip(&input_facts)
                .map(|(name, (dt, dims))| ModelInput {
                    name,
                    data_type: cfg_type(*dt),
                    dims: strip(dims),
                    ..Default::default()
                })
                .collect(),
            output: output_names
                .into_iter()
                .zip(&output_facts)
                .map(|(name, (dt, dims))| ModelOutput {
                    name,
                    data_type: cfg_type(*dt),
                    dims: strip(dims),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn load(
        &self,
        _config: &ModelConfig,
        schema: &Arc<ModelSchema>,
        model_file: &Path,
    ) -> Result<Arc<dyn LoadedModel>, String> {
        if !model_file.is_file() {
            return Err(format!("model file {} not found", model_file.display()));
        }
        let model = OnnxModel::load(schema, model_file)?;
        Ok(Arc::new(OnnxLoaded(Arc::new(model))))
    }
}

/// Data type and dimensions (-1 where not fixed) of a graph tensor, for auto-completion.
fn completed_fact(fact: &InferenceFact) -> Result<(DataType, Vec<i64>), String> {
    let dt = fact
        .datum_type
        .concretize()
        .ok_or("a graph tensor has no declared element type")?;
    let dt = convert::from_datum_type(dt)?;
    let dims = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.to_i64().ok()).unwrap_or(-1))
        .collect();
    Ok((dt, dims))
}

impl OnnxModel {
    fn load(schema: &Arc<ModelSchema>, model_file: &Path) -> Result<OnnxModel, String> {
        let mut graph = tract_onnx::onnx()
            .model_for_path(model_file)
            .map_err(|e| format!("{}: {}", model_file.display(), reason(e)))?;
        let input_names = graph_input_names(&graph).map_err(reason)?;
        let output_names = graph_output_names(&graph).map_err(reason)?;
        let input_order = match_names(&input_names, &schema.inputs, "input")?;
        let output_order = schema
            .outputs
            .iter()
            .map(|spec| {
                output_names
                    .iter()
                    .position(|n| *n == spec.name)
                    .ok_or_else(|| {
                        format!("output '{}' is not an output of the ONNX graph", spec.name)
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = graph.sym("N");
        for (graph_ix, &schema_ix) in input_order.iter().enumerate() {
            let spec = &schema.inputs[schema_ix];
            let fact = input_fact(&graph, spec, schema.max_batch_size > 0, &batch)?;
            graph.set_input_fact(graph_ix, fact).map_err(reason)?;
        }
        let typed = graph
            .into_optimized()
            .map_err(|e| format!("cannot optimize the graph: {}", reason(e)))?;
        check_output_types(&typed, schema, &output_order)?;
        let plan = typed.into_runnable().map_err(reason)?;
        Ok(OnnxModel {
            plan,
            schema: Arc::clone(schema),
            input_order,
            output_order,
        })
    }
}

/// For each graph tensor name, the index of the schema entry of that name; every schema entry must
/// be used exactly once.
fn match_names(graph: &[String], specs: &[IoSpec], what: &str) -> Result<Vec<usize>, String> {
    let order = graph
        .iter()
        .map(|name| {
            specs.iter().position(|s| s.name == *name).ok_or_else(|| {
                format!(
                    "the ONNX graph has {what} '{name}', which the configuration does not declare"
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(spec) = specs.iter().find(|s| !graph.contains(&s.name)) {
        return Err(format!(
            "{what} '{}' is not an {what} of the ONNX graph",
            spec.name
        ));
    }
    Ok(order)
}

fn input_fact(
    graph: &InferenceModel,
    spec: &IoSpec,
    batched: bool,
    batch: &Symbol,
) -> Result<InferenceFact, String> {
    let dims = spec.reshape.as_ref().unwrap_or(&spec.dims);
    let mut shape: TVec<TDim> = TVec::new();
    if batched {
        shape.push(batch.clone().into());
    }
    for (i, &d) in dims.iter().enumerate() {
        shape.push(if d < 0 {
            graph
                .sym(&format!(
                    "{}_{i}",
                    spec.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                ))
                .into()
        } else {
            (d as usize).to_dim()
        });
    }
    Ok(InferenceFact::dt_shape(
        convert::datum_type(spec.datatype),
        shape,
    ))
}

fn check_output_types(
    typed: &TypedModel,
    schema: &ModelSchema,
    output_order: &[usize],
) -> Result<(), String> {
    let outlets = typed.output_outlets().map_err(reason)?;
    for (spec, &ix) in schema.outputs.iter().zip(output_order) {
        let fact = typed.outlet_fact(outlets[ix]).map_err(reason)?;
        let got = convert::from_datum_type(fact.datum_type)?;
        if got != spec.datatype {
            return Err(format!(
                "output '{}' is {} in the ONNX graph but {} in the configuration",
                spec.name,
                got.config_name(),
                spec.datatype.config_name()
            ));
        }
    }
    Ok(())
}

/// The shared handle the runner keeps; instances hold clones of the same model.
struct OnnxLoaded(Arc<OnnxModel>);

impl LoadedModel for OnnxLoaded {
    fn instance(&self) -> Result<Box<dyn Instance>, String> {
        Ok(Box::new(OnnxInstance {
            model: Arc::clone(&self.0),
            state: None,
        }))
    }
}

impl Instance for OnnxInstance {
    fn execute(
        &mut self,
        mut inputs: Vec<Option<tensor::Tensor>>,
        phases: &mut Phases,
    ) -> Result<Vec<tensor::Tensor>, ExecError> {
        let started = Instant::now();
        let model = Arc::clone(&self.model);
        let mut values: TVec<TValue> = TVec::with_capacity(model.input_order.len());
        for &schema_ix in &model.input_order {
            let spec = &model.schema.inputs[schema_ix];
            let tensor = inputs[schema_ix].take().ok_or_else(|| {
                ExecError::Input(format!(
                    "input '{}' is required by the ONNX graph",
                    spec.name
                ))
            })?;
            let value = convert::to_tract(&tensor, spec, model.schema.max_batch_size > 0)
                .map_err(ExecError::Input)?;
            values.push(value.into());
        }
        let ran = Instant::now();
        phases.input += ran - started;
        let outputs = self.run(values);
        let converted = Instant::now();
        phases.infer += converted - ran;
        let outputs = outputs?;
        let result = model
            .schema
            .outputs
            .iter()
            .zip(&model.output_order)
            .map(|(spec, &ix)| {
                convert::from_tract(&outputs[ix], spec, model.schema.max_batch_size > 0)
                    .map_err(ExecError::Failed)
            })
            .collect();
        phases.output += converted.elapsed();
        result
    }
}

impl OnnxInstance {
    /// Runs the plan on the reusable state; a failed run throws the state away, since it stays
    /// bound to the failed shapes.
    fn run(&mut self, values: TVec<TValue>) -> Result<TVec<TValue>, ExecError> {
        let state = match &mut self.state {
            Some(state) => state,
            None => self.state.insert(
                TypedSimpleState::new(&self.model.plan)
                    .map_err(|e| ExecError::Failed(reason(e)))?,
            ),
        };
        state.run(values).map_err(|e| {
            self.state = None;
            ExecError::Failed(reason(e))
        })
    }
}
