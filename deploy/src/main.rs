//! `cfs-deploy`: deploy image-based operating systems on composefs.
//!
//! The binary only parses arguments, calls the libraries and prints; every
//! error reaches `main` with its whole context chain, printed once.

mod cli;
mod cmd;
mod esp;
mod host;
mod progress;
mod setup_root;
mod varlink;
mod writable;

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
            eprintln!("cfs-deploy: error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `: `-separated. Our library
/// errors show their cause in their own message and also return it as
/// their source, so a cause the line already ends with is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error shaped like the libraries' `Io` variants.
    #[derive(Debug)]
    struct ShowsItsSource {
        source: std::io::Error,
    }

    impl std::fmt::Display for ShowsItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "copying into objects: {}", self.source)
        }
    }

    impl std::error::Error for ShowsItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn causes_shown_by_their_parent_are_not_repeated() {
        let full = std::io::Error::from_raw_os_error(28);
        let inner = std::io::Error::other(ShowsItsSource { source: full });
        let error = anyhow::Error::new(inner).context("storing image x");
        let line = one_line(&error);
        assert_eq!(line.matches("No space left on device").count(), 1, "{line}");
        assert!(line.starts_with("storing image x: copying into objects: No space"));
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), "outer: inner");
    }
}
