//! Command-line parsing and dispatch.

mod bench;
mod compare;
pub mod dist;
mod ensemble;
mod error;
mod eval;
mod info;
mod predict;
mod progress;
mod resume_flags;
mod run_flags;
mod train;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wgnn::gpu::GpuContext;
use wgnn::run::{LossKind, OptimizerKind};

#[derive(Parser, Debug)]
#[command(
    name = "wgnn",
    version,
    about = "Train and run batch-normalized MLPs on any GPU through wgpu, with PyTorch's semantics",
    long_about = "Train and run batch-normalized MLPs on any GPU through wgpu, with PyTorch's \
                  semantics.\n\nWith no subcommand, trains the lecture's MLP on the embedded MNIST \
                  digits (same as `wgnn train`).\n\nAdapter selection: WGNN_ADAPTER=<name substring>, \
                  WGNN_BACKEND=vulkan|metal|dx12|gl. Kernels: WGNN_KERNELS=gpu|cpu, or a comma \
                  list of tiled, parallel, subgroup, register (default: gpu on GPUs, cpu on CPU \
                  adapters such as lavapipe). Log messages: RUST_LOG (default: warn)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (default: the lecture's MLP on the embedded MNIST digits).
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint on labelled data: loss, accuracy, confusion matrix.
    Eval(EvalArgs),
    /// Write a checkpoint's logits (or probabilities) for unlabelled inputs.
    Predict(PredictArgs),
    /// List GPU adapters and their limits.
    Info,
    /// Measure the kernels and the lecture's MLP on this adapter (and the CPU reference).
    Bench(BenchArgs),
    /// Train every variant of an experiment file with every seed and compare them
    /// (results.csv, curves.svg, a table; see experiments/FORMAT.md).
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The experiment: a TOML file (experiments/FORMAT.md), e.g. experiments/dropout.toml.
    pub experiment: PathBuf,
    /// Where the results go (default: runs/compare/<the experiment's name>). The same command
    /// again resumes there: the runs that ended are kept, an interrupted one continues from
    /// its last checkpoint.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train nothing: redraw curves.svg and summary.md from the results.csv already there.
    #[arg(long, conflicts_with_all = ["overwrite", "checkpoint_every"])]
    pub replot: bool,
    /// Replace what --out holds (another experiment's results, this one's under an edited
    /// file, a `wgnn train` run) instead of refusing, and start over instead of resuming.
    #[arg(long)]
    pub overwrite: bool,
    /// Train the runs one at a time. By default the runs that can share one plan (the same
    /// architecture up to its dropout probabilities, data, batch size, loss, optimizer kind,
    /// preprocessing and loop) train side by side as one stack, each member computing its
    /// lone run's bits: the same results.csv, faster.
    #[arg(long, conflicts_with = "replot")]
    pub sequential: bool,
    /// Also save each run every N optimizer steps within an epoch (default: at each epoch's
    /// end only), so that an interrupted run loses less.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Print a JSON array of {"name", "value", "unit", "device"} (as benches/torch_reference.py).
    #[arg(long)]
    pub json: bool,
    /// Shorter rounds and no CPU reference.
    #[arg(long)]
    pub quick: bool,
    /// Instead: where the lecture MLP's training and eval steps spend their time (784 inputs
    /// at batch 128 and 1024, 3072 inputs at 128; 784 inputs at batch 32 alone and as stacks
    /// of 16 and 64 members): each dispatch's GPU time from timestamps within whole steps,
    /// and the host's time to record and submit one. With --json, one JSON object.
    #[arg(long)]
    pub profile: bool,
    /// Instead: the per-step cost of data-parallel training (run alone, or under
    /// `mpirun -np N`): the lecture MLP's step with and without --sync-bn, the time in the
    /// exchanges and collectives, and the bytes exchanged.
    #[arg(long)]
    pub data_parallel: bool,
}

/// How CSV files are read.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct CsvArgs {
    /// A CSV file's first row is a header (default: guessed, and the guess printed).
    #[arg(long, conflicts_with = "no_header")]
    pub header: bool,
    /// A CSV file's first row is data.
    #[arg(long)]
    pub no_header: bool,
    /// A CSV file's cell delimiter, one character such as ';' or '\t' (default: ',', a tab
    /// for .tsv files).
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
}

