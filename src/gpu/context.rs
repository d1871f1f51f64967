//! Adapter selection, device creation and the device's limits.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::GpuError;
use super::kernel::{Binding, PipelineCache};

/// Environment variable selecting an adapter by a substring of its name.
pub const ADAPTER_ENV: &str = "WGNN_ADAPTER";
/// Environment variable selecting the backend: `vulkan`, `metal`, `dx12` or `gl`.
pub const BACKEND_ENV: &str = "WGNN_BACKEND";
/// Environment variable overriding the kernel choices (see [`KernelChoice`]), case ignored:
/// `gpu` (workgroup-tiled matmuls and row-parallel reductions: what GPUs get), `cpu`
/// (subgroup-broadcast matmuls where the adapter has 8-lane subgroups, else register-blocked
/// ones, and one invocation per reduced column: what CPU adapters such as lavapipe get), or a
/// comma list of `tiled`, `parallel`, `subgroup` and `register`, each naming one choice to turn
/// on, e.g. `tiled,subgroup`. `register` names the register-blocked matmuls and per-column
/// reductions that every choice left off falls back to; alone, it turns the other three off.
pub const KERNELS_ENV: &str = "WGNN_KERNELS";

/// Which kernel variants a context picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    /// Matmuls large enough for a 64×64 tile stage it in workgroup memory.
    pub tiled_matmul: bool,
    /// Per-column reductions (batch-norm statistics and gradients, bias gradients) split
    /// each column's rows over 16 invocations.
    pub parallel_reductions: bool,
    /// Matmuls not tiled, with at least 32 columns and a depth of at least 32, share A's
    /// loads through subgroup broadcasts: the CPU-adapter choice (lavapipe), where a storage
    /// load costs far more than a register shuffle. Only honoured where subgroups have at
    /// least 8 lanes; every other matmul is register-blocked.
    pub subgroup_matmul: bool,
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let matmul = match (self.tiled_matmul, self.subgroup_matmul) {
            (true, _) => "tiled",
            (false, true) => "subgroup-broadcast",
            (false, false) => "register-blocked",
        };
        let reductions = if self.parallel_reductions {
            "row-parallel"
        } else {
            "per-column"
        };
        write!(f, "{matmul} matmul, {reductions} reductions")
    }
}

impl KernelChoice {
    /// The GPU kernels (`on`) or the CPU-adapter ones, which share A through subgroups where
    /// the adapter has them.
    pub fn all(on: bool) -> Self {
        Self {
            tiled_matmul: on,
            parallel_reductions: on,
            subgroup_matmul: !on,
        }
    }

    /// This choice as an adapter runs it: without subgroups of at least 8 lanes, the
    /// subgroup-broadcast matmuls give way to register-blocked ones.
    pub fn on_adapter(self, subgroups_of_8: bool) -> Self {
        Self {
            subgroup_matmul: self.subgroup_matmul && subgroups_of_8,
            ..self
        }
    }

    /// Parses `WGNN_KERNELS`'s value.
    pub fn parse(value: &str) -> Result<Self, GpuError> {
        match value.to_ascii_lowercase().as_str() {
            "gpu" => return Ok(Self::all(true)),
            "cpu" => return Ok(Self::all(false)),
            _ => {}
        }
        let mut choice = Self {
            tiled_matmul: false,
            parallel_reductions: false,
            subgroup_matmul: false,
        };
        for part in value.split(',').map(str::trim) {
            match part.to_ascii_lowercase().as_str() {
                "tiled" => choice.tiled_matmul = true,
                "parallel" => choice.parallel_reductions = true,
                "subgroup" => choice.subgroup_matmul = true,
                "register" => {}
                _ => return Err(GpuError::UnknownKernels(value.to_string())),
            }
        }
        Ok(choice)
    }
}

/// Which adapter to open. [`AdapterRequest::from_env`] reads `WGNN_ADAPTER`, `WGNN_BACKEND`
/// and `WGNN_KERNELS`.
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// Case-insensitive substring of the adapter's name; `None` picks the best adapter.
    pub name: Option<String>,
    /// Backends to search; `None` searches all compiled-in backends.
    pub backend: Option<wgpu::Backends>,
    /// Forces the kernel choices; `None` follows the adapter's type.
    pub kernels: Option<KernelChoice>,
    /// Without a name: take the adapter at this position (modulo their number) among the
    /// best ones of one kind and backend, so that the ranks of a node take one GPU each.
    pub ordinal: Option<usize>,
    /// Where compiled pipelines are kept between processes (`None`: nowhere); see
    /// [`crate::gpu::disk_cache`].
    pub pipeline_cache: Option<std::path::PathBuf>,
}

