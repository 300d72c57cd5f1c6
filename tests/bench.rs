//! `lejepa bench --profile`: one model step of lejepa and of the PyTorch reference recorded by
//! PyTorch's own operator profiler, so the two operator lists can be compared.

mod common;

use common::{CHILD_DEADLINE, OutputWithin};

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// An operator of a Chrome trace: its name, input dimensions and input types.
struct Op {
    name: String,
    dims: Vec<Vec<i64>>,
    types: Vec<String>,
}

fn operators(path: &Path) -> Vec<Op> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let trace: Value = serde_json::from_str(&text).unwrap();
    trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "cpu_op")
        .map(|e| Op {
            name: e["name"].as_str().unwrap().to_string(),
            dims: serde_json::from_value(e["args"]["Input Dims"].clone()).unwrap_or_default(),
            types: serde_json::from_value(e["args"]["Input type"].clone()).unwrap_or_default(),
        })
        .collect()
}

fn calls(ops: &[Op], name: &str) -> usize {
    ops.iter().filter(|op| op.name == name).count()
}

/// The first input's type of each call of `name`.
fn input_types(ops: &[Op], name: &str) -> Vec<String> {
    ops.iter().filter(|op| op.name == name).map(|op| op.types.first().cloned().unwrap_or_default()).collect()
}

/// Elements written by `aten::fill_` (zero-filling a buffer before adding into it, mostly).
fn filled_elements(ops: &[Op]) -> i64 {
    ops.iter().filter(|op| op.name == "aten::fill_").map(|op| op.dims.first().map_or(1, |d| d.iter().product())).sum()
}

/// FLOPs of the matrix products (`aten::mm`, `aten::addmm`) whose first matrix has the type
/// `kind` (`"float"`, `"c10::BFloat16"`), 2·m·k·n each, from their recorded shapes.
fn product_flops(ops: &[Op], kind: &str) -> i64 {
    ops.iter()
        .filter_map(|op| {
            let first = match op.name.as_str() {
                "aten::mm" => 0,
                "aten::addmm" => 1, // after the bias
                _ => return None,
            };
            let (a, b) = (&op.dims[first], &op.dims[first + 1]);
            (op.types.get(first)? == kind).then(|| 2 * a[0] * a[1] * b[1])
        })
        .sum()
}

const ATTENTION: &str = "aten::_scaled_dot_product_flash_attention_for_cpu";
const ATTENTION_BACKWARD: &str = "aten::_scaled_dot_product_flash_attention_for_cpu_backward";

