//! `wgnn compare`: every variant of an experiment (experiments/FORMAT.md) trained with every
//! seed on the same data, side by side: `results.csv`, `curves.svg`, and a table of final
//! test accuracy (mean ± std over seeds), best epoch, epochs to a target accuracy, the
//! train–test gap and the runs that diverged.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use toml::{Table, Value};
use wgnn::Model;
use wgnn::gpu::GpuContext;
use wgnn::nn::Layer;
use wgnn::plot::{VariantRuns, write_comparison};
use wgnn::run::RunConfig;
use wgnn::train::{Checkpoint, EpochMetrics, FitOptions, Silent, fit};

use super::error::{CliError, Result};
use super::{CompareArgs, TrainArgs, open_gpu, train};

/// Settings a variant may set: `wgnn train`'s flags, less those that only make sense for a
/// single run (output, resume, checkpoints, the seed, which comes from `seeds`).
const SETTINGS: &[&str] = &[
    "data",
    "test-data",
    "holdout",
    "label-column",
    "arch",
    "epochs",
    "batch-size",
    "optimizer",
    "lr",
    "momentum",
    "weight-decay",
    "amsgrad",
    "lr-schedule",
    "loss",
    "label-smoothing",
    "pos-weight",
    "normalize",
    "no-shuffle",
    "drop-last",
    "check-finite",
];
/// Settings that are on/off flags.
const FLAGS: &[&str] = &["amsgrad", "no-shuffle", "drop-last", "check-finite"];
/// Samples the gradient-signs measure looks at, one at a time.
const SIGN_SAMPLES: usize = 256;

/// An experiment file, expanded into its variants.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub seeds: Vec<u64>,
    pub target_accuracy: Option<f64>,
    pub gradient_signs: bool,
    pub variants: Vec<Variant>,
}

/// One variant: its name and its settings (the base's, then its own), as flag and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    pub settings: Vec<(String, Value)>,
}