impl AdapterRequest {
    /// Reads `WGNN_ADAPTER`, `WGNN_BACKEND` and `WGNN_KERNELS`; an unknown backend name or
    /// kernel choice is an error. Without `WGNN_ADAPTER`, a process that an MPI launcher
    /// started takes the adapter of its node-local rank (`OMPI_COMM_WORLD_LOCAL_RANK`)
    /// modulo the adapters found.
    pub fn from_env() -> Result<Self, GpuError> {
        let name = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty());
        let backend = match std::env::var(BACKEND_ENV).ok().filter(|s| !s.is_empty()) {
            Some(value) => Some(parse_backend(&value)?),
            None => None,
        };
        let kernels = match std::env::var(KERNELS_ENV).ok().filter(|s| !s.is_empty()) {
            Some(v) => Some(KernelChoice::parse(&v)?),
            None => None,
        };
        // Under mpirun, the rank's place on its node picks its GPU, unless it was named.
        let ordinal = match name {
            Some(_) => None,
            None => crate::dist::local_rank(),
        };
        Ok(Self {
            name,
            backend,
            kernels,
            ordinal,
            pipeline_cache: super::disk_cache::default_dir(),
        })
    }
}

/// Parses a backend name as `WGNN_BACKEND` accepts it.
pub fn parse_backend(value: &str) -> Result<wgpu::Backends, GpuError> {
    match value.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        _ => Err(GpuError::UnknownBackend(value.to_string())),
    }
}

/// What the rest of wgnn needs to know about the opened adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterSummary {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }

    /// True for software rasterizers such as lavapipe (llvmpipe), where kernels are chosen
    /// for few storage loads per FMA rather than for workgroup-memory tiles.
    pub fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}",
            self.name, self.backend, self.device_type
        )?;
        if !self.driver_info.is_empty() {
            write!(f, ", {}", self.driver_info)?;
        }
        write!(f, ")")
    }
}

/// An open device with its queue, limits and pipeline cache. Everything wgnn puts on the GPU
/// goes through one context.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    pub(crate) pipelines: PipelineCache,
    /// Errors the device reported outside an error scope (validation, out of memory, lost).
    device_errors: Arc<Mutex<Vec<String>>>,
    /// Small zeroed storage buffers bound where a kernel's optional input (read-only) or
    /// output (read-write) is absent; two, since one dispatch may need both.
    placeholder: wgpu::Buffer,
    placeholder_out: wgpu::Buffer,
    /// Kernel variants for GPUs or for CPU adapters such as lavapipe.
    kernels: KernelChoice,
    /// Subgroup operations are enabled and subgroups have at least 8 lanes.
    subgroups_of_8: bool,
    /// wgpu's pipeline cache and the file it is kept in between processes (Vulkan).
    pub(crate) disk_cache: Option<DiskCache>,
}

/// A pipeline cache with its file.
pub(crate) struct DiskCache {
    pub(crate) cache: wgpu::PipelineCache,
    path: std::path::PathBuf,
    /// Bytes it started from (0: none, or unusable).
    loaded: usize,
}

impl GpuContext {
    /// Opens the adapter chosen by `WGNN_ADAPTER` / `WGNN_BACKEND`, else the best one, with
    /// the kernels `WGNN_KERNELS` names, else those for the adapter's type.
    pub fn new() -> Result<Self, GpuError> {
        Self::with_request(&AdapterRequest::from_env()?)
    }

    /// Opens an adapter: a hardware GPU when there is one, else a software one.
    pub fn with_request(request: &AdapterRequest) -> Result<Self, GpuError> {
        let instance = new_instance(request.backend);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let adapter = choose_adapter(adapters, request)?;
        let info = adapter.get_info();
        // The adapter's own limits, not WebGPU's defaults: lavapipe and discrete GPUs both
        // allow far larger storage bindings than the 128 MiB default.
        let limits = adapter.limits();
        let cache_file = request
            .pipeline_cache
            .as_deref()
            .and_then(|dir| super::disk_cache::file_for(dir, &info))
            .filter(|_| adapter.features().contains(wgpu::Features::PIPELINE_CACHE));
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("wgnn"),
            // Subgroup operations where the adapter has them: the broadcast matmul uses them.
            // Timestamps inside passes: `wgnn bench --profile` times each dispatch of a step.
            // The pipeline cache where it is kept on disk.
            required_features: adapter.features()
                & (wgpu::Features::SUBGROUP
                    | wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
                    | if cache_file.is_some() {
                        wgpu::Features::PIPELINE_CACHE
                    } else {
                        wgpu::Features::empty()
                    }),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| GpuError::RequestDevice(format!("{}: {e}", info.name)))?;

