//! `wgnn info`.

use wgnn::error::Result;
use wgnn::gpu::{AdapterRequest, GpuContext, list_adapters};

pub fn run() -> Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        println!("no GPU adapter found: install a Vulkan driver such as mesa-vulkan-drivers");
    }
    for (adapter, limits) in &adapters {
        println!("{adapter}");
        println!(
            "  max_storage_buffer_binding_size: {}",
            limits.max_storage_buffer_binding_size
        );
        println!("  max_buffer_size: {}", limits.max_buffer_size);
        println!(
            "  max_storage_buffers_per_shader_stage: {}",
            limits.max_storage_buffers_per_shader_stage
        );
        println!(
            "  max_compute_workgroup_storage_size: {}",
            limits.max_compute_workgroup_storage_size
        );
        println!(
            "  max_compute_invocations_per_workgroup: {}",
            limits.max_compute_invocations_per_workgroup
        );
        println!(
            "  max_compute_workgroups_per_dimension: {}",
            limits.max_compute_workgroups_per_dimension
        );
        println!(
            "  min_storage_buffer_offset_alignment: {}",
            limits.min_storage_buffer_offset_alignment
        );
    }
    let request = AdapterRequest::from_env()?;
    let chosen = GpuContext::with_request(&request)?;
    println!("wgnn uses: {} ({})", chosen.adapter(), chosen.kernels());
    match chosen.pipeline_cache() {
        Some((file, bytes)) => println!(
            "pipeline cache: {} ({bytes} bytes found; {}=off disables it)",
            file.display(),
            wgnn::gpu::disk_cache::PIPELINE_CACHE_ENV
        ),
        None => println!(
            "pipeline cache: none ({}, or not Vulkan)",
            wgnn::gpu::disk_cache::PIPELINE_CACHE_ENV
        ),
    }
    Ok(())
}
