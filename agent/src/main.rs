//! The `holdfast` command: see [`holdfast::cli`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    holdfast::cli::main(holdfast::cli::Cli::parse())
}
