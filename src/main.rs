//! The `wgnn` command line: train, eval, predict, info, bench.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(error) = cli::run(args) {
        // One line, whatever went wrong.
        let message = error.to_string().replace('\n', " ");
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
