//! `cargo bench -p copydata-cli [-- ARGS]`: runs the built `copydata bench
//! --quick` with ARGS passed through (for example `--json out.json`), so the
//! cargo bench and the subcommand give the same measurements.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    // Cargo passes `--bench` to every bench target; it is not ours.
    let extra: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let status = Command::new(env!("CARGO_BIN_EXE_copydata")).args(["bench", "--quick"]).args(&extra).status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("copydata bench exited with {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("running {}: {e}", env!("CARGO_BIN_EXE_copydata"));
            ExitCode::FAILURE
        }
    }
}
