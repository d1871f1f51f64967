//! Loss and accuracy curves, train vs test, as an SVG (plotters).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;

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

/// One variant's runs (one per seed) for [`comparison_svg`].
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

/// Where the loss axis ends: at `highest`, the largest value drawn, unless that lies more than
/// one decade (or the spread of the bulk of the curves, if that is more) above the 90th
/// percentile of the curves' `means`. A few exploding epochs then leave the axis alone; they
/// are drawn at its top edge.
fn loss_axis_top(means: &[f64], highest: f64) -> f64 {
    let mut sorted: Vec<f64> = means.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return highest;
    }
    sorted.sort_by(f64::total_cmp);
    let bulk = sorted[(sorted.len() - 1) * 9 / 10];
    highest.min(bulk + (bulk - sorted[0]).max(1.0))
}

/// A panel of [`comparison_svg`]: its title, what it plots, where a diverged run's cross
/// sits, and whether a few exploding values may lie beyond its axis.
struct Panel {
    name: &'static str,
    metric: Metric,
    crosses_on_top: bool,
    clipped: bool,
}

const PANELS: [Panel; 2] = [
    Panel {
        name: "test accuracy",
        metric: |m| m.test_accuracy,
        crosses_on_top: false,
        clipped: false,
    },
    // On a log scale: a diverging run's loss spans many orders of magnitude.
    Panel {
        name: "training loss (log10)",
        metric: |m| m.train_loss.log10(),
        crosses_on_top: true,
        clipped: true,
    },
];

/// A panel's data: per variant, its (epoch, mean, min, max) points, and the axis's ends.
struct Axis {
    bands: Vec<Vec<(f64, f64, f64, f64)>>,
    bottom: f64,
    ceiling: f64,
}

impl Axis {
    fn new(variants: &[VariantRuns], panel: &Panel) -> std::result::Result<Self, String> {
        let bands: Vec<_> = variants
            .iter()
            .map(|v| band(&v.runs, panel.metric))
            .collect();
        let values: Vec<f64> = bands
            .iter()
            .flatten()
            .flat_map(|p| [p.1, p.2, p.3])
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if panel.clipped {
            let means: Vec<f64> = bands.iter().flatten().map(|p| p.1).collect();
            hi = loss_axis_top(&means, hi);
        }
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.05).max(1e-6);
        let (bottom, ceiling) = (lo - pad, hi + pad);
        if !(ceiling - bottom).is_finite() {
            return Err(format!(
                "{}: values from {lo:e} to {hi:e} span no drawable range",
                panel.name
            ));
        }
        Ok(Self {
            bands,
            bottom,
            ceiling,
        })
    }

    /// Whether a mean lies above the axis, drawn on its edge.
    fn beyond(&self) -> bool {
        self.bands.iter().flatten().any(|p| p.1 > self.ceiling)
    }
}

/// Canvas width, and the height of the two panels above the legend.
const COMPARISON_SIZE: (u32, u32) = (1200, 440);
/// A legend row's height, and the width of a character of its 14-pixel text (an estimate:
/// SVG leaves the font to the viewer).
const LEGEND_ROW: i32 = 22;
const LEGEND_CHAR: f64 = 7.5;

