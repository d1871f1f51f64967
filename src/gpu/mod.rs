//! The GPU side: adapter and device, buffers, pipeline cache, kernel dispatch.

mod context;
pub mod disk_cache;
mod kernel;
mod layout;
mod profile;
mod tensor;

pub use context::{
    ADAPTER_ENV, AdapterRequest, AdapterSummary, BACKEND_ENV, GpuContext, KERNELS_ENV,
    KernelChoice, list_adapters, parse_backend,
};
pub use kernel::{
    ActivationShader, Binding, BroadcastRows, Dispatch, Kernel, Launch, ResourceCounters, Shader,
    grid_1d,
};
pub use layout::UniformLayout;
#[cfg(test)]
pub(crate) use layout::assert_mirrors;
pub(crate) use layout::uniform_struct;
pub use profile::{Clock, DispatchTime, StepProfile};
pub use tensor::{GpuTensor, TENSOR_USAGE, byte_len, map_and_read, read_buffer};

/// Errors from the GPU layer. Each names what failed and, where it can, how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    #[error(
        "no GPU adapter found: install a Vulkan driver such as mesa-vulkan-drivers \
         (lavapipe) or a GPU driver, or choose a backend with WGNN_BACKEND=vulkan|metal|dx12|gl"
    )]
    NoAdapter,
    #[error(
        "no adapter matches {wanted} (set by WGNN_ADAPTER / WGNN_BACKEND); available: {available}"
    )]
    AdapterNotFound { wanted: String, available: String },
    #[error("unknown backend {0:?} in WGNN_BACKEND: expected vulkan, metal, dx12 or gl")]
    UnknownBackend(String),
    #[error(
        "unknown kernel choice {0:?} in WGNN_KERNELS: expected gpu, cpu, or a comma list of tiled, parallel, subgroup and register"
    )]
    UnknownKernels(String),
    #[error("could not open the device on adapter {0}")]
    RequestDevice(String),
    #[error(
        "{what} needs a buffer of {bytes} bytes but the device binds at most {limit} bytes \
         (max_storage_buffer_binding_size)"
    )]
    BufferTooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "kernel {entry} needs {workgroups:?} workgroups but the device allows {limit} per dimension"
    )]
    GridTooLarge {
        entry: &'static str,
        workgroups: [u32; 3],
        limit: u32,
    },
    #[error("{what}: shape {shape:?} holds {expected} elements but {found} were given")]
    LengthMismatch {
        what: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("shader {entry} failed to compile: {message}")]
    Shader { entry: String, message: String },
    #[error("reading a buffer back failed: {0}")]
    Map(String),
    #[error("the GPU device reported an error: {0}")]
    Device(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{kernel}: binding {binding} holds {size} bytes but the launch reads {needed}")]
    BindingTooSmall {
        kernel: String,
        binding: String,
        size: u64,
        needed: u64,
    },
}