        let device_errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&device_errors);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            if let Ok(mut errors) = sink.lock() {
                errors.push(error.to_string());
            }
        }));
        let sink = Arc::clone(&device_errors);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut errors) = sink.lock() {
                errors.push(format!("device lost ({reason:?}): {message}"));
            }
        });

        let placeholder_buffer = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        // The broadcast matmuls hand lanes 0..8 of a subgroup to every lane.
        let subgroups_of_8 =
            adapter.features().contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8;
        let requested = request
            .kernels
            .unwrap_or(KernelChoice::all(info.device_type != wgpu::DeviceType::Cpu));
        let kernels = requested.on_adapter(subgroups_of_8);
        if request.kernels.is_some_and(|k| k.subgroup_matmul) && !kernels.subgroup_matmul {
            log::warn!(
                "{}: subgroup-broadcast matmuls were requested, but the adapter has no \
                 subgroups of at least 8 lanes; using register-blocked matmuls",
                info.name
            );
        }
        log::info!("opened {} ({kernels})", AdapterSummary::from_info(&info));
        let disk_cache = cache_file.map(|path| {
            let data = super::disk_cache::load(&path);
            // SAFETY: the data is what `PipelineCache::get_data` gave for an adapter with the
            // same `pipeline_cache_key` (the file's name holds it, and its driver), whole by
            // its checksum; wgpu checks its own header against this adapter and, with
            // `fallback`, starts empty from data it cannot use.
            let cache = unsafe {
                device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("wgnn pipelines"),
                    data: data.as_deref(),
                    fallback: true,
                })
            };
            DiskCache {
                cache,
                path,
                loaded: data.map_or(0, |d| d.len()),
            }
        });
        Ok(Self {
            kernels,
            subgroups_of_8,
            placeholder: placeholder_buffer("absent input"),
            placeholder_out: placeholder_buffer("absent output"),
            pipelines: PipelineCache::default(),
            device,
            queue,
            adapter: AdapterSummary::from_info(&info),
            limits,
            device_errors,
            disk_cache,
        })
    }

    /// The file compiled pipelines are kept in between processes, and the bytes this context
    /// started from (0: it compiled afresh); `None` where there is no cache (not Vulkan, or
    /// `WGNN_PIPELINE_CACHE=off`).
    pub fn pipeline_cache(&self) -> Option<(&std::path::Path, usize)> {
        self.disk_cache
            .as_ref()
            .map(|c| (c.path.as_path(), c.loaded))
    }

    /// Writes the pipeline cache to its file if this context compiled any pipeline (also
    /// done when the context is dropped). Failures are logged: the cache only saves time.
    pub fn save_pipeline_cache(&self) {
        let Some(disk) = &self.disk_cache else {
            return;
        };
        if self.pipelines.pipelines_created.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(data) = disk.cache.get_data() {
            super::disk_cache::save(&disk.path, &data);
        }
    }

    /// Binding for an absent optional input: 16 zero bytes, never written.
    pub fn placeholder(&self) -> Binding<'_> {
        Binding::whole(&self.placeholder)
    }

    /// Binding for an absent optional output, which the kernel never writes.
    pub fn placeholder_out(&self) -> Binding<'_> {
        Binding::whole(&self.placeholder_out)
    }

    /// The kernel variants this context picks: for a GPU (workgroup-memory tiles,
    /// row-parallel reductions) or for a CPU adapter such as lavapipe (subgroup-broadcast
    /// matmuls where subgroups have 8 lanes, else register blocks; per-column reductions
    /// without barriers), unless `WGNN_KERNELS` or [`GpuContext::with_gpu_kernels`] chose
    /// otherwise. `subgroup_matmul` is set only where the adapter can run it.
    pub fn kernels(&self) -> KernelChoice {
        self.kernels
    }

    /// Chooses every kernel as for a GPU (`true`) or a CPU adapter, whatever the adapter is:
    /// for testing every variant on one adapter, or for comparing them.
    pub fn with_gpu_kernels(mut self, gpu: bool) -> Self {
        self.kernels = KernelChoice::all(gpu).on_adapter(self.subgroups_of_8);
        self
    }

    /// Whether the subgroup-broadcast kernels can run here (subgroups of at least 8 lanes),
    /// whether or not the kernel choice picks them.
    pub fn has_subgroups_of_8(&self) -> bool {
        self.subgroups_of_8
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Largest buffer wgnn may bind as one storage binding.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Fails with the first error the device reported since the last check.
    pub fn check_device(&self) -> Result<(), GpuError> {
        let mut errors = self
            .device_errors
            .lock()
            .map_err(|_| GpuError::Device("device error log poisoned".into()))?;
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors.remove(0);
        errors.clear();
        Err(GpuError::Device(first))
    }

    /// Blocks until all submitted work has finished.
    pub fn wait_idle(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Device(e.to_string()))?;
        self.check_device()
    }
}

