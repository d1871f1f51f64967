//! A step of a data-parallel job: the plan's dispatches are submitted in segments, and at
//! each of its [`Exchange`]s the host reads what the segment left, runs the collective over
//! the ranks and writes the result back before the next segment. On one process without
//! SyncBatchNorm a plan has no exchanges and a step stays one submit.

use std::time::Instant;

use crate::dist::{Communicator, RankMoments, all_gather_u64, combine_moments};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuContext, GpuError, map_and_read};
use crate::graph::{Exchange, Region};

use super::metrics::MetricTotals;

/// What one step's submits did.
pub(super) struct Submitted {
    /// The last submit.
    pub index: wgpu::SubmissionIndex,
    pub submits: u64,
    pub exchanges: u64,
    /// From each segment's submit to its read-back on the host.
    pub wait_nanos: u64,
    /// From there to the result written back.
    pub host_nanos: u64,
    /// Of which in the collectives.
    pub collective_nanos: u64,
}

/// How a step's dispatches are submitted.
pub(super) struct Segments<'a> {
    /// Where the step stops for the ranks (none: one submit), and a read-back buffer each.
    pub exchanges: &'a [(usize, Exchange)],
    pub staging: &'a [wgpu::Buffer],
    pub comm: &'a dyn Communicator,
    /// Copy the totals for an asynchronous read at the end.
    pub metrics: Option<&'a MetricTotals>,
    /// A submit to wait for before the last one (back-pressure).
    pub oldest: Option<wgpu::SubmissionIndex>,
}

/// Submits `dispatches` in segments split at the exchanges, with the metrics copy (when
/// asked) at the end.
pub(super) fn submit_segments(
    ctx: &GpuContext,
    dispatches: &[&Dispatch],
    segments: Segments<'_>,
) -> Result<Submitted> {
    let Segments {
        exchanges,
        staging,
        comm,
        metrics,
        oldest,
    } = segments;
    let mut start = 0;
    let (mut wait_nanos, mut host_nanos, mut collective_nanos) = (0u64, 0u64, 0u64);
    let nanos = |t: Instant| t.elapsed().as_nanos() as u64;
    for ((at, exchange), staged) in exchanges.iter().zip(staging) {
        let mut encoder = encoder(ctx);
        encode(&mut encoder, &dispatches[start..*at]);
        let mut offset = 0;
        for r in exchange.reads() {
            encoder.copy_buffer_to_buffer(&r.buffer, r.offset, staged, offset, r.size);
            offset += r.size;
        }
        let began = Instant::now();
        ctx.queue.submit([encoder.finish()]);
        let read = map_and_read::<f32>(ctx, staged, exchange.read_bytes())?;
        wait_nanos += nanos(began);
        let read_at = Instant::now();
        collective_nanos += exchange_on_host(ctx, comm, exchange, read)?;
        host_nanos += nanos(read_at);
        start = *at;
    }
    let mut encoder = encoder(ctx);
    encode(&mut encoder, &dispatches[start..]);
    if let Some(metrics) = metrics {
        metrics.encode_copy(&mut encoder);
    }
    if let Some(oldest) = oldest {
        ctx.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(oldest),
                timeout: None,
            })
            .map_err(|e| GpuError::Device(e.to_string()))?;
    }
    let index = ctx.queue.submit([encoder.finish()]);
    Ok(Submitted {
        index,
        submits: exchanges.len() as u64 + 1,
        exchanges: exchanges.len() as u64,
        wait_nanos,
        host_nanos,
        collective_nanos,
    })
}

/// Bytes a step sends into the collectives of `exchanges` (what each rank contributes).
pub(super) fn exchanged_bytes(exchanges: &[(usize, Exchange)]) -> u64 {
    exchanges
        .iter()
        .map(|(_, e)| match e {
            // The row count travels with the moments.
            Exchange::Moments { .. } => e.read_bytes() + 8,
            _ => e.read_bytes(),
        })
        .sum()
}

fn encoder(ctx: &GpuContext) -> wgpu::CommandEncoder {
    ctx.device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("step"),
        })
}

fn encode(encoder: &mut wgpu::CommandEncoder, dispatches: &[&Dispatch]) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("step"),
        timestamp_writes: None,
    });
    for d in dispatches {
        d.encode(&mut pass);
    }
}

/// The collective of one exchange, on what the segment left (`read`), and the write back;
/// returns the nanoseconds spent in the collectives.
fn exchange_on_host(
    ctx: &GpuContext,
    comm: &dyn Communicator,
    exchange: &Exchange,
    mut read: Vec<f32>,
) -> Result<u64> {
    let write = |region: &Region, values: &[f32]| {
        ctx.queue
            .write_buffer(&region.buffer, region.offset, bytemuck::cast_slice(values));
    };
    let began = Instant::now();
    let in_collectives = || began.elapsed().as_nanos() as u64;
    let nanos = match exchange {
        Exchange::Mean { region } => {
            read.truncate((region.size / 4) as usize);
            comm.all_reduce_sum(&mut read)?;
            let nanos = in_collectives();
            if comm.size() > 1 {
                let scale = 1.0 / comm.size() as f32;
                read.iter_mut().for_each(|v| *v *= scale);
            }
            write(region, &read);
            nanos
        }
        Exchange::Moments {
            saved,
            rows,
            features,
        } => {
            let d = *features;
            let ranks = gather_moments(comm, *rows as u64, &read[..2 * d])?;
            let nanos = in_collectives();
            let (mean, var) = combine_moments(&ranks);
            write(saved, &[mean, var].concat());
            nanos
        }
        Exchange::Sum { writes, .. } => {
            comm.all_reduce_sum(&mut read)?;
            let nanos = in_collectives();
            let mut rest = &read[..];
            for region in writes {
                let (part, tail) = rest.split_at(((region.size / 4) as usize).min(rest.len()));
                write(region, part);
                rest = tail;
            }
            nanos
        }
    };
    Ok(nanos)
}

/// Every rank's rows and [mean; var] of one layer; every rank must have the same rows (the
/// dx kernel divides by their total).
fn gather_moments(comm: &dyn Communicator, rows: u64, moments: &[f32]) -> Result<Vec<RankMoments>> {
    let all_rows = all_gather_u64(comm, &[rows])?;
    if all_rows.iter().any(|&r| r != rows) {
        return Err(crate::dist::DistError::UnequalBatches { rows: all_rows }.into());
    }
    let mut all = vec![0f32; moments.len() * comm.size()];
    comm.all_gather(
        bytemuck::cast_slice(moments),
        bytemuck::cast_slice_mut(&mut all),
    )?;
    let d = moments.len() / 2;
    Ok(all
        .chunks(2 * d)
        .zip(all_rows)
        .map(|(m, rows)| RankMoments {
            rows,
            mean: m[..d].to_vec(),
            var: m[d..].to_vec(),
        })
        .collect())
}
