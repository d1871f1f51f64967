//! `wgnn eval`.

use wgnn::data::{LabelColumn, Split, load_with};
use wgnn::run::{self, DataConfig};
use wgnn::train::evaluate;

use super::error::{CliError, Result};
use super::{EvalArgs, SplitArg, open_gpu};

pub fn run(args: EvalArgs) -> Result<()> {
    if args
        .label_column
        .as_deref()
        .is_some_and(|c| LabelColumn::from_arg(c) == LabelColumn::None)
    {
        return Err(CliError::EvalWithoutLabels);
    }
    let ctx = open_gpu()?;
    // Planned at the evaluation's batch, whatever the training's was.
    let (mut model, run) = run::restore_at(ctx, &args.checkpoint, args.batch_size)?;
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Test => Split::Test,
    };
    let options = DataConfig {
        label_column: args.label_column.clone(),
        header: args.csv.header().or(run.data.header),
        delimiter: args.csv.delimiter.or(run.data.delimiter),
        ..run.data.clone()
    }
    .load_options();
    let data = load_with(&args.data, split, &options)?;
    if data.sample_shape != run.sample_shape {
        let mut found = vec![data.len()];
        found.extend(&data.sample_shape);
        return Err(CliError::SampleShape {
            path: args.data,
            found,
            expected: run.sample_shape,
        });
    }
    model.eval();
    let e = evaluate(&mut model, &data, run.batch_size)?;
    println!("samples: {}", e.samples);
    println!("loss: {:.6}", e.loss);
    println!("accuracy: {:.2}%", 100.0 * e.accuracy);
    println!("confusion matrix (rows: true class, columns: predicted):");
    let width = e
        .confusion
        .iter()
        .flatten()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1)
        .max(3);
    print!("{:>5}", "");
    for j in 0..e.confusion.len() {
        print!(" {j:>width$}");
    }
    println!();
    for (i, row) in e.confusion.iter().enumerate() {
        print!("{i:>5}");
        for v in row {
            print!(" {v:>width$}");
        }
        println!();
    }
    Ok(())
}
