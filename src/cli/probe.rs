//! `lejepa probe`: how good an encoder is, with the paper's protocols (a frozen linear probe, k-NN, or
//! full fine-tuning), next to the baselines that give its number a context (raw pixels, the same
//! network at random init).

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use serde_json::json;
use tch::Tensor;

use super::data_args::DataArgs;
use super::model_args::{Model, ModelArgs, fit_channels};
use crate::data::Split;
use crate::data::Dataset;
use crate::eval::finetune::{FinetuneSettings, finetune};
use crate::eval::{FeatureKind, ProbeSettings, Scores, features, few_shot_indices, knn, linear_probe, mean_std, pixel_features, scores};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Method {
    /// LayerNorm + Linear, AdamW (wd 1e-6), warm-up + cosine.
    Linear,
    /// Weighted 20-NN on cosine similarity (DINO).
    Knn,
    /// Full fine-tuning: backbone and a linear head on the pooled embedding trained together with AdamW
    /// (wd 0.05, lr 1e-3, 30 epochs of batches of 64 unless given, at least 200 steps; warm-up over the first
    /// tenth of the steps, then cosine to lr/1000), one augmented view per image (the run's global views, else
    /// the paper's), from the weights each time. The raw-pixel baseline stays a linear probe.
    Finetune,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Features {
    /// The paper's probe features: the last two blocks, concatenated (ViT: class tokens; ResNet: average-pooled).
    LastTwo,
    /// The backbone's embedding, timm's pooled output (ViT: the final-norm class token; ResNet: the last block, pooled).
    Embedding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Baseline {
    /// The probe on raw (normalised) pixels.
    Pixels,
    /// The same architecture, randomly initialised.
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EvalSplit {
    /// The test split.
    Test,
    /// The validation split held out of training by --val-fraction.
    Val,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluation protocol: linear (a trained LayerNorm + Linear head), knn (weighted 20-NN, no training) or finetune.
    #[arg(long, value_enum, default_value = "linear")]
    method: Method,
    /// What the probe reads [default: last-two for the linear probe, embedding for k-NN].
    #[arg(long, value_enum)]
    features: Option<Features>,
    /// Where to measure: the test split, or the validation split (--val-fraction) to tune without touching test.
    #[arg(long, value_enum, default_value = "test")]
    eval_split: EvalSplit,
    /// Labeled images per class, comma-separated, e.g. 1,2,5,10,100,all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    shots: Vec<String>,
    /// Seeds per few-shot setting (mean ± std is reported).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Baselines evaluated with the same protocol, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    baseline: Vec<Baseline>,
    /// Passes over the labeled data [default: 100 for the linear probe, 30 for fine-tuning].
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak AdamW learning rate, after a warm-up, with cosine decay [default: 1e-2 linear, 1e-3 fine-tuning].
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW weight decay [default: 1e-6 linear, 0.05 fine-tuning].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Samples per step [default: 256 feature vectors linear, 64 images fine-tuning].
    #[arg(long)]
    batch_size: Option<usize>,
    /// k-NN: neighbours that vote.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// k-NN: temperature of the similarity weights exp(cos / T).
    #[arg(long, default_value_t = 0.07)]
    temperature: f64,
    /// Fine-tuning: save each row's backbone fine-tuned on all labels to DIR/<row>.safetensors (timm's names),
    /// e.g. to probe a supervised network (`--baseline random`) with the frozen linear probe afterwards.
    #[arg(long, value_name = "DIR")]
    save_finetuned: Option<std::path::PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// Mean and std over seeds of each score, for one shot setting.
fn summarize(runs: &[Scores]) -> serde_json::Value {
    let column = |f: fn(&Scores) -> f64| mean_std(&runs.iter().map(f).collect::<Vec<_>>());
    let (acc, acc_std) = column(|s| s.accuracy);
    let (bal, bal_std) = column(|s| s.balanced_accuracy);
    let (f1, f1_std) = column(|s| s.macro_f1);
    json!({"accuracy": acc, "accuracy_std": acc_std, "balanced_accuracy": bal, "balanced_accuracy_std": bal_std,
           "macro_f1": f1, "macro_f1_std": f1_std, "seeds": runs.len()})
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.model.has_model() || !args.baseline.is_empty(), "give --run or --weights (with --arch), or a --baseline");
    if args.save_finetuned.is_some() {
        ensure!(args.method == Method::Finetune, "--save-finetuned keeps fine-tuned networks: it needs --method finetune");
        ensure!(args.shots.iter().any(|s| s == "all"), "--save-finetuned keeps the networks fine-tuned on all labels: add all to --shots");
    }
    let default_data = args.model.run_config()?.map_or("fashion-mnist".to_string(), |c| c.data);
    let mut dataset = args.data.open(&default_data)?;
    if args.eval_split == EvalSplit::Val {
        ensure!(!dataset.val.is_empty(), "--eval-split val needs a validation split: add --val-fraction (e.g. 0.1)");
        dataset.test = std::mem::take(&mut dataset.val);
    }
    let (Some(train_labels), Some(test_labels)) = (dataset.train.labels.clone(), dataset.test.labels.clone()) else {
        anyhow::bail!("{}: probing needs labels on both the train and the evaluation split (labels come from class subfolders, folder:PATH/<class>/*.png, or a labels.npy beside images.npy; without labels, `lejepa embed` + `lejepa diagnose` check a run)", dataset.spec);
    };
    ensure!(!dataset.test.is_empty(), "{}: the evaluation split is empty", dataset.spec);
    let classes = dataset.classes.len();
    let features_read = args.features.unwrap_or(match args.method {
        Method::Linear => Features::LastTwo,
        Method::Knn | Method::Finetune => Features::Embedding,
    });
    let (rows, preprocessing) = report_rows(&args, &mut dataset, features_read)?;

    let mut report = BTreeMap::new();
    let title = match args.method { Method::Linear => "linear probe", Method::Knn => "k-NN", Method::Finetune => "fine-tuning" };
    println!("{title} on {} ({} train / {} test images, {classes} classes)", dataset.spec, dataset.train.len(), dataset.test.len());
    println!("{:<40} {:>6} {:>16} {:>16} {:>16}", "features", "shots", "accuracy %", "balanced acc %", "macro-F1 %");
    for (name, row) in &rows {
        let mut per_shot = serde_json::Map::new();
        for shots in &args.shots {
            let draws: Vec<(Option<Vec<usize>>, u64)> = if shots == "all" {
                vec![(None, 0)]
            } else {
                let k: usize = shots.parse().map_err(|_| anyhow::anyhow!("--shots: '{shots}' is neither a number nor 'all'"))?;
                (0..args.seeds).map(|seed| (Some(few_shot_indices(&train_labels, classes, k, seed)), seed)).collect()
            };
            let mut runs = Vec::new();
            for (chosen, seed) in draws {
                let save = args.save_finetuned.as_ref().filter(|_| chosen.is_none()).map(|dir| dir.join(format!("{}.safetensors", file_name(name))));
                let predicted = evaluate(&args, &mut dataset, row, chosen.as_deref(), seed, save.as_deref())?;
                runs.push(scores(&predicted, &test_labels, classes));
            }
            let summary = summarize(&runs);
            let cell = |key: &str| format!("{:.2} ± {:.2}", 100.0 * summary[key].as_f64().unwrap(), 100.0 * summary[format!("{key}_std")].as_f64().unwrap());
            println!("{:<40} {:>6} {:>16} {:>16} {:>16}", name, shots, cell("accuracy"), cell("balanced_accuracy"), cell("macro_f1"));
            per_shot.insert(shots.clone(), summary);
        }
        report.insert(name.clone(), per_shot);
    }

    // The headline numbers are the model's (or the first baseline's) at the first shot setting.
    let headline = &report[&rows[0].0][&args.shots[0]];
    let output = json!({
        "data": dataset.spec, "method": format!("{:?}", args.method).to_lowercase(),
        "features": match (args.method, features_read) {
            (Method::Finetune, _) => "fine-tuned",
            (_, Features::LastTwo) => "last-two",
            (_, Features::Embedding) => "embedding",
        },
        "accuracy": headline["accuracy"], "balanced_accuracy": headline["balanced_accuracy"], "macro_f1": headline["macro_f1"],
        "shots": report[&rows[0].0], "rows": report, "preprocessing": preprocessing,
    });
    if let Some(run) = &args.model.run {
        let name = format!("probe-{}-{}.json", dataset.spec.replace(['/', ':'], "_"), format!("{:?}", args.method).to_lowercase());
        std::fs::write(run.join(name), serde_json::to_string_pretty(&output)?)?;
    }
    if args.json {
        println!("{output}");
    }
    Ok(())
}

/// What a row of the report evaluates: fixed features (train, test), or a network fine-tuned afresh for
/// each draw of labels, from the weights or (`random`) from its random init.
enum Row {
    Features { train: Tensor, test: Tensor },
    Finetune { random: bool },
}

/// Each row of the report, named: the model's, then the baselines asked for (features computed once). Also
/// the model's preprocessing, as printed.
fn report_rows(args: &Args, dataset: &mut Dataset, read: Features) -> Result<(Vec<(String, Row)>, Option<super::model_args::Preprocessing>)> {
    let kind = match read {
        Features::LastTwo => FeatureKind::Probe,
        Features::Embedding => FeatureKind::Embedding,
    };
    let mut rows = Vec::new();
    let mut sources: Vec<(String, bool)> = Vec::new();
    if args.model.has_model() {
        sources.push((args.model.name(), false));
    }
    if args.baseline.contains(&Baseline::Random) {
        sources.push(("random init".into(), true));
    }
    let mut preprocessing = None;
    for (name, random) in sources {
        let model = args.model.load(dataset, random)?;
        if preprocessing.is_none() {
            println!("preprocessing: {}", model.preprocessing());
            preprocessing = Some(model.preprocessing());
        }
        if args.method == Method::Finetune {
            rows.push((name, Row::Finetune { random }));
            continue;
        }
        let (train, test) = (fit_channels(&dataset.train, &model), fit_channels(&dataset.test, &model));
        let backbone = &model.encoder.backbone;
        let (train, test) = (features(backbone, &train, &model.crop, kind, model.device)?, features(backbone, &test, &model.crop, kind, model.device)?);
        rows.push((name, Row::Features { train, test }));
    }
    if args.baseline.contains(&Baseline::Pixels) {
        let (width, height) = dataset.train.dimensions(0);
        let mut crop = crate::data::augment::MultiCrop::lejepa(width.min(height), 1, 1, 0);
        dataset.decode_at(crop.global.size);
        (crop.mean, crop.std) = crate::data::channel_stats(&dataset.train, dataset.channels)?;
        let name = if args.method == Method::Finetune { "raw pixels (linear probe)" } else { "raw pixels" };
        rows.push((name.into(), Row::Features { train: pixel_features(&dataset.train, &crop)?, test: pixel_features(&dataset.test, &crop)? }));
    }
    Ok((rows, preprocessing))
}

/// One evaluation of a row on the training images `chosen` (all when None): the predicted class of each
/// test image. Features get the linear probe or k-NN (the linear probe under fine-tuning: the pixel row);
/// a fine-tuning row loads its network afresh and trains it.
fn evaluate(args: &Args, dataset: &mut Dataset, row: &Row, chosen: Option<&[usize]>, seed: u64, save: Option<&std::path::Path>) -> Result<Vec<i64>> {
    let classes = dataset.classes.len();
    let labels = dataset.train.labels.clone().unwrap_or_default();
    match row {
        Row::Features { train, test } => {
            let (train, labels) = match chosen {
                Some(chosen) => {
                    let index = Tensor::from_slice(&chosen.iter().map(|&i| i as i64).collect::<Vec<_>>());
                    (train.index_select(0, &index), chosen.iter().map(|&i| labels[i]).collect())
                }
                None => (train.shallow_clone(), labels),
            };
            match args.method {
                Method::Knn => knn(&train, &labels, test, classes, args.k, args.temperature),
                Method::Linear => linear_probe(&train, &labels, test, classes, linear_settings(args, seed)),
                Method::Finetune => linear_probe(&train, &labels, test, classes, ProbeSettings { seed, ..ProbeSettings::default() }),
            }
        }
        Row::Finetune { random } => {
            let model = args.model.load(dataset, *random)?;
            let train = fit_channels(&dataset.train, &model);
            let train = chosen.map_or_else(|| train.clone(), |chosen| train.select(chosen));
            let test = fit_channels(&dataset.test, &model);
            let settings = finetune_settings(args, seed);
            let predicted = finetune(&model.encoder, &model.training_views, &model.crop, &train, &test, classes, settings, model.device)?;
            if let Some(path) = save {
                std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
                model.encoder.save_backbone(path)?;
                eprintln!("saved the fine-tuned backbone: {}", path.display());
            }
            Ok(predicted)
        }
    }
}

/// A row's name as a file name: "random init" → "random-init", a run's path → its folder's name, a weights
/// file → its name without `.safetensors`.
fn file_name(row: &str) -> String {
    let last = row.trim_end_matches('/').rsplit('/').next().unwrap_or(row);
    let last = last.strip_suffix(".safetensors").unwrap_or(last);
    last.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect()
}

/// The linear probe's settings: the flags given, else its defaults.
fn linear_settings(args: &Args, seed: u64) -> ProbeSettings {
    let defaults = ProbeSettings::default();
    ProbeSettings {
        epochs: args.epochs.unwrap_or(defaults.epochs),
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        lr: args.lr.unwrap_or(defaults.lr),
        weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        seed,
    }
}

/// Fine-tuning's settings from the same flags, else its own defaults.
fn finetune_settings(args: &Args, seed: u64) -> FinetuneSettings {
    let defaults = FinetuneSettings::default();
    FinetuneSettings {
        epochs: args.epochs.unwrap_or(defaults.epochs),
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        lr: args.lr.unwrap_or(defaults.lr),
        weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        seed,
        workers: defaults.workers,
    }
}

/// The frozen linear probe of a run's backbone next to its two baselines, with one protocol on
/// the same images: raw pixels (the same normalised views, flattened) and the same network at
/// random init. Fitted on a stratified subset of `train_images` training images and scored on
/// `test_images` test images (stratified), so that it costs minutes, not the whole dataset.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Baselines {
    pub train_images: usize,
    pub test_images: usize,
    pub backbone: f64,
    pub raw_pixels: f64,
    pub random_init: f64,
}

/// The default linear probe's top-1 accuracy on a frozen model's probe features (the last two blocks).
pub fn frozen_probe(model: &Model, train: &Split, test: &Split, classes: usize) -> Result<f64> {
    let (Some(train_labels), Some(test_labels)) = (&train.labels, &test.labels) else { anyhow::bail!("the probe needs labels") };
    let (train, test) = (fit_channels(train, model), fit_channels(test, model));
    let backbone = &model.encoder.backbone;
    let train_features = features(backbone, &train, &model.crop, FeatureKind::Probe, model.device)?;
    let test_features = features(backbone, &test, &model.crop, FeatureKind::Probe, model.device)?;
    let predicted = linear_probe(&train_features, train_labels, &test_features, classes, ProbeSettings::default())?;
    Ok(scores(&predicted, test_labels, classes).accuracy)
}

pub fn probe_with_baselines(args: &ModelArgs, trained: &Model, dataset: &crate::data::Dataset, train_images: usize, test_images: usize) -> Result<Baselines> {
    use crate::data::stratified_subset;
    let (train, test) = (stratified_subset(&dataset.train, train_images), stratified_subset(&dataset.test, test_images));
    let (Some(train_labels), Some(test_labels)) = (&train.labels, &test.labels) else {
        anyhow::bail!("{}: the probe needs labels on both the train and the test split (labels come from class subfolders, folder:PATH/<class>/*.png, or a labels.npy beside images.npy; without labels, `lejepa embed` + `lejepa diagnose` check a run)", dataset.spec);
    };
    ensure!(!test.is_empty(), "{}: the test split is empty", dataset.spec);
    let classes = dataset.classes.len();
    let accuracy = |train_features: &Tensor, test_features: &Tensor| -> Result<f64> {
        let predicted = linear_probe(train_features, train_labels, test_features, classes, ProbeSettings::default())?;
        Ok(scores(&predicted, test_labels, classes).accuracy)
    };
    let probe = |model: &Model| frozen_probe(model, &train, &test, classes);
    let (train_views, test_views) = (fit_channels(&train, trained), fit_channels(&test, trained));
    Ok(Baselines {
        train_images: train.len(),
        test_images: test.len(),
        backbone: probe(trained)?,
        // Raw pixels: exactly the views the backbone was given.
        raw_pixels: accuracy(&pixel_features(&train_views, &trained.crop)?, &pixel_features(&test_views, &trained.crop)?)?,
        random_init: probe(&args.load(dataset, true)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn a_rows_file_name_is_its_last_path_part_without_the_weights_extension() {
        assert_eq!(file_name("random init"), "random-init");
        assert_eq!(file_name("runs/004-resnet18/"), "004-resnet18");
        assert_eq!(file_name("/models/dinov2.safetensors"), "dinov2");
        assert_eq!(file_name("weights/resnet.v2.safetensors"), "resnet.v2");
    }
}
