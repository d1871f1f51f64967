//! Executing a graph: the memory planner, the resident state, the GPU plan and the CPU
//! reference executor. Nothing here names an op: each node's [`Op`](crate::graph::Op) says
//! what it does, through the contexts [`CpuCx`] and [`GpuCx`] the executors hand it.

pub mod cpu;
pub mod gpu;
pub mod memory;
pub mod state;

pub use crate::graph::{CpuCx, GpuCx};
