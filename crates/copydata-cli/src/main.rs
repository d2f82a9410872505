//! `copydata`: the command-line face of the copydata library.
//!
//! Each subcommand lives in its own module under `cmd/` and is a thin layer
//! over the library. `main` maps errors to the documented exit codes (see
//! `exit.rs`) and prints one line on stderr naming the object and the cause.

mod cmd;
mod exit;
mod size;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Local inter-process communication in the Win32 tradition:
/// WM_COPYDATA-style messages and shared-memory sections (file mappings), on
/// Linux and Windows.
///
/// Exit codes: 0 ok, 1 other error, 2 usage or invalid argument, 3 no such
/// object, 4 timed out, 5 peer died, 6 already exists, 7 refused or
/// permission denied.
#[derive(Parser, Debug)]
#[command(name = "copydata", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show every capability working across real processes.
    Demo(cmd::demo::Args),
    /// Create, read, write and remove named sections.
    #[command(subcommand)]
    Section(cmd::section::Command),
    /// Bind a mailbox and print the messages that arrive.
    Listen(cmd::listen::Args),
    /// Send a message to a mailbox and print the reply.
    Send(cmd::send::Args),
    /// Run once per user: the first launch becomes the primary and prints
    /// the launches that follow; a later launch forwards its arguments,
    /// working directory and chosen variables to it, prints its answer and
    /// exits with its code (4 if it did not answer in time).
    ///
    /// Strings that are not valid UTF-8 are printed losslessly: backslashes
    /// doubled, each invalid byte as \xNN (an unpaired surrogate as \uXXXX
    /// on Windows), and the field named in the JSON object's "escaped" list.
    Instance(cmd::instance::Args),
    /// A u64 counter shared by processes (copydata::sync::Shared, type tag
    /// "copydata.counter.u64").
    #[command(subcommand)]
    Shared(cmd::sync::SharedCommand),
    /// Take a named mutex that survives its owner's death; prints
    /// "acquired" or "acquired (previous owner died)".
    Lock(cmd::sync::LockArgs),
    /// Set, reset or wait for a named event.
    Event(cmd::sync::EventArgs),
    /// List live named objects (sections and mailboxes).
    Ls(cmd::ls::Args),
    /// Measure latency and throughput against OS baselines and floors.
    ///
    /// Rows, each between separate processes (this executable re-run as
    /// children, pinned to different CPUs where possible): copydata `send`
    /// with the spin-then-park and park waits (a buffer filled once, the
    /// handler reading one byte), `post`, `loan` (loan + send + reply, the
    /// filling not timed) and `end-to-end` (loan, write every byte, send,
    /// the receiver sums every byte, reply); Unix-socket, pipe and
    /// TCP-loopback ping-pong (the receiver reads every byte); the floors:
    /// spin ping-pong on one shared cache line, single-thread memcpy, and
    /// fill-and-sum in one process; with --peers, ipc-channel and iceoryx2.
    /// Payloads 0 B to 64 MiB; 1, 4 and 16 sender processes to one mailbox.
    ///
    /// Each row is the median of 3 runs interleaved with the other rows. The
    /// table shows each row's p50 as a multiple of the Unix-socket row of the
    /// same payload (x uds) and of the floor (x floor: the spin floor below
    /// 4 KiB, memcpy of the same size from 4 KiB). Only ratios within one
    /// run mean much: absolute figures move between runs and machines.
    Bench(cmd::bench::Args),
    /// Internal: the child side of `copydata demo`.
    #[command(name = "__demo-child", hide = true)]
    DemoChild(cmd::demo::ChildArgs),
    /// Internal: the child processes of `copydata bench`.
    #[command(name = "__bench-child", hide = true)]
    BenchChild(cmd::bench::ChildArgs),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Section(command) => cmd::section::run(command),
        Command::Listen(args) => cmd::listen::run(args),
        Command::Send(args) => cmd::send::run(args),
        Command::Ls(args) => cmd::ls::run(args),
        Command::Shared(command) => cmd::sync::shared(command),
        Command::Lock(args) => cmd::sync::lock(args),
        Command::Event(args) => cmd::sync::event(args),
        Command::Instance(args) => cmd::instance::run(args),
        Command::DemoChild(args) => cmd::demo::child(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::BenchChild(args) => cmd::bench::child(args),
    }
}

/// Prints the library's warnings (why a mailbox dropped a connection) on
/// stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("copydata: {}", record.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    static LOG: StderrLog = StderrLog;
    let _ = log::set_logger(&LOG).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("copydata: {}", exit::one_line(&e));
            ExitCode::from(exit::code_for(&e))
        }
    }
}
