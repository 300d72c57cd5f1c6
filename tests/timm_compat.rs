//! Our backbones are timm's networks: same parameter counts (published timm/torchvision figures),
//! and, when the Python side is installed (`scripts/setup --python`), same weights and features in
//! both directions through safetensors.

mod common;

use common::{CHILD_DEADLINE, OutputWithin};

use std::path::Path;
use std::process::Command;

use lejepa::models::{Arch, Encoder};
use tch::{Device, Kind, Tensor};

fn encoder(arch: &str, in_chans: i64, img_size: i64) -> Encoder {
    Encoder::new(Device::Cpu, Arch::from_name(arch).unwrap(), in_chans, img_size, 0.0, &[64, 64, 16]).unwrap()
}

#[test]
fn parameter_counts_equal_timms() {
    // timm/torchvision parameter counts minus the 1000-class classifier (num_classes=0).
    let cases = [
        ("vit-tiny-patch16", 5_717_416 - (192 * 1000 + 1000)),
        ("vit-small-patch16", 22_050_664 - (384 * 1000 + 1000)),
        ("vit-base-patch16", 86_567_656 - (768 * 1000 + 1000)),
        ("resnet18", 11_689_512 - (512 * 1000 + 1000)),
        ("resnet34", 21_797_672 - (512 * 1000 + 1000)),
        ("resnet50", 25_557_032 - (2048 * 1000 + 1000)),
    ];
    for (arch, expected) in cases {
        assert_eq!(encoder(arch, 3, 224).backbone_parameters(), expected, "{arch}");
    }
}

