//! Shape rules, one per operation: the output dimensions of a step from its inputs' and the
//! launch dimensions of its kernel, or a message saying which shapes do not fit.

use super::gemm::{self, GemmDesc};
use super::plan::{Op, Step, View};
use super::shape::{Launch, Rows, axis, broadcast, product};

type Inferred = Result<(Vec<usize>, Launch), String>;

pub(super) fn infer_step(step: &Step, ins: &[&[usize]]) -> Inferred {
    match &step.op {
        Op::Gemm {
            trans_a,
            trans_b,
            alpha,
        } => infer_gemm(ins, *trans_a, *trans_b, *alpha),
        Op::MatMul => {
            let (desc, out) = gemm::matmul(ins[0], ins[1])?;
            Ok((out, Launch::Gemm(desc)))
        }
        Op::Elementwise(_) => {
            let out = ins[1..].iter().try_fold(ins[0].to_vec(), |acc, s| {
                broadcast(&acc, s).ok_or_else(|| format!("cannot broadcast {ins:?}"))
            })?;
            let numel = product(&out);
            Ok((out, Launch::Elementwise { numel }))
        }
        Op::Softmax { axis, coerce_2d } => infer_softmax(ins[0], *axis, *coerce_2d),
        Op::LayerNorm { axis, .. } => infer_layer_norm(ins, *axis),
        Op::ReduceMean { axes, keepdims } => infer_reduce(ins[0], axes, *keepdims),
        Op::Transpose { perm } => {
            let d = ins[0];
            if perm.len() != d.len() {
                return Err(format!("perm {perm:?} for shape {d:?}"));
            }
            let out = perm.iter().map(|&p| d[p]).collect();
            Ok((
                out,
                Launch::Transpose {
                    dims: d.to_vec(),
                    perm: perm.clone(),
                },
            ))
        }
        Op::Concat { axis } => infer_concat(ins, *axis),
        Op::Gather { axis } => infer_gather(ins[0], ins[1], *axis),
        Op::View(view) => Ok((infer_view(view, ins[0])?, Launch::View)),
    }
}

fn infer_softmax(d: &[usize], axis: i64, coerce_2d: bool) -> Inferred {
    let a = self::axis(axis, d.len()).ok_or_else(|| format!("axis {axis} of {d:?}"))?;
    let rows = if coerce_2d {
        Rows {
            outer: product(&d[..a]),
            len: product(&d[a..]),
            inner: 1,
        }
    } else {
        Rows {
            outer: product(&d[..a]),
            len: d[a],
            inner: product(&d[a + 1..]),
        }
    };
    Ok((d.to_vec(), Launch::Softmax(rows)))
}

fn infer_gather(data: &[usize], idx: &[usize], axis: i64) -> Inferred {
    let a = self::axis(axis, data.len()).ok_or_else(|| format!("axis {axis} of {data:?}"))?;
    let out = [&data[..a], idx, &data[a + 1..]].concat();
    let launch = Launch::Gather {
        outer: product(&data[..a]),
        axis_len: data[a],
        indices: product(idx),
        inner: product(&data[a + 1..]),
    };
    Ok((out, launch))
}

fn infer_gemm(ins: &[&[usize]], ta: bool, tb: bool, alpha: f32) -> Inferred {
    let (a, b) = (ins[0], ins[1]);
    let (m, k) = if ta { (a[1], a[0]) } else { (a[0], a[1]) };
    let (kb, n) = if tb { (b[1], b[0]) } else { (b[0], b[1]) };
    if k != kb {
        return Err(format!(
            "of A {a:?} (transA={}) by B {b:?} (transB={}): inner dimensions {k} and {kb} differ",
            ta as u8, tb as u8
        ));
    }
    Ok((
        vec![m, n],
        Launch::Gemm(GemmDesc::new(m, n, k, ta, tb, alpha)),
    ))
}

fn infer_layer_norm(ins: &[&[usize]], axis: i64) -> Inferred {
    let x = ins[0];
    let a = self::axis(axis, x.len()).ok_or_else(|| format!("axis {axis} of {x:?}"))?;
    let normalized = &x[a..];
    for param in &ins[1..] {
        if broadcast(param, normalized).as_deref() != Some(normalized) {
            return Err(format!(
                "scale/bias {param:?} does not fit the normalized dimensions {normalized:?} of {x:?}"
            ));
        }
    }
    let launch = Launch::LayerNorm {
        rows: product(&x[..a]),
        cols: product(normalized),
    };
    Ok((x.to_vec(), launch))
}

