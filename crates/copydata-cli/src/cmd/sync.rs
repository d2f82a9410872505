//! `copydata shared`, `copydata lock`, `copydata event`: the named
//! synchronisation objects of `copydata::sync`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use copydata::sync::{Event, EventKind, Mutex, Shared, SyncOpenError};

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
    /// Give up after this long (exit 4), e.g. 300ms, 10s.
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
    /// Wait until the event is set (exit 4 on timeout).
    Wait {
        /// Give up after this long, e.g. 300ms, 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

/// Catches Ctrl-C, SIGTERM and console close from now on; the receiver
/// hears of them. A holder installs it before it says it holds, so a stop
/// that comes right after the word still ends it cleanly (its objects
/// released and, when it was the last, removed).
fn catch_interrupts() -> anyhow::Result<std::sync::mpsc::Receiver<()>> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    Ok(rx)
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

pub fn shared(command: SharedCommand) -> anyhow::Result<ExitCode> {
    match command {
        SharedCommand::Incr { name, times, hold } => {
            let counter = Shared::<u64>::open_or_create_tagged(&name, COUNTER_TAG, || 0)?;
            let mut last = *counter.lock()?;
            for _ in 0..times {
                let mut v = counter.lock()?;
                *v += 1;
                last = *v;
            }
            let interrupted = hold.then(catch_interrupts).transpose()?;
            say(&last.to_string())?;
            if let Some(interrupted) = interrupted {
                let _ = interrupted.recv();
            }
        }
        SharedCommand::Get { name } => {
            let counter = Shared::<u64>::open_tagged(&name, COUNTER_TAG)?;
            let v = *counter.lock()?;
            say(&v.to_string())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn lock(args: LockArgs) -> anyhow::Result<ExitCode> {
    let mutex = Mutex::open_or_create(&args.name)?;
    log::info!("opened the lock {}; waiting for it", args.name);
    let mut guard = match args.timeout {
        Some(t) => mutex.lock_timeout(t),
        None => mutex.lock(),
    }
    .with_context(|| format!("lock {:?}", args.name))?;
    let interrupted = args.hold.then(catch_interrupts).transpose()?;
    if guard.owner_died() {
        say("acquired (previous owner died)")?;
    } else {
        say("acquired")?;
    }
    if args.mark_consistent {
        guard.mark_consistent();
        say("marked consistent")?;
    }
    if let Some(interrupted) = interrupted {
        let _ = interrupted.recv();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn event(args: EventArgs) -> anyhow::Result<ExitCode> {
    let kind = if args.auto_reset { EventKind::AutoReset } else { EventKind::ManualReset };
    // An existing event keeps its kind; a missing one is made unset.
    let event = match Event::open(&args.name) {
        Ok(e) => e,
        Err(SyncOpenError::NotFound { .. }) => Event::open_or_create(&args.name, kind)?,
        Err(e) => return Err(e.into()),
    };
    match args.action {
        EventAction::Set => event.set()?,
        EventAction::Reset => event.reset()?,
        EventAction::Wait { timeout } => {
            log::info!("opened the event {}; waiting for it", args.name);
            match timeout {
                Some(t) => event.wait_timeout(t),
                None => event.wait(),
            }
            .with_context(|| format!("event {:?}", args.name))?;
            say("set")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
