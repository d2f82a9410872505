//! The copydata rows: a mailbox in a child process (`__bench-child
//! mailbox`), the measuring sender here, extra senders as more children.
//!
//! - `send` rows (`spin-then-park`, `park`): `send` of a buffer filled once
//!   before the run, timed until the reply is back; the handler reads one
//!   byte.
//! - `post`: one-way posts; p50/p99 per call, messages/s up to the reply to
//!   a final `send` (every post handled).
//! - `loan`: `loan(len)` + send + reply; the timer pauses while the sender
//!   fills the loan; the handler reads one byte.
//! - `end-to-end`: everything timed: `loan(len)`, writing every byte, send,
//!   the receiver summing every byte (through `read_at` into a private
//!   64 KiB chunk), the reply.

use std::cell::RefCell;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use copydata::{Mailbox, MailboxOptions, Message, Reply, SendError, Sender, SenderOptions, Wait};

use super::baseline::{fill_raw, filled, sum_bytes};
use super::procs::{CHILD_TIMEOUT, Proc, Stdout, child_command};
use super::{Budget, Ctx, Handler, Mode, Row, Sample, Timings};

/// The tag of every bench message.
const TAG: u64 = 7;

/// The byte every sent payload is filled with.
const FILL: u8 = 0xA5;

pub fn run(row: &Row, ctx: &Ctx) -> anyhow::Result<Sample> {
    let budget = ctx.budget(row);
    match row.mode {
        Some(mode @ (Mode::SpinThenPark | Mode::Park)) if row.senders > 1 => many_senders(row, mode, budget, ctx),
        Some(Mode::SpinThenPark) => send_row(row.payload, Wait::SpinThenPark, budget, ctx),
        Some(Mode::Park) => send_row(row.payload, Wait::Park, budget, ctx),
        Some(Mode::Post) => post_row(row.payload, budget, ctx),
        Some(Mode::Loan) => loan_row(row.payload, budget, ctx),
        Some(Mode::EndToEnd) => end_to_end_row(row.payload, budget, ctx),
        None => bail!("a copydata row needs a mode"),
    }
}

fn options(wait: Wait) -> SenderOptions {
    SenderOptions::new().wait(wait)
}

/// The mailbox child of one run.
struct Server {
    proc: Proc,
    name: String,
}

impl Server {
    fn start(ctx: &Ctx, handler: Handler, threads: usize) -> anyhow::Result<Server> {
        let name = super::unique_name("mb");
        let mut cmd = child_command("mailbox", ctx.cpus.server)?;
        cmd.args(["--name", &name, "--threads", &threads.to_string()]);
        cmd.args(["--handler", if handler == Handler::Sum { "sum" } else { "touch" }]);
        let mut proc = Proc::start(cmd, "the mailbox", &[], Stdout::Lines)?;
        proc.ready()?;
        Ok(Server { proc, name })
    }

    fn connect(&self, wait: Wait) -> anyhow::Result<Sender> {
        Sender::connect_with(&self.name, &options(wait)).map_err(|e| self.proc.blame(e.into()))
    }

    fn blame(&self, e: SendError) -> anyhow::Error {
        self.proc.blame(e.into())
    }
}

/// The reply code of the `touch` handler for a payload filled with [`FILL`].
fn touched(payload: usize) -> i64 {
    if payload == 0 { -1 } else { i64::from(FILL) }
}

fn send_row(payload: usize, wait: Wait, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let server = Server::start(ctx, Handler::Touch, 1)?;
    let mut sender = server.connect(wait)?;
    let buf = filled(payload, FILL);
    let mut t = Timings::new(budget);
    let mut i = 0;
    while !t.done() {
        let start = Instant::now();
        let reply = sender.send(TAG, &buf).map_err(|e| server.blame(e))?;
        let took = start.elapsed();
        ensure!(reply.code == touched(payload), "reply code {} for {payload} bytes", reply.code);
        if i >= budget.warmup {
            t.push(took);
        }
        i += 1;
    }
    drop(sender);
    server.proc.finish()?;
    t.sample()
}

