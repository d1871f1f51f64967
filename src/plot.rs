//! Loss and accuracy curves, train vs test, as an SVG (plotters).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::EpochMetrics;

/// Reads one figure of an epoch.
type Metric = fn(&EpochMetrics) -> f64;

/// Draws two panels (loss, accuracy) of train and test curves per epoch into `path`,
/// atomically ([`crate::durable::write_atomic`]).
pub fn write_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let svg = curves_svg(history)?;
    crate::durable::write_atomic(path, svg.as_bytes()).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The SVG of [`write_curves`].
pub fn curves_svg(history: &[EpochMetrics]) -> Result<String> {
    let mut svg = String::new();
    let mut draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        let epochs = history.len().max(1) as f64;
        let series = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
            history.iter().map(|m| (m.epoch as f64, f(m))).collect()
        };
        let charts: [(&str, Metric, Metric); 2] = [
            ("loss", |m| m.train_loss, |m| m.test_loss),
            ("accuracy", |m| m.train_accuracy, |m| m.test_accuracy),
        ];
        for (area, (name, train, test)) in panels.iter().zip(charts) {
            let (train, test) = (series(train), series(test));
            let values = train
                .iter()
                .chain(&test)
                .map(|p| p.1)
                .filter(|v| v.is_finite());
            let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
            let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
            let pad = ((hi - lo) * 0.05).max(1e-6);
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.5..epochs + 0.5, (lo - pad)..(hi + pad))?;
            chart.configure_mesh().x_desc("epoch").y_desc(name).draw()?;
            for (label, points, color) in [("train", &train, BLUE), ("test", &test, RED)] {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Io {
        path: "curves.svg".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(svg)
}

/// One variant's runs (one per seed) for [`write_comparison`].
#[derive(Clone, Debug, Default)]
pub struct VariantRuns {
    pub name: String,
    /// Per seed, the epochs it completed.
    pub runs: Vec<Vec<EpochMetrics>>,
    /// Per seed, the epoch at which it diverged, if it did.
    pub diverged: Vec<Option<usize>>,
}

/// Matplotlib's tab10 colours: distinct, and legible on white.
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Per epoch, (mean, min, max) of `metric` over the runs that reached it.
fn band(runs: &[Vec<EpochMetrics>], metric: Metric) -> Vec<(f64, f64, f64, f64)> {
    let epochs = runs.iter().map(Vec::len).max().unwrap_or(0);
    (0..epochs)
        .filter_map(|e| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.get(e).map(metric))
                .filter(|v| v.is_finite())
                .collect();
            if values.is_empty() {
                return None;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some(((e + 1) as f64, mean, lo, hi))
        })
        .collect()
}

/// Draws test accuracy and training loss per epoch for each variant: the mean over seeds as a
/// line, the min–max band over seeds around it, and a cross where a run diverged.
pub fn write_comparison(path: &Path, variants: &[VariantRuns]) -> Result<()> {
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        let epochs = variants
            .iter()
            .flat_map(|v| {
                v.runs
                    .iter()
                    .map(Vec::len)
                    .chain(v.diverged.iter().flatten().copied())
            })
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let charts: [(&str, Metric, SeriesLabelPosition); 2] = [
            (
                "test accuracy",
                |m| m.test_accuracy,
                SeriesLabelPosition::LowerRight,
            ),
            // On a log scale: a diverging run's loss spans many orders of magnitude.
            (
                "training loss (log10)",
                |m| m.train_loss.log10(),
                SeriesLabelPosition::UpperRight,
            ),
        ];
        for (area, (name, metric, legend)) in panels.iter().zip(charts) {
            let bands: Vec<_> = variants.iter().map(|v| band(&v.runs, metric)).collect();
            let (lo, hi) = bands
                .iter()
                .flatten()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                    (a.min(p.2), b.max(p.3))
                });
            let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
            let pad = ((hi - lo) * 0.05).max(1e-6);
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.5..epochs + 0.5, (lo - pad)..(hi + pad))?;
            chart
                .configure_mesh()
                .x_labels((epochs as usize).min(20))
                .x_label_formatter(&|x| format!("{}", x.round() as i64))
                .x_desc("epoch")
                .y_desc(name)
                .draw()?;
            for (i, (variant, points)) in variants.iter().zip(&bands).enumerate() {
                let color = TAB10[i % TAB10.len()].to_rgba();
                if points.len() > 1 {
                    let polygon: Vec<(f64, f64)> = points
                        .iter()
                        .map(|p| (p.0, p.3))
                        .chain(points.iter().rev().map(|p| (p.0, p.2)))
                        .collect();
                    chart.draw_series(std::iter::once(Polygon::new(polygon, color.mix(0.15))))?;
                }
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(|p| (p.0, p.1)),
                        color.stroke_width(2),
                    ))?
                    .label(if variant.diverged.iter().any(Option::is_some) {
                        format!("{} (× diverged)", variant.name)
                    } else {
                        variant.name.clone()
                    })
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                // Diverged runs: a cross at the epoch they stopped, at the panel's top.
                let crosses = variant
                    .diverged
                    .iter()
                    .flatten()
                    .map(|&e| Cross::new((e as f64, hi), 6, color.stroke_width(2)));
                chart.draw_series(crosses)?;
            }
            chart
                .configure_series_labels()
                .position(legend)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}
