//! `copydata shared`, `copydata lock`, `copydata event`: the named
//! synchronisation objects of `copydata::sync`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use copydata::sync::{Event, EventKind, Mutex, Shared, SyncOpenError, WaitError};

use crate::exit;
use crate::interrupts::{Interrupts, SLICE};

/// The type tag of the counter `copydata shared` keeps: a program opens the
/// same counter with `Shared::<u64>::open_tagged(name, COUNTER_TAG)`.
pub const COUNTER_TAG: &str = "copydata.counter.u64";

#[derive(Subcommand, Debug)]
pub enum SharedCommand {
    /// Increment the shared u64 counter NAME (made at 0 if missing) under
    /// its lock; print the last value seen.
    Incr {
        /// The counter's name.
        name: String,
        /// How many increments (0: just print the value).
        #[arg(long, default_value_t = 1)]
        times: u64,
        /// Then keep the counter alive until interrupted or killed.
        #[arg(long)]
        hold: bool,
    },
    /// Print the value of the shared u64 counter NAME (exit 3 if no process
    /// holds it).
    Get {
        /// The counter's name.
        name: String,
    },
}

#[derive(ClapArgs, Debug)]
pub struct LockArgs {
    /// The mutex's name (made if missing).
    name: String,
    /// Keep the lock until interrupted or killed.
    #[arg(long)]
    hold: bool,
    /// Give up after this long (exit 4), e.g. 300ms, 10s. Interrupted
    /// while it waits, it exits 130.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Mark the protected state consistent again (after a previous owner
    /// died).
    #[arg(long)]
    mark_consistent: bool,
}

#[derive(ClapArgs, Debug)]
pub struct EventArgs {
    /// The event's name (made unset if missing).
    name: String,
    #[command(subcommand)]
    action: EventAction,
    /// Make a missing event auto-reset (default: manual-reset).
    #[arg(long, global = true)]
    auto_reset: bool,
}

#[derive(Subcommand, Debug)]
pub enum EventAction {
    /// Set the event (wakes its waiters).
    Set,
    /// Reset the event to unset.
    Reset,
    /// Wait until the event is set (exit 4 on timeout, 130 if
    /// interrupted).
    Wait {
        /// Give up after this long, e.g. 300ms, 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Says on stderr that the object this command made goes again as it ends,
/// unless another process opened it meanwhile, and what keeps one.
fn gone_again(kind: &str, name: &str, keeper: &str) {
    eprintln!(
        "copydata: created the {kind} {name:?}; it is gone again now that this command ends, unless another \
         process holds it (keep one with {keeper})"
    );
}

fn interrupted() -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(exit::INTERRUPTED))
}

pub fn shared(command: SharedCommand) -> anyhow::Result<ExitCode> {
    let interrupts = Interrupts::catch()?;
    match command {
        SharedCommand::Incr { name, times, hold } => {
            let created = std::cell::Cell::new(false);
            let counter = Shared::<u64>::open_or_create_tagged(&name, COUNTER_TAG, || {
                created.set(true);
                0
            })?;
            log::info!("opened the counter {name}; incrementing it {times} times");
            let Some(value) = interrupts.lock(None, |t| counter.lock_timeout(t))? else {
                return interrupted();
            };
            let mut last = *value;
            drop(value);
            for _ in 0..times {
                let Some(mut value) = interrupts.lock(None, |t| counter.lock_timeout(t))? else {
                    return interrupted();
                };
                *value += 1;
                last = *value;
            }
            say(&last.to_string())?;
            if hold {
                interrupts.wait();
            } else if created.get() {
                gone_again("counter", &name, "--hold");
            }
        }
        SharedCommand::Get { name } => {
            let counter = Shared::<u64>::open_tagged(&name, COUNTER_TAG)?;
            let Some(value) = interrupts.lock(None, |t| counter.lock_timeout(t))? else {
                return interrupted();
            };
            let v = *value;
            drop(value);
            say(&v.to_string())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn lock(args: LockArgs) -> anyhow::Result<ExitCode> {
    let interrupts = Interrupts::catch()?;
    let mutex = Mutex::open_or_create(&args.name)?;
    log::info!("opened the lock {}; waiting for it", args.name);
    let Some(mut guard) =
        interrupts.lock(args.timeout, |t| mutex.lock_timeout(t)).with_context(|| format!("lock {:?}", args.name))?
    else {
        return interrupted();
    };
    if guard.owner_died() {
        say("acquired (previous owner died)")?;
    } else {
        say("acquired")?;
    }
    if args.mark_consistent {
        guard.mark_consistent();
        say("marked consistent")?;
    }
    if args.hold {
        interrupts.wait();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn event(args: EventArgs) -> anyhow::Result<ExitCode> {
    let interrupts = Interrupts::catch()?;
    let kind = if args.auto_reset { EventKind::AutoReset } else { EventKind::ManualReset };
    // An existing event keeps its kind; a missing one is made unset.
    let (event, created) = match Event::open(&args.name) {
        Ok(e) => (e, false),
        Err(SyncOpenError::NotFound { .. }) => (Event::open_or_create(&args.name, kind)?, true),
        Err(e) => return Err(e.into()),
    };
    match args.action {
        EventAction::Set | EventAction::Reset => {
            if matches!(args.action, EventAction::Set) {
                event.set()?;
            } else {
                event.reset()?;
            }
            if created {
                gone_again("event", &args.name, "a waiter (`event NAME wait`) or a program");
            }
        }
        EventAction::Wait { timeout } => {
            log::info!("opened the event {}; waiting for it", args.name);
            // One wait, looking for an interrupt between slices (a set and
            // reset that come between two is still seen).
            let stop = || {
                if interrupts.came() { Err(std::io::Error::from(std::io::ErrorKind::Interrupted)) } else { Ok(()) }
            };
            match event.wait_checked(timeout, SLICE, stop) {
                Err(WaitError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted && interrupts.came() => {
                    return interrupted();
                }
                waited => waited.with_context(|| format!("event {:?}", args.name))?,
            }
            say("set")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