/// [`comparison_svg`] written to `path` atomically ([`crate::durable::write_atomic`]).
pub fn write_comparison(path: &Path, variants: &[VariantRuns]) -> Result<()> {
    let svg = comparison_svg(variants)?;
    crate::durable::write_atomic(path, svg.as_bytes()).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Test accuracy and training loss (log10) per epoch for each variant: the mean over seeds as
/// a line, the min–max band over seeds around it, a cross on the panel's edge at the epoch
/// where a run diverged (on the accuracy panel's floor, the loss panel's ceiling). Neither
/// the crosses nor a few exploding losses stretch an axis: the loss axis ends one decade above
/// the bulk of the values and what lies beyond is drawn on its edge,
/// marked ▲. The legend sits below the panels, off the curves.
pub fn comparison_svg(variants: &[VariantRuns]) -> Result<String> {
    let fail = |message: String| Error::Io {
        path: "curves.svg".into(),
        source: std::io::Error::other(message),
    };
    let axes = PANELS
        .iter()
        .map(|panel| Axis::new(variants, panel))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(fail)?;
    let labels: Vec<String> = variants
        .iter()
        .map(|v| {
            let diverged = v.diverged.iter().filter(|d| d.is_some()).count();
            if diverged > 0 {
                format!("{} (× {diverged} of {} diverged)", v.name, v.diverged.len())
            } else {
                v.name.clone()
            }
        })
        .collect();
    let mut notes = Vec::new();
    if variants
        .iter()
        .any(|v| v.diverged.iter().any(Option::is_some))
    {
        notes.push(Mark::Cross);
    }
    if axes.iter().any(Axis::beyond) {
        notes.push(Mark::Beyond);
    }
    let (width, panels_height) = COMPARISON_SIZE;
    let legend = Legend::new(&labels, &notes, width);
    let mut svg = String::new();
    let mut draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let size = (width, panels_height + legend.height() as u32);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(panels_height);
        let panels = top.split_evenly((1, 2));
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
        for ((area, panel), axis) in panels.iter().zip(&PANELS).zip(&axes) {
            let (floor, ceiling) = (axis.bottom, axis.ceiling);
            let mut chart = ChartBuilder::on(area)
                .caption(panel.name, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.5..epochs + 0.5, floor..ceiling)?;
            chart
                .configure_mesh()
                .x_labels((epochs as usize).min(20))
                .x_label_formatter(&|x| format!("{}", x.round() as i64))
                .x_desc("epoch")
                .y_desc(panel.name)
                .draw()?;
            let clamp = |y: f64| y.min(ceiling);
            for (i, (variant, points)) in variants.iter().zip(&axis.bands).enumerate() {
                let color = TAB10[i % TAB10.len()].to_rgba();
                if points.len() > 1 {
                    let polygon: Vec<(f64, f64)> = points
                        .iter()
                        .map(|p| (p.0, clamp(p.3)))
                        .chain(points.iter().rev().map(|p| (p.0, clamp(p.2))))
                        .collect();
                    chart.draw_series(std::iter::once(Polygon::new(polygon, color.mix(0.15))))?;
                }
                chart.draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, clamp(p.1))),
                    color.stroke_width(2),
                ))?;
                let beyond = points
                    .iter()
                    .filter(|p| p.1 > ceiling)
                    .map(|p| TriangleMarker::new((p.0, ceiling), 6, color.filled()));
                chart.draw_series(beyond)?;
                let edge = if panel.crosses_on_top { ceiling } else { floor };
                let crosses = variant
                    .diverged
                    .iter()
                    .flatten()
                    .map(|&e| Cross::new((e as f64, edge), 6, color.stroke_width(2)));
                chart.draw_series(crosses)?;
            }
        }
        legend.draw(&bottom)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| fail(e.to_string()))?;
    Ok(svg)
}

/// A mark the legend explains.
#[derive(Clone, Copy)]
enum Mark {
    Cross,
    Beyond,
}

/// The variants' colours and names in columns below the panels, then the marks used.
struct Legend<'a> {
    labels: &'a [String],
    marks: &'a [Mark],
    column: i32,
    columns: i32,
}

impl<'a> Legend<'a> {
    fn new(labels: &'a [String], marks: &'a [Mark], width: u32) -> Self {
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let column = 40 + (longest as f64 * LEGEND_CHAR) as i32;
        let columns = ((width as i32 - 40) / column.max(1)).clamp(1, 4);
        Self {
            labels,
            marks,
            column,
            columns,
        }
    }

    fn rows(&self) -> i32 {
        (self.labels.len() as i32 + self.columns - 1) / self.columns
    }

    fn height(&self) -> i32 {
        20 + (self.rows() + i32::from(!self.marks.is_empty())) * LEGEND_ROW
    }