#[test]
fn unknown_architectures_list_the_known_ones() {
    let err = Arch::from_name("vit-huge").unwrap_err().to_string();
    assert!(err.contains("vit-huge") && err.contains("resnet50") && err.contains("vit-small"), "{err}");
    assert!(Arch::from_name("resnet101").is_err());
    assert!(Arch::from_name("vit-tiny-patch5").is_err());
    // The ResNet suffixes: a stride-2 small stem, and the first stage's width (a multiple of 8, 8–256).
    assert_eq!(Arch::from_name("resnet18-small-stride2-w32").unwrap(), Arch::Resnet { depth: 18, small_stem: true, stem_stride: 2, width: 32 });
    assert_eq!(Arch::from_name("resnet50-w128").unwrap(), Arch::Resnet { depth: 50, small_stem: false, stem_stride: 1, width: 128 });
    for bad in ["resnet18-small-w30", "resnet18-small-w", "resnet18-stride2", "resnet18-small-w512"] {
        assert!(Arch::from_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn vit_accepts_other_view_sizes_and_reports_probe_features() {
    let enc = encoder("vit-tiny-patch4-depth2", 1, 28);
    let global = enc.backbone.forward(&Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu)), false);
    let local = enc.backbone.forward(&Tensor::randn([3, 1, 12, 12], (Kind::Float, Device::Cpu)), false);
    assert_eq!(global.embedding.size(), [3, 192]);
    assert_eq!(local.embedding.size(), [3, 192]);
    assert_eq!(global.probe.size(), [3, 384], "class tokens of the last two blocks");
}

/// Non-trivial BatchNorm statistics and γ, so that eval-mode BatchNorm is really compared.
fn perturb_batch_norms(enc: &Encoder) {
    tch::no_grad(|| {
        for (name, var) in enc.vs.variables() {
            if name.ends_with("running_var") || (name.contains("bn") && name.ends_with("weight")) {
                let _ = var.shallow_clone().copy_(&(Tensor::rand_like(&var) + 0.5));
            } else if name.ends_with("running_mean") {
                let _ = var.shallow_clone().copy_(&(Tensor::randn_like(&var) * 0.1));
            }
        }
    });
}

/// Runs scripts/reference/timm_check.py; fails the test if it fails, else returns its JSON line.
fn timm_check(python: &Path, mode: &str, name: &str, img_size: i64, in_chans: i64, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/timm_check.py");
    let out = Command::new(python)
        .arg(script)
        .args([mode, "--name", name, "--img-size", &img_size.to_string(), "--in-chans", &in_chans.to_string()])
        .args(["--dir", dir.to_str().unwrap()])
        .args(extra)
        .output_within(CHILD_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "timm_check {mode} {name}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("timm_check {mode}: no JSON line ({e}): {stdout}"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn weights_and_features_round_trip_with_timm() {
    let Some(python) = common::python_with("timm, safetensors", "the timm round trip") else { return };
    // (our name, timm name, image size, channels, input size fed: differs for a ViT to exercise interpolation)
    let cases = [
        ("vit-small-patch16", 224, 3, 224),
        ("vit-tiny-patch16", 224, 1, 160),
        ("vit-small-patch14-dinov2", 56, 1, 42), // DINOv2's LayerScale; timm's dinov2 at a small size

        ("resnet50", 224, 3, 96),
        ("resnet18", 224, 1, 64),
    ];
    for (arch, img_size, in_chans, input_size) in cases {
        let timm_name = Arch::from_name(arch).unwrap().timm_name().unwrap();
        let dir = common::scratch(arch);

        // lejepa → timm: timm loads our file with strict=True and reproduces our features.
        tch::manual_seed(0);
        let mut enc = encoder(arch, in_chans, img_size);
        perturb_batch_norms(&enc);
        let input = Tensor::randn([2, in_chans, input_size, input_size], (Kind::Float, Device::Cpu));
        let ours = tch::no_grad(|| enc.backbone.forward(&input, false));
        enc.save_backbone(&dir.join("weights.safetensors")).unwrap();
        input.write_npy(dir.join("input.npy")).unwrap();
        ours.embedding.write_npy(dir.join("features.npy")).unwrap();
        ours.probe.write_npy(dir.join("probe_features.npy")).unwrap();
        let _ = timm_check(&python, "verify", &timm_name, img_size, in_chans, &dir, &[]);

        // timm → lejepa: we load timm's own initialisation and reproduce its features.
        let _ = timm_check(&python, "export", &timm_name, img_size, in_chans, &dir, &["--input-size", &input_size.to_string()]);
        enc.load_backbone(&dir.join("weights.safetensors")).unwrap();
        let input = Tensor::read_npy(dir.join("input.npy")).unwrap();
        let theirs = Tensor::read_npy(dir.join("features.npy")).unwrap();
        let ours = tch::no_grad(|| enc.backbone.forward(&input, false));
        // Relative to the largest feature (at least 1), as timm_check.py: the layouts may differ (channels-last here).
        let scale = |t: &Tensor| t.abs().max().double_value(&[]).max(1.0);
        let diff = max_abs_diff(&ours.embedding, &theirs);
        assert!(diff <= 1e-4 * scale(&theirs), "{arch}: features of timm's weights differ by {diff} (largest {})", scale(&theirs));
        // The probe's features, taken from timm's blocks by forward hooks. (With timm's initialisation
        // a ResNet block's last BatchNorm γ is zero, so its last two blocks agree; the direction above,
        // with random γ, is the one that tells them apart.)
        let theirs = Tensor::read_npy(dir.join("probe_features.npy")).unwrap();
        assert_eq!(ours.probe.size(), theirs.size(), "{arch}: probe features");
        assert_eq!(ours.probe.size()[1], enc.backbone.probe_dim(), "{arch}: probe_dim");
        let diff = max_abs_diff(&ours.probe, &theirs);
        assert!(diff <= 1e-4 * scale(&theirs), "{arch}: probe features of timm's weights differ by {diff} (largest {})", scale(&theirs));
    }
}

#[test]
fn loading_the_wrong_architecture_names_the_file_and_the_tensor() {
    let dir = common::scratch("wrong-arch");
    let path = dir.join("resnet18.safetensors");
    encoder("resnet18", 3, 64).save_backbone(&path).unwrap();
    let err = encoder("resnet34", 3, 64).load_backbone(&path).unwrap_err().to_string();
    assert!(err.contains("resnet18.safetensors") && err.contains("missing"), "{err}");
    let err = encoder("resnet18", 1, 64).load_backbone(&path).unwrap_err().to_string();
    assert!(err.contains("conv1.weight") && err.contains("shape"), "{err}");
}

/// The Python line `lejepa pretrain` prints builds the same network in timm, also for the small
/// architectures timm has no name for: our file loads strictly and gives our features.
#[test]
fn the_printed_timm_line_builds_the_same_network() {
    let Some(python) = common::python_with("timm, safetensors", "the printed timm line") else { return };
    for (arch, in_chans, size) in [("resnet18-small", 1, 28), ("resnet18-small-stride2", 1, 28), ("resnet18-small-w32", 1, 28), ("vit-tiny-patch4-depth6", 1, 28), ("resnet18", 3, 96), ("vit-small-patch16", 3, 64)] {
        let dir = common::scratch(arch);
        tch::manual_seed(0);
        let enc = encoder(arch, in_chans, size);
        let input = Tensor::randn([2, in_chans, size, size], (Kind::Float, Device::Cpu));
        let ours = tch::no_grad(|| enc.backbone.forward(&input, false)).embedding;
        enc.save_backbone(&dir.join("backbone.safetensors")).unwrap();
        input.write_npy(dir.join("input.npy")).unwrap();
        let line = Arch::from_name(arch).unwrap().timm_python(in_chans, size);
        let script = format!(
            "import sys, numpy, timm, torch, safetensors.torch\n{line}\n\
             model.load_state_dict(safetensors.torch.load_file(sys.argv[1] + '/backbone.safetensors'), strict=True)\n\
             x = torch.from_numpy(numpy.load(sys.argv[1] + '/input.npy'))\n\
             numpy.save(sys.argv[1] + '/theirs.npy', model.eval()(x).detach().numpy())\n"
        );
        let out = std::process::Command::new(&python).args(["-c", &script, dir.to_str().unwrap()]).output_within(CHILD_DEADLINE);
        assert!(out.status.success(), "{arch}: {line}\n{}", String::from_utf8_lossy(&out.stderr));
        let theirs = Tensor::read_npy(dir.join("theirs.npy")).unwrap();
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff <= 1e-4, "{arch}: timm's features of our weights differ by {diff}");
    }
}

/// `lejepa export` writes a folder that timm builds and loads by itself (`local-dir:`, as `hf-hub:`
/// would after an upload) with the preprocessing in its config.json; lejepa reads that preprocessing back.
#[test]
fn exported_folders_load_in_timm_with_their_preprocessing() {
    let Some(python) = common::python_with("timm, safetensors", "the timm export check") else { return };
    // (architecture, channels, size, --normalize, the mean and std that value means for the model's channels)
    let cases = [
        ("vit-tiny-patch4-depth2", 1, 28, "0.25,0.5", vec![0.25], vec![0.5]),
        ("resnet18", 3, 64, "0.1,0.2,0.3,0.4,0.5,0.6", vec![0.1, 0.2, 0.3], vec![0.4, 0.5, 0.6]),
    ];
    for (arch, in_chans, img_size, normalize, mean, std) in cases {
        let dir = common::scratch(&format!("export-{arch}"));
        tch::manual_seed(1);
        let enc = encoder(arch, in_chans, img_size);
        perturb_batch_norms(&enc);
        let weights = dir.join("weights.safetensors");
        enc.save_backbone(&weights).unwrap();
        let model_dir = dir.join("model");
        let size = img_size.to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
            .args(["export", "--weights", weights.to_str().unwrap(), "--arch", arch, "--data", "digits", "--img-size", &size])
            .args(["--normalize", normalize, "--out", model_dir.to_str().unwrap()])
            .output_within(CHILD_DEADLINE);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{arch}: export failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        for file in ["model.safetensors", "config.json", "README.md"] {
            assert!(model_dir.join(file).exists(), "{arch}: no {file} in the folder");
        }

        // timm builds the network from config.json alone, loads model.safetensors strictly, and gives our features.
        let input = Tensor::randn([2, in_chans, img_size, img_size], (Kind::Float, Device::Cpu));
        let ours = tch::no_grad(|| enc.backbone.forward(&input, false));
        input.write_npy(dir.join("input.npy")).unwrap();
        ours.embedding.write_npy(dir.join("features.npy")).unwrap();
        ours.probe.write_npy(dir.join("probe_features.npy")).unwrap();
        let report = timm_check(&python, "local-dir", "", img_size, in_chans, &dir, &[]);
        let config = &report["data_config"];
        assert_eq!(config["input_size"], serde_json::json!([in_chans, img_size, img_size]), "{arch}: {report}");
        let close = |value: &serde_json::Value, expected: &[f64]| {
            let got: Vec<f64> = value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            got.len() == expected.len() && got.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6)
        };
        assert!(close(&config["mean"], &mean) && close(&config["std"], &std), "{arch}: timm resolves {config}, expected mean {mean:?} std {std:?}");

        // lejepa reads the folder's preprocessing back when embedding with its weights.
        let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
            .args(["embed", "--weights", model_dir.to_str().unwrap(), "--arch", arch, "--data", "digits"])
            .args(["--out", dir.join("e.npy").to_str().unwrap()])
            .output_within(CHILD_DEADLINE);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{arch}: embed failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let mean = mean.iter().map(|m| format!("{m:.4}")).collect::<Vec<_>>().join(", ");
        let expected = format!("at {size}×{size} px, normalised with the weights' ({}): mean [{mean}]", model_dir.join("lejepa.json").display());
        assert!(stdout.contains(&expected), "{arch}: expected '{expected}' in: {stdout}");
    }

    // A network timm cannot build from a config (the default job's): no config.json, but the weights,
    // the card and lejepa.json, which lejepa reads back.
    let dir = common::scratch("export-small-stem");
    let enc = encoder("resnet18-small-w32", 1, 28);
    let weights = dir.join("weights.safetensors");
    enc.save_backbone(&weights).unwrap();
    let model_dir = dir.join("model");
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["export", "--weights", weights.to_str().unwrap(), "--arch", "resnet18-small-w32", "--data", "digits", "--img-size", "28"])
        .args(["--normalize", "0.3,0.35", "--out", model_dir.to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!model_dir.join("config.json").exists() && model_dir.join("model.safetensors").exists());
    assert!(std::fs::read_to_string(model_dir.join("README.md")).unwrap().contains("channels=(32, 64, 128, 256)"));
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["embed", "--weights", model_dir.to_str().unwrap(), "--arch", "resnet18-small-w32", "--data", "digits"])
        .args(["--out", dir.join("e.npy").to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("central square at 28×28 px, normalised with the weights'") && stdout.contains("mean [0.3000], std [0.3500]"), "{stdout}");
}

