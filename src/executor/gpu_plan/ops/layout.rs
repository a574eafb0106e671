//! Operators that move or reinterpret data: Transpose, Concat, Gather, and the views (Reshape,
//! Flatten, Squeeze, Unsqueeze, Identity) that keep the bytes where they are.

use super::{Lowering, Node, invalid, unsupported};
use crate::executor::gpu_plan::lower::Known;
use crate::executor::gpu_plan::onnx::{ElemType, attr, attr_int, attr_ints};
use crate::executor::gpu_plan::plan::{Op, View};

impl Node<'_> {
    pub(super) fn transpose(&self) -> Lowering {
        self.arity(1, 1)?;
        let rank = self.rank(0)?;
        let perm: Vec<usize> = match attr_ints(self.node, "perm") {
            None => (0..rank).rev().collect(),
            Some(p) => p.iter().map(|&d| d.max(0) as usize).collect(),
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..rank).collect::<Vec<_>>() {
            return invalid(format!(
                "perm {perm:?} is not a permutation of {rank} dimensions"
            ));
        }
        self.step(
            Op::Transpose { perm },
            vec![self.input(0)],
            self.dtype(0)?,
            rank,
        )
    }

    pub(super) fn concat(&self) -> Lowering {
        self.arity(1, usize::MAX)?;
        let t = self.dtype(0)?;
        for i in 1..self.ops.ids.len() {
            if self.dtype(i)? != t {
                return invalid("inputs of different types");
            }
        }
        let Some(axis) = attr(self.node, "axis").map(|a| a.i) else {
            return invalid("no axis");
        };
        let inputs = (0..self.ops.ids.len()).map(|i| self.input(i)).collect();
        self.step(Op::Concat { axis }, inputs, t, self.rank(0)?)
    }

    pub(super) fn gather(&self) -> Lowering {
        self.arity(2, 2)?;
        self.require(1, &[ElemType::I64, ElemType::I32])?;
        let rank = self.rank(0)? + self.rank(1)?;
        if rank == self.rank(1)? {
            return invalid("Gather from a scalar");
        }
        let op = Op::Gather {
            axis: attr_int(self.node, "axis", 0),
        };
        self.step(
            op,
            vec![self.input(0), self.input(1)],
            self.dtype(0)?,
            rank - 1,
        )
    }

    pub(super) fn view(&self, view: View, rank: usize) -> Lowering {
        self.step(Op::View(view), vec![self.input(0)], self.dtype(0)?, rank)
    }

    pub(super) fn reshape(&self, known: &dyn Known) -> Lowering {
        self.arity(2, 2)?;
        let Some(shape) = known.ints(&self.node.input[1]) else {
            return unsupported("target shape computed at run time");
        };
        let allow_zero = attr_int(self.node, "allowzero", 0) != 0;
        let rank = shape.len();
        self.view(View::Reshape { shape, allow_zero }, rank)
    }

    pub(super) fn flatten(&self) -> Lowering {
        self.arity(1, 1)?;
        self.rank(0)?;
        self.view(
            View::Flatten {
                axis: attr_int(self.node, "axis", 1),
            },
            2,
        )
    }

    pub(super) fn squeeze(&self, known: &dyn Known, opset: i64) -> Lowering {
        self.arity(1, 2)?;
        let Some(axes) = self.axes(known, opset, 13)? else {
            return unsupported("no axes (the result's rank would depend on the batch size)");
        };
        let rank = self.rank(0)?;
        if axes.len() > rank {
            return invalid(format!("axes {axes:?} for rank {rank}"));
        }
        self.view(View::Squeeze { axes: axes.clone() }, rank - axes.len())
    }

    pub(super) fn unsqueeze(&self, known: &dyn Known, opset: i64) -> Lowering {
        self.arity(1, 2)?;
        let Some(axes) = self.axes(known, opset, 13)? else {
            return invalid("no axes");
        };
        let rank = self.rank(0)? + axes.len();
        self.view(View::Unsqueeze { axes }, rank)
    }
}
