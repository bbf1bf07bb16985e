//! The `echo-server` command line: parsing, logging to stderr, signals, exit
//! statuses. `main.rs` only calls [`main`].
//!
//! Exit statuses: 0 after a clean shutdown (or `--help`), 1 when the server
//! cannot run (such as a port in use), 2 for a usage error.
//!
//! One file per concern: [`Args`] and what they build (`args.rs`), the
//! option values' parsers (`values.rs`), start-up and serving (`serve.rs`),
//! the `probe` command (`probe.rs`),
//! signals (`signals.rs`), the logger (`logger.rs`), and the man page and
//! completions (`generate.rs`).

mod args;
mod generate;
mod logger;
mod probe;
mod serve;
mod signals;
mod values;

pub use args::{Args, Command};
pub use generate::{generate, Generated};
pub use logger::LogFormat;
pub use probe::{ProbeArgs, Target};
pub use values::{parse_bytes, ProxySource};

use clap::{CommandFactory, Parser};
use std::ffi::OsString;
use std::process::ExitCode;

/// Runs the command with the process's arguments; returns its exit status.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs the command with `args` (the first is the program name).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            // clap prints help/version to stdout and errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(Command::Probe(probe)) = &args.command {
        return probe::run(probe);
    }
    if let Some(what) = args.generate {
        return match generate(what, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the {what} output: {e}");
                ExitCode::from(1)
            }
        };
    }
    logger::install(args.log_level(), args.log_format);
    match serve::serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            let _ = Args::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, msg)
                .print();
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Why the command stops with an error: a usage error (exit 2) or a
/// server that cannot run (exit 1).
enum Failure {
    Usage(std::borrow::Cow<'static, str>),
    Runtime(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Runtime(e)
    }
}
