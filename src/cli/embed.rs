//! `lejepa embed`: the frozen backbone's embeddings of a dataset (or its projector's outputs), as
//! .npy for use elsewhere (`lejepa diagnose` reads them).

use std::path::PathBuf;

use anyhow::Result;
use tch::{Device, Tensor};

use super::data_args::DataArgs;
use super::model_args::{ModelArgs, fit_channels};
use crate::eval::{FeatureKind, features};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SplitName {
    Train,
    Test,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Which split to embed.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitName,
    /// Output .npy (N × D float32); labels, when present, go to <stem>_labels.npy.
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
    let dataset = args.data.open(&default_data)?;
    let model = args.model.load(&dataset, false)?;
    let split = match args.split {
        SplitName::Train => &dataset.train,
        SplitName::Test => &dataset.test,
    };
    anyhow::ensure!(!split.is_empty(), "{}: the {:?} split is empty", dataset.spec, args.split);
    let kind = if args.probe_features { FeatureKind::Probe } else { FeatureKind::Embedding };
    let mut embeddings = features(&model.encoder.backbone, &fit_channels(split, &model), &model.crop, kind, model.device)?;
    if args.projector {
        let projector = args.model.trained_projector(model.encoder.backbone.embed_dim(), model.device)?;
        embeddings = tch::no_grad(|| projector.forward(&embeddings.to_device(model.device), false)).to_device(Device::Cpu);
    }
    crate::npy::write(&embeddings, &args.out)?;
    println!("{}: {} embeddings of dimension {}", args.out.display(), embeddings.size()[0], embeddings.size()[1]);
    if let Some(labels) = &split.labels {
        let stem = args.out.file_stem().unwrap_or_default().to_string_lossy().to_string();
        let path = args.out.with_file_name(format!("{stem}_labels.npy"));
        crate::npy::write(&Tensor::from_slice(labels), &path)?;
        println!("{}: {} labels", path.display(), labels.len());
    }
    Ok(())
}
