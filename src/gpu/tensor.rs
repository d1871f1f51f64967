//! Tensors resident on the GPU: a storage buffer and its shape.

use super::{GpuContext, GpuError, kernel::Binding};

/// Usage of every tensor buffer: bound as storage, written by the queue, copied out for reads.
pub const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// A dense, row-major tensor of 32-bit elements (f32, or u32 for class labels) on the GPU.
#[derive(Debug)]
pub struct GpuTensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
}

impl GpuTensor {
    /// A zero-filled tensor (wgpu zero-initializes new buffers).
    pub fn zeros(ctx: &GpuContext, shape: &[usize], label: &str) -> Result<Self, GpuError> {
        let bytes = byte_len(shape);
        Ok(Self {
            buffer: ctx.create_buffer(label, bytes, TENSOR_USAGE)?,
            shape: shape.to_vec(),
        })
    }

    /// Uploads `data`, whose length must match `shape`.
    pub fn from_slice<T: bytemuck::Pod>(
        ctx: &GpuContext,
        data: &[T],
        shape: &[usize],
        label: &str,
    ) -> Result<Self, GpuError> {
        check_len(label, data.len(), shape)?;
        Ok(Self {
            buffer: ctx.create_buffer_init(label, bytemuck::cast_slice(data), TENSOR_USAGE)?,
            shape: shape.to_vec(),
        })
    }

    /// Wraps an existing buffer holding at least `shape`'s elements.
    pub fn from_buffer(buffer: wgpu::Buffer, shape: &[usize]) -> Self {
        Self {
            buffer,
            shape: shape.to_vec(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The tensor's bytes as one binding.
    pub fn binding(&self) -> Binding<'_> {
        Binding::range(&self.buffer, 0, byte_len(&self.shape))
    }

    /// Overwrites the tensor's contents through the queue (ordered before the next submit).
    pub fn write<T: bytemuck::Pod>(&self, ctx: &GpuContext, data: &[T]) -> Result<(), GpuError> {
        check_len("write", data.len(), &self.shape)?;
        ctx.queue
            .write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies the tensor back to the host, waiting for all submitted work.
    pub fn read<T: bytemuck::Pod>(&self, ctx: &GpuContext) -> Result<Vec<T>, GpuError> {
        read_buffer(ctx, &self.buffer, 0, byte_len(&self.shape))
    }
}

/// Bytes of a tensor of 4-byte elements.
pub fn byte_len(shape: &[usize]) -> u64 {
    shape.iter().product::<usize>() as u64 * 4
}

fn check_len(what: &str, len: usize, shape: &[usize]) -> Result<(), GpuError> {
    let expected: usize = shape.iter().product();
    if len != expected {
        return Err(GpuError::LengthMismatch {
            what: what.to_string(),
            shape: shape.to_vec(),
            expected,
            found: len,
        });
    }
    Ok(())
}

/// Copies `bytes` bytes of `buffer` from `offset` to the host (blocking).
pub fn read_buffer<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> Result<Vec<T>, GpuError> {
    if bytes == 0 {
        return Ok(Vec::new());
    }
    let staging = ctx.create_buffer(
        "readback",
        bytes,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    )?;
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes);
    ctx.queue.submit([encoder.finish()]);
    map_and_read(ctx, &staging, bytes)
}

/// Maps a MAP_READ buffer (after its copy was submitted), waits, and returns its contents.
pub fn map_and_read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<T>, GpuError> {
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    staging.map_async(wgpu::MapMode::Read, 0..bytes, move |result| {
        let _ = sender.send(result);
    });
    ctx.wait_idle()?;
    match pollster::block_on(receiver.receive()) {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(GpuError::Map(e.to_string())),
        None => return Err(GpuError::Map("map callback dropped".into())),
    }
    let data = {
        let view = staging
            .get_mapped_range(0..bytes)
            .map_err(|e| GpuError::Map(e.to_string()))?;
        bytemuck::pod_collect_to_vec(&view)
    };
    staging.unmap();
    Ok(data)
}