fn infer_reduce(d: &[usize], axes: &[i64], keepdims: bool) -> Inferred {
    let mut list: Vec<usize> = if axes.is_empty() {
        (0..d.len()).collect()
    } else {
        axes.iter()
            .map(|&a| axis(a, d.len()).ok_or_else(|| format!("axis {a} of {d:?}")))
            .collect::<Result<_, _>>()?
    };
    list.sort_unstable();
    list.dedup();
    let (first, last) = (list[0], *list.last().unwrap_or(&0));
    if last - first + 1 != list.len() {
        return Err(format!(
            "over axes {axes:?} of {d:?}: only adjacent axes are supported"
        ));
    }
    let rows = Rows {
        outer: product(&d[..first]),
        len: product(&d[first..=last]),
        inner: product(&d[last + 1..]),
    };
    let out = d
        .iter()
        .enumerate()
        .filter_map(|(i, &n)| match (list.contains(&i), keepdims) {
            (false, _) => Some(n),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    Ok((out, Launch::ReduceMean(rows)))
}

fn infer_concat(ins: &[&[usize]], axis: i64) -> Inferred {
    let first = ins[0];
    let a = self::axis(axis, first.len()).ok_or_else(|| format!("axis {axis} of {first:?}"))?;
    let mut out = first.to_vec();
    out[a] = 0;
    for s in ins {
        let fits = s.len() == first.len()
            && s.iter()
                .zip(first)
                .enumerate()
                .all(|(i, (x, y))| i == a || x == y);
        if !fits {
            return Err(format!(
                "along axis {axis} of {ins:?}: the other dimensions differ"
            ));
        }
        out[a] += s[a];
    }
    let launch = Launch::Concat {
        outer: product(&first[..a]),
        extents: ins.iter().map(|s| s[a]).collect(),
        inner: product(&first[a + 1..]),
    };
    Ok((out, launch))
}

fn infer_view(view: &View, d: &[usize]) -> Result<Vec<usize>, String> {
    match view {
        View::Identity => Ok(d.to_vec()),
        View::Flatten { axis } => {
            let a = if *axis == d.len() as i64 {
                d.len()
            } else {
                self::axis(*axis, d.len()).ok_or_else(|| format!("axis {axis} of {d:?}"))?
            };
            Ok(vec![product(&d[..a]), product(&d[a..])])
        }
        View::Reshape { shape, allow_zero } => reshape(d, shape, *allow_zero),
        View::Squeeze { axes } => {
            let list = axes
                .iter()
                .map(|&a| axis(a, d.len()).filter(|&i| d[i] == 1))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("axes {axes:?} of {d:?} are not all of size 1"))?;
            Ok(d.iter()
                .enumerate()
                .filter(|(i, _)| !list.contains(i))
                .map(|(_, &n)| n)
                .collect())
        }
        View::Unsqueeze { axes } => {
            let rank = d.len() + axes.len();
            let list = axes
                .iter()
                .map(|&a| axis(a, rank))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("axes {axes:?} for output rank {rank}"))?;
            let mut rest = d.iter();
            Ok((0..rank)
                .map(|i| {
                    if list.contains(&i) {
                        1
                    } else {
                        *rest.next().unwrap_or(&1)
                    }
                })
                .collect())
        }
    }
}

fn reshape(d: &[usize], shape: &[i64], allow_zero: bool) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(shape.len());
    let mut infer_at = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allow_zero => {
                out.push(*d.get(i).ok_or_else(|| format!("of {d:?} to {shape:?}"))?)
            }
            s if s >= 0 => out.push(s as usize),
            _ => return Err(format!("of {d:?} to {shape:?}: bad target")),
        }
    }
    let total = product(d);
    if let Some(i) = infer_at {
        let known = product(&out);
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("of {d:?} ({total} elements) to {shape:?}"));
        }
        out[i] = total / known;
    }
    if product(&out) != total {
        return Err(format!(
            "of {d:?} ({total} elements) to {shape:?} ({} elements)",
            product(&out)
        ));
    }
    Ok(out)
}
