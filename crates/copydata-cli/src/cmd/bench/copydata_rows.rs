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

use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use copydata::{Mailbox, Message, Reply, Sender};

use super::baseline::filled;
use super::procs::{CHILD_TIMEOUT, Proc, Stdout, child_command};
use super::{Budget, Ctx, Handler, MIN_ITERS, Mode, Row, Sample, Timings, Unavailable};

/// The tag of every bench message.
const TAG: u64 = 7;

/// The byte every sent payload is filled with.
const FILL: u8 = 0xA5;

pub fn run(row: &Row, ctx: &Ctx) -> anyhow::Result<Sample> {
    let budget = ctx.budget(row);
    match row.mode {
        Some(Mode::SpinThenPark) if row.senders > 1 => many_senders(row, budget, ctx),
        Some(Mode::SpinThenPark) => send_row(row.payload, budget, ctx),
        Some(mode @ (Mode::Park | Mode::Post | Mode::Loan | Mode::EndToEnd)) => Err(Unavailable(format!(
            "not available in this build: the library has no {}",
            match mode {
                Mode::Park => "Wait::Park sender option",
                Mode::Post => "Sender::post",
                _ => "Sender::loan",
            }
        ))
        .into()),
        None => bail!("a copydata row needs a mode"),
    }
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

    fn connect(&self) -> anyhow::Result<Sender> {
        Sender::connect(&self.name).map_err(|e| self.proc.blame(e.into()))
    }
}

/// The reply code of the `touch` handler for a payload filled with [`FILL`].
fn touched(payload: usize) -> i64 {
    if payload == 0 { -1 } else { i64::from(FILL) }
}

fn send_row(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let server = Server::start(ctx, Handler::Touch, 1)?;
    let mut sender = server.connect()?;
    let buf = filled(payload, FILL);
    let mut t = Timings::new(budget);
    let mut i = 0;
    while !t.done() {
        let start = Instant::now();
        let reply = sender.send(TAG, &buf).map_err(|e| server.proc.blame(e.into()))?;
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

/// Many sender processes, one mailbox: per-call latencies of all of them;
/// messages/s is the aggregate, from "go" until the last sender is done.
fn many_senders(row: &Row, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let server = Server::start(ctx, Handler::Touch, 1)?;
    let each = (budget.iters / row.senders).max(MIN_ITERS);
    let warmup = (budget.warmup / row.senders).max(2);
    let mut senders = Vec::with_capacity(row.senders);
    for _ in 0..row.senders {
        let mut cmd = child_command("sender", ctx.cpus.client)?;
        cmd.args(["--name", &server.name, "--payload", &row.payload.to_string()]);
        cmd.args(["--warmup", &warmup.to_string(), "--iters", &each.to_string()]);
        senders.push(Proc::start(cmd, "a sender", &[], Stdout::Lines)?);
    }
    for s in &mut senders {
        s.ready()?;
    }
    let start = Instant::now();
    for s in &mut senders {
        s.say("go")?;
    }
    let mut t = Timings::new(Budget { iters: each * row.senders, ..budget });
    for s in &mut senders {
        let line = s.line(CHILD_TIMEOUT)?;
        let times = line.strip_prefix("times").ok_or_else(|| s.blame(anyhow!("it said {line:?}")))?;
        let ns: Result<Vec<u64>, _> = times.split_whitespace().map(str::parse).collect();
        t.extend(ns.map_err(|e| s.blame(anyhow!("bad timings: {e}")))?);
    }
    let wall = start.elapsed();
    for s in senders {
        s.finish()?;
    }
    server.proc.finish()?;
    t.sample_over(wall)
}

/// `__bench-child sender`: connects, warms up, says `ready`, waits for
/// `go`, sends `iters` messages and prints `times NS NS ...`.
pub fn extra_sender(
    name: &str,
    payload: usize,
    warmup: usize,
    iters: usize,
    _park: bool,
    lines: mpsc::Receiver<String>,
) -> anyhow::Result<()> {
    let mut sender = Sender::connect(name)?;
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
    let mut ns = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        let reply = sender.send(TAG, &buf)?;
        ns.push(start.elapsed().as_nanos() as u64);
        ensure!(reply.code == touched(payload), "reply code {}", reply.code);
    }
    let text: Vec<String> = ns.iter().map(u64::to_string).collect();
    println!("times {}", text.join(" "));
    // Stay connected until the bench is done with every sender.
    for _ in lines {}
    Ok(())
}

/// `__bench-child mailbox`: binds `name`, answers until standard input
/// closes, then unbinds.
pub fn serve(name: &str, handler: Handler, _threads: usize, lines: mpsc::Receiver<String>) -> anyhow::Result<()> {
    let mailbox = Mailbox::bind(name).with_context(|| format!("binding {name}"))?;
    let server = mailbox.serve(move |msg: &mut Message| handle(msg, handler));
    println!("ready");
    for _ in lines {}
    drop(server);
    Ok(())
}

fn handle(msg: &Message, handler: Handler) -> Reply {
    match handler {
        Handler::Touch => Reply::code(msg.payload().first().map_or(-1, |&b| i64::from(b))),
        Handler::Sum => Reply::code(-2),
    }
}
