//! What a new user meets first: `lejepa pretrain` with no flags but the data ends with the probe
//! next to its baselines and says where the encoder is; a folder of larger photos gets views and a
//! backbone fitted to them, says so, and estimates the time (src/cli/mod.rs checks that every option
//! has a help line).

mod common;

use std::process::Command;

use common::{CHILD_DEADLINE, OutputWithin, scratch};

fn lejepa(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lejepa")).args(args).output_within(CHILD_DEADLINE)
}

/// The default job's code path end to end on digits (a short schedule instead of 480 steps): the
/// final table holds the encoder, raw pixels and random init, all probed on the same images.
#[test]
fn the_default_job_ends_with_the_probe_next_to_raw_pixels_and_random_init() {
    let out = scratch("default-job");
    let output = lejepa(&["pretrain", "--data", "digits", "--steps", "4", "--final-probe-images", "600", "--eval-images", "300",
                          "--json", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["steps"], 4);
    assert!(stderr.contains("a step takes about"), "the time estimate is printed: {stderr}");
    let probe = &summary["final_probe"];
    // Stratified subsets: each class's share rounded, so within a few images of what was asked for.
    let (train, test) = (probe["train_images"].as_i64().unwrap(), probe["test_images"].as_i64().unwrap());
    assert!((train - 600).abs() <= 10 && (test - 300).abs() <= 10, "{train} training, {test} test images");
    // Raw pixels on digits: scikit-learn's logistic regression reads about 96% (tests/probe.rs checks the
    // full split); on 600 training images the same probe must still be far above chance (10%).
    let pixels = probe["raw_pixels"].as_f64().unwrap();
    assert!(pixels > 0.85, "raw pixels {pixels}");
    for key in ["backbone", "random_init"] {
        let accuracy = probe[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{key} {accuracy}");
    }
    let run_dir = std::path::PathBuf::from(summary["run_dir"].as_str().unwrap());
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("final-probe.json")).unwrap()).unwrap();
    assert_eq!(&saved, probe);
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("arch = \"resnet18-small-w32\"") && config.contains("steps = 4"), "{config}");

    // Without --json: the table, then where the encoder is and what to do with it.
    let output = lejepa(&["pretrain", "--data", "digits", "--steps", "2", "--final-probe-images", "200", "--eval-images", "100",
                          "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for line in ["this encoder (resnet18-small-w32)", "raw pixels", "the same network at random init", "backbone.safetensors", "lejepa embed --run"] {
        assert!(stdout.contains(line), "'{line}' missing from:\n{stdout}");
    }
}

/// A folder of 300-px photos on a CPU: the ImageNet-stem ResNet-18 at 96/41-px views, said before
/// training, with the crops scaled for 96 px; `--print-config` shows the same without training.
#[test]
fn a_folder_of_larger_images_gets_views_and_a_backbone_that_fit() {
    let dir = scratch("folder");
    let folder = dir.join("photos");
    for class in ["a", "b"] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        for i in 0..24u32 {
            let picture = image::RgbImage::from_fn(400, 300, |x, y| {
                let v = ((x * (i + 3) + y * if class == "a" { 7 } else { 2 }) % 256) as u8;
                image::Rgb([v, 255 - v, (x % 256) as u8])
            });
            picture.save(folder.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let data = format!("folder:{}", folder.display());
    let output = lejepa(&["pretrain", "--data", &data, "--print-config"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let config: toml::Table = String::from_utf8_lossy(&output.stdout).parse().unwrap();
    assert_eq!(config["arch"].as_str(), Some("resnet18"));
    assert_eq!((config["global_size"].as_integer(), config["local_size"].as_integer()), (Some(96), Some(41)));
    assert!(!dir.join("runs").exists() && !std::path::Path::new("runs").join("001-resnet18").exists(), "--print-config trains nothing");

    let output = lejepa(&["pretrain", "--data", &data, "--batch-size", "8", "--max-steps", "3", "--final-probe-images", "0",
                          "--threads", "2", "--json", "--out", dir.join("runs").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("chose images of 300 px on a CPU: resnet18 (ImageNet stem) at 96/41 px views"), "{stderr}");
    assert!(stderr.contains("a step takes about"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    let run_dir = std::path::PathBuf::from(summary["run_dir"].as_str().unwrap());
    let views: toml::Table = std::fs::read_to_string(run_dir.join("augment.toml")).unwrap().parse().unwrap();
    assert_eq!((views["global"]["size"].as_integer(), views["local"]["size"].as_integer()), (Some(96), Some(41)));

    // The label-free health check closes every run; `embed --projector` + `diagnose` compute the same numbers another way.
    let health = &summary["health"];
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("health.json")).unwrap()).unwrap();
    assert_eq!(&saved, health);
    assert_eq!(health["dim"], 64, "the projector's output");
    let z = dir.join("z.npy");
    let output = lejepa(&["embed", "--run", run_dir.to_str().unwrap(), "--data", &data, "--split", "train", "--projector", "--out", z.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = lejepa(&["diagnose", z.to_str().unwrap(), "--json"]);
    let diagnosis: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(diagnosis["n"], health["n"]);
    for (theirs, ours) in [("sigreg", "sigreg"), ("effective_rank", "effective_rank")] {
        let (a, b) = (diagnosis[theirs].as_f64().unwrap(), health[ours].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{ours}: diagnose {a}, the run's check {b}");
    }

    // A flag overrides the choice, and then no reason is claimed for it.
    let output = lejepa(&["pretrain", "--data", &data, "--arch", "resnet18-small", "--global-size", "32", "--print-config"]);
    let config: toml::Table = String::from_utf8_lossy(&output.stdout).parse().unwrap();
    assert_eq!((config["arch"].as_str(), config["global_size"].as_integer()), (Some("resnet18-small"), Some(32)));
    let output = lejepa(&["pretrain", "--data", &data, "--global-size", "64", "--batch-size", "8", "--max-steps", "1", "--final-probe-images", "0",
                          "--threads", "2", "--out", dir.join("runs").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("96/41") && stderr.contains("chose crop scales for 64-px views: global 0.71–1, local 0.42–0.71"), "{stderr}");
}
