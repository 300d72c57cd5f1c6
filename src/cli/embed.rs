//! `lejepa embed`: the frozen backbone's embeddings of a dataset (or its projector's outputs), as
//! .npy for use elsewhere (`lejepa diagnose` reads them).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{Device, Tensor};

use super::data_args::DataArgs;
use super::model_args::{ModelArgs, fit_channels};
use crate::data::{Dataset, Split};
use crate::eval::{FeatureKind, features};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SplitName {
    Train,
    Test,
    /// Every image: the training split, then the validation and test splits.
    All,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Which split to embed [default: test, or train where the data has no test split (unlabeled folders)].
    #[arg(long, value_enum)]
    split: Option<SplitName>,
    /// Output .npy (N × D float32). Beside it, <stem>.csv says which image each row is (its path
    /// relative to the data folder, or its row in the source; split; label and class); labels, when
    /// present, also go to <stem>_labels.npy.
    #[arg(long)]
    out: PathBuf,
    /// Write the linear probe's features (the last two blocks: ViT class tokens, ResNet pooled) instead of the embedding.
    #[arg(long)]
    probe_features: bool,
    /// Write the trained projector's outputs (the space SIGReg makes Gaussian) instead of the
    /// backbone's embedding; needs --run.
    #[arg(long, conflicts_with = "probe_features")]
    projector: bool,
}

pub fn run(args: Args) -> Result<()> {
    let default_data = args.model.run_config()?.map_or("fashion-mnist".to_string(), |c| c.data);
    anyhow::ensure!(args.model.has_model(), "give --run RUN, or --weights W with --arch A");
    if args.projector {
        args.model.projector_run()?; // before the split is embedded
    }
    let dataset = args.data.open(&default_data)?;
    let model = args.model.load(&dataset, false)?;
    println!("preprocessing: {}", model.preprocessing());
    let split = args.split.unwrap_or(if dataset.test.is_empty() { SplitName::Train } else { SplitName::Test });
    let splits: Vec<(&str, &Split)> = match split {
        SplitName::Train => vec![("train", &*dataset.train)],
        SplitName::Test => vec![("test", &dataset.test)],
        SplitName::All => vec![("train", &*dataset.train), ("val", &dataset.val), ("test", &dataset.test)],
    };
    let splits: Vec<(&str, &Split)> = splits.into_iter().filter(|(_, split)| !split.is_empty()).collect();
    anyhow::ensure!(!splits.is_empty(), "{}: the {} split is empty", dataset.spec, format!("{split:?}").to_lowercase());
    let kind = if args.probe_features { FeatureKind::Probe } else { FeatureKind::Embedding };
    let chunks = splits
        .iter()
        .map(|(_, split)| features(&model.encoder.backbone, &fit_channels(split, &model), &model.crop, kind, model.device))
        .collect::<Result<Vec<Tensor>>>()?;
    let mut embeddings = Tensor::cat(&chunks, 0);
    if args.projector {
        let projector = args.model.trained_projector(model.encoder.backbone.embed_dim(), model.device)?;
        embeddings = tch::no_grad(|| projector.forward(&embeddings.to_device(model.device), false)).to_device(Device::Cpu);
    }
    crate::npy::write(&embeddings, &args.out)?;
    println!("{}: {} embeddings of dimension {}", args.out.display(), embeddings.size()[0], embeddings.size()[1]);

    let stem = args.out.file_stem().unwrap_or_default().to_string_lossy().to_string();
    let index = args.out.with_file_name(format!("{stem}.csv"));
    write_index(&index, &splits, &dataset)?;
    println!("{}: the image of each row", index.display());
    if splits.iter().all(|(_, split)| split.labels.is_some()) {
        let labels: Vec<i64> = splits.iter().flat_map(|(_, split)| split.labels.clone().unwrap_or_default()).collect();
        let path = args.out.with_file_name(format!("{stem}_labels.npy"));
        crate::npy::write(&Tensor::from_slice(&labels), &path)?;
        println!("{}: {} labels", path.display(), labels.len());
    }
    Ok(())
}

/// One CSV row per embedding: its row in the .npy, the image (path relative to an image folder, else
/// the row in the source), the split, and the label and class name where the data has labels.
fn write_index(path: &Path, splits: &[(&str, &Split)], dataset: &Dataset) -> Result<()> {
    let root = dataset.spec.strip_prefix("folder:").map(PathBuf::from);
    let mut writer = csv::Writer::from_path(path).with_context(|| format!("{}: cannot write", path.display()))?;
    writer.write_record(["row", "image", "split", "label", "class"])?;
    let mut row = 0usize;
    for (name, split) in splits {
        for i in 0..split.len() {
            let image = split.name(i);
            let image = match &root {
                Some(root) => Path::new(&image).strip_prefix(root).map_or(image.clone(), |p| p.display().to_string()),
                None => image,
            };
            let label = split.labels.as_ref().map(|l| l[i]);
            let class = label.and_then(|l| dataset.classes.get(l as usize)).cloned().unwrap_or_default();
            writer.write_record([row.to_string(), image, name.to_string(), label.map_or(String::new(), |l| l.to_string()), class])?;
            row += 1;
        }
    }
    writer.flush().with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
