//! The `lejepa` command line: one module per subcommand. Every command that reports numbers has
//! `--json`, and then the last line of stdout is one JSON object.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
pub mod config_args;
pub mod data_args;
mod diagnose;
mod embed;
mod export;
mod model_args;
mod pretrain;
pub mod probe;
mod select;
mod sweep;
mod views;
mod visualize;

#[derive(Parser)]
#[command(name = "lejepa", version, about = "LeJEPA self-supervised image pretraining on libtorch")]
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain an encoder with LeJEPA (default: a 20-minute job on Fashion-MNIST; --data folder:PATH for your images).
    Pretrain(pretrain::Args),
    /// Draw the training views of some images: each row an image, its global then local views.
    Views(views::Args),
    /// Frozen-backbone evaluation: linear probe, few-shot, k-NN, with pixel and random-init baselines.
    Probe(probe::Args),
    /// Write a frozen backbone's embeddings of a dataset split as .npy (+ labels).
    Embed(embed::Args),
    /// Write a backbone as a model folder timm and the Hugging Face hub load (model.safetensors, config.json, model card).
    Export(export::Args),
    /// Picture what a backbone learned: PCA of patch features as RGB, ViT attention, nearest neighbours.
    Visualize(visualize::Args),
    /// SIGReg statistic, per-dimension moments and covariance spectrum of an N×K .npy of embeddings.
    Diagnose(diagnose::Args),
    /// Run a grid of pretraining runs (resumable), then rank them as `select` does.
    Sweep(sweep::Args),
    /// Choose among runs without labels: rank by final training loss / λ^α.
    Select(select::Args),
    /// Benchmark against the PyTorch reference on the same shapes and threads (ratios, memory, % of GEMM peak).
    Bench(bench::Args),
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Diagnose(args) => diagnose::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Views(args) => views::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Export(args) => export::run(args),
        Command::Visualize(args) => visualize::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Select(args) => select::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap attaches a doc comment to the next field only: every option of every subcommand needs its own,
    /// and the subcommands are listed in the order of a workflow.
    #[test]
    fn every_option_of_every_subcommand_has_a_help_line() {
        let cli = super::Cli::command();
        let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        assert_eq!(names, ["pretrain", "views", "probe", "embed", "export", "visualize", "diagnose", "sweep", "select", "bench"]);
        let mut bare = Vec::new();
        for sub in cli.get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no description", sub.get_name());
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    bare.push(format!("{} {}", sub.get_name(), arg.get_long().map_or(arg.get_id().to_string(), |l| format!("--{l}"))));
                }
            }
        }
        assert!(bare.is_empty(), "options without a help line: {bare:?}");
    }
}
