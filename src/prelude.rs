//! What a program that builds, trains, saves and loads a model needs, in one import:
//!
//! ```
//! use wgnn::prelude::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layers = Sequential::new()
//!     .append(Linear::new(30, 16))
//!     .append(GELU::new())
//!     .append(Linear::new(16, 1));
//! let config = ModelConfig { sample_shape: vec![30], batch_size: 64, seed: 0 };
//! let model = Model::new(GpuContext::new()?, layers, BCEWithLogitsLoss::new(), Optimizer::Adam(Adam::adamw()), config)?;
//! # Ok(())
//! # }
//! ```
//!
//! | for | names |
//! |---|---|
//! | the model | [`Model`], [`ModelConfig`], [`Mode`], [`GpuContext`] |
//! | layers (`torch.nn`) | [`Sequential`], [`Flatten`], [`Linear`], [`BatchNorm1d`], [`Dropout`], [`ReLU`], [`Sigmoid`], [`Tanh`], [`GELU`], [`LeakyReLU`] |
//! | losses | [`CrossEntropyLoss`], [`BCEWithLogitsLoss`], [`Loss`] |
//! | optimizers (`torch.optim`) | [`Optimizer`], [`Sgd`], [`Adam`] (`Adam::adamw()`), [`LrSchedule`] |
//! | data | [`load_splits`], [`Source`], [`Splits`], [`LoadOptions`], [`LabelColumn`], [`Dataset`], [`Split`], [`embedded`], [`Transform`], [`Preprocess`], [`Normalization`], [`NormalizeMode`] |
//! | training | [`FitOptions`], [`fit`], [`Progress`], [`Silent`], [`EpochMetrics`], [`evaluate`], [`Evaluation`] |
//!
//! wgnn's [`Error`](crate::Error) and [`Result`](crate::Result) are left out, so that they
//! do not shadow `std::error::Error` and `std::result::Result` in the importing module.

pub use crate::data::{
    Dataset, LabelColumn, LoadOptions, Normalization, NormalizeMode, Preprocess, Source, Split,
    Splits, Transform, embedded, load_splits,
};
pub use crate::gpu::GpuContext;
pub use crate::graph::Mode;
pub use crate::model::{Model, ModelConfig};
pub use crate::nn::{
    BCEWithLogitsLoss, BatchNorm1d, CrossEntropyLoss, Dropout, Flatten, GELU, LeakyReLU, Linear,
    Loss, ReLU, Sequential, Sigmoid, Tanh,
};
pub use crate::optim::{Adam, LrSchedule, Optimizer, Sgd};
pub use crate::train::{EpochMetrics, Evaluation, FitOptions, Progress, Silent, evaluate, fit};
