//! The summary: per variant, over its seeds, the final test accuracy (mean ± std), the best
//! epoch, the epochs to the target accuracy, the train − test gap and the runs that
//! diverged, as a Markdown table; and, when results are missing, which.

use std::fmt::Write as _;

use wgnn::plot::VariantRuns;

use super::results::RunRecord;
use super::schema::Experiment;

/// The file the table is written to, beside results.csv.
pub const SUMMARY_FILE: &str = "summary.md";

/// Where one run of the experiment stands in its results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Every epoch.
    Complete,
    /// Stopped by a NaN or infinite loss in this epoch.
    Diverged(usize),
    /// Rows up to epoch `epochs` of `of`, and no divergence: cut short.
    Stopped { epochs: usize, of: usize },
    /// No row at all.
    Missing,
}

/// The experiment's runs as the results hold them: per variant, per seed.
pub struct Overview {
    pub states: Vec<Vec<RunState>>,
    /// What the curves draw: every epoch there is.
    pub curves: Vec<VariantRuns>,
}

impl Overview {
    pub fn new(experiment: &Experiment, records: &[RunRecord]) -> Self {
        let mut states = Vec::new();
        let mut curves = Vec::new();
        for v in &experiment.variants {
            let mut runs = VariantRuns {
                name: v.name.clone(),
                ..VariantRuns::default()
            };
            let mut row = Vec::new();
            for &seed in &experiment.seeds {
                let record = records
                    .iter()
                    .find(|r| r.variant == v.name && r.seed == seed);
                let epochs: Vec<_> = record
                    .map(|r| r.epochs.iter().map(|e| e.metrics).collect())
                    .unwrap_or_default();
                let diverged = record.and_then(|r| r.diverged);
                row.push(match (record, diverged) {
                    (None, _) => RunState::Missing,
                    (_, Some(e)) => RunState::Diverged(e),
                    _ if epochs.len() >= v.epochs() => RunState::Complete,
                    _ => RunState::Stopped {
                        epochs: epochs.len(),
                        of: v.epochs(),
                    },
                });
                runs.runs.push(epochs);
                runs.diverged.push(diverged);
            }
            states.push(row);
            curves.push(runs);
        }
        Self { states, curves }
    }

    /// Runs with all their results (every epoch, or a divergence).
    pub fn finished(&self) -> usize {
        self.states
            .iter()
            .flatten()
            .filter(|s| matches!(s, RunState::Complete | RunState::Diverged(_)))
            .count()
    }

    pub fn total(&self) -> usize {
        self.states.iter().map(Vec::len).sum()
    }

