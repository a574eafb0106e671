//! Shape inference over a plan for concrete input shapes (usually: the declared shapes with the
//! batch dimension set): every value's dimensions and bytes, and each step's launch dimensions.
//! Errors name the node and the shapes that do not fit.

use super::gemm::GemmDesc;
use super::onnx::Dim;
use super::plan::{Plan, Source, StepId, ValueId};

/// A plan sized for one set of input shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Shapes {
    /// Dimensions of every value (constants included).
    pub values: Vec<Vec<usize>>,
    /// What each step launches, by step.
    pub launches: Vec<Launch>,
}

/// The dimensions a step's kernel needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    Gemm(GemmDesc),
    /// One thread per output element; inputs broadcast into the output's shape.
    Elementwise {
        numel: usize,
    },
    Softmax(Rows),
    LayerNorm {
        rows: usize,
        cols: usize,
    },
    ReduceMean(Rows),
    Transpose {
        dims: Vec<usize>,
        perm: Vec<usize>,
    },
    /// `outer` blocks of each input's `extent * inner` contiguous elements, side by side.
    Concat {
        outer: usize,
        extents: Vec<usize>,
        inner: usize,
    },
    Gather {
        outer: usize,
        axis_len: usize,
        indices: usize,
        inner: usize,
    },
    /// No launch: the output shares its input's bytes.
    View,
}

/// A tensor seen as `[outer, len, inner]` around the axis (or axes) a kernel works along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

/// Why a plan cannot be sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    /// The node (or graph input) where the shapes stop fitting.
    pub node: String,
    pub message: String,
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}: {}", self.node, self.message)
    }
}

impl std::error::Error for ShapeError {}

/// Numpy's multidirectional broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        let pad = rank - s.len();
        if i < pad { 1 } else { s[i - pad] }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// An axis in `-rank..rank` as an index.
pub fn axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

pub(super) fn product(dims: &[usize]) -> usize {
    dims.iter().product()
}

impl Plan {
    /// The inputs' shapes at a batch size: a leading variable dimension becomes `batch`; any
    /// other variable dimension is an error naming it.
    pub fn input_shapes(&self, batch: usize) -> Result<Vec<Vec<usize>>, ShapeError> {
        self.inputs
            .iter()
            .map(|input| {
                input
                    .dims
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Dim::Fixed(n) => Ok(*n),
                        Dim::Var(_) if i == 0 => Ok(batch),
                        Dim::Var(name) => Err(ShapeError {
                            node: input.name.clone(),
                            message: format!(
                                "dimension {i} ('{name}') is variable; only the leading (batch) dimension may be"
                            ),
                        }),
                    })
                    .collect()
            })
            .collect()
    }
}

impl Shapes {
    /// Sizes the plan at a batch size.
    pub fn for_batch(plan: &Plan, batch: usize) -> Result<Shapes, ShapeError> {
        Shapes::infer(plan, &plan.input_shapes(batch)?)
    }

    /// Sizes the plan for concrete input shapes, in the order of `plan.inputs`.
    pub fn infer(plan: &Plan, inputs: &[Vec<usize>]) -> Result<Shapes, ShapeError> {
        let mut values: Vec<Option<Vec<usize>>> = vec![None; plan.values.len()];
        for (v, value) in plan.values.iter().enumerate() {
            if let Source::Constant(c) = &value.source {
                values[v] = Some(c.dims.clone());
            }
        }
        if inputs.len() != plan.inputs.len() {
            return Err(ShapeError {
                node: "(inputs)".into(),
                message: format!(
                    "{} input shapes for {} inputs",
                    inputs.len(),
                    plan.inputs.len()
                ),
            });
        }
        for (input, dims) in plan.inputs.iter().zip(inputs) {
            check_input(input, dims)?;
            values[input.value] = Some(dims.clone());
        }
        let mut launches = Vec::with_capacity(plan.steps.len());
        for (s, step) in plan.steps.iter().enumerate() {
            let ins: Vec<&[usize]> = step
                .inputs
                .iter()
                .map(|&v| values[v].as_deref().expect("inputs are sized before use"))
                .collect();
            let fail = |message: String| ShapeError {
                node: step.node.clone(),
                message: format!("{} {}", step.op.name(), message),
            };
            let (out, launch) = super::shape_rules::infer_step(step, &ins).map_err(fail)?;
            if out.len() != plan.values[step.output].rank {
                return Err(fail(format!(
                    "gives rank {} where {} was expected",
                    out.len(),
                    plan.values[step.output].rank
                )));
            }
            debug_assert_eq!(plan.producer(step.output), Some(s as StepId));
            values[step.output] = Some(out);
            launches.push(launch);
        }
        Ok(Shapes {
            values: values.into_iter().map(Option::unwrap_or_default).collect(),
            launches,
        })
    }

    /// Elements of a value.
    pub fn numel(&self, value: ValueId) -> usize {
        product(&self.values[value])
    }

    /// Bytes of a value.
    pub fn bytes(&self, plan: &Plan, value: ValueId) -> usize {
        self.numel(value) * plan.values[value].dtype.size()
    }
}

fn check_input(input: &super::plan::PlanInput, dims: &[usize]) -> Result<(), ShapeError> {
    let fits = dims.len() == input.dims.len()
        && input.dims.iter().zip(dims).all(|(d, &n)| match d {
            Dim::Fixed(f) => *f == n,
            Dim::Var(_) => true,
        });
    if fits {
        return Ok(());
    }
    let declared: Vec<String> = input
        .dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Var(name) => name.clone(),
        })
        .collect();
    Err(ShapeError {
        node: input.name.clone(),
        message: format!(
            "shape {dims:?} does not fit the declared [{}]",
            declared.join(", ")
        ),
    })
}