/// Weights without statistics of their own (a timm model's file) are fed what timm's evaluation feeds
/// them: `lejepa embed` equals timm.create_model + resolve_data_config + create_transform (Pillow's resize,
/// the centre crop of crop_pct, the normalisation of the weights' pretrained_cfg) on images of other
/// sizes and shapes than the model's, gray and colour.
#[test]
fn foreign_weights_get_timms_own_evaluation_transform() {
    let Some(python) = common::python_with("timm, safetensors, PIL", "the timm transform check") else { return };
    let images = common::scratch("timm-transform-images");
    for (i, (w, h)) in [(300u32, 200u32), (150, 261), (97, 97), (64, 40)].into_iter().enumerate() {
        let path = images.join(format!("{i}.png"));
        if i % 2 == 0 {
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, ((x * y) % 251) as u8])).save(path).unwrap();
        } else {
            image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * x + 3 * y) % 256) as u8])).save(path).unwrap();
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/timm_transform_check.py");
    for (arch, timm_name) in [("vit-tiny-patch16", "vit_tiny_patch16_224"), ("resnet18", "resnet18")] {
        let dir = common::scratch(&format!("timm-transform-{arch}"));
        let python_step = |mode: &str| {
            let out = Command::new(&python)
                .arg(&script)
                .args([mode, "--name", timm_name, "--dir", dir.to_str().unwrap(), "--images", images.to_str().unwrap()])
                .output_within(CHILD_DEADLINE);
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "{timm_name} {mode}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
            eprintln!("{stdout}");
            stdout
        };
        python_step("init");
        let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
            .args(["embed", "--weights", dir.join("weights.safetensors").to_str().unwrap(), "--arch", arch])
            .args(["--data", &format!("folder:{}", images.display()), "--split", "all", "--out", dir.join("emb.npy").to_str().unwrap()])
            .output_within(CHILD_DEADLINE);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{arch}: embed failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("normalised with timm's pretrained_cfg for {timm_name}")), "{arch}: {stdout}");
        python_step("compare");
    }
}

