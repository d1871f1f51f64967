//! wgnn: train and run batch-normalized MLPs on any GPU through wgpu, with PyTorch's semantics.
//!
//! ## The library at a glance
//!
//! `use wgnn::prelude::*;` brings in what a program that builds, trains, saves and loads a
//! model needs. Where each thing lives:
//!
//! | to | use |
//! |---|---|
//! | open a device | [`gpu::GpuContext`] (`GpuContext::new()`; `WGNN_ADAPTER`, `WGNN_BACKEND`) |
//! | describe a model (`torch.nn`) | [`nn::Sequential`] of [`nn::Linear`], [`nn::BatchNorm1d`], [`nn::Dropout`], [`nn::Flatten`], [`nn::ReLU`], [`nn::GELU`], [`nn::Tanh`], [`nn::Sigmoid`], [`nn::LeakyReLU`]; [`nn::spec`] as a string |
//! | its loss | [`nn::CrossEntropyLoss`], [`nn::BCEWithLogitsLoss`] |
//! | its optimizer (`torch.optim`) | [`optim::Optimizer`] of [`optim::Sgd`] or [`optim::Adam`] (`Adam::adamw()`), [`optim::LrSchedule`] |
//! | build it on the device | [`Model::new`], [`Model::with_preprocess`], [`ModelConfig`] |
//! | load and split data | [`data::load_splits`], [`data::Source`], [`data::LoadOptions`], [`data::Dataset`], [`data::embedded`] |
//! | preprocess it (the lecture's options) | [`data::Transform`], [`data::Preprocess`], [`data::Normalization`] |
//! | train | [`Model::fit`] with [`train::FitOptions`]; [`train::fit`] with a progress report and a checkpoint hook; [`Model::train_step`] by hand |
//! | evaluate and predict | [`train::evaluate`], [`Model::eval`], [`Model::predict`] |
//! | read gradients and state | [`Model::gradients`], [`Model::state`] |
//! | save and load | [`Model::save`], [`Model::load`], [`Model::load_state_dict`]; the files: [`checkpoint`] |
//! | a run of `wgnn train`, in Rust | [`run::RunConfig`], [`run::restore`] |
//! | one op beside its CPU reference | [`ops`] (`ops::matmul::matmul`, `ops::batchnorm::GpuBatchNorm`, …) |
//! | many models of one architecture in one plan (seeds, sweeps, ensembles) | [`Model::stack`] of [`MemberConfig`]s, [`stack::fit_stack`] |
//! | a deep ensemble: its members' averaged probabilities, its run directory | [`ensemble`], [`advanced::rundir::ensemble`] |
//! | data-parallel training | [`Model::distribute`], [`dist::Communicator`] |
//! | errors | [`Error`], one variant per module's error, each naming what is wrong |
//! | the machinery: the graph IR, the executors, the run directory, … | [`advanced`] |
//!
//! The README below is this crate's front page; its Rust example runs as a doctest.
#![doc = include_str!("../README.md")]
// Hyper-parameter checks are written `!(x >= 0.0)` on purpose: NaN must fail them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

// The API a user programs against is on the front page; the machinery stays public (tests,
// benchmarks and curious users reach it by its path, `wgnn::exec::…`) but is documented
// under `advanced` only. `bench` holds the command line's benchmark workloads and is not
// part of the API.
#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod dist;
#[doc(hidden)]
pub mod durable;
pub mod ensemble;
pub mod error;
#[doc(hidden)]
pub mod exec;
pub mod gpu;
#[doc(hidden)]
pub mod graph;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
#[cfg(feature = "plot")]
pub mod plot;
pub mod prelude;
#[doc(hidden)]
pub mod rng;
pub mod run;
#[doc(hidden)]
pub mod rundir;
pub mod stack;
pub mod train;

pub use error::{Error, Result};
pub use graph::Mode;
pub use model::{MemberConfig, Model, ModelConfig};

/// The machinery under the user-facing types: what a model compiles to and how it runs,
/// for those who inspect a plan, run the CPU reference, or reuse a part. Each module is also
/// reachable at the crate's root (`wgnn::exec`, …).
///
/// | module | what it holds |
/// |---|---|
/// | [`graph`] | the static graph a Sequential lowers to: values, nodes, the [`Op`](graph::Op) trait every op implements, fusion rules, autodiff |
/// | [`exec`] | the GPU plan (every dispatch of a mode, built once), the CPU reference executor (the tests' oracle, the benchmarks' baseline), memory planning, resident state |
/// | [`rundir`] | `wgnn train`'s run directory: its lock, a save as one atomic commit, resume |
/// | [`durable`] | every change to the disk (temp file, fsync, rename, directory fsync) and its failpoints |
/// | [`check`] | tensor comparisons with tolerances, naming the worst element |
/// | [`rng`] | ChaCha12 for initialization and shuffling, its stream fixed by the algorithm |
pub mod advanced {
    #[doc(inline)]
    pub use crate::{check, durable, exec, graph, rng, rundir};
}
