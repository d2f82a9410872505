//! Ctrl-C, SIGTERM and console close, for the commands that let go of what
//! they made before they exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::Context;
use copydata::sync::LockError;

/// How long one wait lasts before the command looks whether it was
/// interrupted.
pub const SLICE: Duration = Duration::from_millis(50);

/// Ctrl-C, SIGTERM and console close, caught from [`Interrupts::catch`]
/// on. The `lock`, `event` and `shared` commands catch them before they
/// open their object and wait in slices of [`SLICE`], looking between
/// them: an interrupted command drops its objects (the last holder's drop
/// removes the name) and exits with [`crate::exit::INTERRUPTED`], or 0 once
/// it holds what it was asked to (`--hold`). A stop that comes right after
/// the word "acquired" or the value still ends a holder cleanly. `demo`
/// catches them with [`Interrupts::catch_then`], which also stops its
/// children at once, so that its waits on them end.
pub struct Interrupts {
    came: Arc<AtomicBool>,
    heard: Receiver<()>,
}

impl Interrupts {
    pub fn catch() -> anyhow::Result<Interrupts> {
        Interrupts::catch_then(|| {})
    }

    /// [`Interrupts::catch`], running `then` on the handler's thread after
    /// each interrupt has been noted.
    pub fn catch_then(mut then: impl FnMut() + Send + 'static) -> anyhow::Result<Interrupts> {
        let came = Arc::new(AtomicBool::new(false));
        let (tx, heard) = std::sync::mpsc::channel::<()>();
        let flag = came.clone();
        ctrlc::set_handler(move || {
            flag.store(true, Ordering::Relaxed);
            then();
            let _ = tx.send(());
        })
        .context("installing the interrupt handler")?;
        Ok(Interrupts { came, heard })
    }

    /// Whether an interrupt has come.
    pub fn came(&self) -> bool {
        self.came.load(Ordering::Relaxed)
    }

    /// Waits for an interrupt (a holder's wait).
    pub fn wait(&self) {
        let _ = self.heard.recv();
    }

    /// Runs `lock`, a lock taken within the time it is given, in slices of
    /// [`SLICE`] until it succeeds, fails otherwise than by timing out,
    /// `timeout` has passed (its last `TimedOut`), or an interrupt comes
    /// (`Ok(None)`).
    pub fn lock<G>(
        &self,
        timeout: Option<Duration>,
        mut lock: impl FnMut(Duration) -> Result<G, LockError>,
    ) -> Result<Option<G>, LockError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if self.came() {
                return Ok(None);
            }
            let slice = deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()).min(SLICE));
            match lock(slice) {
                Err(LockError::TimedOut) if deadline.is_none_or(|d| Instant::now() < d) => {}
                done => return done.map(Some),
            }
        }
    }
}
