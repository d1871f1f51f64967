//! Where a step's time goes: GPU timestamps written between the dispatches of whole steps
//! (where the adapter has timestamp queries inside compute passes), and the host's time to
//! record and submit the same step. Medians over repeated steps, after a warm-up.

use super::{Dispatch, GpuContext, GpuError};

/// How the per-dispatch times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// GPU timestamps between consecutive dispatches of one step: each dispatch's time
    /// includes the barrier before it, as in a real step.
    Timestamps,
    /// The adapter has no timestamps inside passes: each dispatch repeated on its own in one
    /// submit, timed by the host (no barriers between repeats, so a lower bound).
    Wall,
}

/// One dispatch's share of a step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DispatchTime {
    /// The kernel's entry point.
    pub kernel: &'static str,
    /// Median seconds.
    pub seconds: f64,
}

/// The profile of one step's dispatches (all figures are medians over the repetitions).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepProfile {
    pub clock: Clock,
    pub dispatches: Vec<DispatchTime>,
    /// GPU seconds from before the first dispatch to after the last (timestamps only; with
    /// the wall clock, the sum of the dispatches).
    pub gpu_seconds: f64,
    /// Host seconds recording the compute pass and finishing the command buffer.
    pub encode_seconds: f64,
    /// Host seconds in `queue.submit`.
    pub submit_seconds: f64,
    /// Host seconds from the submit until the device has finished the step, alone.
    pub complete_seconds: f64,
    pub repetitions: usize,
}

impl StepProfile {
    /// Sum of the dispatches' times.
    pub fn dispatch_seconds(&self) -> f64 {
        self.dispatches.iter().map(|d| d.seconds).sum()
    }
}

/// Steps run before timing, so that lazily compiled pipelines and first-touch allocations are
/// not counted.
const WARM_UP: usize = 3;

impl GpuContext {
    /// Whether the device writes timestamps between the dispatches of a compute pass.
    pub fn has_pass_timestamps(&self) -> bool {
        self.device.features().contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        )
    }

    /// Profiles `dispatches` as one step, `reps` times (at least 1). Running them changes
    /// whatever buffers they write.
    pub fn profile_step(
        &self,
        dispatches: &[&Dispatch],
        reps: usize,
    ) -> Result<StepProfile, GpuError> {
        let reps = reps.max(1);
        for _ in 0..WARM_UP {
            self.submit(dispatches);
        }
        self.wait_idle()?;

        let (mut encode, mut submit, mut complete) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let start = std::time::Instant::now();
            let commands = self.record(dispatches, None);
            let recorded = std::time::Instant::now();
            self.queue.submit([commands]);
            let submitted = std::time::Instant::now();
            self.wait_idle()?;
            encode.push((recorded - start).as_secs_f64());
            submit.push((submitted - recorded).as_secs_f64());
            complete.push(submitted.elapsed().as_secs_f64());
        }

        let (clock, times, gpu_seconds) = if self.has_pass_timestamps() {
            let (times, span) = self.timestamped(dispatches, reps)?;
            (Clock::Timestamps, times, span)
        } else {
            let times = self.wall_per_dispatch(dispatches, reps)?;
            let sum = times.iter().sum();
            (Clock::Wall, times, sum)
        };
        Ok(StepProfile {
            clock,
            dispatches: dispatches
                .iter()
                .zip(times)
                .map(|(d, seconds)| DispatchTime {
                    kernel: d.label,
                    seconds,
                })
                .collect(),
            gpu_seconds,
            encode_seconds: median(&mut encode),
            submit_seconds: median(&mut submit),
            complete_seconds: median(&mut complete),
            repetitions: reps,
        })
    }

    /// Records `dispatches` into one compute pass; with `timestamps`, one before the first
    /// dispatch and one after each.
    fn record(
        &self,
        dispatches: &[&Dispatch],
        timestamps: Option<&wgpu::QuerySet>,
    ) -> wgpu::CommandBuffer {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgnn profile"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            if let Some(set) = timestamps {
                pass.write_timestamp(set, 0);
            }
            for (i, d) in dispatches.iter().enumerate() {
                d.encode(&mut pass);
                if let Some(set) = timestamps {
                    pass.write_timestamp(set, i as u32 + 1);
                }
            }
        }
        encoder.finish()
    }

    /// Per-dispatch medians and the median span of `reps` timestamped steps.
    fn timestamped(
        &self,
        dispatches: &[&Dispatch],
        reps: usize,
    ) -> Result<(Vec<f64>, f64), GpuError> {
        let queries = dispatches.len() + 1;
        if queries > wgpu::QUERY_SET_MAX_QUERIES as usize {
            return Err(GpuError::Unsupported(format!(
                "profiling a step of {} dispatches: a query set holds at most {} timestamps",
                dispatches.len(),
                wgpu::QUERY_SET_MAX_QUERIES
            )));
        }
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("wgnn profile"),
            ty: wgpu::QueryType::Timestamp,
            count: queries as u32,
        });
        let bytes = (queries * std::mem::size_of::<u64>()) as u64;
        let resolved = self.create_buffer(
            "profile timestamps",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let staging = self.create_buffer(
            "profile readback",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
        let mut per_dispatch = vec![Vec::with_capacity(reps); dispatches.len()];
        let mut spans = Vec::with_capacity(reps);
        for _ in 0..reps {
            let step = self.record(dispatches, Some(&set));
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgnn profile resolve"),
                });
            encoder.resolve_query_set(&set, 0..queries as u32, &resolved, 0);
            encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
            self.queue.submit([step, encoder.finish()]);
            let ticks: Vec<u64> = super::map_and_read(self, &staging, bytes)?;
            // A timestamp earlier than the one before it (some drivers reorder across a
            // barrier-free pair) counts as no time rather than as a wrap-around.
            for (i, pair) in ticks.windows(2).enumerate() {
                per_dispatch[i].push(pair[1].saturating_sub(pair[0]) as f64 * period);
            }
            let span = ticks[queries - 1].saturating_sub(ticks[0]);
            spans.push(span as f64 * period);
        }
        let times = per_dispatch.iter_mut().map(|t| median(t)).collect();
        Ok((times, median(&mut spans)))
    }

    /// Each dispatch repeated `reps` times in one submit, timed by the host.
    fn wall_per_dispatch(
        &self,
        dispatches: &[&Dispatch],
        reps: usize,
    ) -> Result<Vec<f64>, GpuError> {
        let mut out = Vec::with_capacity(dispatches.len());
        for d in dispatches {
            let list: Vec<&Dispatch> = std::iter::repeat_n(*d, reps).collect();
            let start = std::time::Instant::now();
            self.submit(&list);
            self.wait_idle()?;
            out.push(start.elapsed().as_secs_f64() / reps as f64);
        }
        Ok(out)
    }
}

/// The median of `values` (0 when empty); sorts them.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => 0.5 * (values[mid - 1] + values[mid]),
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
