//! The GPU executor's plan of the shipped models, without a GPU: lowering and the unsupported
//! operator report, shape inference across batch sizes, the host reference run of each plan
//! against tract (the CPU executor's engine), buffer reuse, memory-pool accounting with a fake
//! allocator, and what `switchyard repo check` says about KIND_GPU models.

#[path = "gpu_plan/fake_device.rs"]
mod fake_device;
mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use fake_device::FakeDevice;

use switchyard::executor::gpu_plan::onnx::{ElemType, HostTensor};
use switchyard::executor::gpu_plan::{
    BatchPlan, DeviceWeights, KernelKind, LowerError, MemoryPool, Program, Shapes, Storage,
    reference,
};
use tract_onnx::prelude::*;

fn shipped(model: &str, version: u32) -> PathBuf {
    support::root().join(format!("model_repository/{model}/{version}/model.onnx"))
}

fn program(model: &str) -> Program {
    Program::from_file(&shipped(model, 1)).unwrap_or_else(|e| panic!("{model}: {e}"))
}

// === lowering ===

#[test]
fn the_shipped_mlps_and_the_encoder_lower_completely() {
    for (model, version) in [("classifier", 1), ("classifier", 2), ("tabular_mlp", 1)] {
        let p = Program::from_file(&shipped(model, version)).unwrap();
        assert_eq!(
            p.summary().to_string(),
            "graph lowers to 9 steps (3 fused kernels for 5 element-wise steps, 3 GEMMs, \
             1 other kernels, 0 views)",
            "{model}"
        );
    }
    let encoder = program("encoder");
    assert_eq!(
        encoder.summary().to_string(),
        "graph lowers to 36 steps (8 fused kernels for 15 element-wise steps, 8 GEMMs, \
         9 other kernels, 4 views)"
    );
    // The Gelu spelled out with Div, Erf, Add, Mul, Mul runs in one kernel with its bias Add.
    let gelu = encoder
        .fusion
        .kernels
        .iter()
        .find(|k| k.steps.len() == 6)
        .expect("the Gelu group");
    let nodes: Vec<&str> = gelu
        .steps
        .iter()
        .map(|&s| encoder.plan.steps[s].node.as_str())
        .collect();
    assert_eq!(
        nodes,
        [
            "ff1_bias",
            "gelu_div",
            "gelu_erf",
            "gelu_add",
            "gelu_mul",
            "gelu_half"
        ]
    );
    // The encoder and its GPU twin are the same file.
    let twin = std::fs::read(shipped("encoder_gpu", 1)).unwrap();
    assert_eq!(std::fs::read(shipped("encoder", 1)).unwrap(), twin);
}

#[test]
fn a_model_with_unsupported_operators_is_refused_naming_every_one() {
    let e = Program::from_file(&shipped("digits_cnn", 1)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported operators: Conv (node conv1), MaxPool (node pool1), Conv (node conv2), \
         MaxPool (node pool2)"
    );
    let e = Program::from_file(&shipped("simple_string", 1)).unwrap_err();
    assert!(matches!(e, LowerError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("input INPUT0 (STRING)"), "{e}");
}

#[test]
fn every_kernel_runs_after_the_kernels_it_reads() {
    let p = program("encoder");
    let mut written: HashSet<usize> = p.plan.inputs.iter().map(|i| i.value).collect();
    for (k, kernel) in p.fusion.kernels.iter().enumerate() {
        for v in kernel.inputs(&p.plan) {
            assert!(
                written.contains(&v) || p.plan.constant(v).is_some(),
                "kernel {k} reads {} before it is written",
                p.plan.values[v].name
            );
        }
        written.insert(kernel.output(&p.plan));
    }
    assert_eq!(p.kernels.len(), p.fusion.count(KernelKind::Elementwise));
}

// === shapes ===

#[test]
fn encoder_shapes_scale_with_the_batch_and_only_the_batch() {
    let p = program("encoder");
    let base = Shapes::for_batch(&p.plan, 1).unwrap();
    for batch in [2, 7, 64] {
        let s = Shapes::for_batch(&p.plan, batch).unwrap();
        let out = p.plan.outputs[0];
        assert_eq!(s.values[out], vec![batch, 32, 64]);
        assert_eq!(s.bytes(&p.plan, out), batch * 32 * 64 * 4);
        let scores = p.plan.value_named("scores").unwrap();
        assert_eq!(s.values[scores], vec![batch, 2, 32, 32]);
        for v in 0..p.plan.values.len() {
            let constant = p.plan.constant(v).is_some();
            let expect = if constant {
                base.numel(v)
            } else {
                base.numel(v) * batch
            };
            assert_eq!(s.numel(v), expect, "{}", p.plan.values[v].name);
        }
    }
}

// === the reference run against tract ===

fn tract_run(path: &Path, input: Tensor) -> Vec<f32> {
    let fact = InferenceFact::dt_shape(input.datum_type(), input.shape().to_vec());
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, fact)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let out = model.run(tvec!(input.into())).unwrap();
    let plain = out[0].try_as_plain_ram().unwrap();
    plain.as_slice::<f32>().unwrap().to_vec()
}

