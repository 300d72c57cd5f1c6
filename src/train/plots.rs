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

/// Draws named series of (x, y) points on one chart, as lines or as dots, with a legend.
fn plot(
    path: &Path,
    (title, x_label, y_label): (&str, &str, &str),
    (x_range, y_range): (std::ops::Range<f64>, std::ops::Range<f64>),
    series: &[(&str, Vec<(f64, f64)>)],
    lines: bool,
) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
    let colors = [RED, BLUE, GREEN, BLACK, MAGENTA];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        if lines {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        } else {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The range of one coordinate of all points, padded by `pad` of its width.
fn padded_range(series: &[(&str, Vec<(f64, f64)>)], coordinate: fn(&(f64, f64)) -> f64, pad: f64) -> Result<std::ops::Range<f64>> {
    let (lo, hi) = series.iter().flat_map(|(_, s)| s.iter()).map(coordinate).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    anyhow::ensure!(lo.is_finite(), "nothing to plot");
    let pad = ((hi - lo) * pad).max(1e-6);
    Ok(lo - pad..hi + pad)
}

/// A line chart of named series of (x, y) points from x = 0; with `log_y`, y is drawn as log10(y).
pub fn line_chart(path: &Path, title: &str, x_label: &str, log_y: bool, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    let transform = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let series: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(name, s)| (*name, s.iter().map(|&(x, y)| (x, transform(y))).collect())).collect();
    let y_range = padded_range(&series, |p| p.1, 0.05)?;
    let x_max = padded_range(&series, |p| p.0, 0.0)?.end.max(1e-9);
    plot(path, (title, x_label, if log_y { "log10" } else { "" }), (0.0..x_max, y_range), &series, true)
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

/// A scatter plot of named point sets against probe accuracy.
pub fn scatter(path: &Path, title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    let ranges = (padded_range(series, |p| p.0, 0.08)?, padded_range(series, |p| p.1, 0.08)?);
    plot(path, (title, x_label, "probe accuracy %"), ranges, series, false)
}
