//! The `wgnn` command line: train, eval, predict, info, bench.

mod cli;

use clap::Parser;

/// The log filter when `RUST_LOG` is unset: warnings and errors from every crate, wgnn's and
/// wgpu's (wgpu, wgpu_core, wgpu_hal, naga) alike, so that a driver's complaint such as
/// wgpu-hal's "Allocation would result in an OOM condition" reaches the user. On lavapipe,
/// through Vulkan and GL, wgpu and naga log nothing at this level, so a normal run's stderr
/// holds only wgnn's own output.
const DEFAULT_LOG_FILTER: &str = "warn";

fn main() {
    restore_default_sigpipe();
    init_logger();
    // Tests stop the program at a chosen disk operation (see wgnn::durable).
    if let Ok(text) = std::env::var(wgnn::durable::FAILPOINT_ENV) {
        match wgnn::durable::Failpoint::parse(&text) {
            Some(failpoint) => wgnn::durable::set_failpoint(Some(failpoint)),
            None => {
                eprintln!(
                    "error: {}={text:?}: expected K, K:abort, K:crash or K:full (K ≥ 1)",
                    wgnn::durable::FAILPOINT_ENV
                );
                std::process::exit(1);
            }
        }
    }
    let args = cli::Cli::parse();
    // Under mpirun (and built with the `mpi` feature), one process of a data-parallel job.
    let comm = match cli::dist::init() {
        Ok(comm) => comm,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    let result = cli::run(args, &comm);
    if let Err(error) = result {
        // One line, whatever went wrong.
        let message = error.to_string().replace('\n', " ");
        if comm.size() == 1 {
            eprintln!("error: {message}");
        } else if error.is_collective() {
            // Every rank found it: rank 0 says it, and the job ends in order.
            if comm.rank() == 0 {
                eprintln!("error: {message}");
            }
        } else {
            // The other ranks wait in a collective this one will never join: end them all.
            eprintln!("error: {}: {message}", comm.describe());
            comm.abort(1);
        }
        drop(comm);
        std::process::exit(1);
    }
    // Finalizes MPI in a job.
    drop(comm);
}

/// Log records go to stderr as `[LEVEL target] message`; `RUST_LOG` replaces the default
/// filter (e.g. `RUST_LOG=info`, `RUST_LOG=wgpu_hal=debug`, `RUST_LOG=off`).
fn init_logger() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER))
        .format_timestamp(None)
        .init();
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`wgnn bench | head`) would panic;
/// like other command-line tools, end quietly instead.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
