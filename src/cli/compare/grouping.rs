//! Which runs of an experiment train together as one stack ([`wgnn::Model::stack`]): runs
//! whose plans are the same — the same shapes and the same op sequence — and that differ
//! only in what a stack's members may differ in.
//!
//! Members may differ in the seed (initial weights, shuffle, dropout masks), the learning
//! rate and its schedule, SGD's momentum (when it is not 0) and dampening, the weight decay,
//! Adam's betas and eps, and the dropout probabilities: exactly what a
//! [`MemberConfig`] and a [`wgnn::stack::MemberFit`] carry. Everything else must be the same:
//! the architecture up to its dropout probabilities (a dropout of 0 is no op at all in a lone
//! model's graph, so 0 and non-zero must agree), the batch size, the data and the test data,
//! the sample shape, the loss and its options, the optimizer's kind and switches (momentum
//! on or off, Nesterov, AMSGrad, AdamW, maximize), the preprocessing, the epochs, the
//! shuffle and drop-last. A group larger than a stack holds on the device is split into
//! chunks in the experiment's order.

use wgnn::MemberConfig;
use wgnn::nn::Layer;
use wgnn::run::{OptimizerKind, RunConfig};

/// What runs that share a stack have in common, as one string: two runs can be members of
/// one stack exactly when their keys are equal.
pub fn key(run: &RunConfig) -> wgnn::Result<String> {
    let layers = run.sequential()?;
    let mut shared = run.clone();
    shared.seed = 0;
    shared.lr = 0.0;
    shared.lr_schedule = None;
    shared.weight_decay = 0.0;
    // SGD's momentum is a switch (a momentum buffer or none) and, when on, a rate; Adam
    // has none.
    shared.momentum = match run.optimizer {
        OptimizerKind::Sgd if run.momentum != 0.0 => 1.0,
        _ => 0.0,
    };
    shared.extra.dampening = 0.0;
    shared.extra.betas = (0.0, 0.0);
    shared.extra.eps = 0.0;
    // The layers as parsed (two spellings of one architecture are one), dropout
    // probabilities reduced to whether they drop anything.
    shared.arch = layers
        .layers()
        .iter()
        .map(|layer| match layer {
            Layer::Dropout(d) if d.p > 0.0 => "dropout".to_string(),
            Layer::Dropout(_) => "dropout:0".to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(",");
    // RunConfig holds strings and numbers only: it always serializes.
    Ok(serde_json::to_string(&shared).unwrap_or_default())
}

/// The member a run is in a stack: its seed, its optimizer (its rates and factors), and its
/// dropout probabilities.
pub fn member(run: &RunConfig) -> wgnn::Result<MemberConfig> {
    let layers = run.sequential()?;
    let dropout = layers
        .layers()
        .iter()
        .enumerate()
        .filter_map(|(i, layer)| match layer {
            Layer::Dropout(d) if d.p > 0.0 => Some((i, d.p)),
            _ => None,
        })
        .collect();
    Ok(MemberConfig {
        seed: run.seed,
        optimizer: run.optimizer(),
        dropout,
    })
}

/// Splits `items` into groups of equal `key`, in the order of each group's first item and
/// each group in the items' order, and each group into chunks of at most its smallest
/// `capacity` (at least 1).
pub fn partition<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    capacity: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    let mut chunks = Vec::new();
    for (_, members) in groups {
        let size = members.iter().map(&capacity).min().unwrap_or(1).max(1);
        let mut members = members.into_iter().peekable();
        while members.peek().is_some() {
            chunks.push(members.by_ref().take(size).collect());
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cli::compare::schema::{Experiment, train_args};

    /// The runs of an experiment's variants with seed 0, on the breast-cancer CSV (30
    /// features, 2 classes), set up as `wgnn train` sets them up.
    fn runs(text: &str) -> Vec<RunConfig> {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer.csv");
        let text = text.replace(
            "[base]\n",
            &format!(
                "[base]\ndata = {:?}\narch = \"linear:8,relu,linear:2\"\n",
                data
            ),
        );
        let e = Experiment::parse(Path::new("e.toml"), &text).unwrap();
        e.variants
            .iter()
            .map(|v| {
                let args = train_args(Path::new("e.toml"), v, 0).unwrap();
                let config = crate::cli::run_flags::data_config(&args).unwrap();
                let splits = config.load().unwrap();
                let limits = wgnn::data::FitLimits::of_machine();
                crate::cli::run_flags::run_on(&args, config, &splits, &limits)
                    .unwrap()
                    .0
            })
            .collect()
    }

    fn groups(text: &str) -> Vec<Vec<usize>> {
        let runs = runs(text);
        let keys: Vec<String> = runs.iter().map(|r| key(r).unwrap()).collect();
        partition((0..runs.len()).collect(), |&i| keys[i].clone(), |_| 100)
    }

    #[test]
    fn rates_seeds_and_dropout_probabilities_share_a_stack_and_shapes_do_not() {
        let base = "name = \"x\"\nseeds = [0]\n[base]\nepochs = 2\n";
        // The batch-norm experiment: two architectures × four rates, two stacks.
        let g = groups(&format!(
            "{base}[grid]\narch = {{ bn = \"linear:8,bn,relu,dropout:0.2,linear:2\", \
             plain = \"linear:8,relu,dropout:0.2,linear:2\" }}\nlr = [0.1, 0.5]\n"
        ));
        assert_eq!(g, [vec![0, 1], vec![2, 3]]);
        // Dropout 0.2 and 0.5 share a stack; 0 (no mask at all) does not.
        let g = groups(&format!(
            "{base}[grid]\narch = {{ a = \"flatten,linear:8,relu,dropout:0.2,linear:2\", \
             b = \"flatten,linear:8,relu,dropout:0,linear:2\", \
             c = \"flatten,linear:8,relu,dropout:0.5,linear:2\" }}\n"
        ));
        assert_eq!(g, [vec![0, 2], vec![1]]);
        // Momentum 0.5 and 0.9 share one; 0 (no momentum buffer) does not; weight decay,
        // schedules and Adam's settings may differ.
        let g = groups(&format!(
            "{base}[grid]\nmomentum = [0.5, 0.0, 0.9]\n[[variant]]\nname = \"wd\"\n\
             weight-decay = 0.1\nlr-schedule = \"step:1:0.5\"\n"
        ));
        assert_eq!(g, [vec![0, 2, 3], vec![1]]);
        // Each of these changes the plan or the loop: a stack of its own.
        for setting in [
            "batch-size = 16",
            "epochs = 3",
            "optimizer = \"adam\"",
            "label-smoothing = 0.1",
            "test-data = \"data/breast_cancer.csv\"",
            "normalize = \"none\"",
            "no-shuffle = true",
            "drop-last = true",
            "arch = \"linear:9,relu,linear:2\"",
        ] {
            let g = groups(&format!(
                "{base}[[variant]]\nname = \"a\"\n[[variant]]\nname = \"b\"\n{setting}\n"
            ));
            assert_eq!(g, [vec![0], vec![1]], "{setting}");
        }
        // Adam and AdamW, AMSGrad or not, are different kernels.
        let g = groups(&format!(
            "{base}[grid]\noptimizer = [\"adam\", \"adamw\"]\namsgrad = [false, true]\n"
        ));
        assert_eq!(g, [vec![0], vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn members_carry_their_own_rates_and_dropout() {
        let runs = runs(
            "name = \"x\"\nseeds = [0]\n[base]\n[[variant]]\nname = \"a\"\nlr = 0.3\nmomentum = 0.5\n\
             arch = \"flatten,linear:8,relu,dropout:0.3,linear:4,dropout:0,linear:2\"\n",
        );
        let m = member(&runs[0]).unwrap();
        assert_eq!(m.dropout, [(3, 0.3)]);
        match m.optimizer {
            wgnn::optim::Optimizer::Sgd(s) => assert_eq!((s.lr, s.momentum), (0.3, 0.5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_group_beyond_the_capacity_is_split_in_order() {
        let chunks = partition((0..7).collect(), |&i| (i % 2).to_string(), |_| 3);
        assert_eq!(chunks, [vec![0, 2, 4], vec![6], vec![1, 3, 5]]);
        // The smallest capacity of a group's members holds for the group.
        let chunks = partition((0..4).collect(), |_| "k".into(), |&i| 4 - i);
        assert_eq!(chunks, [vec![0], vec![1], vec![2], vec![3]]);
    }
}
