//! Fusion decisions and generated kernel source.

use super::*;

// === fusion ===

#[test]
fn gemm_bias_and_relu_fuse_into_one_elementwise_kernel() {
    let p = mlp().program().unwrap();
    let kernels: Vec<(KernelKind, Vec<String>)> = p
        .fusion
        .kernels
        .iter()
        .map(|k| (k.kind, step_names(&p, k)))
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        kernels,
        vec![
            (KernelKind::Gemm, s(&["fc1:Gemm"])),
            (KernelKind::Elementwise, s(&["fc1:Add", "relu1:Relu"])),
            (KernelKind::Gemm, s(&["fc2:Gemm"])),
            (KernelKind::Elementwise, s(&["fc2:Add"])),
            (KernelKind::Softmax, s(&["softmax:Softmax"])),
        ]
    );
    // The bias sum lives in registers only.
    let batch = BatchPlan::new(&p, 4).unwrap();
    assert_eq!(
        batch.buffers.storage[p.plan.value_named("h").unwrap()],
        Storage::Register
    );
}

#[test]
fn a_value_read_twice_outside_one_group_is_not_fused_away() {
    // s = x + b is read by Relu and by Mul, which end in different groups (both are outputs).
    let p = G::new()
        .input("x", F32, &["batch", "4"])
        .weight("b", &[4])
        .node("Add", "add", &["x", "b"], &["s"], vec![])
        .node("Relu", "relu", &["s"], &["y1"], vec![])
        .node("Mul", "mul", &["s", "b"], &["y2"], vec![])
        .output("y1")
        .output("y2")
        .program()
        .unwrap();
    let groups: Vec<Vec<String>> = p.fusion.kernels.iter().map(|k| step_names(&p, k)).collect();
    assert_eq!(
        groups,
        vec![vec!["add:Add"], vec!["relu:Relu"], vec!["mul:Mul"]]
    );
    // A graph output is written even when its only reader could fuse it.
    let p = G::new()
        .input("x", F32, &["batch", "4"])
        .node("Sigmoid", "sig", &["x"], &["a"], vec![])
        .node("Tanh", "tanh", &["a"], &["b"], vec![])
        .output("a")
        .output("b")
        .program()
        .unwrap();
    assert_eq!(p.fusion.kernels.len(), 2);
}

#[test]
fn a_small_dag_fuses_when_every_reader_is_inside() {
    // Exact Gelu spelled out: h is read twice inside the group, t twice by one step.
    let p = G::new()
        .input("x", F32, &["batch", "4"])
        .f32s("sqrt2", &[], &[std::f32::consts::SQRT_2])
        .f32s("one", &[], &[1.0])
        .f32s("half", &[], &[0.5])
        .node("Relu", "pre", &["x"], &["h"], vec![])
        .node("Div", "div", &["h", "sqrt2"], &["d"], vec![])
        .node("Erf", "erf", &["d"], &["e"], vec![])
        .node("Add", "add", &["e", "one"], &["a"], vec![])
        .node("Mul", "mul", &["h", "a"], &["m"], vec![])
        .node("Mul", "half", &["m", "half"], &["t"], vec![])
        .node("Mul", "square", &["t", "t"], &["y"], vec![])
        .output("y")
        .program()
        .unwrap();
    assert_eq!(p.fusion.kernels.len(), 1);
    let k = &p.fusion.kernels[0];
    assert_eq!(k.steps, (0..7).collect::<Vec<_>>());
    assert_eq!(k.inputs(&p.plan), vec![p.plan.value_named("x").unwrap()]);
    assert!(
        p.weights.entries.is_empty(),
        "scalars are compiled in, not uploaded"
    );
}

// === kernel source ===

#[test]
fn each_fused_group_becomes_one_kernel_with_its_ops_in_order() {
    let p = mlp().program().unwrap();
    assert_eq!(p.kernels.len(), 2);
    let k = &p.kernels[0];
    assert_eq!(k.name, "fused_1");
    let src = &k.source;
    assert_eq!(src.matches("__global__").count(), 1, "{src}");
    assert!(
        src.contains("extern \"C\" __global__ void fused_1("),
        "{src}"
    );
    assert!(
        src.contains("const float* __restrict__ in0")
            && src.contains("const float* __restrict__ in1"),
        "{src}"
    );
    assert!(src.contains("float* __restrict__ out"), "{src}");
    // Broadcasting index math: coordinates from the output dims, offsets through strides.
    assert!(
        src.contains("rest % meta.dims[1]") && src.contains("off1 += c * meta.strides[1][0]"),
        "{src}"
    );
    let add = src.find("t0 = v0 + v1; // Add (node fc1)").expect(src);
    let relu = src
        .find("t1 = t0 < (float)0 ? (float)0 : t0; // Relu (node relu1)")
        .expect(src);
    assert!(add < relu);
    assert!(src.contains("out[i] = t1;"), "{src}");
    assert_eq!(
        p.kernels,
        mlp().program().unwrap().kernels,
        "generation is deterministic"
    );
}

#[test]
fn scalars_are_literals_and_math_uses_single_precision() {
    let p = G::new()
        .input("x", F32, &["batch", "4"])
        .f32s("c", &[], &[0.25])
        .node("Mul", "scale", &["x", "c"], &["m"], vec![])
        .node("Gelu", "gelu", &["m"], &["y"], vec![])
        .output("y")
        .program()
        .unwrap();
    let src = &p.kernels[0].source;
    assert!(src.contains("v0 * 0.25f"), "{src}");
    assert!(src.contains("erff(t0 * 0.70710677f)"), "{src}");
    assert!(!src.contains("in1"), "{src}");
}

#[test]
fn launch_meta_gives_broadcast_strides_per_batch() {
    let p = mlp().program().unwrap();
    let shapes = Shapes::for_batch(&p.plan, 4).unwrap();
    let meta = elementwise_meta(&p.plan, &p.fusion.kernels[1], &shapes);
    assert_eq!(meta.numel, 32);
    assert_eq!(meta.dims, vec![4, 8]);
    assert_eq!(meta.strides, vec![vec![8, 1], vec![0, 1]]);
    assert_eq!(meta.words(), vec![4, 8, 8, 1, 0, 1]);
    assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 5]), vec![0, 1, 0]);
    assert_eq!(broadcast_strides(&[], &[1]), vec![0]);
}