fn host_floats(t: &HostTensor) -> Vec<f32> {
    t.bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn assert_close(model: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{model}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "{model}[{i}]: plan {g}, tract {w}"
        );
    }
}

fn seeded(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect()
}

#[test]
fn the_plans_of_the_mlps_compute_what_tract_computes() {
    for (model, version) in [("classifier", 1), ("classifier", 2), ("tabular_mlp", 1)] {
        let path = shipped(model, version);
        let p = Program::from_file(&path).unwrap();
        for batch in [1, 3] {
            let x: Vec<f32> = seeded(batch * 64, 7 + batch as u64)
                .iter()
                .map(|r| (r % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let input = HostTensor {
                dims: vec![batch, 64],
                dtype: ElemType::F32,
                bytes: x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            let plan = BatchPlan::new(&p, batch).unwrap();
            let got = reference::run(&p, &plan, &[input]).unwrap();
            let want = tract_run(&path, Tensor::from_shape(&[batch, 64], &x).unwrap());
            assert_close(model, &host_floats(&got[0]), &want);
        }
    }
}

#[test]
fn the_plan_of_the_encoder_computes_what_tract_computes() {
    let path = shipped("encoder", 1);
    let p = Program::from_file(&path).unwrap();
    for batch in [1, 3] {
        let ids: Vec<i64> = seeded(batch * 32, 11 + batch as u64)
            .iter()
            .map(|r| (r % 1000) as i64)
            .collect();
        let input = HostTensor {
            dims: vec![batch, 32],
            dtype: ElemType::I64,
            bytes: ids.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let plan = BatchPlan::new(&p, batch).unwrap();
        let got = reference::run(&p, &plan, &[input]).unwrap();
        let want = tract_run(&path, Tensor::from_shape(&[batch, 32], &ids).unwrap());
        assert_close("encoder", &host_floats(&got[0]), &want);
    }
}

// === buffers ===

#[test]
fn arena_buffers_are_reused_but_never_while_their_values_live() {
    let p = program("encoder");
    for batch in [1, 5, 64] {
        let plan = BatchPlan::new(&p, batch).unwrap();
        let b = &plan.buffers;
        let placed: Vec<(usize, usize, (usize, usize))> = (0..p.plan.values.len())
            .filter_map(|v| {
                let Storage::Arena { offset } = b.storage[v] else {
                    return None;
                };
                Some((offset, plan.shapes.bytes(&p.plan, v), b.live[v]?))
            })
            .collect();
        assert_eq!(placed.len(), b.materialized);
        for (i, x) in placed.iter().enumerate() {
            assert!(x.0 + x.1 <= b.arena_bytes);
            for y in &placed[i + 1..] {
                let lives_overlap = x.2.0 <= y.2.1 && y.2.0 <= x.2.1;
                let bytes_overlap = x.0 < y.0 + y.1 && y.0 < x.0 + x.1;
                assert!(
                    !(lives_overlap && bytes_overlap),
                    "batch {batch}: {x:?} and {y:?}"
                );
            }
        }
        let total: usize = placed.iter().map(|x| x.1).sum();
        assert!(
            b.arena_bytes < total,
            "batch {batch}: no reuse ({} of {total})",
            b.arena_bytes
        );
        assert!(b.buffers < b.materialized, "batch {batch}");
        // Views share their source's bytes; fused intermediates have none.
        let id = |name: &str| p.plan.value_named(name).unwrap();
        assert_eq!(b.storage[id("q4")], b.storage[id("q")]);
        assert_eq!(b.storage[id("g_erf")], Storage::Register);
        assert!(matches!(
            b.storage[id("tok_embedding")],
            Storage::Weight { .. }
        ));
        assert_eq!(b.storage[id("attention.scale")], Storage::None, "inlined");
    }
}

// === memory pool accounting ===

#[test]
fn a_batch_size_seen_before_allocates_nothing() {
    let device = FakeDevice::default();
    let p = Arc::new(program("encoder"));
    let mut pool = MemoryPool::new(device.clone(), p.clone());
    assert_eq!(
        device.counts().allocations,
        0,
        "nothing before the first batch"
    );
    pool.prepare(4).unwrap();
    assert_eq!(
        device.counts().allocations,
        2,
        "one arena, one staging block"
    );
    let arena_4 = BatchPlan::new(&p, 4).unwrap().buffers.arena_bytes;
    assert_eq!(device.counts().device_bytes, arena_4);
    for batch in [4, 2, 1, 4, 3] {
        pool.prepare(batch).unwrap();
    }
    assert_eq!(
        device.counts().allocations,
        2,
        "smaller or equal batches reuse the blocks"
    );
    pool.prepare(16).unwrap();
    assert_eq!(
        (device.counts().allocations, device.counts().releases),
        (4, 2),
        "grown once"
    );
    for batch in [16, 8, 1, 16] {
        let prepared = pool.prepare(batch).unwrap();
        assert_eq!(prepared.plan.batch, batch);
        assert!(prepared.arena.bytes >= prepared.plan.buffers.arena_bytes);
        assert!(prepared.staging.bytes >= prepared.plan.buffers.staging_bytes);
    }
    assert_eq!(device.counts().allocations, 4);
    // Reserved at warm-up for the largest batch, serving allocates nothing at all.
    let mut warm = MemoryPool::new(device.clone(), p);
    warm.reserve(64).unwrap();
    let after_warm_up = device.counts().allocations;
    for batch in (1..=64).rev() {
        warm.prepare(batch).unwrap();
    }
    assert_eq!(device.counts().allocations, after_warm_up);
    drop((pool, warm));
    assert_eq!(
        (device.counts().device_bytes, device.counts().pinned_bytes),
        (0, 0)
    );
}

#[test]
fn fifty_load_unload_cycles_return_memory_to_where_it_started() {
    let device = FakeDevice::default();
    let start = device.counts();
    for cycle in 0..50 {
        let p = Arc::new(Program::from_file(&shipped("encoder", 1)).unwrap());
        let weights = DeviceWeights::allocate(device.clone(), &p).unwrap();
        assert_eq!(weights.block().bytes, p.weights.bytes);
        assert_eq!(p.weights.image(&p.plan).len(), p.weights.bytes);
        let mut instances: Vec<_> = (0..2)
            .map(|_| MemoryPool::new(device.clone(), p.clone()))
            .collect();
        for (i, pool) in instances.iter_mut().enumerate() {
            for batch in [1, 8, 3 + i + cycle % 5, 8] {
                pool.prepare(batch).unwrap();
            }
        }
        assert!(device.counts().device_bytes > p.weights.bytes);
        drop(instances);
        drop(weights);
        let now = device.counts();
        assert_eq!(
            (now.device_bytes, now.pinned_bytes),
            (start.device_bytes, start.pinned_bytes),
            "cycle {cycle}"
        );
        assert_eq!(now.allocations, now.releases, "cycle {cycle}");
    }
    assert!(device.live.lock().unwrap().is_empty());
}

// === repo check ===

fn repo_with(models: &[(&str, &str, bool)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for &(name, from, gpu) in models {
        let src = support::root().join("model_repository").join(from);
        std::fs::create_dir_all(dir.path().join(name).join("1")).unwrap();
        std::fs::copy(
            src.join("1/model.onnx"),
            dir.path().join(name).join("1/model.onnx"),
        )
        .unwrap();
        let mut config = std::fs::read_to_string(src.join("config.pbtxt"))
            .unwrap()
            .replace(&format!("name: \"{from}\""), &format!("name: \"{name}\""));
        if gpu {
            config = config.replace("KIND_CPU", "KIND_GPU");
        }
        std::fs::write(dir.path().join(name).join("config.pbtxt"), config).unwrap();
    }
    dir
}

fn repo_check(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["repo", "check"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn repo_check_reports_whether_each_gpu_model_lowers() {
    let no_gpu = switchyard::executor::cuda::gpus().unavailable.is_some();
    let repo = repo_with(&[
        ("encoder", "encoder", false),
        ("encoder_gpu", "encoder_gpu", true),
    ]);
    let (ok, out) = repo_check(repo.path());
    assert!(out.contains("encoder version 1: READY"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("encoder_gpu version 1: "))
        .expect(&out);
    if no_gpu {
        assert!(line.contains("KIND_GPU needs a usable GPU"), "{line}");
        assert!(
            line.ends_with(
                "; graph lowers to 36 steps (8 fused kernels for 15 element-wise steps, 8 GEMMs, \
                 9 other kernels, 4 views)"
            ),
            "{line}"
        );
        assert!(
            line.starts_with("encoder_gpu version 1: NEEDS GPU: "),
            "{line}"
        );
    } else {
        assert!(line.starts_with("encoder_gpu version 1: READY "), "{line}");
    }
    assert!(
        ok,
        "a GPU model that only lacks a GPU does not fail the check:\n{out}"
    );

    let repo = repo_with(&[
        ("encoder_gpu", "encoder_gpu", true),
        ("digits_gpu", "digits_cnn", true),
    ]);
    let (ok, out) = repo_check(repo.path());
    let line = out
        .lines()
        .find(|l| l.starts_with("digits_gpu version 1: "))
        .expect(&out);
    assert!(
        line.starts_with("digits_gpu version 1: UNAVAILABLE: "),
        "{line}"
    );
    assert!(
        line.ends_with(
            "unsupported operators: Conv (node conv1), MaxPool (node pool1), \
             Conv (node conv2), MaxPool (node pool2)"
        ),
        "{line}"
    );
    assert!(
        !ok,
        "a GPU model whose graph does not lower fails the check:\n{out}"
    );
}

// === kernels compile ===

/// NVRTC is a compiler, usable without a GPU: every kernel the executor would load compiles
/// here for the architectures it meets. `tests/run_all.sh` installs NVRTC and sets
/// SWITCHYARD_REQUIRE_NVRTC=1, so there the test cannot skip.
#[test]
fn every_kernel_of_the_shipped_gpu_models_compiles_with_nvrtc() {
    use switchyard::executor::cuda::model::compile;
    use switchyard::executor::gpu_plan::library_src::{kernel_names, module_source};
    if !switchyard::executor::cuda::gpus().nvrtc {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_NVRTC").is_none(),
            "SWITCHYARD_REQUIRE_NVRTC is set but libnvrtc.so.13 cannot be opened"
        );
        eprintln!("SKIPPED: NVRTC (libnvrtc.so.13) is not installed here");
        return;
    }
    for model in ["tabular_mlp", "encoder", "classifier"] {
        let p = program(model);
        let source = module_source(&p);
        for arch in [(8, 0), (9, 0)] {
            let ptx = compile(&source, arch).unwrap_or_else(|e| panic!("{model} {arch:?}: {e}"));
            for name in kernel_names(&p) {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "{model}: kernel {name} missing from the PTX"
                );
            }
        }
    }
}