#[test]
fn profiles_show_the_references_matrix_products_less_zero_filling_and_f32_attention() {
    if common::python_with("timm, torchvision", "the profile comparison").is_none() {
        return;
    }
    let dir = common::scratch("profile");
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--workloads", "model", "--model-archs", "vit-tiny-patch4-depth6", "--precisions", "f32,bf16"])
        .args(["--rounds", "1", "--reps", "1", "--steps", "1", "--batch-size", "8", "--threads", "1", "--profile"])
        .arg(&*dir)
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "lejepa bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let ours = operators(&dir.join("vit-tiny-patch4-depth6-f32-lejepa.json"));
    let theirs = operators(&dir.join("vit-tiny-patch4-depth6-f32-reference.json"));

    // The same network on both sides: the same matrix products (the blocks' and the projector's
    // linear layers for both crop sizes, forward and backward), less what our last block skips
    // (change 18): for every token but the class token, its query, projection and MLP rows, 10 of
    // the block's 12·width² multiply-adds a token, forward and the two backward products. The FLOPs
    // come from the recorded shapes of one profiled step each, so this also checks that our
    // recording covers the whole step, backward included.
    let (ours_flops, their_flops) = (product_flops(&ours, "float"), product_flops(&theirs, "float"));
    let (batch, width) = (8, 192);
    let other_tokens = 2 * batch * (7 * 7) + 4 * batch * (3 * 3); // 2 global crops of 28 px, 4 local of 12, patch 4
    let skipped = 3 * 2 * other_tokens * 10 * width * width;
    assert_eq!(their_flops - ours_flops, skipped, "product FLOPs, ours {ours_flops} against the reference's {their_flops}");
    // Attention: the reference's fused kernel runs for both crop sizes in every block; ours for the
    // global crops' 50 tokens in all blocks but the last, while the local crops' 10 tokens and the
    // last block's one query go through plain batched products (change 17): two in the forward and
    // four in the backward.
    let depth = 6;
    assert_eq!(calls(&theirs, ATTENTION_BACKWARD), 2 * depth, "the reference's attention backwards");
    assert_eq!(calls(&ours, ATTENTION_BACKWARD), depth - 1, "our fused attention backwards (global crops, last block aside)");
    assert_eq!(calls(&ours, "aten::bmm"), 6 * (depth + 1), "our plain attention products");
    // What the profile found (BENCHMARKS.md, change 13): splitting q, k, v with three `select`s
    // made each backward zero-fill a whole [3, B, heads, T, head_dim] gradient; with unbind, as
    // timm, ours fills no more than the reference.
    let (ours_filled, their_filled) = (filled_elements(&ours), filled_elements(&theirs));
    assert!(ours_filled <= their_filled + their_filled / 10, "zero-filled elements per step: ours {ours_filled}, reference {their_filled}");

    // bf16 autocast: the reference runs attention in bf16, whose backward is several times slower
    // than f32's on the CPU; ours runs attention alone in f32 (change 14) and every matrix product
    // of the linear layers still in bf16, so autocast is back on after attention.
    let ours = operators(&dir.join("vit-tiny-patch4-depth6-bf16-lejepa.json"));
    let theirs = operators(&dir.join("vit-tiny-patch4-depth6-bf16-reference.json"));
    for name in [ATTENTION, ATTENTION_BACKWARD] {
        assert!(input_types(&theirs, name).iter().all(|t| t == "c10::BFloat16"), "the reference's {name} is not in bf16");
        let types = input_types(&ours, name);
        assert!(!types.is_empty() && types.iter().all(|t| t == "float"), "our {name} under bf16 autocast: {types:?}");
    }
    let types = input_types(&ours, "aten::bmm");
    assert!(!types.is_empty() && types.iter().all(|t| t == "float"), "our plain attention under bf16 autocast: {types:?}");
    let bf16_products = |ops: &[Op]| input_types(ops, "aten::addmm").iter().filter(|t| *t == "c10::BFloat16").count();
    assert_eq!(bf16_products(&ours), calls(&ours, "aten::addmm"), "a linear layer of ours left bf16");
    let bf16 = "c10::BFloat16";
    // In f32 on both sides: SIGReg's projections only, which run outside autocast.
    assert_eq!(product_flops(&ours, "float"), product_flops(&theirs, "float"), "f32 product FLOPs under bf16 autocast");
    assert_eq!(product_flops(&theirs, bf16) - product_flops(&ours, bf16), skipped, "bf16 product FLOPs, ours against the reference's");
}

/// FLOPs of the paper step's matrix products that PyTorch's FlopCounterMode counts, for `vit-small-patch16`
/// at batch `b` with 2 global 224-px and 6 local 96-px views, worked out from the shapes by hand:
/// (the reference's, what lejepa's class-token-only last block leaves out). Forward: the patch
/// embedding (16×16×3 → 384 per patch), per block and token 12·384² multiply-adds in the linear layers,
/// per block attention's two T×T×384 products, timm's head (384 → 512), the projector
/// (512 → 2048 → 2048 → 64) and SIGReg's projection onto 1024 directions. Backward: twice the forward
/// for each layer (input and weight gradients), once for the patch embedding (the images need no
/// gradient) and for SIGReg's projection (its directions need none), and for attention 2.5 times
/// (FlopCounterMode's formula: the scores recomputed, then four products).
fn paper_vit_small_flops(b: f64) -> (f64, f64) {
    let (c, depth, directions) = (384.0, 12.0, 1024.0);
    let (mut linear, mut patch, mut attention, mut skipped_linear, mut skipped_attention) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (views, size) in [(2.0, 224.0), (6.0, 96.0)] {
        let patches: f64 = (size / 16.0) * (size / 16.0);
        let (tokens, images) = (patches + 1.0, views * b);
        patch += images * 2.0 * patches * 768.0 * c;
        linear += images * (depth * 24.0 * tokens * c * c + 2.0 * c * 512.0 + 2.0 * (512.0 * 2048.0 + 2048.0 * 2048.0 + 2048.0 * 64.0));
        attention += images * depth * 4.0 * tokens * tokens * c;
        // The last block: every token's keys and values, but queries, output projection and MLP for
        // the class token alone (10 of the 12·384² a token), and attention for its one query.
        skipped_linear += images * (tokens - 1.0) * 20.0 * c * c;
        skipped_attention += images * 4.0 * c * tokens * (tokens - 1.0);
    }
    let sigreg = 2.0 * 8.0 * b * 64.0 * directions;
    let reference = 3.0 * linear + 2.0 * patch + 3.5 * attention + 2.0 * sigreg;
    (reference, 3.0 * skipped_linear + 3.5 * skipped_attention)
}