/// Posts: p50/p99 per `post` call; messages/s over the posts and the
/// reply to a final `send` (so every post has been handled).
fn post_row(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let server = Server::start(ctx, Handler::Touch, 1)?;
    let mut sender = server.connect(Wait::SpinThenPark)?;
    let buf = filled(payload, FILL);
    for _ in 0..budget.warmup {
        sender.post(TAG, &buf).map_err(|e| server.blame(e))?;
    }
    sender.send(TAG, &buf).map_err(|e| server.blame(e))?;
    let mut t = Timings::new(budget);
    let started = Instant::now();
    while !t.done() {
        let start = Instant::now();
        sender.post(TAG, &buf).map_err(|e| server.blame(e))?;
        t.push(start.elapsed());
    }
    let reply = sender.send(TAG, &buf).map_err(|e| server.blame(e))?;
    let wall = started.elapsed();
    ensure!(reply.code == touched(payload), "reply code {} for {payload} bytes", reply.code);
    drop(sender);
    server.proc.finish()?;
    t.sample_over(wall)
}

/// Writes `byte` into every byte of `loan` (the same loop as the
/// fill-and-sum floor).
fn fill_loan(loan: &mut copydata::Loan<'_>, byte: u8) {
    let len = loan.len();
    // SAFETY: the loan's pointer is valid for `len()` bytes until it is sent
    // or dropped, and nothing else writes it meanwhile (the receiver's
    // handle is read-only).
    unsafe { fill_raw(loan.as_mut_ptr(), len, byte) };
}

/// `loan(len)` + send + reply; the timer pauses while the loan is filled.
fn loan_row(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let server = Server::start(ctx, Handler::Touch, 1)?;
    let mut sender = server.connect(Wait::SpinThenPark)?;
    let mut t = Timings::new(budget);
    let mut i = 0;
    while !t.done() {
        let start = Instant::now();
        let mut loan = sender.loan(payload).map_err(|e| server.blame(e))?;
        let lent = start.elapsed();
        fill_loan(&mut loan, FILL);
        let sent = Instant::now();
        let reply = loan.send(TAG).map_err(|e| server.blame(e))?;
        let took = lent + sent.elapsed();
        ensure!(reply.code == touched(payload), "reply code {} for {payload} bytes", reply.code);
        if i >= budget.warmup {
            t.push(took);
        }
        i += 1;
    }
    drop(sender);
    server.proc.finish()?;
    t.sample()
}

/// Everything timed: `loan(len)`, filling every byte, send, the receiver
/// summing every byte, the reply (the sum, checked).
fn end_to_end_row(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let server = Server::start(ctx, Handler::Sum, 1)?;
    let mut sender = server.connect(Wait::SpinThenPark)?;
    let mut t = Timings::new(budget);
    let mut i = 0usize;
    while !t.done() {
        let byte = (i % 251) as u8 + 1;
        let start = Instant::now();
        let mut loan = sender.loan(payload).map_err(|e| server.blame(e))?;
        fill_loan(&mut loan, byte);
        let reply = loan.send(TAG).map_err(|e| server.blame(e))?;
        let took = start.elapsed();
        let want = payload as u64 * u64::from(byte);
        ensure!(reply.code == want as i64, "the receiver summed {} instead of {want}", reply.code);
        if i >= budget.warmup {
            t.push(took);
        }
        i += 1;
    }
    drop(sender);
    server.proc.finish()?;
    t.sample()
}

/// What the sender does between two calls of a [`pauses`] row.
#[derive(Debug, Clone, Copy)]
enum Between {
    /// Nothing: the next call at once.
    Nothing,
    /// Spins on the clock this long, touching no memory.
    Spin(Duration),
    /// Fills the loan (every byte).
    Fill,
    /// Fills a 64 MiB buffer of its own (every byte), the loan's size
    /// aside: what the filling of a 64 MiB loan does to the caches.
    FillElsewhere,
}

