//! `lejepa diagnose EMB.npy`: how Gaussian and how spread out a set of embeddings is, from any model.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use serde_json::json;

use crate::diagnostics::spectrum;
use crate::sigreg::{NormalityTest, Reduction, SigReg, TEST_NAMES};
use crate::npy;

#[derive(clap::Args)]
pub struct Args {
    /// N×K float32/float64 .npy of embeddings (one row per sample).
    embeddings: PathBuf,
    /// Univariate normality test applied to each slice.
    #[arg(long, default_value = "epps-pulley", value_parser = clap::builder::PossibleValuesParser::new(TEST_NAMES))]
    test: String,
    /// Number of random unit directions M.
    #[arg(long, default_value_t = 1024)]
    slices: i64,
    /// Seed of the directions (with --step).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Step whose directions are drawn (training draws fresh directions every step).
    #[arg(long, default_value_t = 0)]
    step: u64,
    /// Epps–Pulley integration bound: t ∈ [0, t_max].
    #[arg(long, default_value_t = 3.0)]
    t_max: f64,
    /// Epps–Pulley quadrature nodes on [0, t_max] (odd).
    #[arg(long, default_value_t = 17)]
    knots: usize,
    /// A fixed K×M .npy of directions instead of random ones (columns are used as given).
    #[arg(long)]
    directions: Option<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let embeddings = npy::read_matrix(&args.embeddings)?;
    let (n, dim) = (embeddings.size()[0], embeddings.size()[1]);
    ensure!(n >= 2, "{}: needs at least 2 rows (samples), found {n}", args.embeddings.display());
    let test = NormalityTest::from_name(&args.test, args.t_max, args.knots)?;
    let mut sigreg = SigReg { test, slices: args.slices, seed: args.seed, reduction: Reduction::Mean };
    let statistic = match &args.directions {
        Some(path) => {
            let directions = npy::read_matrix(path)?;
            ensure!(
                directions.size()[0] == dim,
                "{}: directions must have {dim} rows (the embedding dimension), found shape {:?}",
                path.display(),
                directions.size()
            );
            sigreg.slices = directions.size()[1];
            sigreg.forward_with_directions(&embeddings, &directions)
        }
        None => {
            ensure!(args.slices >= 1, "--slices must be at least 1");
            sigreg.forward(&embeddings, args.step)
        }
    }
    .double_value(&[]);
    let spectrum = spectrum(&embeddings);

    if args.json {
        println!(
            "{}",
            json!({
                "sigreg": statistic, "test": test.name(), "slices": sigreg.slices, "n": n, "dim": dim,
                "effective_rank": spectrum.effective_rank, "correlation_effective_rank": spectrum.correlation_effective_rank,
                "eigenvalues": spectrum.eigenvalues,
                "mean": spectrum.mean, "std": spectrum.std,
            })
        );
        return Ok(());
    }
    println!("{}: {n} embeddings of dimension {dim}", args.embeddings.display());
    let source = match &args.directions {
        Some(path) => format!("directions from {}", path.display()),
        None => format!("seed {}, step {}", args.seed, args.step),
    };
    println!("SIGReg ({}, {} slices, {source}): {statistic:.4}", test.name(), sigreg.slices);
    if let NormalityTest::EppsPulley(ep) = test {
        println!(
            "  Epps–Pulley t_max {}, {} knots; ≈1.05 for isotropic N(0,1) embeddings, ≈{:.0} (0.40·N) when collapsed",
            ep.t_max, ep.knots, crate::diagnostics::collapsed_sigreg(n)
        );
    }
    let summary = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!("min {min:.4}, mean {:.4}, max {max:.4}", v.iter().sum::<f64>() / v.len() as f64)
    };
    println!("per-dimension mean: {}", summary(&spectrum.mean));
    println!("per-dimension std:  {}", summary(&spectrum.std));
    let shown: Vec<String> = spectrum.eigenvalues.iter().take(10).map(|e| format!("{e:.4}")).collect();
    println!("covariance eigenvalues (largest {} of {dim}): {}", shown.len(), shown.join(" "));
    println!("effective rank: {:.2} of {dim} (covariance), {:.2} (correlation: every dimension at unit variance)", spectrum.effective_rank, spectrum.correlation_effective_rank);
    Ok(())
}