fn new_instance(backend: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backend.unwrap_or_else(wgpu::Backends::all);
    // Validation layers are a debugging aid, not something a training run should pay for.
    descriptor.flags = wgpu::InstanceFlags::empty();
    wgpu::Instance::new(descriptor)
}

/// Lists every adapter wgpu can see, for `wgnn info`.
pub fn list_adapters() -> Vec<(AdapterSummary, wgpu::Limits)> {
    let instance = new_instance(None);
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| (AdapterSummary::from_info(&a.get_info()), a.limits()))
        .collect()
}

fn choose_adapter(
    adapters: Vec<wgpu::Adapter>,
    request: &AdapterRequest,
) -> Result<wgpu::Adapter, GpuError> {
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter);
    }
    let names: Vec<String> = adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!("{} ({:?})", info.name, info.backend)
        })
        .collect();
    let mut candidates: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| {
            let info = a.get_info();
            let name_ok = request.name.as_ref().is_none_or(|wanted| {
                info.name
                    .to_ascii_lowercase()
                    .contains(&wanted.to_ascii_lowercase())
            });
            let backend_ok = request
                .backend
                .is_none_or(|b| b.contains(wgpu::Backends::from(info.backend)));
            name_ok && backend_ok
        })
        .collect();
    if candidates.is_empty() {
        let wanted = match (&request.name, request.backend) {
            (Some(n), Some(b)) => format!("name containing {n:?} on {b:?}"),
            (Some(n), None) => format!("name containing {n:?}"),
            (None, Some(b)) => format!("backend {b:?}"),
            (None, None) => "any".into(),
        };
        return Err(GpuError::AdapterNotFound {
            wanted,
            available: names.join(", "),
        });
    }
    // Hardware first; among equals, Vulkan/Metal/DX12 before GL.
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let backend = u8::from(info.backend == wgpu::Backend::Gl);
        (kind, backend)
    };
    candidates.sort_by_key(rank);
    let best = rank(&candidates[0]);
    let peers = candidates.iter().take_while(|a| rank(a) == best).count();
    let at = request.ordinal.map_or(0, |k| k % peers);
    Ok(candidates.remove(at))
}

impl Drop for GpuContext {
    fn drop(&mut self) {
        self.save_pipeline_cache();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_choices_parse_as_documented() {
        let gpu = KernelChoice::parse("GPU").unwrap();
        assert!(gpu.tiled_matmul && gpu.parallel_reductions && !gpu.subgroup_matmul);
        let cpu = KernelChoice::parse("cpu").unwrap();
        assert!(!cpu.tiled_matmul && !cpu.parallel_reductions && cpu.subgroup_matmul);
        let mixed = KernelChoice::parse("tiled, subgroup").unwrap();
        assert!(mixed.tiled_matmul && !mixed.parallel_reductions && mixed.subgroup_matmul);
        let plain = KernelChoice::parse("register").unwrap();
        assert!(!plain.tiled_matmul && !plain.parallel_reductions && !plain.subgroup_matmul);
        assert_eq!(
            plain.to_string(),
            "register-blocked matmul, per-column reductions"
        );
        assert_eq!(cpu.on_adapter(true), cpu);
        let without_subgroups = cpu.on_adapter(false);
        assert!(!without_subgroups.subgroup_matmul && !without_subgroups.tiled_matmul);
        assert_eq!(
            without_subgroups.to_string(),
            "register-blocked matmul, per-column reductions"
        );
        assert_eq!(gpu.on_adapter(false), gpu);
        let err = KernelChoice::parse("tiled,fast").unwrap_err().to_string();
        assert!(
            err.contains("\"tiled,fast\"") && err.contains("subgroup"),
            "{err}"
        );
    }
}
