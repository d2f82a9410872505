//! `copydata bench`: round-trip latency and throughput of copydata's
//! mailboxes against OS baselines, hardware floors and (opt-in) peer
//! libraries, across real processes.
//!
//! Every row runs between separate processes: the bench re-runs this
//! executable as `copydata __bench-child ROLE ...` for the server side of a
//! row and for extra senders, pins the measuring process and the server to
//! different CPUs, and times each round trip in the measuring process. Rows
//! run in three rounds, interleaved (round 1 of every row, then round 2, then
//! round 3); a row reports the median of its three runs for each figure.

mod baseline;
mod copydata_rows;
mod locks;
mod peers;
mod procs;
mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};

pub use procs::Cpus;

/// `copydata bench`; the help text is on the subcommand in `main.rs`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Fewer iterations and sizes: only the key rows (64 B and 64 MiB
    /// mostly); under a minute on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Add ipc-channel and iceoryx2 rows (needs a build with
    /// `--features peers`; Linux).
    #[arg(long)]
    peers: bool,
    /// Write the rows as a JSON array to this file: objects with transport,
    /// mode (null except for copydata), payload_bytes, senders, p50_ns,
    /// p99_ns, msgs_per_s and gb_per_s (null for a row not measured).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Run only the rows whose name ("TRANSPORT MODE", e.g. "copydata
    /// loan", "unix-socket") contains this text (ratios need their
    /// reference rows in the same run).
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Write an SVG chart (p50 round trip against payload size, log scales)
    /// to this file.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    /// Measure the locks instead: uncontended lock+unlock and the hand-off
    /// between two processes of copydata's Mutex and Shared, next to
    /// std::sync::Mutex in one process.
    #[arg(long)]
    locks: bool,
    /// Measure what a pause before a call costs instead: a small send and
    /// a 64 KiB loan right after the previous call and after the sender
    /// spent 1 ms and 8 ms spinning (the loan also 0.3 ms and 3 ms), next
    /// to a 64 MiB loan after its filling and a 64 KiB loan after as much
    /// filling elsewhere; then the spin floor's round trip after the same
    /// pauses and after filling 64 KiB and 64 MiB, and reading 32 KiB of
    /// memory after the pauses.
    #[arg(long, conflicts_with = "locks")]
    pauses: bool,
}

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Copydata,
    UnixSocket,
    Pipe,
    Tcp,
    IpcChannel,
    Iceoryx2,
    FloorSpinPingPong,
    FloorMemcpy,
    FloorFillAndSum,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Copydata => "copydata",
            Transport::UnixSocket => "unix-socket",
            Transport::Pipe => "pipe",
            Transport::Tcp => "tcp",
            Transport::IpcChannel => "ipc-channel",
            Transport::Iceoryx2 => "iceoryx2",
            Transport::FloorSpinPingPong => "floor-spin-ping-pong",
            Transport::FloorMemcpy => "floor-memcpy",
            Transport::FloorFillAndSum => "floor-fill-and-sum",
        }
    }
}

/// How copydata is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// `send` of a filled buffer, the sender spinning briefly, then parking.
    SpinThenPark,
    /// `send` of a filled buffer, the sender parking at once.
    Park,
    /// One-way `post`s.
    Post,
    /// `loan(len)` + send + reply, the filling not timed.
    Loan,
    /// `loan(len)`, fill, send, the receiver sums every byte, reply.
    EndToEnd,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::SpinThenPark => "spin-then-park",
            Mode::Park => "park",
            Mode::Post => "post",
            Mode::Loan => "loan",
            Mode::EndToEnd => "end-to-end",
        }
    }
}

/// One row: exactly one per (transport, mode, payload, senders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Row {
    pub transport: Transport,
    pub mode: Option<Mode>,
    pub payload: usize,
    pub senders: usize,
}

impl Row {
    fn new(transport: Transport, mode: Option<Mode>, payload: usize) -> Row {
        Row { transport, mode, payload, senders: 1 }
    }

