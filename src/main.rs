//! The `wgnn` command line: train, eval, predict, info, bench.

mod cli;

use clap::Parser;

fn main() {
    restore_default_sigpipe();
    let args = cli::Cli::parse();
    if let Err(error) = cli::run(args) {
        // One line, whatever went wrong.
        let message = error.to_string().replace('\n', " ");
        eprintln!("error: {message}");
        std::process::exit(1);
    }
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