impl CsvArgs {
    /// `--header` / `--no-header`, or neither (guess).
    pub fn header(&self) -> Option<bool> {
        match (self.header, self.no_header) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// One ASCII character, or `\t` / `tab` for a tab.
fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "\\t" | "tab" | "\t" => Ok(b'\t'),
        _ => match text.as_bytes() {
            [b] if b.is_ascii() && !matches!(b, b'\n' | b'\r' | b'"') => Ok(*b),
            _ => Err(format!(
                "{text:?}: one ASCII character other than a quote or a line end, or \\t"
            )),
        },
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data: an MNIST or CIFAR-10 directory, a .csv (label column), a .safetensors
    /// (x, y), an idx3 images file or a CIFAR-10 .bin. Default: the embedded MNIST digits.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Test data; default: the data's own test split, or a held-back share of a single file.
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// Share of a single file's rows (the last ones) held back for testing.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// CSV label column, by name or 0-based index (default: label/target/y/class, else the last).
    #[arg(long)]
    pub label_column: Option<String>,
    #[command(flatten)]
    pub csv: CsvArgs,
    /// Classes of the model's output (default: the largest label plus one, refusing an
    /// outlier label that would leave most of them empty).
    #[arg(long, value_name = "N")]
    pub classes: Option<usize>,
    /// Model spec, e.g. flatten,linear:64,bn,relu,dropout:0.2,linear:10 (default: the
    /// lecture's MLP with as many outputs as the data has classes, one for --loss bce).
    #[arg(long)]
    pub arch: Option<String>,
    /// Epochs to train [default: 12]; with --resume, the run's total (default: the run's own).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerKindArg,
    /// Learning rate (default: 0.02 for SGD, 0.001 for Adam and AdamW).
    #[arg(long)]
    pub lr: Option<f32>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW; default 0, AdamW 0.01).
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Adam and AdamW: the AMSGrad variant (normalize by the largest second moment so far).
    #[arg(long)]
    pub amsgrad: bool,
    /// Learning rate per epoch, from --lr: step:STEP_SIZE:GAMMA (StepLR) or
    /// cosine:T_MAX[:ETA_MIN] (CosineAnnealingLR).
    #[arg(long, value_name = "SCHEDULE")]
    pub lr_schedule: Option<String>,
    #[arg(long, value_enum, default_value = "ce")]
    pub loss: LossKindArg,
    /// Cross-entropy label smoothing ε.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// BCE weight of the positive class.
    #[arg(long, default_value_t = 1.0)]
    pub pos_weight: f32,
    /// Seeds initialization, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train N models as one deep ensemble: seeds --seed to --seed+N-1, every other setting
    /// the same, side by side in one plan; member K is the run `--seed seed+K` would be, bit
    /// for bit, written to members/K/checkpoint.safetensors; eval and predict average the
    /// members' probabilities. One process only (not under mpirun).
    #[arg(long, value_name = "N")]
    pub ensemble: Option<usize>,
    /// Keep the data's order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Drop the last batch when it is partial (under mpirun, also the samples that do not
    /// divide among the processes, as DistributedSampler's drop_last).
    #[arg(long)]
    pub drop_last: bool,
    /// Under mpirun: batch norm takes its mean and variance over every process's batch, in
    /// forward and backward (torch.nn.SyncBatchNorm); else each process's own batch. Alone,
    /// nothing changes.
    #[arg(long)]
    pub sync_bn: bool,
    /// Preprocessing fitted on the training split and applied by the model to raw inputs:
    /// none, mean-image, channel-mean, per-channel, pca:K, pca-whiten:K or zca[:EPS].
    #[arg(long, default_value = "per-channel")]
    pub normalize: String,
    /// Reject data holding NaN or infinite values.
    #[arg(long)]
    pub check_finite: bool,
    /// Start from these weights: a wgnn checkpoint or a PyTorch state_dict in safetensors.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Continue the run saved in this directory (its settings and data; --epochs may extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Keep training after a NaN or infinite loss.
    #[arg(long)]
    pub keep_going: bool,
    /// Also write the checkpoint every N optimizer steps within an epoch (default: at each
    /// epoch's end only); --resume continues from the batch it reached.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Stop once the run has taken N optimizer steps in all, within an epoch or not, writing
    /// the checkpoint there (--resume continues).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// The run directory: checkpoint.safetensors, training_state.safetensors, metrics.csv and
    /// curves.svg. One that holds a run already is refused (--overwrite replaces it). Default:
    /// a new numbered directory under runs/ (runs/1, runs/2, …), runs/latest pointing at it.
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Replace the run that --out holds, instead of refusing.
    #[arg(long, requires = "out")]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `wgnn train` with no flags.
#[derive(Parser, Debug)]
struct TrainDefaults {
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerKindArg {
    Sgd,
    Adam,
    Adamw,
}

impl From<OptimizerKindArg> for OptimizerKind {
    fn from(o: OptimizerKindArg) -> Self {
        match o {
            OptimizerKindArg::Sgd => OptimizerKind::Sgd,
            OptimizerKindArg::Adam => OptimizerKind::Adam,
            OptimizerKindArg::Adamw => OptimizerKind::Adamw,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LossKindArg {
    /// Cross-entropy (multiclass).
    Ce,
    /// Binary cross-entropy with logits (labels 0/1, one output).
    Bce,
}

impl From<LossKindArg> for LossKind {
    fn from(l: LossKindArg) -> Self {
        match l {
            LossKindArg::Ce => LossKind::Ce,
            LossKindArg::Bce => LossKind::Bce,
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint file or directory written by `wgnn train` (an ensemble's run directory:
    /// the ensemble).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Labelled data (a directory's test split, or a file).
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of a dataset directory.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// CSV label column, by name or 0-based index (default: label/target/y/class, else the
    /// last). Evaluation needs labels: for a file without them, `wgnn predict --label-column
    /// none`.
    #[arg(long)]
    pub label_column: Option<String>,
    #[command(flatten)]
    pub csv: CsvArgs,
    /// Samples per forward pass (default: 256, or the largest batch the device fits if
    /// fewer); independent of the training's batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Of an ensemble's run: member K alone (as --checkpoint RUN/members/K); without it, the
    /// ensemble, its members' probabilities averaged.
    #[arg(long, value_name = "K")]
    pub member: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A checkpoint file or directory written by `wgnn train` (an ensemble's run directory:
    /// the ensemble).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Of an ensemble's run: member K alone (as --checkpoint RUN/members/K).
    #[arg(long, value_name = "K")]
    pub member: Option<usize>,
    /// Samples: .npy ([N, …]; floats or integers, uint8 pixels scaled to [0, 1]),
    /// .safetensors (tensor x), .csv, an idx3 images file or a CIFAR-10 .bin (labels, if any,
    /// are ignored).
    #[arg(long)]
    pub input: PathBuf,
    /// .safetensors (tensors "logits" or "probs", and "predictions") or .npy.
    #[arg(long)]
    pub output: PathBuf,
    /// Write probabilities (softmax, or sigmoid for BCE) instead of logits. Of an ensemble,
    /// the mean of its members'; its logits are the log of that mean (for BCE, its logit),
    /// whose softmax (sigmoid) gives it back.
    #[arg(long)]
    pub probs: bool,
    /// A CSV input's label column, by name or 0-based index, which is skipped; `none` when
    /// every column is a feature (default: label/target/y/class, else the last).
    #[arg(long)]
    pub label_column: Option<String>,
    #[command(flatten)]
    pub csv: CsvArgs,
    /// Samples per forward pass (default: 256, or the largest batch the device fits if
    /// fewer); independent of the training's batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
}

/// Runs the parsed command.
pub fn run(cli: Cli, comm: &wgnn::dist::Comm) -> error::Result<()> {
    // Every process of a job must have been started alike.
    dist::check_arguments(comm.as_ref())?;
    match (&cli.command, comm.size()) {
        (None | Some(Command::Train(_)), _) | (_, 1) => {}
        (Some(Command::Bench(b)), _) if b.data_parallel => {}
        (Some(_), size) => return Err(error::CliError::OnlyTrainRunsParallel { size }),
    }
    match cli.command {
        None => train::run(TrainDefaults::parse_from(["wgnn"]).args, comm),
        Some(Command::Train(args)) => train::run(*args, comm),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Predict(args)) => predict::run(args),
        Some(Command::Info) => Ok(info::run()?),
        Some(Command::Bench(args)) if args.data_parallel => bench::data_parallel(args, comm),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Compare(args)) => compare::run(args),
    }
}

/// Opens the GPU and says which adapter it is.
fn open_gpu() -> wgnn::Result<Arc<GpuContext>> {
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter());
    Ok(Arc::new(ctx))
}

/// [`open_gpu`] for one process of a job: every rank says which adapter it took.
fn open_gpu_in(comm: &dyn wgnn::dist::Communicator) -> wgnn::Result<Arc<GpuContext>> {
    if comm.size() == 1 {
        return open_gpu();
    }
    let ctx = GpuContext::new()?;
    println!(
        "{} (pid {}): adapter: {}",
        comm.describe(),
        std::process::id(),
        ctx.adapter()
    );
    Ok(Arc::new(ctx))
}
