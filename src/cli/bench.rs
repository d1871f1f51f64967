//! `wgnn bench`.

use wgnn::bench::{Budget, Record, STACK_BATCH, run_all};
use wgnn::gpu::GpuContext;

use super::BenchArgs;
use super::error::Result;

pub fn run(args: BenchArgs) -> Result<()> {
    let ctx = std::sync::Arc::new(GpuContext::new()?);
    if args.profile {
        if !args.json {
            println!("adapter: {}", ctx.adapter());
        }
        return profile(ctx, args.json);
    }
    let budget = if args.quick {
        Budget::quick()
    } else {
        Budget::full()
    };
    if !args.json {
        println!("adapter: {}", ctx.adapter());
    }
    let print = |r: &Record| {
        if args.json {
            eprintln!("{:<42} {:>14.2} {}", r.name, r.value, r.unit);
        } else {
            println!("{:<42} {:>14.2} {}", r.name, r.value, r.unit);
        }
    };
    let records = run_all(ctx, budget, print)?;
    if args.json {
        let json = serde_json::to_string_pretty(&records)?;
        println!("{json}");
    }
    Ok(())
}

/// The steps `wgnn bench --profile` breaks down: (features, batch, members) of the lecture
/// MLP, lone models first, then stacks at the lecture's batch (which dispatches grow with the
/// members).
const PROFILED: [(usize, usize, usize); 6] = [
    (784, 128, 1),
    (784, 1024, 1),
    (3072, 128, 1),
    (784, STACK_BATCH, 1),
    (784, STACK_BATCH, 16),
    (784, STACK_BATCH, 64),
];

/// Where the lecture MLP's steps spend their time, per dispatch and on the host.
fn profile(ctx: std::sync::Arc<GpuContext>, json: bool) -> Result<()> {
    const REPETITIONS: usize = 30;
    let mut steps = Vec::new();
    for (features, batch, members) in PROFILED {
        let mut model = wgnn::bench::lecture_stack(ctx.clone(), features, batch, members)?;
        for mode in [wgnn::Mode::Train, wgnn::Mode::Eval] {
            let profile = model.profile(mode, REPETITIONS)?;
            if !json {
                let stack = match members {
                    1 => String::new(),
                    m => format!(", a stack of {m}"),
                };
                print_profile(
                    &format!("{mode:?}, {features} inputs, batch {batch}{stack}"),
                    &profile,
                );
            }
            steps.push(serde_json::json!({
                "mode": format!("{mode:?}").to_lowercase(),
                "features": features,
                "batch": batch,
                "members": members,
                "profile": profile,
            }));
        }
    }
    if json {
        let out = serde_json::json!({ "adapter": ctx.adapter().to_string(), "steps": steps });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn print_profile(title: &str, p: &wgnn::gpu::StepProfile) {
    let clock = match p.clock {
        wgnn::gpu::Clock::Timestamps => "GPU timestamps",
        wgnn::gpu::Clock::Wall => "host clock, each dispatch alone",
    };
    println!(
        "{title}: {} dispatches, GPU {:.1} µs ({clock}); host: record {:.1} µs, submit {:.1} µs, \
         submit to done {:.1} µs (medians of {})",
        p.dispatches.len(),
        p.gpu_seconds * 1e6,
        p.encode_seconds * 1e6,
        p.submit_seconds * 1e6,
        p.complete_seconds * 1e6,
        p.repetitions
    );
    let total = p.dispatch_seconds().max(f64::MIN_POSITIVE);
    for d in &p.dispatches {
        println!(
            "  {:<20} {:>9.1} µs  {:>5.1} %",
            d.kernel,
            d.seconds * 1e6,
            100.0 * d.seconds / total
        );
    }
}

/// `wgnn bench --data-parallel`: every rank runs the same steps; rank 0 prints.
pub fn data_parallel(args: BenchArgs, comm: &wgnn::dist::Comm) -> Result<()> {
    let ctx = std::sync::Arc::new(GpuContext::new()?);
    let primary = comm.rank() == 0;
    if primary && !args.json {
        println!("adapter: {} ({} rank(s))", ctx.adapter(), comm.size());
    }
    let steps = if args.quick { 40 } else { 200 };
    let sync = if comm.size() > 1 {
        &[false, true][..]
    } else {
        &[false][..]
    };
    let mut records = Vec::new();
    for (features, batch) in [(784usize, 128usize), (784, 1024), (3072, 128)] {
        for &sync_bn in sync {
            let r = wgnn::bench::data_parallel_step(
                ctx.clone(),
                comm.clone(),
                features,
                batch,
                sync_bn,
                steps,
            )?;
            if primary && !args.json {
                println!(
                    "{} inputs, batch {} × {} rank(s){}: {:.3} ms/step, {:.0} samples/s; {} exchange(s) of {:.1} KiB: device wait {:.3} ms, host {:.3} ms (collectives {:.3}); a lone all-reduce {:.1} µs",
                    features,
                    batch,
                    r.ranks,
                    if sync_bn { ", --sync-bn" } else { "" },
                    r.seconds_per_step * 1e3,
                    r.samples_per_second,
                    r.exchanges_per_step,
                    r.exchanged_bytes_per_step as f64 / 1024.0,
                    r.exchange_wait_seconds_per_step * 1e3,
                    r.exchange_host_seconds_per_step * 1e3,
                    r.collective_seconds_per_step * 1e3,
                    r.all_reduce_seconds * 1e6,
                );
            }
            records.push(r);
        }
    }
    if primary && args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(())
}