    pub fn label(&self) -> String {
        match self.mode {
            Some(m) => format!("{} {}", self.transport.name(), m.name()),
            None => self.transport.name().to_string(),
        }
    }
}

/// The figures of one run (or the medians of a row's runs).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub msgs_per_s: f64,
}

/// What a row came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    Measured(Sample),
    /// Not measurable in this build or on this platform (never faked).
    Absent(String),
    Failed(String),
}

crate::exit::worded_error!(
    /// A row that cannot run in this build or on this platform.
    Unavailable
);

/// How many iterations a run does.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations, at most.
    pub iters: usize,
    /// A run stops early after this much timed time (but not before
    /// [`MIN_ITERS`] iterations).
    pub max_time: Duration,
}

/// The fewest timed iterations of any run.
pub const MIN_ITERS: usize = 10;

impl Budget {
    /// Many iterations for small payloads, a few dozen at 64 MiB.
    fn for_payload(payload: usize, quick: bool) -> Budget {
        let (iters, warmup) = match payload {
            0..=4096 => (20_000, 2_000),
            4097..=65_536 => (5_000, 500),
            65_537..=1_048_576 => (500, 50),
            _ => (40, 4),
        };
        if quick {
            Budget { warmup: (warmup / 2).max(2), iters: (iters / 4).max(12), max_time: Duration::from_millis(400) }
        } else {
            Budget { warmup, iters, max_time: Duration::from_millis(1000) }
        }
    }
}

/// Per-iteration times of one run.
pub struct Timings {
    ns: Vec<u64>,
    total: Duration,
    budget: Budget,
}

impl Timings {
    pub fn new(budget: Budget) -> Timings {
        Timings { ns: Vec::with_capacity(budget.iters.min(1 << 16)), total: Duration::ZERO, budget }
    }

    pub fn push(&mut self, d: Duration) {
        self.ns.push(d.as_nanos().try_into().unwrap_or(u64::MAX));
        self.total += d;
    }

    /// Whether the run has done its iterations or used its time.
    pub fn done(&self) -> bool {
        self.ns.len() >= self.budget.iters || (self.total >= self.budget.max_time && self.ns.len() >= MIN_ITERS)
    }

    /// p50, p99, and messages/s over the timed time.
    pub fn sample(self) -> anyhow::Result<Sample> {
        let total = self.total;
        self.sample_over(total)
    }

    /// p50, p99, and messages/s over `wall` (for runs whose throughput is not
    /// the sum of the timed calls).
    pub fn sample_over(mut self, wall: Duration) -> anyhow::Result<Sample> {
        anyhow::ensure!(!self.ns.is_empty(), "no iteration was timed");
        self.ns.sort_unstable();
        let at = |q: usize| self.ns[(self.ns.len() * q / 100).min(self.ns.len() - 1)] as f64;
        let secs = wall.as_secs_f64();
        Ok(Sample {
            p50_ns: at(50),
            p99_ns: at(99),
            msgs_per_s: if secs > 0.0 { self.ns.len() as f64 / secs } else { 0.0 },
        })
    }

    /// Adds another process's timings (the multi-sender rows).
    pub fn extend(&mut self, ns: impl IntoIterator<Item = u64>) {
        for n in ns {
            self.ns.push(n);
            self.total += Duration::from_nanos(n);
        }
    }
}

/// What every row runner gets.
pub struct Ctx {
    pub cpus: Cpus,
    pub quick: bool,
}

