//! `lejepa sweep`: a grid of ordinary runs, one after the other; a killed sweep resumes where it
//! stopped (finished runs are kept, an interrupted one continues from its checkpoint).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};

use crate::data::Dataset;
use crate::cli::config_args::ConfigArgs;
use crate::train::config::Config;
use crate::train::pretrain;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Space-separated axes KEY=V1,V2,… over config keys, e.g. 'lambda=0.01,0.05 lr=5e-4,2e-3 epochs=1,2'.
    #[arg(long)]
    grid: String,
    /// Folder of the sweep; each run is a subfolder named after its grid values.
    #[arg(long, default_value = "sweeps/sweep")]
    out: PathBuf,
    /// Also rank the runs (as `lejepa select`) at the end, with this α.
    #[arg(long, default_value_t = 0.4)]
    alpha: f64,
}

/// `KEY=V1,V2` axes → every combination as (run name, [(key, value)]), in grid order.
pub fn combinations(grid: &str) -> Result<Vec<(String, Vec<(String, String)>)>> {
    let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
    for axis in grid.split_whitespace() {
        let (key, values) = axis.split_once('=').with_context(|| format!("--grid: '{axis}' is not KEY=V1,V2,…"))?;
        let values: Vec<&str> = values.split(',').filter(|v| !v.is_empty()).collect();
        ensure!(!values.is_empty(), "--grid: '{key}' has no values");
        combos = combos
            .into_iter()
            .flat_map(|combo| values.iter().map(move |v| [combo.clone(), vec![(key.to_string(), v.to_string())]].concat()))
            .collect();
    }
    ensure!(combos[0].len() > 0, "--grid is empty");
    Ok(combos
        .into_iter()
        .map(|combo| (combo.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("_").replace(['/', ':'], "-"), combo))
        .collect())
}

/// The config with grid values laid over it (numbers as TOML numbers, anything else as a string).
fn apply(config: &Config, combo: &[(String, String)]) -> Result<Config> {
    let mut config = config.clone();
    config.clear_replaced(|key| combo.iter().any(|(k, _)| k == key)); // as the flags of the same names do
    let mut table = toml::Table::try_from(&config)?;
    for (key, value) in combo {
        ensure!(table.contains_key(key) || ["max_steps", "steps", "warmup_steps", "final_probe_images"].contains(&key.as_str()), "--grid: unknown config key '{key}'");
        let parsed = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(value.clone()));
        table.insert(key.clone(), parsed);
    }
    let config: Config = table.try_into().context("--grid: a value does not fit its key")?;
    config.validate()?;
    Ok(config)
}

pub fn run(args: Args) -> Result<()> {
    let base = args.config.resolve()?;
    let combos = combinations(&args.grid)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut datasets: HashMap<String, Dataset> = HashMap::new();
    let mut run_dirs = Vec::new();
    for (i, (name, combo)) in combos.iter().enumerate() {
        let config = apply(&base, combo)?;
        let run_dir = args.out.join(name);
        run_dirs.push(run_dir.clone());
        let summary_path = run_dir.join("summary.json");
        let finished = std::fs::read_to_string(&summary_path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|s| s["interrupted"] == false);
        if finished {
            eprintln!("[{}/{}] {name}: done already", i + 1, combos.len());
            continue;
        }
        if !datasets.contains_key(&config.data) {
            datasets.insert(config.data.clone(), args.config.data.open(&config.data)?);
        }
        let resume = run_dir.join("checkpoint.safetensors").exists();
        std::fs::create_dir_all(&run_dir)?;
        eprintln!("[{}/{}] {name}{}", i + 1, combos.len(), if resume { ": resuming" } else { "" });
        let summary = pretrain(&config, &run_dir, resume, &datasets[&config.data], None)?;
        if summary.interrupted {
            eprintln!("sweep interrupted; run the same command again to continue");
            return Ok(());
        }
    }
    super::select::report(&run_dirs, args.alpha, Some(&args.out.join("select.png")), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_the_cartesian_product_in_order() {
        let combos = combinations("lambda=0.01,0.05 lr=5e-4,2e-3").unwrap();
        let names: Vec<&str> = combos.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["lambda=0.01_lr=5e-4", "lambda=0.01_lr=2e-3", "lambda=0.05_lr=5e-4", "lambda=0.05_lr=2e-3"]);
        let config = apply(&Config::preset("cpu-small").unwrap(), &combos[3].1).unwrap();
        assert_eq!((config.lambda, config.lr), (0.05, 2e-3));
        let config = apply(&Config::preset("cpu-small").unwrap(), &[("arch".into(), "resnet18-small".into())]).unwrap();
        assert_eq!(config.arch, "resnet18-small");
        assert!(apply(&Config::preset("cpu-small").unwrap(), &[("lamda".into(), "0.1".into())]).is_err());
        // A grid over epochs replaces the default preset's step-counted schedule; one over steps keeps it.
        let default = Config::preset("default").unwrap();
        assert!(default.steps.is_some());
        let config = apply(&default, &[("epochs".into(), "2".into())]).unwrap();
        assert_eq!((config.epochs, config.steps, config.warmup_steps), (2, None, None));
        assert_eq!(apply(&default, &[("steps".into(), "50".into())]).unwrap().steps, Some(50));
        assert!(combinations("lambda").is_err());
    }
}