/// What went wrong in an experiment file, naming the key.
fn bad(path: &Path, message: impl Into<String>) -> CliError {
    CliError::Experiment {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A value as a variant's name shows it: strings without quotes.
fn label(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn settings(path: &Path, table: &Table, place: &str) -> Result<Vec<(String, Value)>> {
    table
        .iter()
        .filter(|(k, _)| *k != "name")
        .map(|(k, v)| {
            check_setting(path, k, v, place)?;
            Ok((k.clone(), v.clone()))
        })
        .collect()
}

fn check_setting(path: &Path, key: &str, value: &Value, place: &str) -> Result<()> {
    if key == "seed" {
        return Err(bad(
            path,
            format!("{place}: `seed` is not a setting; list the seeds in `seeds`"),
        ));
    }
    if !SETTINGS.contains(&key) {
        return Err(bad(
            path,
            format!(
                "{place}: unknown setting `{key}`; expected one of {}",
                SETTINGS.join(", ")
            ),
        ));
    }
    let flag = FLAGS.contains(&key);
    match value {
        Value::Boolean(_) if flag => Ok(()),
        Value::String(_) | Value::Integer(_) | Value::Float(_) if !flag => Ok(()),
        _ if flag => Err(bad(path, format!("{place}: `{key}` is true or false"))),
        _ => Err(bad(
            path,
            format!("{place}: `{key}` must be a string or a number"),
        )),
    }
}

impl Experiment {
    /// Reads and expands an experiment file; every mistake names its key.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(path, e.message().to_string()))?;
        for key in table.keys() {
            let known = [
                "name",
                "description",
                "seeds",
                "target_accuracy",
                "measure",
                "base",
                "grid",
                "variant",
            ];
            if !known.contains(&key.as_str()) {
                return Err(bad(
                    path,
                    format!("unknown key `{key}`; expected one of {}", known.join(", ")),
                ));
            }
        }
        let name = match table.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() && !s.contains(['/', '\\']) => s.clone(),
            Some(_) => {
                return Err(bad(
                    path,
                    "`name` must be a non-empty string without slashes",
                ));
            }
            None => return Err(bad(path, "missing `name`")),
        };
        let description = match table.get("description") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad(path, "`description` must be a string")),
            None => String::new(),
        };
        let seeds = match table.get("seeds") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| match v {
                    Value::Integer(i) if *i >= 0 => Ok(*i as u64),
                    other => Err(bad(
                        path,
                        format!("`seeds` holds non-negative integers, not {other}"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(bad(path, "`seeds` must be a non-empty list of integers")),
        };
        let target_accuracy = match table.get("target_accuracy") {
            None => None,
            Some(Value::Float(f)) if (0.0..=1.0).contains(f) => Some(*f),
            Some(_) => {
                return Err(bad(
                    path,
                    "`target_accuracy` must be a fraction in [0, 1], e.g. 0.95",
                ));
            }
        };
        let gradient_signs = match table.get("measure") {
            None => false,
            Some(Value::Array(a)) => {
                for m in a {
                    if m.as_str() != Some("gradient-signs") {
                        return Err(bad(
                            path,
                            format!("`measure`: unknown measure {m}; expected \"gradient-signs\""),
                        ));
                    }
                }
                !a.is_empty()
            }
            Some(_) => return Err(bad(path, "`measure` must be a list")),
        };
        let base = match table.get("base") {
            None => Vec::new(),
            Some(Value::Table(t)) => settings(path, t, "[base]")?,
            Some(_) => return Err(bad(path, "`base` must be a table")),
        };

        let mut variants: Vec<Variant> = Vec::new();
        if let Some(grid) = table.get("grid") {
            let Value::Table(grid) = grid else {
                return Err(bad(path, "`grid` must be a table"));
            };
            // Each key's (label, value) choices, in the file's order.
            let mut axes: Vec<(String, Vec<(String, Value)>)> = Vec::new();
            for (key, choices) in grid {
                let place = format!("[grid] `{key}`");
                let choices: Vec<(String, Value)> = match choices {
                    Value::Array(a) if !a.is_empty() => {
                        a.iter().map(|v| (label(v), v.clone())).collect()
                    }
                    Value::Table(t) if !t.is_empty() => {
                        t.iter().map(|(l, v)| (l.clone(), v.clone())).collect()
                    }
                    _ => {
                        return Err(bad(
                            path,
                            format!("{place} must be a non-empty list or a table of label = value"),
                        ));
                    }
                };
                for (_, v) in &choices {
                    check_setting(path, key, v, &place)?;
                }
                axes.push((key.clone(), choices));
            }
            let mut combos: Vec<Vec<(String, String, Value)>> = vec![Vec::new()];
            for (key, choices) in &axes {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        choices.iter().map(move |(l, v)| {
                            let mut next = c.clone();
                            next.push((key.clone(), l.clone(), v.clone()));
                            next
                        })
                    })
                    .collect();
            }
            for combo in combos {
                let name = combo
                    .iter()
                    .map(|(k, l, _)| format!("{k}={l}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut s = base.clone();
                s.extend(combo.into_iter().map(|(k, _, v)| (k, v)));
                variants.push(Variant { name, settings: s });
            }
        }
        match table.get("variant") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, entry) in list.iter().enumerate() {
                    let Value::Table(t) = entry else {
                        return Err(bad(path, format!("[[variant]] {} must be a table", i + 1)));
                    };
                    let name = match t.get("name") {
                        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
                        _ => {
                            return Err(bad(
                                path,
                                format!("[[variant]] {} needs a `name` string", i + 1),
                            ));
                        }
                    };
                    let mut s = base.clone();
                    s.extend(settings(path, t, &format!("[[variant]] {name:?}"))?);
                    variants.push(Variant { name, settings: s });
                }
            }
            Some(_) => return Err(bad(path, "`variant` must be a list of [[variant]] tables")),
        }
        if variants.is_empty() {
            variants.push(Variant {
                name: "base".into(),
                settings: base,
            });
        }
        let mut names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(path, format!("two variants are named {:?}", w[0])));
        }
        Ok(Experiment {
            name,
            description,
            seeds,
            target_accuracy,
            gradient_signs,
            variants,
        })
    }
}

