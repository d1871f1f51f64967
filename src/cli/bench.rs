//! `wgnn bench`.

use wgnn::bench::{Budget, Record, run_all};
use wgnn::gpu::GpuContext;

use super::BenchArgs;
use super::error::Result;

pub fn run(args: BenchArgs) -> Result<()> {
    let ctx = std::sync::Arc::new(GpuContext::new()?);
    if args.profile {
        return profile(ctx);
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

/// Per-dispatch times of the lecture MLP's plans.
fn profile(ctx: std::sync::Arc<GpuContext>) -> Result<()> {
    println!("adapter: {}", ctx.adapter());
    for batch in [128usize, 1024] {
        let mut model = wgnn::bench::lecture_model(ctx.clone(), 784, batch)?;
        for mode in [wgnn::Mode::Train, wgnn::Mode::Eval] {
            let times = model.profile(mode, 20)?;
            let total: f64 = times.iter().map(|t| t.1).sum();
            println!(
                "{mode:?} step, batch {batch}: {:.3} ms in {} dispatches",
                total * 1e3,
                times.len()
            );
            for (name, seconds) in times {
                println!(
                    "  {name:<16} {:>9.1} µs  {:>5.1} %",
                    seconds * 1e6,
                    100.0 * seconds / total
                );
            }
        }
    }
    Ok(())
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
