//! `results.csv`: a row per (variant, seed, epoch) and one per diverged run, written and read
//! through the `csv` crate. A run's own rows, with the header, are also its `result.csv`:
//! the record that it is done, from which `results.csv` is put together.

use std::path::Path;

use wgnn::metrics::EpochMetrics;

use super::schema::{Experiment, bad};
use crate::cli::error::Result;

/// The experiment's results, beside the experiment.
pub const RESULTS_FILE: &str = "results.csv";
/// One run's rows, in its own directory: written when the run ends, trained or diverged.
pub const RUN_RESULT_FILE: &str = "result.csv";
/// The columns of both.
pub const HEADER: [&str; 9] = [
    "variant",
    "seed",
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "diverged",
    "single_signed_share",
];

/// One epoch of one run: its figures and, when measured, the share of single-signed
/// gradient rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochRow {
    pub metrics: EpochMetrics,
    pub share: Option<f64>,
}

/// One run's outcome: its epochs and, if it diverged, the epoch where.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub variant: String,
    pub seed: u64,
    pub epochs: Vec<EpochRow>,
    pub diverged: Option<usize>,
}

impl RunRecord {
    /// The run's outcome in a few words, for its progress line.
    pub fn outcome(&self) -> String {
        match (self.diverged, self.epochs.last()) {
            (Some(e), _) => format!("diverged in epoch {e}"),
            (None, Some(r)) => format!("test accuracy {:.2} %", 100.0 * r.metrics.test_accuracy),
            (None, None) => "no epoch".into(),
        }
    }

    /// The run's rows, as results.csv holds them.
    fn rows(&self) -> Vec<[String; 9]> {
        let mut rows: Vec<[String; 9]> = self
            .epochs
            .iter()
            .map(|r| {
                let m = &r.metrics;
                [
                    self.variant.clone(),
                    self.seed.to_string(),
                    m.epoch.to_string(),
                    format!("{:.6}", m.train_loss),
                    format!("{:.6}", m.train_accuracy),
                    format!("{:.6}", m.test_loss),
                    format!("{:.6}", m.test_accuracy),
                    "0".into(),
                    r.share.map_or(String::new(), |s| format!("{s:.6}")),
                ]
            })
            .collect();
        if let Some(e) = self.diverged {
            rows.push([
                self.variant.clone(),
                self.seed.to_string(),
                e.to_string(),
                "nan".into(),
                String::new(),
                String::new(),
                String::new(),
                "1".into(),
                String::new(),
            ]);
        }
        rows
    }
}

/// The header and every record's rows, in order.
pub fn to_csv(records: &[RunRecord]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = writer.write_record(HEADER);
    for record in records {
        for row in record.rows() {
            let _ = writer.write_record(&row);
        }
    }
    writer.into_inner().unwrap_or_default()
}

