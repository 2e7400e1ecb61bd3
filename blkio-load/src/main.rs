//! `blkio-load --socket PATH [options]`: see `blkio_load::cli::USAGE`.

use blkio_load::cli::{self, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(job)) => match blkio_load::load::run(&job) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("blkio-load: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            let usage = cli::USAGE.lines().next().unwrap_or_default();
            eprintln!("blkio-load: {e}\n{usage} (--help for more)");
            ExitCode::from(2)
        }
    }
}