    fn draw(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let font = ("sans-serif", 14).into_font();
        for (i, label) in self.labels.iter().enumerate() {
            let color = TAB10[i % TAB10.len()].to_rgba();
            let i = i as i32;
            let (x, y) = (
                20 + (i % self.columns) * self.column,
                14 + (i / self.columns) * LEGEND_ROW,
            );
            area.draw(&PathElement::new(
                vec![(x, y + 7), (x + 24, y + 7)],
                color.stroke_width(3),
            ))?;
            area.draw(&Text::new(label.as_str(), (x + 32, y), font.clone()))?;
        }
        let y = 14 + self.rows() * LEGEND_ROW;
        let note = font.color(&BLACK.mix(0.7));
        let mut x = 27;
        for mark in self.marks {
            let text = match mark {
                Mark::Cross => {
                    area.draw(&Cross::new((x, y + 7), 5, BLACK.stroke_width(2)))?;
                    "a run diverged in this epoch"
                }
                Mark::Beyond => {
                    area.draw(&TriangleMarker::new((x, y + 7), 5, BLACK.filled()))?;
                    "a mean loss above the axis, which ends one decade above the bulk of the losses"
                }
            };
            area.draw(&Text::new(text, (x + 13, y), note.clone()))?;
            x += 20 + (text.chars().count() as f64 * LEGEND_CHAR) as i32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, train_loss: f64, test_accuracy: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss,
            train_accuracy: test_accuracy,
            test_loss: train_loss,
            test_accuracy,
            seconds: 0.0,
            samples_per_second: 0.0,
            step: 0,
        }
    }

    #[test]
    fn an_exploding_loss_leaves_the_loss_axis_to_the_other_curves() {
        // Mean losses of 0.1–2.44 and one of 4e16 (log10 16.6): the axis ends above every
        // loss but the outlier, far below it.
        let mut means: Vec<f64> = (0..40).map(|i| (0.1 + 0.06 * i as f64).log10()).collect();
        means.push(4e16f64.log10());
        let top = loss_axis_top(&means, means[40]);
        assert!(means[..40].iter().all(|&v| v < top) && top < 2.0, "{top}");
        // Without an outlier the axis ends at the largest value drawn.
        means.pop();
        assert_eq!(loss_axis_top(&means, 0.5), 0.5);
        assert_eq!(loss_axis_top(&[], 0.5), 0.5);
    }

    #[test]
    fn the_comparison_marks_divergence_on_the_edge_and_keeps_the_legend_below() {
        let ok = VariantRuns {
            name: "steady".into(),
            runs: vec![
                vec![epoch(1, 0.5, 0.8), epoch(2, 0.3, 0.9)],
                vec![epoch(1, 0.6, 0.7), epoch(2, 0.4, 0.85)],
            ],
            diverged: vec![None, None],
        };
        let wild = VariantRuns {
            name: "wild".into(),
            runs: vec![vec![epoch(1, 4e16, 0.1)], vec![]],
            diverged: vec![Some(2), Some(1)],
        };
        let svg = comparison_svg(&[ok, wild]).unwrap();
        // Every text of the SVG with its y: `<text x=".." y=".." …>\nTEXT\n</text>`.
        let texts: Vec<(f64, &str)> = svg
            .split("<text ")
            .skip(1)
            .map(|t| {
                let y = t.split("y=\"").nth(1).unwrap();
                let y = y[..y.find('"').unwrap()].parse().unwrap();
                let body = &t[t.find(">\n").unwrap() + 2..t.find("\n</text>").unwrap()];
                (y, body)
            })
            .collect();
        let y_of = |label: &str| texts.iter().find(|t| t.1 == label).map(|t| t.0);
        // The legend lies below the panels, and says what the crosses mean.
        for label in [
            "steady",
            "wild (× 2 of 2 diverged)",
            "a run diverged in this epoch",
        ] {
            let y = y_of(label).unwrap_or_else(|| panic!("{label}: {svg}"));
            assert!(y > COMPARISON_SIZE.1 as f64, "{label} at {y}");
        }
        assert!(
            y_of("a mean loss above the axis, which ends one decade above the bulk of the losses")
                .is_some()
        );
        // No axis reaches the exploding loss (log10 16.6): every tick label stays small.
        let ticks: Vec<f64> = texts
            .iter()
            .filter(|t| t.1.contains('.'))
            .filter_map(|t| t.1.parse().ok())
            .collect();
        assert!(
            !ticks.is_empty() && ticks.iter().all(|&t| t < 3.0),
            "{ticks:?}"
        );
        // Extreme values are refused, not drawn forever.
        let absurd = VariantRuns {
            name: "absurd".into(),
            runs: vec![vec![epoch(1, 1.0, -1e308), epoch(2, 1.0, 1e308)]],
            diverged: vec![None],
        };
        let err = comparison_svg(&[absurd]).unwrap_err().to_string();
        assert!(err.contains("no drawable range"), "{err}");
    }
}
