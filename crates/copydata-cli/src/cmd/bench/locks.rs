//! `copydata bench --locks`: what copydata's cross-process locks cost, next
//! to `std::sync::Mutex` in one process.
//!
//! - uncontended: lock, increment a `u64`, unlock, on one thread;
//! - hand-off: two parties (two threads for std, two processes for
//!   copydata, on different CPUs) take turns incrementing one value under
//!   the lock, each acting only when the value says it is its turn (and
//!   yielding the CPU when it is not): one turn is the lock and the value
//!   passing from one party to the other.
//!
//! Each figure is per operation, over batches: the median and the 99th
//! percentile of the batches.

use std::time::{Duration, Instant};

use anyhow::Context;
use copydata::sync::{Mutex as CdMutex, Shared};

use super::procs::{self, Cpus, Proc, Stdout};

const UNCONTENDED_BATCH: u64 = 10_000;
const BATCHES: usize = 51;
const TURN_BATCH: u64 = 1_000;

/// Median and 99th percentile of per-operation times, in ns.
fn stats(mut per_op: Vec<f64>) -> (f64, f64) {
    per_op.sort_by(f64::total_cmp);
    let at = |p: usize| per_op[(per_op.len() - 1) * p / 100];
    (at(50), at(99))
}

fn uncontended(mut op: impl FnMut()) -> (f64, f64) {
    for _ in 0..UNCONTENDED_BATCH {
        op();
    }
    let per_op = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..UNCONTENDED_BATCH {
                op();
            }
            t.elapsed().as_nanos() as f64 / UNCONTENDED_BATCH as f64
        })
        .collect();
    stats(per_op)
}

/// How long one party's turns may take in all: a lock that starves one
/// side (an unfair OS mutex) ends the row with an error, not a hang.
const TURNS_LIMIT: Duration = Duration::from_secs(60);

/// Takes `turns` turns as party `me` (0 or 1) of a hand-off on `value`,
/// noting the time after every batch of turns. A party that finds it is not
/// its turn yields the CPU before it looks again, so an unfair mutex (one
/// that lets its last owner take it straight back) cannot starve the other.
fn take_turns(me: u64, turns: u64, mut turn: impl FnMut(u64) -> bool) -> anyhow::Result<Vec<Instant>> {
    let start = Instant::now();
    let mut marks = vec![start];
    let mut done = 0;
    let mut looks = 0u64;
    while done < turns {
        if turn(me) {
            done += 1;
            if done.is_multiple_of(TURN_BATCH) {
                marks.push(Instant::now());
            }
        } else {
            std::thread::yield_now();
        }
        looks += 1;
        if looks.is_multiple_of(1024) && start.elapsed() > TURNS_LIMIT {
            anyhow::bail!("party {me} took only {done} of {turns} turns in {TURNS_LIMIT:?}");
        }
    }
    Ok(marks)
}

/// Per hand-off times from the batch marks (each batch of this party's
/// turns is twice as many hand-offs).
fn handoffs(marks: &[Instant]) -> (f64, f64) {
    stats(marks.windows(2).map(|w| (w[1] - w[0]).as_nanos() as f64 / (2 * TURN_BATCH) as f64).collect())
}

fn std_handoff(cpus: Cpus, turns: u64) -> anyhow::Result<(f64, f64)> {
    let value = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let turn = |value: &std::sync::Mutex<u64>, me: u64| {
        let mut v = value.lock().unwrap_or_else(|e| e.into_inner());
        let mine = *v % 2 == me;
        if mine {
            *v += 1;
        }
        mine
    };
    let other = {
        let value = value.clone();
        std::thread::spawn(move || {
            if let Some(cpu) = cpus.server {
                let _ = procs::pin(cpu);
            }
            take_turns(1, turns, |me| turn(&value, me))
        })
    };
    let marks = take_turns(0, turns, |me| turn(&value, me))?;
    other.join().map_err(|_| anyhow::anyhow!("the other thread panicked"))??;
    Ok(handoffs(&marks))
}

pub fn run(cpus: Cpus, quick: bool) -> anyhow::Result<()> {
    let turns = if quick { 5_000 } else { 100_000 };
    println!("copydata bench --locks: per operation, median and p99 of batches; {}", cpus.describe());
    let std_mutex = std::sync::Mutex::new(0u64);
    let std_u = uncontended(|| *std_mutex.lock().unwrap_or_else(|e| e.into_inner()) += 1);
    let name = super::unique_name("lock");
    let mutex = CdMutex::open_or_create(&name)?;
    let cd_u = uncontended(|| drop(mutex.lock().expect("locking")));
    let shared = Shared::<u64>::open_or_create(&name, || 0)?;
    let sh_u = uncontended(|| *shared.lock().expect("locking") += 1);
    let std_h = std_handoff(cpus, turns)?;
    // The other party: a child process on the other CPU.
    let value = super::unique_name("handoff");
    let counter = Shared::<u64>::open_or_create(&value, || 0)?;
    let mut cmd = procs::child_command("lock-partner", cpus.server)?;
    cmd.args(["--name", &value, "--payload", &turns.to_string()]);
    let mut partner = Proc::start(cmd, "the lock partner", &[], Stdout::Lines)?;
    partner.ready()?;
    partner.say("go")?;
    let marks = take_turns(0, turns, |me| turn(&counter, me)).map_err(|e| partner.blame(e))?;
    let cd_h = handoffs(&marks);
    partner.finish()?;
    let row = |what: &str, (p50, p99): (f64, f64), base: f64| {
        println!("{what:<58} {p50:>9.1} ns {p99:>9.1} ns {:>7.2}x", p50 / base);
    };
    println!("{:<58} {:>12} {:>12} {:>8}", "", "p50", "p99", "x std");
    row("uncontended lock+unlock: std::sync::Mutex (one thread)", std_u, std_u.0);
    row("uncontended lock+unlock: copydata Mutex", cd_u, std_u.0);
    row("uncontended lock+increment+unlock: copydata Shared<u64>", sh_u, std_u.0);
    row("hand-off: std::sync::Mutex, two threads", std_h, std_h.0);
    row("hand-off: copydata Shared<u64>, two processes", cd_h, std_h.0);
    Ok(())
}

fn turn(counter: &Shared<u64>, me: u64) -> bool {
    let mut v = counter.lock().expect("locking");
    let mine = *v % 2 == me;
    if mine {
        *v += 1;
    }
    mine
}

/// The child side of the hand-off row: party 1.
pub fn partner(name: &str, turns: u64) -> anyhow::Result<()> {
    let counter = Shared::<u64>::open(name).context("opening the hand-off value")?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    take_turns(1, turns, |me| turn(&counter, me))?;
    // Stay until the bench is done with the value.
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}
