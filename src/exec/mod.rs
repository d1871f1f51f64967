//! Executing a graph: the memory planner, the GPU plan, and the CPU reference executor.

pub mod cpu;
pub mod gpu;
pub mod memory;
pub mod state;

pub use cpu::CpuCx;
pub use gpu::GpuCx;
