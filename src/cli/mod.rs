//! The `lejepa` command line: one module per subcommand. Every command that reports numbers has
//! `--json`, and then the last line of stdout is one JSON object.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
pub mod data_args;
mod diagnose;
mod embed;
mod model_args;
mod pretrain;
mod probe;
mod select;
mod sweep;
mod views;

#[derive(Parser)]
#[command(name = "lejepa", version, about = "LeJEPA self-supervised image pretraining on libtorch")]
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SIGReg statistic, per-dimension moments and covariance spectrum of an N×K .npy of embeddings.
    Diagnose(diagnose::Args),
    /// Pretrain an encoder with LeJEPA (default: the cpu-small preset on Fashion-MNIST).
    Pretrain(pretrain::Args),
    /// Frozen-backbone evaluation: linear probe, few-shot, k-NN, with pixel and random-init baselines.
    Probe(probe::Args),
    /// Write a frozen backbone's embeddings of a dataset split as .npy (+ labels).
    Embed(embed::Args),
    /// Run a grid of pretraining runs (resumable), then rank them as `select` does.
    Sweep(sweep::Args),
    /// Choose among runs without labels: rank by final training loss / λ^α.
    Select(select::Args),
    /// Benchmark against the PyTorch reference on the same shapes and threads (ratios, memory, % of GEMM peak).
    Bench(bench::Args),
    /// Draw the training views of some images: each row an image, its global then local views.
    Views(views::Args),
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Diagnose(args) => diagnose::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Views(args) => views::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Select(args) => select::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
