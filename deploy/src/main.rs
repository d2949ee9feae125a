//! `cfs-deploy`: deploy image-based operating systems on composefs.
//!
//! The binary only parses arguments, calls the libraries and prints; every
//! error reaches `main` with its whole context chain, printed once.

mod cli;
mod cmd;

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match cmd::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A reader that closes the pipe early (`| head`) is not a failure.
            let broken_pipe = error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("cfs-deploy: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
