//! `wgnn compare`: every variant of an experiment (experiments/FORMAT.md) trained with every
//! seed on the same data, side by side: `results.csv`, `curves.svg`, and a table of final
//! test accuracy (mean ± std over seeds), best epoch, epochs to a target accuracy, the
//! train–test gap and the runs that diverged.
//!
//! The runs train stacked by default: runs that can share one plan ([`grouping`]) train
//! side by side as the members of one stack ([`stacked`]), each computing its lone run's
//! bits; `--sequential` trains them one at a time. Both write the same files.
//!
//! One file per concern: [`schema`] reads the experiment file, [`outdir`] keeps the
//! directory (one writer, its mark, `--overwrite`), [`runs`] checks the variants and trains
//! or resumes the runs, [`grouping`] says which runs share a stack, [`stacked`] trains a
//! group as one, [`session`] holds what both paths share, [`group_save`] saves a group as
//! one commit, [`measure`] the per-epoch measures, [`results`] reads and writes results.csv,
//! [`summary`] makes the table.

mod group_save;
mod grouping;
mod measure;
mod outdir;
mod results;
mod runs;
mod schema;
mod session;
mod stacked;
mod summary;

use std::path::Path;
use std::time::Instant;

use outdir::{CURVES_FILE, CompareDir};
use results::{RESULTS_FILE, RunRecord};
use schema::Experiment;
use summary::{Overview, SUMMARY_FILE};

use super::error::{CliError, Result};
use super::{CompareArgs, open_gpu};

/// Where an experiment's results go without --out.
const COMPARE_ROOT: &str = "runs/compare";
/// The largest results.csv `--replot` reads.
const MAX_RESULTS_BYTES: u64 = 1 << 30;

pub fn run(args: CompareArgs) -> Result<()> {
    let (experiment, text) = Experiment::read(&args.experiment)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new(COMPARE_ROOT).join(&experiment.name));
    if args.replot {
        return replot(&experiment, &out);
    }
    // The directory is locked and checked before any data is read.
    let mut dir = CompareDir::open(&out, &experiment, args.overwrite)?;
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
    // Every variant, before the first step and before --overwrite removes anything.
    let prepared = runs::prepare(&ctx, &args.experiment, &experiment)?;
    dir.start(&text)?;
    let start = Instant::now();
    let mut session = session::Session {
        ctx,
        experiment: &experiment,
        dir: &dir,
        prepared,
        checkpoint_every: args.checkpoint_every,
        sequential: args.sequential,
    };
    let total = experiment.runs();
    let records = session.run_all(|records| {
        // The last run's outputs are written once, below.
        if records.len() < total {
            let outputs = Outputs::new(&experiment, records)?;
            dir.write_outputs(Some(&outputs.results), &outputs.table, &outputs.curves)?;
        }
        Ok(())
    })?;
    let outputs = Outputs::new(&experiment, &records)?;
    dir.write_outputs(Some(&outputs.results), &outputs.table, &outputs.curves)?;
    println!("{}", outputs.table);
    println!(
        "wrote {}/{{{RESULTS_FILE}, {CURVES_FILE}, {SUMMARY_FILE}}} in {:.0} s",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the experiment's directory shows of its runs.
struct Outputs {
    results: Vec<u8>,
    table: String,
    curves: String,
}

impl Outputs {
    /// results.csv from `records`, in the experiment's order, and the table and the curves
    /// from results.csv's own rows, so that `--replot` redraws them byte for byte.
    fn new(experiment: &Experiment, records: &[RunRecord]) -> Result<Self> {
        let mut ordered: Vec<&RunRecord> = records.iter().collect();
        let place = |r: &RunRecord| {
            let v = experiment.variants.iter().position(|v| v.name == r.variant);
            let s = experiment.seeds.iter().position(|&s| s == r.seed);
            (v, s)
        };
        ordered.sort_by_key(|r| place(r));
        let ordered: Vec<RunRecord> = ordered.into_iter().cloned().collect();
        let results = results::to_csv(&ordered);
        let read = results::parse(Path::new(RESULTS_FILE), &results, experiment)?;
        let overview = Overview::new(experiment, &read);
        Ok(Self {
            table: summary::table(experiment, &overview),
            curves: wgnn::plot::comparison_svg(&overview.curves)?,
            results,
        })
    }
}

/// `--replot`: the table and the curves again from the results.csv in `out`, training
/// nothing; says which runs the results lack.
fn replot(experiment: &Experiment, out: &Path) -> Result<()> {
    let dir = CompareDir::for_replot(out, experiment)?;
    let path = out.join(RESULTS_FILE);
    let bytes = schema::read_bounded(&path, MAX_RESULTS_BYTES).map_err(|source| {
        CliError::Wgnn(wgnn::Error::Io {
            path: path.display().to_string(),
            source,
        })
    })?;
    let records = results::parse(&path, bytes.as_bytes(), experiment)?;
    let overview = Overview::new(experiment, &records);
    let table = summary::table(experiment, &overview);
    let curves = wgnn::plot::comparison_svg(&overview.curves)?;
    dir.write_outputs(None, &table, &curves)?;
    println!("{table}");
    println!(
        "redrew {}/{{{CURVES_FILE}, {SUMMARY_FILE}}} from {} of {} runs",
        out.display(),
        overview.finished(),
        overview.total()
    );
    Ok(())
}
