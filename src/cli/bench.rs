//! `wgnn bench`.

use wgnn::bench::{Budget, Record, run_all};
use wgnn::error::{Error, Result};
use wgnn::gpu::GpuContext;

use super::BenchArgs;

pub fn run(args: BenchArgs) -> Result<()> {
    let ctx = std::sync::Arc::new(GpuContext::new()?);
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
        let json =
            serde_json::to_string_pretty(&records).map_err(|e| Error::Mode(e.to_string()))?;
        println!("{json}");
    }
    Ok(())
}
