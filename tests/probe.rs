//! `lejepa probe` and `lejepa embed` end to end: the pixel baseline against scikit-learn's logistic
//! regression on the same split, few-shot reports, random-init baseline, embeddings (backbone and
//! projector) for diagnose.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use tch::{Kind, Tensor};

use common::{CHILD_DEADLINE, OutputWithin, scratch};

fn lejepa_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa")).args(args).output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "lejepa {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

#[test]
fn pixel_baseline_lands_where_scikit_learn_logistic_regression_does() {
    let ours = lejepa_json(&["probe", "--data", "digits", "--baseline", "pixels", "--json"])["accuracy"].as_f64().unwrap();
    let Some(python) = common::python_with("sklearn", "the scikit-learn comparison") else {
        assert!(ours > 0.9, "pixel probe on digits: {ours}");
        return;
    };
    // The same split, raw pixels, through scikit-learn.
    let ds = lejepa::data::open("digits", &Default::default()).unwrap();
    let dir = scratch("sklearn");
    let pixels = |split: &lejepa::data::Split| {
        let flat: Vec<f32> = (0..split.len()).flat_map(|i| split.image(i).unwrap().pixels.clone()).map(|p| p as f32).collect();
        Tensor::from_slice(&flat).view([split.len() as i64, 64])
    };
    pixels(&ds.train).write_npy(dir.join("train_x.npy")).unwrap();
    pixels(&ds.test).write_npy(dir.join("test_x.npy")).unwrap();
    Tensor::from_slice(ds.train.labels.as_ref().unwrap()).write_npy(dir.join("train_y.npy")).unwrap();
    Tensor::from_slice(ds.test.labels.as_ref().unwrap()).write_npy(dir.join("test_y.npy")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/logreg.py");
    let out = Command::new(&python).arg(script).arg(dir.as_os_str()).output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference = reference["accuracy"].as_f64().unwrap();
    assert!((ours - reference).abs() <= 0.02, "pixel probe {ours:.4} vs scikit-learn logistic regression {reference:.4}");
}

#[test]
fn probe_a_run_with_few_shots_and_baselines_then_embed_and_diagnose() {
    let runs = scratch("runs");
    let summary = lejepa_json(&[
        "pretrain", "--preset", "cpu-small", "--data", "digits", "--arch", "vit-tiny-patch4-depth2", "--projector", "64,64,16", "--batch-size", "64",
        "--slices", "32", "--local-views", "0", "--max-steps", "6", "--workers", "1", "--no-online-probe", "--json",
        "--out", runs.to_str().unwrap(),
    ]);
    let run = summary["run_dir"].as_str().unwrap();
    let report = lejepa_json(&[
        "probe", "--run", run, "--shots", "all,1,5", "--seeds", "3", "--baseline", "random,pixels", "--epochs", "20", "--json",
    ]);
    for key in ["accuracy", "balanced_accuracy", "macro_f1"] {
        let v = report[key].as_f64().unwrap();
        assert!((0.1..=1.0).contains(&v), "{key} = {v}");
    }
    assert_eq!(report["shots"]["1"]["seeds"], 3);
    assert!(report["shots"]["5"]["accuracy_std"].as_f64().unwrap() >= 0.0);
    let rows = report["rows"].as_object().unwrap();
    assert!(rows.contains_key("random init") && rows.contains_key("raw pixels") && rows.len() == 3);
    assert!(Path::new(run).join("probe-digits-linear.json").exists());
    // A run's backbone is fed the run's own normalisation, as recorded in its augment.toml.
    let recipe: toml::Table = toml::from_str(&std::fs::read_to_string(Path::new(run).join("augment.toml")).unwrap()).unwrap();
    let preprocessing = &report["preprocessing"];
    assert!(preprocessing["normalization"].as_str().unwrap().starts_with("the run's"), "{preprocessing}");
    let recorded = recipe["mean"].as_array().unwrap()[0].as_float().unwrap();
    assert!((preprocessing["mean"][0].as_f64().unwrap() - recorded).abs() < 1e-6, "{preprocessing} vs the run's mean {recorded}");
    // The random-init baseline is the same network whatever was probed before it in the process.
    let alone = lejepa_json(&["probe", "--run", run, "--shots", "all", "--seeds", "1", "--baseline", "random", "--epochs", "20", "--json"]);
    assert_eq!(alone["rows"]["random init"]["all"], report["rows"]["random init"]["all"], "random init drawn differently");

    // Another evaluation size than the training one: the position embedding is interpolated, and a
    // run without augment.toml (older runs, or a bare weights file) is built at its weights' size.
    std::fs::remove_file(Path::new(run).join("augment.toml")).unwrap();
    let resized = lejepa_json(&["probe", "--run", run, "--img-size", "16", "--epochs", "5", "--json"]);
    assert!(resized["accuracy"].as_f64().unwrap() > 0.1);
    let bare = lejepa_json(&[
        "probe", "--checkpoint", Path::new(run).join("backbone.safetensors").to_str().unwrap(), "--arch", "vit-tiny-patch4-depth2",
        "--data", "digits", "--epochs", "5", "--json",
    ]);
    assert!(bare["accuracy"].as_f64().unwrap() > 0.1);

    let knn = lejepa_json(&["probe", "--run", run, "--method", "knn", "--json"]);
    assert!(knn["accuracy"].as_f64().unwrap() > 0.3, "20-NN on digits features: {knn}");

    // Embeddings (+ labels) that `lejepa diagnose` reads.
    let emb_dir = scratch("emb");
    let emb = emb_dir.join("test.npy");
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa")).args(["embed", "--run", run, "--out", emb.to_str().unwrap()]).output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let embeddings = Tensor::read_npy(&emb).unwrap();
    let labels = Tensor::read_npy(emb.with_file_name("test_labels.npy")).unwrap();
    assert_eq!(embeddings.size(), [451, 192]);
    assert_eq!((labels.size(), labels.kind()), (vec![451], Kind::Int64));
    let diag = lejepa_json(&["diagnose", emb.to_str().unwrap(), "--json"]);
    assert_eq!((diag["n"].as_i64(), diag["dim"].as_i64()), (Some(451), Some(192)));

    // The projector's outputs, against the checkpoint's MLP applied here by hand to the embeddings
    // above: Linear, BatchNorm on its running statistics, ReLU, twice, then Linear (layers 0, 1, 4, 5, 8).
    let projected = emb_dir.join("projected.npy");
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["embed", "--run", run, "--projector", "--out", projected.to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let z = Tensor::read_npy(&projected).unwrap();
    let checkpoint: HashMap<String, Tensor> =
        Tensor::read_safetensors(Path::new(run).join("checkpoint.safetensors")).unwrap().into_iter().collect();
    let p = |name: String| checkpoint[&format!("projector.{name}")].shallow_clone();
    let linear = |x: &Tensor, i: usize| x.matmul(&p(format!("{i}.weight")).tr()) + p(format!("{i}.bias"));
    let norm_relu = |x: &Tensor, i: usize| {
        let standardised = (x - p(format!("{i}.running_mean"))) / (p(format!("{i}.running_var")) + 1e-5).sqrt();
        (standardised * p(format!("{i}.weight")) + p(format!("{i}.bias"))).relu()
    };
    assert!(p("1.running_mean".into()).abs().sum(Kind::Float).double_value(&[]) > 0.0, "running statistics still at their start");
    let expected = linear(&norm_relu(&linear(&norm_relu(&linear(&embeddings, 0), 1), 4), 5), 8);
    assert_eq!(z.size(), [451, 16]);
    let error = (&z - &expected).abs().max().double_value(&[]);
    assert!(error < 1e-4, "projector outputs differ from the checkpoint's MLP by {error}");
    let from_backbone_file = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["embed", "--checkpoint", Path::new(run).join("backbone.safetensors").to_str().unwrap()])
        .args(["--arch", "vit-tiny-patch4-depth2", "--data", "digits", "--projector", "--out", projected.to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    let refused = !from_backbone_file.status.success() && String::from_utf8_lossy(&from_backbone_file.stderr).contains("--run");
    assert!(refused, "a backbone file has no projector: {}", String::from_utf8_lossy(&from_backbone_file.stderr));
}

#[test]
fn probing_without_a_model_or_with_unlabeled_data_says_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa")).args(["probe", "--data", "digits"]).output_within(CHILD_DEADLINE);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--run"));

    // A flat folder of images has no labels: the error says so and where labels come from.
    let dir = scratch("unlabeled");
    for i in 0..6u8 {
        image::GrayImage::from_fn(12, 12, |x, y| image::Luma([(x as u8 * 20).wrapping_add(y as u8 * i)])).save(dir.join(format!("{i}.png"))).unwrap();
    }
    let data = format!("folder:{}", dir.display());
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa")).args(["probe", "--data", &data, "--baseline", "pixels"]).output_within(CHILD_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&data) && stderr.contains("needs labels") && stderr.contains("class subfolders"), "{stderr}");

    // --save-finetuned keeps networks fine-tuned on all labels: without fine-tuning, or without `all`, it is refused
    // before any work, saying what is missing.
    let save = scratch("save-finetuned");
    let save = save.to_str().unwrap();
    for (flags, missing) in [(&["--shots", "all"][..], "--method finetune"), (&["--method", "finetune", "--shots", "5"][..], "add all to --shots")] {
        let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
            .args(["probe", "--data", "digits", "--baseline", "random", "--save-finetuned", save])
            .args(flags)
            .output_within(CHILD_DEADLINE);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(missing), "{flags:?}: {stderr}");
    }
}