/// `copydata bench --pauses`: what a pause before a call costs. `send` of
/// 64 B and `loan` of 64 KiB, each sent right after the previous call and
/// after the sender spun 1 ms and 8 ms on the clock (writing nothing; the
/// loan also after 0.3 ms and 3 ms, where the cost sets in), next
/// to `loan` of 64 MiB sent after its filling (about 8 ms here; what the
/// `loan` row at 64 MiB times) and `loan` of 64 KiB after the sender
/// filled 64 MiB of its own memory (the same work, another size of loan).
/// Only the call is timed, as in the `loan` rows. A paused `send` finds
/// the receiver asleep (it spins only briefly) and pays a wake-up; a
/// paused loan finds it polling (the loan announced the message), so what
/// it pays beyond the immediate loan is the path gone cold in the caches
/// meanwhile, which the last rows show without copydata: the spin floor's
/// round trip (one cache line crossing between the two processes and back)
/// after the same pauses and after filling 64 KiB and 64 MiB, and
/// [`cold_reads`].
pub fn pauses(ctx: &Ctx) -> anyhow::Result<()> {
    let spin = |micros| Between::Spin(Duration::from_micros(micros));
    let (spin1, spin8) = (spin(1000), spin(8000));
    let cases: [(&str, usize, bool, Between); 10] = [
        ("send 64 B, at once", 64, false, Between::Nothing),
        ("send 64 B, after 1 ms", 64, false, spin1),
        ("send 64 B, after 8 ms", 64, false, spin8),
        ("loan 64 KiB, at once", 64 << 10, true, Between::Nothing),
        ("loan 64 KiB, after 0.3 ms", 64 << 10, true, spin(300)),
        ("loan 64 KiB, after 1 ms", 64 << 10, true, spin1),
        ("loan 64 KiB, after 3 ms", 64 << 10, true, spin(3000)),
        ("loan 64 KiB, after 8 ms", 64 << 10, true, spin8),
        ("loan 64 MiB, after its filling", 64 << 20, true, Between::Fill),
        ("loan 64 KiB, after filling 64 MiB", 64 << 10, true, Between::FillElsewhere),
    ];
    let mut elsewhere = Vec::new();
    let iters = if ctx.quick { 60 } else { 300 };
    println!("{:<44} {:>10} {:>10}", "call (only the call is timed)", "p50", "p99");
    for (what, payload, loan, between) in cases {
        let server = Server::start(ctx, Handler::Touch, 1)?;
        let mut sender = server.connect(Wait::SpinThenPark)?;
        let buf = filled(payload, FILL);
        let mut ns = Vec::with_capacity(iters);
        for i in 0..iters + 10 {
            let took = if loan {
                let start = Instant::now();
                let mut l = sender.loan(payload).map_err(|e| server.blame(e))?;
                let lent = start.elapsed();
                match between {
                    Between::Fill => fill_loan(&mut l, FILL),
                    Between::Spin(d) => {
                        l.write_at(0, &[FILL]).context("writing the loan")?;
                        spin_for(d);
                    }
                    Between::Nothing => l.write_at(0, &[FILL]).context("writing the loan")?,
                    Between::FillElsewhere => {
                        l.write_at(0, &[FILL]).context("writing the loan")?;
                        elsewhere.resize(64 << 20, 0);
                        // SAFETY: `elsewhere` is this function's own buffer
                        // of that many bytes.
                        unsafe { fill_raw(elsewhere.as_mut_ptr(), elsewhere.len(), FILL) };
                        // (Read, as far as the compiler knows: the filling
                        // stays.)
                        std::hint::black_box(&mut elsewhere);
                    }
                }
                let sent = Instant::now();
                let reply = l.send(TAG).map_err(|e| server.blame(e))?;
                ensure!(reply.code == i64::from(FILL), "reply code {}", reply.code);
                lent + sent.elapsed()
            } else {
                if let Between::Spin(d) = between {
                    spin_for(d);
                }
                let start = Instant::now();
                let reply = sender.send(TAG, &buf).map_err(|e| server.blame(e))?;
                ensure!(reply.code == touched(payload), "reply code {}", reply.code);
                start.elapsed()
            };
            if i >= 10 {
                ns.push(took);
            }
        }
        drop(sender);
        server.proc.finish()?;
        print_row(what, ns);
    }
    for (what, pause) in [
        ("spin floor round trip, at once", Duration::ZERO),
        ("spin floor round trip, after 1 ms", Duration::from_millis(1)),
        ("spin floor round trip, after 8 ms", Duration::from_millis(8)),
    ] {
        print_row(what, super::baseline::spin_floor_after(iters, ctx, || spin_for(pause))?);
    }
    // The loan rows' ratio without copydata: the same round trip after the
    // pinging side filled 64 KiB or 64 MiB of its own memory.
    for (what, len) in [
        ("spin floor round trip, after filling 64 KiB", 64 << 10),
        ("spin floor round trip, after filling 64 MiB", 64 << 20),
    ] {
        let mut own = vec![0u8; len];
        let fill = || {
            // SAFETY: `own` is this closure's own buffer of `len` bytes.
            unsafe { fill_raw(own.as_mut_ptr(), len, FILL) };
            std::hint::black_box(&mut own);
        };
        print_row(what, super::baseline::spin_floor_after(iters, ctx, fill)?);
    }
    cold_reads(iters);
    Ok(())
}

