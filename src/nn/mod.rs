//! The PyTorch-shaped front: layers, `Sequential`, losses, and `state_dict` naming.
//!
//! | torch.nn | here |
//! |---|---|
//! | `nn.Sequential` | [`Sequential`] (`Sequential::new().append(…)`) |
//! | `nn.Flatten`, `nn.Linear`, `nn.BatchNorm1d`, `nn.Dropout` | [`Flatten`], [`Linear`], [`BatchNorm1d`], [`Dropout`] |
//! | `nn.ReLU`, `nn.Sigmoid`, `nn.Tanh`, `nn.GELU`, `nn.LeakyReLU` | [`ReLU`], [`Sigmoid`], [`Tanh`], [`GELU`], [`LeakyReLU`] |
//! | `nn.CrossEntropyLoss`, `nn.BCEWithLogitsLoss` | [`CrossEntropyLoss`], [`BCEWithLogitsLoss`] |
//!
//! Each layer starts as PyTorch's `reset_parameters` leaves it (seeded), and a Sequential's
//! state_dict keys are PyTorch's. [`spec`] writes a Sequential as a string
//! (`flatten,linear:64,bn,relu,…`) and reads one back.
//!
//! ```
//! use wgnn::nn::{BatchNorm1d, Dropout, Flatten, Linear, ReLU, Sequential};
//! // The lecture's MLP, as in PyTorch.
//! let model = Sequential::new()
//!     .append(Flatten)
//!     .append(Linear::new(3072, 64))
//!     .append(BatchNorm1d::new(64))
//!     .append(ReLU)
//!     .append(Dropout::new(0.2))
//!     .append(Linear::new(64, 32))
//!     .append(BatchNorm1d::new(32))
//!     .append(ReLU)
//!     .append(Dropout::new(0.2))
//!     .append(Linear::new(32, 10));
//! assert_eq!(model.layers().len(), 10);
//! assert_eq!(model.state_dict_keys(), vec![
//!     "1.weight", "1.bias",
//!     "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked",
//!     "5.weight", "5.bias",
//!     "6.weight", "6.bias", "6.running_mean", "6.running_var", "6.num_batches_tracked",
//!     "9.weight", "9.bias",
//! ]);
//! ```

mod batch_norm;
mod build;
mod dropout;
mod flatten;
#[cfg(test)]
mod init;
mod layers;
mod linear;
mod loss;
pub mod spec;

pub use crate::graph::{init_parameters, kaiming_uniform_bound};
// Every registered activation (`ops::activation`'s `activations!` list, beside their
// kernels), each with its own page here: inlined, not shown as one re-export line.
#[doc(inline)]
pub use crate::ops::activation::layers::*;
pub use batch_norm::BatchNorm1d;
pub use build::{build, build_with};
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use layers::{LAYER_TOKENS, Layer, LayerToken, Module, Sequential, SpecInput};
pub use linear::Linear;
pub use loss::{BCEWithLogitsLoss, CrossEntropyLoss, Loss, TargetEncoding};
