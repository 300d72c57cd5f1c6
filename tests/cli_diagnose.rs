//! `lejepa diagnose` end to end: the binary on generated .npy files, checked against values
//! known independently (the collapsed-batch constant, the numpy fixture, the rank of the data).

mod common;

use common::{CHILD_DEADLINE, OutputWithin};

use std::path::Path;
use std::process::Command;

use tch::{Kind, Tensor};


fn diagnose(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa")).arg("diagnose").args(args).output_within(CHILD_DEADLINE);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn diagnose_json(path: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = diagnose(&args);
    assert!(ok, "diagnose failed: {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn isotropic_low_rank_and_collapsed_embeddings_are_told_apart() {
    let dir = common::scratch("npy");
    tch::manual_seed(5);
    let gaussian = dir.join("gaussian.npy");
    Tensor::randn([2048, 16], (Kind::Float, tch::Device::Cpu)).write_npy(&gaussian).unwrap();
    let report = diagnose_json(&gaussian, &[]);
    assert_eq!(report["n"], 2048);
    assert_eq!(report["dim"], 16);
    assert_eq!(report["test"], "epps-pulley");
    assert_eq!(report["slices"], 1024);
    let sigreg = report["sigreg"].as_f64().unwrap();
    assert!(sigreg > 0.3 && sigreg < 3.0, "N(0,1) embeddings should sit near the optimum ≈1.05, got {sigreg}");
    assert!(report["effective_rank"].as_f64().unwrap() > 15.0);

    // One channel 1000× louder: the covariance's rank drops to ≈1, the correlation's does not move
    // (scaling a column leaves the correlation matrix unchanged).
    let loud = dir.join("loud.npy");
    let scale = Tensor::ones([16], (Kind::Float, tch::Device::Cpu)).index_fill(0, &Tensor::from_slice(&[3i64]), 1000.0);
    (Tensor::randn([2048, 16], (Kind::Float, tch::Device::Cpu)) * scale).write_npy(&loud).unwrap();
    let loud_report = diagnose_json(&loud, &[]);
    assert!(loud_report["effective_rank"].as_f64().unwrap() < 1.01);
    let correlation_rank = loud_report["correlation_effective_rank"].as_f64().unwrap();
    assert!(correlation_rank > 15.0, "correlation rank of independent channels: {correlation_rank}");
    assert!(report["correlation_effective_rank"].as_f64().unwrap() > 15.0);

    // Rank 3: 16 columns that are combinations of 3 latent factors.
    let low_rank = dir.join("low_rank.npy");
    let factors = Tensor::randn([1000, 3], (Kind::Double, tch::Device::Cpu));
    factors.matmul(&Tensor::randn([3, 16], (Kind::Double, tch::Device::Cpu))).write_npy(&low_rank).unwrap();
    let rank = diagnose_json(&low_rank, &[])["effective_rank"].as_f64().unwrap();
    assert!(rank > 1.0 && rank <= 3.0 + 1e-9, "effective rank of rank-3 data: {rank}");
    let rank = diagnose_json(&low_rank, &[])["correlation_effective_rank"].as_f64().unwrap();
    assert!(rank > 1.0 && rank <= 3.0 + 1e-6, "correlation rank of rank-3 data: {rank}");

    // Collapsed: every projection is 0, so Epps–Pulley is N Σ w (1 − e^{−t²/2})² = 205.848 at N = 512.
    let collapsed = dir.join("collapsed.npy");
    Tensor::zeros([512, 8], (Kind::Float, tch::Device::Cpu)).write_npy(&collapsed).unwrap();
    let report = diagnose_json(&collapsed, &["--slices", "64"]);
    assert!((report["sigreg"].as_f64().unwrap() - 205.848).abs() < 1e-3);
    assert_eq!(report["effective_rank"].as_f64().unwrap(), 0.0);
    assert_eq!(report["correlation_effective_rank"].as_f64().unwrap(), 0.0);
}

#[test]
fn fixed_directions_reproduce_the_numpy_reference() {
    let dir = common::scratch("npy");
    let fixture: serde_json::Value = serde_json::from_str(include_str!("fixtures/sigreg_reference.json")).unwrap();
    let write = |key: &str, name: &str| {
        let rows: Vec<Vec<f64>> = serde_json::from_value(fixture[key].clone()).unwrap();
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let path = dir.join(name);
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64]).write_npy(&path).unwrap();
        path
    };
    let (z, a) = (write("z", "z.npy"), write("directions", "a.npy"));
    for test in ["epps-pulley", "anderson-darling", "watson"] {
        let report = diagnose_json(&z, &["--directions", a.to_str().unwrap(), "--test", test]);
        let expected: Vec<f64> = serde_json::from_value(fixture[test].clone()).unwrap();
        let mean = expected.iter().sum::<f64>() / expected.len() as f64;
        assert_eq!(report["slices"], 7);
        assert!((report["sigreg"].as_f64().unwrap() - mean).abs() < 1e-9, "{test}: {report} vs {mean}");
    }
}

#[test]
fn bad_files_get_an_error_naming_the_file_and_the_problem() {
    let dir = common::scratch("npy");
    let text = dir.join("notes.npy");
    std::fs::write(&text, "these are not embeddings").unwrap();
    let three_d = dir.join("cube.npy");
    Tensor::zeros([2, 3, 4], (Kind::Float, tch::Device::Cpu)).write_npy(&three_d).unwrap();
    let with_nan = dir.join("nan.npy");
    Tensor::from_slice(&[1.0f32, 2.0, f32::NAN, 4.0]).view([2, 2]).write_npy(&with_nan).unwrap();
    let integers = dir.join("ints.npy");
    Tensor::from_slice(&[1i64, 2, 3, 4]).view([2, 2]).write_npy(&integers).unwrap();
    let cases = [
        (text, "not a readable .npy"),
        (three_d, "2-D"),
        (with_nan, "NaN"),
        (integers, "float32 or float64"),
        (dir.join("missing.npy"), "no such file"),
    ];
    for (path, expected) in cases {
        let (ok, _, stderr) = diagnose(&[path.to_str().unwrap()]);
        assert!(!ok, "{} should be rejected", path.display());
        assert!(stderr.contains(path.to_str().unwrap()) && stderr.contains(expected), "{}: {stderr}", path.display());
    }
}
