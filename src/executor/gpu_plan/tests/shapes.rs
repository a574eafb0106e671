//! Shape inference at batch sizes, and its errors.

use super::*;

// === shape inference ===

#[test]
fn shapes_follow_the_batch_size() {
    let p = mlp().program().unwrap();
    for batch in [1, 5, 64] {
        let shapes = Shapes::for_batch(&p.plan, batch).unwrap();
        let y = p.plan.outputs[0];
        assert_eq!(shapes.values[y], vec![batch, 3]);
        assert_eq!(shapes.bytes(&p.plan, y), batch * 3 * 4);
        let Launch::Gemm(desc) = &shapes.launches[0] else {
            panic!()
        };
        assert_eq!((desc.m, desc.n, desc.k, desc.trans_b), (batch, 8, 4, true));
        assert_eq!(
            shapes.launches[5],
            Launch::Softmax(shape::Rows {
                outer: batch,
                len: 3,
                inner: 1
            })
        );
    }
}

#[test]
fn shape_errors_name_the_node_and_the_shapes() {
    let p = G::new()
        .input("x", F32, &["batch", "4"])
        .weight("w", &[5, 3])
        .node("MatMul", "proj", &["x", "w"], &["y"], vec![])
        .output("y")
        .program()
        .unwrap();
    let e = Shapes::for_batch(&p.plan, 2).unwrap_err();
    assert_eq!(e.node, "proj");
    assert!(
        e.to_string().contains("[2, 4]") && e.to_string().contains("[5, 3]"),
        "{e}"
    );
    let e = Shapes::infer(&p.plan, &[vec![2, 5]]).unwrap_err();
    assert_eq!(e.node, "x");
    assert!(e.message.contains("[batch, 4]"), "{e}");
}

#[test]
fn only_the_leading_dimension_may_be_variable_for_a_batch_size() {
    let p = G::new()
        .input("x", F32, &["batch", "seq"])
        .node("Relu", "relu", &["x"], &["y"], vec![])
        .output("y")
        .program()
        .unwrap();
    let e = Shapes::for_batch(&p.plan, 2).unwrap_err();
    assert!(e.to_string().contains("'seq'"), "{e}");
    let shapes = Shapes::infer(&p.plan, &[vec![2, 7]]).unwrap();
    assert_eq!(shapes.values[p.plan.outputs[0]], vec![2, 7]);
}

#[test]
fn views_copies_and_reductions_have_numpy_shapes() {
    let p = G::new()
        .input("x", F32, &["batch", "6", "4"])
        .input("ids", I64, &["batch", "3"])
        .i64s("shape", &[0, -1, 2])
        .i64s("axes0", &[0])
        .weight("table", &[10, 4])
        .node("Reshape", "r", &["x", "shape"], &["r"], vec![])
        .node("Flatten", "f", &["x"], &["f"], vec![a_i("axis", 2)])
        .node("Unsqueeze", "u", &["x", "axes0"], &["u"], vec![])
        .node("Squeeze", "s", &["u", "axes0"], &["s"], vec![])
        .node(
            "Transpose",
            "t",
            &["s"],
            &["t"],
            vec![a_ints("perm", &[2, 0, 1])],
        )
        .node("Concat", "c", &["x", "x"], &["c"], vec![a_i("axis", 1)])
        .node("Gather", "g", &["table", "ids"], &["g"], vec![])
        .node(
            "ReduceMean",
            "m",
            &["x"],
            &["m"],
            vec![a_ints("axes", &[-1]), a_i("keepdims", 0)],
        )
        .output("r")
        .output("f")
        .output("t")
        .output("c")
        .output("g")
        .output("m")
        .program()
        .unwrap();
    let s = Shapes::for_batch(&p.plan, 2).unwrap();
    let dims = |name: &str| s.values[p.plan.value_named(name).unwrap()].clone();
    assert_eq!(dims("r"), vec![2, 12, 2]);
    assert_eq!(dims("f"), vec![12, 4]);
    assert_eq!(dims("u"), vec![1, 2, 6, 4]);
    assert_eq!(dims("t"), vec![4, 2, 6]);
    assert_eq!(dims("c"), vec![2, 12, 4]);
    assert_eq!(dims("g"), vec![2, 3, 4]);
    assert_eq!(dims("m"), vec![2, 6]);
}