fn print_row(what: &str, mut ns: Vec<Duration>) {
    ns.sort_unstable();
    let at = |q: usize| super::report::nanos(ns[(ns.len() - 1) * q / 100].as_nanos() as f64);
    println!("{what:<44} {:>10} {:>10}", at(50), at(99));
}

/// What a pause does to memory on this machine, without copydata: reading
/// 32 KiB of this process's own memory (512 cache lines, each load waiting
/// for the one before, in a scattered order) right after the previous read
/// and after spinning on the clock for 1 ms and 8 ms.
fn cold_reads(iters: usize) {
    const LINES: usize = 512;
    /// `u32`s per 64-byte line: each line holds the index of the next.
    const WORDS: usize = 16;
    let mut next = vec![0u32; LINES * WORDS];
    // 313 is odd, so k -> 313k mod 512 visits every line once.
    let order: Vec<usize> = (0..LINES).map(|k| k * 313 % LINES).collect();
    for k in 0..LINES {
        next[order[k] * WORDS] = (order[(k + 1) % LINES] * WORDS) as u32;
    }
    let cases = [
        ("read 32 KiB of own memory, at once", Duration::ZERO),
        ("read 32 KiB, after 1 ms", Duration::from_millis(1)),
        ("read 32 KiB, after 8 ms", Duration::from_millis(8)),
    ];
    for (what, pause) in cases {
        let mut ns = Vec::with_capacity(iters);
        for i in 0..iters + 10 {
            spin_for(pause);
            let start = Instant::now();
            let mut at = 0;
            for _ in 0..LINES {
                at = next[at] as usize;
            }
            std::hint::black_box(at);
            if i >= 10 {
                ns.push(start.elapsed());
            }
        }
        print_row(what, ns);
    }
}

/// Spins on the clock for `d`, touching no memory.
pub(super) fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Many sender processes, one mailbox (one handler thread, the default):
/// each sender sends for the same time after `go`; p50/p99 over the calls
/// of all senders; messages/s is the aggregate: every sender's messages
/// over the time from the first call of any sender to the last reply of
/// any sender (each sender reads the wall clock at its first call and after
/// its last reply). Senders report their timings only once all are done,
/// so the reporting does not run beside the sending.
fn many_senders(row: &Row, mode: Mode, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let server = Server::start(ctx, Handler::Touch, 1)?;
    let warmup = (budget.warmup / row.senders).max(2);
    let mut senders = Vec::with_capacity(row.senders);
    for _ in 0..row.senders {
        let mut cmd = child_command("sender", ctx.cpus.client)?;
        cmd.args(["--name", &server.name, "--payload", &row.payload.to_string()]);
        cmd.args(["--warmup", &warmup.to_string(), "--millis", &budget.max_time.as_millis().to_string()]);
        if mode == Mode::Park {
            cmd.arg("--park");
        }
        senders.push(Proc::start(cmd, "a sender", &[], Stdout::Lines)?);
    }
    for s in &mut senders {
        s.ready()?;
    }
    for s in &mut senders {
        s.say("go")?;
    }
    for s in &mut senders {
        let line = s.line(CHILD_TIMEOUT)?;
        ensure!(line == "done", s.blame(anyhow!("it said {line:.80?} instead of done")));
    }
    let mut t = Timings::new(Budget { iters: usize::MAX, ..budget });
    let mut messages = 0u64;
    let (mut first, mut last) = (u64::MAX, 0u64);
    for s in &mut senders {
        s.say("report")?;
        let line = s.line(CHILD_TIMEOUT)?;
        let mut words =
            line.strip_prefix("times").ok_or_else(|| s.blame(anyhow!("it said {line:.80?}")))?.split_whitespace();
        let mut number = || words.next().and_then(|w| w.parse::<u64>().ok());
        let (Some(count), Some(from), Some(to)) = (number(), number(), number()) else {
            return Err(s.blame(anyhow!("bad timings: {line:.80}")));
        };
        let ns: Result<Vec<u64>, _> = words.map(str::parse).collect();
        let ns = ns.map_err(|_| s.blame(anyhow!("bad timings: {line:.80}")))?;
        messages += count;
        t.extend(ns);
        first = first.min(from);
        last = last.max(to);
    }
    let wall = Duration::from_nanos(last.saturating_sub(first));
    for s in senders {
        s.finish()?;
    }
    server.proc.finish()?;
    let sample = t.sample()?;
    Ok(Sample { msgs_per_s: messages as f64 / wall.as_secs_f64(), ..sample })
}