impl Ctx {
    pub fn budget(&self, row: &Row) -> Budget {
        Budget::for_payload(row.payload, self.quick)
    }
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The rows of a run, in the order they run within a round.
fn rows(quick: bool, peers: bool) -> Vec<Row> {
    use Mode::*;
    use Transport::*;
    let mut rows = Vec::new();
    let cd = |m, n| Row::new(Copydata, Some(m), n);
    if quick {
        rows.extend([cd(SpinThenPark, 64), cd(SpinThenPark, 64 * MIB)]);
        rows.push(Row { senders: 16, ..cd(SpinThenPark, 64) });
        rows.extend([cd(Park, 64), cd(Post, 64), cd(Loan, 64 * KIB), cd(Loan, 64 * MIB), cd(EndToEnd, 64 * MIB)]);
        rows.extend([Row::new(UnixSocket, None, 64), Row::new(Pipe, None, 64), Row::new(Tcp, None, 64)]);
        rows.push(Row::new(FloorSpinPingPong, None, 64));
        rows.extend([Row::new(FloorMemcpy, None, 64 * MIB), Row::new(FloorFillAndSum, None, 64 * MIB)]);
    } else {
        let sizes = [0, 64, 4 * KIB, 64 * KIB, MIB, 64 * MIB];
        for mode in [SpinThenPark, Park, Post, Loan, EndToEnd] {
            rows.extend(sizes.iter().map(|&n| cd(mode, n)));
        }
        rows.extend([4, 16].map(|senders| Row { senders, ..cd(SpinThenPark, 64) }));
        for t in [UnixSocket, Pipe, Tcp] {
            rows.extend(sizes.iter().map(|&n| Row::new(t, None, n)));
        }
        rows.push(Row::new(FloorSpinPingPong, None, 64));
        for t in [FloorMemcpy, FloorFillAndSum] {
            rows.extend(sizes.iter().filter(|&&n| n >= 4 * KIB).map(|&n| Row::new(t, None, n)));
        }
    }
    if peers {
        let sizes: &[usize] = if quick { &[64] } else { &[64, 4 * KIB, 64 * KIB] };
        for t in [Iceoryx2, IpcChannel] {
            rows.extend(sizes.iter().map(|&n| Row::new(t, None, n)));
        }
    }
    rows
}

fn run_row(row: &Row, ctx: &Ctx) -> anyhow::Result<Sample> {
    match row.transport {
        Transport::Copydata => copydata_rows::run(row, ctx),
        Transport::IpcChannel | Transport::Iceoryx2 => peers::run(row, ctx),
        _ => baseline::run(row, ctx),
    }
}

/// The number of interleaved rounds; each row reports the median.
const ROUNDS: usize = 3;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.peers && !peers::BUILT {
        return Err(crate::exit::Usage(peers::NOT_BUILT.into()).into());
    }
    let json = args.json.as_deref().map(report::Output::create).transpose()?;
    let plot = args.plot.as_deref().map(report::Output::create).transpose()?;
    let cpus = Cpus::choose();
    if let Some(cpu) = cpus.client {
        procs::pin(cpu)?;
    }
    if args.locks {
        locks::run(cpus, args.quick)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = Ctx { cpus, quick: args.quick };
    if args.pauses {
        copydata_rows::pauses(&ctx)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = rows(args.quick, args.peers);
    if let Some(text) = &args.filter {
        rows.retain(|r| r.label().contains(text.as_str()));
        if rows.is_empty() {
            return Err(crate::exit::Usage(format!("no row matches --filter {text:?}")).into());
        }
    }
    println!(
        "copydata bench{}: {} rows x {ROUNDS} interleaved rounds (median of the rounds); {}",
        if args.quick { " --quick" } else { "" },
        rows.len(),
        cpus.describe()
    );
    let bar = progress_bar((rows.len() * ROUNDS) as u64);
    let mut runs: Vec<Vec<Sample>> = vec![Vec::new(); rows.len()];
    let mut broken: Vec<Option<Outcome>> = vec![None; rows.len()];
    for round in 1..=ROUNDS {
        for (i, row) in rows.iter().enumerate() {
            bar.set_message(format!("round {round}/{ROUNDS}: {} {} B", row.label(), row.payload));
            if broken[i].is_none() {
                // A peer library that panics fails its row, not the run.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_row(row, &ctx)))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked (see above)")));
                match result {
                    Ok(sample) => runs[i].push(sample),
                    Err(e) => {
                        broken[i] = Some(match e.downcast_ref::<Unavailable>() {
                            Some(u) => Outcome::Absent(u.0.clone()),
                            None => Outcome::Failed(crate::exit::one_line(&e)),
                        })
                    }
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let results: Vec<(Row, Outcome)> = rows
        .iter()
        .zip(runs.iter().zip(broken))
        .map(|(row, (samples, broken))| (*row, broken.unwrap_or_else(|| Outcome::Measured(median(samples)))))
        .collect();
    print!("{}", report::table(&results));
    if let Some(out) = json {
        report::write_json(out, &results)?;
    }
    if let Some(out) = plot {
        report::write_svg(out, &results)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// The median of each figure on its own.
fn median(samples: &[Sample]) -> Sample {
    let mid = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Sample { p50_ns: mid(|s| s.p50_ns), p99_ns: mid(|s| s.p99_ns), msgs_per_s: mid(|s| s.msgs_per_s) }
}

// ------------------------------------------------------------ child side

/// The roles of `copydata __bench-child`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// A copydata mailbox that answers every message.
    Mailbox,
    /// An extra copydata sender (the multi-sender rows).
    Sender,
    /// Echo server on a Unix socket (`--name PATH`).
    Unix,
    /// Echo server on TCP loopback (`--name PORT`).
    Tcp,
    /// Echo server on standard input and output.
    Pipe,
    /// Spin ping-pong partner on an inherited section.
    Spin,
    /// ipc-channel request/reply server (`--name` the one-shot server).
    IpcChannel,
    /// iceoryx2 request-response server (`--name` the service).
    Iceoryx2,
    /// The other party of the lock hand-off (`--name` the shared value,
    /// `--payload` the number of turns).
    LockPartner,
}

/// What the mailbox's handler does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Handler {
    /// Reads one byte of the payload (or of the loan).
    Touch,
    /// Sums every byte of the loan.
    Sum,
}

#[derive(ClapArgs, Debug)]
pub struct ChildArgs {
    #[arg(value_enum)]
    role: Role,
    /// Pin this process to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// The mailbox, socket path, port or service.
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long, default_value_t = 0)]
    payload: usize,
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Sender: how long to send after `go`.
    #[arg(long, default_value_t = 0)]
    millis: u64,
    #[arg(long, value_enum, default_value_t = Handler::Touch)]
    handler: Handler,
    /// Handler threads of the mailbox.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Sender: park at once instead of spinning first.
    #[arg(long)]
    park: bool,
}

/// Set once the bench closed this child's standard input.
static STOP: AtomicBool = AtomicBool::new(false);

/// Whether the bench has told this child to end.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Reads standard input by lines on a thread; sets [`stopping`] at its end.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        STOP.store(true, Ordering::Relaxed);
    });
    rx
}

/// The child roles: each serves one row of one round.
pub fn child(args: ChildArgs) -> anyhow::Result<ExitCode> {
    if let Some(cpu) = args.cpu {
        procs::pin(cpu)?;
    }
    procs::self_limit();
    match args.role {
        Role::Mailbox => {
            let lines = stdin_lines();
            copydata_rows::serve(&args.name, args.handler, args.threads, lines)?
        }
        Role::Sender => {
            let lines = stdin_lines();
            copydata_rows::extra_sender(&args.name, args.payload, args.warmup, args.millis, args.park, lines)?
        }
        Role::Unix | Role::Tcp | Role::Pipe => baseline::echo_server(args.role, &args.name)?,
        Role::Spin => {
            let _lines = stdin_lines();
            baseline::spin_partner()?
        }
        Role::LockPartner => locks::partner(&args.name, args.payload as u64)?,
        Role::IpcChannel | Role::Iceoryx2 => {
            let _lines = stdin_lines();
            peers::serve(args.role, &args.name)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A process-unique name for a mailbox, socket or service of one run.
pub fn unique_name(what: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("copydata-bench-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(rows: &[Row], t: Transport, m: Option<Mode>, payload: usize, senders: usize) -> bool {
        rows.iter().any(|r| r.transport == t && r.mode == m && r.payload == payload && r.senders == senders)
    }

    #[test]
    fn one_row_per_key() {
        for (quick, peers) in [(false, false), (false, true), (true, false), (true, true)] {
            let rows = rows(quick, peers);
            let mut keys = rows.clone();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), rows.len(), "quick {quick} peers {peers}");
        }
    }

    #[test]
    fn quick_has_every_row_the_targets_need() {
        use Mode::*;
        use Transport::*;
        for quick in [true, false] {
            let rows = rows(quick, true);
            let need = [
                (Copydata, Some(SpinThenPark), 64, 1),
                (Copydata, Some(SpinThenPark), 64 * MIB, 1),
                (Copydata, Some(SpinThenPark), 64, 16),
                (Copydata, Some(Park), 64, 1),
                (Copydata, Some(Loan), 64 * KIB, 1),
                (Copydata, Some(Loan), 64 * MIB, 1),
                (Copydata, Some(EndToEnd), 64 * MIB, 1),
                (UnixSocket, None, 64, 1),
                (FloorSpinPingPong, None, 64, 1),
                (FloorMemcpy, None, 64 * MIB, 1),
                (FloorFillAndSum, None, 64 * MIB, 1),
                (Iceoryx2, None, 64, 1),
                (IpcChannel, None, 64, 1),
            ];
            for (t, m, n, s) in need {
                assert!(has(&rows, t, m, n, s), "quick {quick}: no {t:?} {m:?} {n} B x{s}");
            }
        }
    }

    #[test]
    fn percentiles_and_medians() {
        let mut t = Timings::new(Budget { warmup: 0, iters: 100, max_time: Duration::from_secs(1) });
        for n in 1..=100 {
            t.push(Duration::from_nanos(n * 10));
        }
        assert!(t.done());
        let s = t.sample().unwrap();
        assert_eq!((s.p50_ns, s.p99_ns), (510.0, 1000.0));
        assert!((s.msgs_per_s - 100.0 / 50_500e-9).abs() < 1.0);
        let m = median(&[
            Sample { p50_ns: 3.0, p99_ns: 1.0, msgs_per_s: 9.0 },
            Sample { p50_ns: 1.0, p99_ns: 2.0, msgs_per_s: 7.0 },
            Sample { p50_ns: 2.0, p99_ns: 3.0, msgs_per_s: 8.0 },
        ]);
        assert_eq!((m.p50_ns, m.p99_ns, m.msgs_per_s), (2.0, 2.0, 8.0));
    }

    #[test]
    fn json_rows_have_exactly_the_fields() {
        let results = [
            (Row::new(Transport::Copydata, Some(Mode::Loan), 4096), Outcome::Absent("no".into())),
            (
                Row::new(Transport::Pipe, None, 1000),
                Outcome::Measured(Sample { p50_ns: 500.0, p99_ns: 900.0, msgs_per_s: 2e6 }),
            ),
        ];
        let json = report::json(&results);
        let rows = json.as_array().unwrap();
        let want = ["gb_per_s", "mode", "msgs_per_s", "p50_ns", "p99_ns", "payload_bytes", "senders", "transport"];
        for row in rows {
            let mut keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, want);
        }
        assert_eq!(rows[0]["mode"], "loan");
        assert!(rows[0]["p50_ns"].is_null());
        assert!(rows[1]["mode"].is_null());
        assert_eq!(rows[1]["gb_per_s"], 2.0);
    }

    #[test]
    fn byte_sum() {
        let bytes: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 256) as u8).collect();
        for len in [0, 1, 63, 64, 65, 4096, 100_003] {
            let want: u64 = bytes[..len].iter().map(|&b| u64::from(b)).sum();
            assert_eq!(baseline::sum_bytes(&bytes[..len]), want, "{len} bytes");
        }
    }
}
