//! The fast path: mailbox messages through shared memory.
//!
//! Each connection between a sender and a mailbox has a shared region
//! ([`region`]) with two single-producer, single-consumer rings
//! ([`ring`]): requests one way, replies the other. Payloads up to
//! [`INLINE_MAX`] travel inside the ring; larger ones in buffers from a
//! per-connection pool ([`pool`]), mapped once and reused, or lent to the
//! application as a zero-copy [`Loan`](crate::Loan). [`conn`] is the
//! protocol on top of the rings, [`serve`] the receiving side's handler
//! threads.
//!
//! Only three things are per-OS, in `sys::<os>::mailbox`: setting the region
//! up (the receiver creates it and hands it over: `SCM_RIGHTS` on Linux,
//! `DuplicateHandle` on Windows), parking and waking (a futex in the region
//! on Linux, event objects on Windows), and noticing that the peer died.
//! That backend type, `Link`, provides:
//!
//! - `region(&self) -> &Region`
//! - `wake(&self, bell: Bell)`: bump the bell's word and wake whoever sleeps
//!   on it in the other process
//! - `park(&self, bell: Bell, seen: u32, deadline: Option<Instant>) -> Park`
//!   (the sending side only; the receiving side parks on its doorbell)
//! - `send_aux(&self, buffer: Option<&Section>, sections: &[&Section]) -> io::Result<Vec<u8>>`:
//!   hands a buffer and sections to the peer; returns bytes to put in the
//!   record (empty where they travel beside the ring)
//! - `recv_aux(&self, inline: &[u8], buffer: bool, sections: usize) -> io::Result<(Option<Section>, Vec<Section>)>`
//! - `shutdown(&self)`: drop the connection (the peer's waits fail)
//! - `aux_len(buffer: bool, sections: &[&Section]) -> usize`: how many bytes
//!   `send_aux` will return, known before anything is handed over
//! - `ATTACHMENTS_NEED_SENDER: bool`: whether what `send_aux` hands over is
//!   lost if the sending process exits before the peer has taken the
//!   record (Windows: the peer pulls the handles out of it)
//! - `await_lingering(deadline: Option<Instant>) -> bool`: waits until no
//!   connection this process dropped still keeps such attachments for a
//!   receiver (at once where there are none); whether none is left
//! - `oneshot(data: &[u8]) -> io::Result<Section>`: a payload too large for
//!   the pool in a section of its own (Linux: a memfd sealed against writes)
//! - `frozen(section: &Section) -> bool` on the receiving side: whether a
//!   one-shot payload really is sealed (then it is read in place)

pub(crate) mod conn;
pub(crate) mod envelope;
pub(crate) mod pool;
pub(crate) mod region;
pub(crate) mod ring;
pub(crate) mod serve;

use std::time::{Duration, Instant};

/// How a side of a connection waits for the other.
///
/// Set by the sender for both sides of its connection
/// ([`SenderOptions::wait`](crate::SenderOptions::wait)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Spin briefly (a few tens of microseconds, with the CPU's pause
    /// instruction), then sleep. A peer that answers quickly is caught while
    /// spinning, without the cost of a kernel wake-up (tens of microseconds
    /// on virtual machines). An idle side sleeps and uses no CPU.
    #[default]
    SpinThenPark,
    /// Sleep at once: every hand-off costs a kernel wake-up, like a socket,
    /// and no CPU is spent spinning.
    Park,
}

impl Wait {
    pub(crate) fn code(self) -> u8 {
        match self {
            Wait::SpinThenPark => 0,
            Wait::Park => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Wait> {
        match code {
            0 => Some(Wait::SpinThenPark),
            1 => Some(Wait::Park),
            _ => None,
        }
    }
}

/// The value of a parked flag (a ring's `cons_parked` / `prod_parked`) for
/// a side that sleeps in the kernel on the word (a futex) or on an event.
pub(crate) const PARKED: u32 = 1;
/// The value of a parked flag for a sender that sleeps on the connection's
/// readiness handle (Linux: a socket pair's end, watched together with the socket
/// by a blocking sender and by an async runtime's reactor): the receiver
/// signals the handle.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const PARKED_ASYNC: u32 = 2;

/// How long a side spins before it parks: about the cost of one wake-up.
pub(crate) const SPIN: Duration = Duration::from_micros(50);
/// After this much spinning, a spinner yields its CPU now and then.
const YIELD_AFTER: Duration = Duration::from_micros(5);

/// Payloads up to this size are copied through the request ring; larger
/// ones go through pooled buffers.
pub(crate) const INLINE_MAX: usize = 16 << 10;

/// The words a side may sleep on, named by what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bell {
    /// A request was queued (wakes the receiver's handler thread).
    Request,
    /// A reply was queued (wakes the sender).
    Reply,
    /// Room was made in the request ring (wakes a sender blocked in `post`).
    Space,
}

/// How a park ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Park {
    /// Woken, or the word changed, or a spurious wake-up: look again.
    Woken,
    /// The deadline passed.
    TimedOut,
    /// The peer process is gone.
    PeerGone,
}

/// Spins for at most [`SPIN`] until `ready` says to look. The clock is
/// first read after a few dozen looks, so a hand-off caught at once costs
/// no clock read. `ready` should be a cheap test (a load or two): the
/// caller does the real work once it returns `true`.
pub(crate) fn spin(ready: impl FnMut() -> bool) -> bool {
    spin_yielding(ready, true)
}

/// Like [`spin`], but without yielding: for a wait that yields once per
/// [`SPIN`] by itself (a system call every few microseconds would keep the
/// waiter's own path cold).
pub(crate) fn spin_quietly(ready: impl FnMut() -> bool) -> bool {
    spin_yielding(ready, false)
}

fn spin_yielding(mut ready: impl FnMut() -> bool, yields: bool) -> bool {
    let mut start: Option<Instant> = None;
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        match start {
            None => start = Some(Instant::now()),
            Some(s) => {
                let spent = s.elapsed();
                if spent >= SPIN {
                    return false;
                }
                // Past the usual hand-off, let another thread of this CPU
                // run (on a shared core, the peer of another connection may
                // need it); with the core to itself the yield returns at once.
                if yields && spent >= YIELD_AFTER {
                    std::thread::yield_now();
                }
            }
        }
    }
}
