//! `lejepa views`: the picture of the training views, and a custom view recipe (--augment-file).

mod common;

use common::{CHILD_DEADLINE, OutputWithin};

use std::process::Command;

#[test]
fn views_are_drawn_with_the_configured_recipe() {
    let dir = common::scratch("views");
    let png = dir.join("views.png");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
            .args(["views", "--data", "digits", "--rows", "3", "--arch", "resnet18-small", "--out", png.to_str().unwrap()])
            .args(extra)
            .output_within(CHILD_DEADLINE);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let stdout = run(&[]);
    assert!(stdout.contains("2 global views (8 px) then 4 local views (3 px)"), "{stdout}");
    // 3 rows of 6 views, each cell 96 px (8 px zoomed 12×) + 2 px padding.
    let image = image::open(&png).unwrap();
    assert_eq!((image.width(), image.height()), (6 * 98 + 2, 3 * 98 + 2));
    // Not a blank picture: every tile has contrast, the views of one image differ, and the rows (images) differ.
    let gray = image.to_luma8();
    let tile = |row: u32, col: u32| -> Vec<u8> {
        (0..96).flat_map(|y| (0..96).map(move |x| (x, y))).map(|(x, y)| gray.get_pixel(2 + col * 98 + x, 2 + row * 98 + y)[0]).collect()
    };
    for row in 0..3 {
        for col in 0..6 {
            let t = tile(row, col);
            let (low, high) = (t.iter().min().unwrap(), t.iter().max().unwrap());
            assert!(high - low >= 32, "tile ({row}, {col}) is flat: {low}–{high}");
        }
        assert!((1..6).any(|col| tile(row, col) != tile(row, 0)), "row {row}: all views of the image are the same picture");
    }
    assert!(tile(0, 0) != tile(1, 0) && tile(1, 0) != tile(2, 0), "the rows show different images");

    // A recipe file in augment.toml's format replaces the preset's recipe entirely.
    let mut crop = lejepa::data::augment::MultiCrop::lejepa(16, 1, 1, 1);
    crop.local.size = 4;
    (crop.mean, crop.std) = (vec![0.3], vec![0.3]);
    let recipe = toml::to_string(&crop).unwrap();
    assert!(recipe.contains("size = 16"), "{recipe}");
    let path = dir.join("recipe.toml");
    std::fs::write(&path, &recipe).unwrap();
    let stdout = run(&["--augment-file", path.to_str().unwrap()]);
    assert!(stdout.contains("1 global views (16 px) then 1 local views (4 px)"), "{stdout}");
    std::fs::write(&path, recipe.replace("size = 16", "sise = 16")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["views", "--data", "digits", "--augment-file", path.to_str().unwrap(), "--out", png.to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("recipe.toml") && stderr.contains("sise"), "{stderr}");
}
