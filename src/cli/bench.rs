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
