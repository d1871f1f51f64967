//! wgnn: train and run batch-normalized MLPs on any GPU through wgpu, with PyTorch's semantics.
//!
//! The README below is this crate's front page; its Rust example runs as a doctest.
#![doc = include_str!("../README.md")]
// Hyper-parameter checks are written `!(x >= 0.0)` on purpose: NaN must fail them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

// The API a user programs against: `Model`, `nn`, `optim`, `data`, `checkpoint`, `train`,
// `run`, and `ops` for single ops beside their CPU references. `graph` (the IR and the `Op`
// trait), `exec` (the GPU plan and the CPU reference executor, the benchmarks' baseline) and
// `check` (tensor comparisons with tolerances) are public for users who inspect a plan, run
// the reference or compare results; `bench` holds the command line's benchmark workloads and
// is not part of the API.
#[doc(hidden)]
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod durable;
pub mod error;
pub mod exec;
pub mod gpu;
pub mod graph;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
#[cfg(feature = "plot")]
pub mod plot;
pub mod rng;
pub mod run;
pub mod rundir;
pub mod train;

pub use error::{Error, Result};
pub use graph::Mode;
pub use model::{Model, ModelConfig};