/// `wgnn train`'s arguments for one variant and seed: its settings written as flags, parsed
/// by the same parser, so every default and check is `wgnn train`'s own.
fn train_args(path: &Path, variant: &Variant, seed: u64) -> Result<TrainArgs> {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TrainArgs,
    }
    let mut argv = vec!["train".to_string()];
    for (key, value) in &variant.settings {
        match value {
            Value::Boolean(true) => argv.push(format!("--{key}")),
            Value::Boolean(false) => {}
            other => {
                argv.push(format!("--{key}"));
                argv.push(label(other));
            }
        }
    }
    argv.extend(["--seed".into(), seed.to_string(), "--quiet".into()]);
    Wrapper::try_parse_from(&argv).map(|w| w.args).map_err(|e| {
        let first = e.to_string();
        let first = first
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        bad(path, format!("variant {:?}: {first}", variant.name))
    })
}

/// One run's outcome: its epochs and, if it diverged, the epoch where.
struct RunResult {
    epochs: Vec<EpochMetrics>,
    signs: Vec<f64>,
    diverged: Option<usize>,
}

const HEADER: &str = "variant,seed,epoch,train_loss,train_accuracy,test_loss,test_accuracy,diverged,single_signed_share";

/// A CSV field: quoted when it holds a comma or a quote.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn csv_rows(variant: &str, seed: u64, r: &RunResult) -> String {
    let mut out = String::new();
    for (i, m) in r.epochs.iter().enumerate() {
        let share = r.signs.get(i).map_or(String::new(), |s| format!("{s:.6}"));
        let _ = writeln!(
            out,
            "{},{seed},{},{:.6},{:.6},{:.6},{:.6},0,{share}",
            field(variant),
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            m.test_loss,
            m.test_accuracy
        );
    }
    if let Some(e) = r.diverged {
        let _ = writeln!(out, "{},{seed},{e},nan,,,,1,", field(variant));
    }
    out
}

/// Among the first Linear's output neurons with a nonzero per-sample weight gradient, the
/// share whose gradient row is single-signed (experiments/FORMAT.md), on a copy of `model`
/// that trains at rate 0.
fn single_signed_share(
    ctx: &Arc<GpuContext>,
    model: &mut Model,
    run: &RunConfig,
    train: &wgnn::data::Dataset,
) -> wgnn::Result<f64> {
    let state = model.state()?;
    let config = wgnn::ModelConfig {
        batch_size: 1,
        ..model.config().clone()
    };
    let mut probe = Model::build(
        ctx.clone(),
        model.preprocess().cloned().map(Arc::new),
        model.sequential().clone(),
        run.loss(),
        run.optimizer(),
        config,
        Some(state),
    )?;
    probe.set_lr(0.0);
    probe.train();
    let d = train.sample_len();
    let samples = train.len().min(SIGN_SAMPLES);
    let (mut total, mut counted) = (0.0, 0usize);
    for i in 0..samples {
        probe.train_step(&train.features[i * d..(i + 1) * d], &train.labels[i..=i])?;
        let grads = probe.gradients()?;
        let Some(w) = probe.graph().params.iter().position(|p| p.shape.len() == 2) else {
            return Ok(f64::NAN);
        };
        let (rows, cols) = (
            probe.graph().params[w].shape[0],
            probe.graph().params[w].shape[1],
        );
        let g = &grads[w].1;
        // Rows of neurons the sample reached (a ReLU that was off gives an all-zero row).
        let (mut live, mut single) = (0usize, 0usize);
        for r in 0..rows {
            let row = &g[r * cols..(r + 1) * cols];
            let (pos, neg) = (row.iter().any(|&v| v > 0.0), row.iter().any(|&v| v < 0.0));
            if pos || neg {
                live += 1;
                single += usize::from(!(pos && neg));
            }
        }
        if live > 0 {
            total += single as f64 / live as f64;
            counted += 1;
        }
    }
    Ok(if counted == 0 {
        f64::NAN
    } else {
        total / counted as f64
    })
}