/// `embed --split all` on a labeled folder: one CSV row per embedding saying which file it is, its
/// split and its label; each row's embedding is the backbone's output for that file, computed here
/// from the file itself (decoded, normalised with the given statistics, forwarded).
#[test]
fn embed_says_which_image_each_row_is() {
    let dir = scratch("embed-index");
    let root = dir.join("images");
    let mut files = Vec::new();
    for (class, names) in [("cat", vec!["0.png", "1.png", "2.png", "3.png"]), ("dog", vec!["a, \"quoted\".png", "b.png", "c.png", "d.png"])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for (i, name) in names.iter().enumerate() {
            let shade = (i as u8 + 1) * if class == "cat" { 20 } else { 45 };
            image::GrayImage::from_fn(12, 12, |x, y| image::Luma([shade.wrapping_add((x * y) as u8)])).save(root.join(class).join(name)).unwrap();
            files.push(format!("{class}/{name}"));
        }
    }
    tch::manual_seed(0);
    let arch = lejepa::models::Arch::from_name("vit-tiny-patch4-depth2").unwrap();
    let encoder = lejepa::models::Encoder::new(tch::Device::Cpu, arch, 1, 12, 0.0, &[16]).unwrap();
    let weights = dir.join("weights.safetensors");
    encoder.save_backbone(&weights).unwrap();

    let out_npy = dir.join("all.npy");
    let data = format!("folder:{}", root.display());
    let out = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["embed", "--weights", weights.to_str().unwrap(), "--arch", "vit-tiny-patch4-depth2", "--data", &data])
        .args(["--split", "all", "--normalize", "0.5,0.25", "--out", out_npy.to_str().unwrap()])
        .output_within(CHILD_DEADLINE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let embeddings = Tensor::read_npy(&out_npy).unwrap();
    let labels = Vec::<i64>::try_from(Tensor::read_npy(dir.join("all_labels.npy")).unwrap()).unwrap();

    let mut reader = csv::Reader::from_path(dir.join("all.csv")).unwrap();
    assert_eq!(reader.headers().unwrap(), vec!["row", "image", "split", "label", "class"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), files.len(), "one row per image of every split");
    assert_eq!(embeddings.size()[0] as usize, rows.len());
    let mut listed: Vec<String> = rows.iter().map(|r| r[1].to_string()).collect();
    listed.sort();
    files.sort();
    assert_eq!(listed, files, "the rows name every file once, relative to the folder");
    assert!(rows.iter().any(|r| r[2] == *"train") && rows.iter().any(|r| r[2] == *"test"));
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
        assert_eq!(row[4], row[1][..3], "the class is the file's subfolder");
        assert_eq!(row[3], labels[i].to_string(), "the CSV's label is the labels file's");
        // The row's embedding is that file's.
        let pixels = image::open(root.join(&row[1])).unwrap().to_luma8();
        let x = Tensor::from_slice(pixels.as_raw()).to_kind(Kind::Float).view([1, 1, 12, 12]) / 255.0;
        let expected = tch::no_grad(|| encoder.backbone.forward(&((x - 0.5) / 0.25), false)).embedding;
        let error = (embeddings.get(i as i64) - expected.squeeze_dim(0)).abs().max().double_value(&[]);
        assert!(error < 1e-4, "row {i} ({}): its embedding differs from the file's by {error}", &row[1]);
    }

    // Weights that carry no statistics (as a timm model's file): fed as timm's pretrained_cfg for the
    // architecture says (for resnet18, ImageNet's statistics); `--normalize run` has none to use.
    let rgb = lejepa::models::Encoder::new(tch::Device::Cpu, lejepa::models::Arch::from_name("resnet18").unwrap(), 3, 12, 0.0, &[16]).unwrap();
    std::fs::create_dir_all(dir.join("timm")).unwrap();
    let foreign = dir.join("timm/resnet18.safetensors");
    rgb.save_backbone(&foreign).unwrap();
    let embed = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lejepa"))
            .args(["embed", "--weights", foreign.to_str().unwrap(), "--arch", "resnet18", "--data", &data])
            .args(["--out", dir.join("rgb.npy").to_str().unwrap()])
            .args(extra)
            .output_within(CHILD_DEADLINE)
    };
    let out = embed(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("normalised with timm's pretrained_cfg for resnet18: mean [0.4850, 0.4560, 0.4060], std [0.2290, 0.2240, 0.2250]"), "{stdout}");
    let out = embed(&["--normalize", "run"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no statistics found"), "{}", String::from_utf8_lossy(&out.stderr));
    // The data's own statistics, one gray value replicated for the RGB model.
    let out = embed(&["--normalize", "data"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("preprocessing")).unwrap_or_default().to_string();
    let mean: Vec<&str> = line.split("mean [").nth(1).unwrap_or_default().split(']').next().unwrap_or_default().split(", ").collect();
    assert!(line.contains("the data's") && mean.len() == 3 && mean[0] == mean[1] && mean[1] == mean[2], "{line}");
}


/// `probe --method finetune` trains the whole network with a head on the labels, from the weights each time:
/// on digits, a small ResNet fine-tuned from random init lands near a supervised network's accuracy (its frozen
/// random features give a linear probe of about 21% here; logistic regression on the pixels, 96%), and few-shot
/// sets still train.
#[test]
fn fine_tuning_trains_the_whole_network_on_the_labels() {
    let runs = scratch("finetune");
    let summary = lejepa_json(&[
        "pretrain", "--preset", "cpu-small", "--data", "digits", "--arch", "resnet18-small-w16", "--projector", "64,64,16", "--batch-size", "64",
        "--slices", "32", "--local-views", "0", "--max-steps", "4", "--workers", "1", "--no-online-probe", "--final-probe-images", "0",
        "--json", "--out", runs.to_str().unwrap(),
    ]);
    let run = summary["run_dir"].as_str().unwrap();
    let saved = runs.join("finetuned");
    let report = lejepa_json(&[
        "probe", "--run", run, "--method", "finetune", "--baseline", "random", "--shots", "all,2", "--seeds", "1",
        "--save-finetuned", saved.to_str().unwrap(), "--json",
    ]);
    assert_eq!(report["method"], "finetune");
    assert_eq!(report["features"], "fine-tuned");
    let accuracy = |row: &str, shots: &str| report["rows"][row][shots]["accuracy"].as_f64().unwrap();
    let random_all = accuracy("random init", "all");
    assert!(random_all >= 0.8, "fine-tuning from random init on all of digits: {random_all}");
    assert!(report["accuracy"].as_f64().unwrap() >= 0.8, "fine-tuning the run's backbone: {}", report["accuracy"]);
    let two_shot = accuracy("random init", "2");
    assert!(two_shot > 0.2 && two_shot < random_all, "2 labels per class: {two_shot} (chance 0.1, all labels {random_all})");
    assert!(Path::new(run).join("probe-digits-finetune.json").exists());
    // The supervised network (random init fine-tuned on all labels) was saved; frozen, its features are
    // linearly separable where the random network's are not (about 21%).
    let supervised = saved.join("random-init.safetensors");
    let frozen = lejepa_json(&["probe", "--weights", supervised.to_str().unwrap(), "--arch", "resnet18-small-w16", "--data", "digits", "--json"]);
    let frozen = frozen["accuracy"].as_f64().unwrap();
    assert!(frozen >= 0.7, "the linear probe of the saved fine-tuned network: {frozen}");
    assert_eq!(std::fs::read_dir(&saved).unwrap().count(), 2, "one backbone per row, of the all-labels fine-tuning only");
}
