//! `lejepa visualize`: the picture's layout, its PCA against numpy's, and the attention it shows.

mod common;

use std::process::Command;

use common::{CHILD_DEADLINE, OutputWithin, scratch};
use tch::{Kind, Tensor};

#[test]
fn feature_pictures_show_numpys_pca_and_attention_that_sums_to_one() {
    let dir = scratch("visualize");
    tch::manual_seed(7); // not the random-init baseline's draw (seed 0)
    let arch = lejepa::models::Arch::from_name("vit-tiny-patch4-depth2").unwrap();
    let encoder = lejepa::models::Encoder::new(tch::Device::Cpu, arch, 1, 16, 0.0, &[16]).unwrap();
    let weights = dir.join("weights.safetensors");
    encoder.save_backbone(&weights).unwrap();
    let png = dir.join("grid.png");
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["visualize", "--weights", weights.to_str().unwrap(), "--arch", "vit-tiny-patch4-depth2", "--data", "digits"])
        .args(["--images", "5", "--img-size", "16", "--tile", "32", "--compare-random", "--neighbours", "2", "--out", png.to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Five rows of image, PCA, attention, the two random-init columns and two neighbours: 32-px tiles, 4-px gaps.
    let picture = image::open(&png).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (4 + 7 * 36, 4 + 5 * 36));
    let tile = |row: u32, column: u32| image::imageops::crop_imm(&picture, 4 + column * 36, 4 + row * 36, 32, 32).to_image();
    assert_ne!(tile(0, 1), tile(0, 3), "the random network's PCA tile equals the given weights'");

    // 16-px views in 4-px patches: 16 patch tokens of width 192 per image.
    let features = Tensor::read_npy(dir.join("grid_features.npy")).unwrap();
    let projected = Tensor::read_npy(dir.join("grid_pca.npy")).unwrap();
    let attention = Tensor::read_npy(dir.join("grid_attention.npy")).unwrap();
    assert_eq!((features.size(), projected.size(), attention.size()), (vec![5, 16, 192], vec![5, 16, 3], vec![5, 3, 17]));
    assert!(attention.min().double_value(&[]) >= 0.0);
    let row_sums = attention.sum_dim_intlist(2, false, Kind::Double);
    let off = (row_sums - 1.0).abs().max().double_value(&[]);
    assert!(off < 1e-5, "the class token's attention rows sum to 1 ± {off}");

    let Some(python) = common::python_with("numpy", "the numpy PCA comparison") else { return };
    let check = r#"
import sys, numpy as np
f = np.load(sys.argv[1]).reshape(-1, 192).astype(np.float64)
p = np.load(sys.argv[2]).reshape(-1, 3)
c = f - f.mean(0)
_, _, vt = np.linalg.svd(c, full_matrices=False)
ref = c @ vt[:3].T
worst = 0.0
for k in range(3):
    sign = np.sign(ref[:, k] @ p[:, k]) or 1.0
    worst = max(worst, np.abs(sign * ref[:, k] - p[:, k]).max() / np.abs(ref[:, k]).max())
print(worst)
"#;
    let out = Command::new(&python)
        .args(["-c", check, dir.join("grid_features.npy").to_str().unwrap(), dir.join("grid_pca.npy").to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let worst: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(worst < 1e-4, "the picture's PCA differs from numpy's by {worst} (relative, signs aside)");
}