/// The most per-call times one extra sender reports (evenly spread over
/// its run).
const MAX_REPORTED: usize = 20_000;

/// `__bench-child sender`: connects, warms up, says `ready`, waits for
/// `go`, sends for `millis`, says `done`, waits for `report` and prints
/// `times COUNT FIRST LAST NS NS ...` (`FIRST`, `LAST`: the wall clock in
/// ns since the Unix epoch at its first call and after its last reply).
pub fn extra_sender(
    name: &str,
    payload: usize,
    warmup: usize,
    millis: u64,
    park: bool,
    lines: mpsc::Receiver<String>,
) -> anyhow::Result<()> {
    let mut sender = Sender::connect_with(name, &options(if park { Wait::Park } else { Wait::SpinThenPark }))?;
    let buf = filled(payload, FILL);
    for _ in 0..warmup {
        sender.send(TAG, &buf)?;
    }
    println!("ready");
    match lines.recv() {
        Ok(go) if go == "go" => {}
        Ok(other) => bail!("expected go, got {other:?}"),
        Err(_) => return Ok(()),
    }
    // The wall clock, the one clock all senders share.
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut ns: Vec<u32> = Vec::with_capacity(1 << 16);
    let first = now();
    let until = Instant::now() + Duration::from_millis(millis);
    loop {
        let start = Instant::now();
        if start >= until {
            break;
        }
        let reply = sender.send(TAG, &buf)?;
        ns.push(start.elapsed().as_nanos().try_into().unwrap_or(u32::MAX));
        ensure!(reply.code == touched(payload), "reply code {}", reply.code);
    }
    let last = now();
    println!("done");
    match lines.recv() {
        Ok(report) if report == "report" => {}
        Ok(other) => bail!("expected report, got {other:?}"),
        Err(_) => return Ok(()),
    }
    let stride = ns.len().div_ceil(MAX_REPORTED).max(1);
    let kept: Vec<String> = ns.iter().step_by(stride).map(u32::to_string).collect();
    println!("times {} {first} {last} {}", ns.len(), kept.join(" "));
    // Stay connected until the bench is done with every sender.
    for _ in lines {}
    Ok(())
}

/// `__bench-child mailbox`: binds `name`, answers until standard input
/// closes, then unbinds.
pub fn serve(name: &str, handler: Handler, threads: usize, lines: mpsc::Receiver<String>) -> anyhow::Result<()> {
    let options = MailboxOptions::new().handler_threads(threads);
    let mailbox = Mailbox::bind_with(name, &options).with_context(|| format!("binding {name}"))?;
    let server = mailbox.serve(move |msg: &mut Message| handle(msg, handler));
    println!("ready");
    for _ in lines {}
    drop(server);
    Ok(())
}

/// Loans are summed through a private chunk of this size: a page, which
/// stays in the L1 cache between the copy and the sum (the size
/// [`copydata::LoanView::for_each_chunk`] recommends). On the 2-vCPU AMD
/// EPYC machine the bench was tuned on, summing 64 MiB this way took 2.7 ms
/// in one process, like summing it in place (2.45 ms), against 4.5-6.6 ms
/// through 64 KiB chunks.
const VIEW_CHUNK: usize = 4096;

thread_local! {
    /// Each handler thread's private chunk: loans are summed through it.
    static CHUNK_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; VIEW_CHUNK]);
}

fn handle(msg: &Message, handler: Handler) -> Reply {
    match (handler, msg.loan()) {
        (Handler::Touch, None) => Reply::code(msg.payload().first().map_or(-1, |&b| i64::from(b))),
        (Handler::Touch, Some(loan)) => {
            let mut one = [0u8; 1];
            match loan.read_at(0, &mut one) {
                Ok(()) => Reply::code(i64::from(one[0])),
                Err(_) => Reply::code(-1),
            }
        }
        (Handler::Sum, None) => Reply::code(sum_bytes(msg.payload()) as i64),
        (Handler::Sum, Some(loan)) => CHUNK_BUF.with_borrow_mut(|chunk| {
            let mut sum = 0u64;
            let mut at = 0;
            while at < loan.len() {
                let n = chunk.len().min(loan.len() - at);
                if loan.read_at(at, &mut chunk[..n]).is_err() {
                    return Reply::code(-1);
                }
                sum += sum_bytes(&chunk[..n]);
                at += n;
            }
            Reply::code(sum as i64)
        }),
    }
}