    /// Which runs have no results or only some, in one sentence; `None` when none.
    pub fn incomplete(&self, experiment: &Experiment) -> Option<String> {
        const SHOWN: usize = 10;
        let mut missing = Vec::new();
        let mut stopped = Vec::new();
        for (v, row) in experiment.variants.iter().zip(&self.states) {
            for (&seed, state) in experiment.seeds.iter().zip(row) {
                match state {
                    RunState::Missing => missing.push(format!("{} · seed {seed}", v.name)),
                    RunState::Stopped { epochs, of } => {
                        stopped.push(format!("{} · seed {seed} (epoch {epochs} of {of})", v.name))
                    }
                    _ => {}
                }
            }
        }
        if missing.is_empty() && stopped.is_empty() {
            return None;
        }
        let list = |what: &str, runs: &[String]| {
            let more = runs.len().saturating_sub(SHOWN);
            let mut text = format!("{what} {}", runs[..runs.len().min(SHOWN)].join(", "));
            if more > 0 {
                let _ = write!(text, " and {more} more");
            }
            text
        };
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(list("no results for", &missing));
        }
        if !stopped.is_empty() {
            parts.push(list("cut short:", &stopped));
        }
        Some(format!(
            "incomplete: {} of {} runs have all their results; {}",
            self.finished(),
            self.total(),
            parts.join("; ")
        ))
    }
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The table, per variant over the seeds whose runs finished (a diverged run's epochs count
/// up to its divergence; a run cut short counts nowhere), then a line naming the runs
/// without all their results, if any.
pub fn table(experiment: &Experiment, overview: &Overview) -> String {
    let target = experiment.target_accuracy;
    let mut out = String::new();
    let reach = target.map_or("epochs to target".to_string(), |t| {
        format!("epochs to {:.1} %", 100.0 * t)
    });
    let _ = writeln!(
        out,
        "| variant | final test accuracy (mean ± std) | best epoch | {reach} | train − test gap | diverged |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (v, states) in overview.curves.iter().zip(&overview.states) {
        let counted = |i: usize| matches!(states[i], RunState::Complete | RunState::Diverged(_));
        let complete: Vec<_> = (0..states.len())
            .filter(|&i| states[i] == RunState::Complete)
            .filter_map(|i| v.runs[i].last())
            .collect();
        let finals: Vec<f64> = complete.iter().map(|m| m.test_accuracy).collect();
        let gaps: Vec<f64> = complete
            .iter()
            .map(|m| m.train_accuracy - m.test_accuracy)
            .collect();
        let epochs = (0..states.len())
            .filter(|&i| counted(i))
            .map(|i| v.runs[i].len())
            .max()
            .unwrap_or(0);
        let mean_at = |e: usize| {
            let vals: Vec<f64> = (0..states.len())
                .filter(|&i| counted(i))
                .filter_map(|i| v.runs[i].get(e))
                .map(|m| m.test_accuracy)
                .collect();
            (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
        };
        let best = (0..epochs)
            .filter_map(|e| mean_at(e).map(|a| (e + 1, a)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("—".into(), |(e, _)| e.to_string());
        let reached = target
            .and_then(|t| (0..epochs).find(|&e| mean_at(e).is_some_and(|a| a >= t)))
            .map_or("—".into(), |e| (e + 1).to_string());
        let mut accuracy = if finals.is_empty() {
            "—".to_string()
        } else {
            let (m, s) = mean_std(&finals);
            format!("{:.2} % ± {:.2}", 100.0 * m, 100.0 * s)
        };
        let unfinished = (0..states.len()).filter(|&i| !counted(i)).count();
        if unfinished > 0 {
            let _ = write!(
                accuracy,
                " ({} of {} seeds finished)",
                states.len() - unfinished,
                states.len()
            );
        }
        let gap = if gaps.is_empty() {
            "—".to_string()
        } else {
            format!("{:+.2} pt", 100.0 * mean_std(&gaps).0)
        };
        let diverged = v.diverged.iter().filter(|d| d.is_some()).count();
        let _ = writeln!(
            out,
            "| {} | {accuracy} | {best} | {reached} | {gap} | {diverged}/{} |",
            v.name.replace('|', "\\|"),
            states.len()
        );
    }
    if let Some(note) = overview.incomplete(experiment) {
        let _ = writeln!(out, "\n**{note}**");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cli::compare::results::parse;

    #[test]
    fn missing_and_cut_short_runs_are_named_and_left_out_of_the_means() {
        let e = Experiment::parse(
            Path::new("e.toml"),
            "name = \"e\"\nseeds = [0, 1, 2]\n[base]\nepochs = 2\n[grid]\nlr = [0.1, 0.2]\n",
        )
        .unwrap();
        let csv = "variant,seed,epoch,train_loss,train_accuracy,test_loss,test_accuracy,diverged,single_signed_share\n\
                   lr=0.1,0,1,0.5,0.8,0.4,0.85,0,\n\
                   lr=0.1,0,2,0.3,0.9,0.3,0.931,0,\n\
                   lr=0.1,1,1,0.5,0.8,0.4,0.5,0,\n\
                   lr=0.2,2,1,nan,,,,1,\n";
        let records = parse(Path::new("r.csv"), csv.as_bytes(), &e).unwrap();
        let overview = Overview::new(&e, &records);
        assert_eq!(
            overview.states,
            [
                vec![
                    RunState::Complete,
                    RunState::Stopped { epochs: 1, of: 2 },
                    RunState::Missing
                ],
                vec![RunState::Missing, RunState::Missing, RunState::Diverged(1)],
            ]
        );
        let table = table(&e, &overview);
        // Seed 1's one epoch (50 %) is in no figure: the mean is seed 0's alone.
        assert!(
            table.contains(
                "| lr=0.1 | 93.10 % ± 0.00 (1 of 3 seeds finished) | 2 | — | -3.10 pt | 0/3 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| lr=0.2 | — (1 of 3 seeds finished) | — | — | — | 1/3 |"),
            "{table}"
        );
        assert!(
            table.ends_with(
                "**incomplete: 2 of 6 runs have all their results; no results for lr=0.1 · seed 2, \
                 lr=0.2 · seed 0, lr=0.2 · seed 1; cut short: lr=0.1 · seed 1 (epoch 1 of 2)**\n"
            ),
            "{table}"
        );
    }
}
