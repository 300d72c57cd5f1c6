//! PNG plots of a run's curves, drawn from its metrics.jsonl: the loss terms per step and the
//! online probe accuracy per epoch.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// plotters' ab_glyph backend needs a font registered once, as 'static bytes.
fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        std::fs::read(FONT).ok().is_some_and(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    });
    anyhow::ensure!(ok, "font {FONT} not found (Debian package fonts-dejavu-core)");
    Ok(())
}

/// A line chart of named series of (x, y) points; with `log_y`, y is drawn as log10(y).
pub fn line_chart(path: &Path, title: &str, x_label: &str, log_y: bool, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    register_font()?;
    let transform = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let series: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(name, s)| (*name, s.iter().map(|&(x, y)| (x, transform(y))).collect())).collect();
    let (mut x_max, mut y_min, mut y_max) = (1e-9f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in series.iter().flat_map(|(_, s)| s.iter()) {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    anyhow::ensure!(y_min.is_finite(), "nothing to plot");
    let pad = ((y_max - y_min) * 0.05).max(1e-6);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, y_min - pad..y_max + pad)?;
    chart.configure_mesh().x_desc(x_label).y_desc(if log_y { "log10" } else { "" }).draw()?;
    let colors = [RED, BLUE, GREEN, BLACK, MAGENTA];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// curves.png (loss, invariance, SIGReg per step) and probe.png (online probe accuracy per step).
pub fn draw(metrics: &Path, run_dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics)?;
    let (mut loss, mut invariance, mut sigreg, mut probe) = (vec![], vec![], vec![], vec![]);
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        let step = record["step"].as_f64().unwrap_or(0.0);
        if let Some(acc) = record["probe_accuracy"].as_f64() {
            probe.push((step, 100.0 * acc));
        } else if let (Some(l), Some(i), Some(s)) = (record["loss"].as_f64(), record["invariance"].as_f64(), record["sigreg"].as_f64()) {
            loss.push((step, l));
            invariance.push((step, i));
            sigreg.push((step, s));
        }
    }
    line_chart(&run_dir.join("curves.png"), "LeJEPA training loss", "step", true, &[("loss", loss), ("invariance", invariance), ("SIGReg", sigreg)])?;
    if !probe.is_empty() {
        line_chart(&run_dir.join("probe.png"), "online linear probe accuracy (%)", "step", false, &[("test accuracy", probe)])?;
    }
    Ok(())
}

/// A scatter plot of named point sets.
pub fn scatter(path: &Path, title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    register_font()?;
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    anyhow::ensure!(!points.is_empty(), "nothing to plot");
    let bounds = |f: fn(&(f64, f64)) -> f64| {
        let (lo, hi) = points.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let pad = ((hi - lo) * 0.08).max(1e-3);
        lo - pad..hi + pad
    };
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(bounds(|p| p.0), bounds(|p| p.1))?;
    chart.configure_mesh().x_desc(x_label).y_desc("probe accuracy %").draw()?;
    let colors = [RED, BLUE, GREEN, BLACK];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?
            .label(*name)
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
