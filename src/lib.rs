//! wgnn: train and run batch-normalized MLPs on any GPU through wgpu, with PyTorch's semantics.

pub mod check;
pub mod data;
pub mod gpu;
pub mod ops;
pub mod optim;