/// With an embedding layer, lejepa's encoder is MINIMAL.md's model: timm's backbone created with
/// `num_classes=E` (the layer is its head), then `torchvision.ops.MLP(E, widths, BatchNorm1d)`. The
/// encoder's tensors, renamed as that module names them, load strictly and give the same embedding and z.
#[test]
fn the_embedding_layer_and_projector_are_minimal_mds_model() {
    let Some(python) = common::python_with("timm, torchvision, safetensors", "the MINIMAL.md model check") else { return };
    let dir = common::scratch("minimal-model");
    tch::manual_seed(0);
    let arch = Arch::from_name("vit-small-patch8").unwrap(); // MINIMAL.md's backbone, at 32 px
    let enc = Encoder::with_embedding(Device::Cpu, arch, 1, 32, 0.0, Some(32), &[64, 64, 16]).unwrap();
    assert_eq!(enc.projector.embedding_dim(), Some(32));
    perturb_batch_norms(&enc);
    let input = Tensor::randn([4, 1, 32, 32], (Kind::Float, Device::Cpu));
    let (embedding, z) = tch::no_grad(|| {
        let embedding = enc.projector.embed(&enc.backbone.forward(&input, false).embedding);
        let z = enc.projector.mlp(&embedding, false);
        (embedding, z)
    });
    assert_eq!(embedding.size(), [4, 32]);
    assert_eq!(z.size(), [4, 16]);
    let tensors: Vec<(String, Tensor)> = enc.vs.variables().into_iter().collect();
    Tensor::write_safetensors(&tensors, dir.join("checkpoint.safetensors")).unwrap();
    input.write_npy(dir.join("input.npy")).unwrap();
    embedding.write_npy(dir.join("embedding.npy")).unwrap();
    z.write_npy(dir.join("z.npy")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/minimal_check.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--name", "vit_small_patch8_224", "--img-size", "32", "--in-chans", "1", "--embedding-dim", "32"])
        .args(["--projector", "64,64,16", "--dir", dir.to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "minimal_check: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
}