fn run_one(
    ctx: &Arc<GpuContext>,
    path: &Path,
    experiment: &Experiment,
    variant: &Variant,
    seed: u64,
) -> Result<RunResult> {
    let args = train_args(path, variant, seed)?;
    let (run, transform, splits) = train::new_run(&args)?;
    if experiment.gradient_signs
        && run
            .sequential()?
            .layers()
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm1d(_)))
    {
        return Err(bad(
            path,
            format!(
                "variant {:?}: `measure = [\"gradient-signs\"]` trains on a batch of one, \
                 which batch norm cannot: use an arch without bn",
                variant.name
            ),
        ));
    }
    let mut model = run.build_with(ctx.clone(), None, transform)?;
    let options = FitOptions {
        epochs: run.epochs,
        shuffle_seed: run.shuffle.then_some(run.seed),
        drop_last: run.drop_last,
        lr_schedule: run.lr_schedule.map(|schedule| (schedule, run.lr)),
        stop_on_nonfinite: true,
        ..FitOptions::default()
    };
    let mut epochs = Vec::new();
    let mut signs = Vec::new();
    let result = fit(
        &mut model,
        &splits.train,
        &splits.test,
        &options,
        &mut Silent,
        |model, checkpoint| {
            if let Checkpoint::EpochEnd(m) = checkpoint {
                epochs.push(*m);
                if experiment.gradient_signs {
                    signs.push(single_signed_share(ctx, model, &run, &splits.train)?);
                }
            }
            Ok(())
        },
    );
    let diverged = match result {
        Ok(_) => None,
        Err(wgnn::Error::Diverged { .. } | wgnn::Error::NonFiniteUpdate { .. }) => {
            Some(epochs.len() + 1)
        }
        Err(e) => return Err(e.into()),
    };
    Ok(RunResult {
        epochs,
        signs,
        diverged,
    })
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The table: per variant, over its seeds.
fn summary(experiment: &Experiment, results: &[VariantRuns]) -> String {
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
    for v in results {
        let finals: Vec<f64> = v
            .runs
            .iter()
            .zip(&v.diverged)
            .filter(|(_, d)| d.is_none())
            .filter_map(|(r, _)| r.last().map(|m| m.test_accuracy))
            .collect();
        let gaps: Vec<f64> = v
            .runs
            .iter()
            .zip(&v.diverged)
            .filter(|(_, d)| d.is_none())
            .filter_map(|(r, _)| r.last().map(|m| m.train_accuracy - m.test_accuracy))
            .collect();
        let epochs = v.runs.iter().map(Vec::len).max().unwrap_or(0);
        let mean_at = |e: usize| {
            let vals: Vec<f64> = v
                .runs
                .iter()
                .filter_map(|r| r.get(e))
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
        let accuracy = if finals.is_empty() {
            "—".to_string()
        } else {
            let (m, s) = mean_std(&finals);
            format!("{:.2} % ± {:.2}", 100.0 * m, 100.0 * s)
        };
        let gap = if gaps.is_empty() {
            "—".to_string()
        } else {
            format!("{:+.2} pt", 100.0 * mean_std(&gaps).0)
        };
        let diverged = v.diverged.iter().filter(|d| d.is_some()).count();
        let _ = writeln!(
            out,
            "| {} | {accuracy} | {best} | {reached} | {gap} | {diverged}/{} |",
            v.name,
            v.runs.len()
        );
    }
    out
}

fn io(path: &Path, e: std::io::Error) -> CliError {
    CliError::Wgnn(wgnn::Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// The runs of a results.csv, by the experiment's variants and seeds.
fn read_results(path: &Path, experiment: &Experiment) -> Result<Vec<VariantRuns>> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let mut results: Vec<VariantRuns> = experiment
        .variants
        .iter()
        .map(|v| VariantRuns {
            name: v.name.clone(),
            runs: vec![Vec::new(); experiment.seeds.len()],
            diverged: vec![None; experiment.seeds.len()],
        })
        .collect();
    let bad_row = |line: usize, message: &str| bad(path, format!("line {line}: {message}"));
    for (i, line) in text.lines().enumerate().skip(1) {
        let cells = split_csv(line);
        if cells.len() != 9 {
            return Err(bad_row(i + 1, "expected 9 fields"));
        }
        let variant = results
            .iter_mut()
            .find(|v| v.name == cells[0])
            .ok_or_else(|| bad_row(i + 1, "a variant the experiment does not have"))?;
        let seed: u64 = cells[1].parse().map_err(|_| bad_row(i + 1, "bad seed"))?;
        let s = experiment
            .seeds
            .iter()
            .position(|&x| x == seed)
            .ok_or_else(|| bad_row(i + 1, "a seed the experiment does not have"))?;
        let epoch: usize = cells[2].parse().map_err(|_| bad_row(i + 1, "bad epoch"))?;
        if cells[7] == "1" {
            variant.diverged[s] = Some(epoch);
            continue;
        }
        let num = |j: usize| -> Result<f64> {
            cells[j]
                .parse()
                .map_err(|_| bad_row(i + 1, "a figure that is no number"))
        };
        variant.runs[s].push(EpochMetrics {
            epoch,
            train_loss: num(3)?,
            train_accuracy: num(4)?,
            test_loss: num(5)?,
            test_accuracy: num(6)?,
            seconds: 0.0,
            samples_per_second: 0.0,
            step: 0,
        });
    }
    Ok(results)
}

/// The fields of one CSV line, as [`field`] writes them.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = out.last_mut() {
                    f.push('"');
                }
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => {
                if let Some(f) = out.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    out
}

pub fn run(args: CompareArgs) -> Result<()> {
    let experiment = Experiment::read(&args.experiment)?;
    if args.replot {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| Path::new("runs/compare").join(&experiment.name));
        let results = read_results(&out.join("results.csv"), &experiment)?;
        let table = summary(&experiment, &results);
        println!("{table}");
        let summary_path = out.join("summary.md");
        std::fs::write(&summary_path, &table).map_err(|e| io(&summary_path, e))?;
        write_comparison(&out.join("curves.svg"), &results)?;
        println!("redrew {}/{{curves.svg, summary.md}}", out.display());
        return Ok(());
    }
    // Every variant's flags parse before anything trains.
    for v in &experiment.variants {
        train_args(&args.experiment, v, experiment.seeds[0])?;
    }
    let out: PathBuf = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs/compare").join(&experiment.name));
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let csv_path = out.join("results.csv");
    let mut csv = std::fs::File::create(&csv_path).map_err(|e| io(&csv_path, e))?;
    writeln!(csv, "{HEADER}").map_err(|e| io(&csv_path, e))?;

    let ctx = open_gpu()?;
    println!(
        "experiment {}: {} variants × {} seeds{}",
        experiment.name,
        experiment.variants.len(),
        experiment.seeds.len(),
        if experiment.description.is_empty() {
            String::new()
        } else {
            format!(" — {}", experiment.description)
        }
    );
    let total = experiment.variants.len() * experiment.seeds.len();
    let start = Instant::now();
    let mut results: Vec<VariantRuns> = Vec::new();
    let mut done = 0;
    for variant in &experiment.variants {
        let mut runs = VariantRuns {
            name: variant.name.clone(),
            ..VariantRuns::default()
        };
        for &seed in &experiment.seeds {
            let began = Instant::now();
            // The run's name first, its outcome on the same line when it ends.
            print!("[{:>3}/{total}] {} · seed {seed}: ", done + 1, variant.name);
            let _ = std::io::stdout().flush();
            let r = run_one(&ctx, &args.experiment, &experiment, variant, seed)?;
            done += 1;
            csv.write_all(csv_rows(&variant.name, seed, &r).as_bytes())
                .map_err(|e| io(&csv_path, e))?;
            let left = start.elapsed().as_secs_f64() / done as f64 * (total - done) as f64;
            let outcome = match (r.diverged, r.epochs.last()) {
                (Some(e), _) => format!("diverged in epoch {e}"),
                (None, Some(m)) => format!("test accuracy {:.2} %", 100.0 * m.test_accuracy),
                (None, None) => "no epoch".into(),
            };
            println!(
                "{outcome} ({:.1} s; about {:.0} s left)",
                began.elapsed().as_secs_f64(),
                left
            );
            runs.runs.push(r.epochs);
            runs.diverged.push(r.diverged);
        }
        results.push(runs);
    }
    let table = summary(&experiment, &results);
    println!("{table}");
    let summary_path = out.join("summary.md");
    std::fs::write(&summary_path, &table).map_err(|e| io(&summary_path, e))?;
    write_comparison(&out.join("curves.svg"), &results)?;
    println!(
        "wrote {}/{{results.csv, curves.svg, summary.md}} in {:.0} s",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Experiment> {
        Experiment::parse(Path::new("e.toml"), text)
    }

    #[test]
    fn a_grid_expands_in_file_order_and_variants_follow() {
        let e = parse(
            r#"
            name = "x"
            seeds = [0, 1]
            [base]
            epochs = 2
            [grid]
            lr = [0.1, 1.0]
            arch = { bn = "flatten,linear:8,bn,relu,linear:10", plain = "flatten,linear:10" }
            [[variant]]
            name = "adam"
            optimizer = "adam"
            "#,
        )
        .unwrap();
        let names: Vec<&str> = e.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lr=0.1 arch=bn",
                "lr=0.1 arch=plain",
                "lr=1.0 arch=bn",
                "lr=1.0 arch=plain",
                "adam"
            ]
        );
        assert_eq!(e.variants[4].settings[0].0, "epochs");
        let args = train_args(Path::new("e.toml"), &e.variants[1], 7).unwrap();
        assert_eq!(args.seed, 7);
        assert_eq!(args.lr, Some(0.1));
        assert_eq!(args.arch.as_deref(), Some("flatten,linear:10"));
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, says) in [
            ("seeds = [0]", "missing `name`"),
            ("name = \"x\"", "`seeds`"),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nlearning-rate = 1",
                "`learning-rate`",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nseed = 1",
                "`seed` is not a setting",
            ),
            ("name = \"x\"\nseeds = [0]\n[grid]\nlr = 0.1", "[grid] `lr`"),
            (
                "name = \"x\"\nseeds = [0]\n[base]\namsgrad = 1",
                "`amsgrad` is true or false",
            ),
            (
                "name = \"x\"\nseeds = [0]\nmeasures = []",
                "unknown key `measures`",
            ),
            ("name = \"x\"\nseeds = [-1]", "non-negative"),
            (
                "name = \"x\"\nseeds = [0]\n[[variant]]\nlr = 1",
                "needs a `name`",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.starts_with("e.toml:"), "{err}");
        }
        // A value wgnn train refuses is refused with the variant's name.
        let e = parse("name = \"x\"\nseeds = [0]\n[base]\noptimizer = \"lbfgs\"").unwrap();
        let err = train_args(Path::new("e.toml"), &e.variants[0], 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"base\"") && err.contains("lbfgs"), "{err}");
    }
}
