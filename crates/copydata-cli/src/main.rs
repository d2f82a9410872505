//! `copydata`: the command-line face of the copydata library.
//!
//! Each subcommand lives in its own module under `cmd/` and is a thin layer
//! over the library. `main` maps errors to the documented exit codes (see
//! `exit.rs`) and prints one line on stderr naming the object and the cause.

mod cmd;
mod exit;
mod interrupts;
mod size;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use clap_verbosity_flag::{Verbosity, WarnLevel};

/// Local IPC between processes, the Win32 way: messages and shared memory.
///
/// Messages go to named mailboxes, WM_COPYDATA-style: a tagged block of
/// bytes, the sender blocked until the receiver replies or a timeout ends.
/// Shared memory lives in sections (file mappings) that processes create,
/// open by name and map at any offset. On Linux and Windows.
#[derive(Parser, Debug)]
#[command(name = "copydata", version, after_help = exit::HELP, after_long_help = long_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
    // -v, -q: the level of diagnostics on stderr (see LONG_HELP).
    #[command(flatten)]
    verbosity: Verbosity<WarnLevel>,
}

/// The end of `--help` (`-h` shows the exit codes only).
fn long_help() -> String {
    format!("{LONG_HELP}{}", exit::HELP)
}

const LONG_HELP: &str = "\
Sizes (--size, --offset, --len) are a whole number of bytes with an
optional unit: kB, MB, GB, TB are powers of 1000 (1kB = 1000), KiB, MiB,
GiB, TiB and a bare k, m, g, t powers of 1024 (1KiB = 1k = 1024); any case.

Diagnostics go to stderr, warnings by default (such as why a mailbox
dropped or refused a connection). -v adds information, -vv debugging
detail, -vvv everything; -q leaves errors only, -qq nothing. RUST_LOG sets
levels per module in env_logger's syntax (RUST_LOG=debug,
RUST_LOG=copydata::cmd::send=debug); -v and -q, when given, set the
default level over it.

Shell completions: copydata completions bash|zsh|fish|powershell|elvish.
Manual page: copydata man (roff on stdout), or copydata man --out-dir DIR
for one page per subcommand.

";

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
    /// its own launch, then the launches that follow; a later launch
    /// forwards its arguments, working directory and chosen variables to
    /// it, prints its answer and exits with its code (4 if it did not
    /// answer in time).
    ///
    /// The primary prints "ready APP_ID", then one line per launch, its
    /// own first: "launch pid=PID cwd=DIR argv=[ARGS] VAR=VALUE..." (or a
    /// JSON object with --json), ARGS being the arguments after `--`.
    ///
    /// Strings that are not valid UTF-8 are printed losslessly: backslashes
    /// doubled, each invalid byte as \xNN (an unpaired surrogate as \uXXXX
    /// on Windows), the string marked with a b before its quotes in the
    /// text line and its field named in the JSON object's "escaped" list.
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
    /// List live named objects (sections, mailboxes, locks, events and
    /// shared values).
    ///
    /// A kind that cannot be listed (mailboxes, when the runtime directory
    /// cannot be used) is left out: the others are listed, stderr says what
    /// failed and why, and the exit code is 1.
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
    /// Print a shell completion script to stdout, e.g.
    /// `copydata completions bash > /etc/bash_completion.d/copydata`.
    Completions(cmd::docs::CompletionsArgs),
    /// Print the manual page (roff) to stdout, e.g. `copydata man | man -l -`;
    /// or write one page per subcommand into a folder.
    Man(cmd::docs::ManArgs),
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
        Command::Completions(args) => cmd::docs::completions(args, Cli::command()),
        Command::Man(args) => cmd::docs::man(args, Cli::command()),
    }
}

/// Diagnostics on stderr, one line each: `copydata: warn: ...` (with the
/// module at the debug and trace levels). Warnings by default; RUST_LOG
/// (env_logger's syntax) sets levels per module; -v/-q, when given, set the
/// default level over RUST_LOG's.
fn init_logging(verbosity: &Verbosity<WarnLevel>) {
    use std::io::Write as _;
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Warn);
    builder.parse_env(env_logger::Env::new().filter("RUST_LOG").write_style("RUST_LOG_STYLE"));
    if verbosity.is_present() {
        builder.filter_level(verbosity.log_level_filter());
    }
    builder.format(|out, record| {
        let level = record.level().as_str().to_ascii_lowercase();
        if record.level() <= log::Level::Info {
            writeln!(out, "copydata: {level}: {}", record.args())
        } else {
            writeln!(out, "copydata: {level}: {}: {}", record.target(), record.args())
        }
    });
    // Only fails if a logger is already set, which nothing here does.
    let _ = builder.try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    init_logging(&cli.verbosity);
    // `-qq`: nothing on stderr, not even the error (the exit code tells).
    let silent = cli.verbosity.is_present() && cli.verbosity.log_level().is_none();
    match run(cli) {
        Ok(code) => code,
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            if !silent {
                eprintln!("copydata: {}{}", exit::one_line(&e), exit::hint(&e));
            }
            ExitCode::from(exit::code_for(&e))
        }
    }
}