/// The runs a results file records, in the order of their first rows. Every row is checked:
/// a variant and a seed of `experiment`, epochs 1, 2, … in order and once each, figures that
/// are numbers (losses finite and at least 0, accuracies and shares in [0, 1]), at most one
/// divergence, last; any other row is refused, naming its line.
pub fn parse(path: &Path, bytes: &[u8], experiment: &Experiment) -> Result<Vec<RunRecord>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut rows = reader.records();
    let expected = HEADER.join(",");
    match rows.next() {
        None => {
            return Err(bad(
                path,
                format!("empty: no header `{expected}` and no rows"),
            ));
        }
        Some(Err(e)) => return Err(bad(path, e.to_string())),
        Some(Ok(header)) if header.iter().ne(HEADER) => {
            return Err(bad(
                path,
                format!(
                    "line 1 is not the header `{expected}` but `{}`: a results file starts with it",
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            ));
        }
        Some(Ok(_)) => {}
    }
    let mut records: Vec<RunRecord> = Vec::new();
    for row in rows {
        let row = row.map_err(|e| bad(path, e.to_string()))?;
        let line = row.position().map_or(0, |p| p.line());
        let refuse = |message: String| bad(path, format!("line {line}: {message}"));
        if row.len() != HEADER.len() {
            return Err(refuse(format!(
                "{} fields, where the header has {}",
                row.len(),
                HEADER.len()
            )));
        }
        let variant = &row[0];
        if !experiment.variants.iter().any(|v| v.name == variant) {
            return Err(refuse(format!(
                "variant {variant:?} is not one of the experiment's"
            )));
        }
        let seed: u64 = row[1]
            .parse()
            .ok()
            .filter(|s| experiment.seeds.contains(s))
            .ok_or_else(|| refuse(format!("seed {:?} is not one of `seeds`", &row[1])))?;
        let epoch: usize = row[2]
            .parse()
            .ok()
            .filter(|&e| e >= 1)
            .ok_or_else(|| refuse(format!("epoch {:?} is not a number from 1", &row[2])))?;
        let index = match records
            .iter()
            .position(|r| r.variant == variant && r.seed == seed)
        {
            Some(i) => i,
            None => {
                records.push(RunRecord {
                    variant: variant.to_string(),
                    seed,
                    epochs: Vec::new(),
                    diverged: None,
                });
                records.len() - 1
            }
        };
        let record = &mut records[index];
        let run = || format!("variant {variant:?} seed {seed}");
        if let Some(d) = record.diverged {
            return Err(refuse(format!(
                "a row of {} after its divergence in epoch {d}",
                run()
            )));
        }
        if epoch != record.epochs.len() + 1 {
            return Err(refuse(format!(
                "epoch {epoch} of {}, whose rows so far end with epoch {}",
                run(),
                record.epochs.len()
            )));
        }
        match &row[7] {
            "1" => record.diverged = Some(epoch),
            "0" => {
                let figure = |j: usize, fraction: bool| -> Result<f64> {
                    let value: f64 = row[j].parse().map_err(|_| {
                        refuse(format!("{} {:?} is not a number", HEADER[j], &row[j]))
                    })?;
                    let ok = if fraction {
                        (0.0..=1.0).contains(&value)
                    } else {
                        value.is_finite() && value >= 0.0
                    };
                    if ok {
                        Ok(value)
                    } else {
                        let range = if fraction {
                            "a fraction in [0, 1]"
                        } else {
                            "a finite loss of at least 0"
                        };
                        Err(refuse(format!("{} {} is not {range}", HEADER[j], &row[j])))
                    }
                };
                let metrics = EpochMetrics {
                    epoch,
                    train_loss: figure(3, false)?,
                    train_accuracy: figure(4, true)?,
                    test_loss: figure(5, false)?,
                    test_accuracy: figure(6, true)?,
                    seconds: 0.0,
                    samples_per_second: 0.0,
                    step: 0,
                };
                // NaN is a measured share: no sample reached any neuron.
                let share = match &row[8] {
                    "" => None,
                    text => match text.parse::<f64>() {
                        Ok(s) if s.is_nan() || (0.0..=1.0).contains(&s) => Some(s),
                        _ => {
                            return Err(refuse(format!(
                                "single_signed_share {text:?} is not a fraction in [0, 1]"
                            )));
                        }
                    },
                };
                record.epochs.push(EpochRow { metrics, share });
            }
            other => {
                return Err(refuse(format!("diverged is {other:?}, not 0 or 1")));
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn experiment(text: &str) -> Experiment {
        Experiment::parse(Path::new("e.toml"), text).unwrap()
    }

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    #[test]
    fn the_checked_in_results_read_and_write_back_byte_for_byte() {
        for name in ["batch_norm", "binary", "dropout", "preprocessing", "zigzag"] {
            let (e, _) = Experiment::read(&repo(&format!("experiments/{name}.toml"))).unwrap();
            let path = repo(&format!("experiments/results/{name}/results.csv"));
            let bytes = std::fs::read(&path).unwrap();
            let records = parse(&path, &bytes, &e).unwrap();
            assert_eq!(records.len(), e.runs(), "{name}");
            assert_eq!(to_csv(&records), bytes, "{name}");
        }
    }

    #[test]
    fn names_with_commas_quotes_and_a_nan_share_round_trip() {
        let e = experiment(
            "name = \"x\"\nseeds = [0, 1]\n[[variant]]\nname = 'a, \"b\"'\n[[variant]]\nname = \"c\"\n",
        );
        let metrics = |epoch| EpochMetrics {
            epoch,
            train_loss: 0.5,
            train_accuracy: 0.75,
            test_loss: 1e300,
            test_accuracy: 1.0,
            seconds: 0.0,
            samples_per_second: 0.0,
            step: 0,
        };
        let records = vec![
            RunRecord {
                variant: "a, \"b\"".into(),
                seed: 1,
                epochs: vec![
                    EpochRow {
                        metrics: metrics(1),
                        share: Some(f64::NAN),
                    },
                    EpochRow {
                        metrics: metrics(2),
                        share: Some(0.25),
                    },
                ],
                diverged: Some(3),
            },
            RunRecord {
                variant: "c".into(),
                seed: 0,
                epochs: vec![],
                diverged: Some(1),
            },
        ];
        let bytes = to_csv(&records);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains("\"a, \"\"b\"\"\",1,1,0.500000,0.750000,")
                && text.contains(",1.000000,0,NaN\n")
                && text.ends_with("c,0,1,nan,,,,1,\n"),
            "{text}"
        );
        let back = parse(Path::new("r.csv"), &bytes, &e).unwrap();
        assert_eq!(to_csv(&back), bytes);
        assert!(back[0].epochs[0].share.unwrap().is_nan());
        assert_eq!(back[0].epochs[1].share, Some(0.25));
        assert_eq!(back[0].diverged, Some(3));
    }

    #[test]
    fn a_row_that_is_not_a_run_of_the_experiment_is_refused_naming_its_line() {
        let e = experiment("name = \"x\"\nseeds = [0]\n[grid]\nlr = [0.1, 0.2]\n");
        let header = HEADER.join(",");
        let row = "lr=0.1,0,1,0.5,0.8,0.4,0.85,0,";
        for (body, says) in [
            (String::new(), "empty: no header"),
            (
                format!("{row}\nlr=0.1,0,2,0.3,0.9,0.3,0.9,0,\n"),
                "line 1 is not the header",
            ),
            (format!("{header}\n{row},\n"), "line 2: 10 fields"),
            (
                format!("{header}\nlr=0.3,0,1,0.5,0.8,0.4,0.85,0,\n"),
                "line 2: variant \"lr=0.3\"",
            ),
            (
                format!("{header}\nlr=0.1,7,1,0.5,0.8,0.4,0.85,0,\n"),
                "line 2: seed \"7\"",
            ),
            (format!("{header}\n{row}\n{row}\n"), "line 3: epoch 1 of"),
            (
                format!("{header}\nlr=0.1,0,2,0.5,0.8,0.4,0.85,0,\n"),
                "epoch 2 of variant \"lr=0.1\" seed 0, whose rows so far end with epoch 0",
            ),
            (
                format!("{header}\nlr=0.1,0,1,0.5,0.8,0.4,1e308,0,\n"),
                "test_accuracy 1e308 is not a fraction in [0, 1]",
            ),
            (
                format!("{header}\nlr=0.1,0,1,0.5,-1e308,0.4,0.5,0,\n"),
                "train_accuracy -1e308 is not a fraction",
            ),
            (
                format!("{header}\nlr=0.1,0,1,0.5,nan,0.4,0.5,0,\n"),
                "train_accuracy nan is not a fraction",
            ),
            (
                format!("{header}\nlr=0.1,0,1,inf,0.5,0.4,0.5,0,\n"),
                "train_loss inf is not a finite loss",
            ),
            (
                format!("{header}\nlr=0.1,0,1,0.5,0.5,x,0.5,0,\n"),
                "test_loss \"x\" is not a number",
            ),
            (
                format!("{header}\nlr=0.1,0,1,nan,,,,1,\n{row}\n"),
                "line 3: a row of variant \"lr=0.1\" seed 0 after its divergence",
            ),
            (
                format!("{header}\nlr=0.1,0,1,0.5,0.8,0.4,0.85,2,\n"),
                "diverged is \"2\"",
            ),
            (
                format!("{header}\nlr=0.1,0,1,0.5,0.8,0.4,0.85,0,1.5\n"),
                "single_signed_share \"1.5\"",
            ),
        ] {
            let err = parse(Path::new("r.csv"), body.as_bytes(), &e)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(says) && err.starts_with("r.csv: "),
                "{body:?}: {err}"
            );
        }
    }
}
