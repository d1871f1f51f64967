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