#[test]
fn the_paper_row_times_vit_small_at_the_papers_views_on_both_sides() {
    let Some(python) = common::python_with("timm, torchvision", "the paper row") else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--workloads", "paper", "--paper-archs", "vit-small-patch16", "--paper-batch-size", "2"])
        .args(["--paper-reference", "eager", "--precisions", "f32", "--rounds", "1", "--reps", "1", "--steps", "1", "--json"])
        .arg("--python")
        .arg(&python)
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "lejepa bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one row (one arch, one precision, eager only): {rows:?}");
    let row = &rows[0];
    assert_eq!(row["workload"], "(e) paper step vit-small-patch16 f32, 2×224 + 6×96 px, batch 2");

    // The reference built the paper's network and views: its FLOPs are those counted from the shapes,
    // and ours (counted on the reference with our last block) less exactly what that block leaves out.
    let (expected, skipped) = paper_vit_small_flops(2.0);
    let (theirs, ours) = (row["reference_flops_per_step"].as_f64().unwrap(), row["ours_flops_per_step"].as_f64().unwrap());
    assert_eq!(theirs, expected, "the reference's FLOPs of a paper step");
    assert_eq!(theirs - ours, skipped, "FLOPs our class-token-only last block leaves out");
    // Both sides ran and were measured: a rate, a memory peak above the step's activations' floor
    // (2 images' 2 × 197 + 6 × 37 tokens' 384-wide inputs of 12 blocks, f32), a share of the GEMM peak.
    let floor = 2.0 * (2.0 * 197.0 + 6.0 * 37.0) * 384.0 * 4.0 * 12.0;
    for side in ["ours", "reference"] {
        let rate = row[side].as_array().unwrap()[0].as_f64().unwrap();
        assert!(rate > 0.0 && rate.is_finite(), "{side}: {rate} img/s");
        let bytes = row[format!("{side}_peak_bytes")].as_f64().unwrap();
        assert!(bytes > floor, "{side}: peak {bytes} bytes, below the activations' {floor}");
        let share = row[format!("{side}_peak_fraction")].as_f64().unwrap();
        assert!(share > 0.0 && share < 1.5, "{side}: {share} of the GEMM peak");
    }
}

#[test]
fn a_network_the_reference_cannot_build_is_refused_before_any_measurement() {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--workloads", "gemm,model", "--model-archs", "vit-small-patch16"])
        .output_within(CHILD_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 224-px network in the 28-px rows ran");
    assert!(stderr.contains("--model-archs") && stderr.contains("vit-small-patch16") && stderr.contains("resnet18-small"), "{stderr}");
    // Refused up front: no GEMM peak was timed (that alone takes seconds).
    assert!(!String::from_utf8_lossy(&out.stdout).contains("GEMM peak"), "measured before refusing");
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
}

#[test]
fn a_failing_reference_leaves_our_row_and_says_why() {
    // /bin/false stands for a reference that dies (out of memory, a compile error): exit status 1, no output.
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--workloads", "model", "--model-archs", "vit-tiny-patch4-depth6", "--precisions", "f32"])
        .args(["--rounds", "2", "--reps", "1", "--steps", "1", "--batch-size", "4", "--python", "/bin/false", "--json"])
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "lejepa bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let row = &report["rows"][0];
    assert_eq!(row["workload"], "(a) model step vit-tiny-patch4-depth6 f32");
    assert_eq!(row["ours"].as_array().map(Vec::len), Some(2), "our side's two rounds: {row}");
    assert!(row["reference"].is_null() && row["ratio"].is_null(), "{row}");
    assert!(row["note"].as_str().unwrap().contains("reference failed"), "{row}");
}
