//! The receiving side's handler threads.
//!
//! Each connection belongs to one handler thread (its *worker*), so one
//! sender's messages are handled in order. A worker takes messages off its
//! connections' request rings and runs the handler on the same thread (no
//! hop through a queue). It spins while any of its connections asked for
//! spinning, then parks on its doorbell, one word (Linux) or event
//! (Windows) per worker, which any of its senders rings after queueing a
//! message if the worker said it was parking. Many connections never need
//! one spinning thread each.
//!
//! Before sleeping for good, a worker sleeps [`TRIM_AFTER`] and then gives
//! back per-connection memory (mapped buffers, the spare payload buffer),
//! so an idle mailbox holds little memory and uses no CPU. "For good" is
//! [`IDLE_LOOK`] at a time: a doorbell is shared by every sender of the
//! worker, and one that writes it (rather than rings it) could make the
//! worker miss another's ring; the worst it can do is delay that message
//! by one such sleep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Wait;
use super::conn::ServerConn;
use super::pool::TRIM_AFTER;
use crate::mailbox::Message;
use crate::name::Name;
use crate::sys::mailbox::{Bells, NativeResponder};

/// What a worker takes next.
pub(crate) enum Next {
    /// A message from a connection of the fast path (which the message
    /// holds: `Message::take_origin`).
    Ring(Message),
    /// A message from a plain Win32 program (`WM_COPYDATA`), handed over by
    /// the mailbox's window.
    #[allow(dead_code)] // only Windows has native senders
    Native(Message, NativeResponder),
}

/// The most handler threads a mailbox may have.
pub(crate) const MAX_WORKERS: usize = 64;

#[derive(Debug, Default)]
struct Slot {
    conns: Mutex<Vec<Arc<ServerConn>>>,
    changed: AtomicBool,
}

/// The connections of a mailbox, spread over its workers.
#[derive(Debug)]
pub(crate) struct Dispatch {
    name: Name,
    slots: Vec<Slot>,
    /// Workers in use: 1 until `serve` starts more.
    active: AtomicUsize,
    next: AtomicUsize,
    closed: AtomicBool,
    bells: Bells,
    /// Messages from plain Win32 senders, for worker 0.
    native: Mutex<VecDeque<(Message, NativeResponder)>>,
    /// Set once a native message was queued (worker 0 then looks).
    has_native: AtomicBool,
}

/// What a worker keeps between calls to [`Dispatch::next`].
#[derive(Debug, Default)]
pub(crate) struct WorkerState {
    conns: Vec<Arc<ServerConn>>,
    /// Whether any of `conns` spins (`Wait::SpinThenPark`), so the worker
    /// spins before it parks.
    spinning: bool,
    /// Where the next scan starts: just after the connection of the last
    /// message taken.
    start: usize,
    /// The connection the next look checks besides the last one served.
    turn: std::cell::Cell<usize>,
    /// Messages the connection served last may still have taken straight,
    /// without a round of all connections: granted when a round found no
    /// other connection waiting (see `scan`).
    alone: u32,
    /// The last message came from the connection served last, taken
    /// straight, and nothing woke the worker since: the next pass need not
    /// round the others if that connection has nothing (the looks between
    /// passes watch them, one per look).
    skip_round: bool,
    /// The worker's last wait ended without a message: the next pass checks
    /// whether a sender announced a loan (a look at every connection, not
    /// worth making after every message).
    loan_hint: bool,
    trimmed: bool,

    /// Since when a streamed copy put aside has kept the worker from
    /// sleeping, no message having come meanwhile.
    aside_since: Option<Instant>,
    /// Since when the worker has slept without a message, across calls of
    /// [`Dispatch::next`] (a caller polling with short deadlines, as
    /// `recv_timeout` in a loop does, sleeps in short pieces): the
    /// connections are trimmed once that reaches [`TRIM_AFTER`].
    quiet_since: Option<Instant>,
}

impl WorkerState {
    /// Takes `conns` as the worker's connections.
    fn set_conns(&mut self, conns: Vec<Arc<ServerConn>>) {
        self.conns = conns;
        self.spinning = self.conns.iter().any(|c| c.wait == Wait::SpinThenPark);
    }
}

/// The longest a worker sleeps without looking at its connections.
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// The longest a worker polls for an announced loan before it parks.
const HOT_MAX: Duration = Duration::from_secs(1);

/// How long a worker polls without a pause once every streamed copy put
/// aside has stalled (its sender's progress rings no doorbell; an honest
/// sender resumes within microseconds unless it was descheduled) ...
const ASIDE_HOT: Duration = Duration::from_millis(2);
/// ... and then how long it naps between looks: a stopped or hostile
/// sender costs the receiver no CPU to speak of, a resumed one waits this
/// long at most.
const ASIDE_NAP: Duration = Duration::from_millis(1);

/// How many messages in a row the connection served last may take
/// straight while the others were idle at the last round: a sender that
/// starts while another keeps the worker busy waits at most this many of
/// the other's messages.
const ALONE: u32 = 8;

impl Dispatch {
    pub(crate) fn new(name: Name, workers: usize, bells: Bells) -> Dispatch {
        Dispatch {
            name,
            slots: (0..workers.clamp(1, MAX_WORKERS)).map(|_| Slot::default()).collect(),
            active: AtomicUsize::new(1),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            bells,
            native: Mutex::new(VecDeque::new()),
            has_native: AtomicBool::new(false),
        }
    }

    pub(crate) fn bells(&self) -> &Bells {
        &self.bells
    }

    pub(crate) fn workers(&self) -> usize {
        self.slots.len()
    }

    /// The worker for a new connection.
    pub(crate) fn pick(&self) -> u32 {
        let n = self.active.load(Ordering::Acquire).max(1);
        (self.next.fetch_add(1, Ordering::Relaxed) % n) as u32
    }

    /// Adds a set-up connection to worker `w`.
    pub(crate) fn add(&self, w: u32, conn: Arc<ServerConn>) {
        let slot = &self.slots[w as usize];
        slot.conns.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        slot.changed.store(true, Ordering::Release);
        self.bells.ring(w as usize);
    }

    /// Queues a message from a plain Win32 sender for worker 0.
    #[allow(dead_code)] // only Windows has native senders
    pub(crate) fn push_native(&self, message: Message, responder: NativeResponder) {
        {
            // The flag changes only under the lock, so it never says "empty"
            // while a message waits.
            let mut queue = self.native.lock().unwrap_or_else(|e| e.into_inner());
            queue.push_back((message, responder));
            self.has_native.store(true, Ordering::Release);
        }
        self.poke(0);
    }

    /// Wakes worker `w` to look at its connections again.
    pub(crate) fn poke(&self, w: u32) {
        if let Some(slot) = self.slots.get(w as usize) {
            slot.changed.store(true, Ordering::Release);
            self.bells.ring(w as usize);
        }
    }

    /// Has every worker look at its connections.
    pub(crate) fn poke_all(&self) {
        for w in 0..self.slots.len() {
            self.poke(w as u32);
        }
    }

    /// Spreads the connections over all workers (when `serve` starts them).
    pub(crate) fn activate_all(&self) {
        let n = self.slots.len();
        self.active.store(n, Ordering::Release);
        let moved: Vec<_> = std::mem::take(&mut *self.slots[0].conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, conn) in moved.into_iter().enumerate() {
            let w = i % n;
            conn.link().region().worker().store(w as u32, Ordering::Release);
            self.slots[w].conns.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
        self.poke_all();
    }

    /// Stops every worker: `next` returns `None` from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for w in 0..self.slots.len() {
            self.bells.ring(w);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Every connection (for closing them).
    pub(crate) fn take_all(&self) -> Vec<Arc<ServerConn>> {
        let mut all = Vec::new();
        for s in &self.slots {
            all.append(&mut s.conns.lock().unwrap_or_else(|e| e.into_inner()));
        }
        all
    }

    fn drop_conn(&self, w: usize, st: &mut WorkerState, conn: &Arc<ServerConn>) {
        conn.hang_up();
        let mut conns = std::mem::take(&mut st.conns);
        conns.retain(|c| !Arc::ptr_eq(c, conn));
        st.set_conns(conns);
        self.slots[w].conns.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| !Arc::ptr_eq(c, conn));
    }

    /// Drops the connections a pass found gone (see `try_take`): inlined,
    /// as every pass calls it, almost always with none.
    #[inline(always)]
    fn drop_gone(&self, w: usize, st: &mut WorkerState, gone: Option<Vec<Arc<ServerConn>>>) {
        if let Some(gone) = gone {
            self.drop_all(w, st, gone);
        }
    }

    #[cold]
    #[inline(never)]
    fn drop_all(&self, w: usize, st: &mut WorkerState, gone: Vec<Arc<ServerConn>>) {
        for conn in gone {
            self.drop_conn(w, st, &conn);
        }
    }

    /// One pass over the worker's connections.
    // Inlined, as `try_take`: the message moves up by value (see
    // `ServerConn::deliver`).
    #[inline(always)]
    fn scan(&self, w: usize, st: &mut WorkerState) -> Option<Next> {
        if w == 0 && self.has_native.load(Ordering::Acquire) {
            let mut queue = self.native.lock().unwrap_or_else(|e| e.into_inner());
            let next = queue.pop_front();
            if queue.is_empty() {
                self.has_native.store(false, Ordering::Release);
            }
            if let Some((m, r)) = next {
                return Some(Next::Native(m, r));
            }
        }
        let mut gone: Option<Vec<Arc<ServerConn>>> = None;
        // While the other connections were idle at the last round, the one
        // served last goes first, without a look at every other (with many
        // connections that look is most of a message's cost).
        if st.alone > 0
            && let Some(last) = st.start.checked_sub(1).filter(|&at| at < st.conns.len())
        {
            if let Some(found) = self.try_take(last, st, &mut gone) {
                st.alone -= 1;
                st.skip_round = true;
                return Some(found);
            }
            self.drop_gone(w, st, gone.take());
            // (Only with looks between passes: a worker that parks at once
            // would raise every parked flag to find another sender.)
            if st.skip_round && st.spinning {
                return None;
            }
        }
        // Round the connections from `start`, without a division per
        // connection (this runs for every message).
        let n = st.conns.len();
        let start = if st.start < n { st.start } else { 0 };
        let mut found = None;
        for i in 0..n {
            let at = if start + i < n { start + i } else { start + i - n };
            if let Some(next) = self.try_take(at, st, &mut gone) {
                st.start = at + 1;
                // The round came back to the connection served last: no
                // other is waiting.
                st.alone = if i == n - 1 { ALONE } else { 0 };
                found = Some(next);
                break;
            }
        }
        self.drop_gone(w, st, gone);
        found
    }

    /// The next message of connection `at`, if it has one ready; a
    /// connection to drop goes to `gone`.
    #[inline(always)]
    fn try_take(&self, at: usize, st: &WorkerState, gone: &mut Option<Vec<Arc<ServerConn>>>) -> Option<Next> {
        let conn = &st.conns[at];
        if conn.busy.load(Ordering::Acquire) {
            return None;
        }
        // A sender that is gone may have left messages (posts) behind:
        // they are delivered before the connection is dropped.
        let dead = conn.dead.load(Ordering::Acquire);
        if !dead && !conn.maybe_ready() {
            return None;
        }
        conn.prefetch();
        // What the peer wrote is checked, so `take` should never panic; if a
        // bug lets it, that connection is dropped, not the handler thread
        // with every other sender's connection. (Free unless it panics.)
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.take()))
            .unwrap_or_else(|_| Err("taking a message panicked (a bug in copydata)".into()));
        match taken {
            Ok(Some(message)) => return Some(Next::Ring(message)),
            Ok(None) if dead => gone.get_or_insert_with(Vec::new).push(conn.clone()),
            Ok(None) => {}
            Err(_) if dead => gone.get_or_insert_with(Vec::new).push(conn.clone()),
            Err(reason) => {
                log::warn!("mailbox {}: dropped the connection from pid {}: {reason}", self.name, conn.peer.pid);
                gone.get_or_insert_with(Vec::new).push(conn.clone());
            }
        }
        None
    }

    /// A cheap look (a few loads) for anything that needs a real scan: the
    /// connection served last (the likeliest to send next) on every look,
    /// the others one per look in turn, so a look costs the same however
    /// many connections the worker has. (Before parking, the worker scans
    /// them all.)
    fn worth_a_look(&self, w: usize, slot: &Slot, st: &WorkerState) -> bool {
        // A connection whose streamed copy stalled is looked at only by
        // full scans (its record stays at the ring's head meanwhile).
        let wants = |c: &ServerConn| {
            !c.busy.load(Ordering::Relaxed)
                && ((c.maybe_ready() && !c.stalled.load(Ordering::Relaxed)) || c.dead.load(Ordering::Relaxed))
        };
        let n = st.conns.len();
        slot.changed.load(Ordering::Relaxed)
            || self.is_closed()
            || (w == 0 && self.has_native.load(Ordering::Relaxed))
            || (n > 0 && {
                let turn = st.turn.get() + 1;
                let turn = if turn < n { turn } else { 0 };
                st.turn.set(turn);
                let last = st.start.checked_sub(1).and_then(|at| st.conns.get(at));
                last.is_some_and(|c| wants(c)) || wants(&st.conns[turn])
            })
    }

    /// Whether to poll for a loan: a spinning sender announced one that
    /// the worker has seen for less than [`HOT_MAX`] (each loan polled for
    /// [`HOT_MAX`] at most in all, however many messages of other senders
    /// come meanwhile).
    fn poll_for_loan(st: &WorkerState) -> bool {
        // (The clock is read only once a loan is announced: this runs
        // between the looks of a spin.)
        let mut now = None;
        st.conns.iter().any(|c| {
            c.wait == Wait::SpinThenPark
                && c.loan_pending()
                && c.loan_fresh(*now.get_or_insert_with(Instant::now), HOT_MAX)
        })
    }

    fn set_parked(st: &WorkerState, value: u32) {
        for c in &st.conns {
            c.requests().cons_parked().store(value, Ordering::SeqCst);
        }
    }

    /// The next message for worker `w`, waiting until `deadline` (`None`:
    /// for ever). `None` when the mailbox closes or the deadline passes.
    pub(crate) fn next(&self, w: usize, st: &mut WorkerState, deadline: Option<Instant>) -> Option<Next> {
        let slot = &self.slots[w];
        loop {
            if self.is_closed() {
                return None;
            }
            if slot.changed.load(Ordering::Acquire) && slot.changed.swap(false, Ordering::AcqRel) {
                st.set_conns(slot.conns.lock().unwrap_or_else(|e| e.into_inner()).clone());
                st.alone = 0;
            }
            if let Some(found) = self.scan(w, st) {
                st.trimmed = false;
                st.loan_hint = false;
                st.aside_since = None;
                st.quiet_since = None;
                return Some(found);
            }
            // A sender filling a loan is about to send: poll, yielding the
            // CPU, rather than sleep and make it pay for a wake-up.
            if st.loan_hint && Self::poll_for_loan(st) {
                if deadline.is_none_or(|d| Instant::now() < d) {
                    // Spin, and let other threads of this CPU in once per
                    // round (a yield is a system call, microseconds here, and
                    // one every few microseconds, as `spin` does after a
                    // while, leaves this thread's own path colder for the
                    // send it waits for).
                    if !super::spin_quietly(|| self.worth_a_look(w, slot, st)) {
                        std::thread::yield_now();
                    }
                    st.skip_round = false;
                    continue;
                }
            } else {
                st.loan_hint = false;
            }
            // While spinning, a loan announced meanwhile also ends the spin
            // (the loop above then polls for it); looked for on every 16th
            // look only, as it reads a line of every connection's region.
            let mut looks = 0u32;
            let skipped = st.skip_round;
            if st.spinning
                && super::spin(|| {
                    looks = looks.wrapping_add(1);
                    self.worth_a_look(w, slot, st) || (looks.is_multiple_of(16) && Self::poll_for_loan(st))
                })
            {
                st.skip_round = false;
                st.loan_hint = true;
                // Past the deadline, one more pass if the last one skipped
                // the round: what the look saw may wait on another
                // connection.
                if !skipped && deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
                continue;
            }
            // Park: raise every connection's parked flag, look once more,
            // then sleep on the doorbell (see `ring::Producer::push`).
            let seen = self.bells.load(w);
            Self::set_parked(st, 1);
            fence(Ordering::SeqCst);
            st.skip_round = false;
            if let Some(found) = self.scan(w, st) {
                Self::set_parked(st, 0);
                st.trimmed = false;
                st.quiet_since = None;
                return Some(found);
            }
            // A loan announced before the flag went up found no one parked
            // (`Client::lend` raises its word, fences, then looks at the
            // flag): poll for it instead of sleeping through the fill.
            if slot.changed.load(Ordering::Acquire) || self.is_closed() || Self::poll_for_loan(st) {
                Self::set_parked(st, 0);
                st.loan_hint = true;
                continue;
            }
            // Nor does a streamed copy put aside ring a doorbell as its
            // sender goes on: poll for it, and once every such copy has
            // stalled for a while, nap between looks.
            let (mut aside, mut moving) = (false, false);
            for c in &st.conns {
                if c.streaming.load(Ordering::Acquire) {
                    aside = true;
                    moving |= !c.stalled.load(Ordering::Acquire);
                }
            }
            if moving || !aside {
                st.aside_since = None;
            }
            let mut nap = None;
            if aside {
                if moving || st.aside_since.get_or_insert_with(Instant::now).elapsed() < ASIDE_HOT {
                    Self::set_parked(st, 0);
                    continue;
                }
                nap = Some(ASIDE_NAP);
            }
            let now = Instant::now();
            let left = deadline.map(|d| d.saturating_duration_since(now));
            let quiet = *st.quiet_since.get_or_insert(now);
            let trim_in = (!st.trimmed).then(|| TRIM_AFTER.saturating_sub(now.duration_since(quiet)));
            let sleep = [left, trim_in, nap].into_iter().flatten().fold(IDLE_LOOK, Duration::min);
            let timed_out = !self.bells.wait(w, seen, Some(sleep));
            Self::set_parked(st, 0);
            st.loan_hint = true;
            if timed_out {
                if !st.trimmed && quiet.elapsed() >= TRIM_AFTER - Duration::from_millis(1) {
                    // Until every large buffer is back (a slow sender may
                    // still be reading a reply), try again after the next
                    // quiet spell.
                    let mut all = true;
                    for c in &st.conns {
                        all &= c.trim(Instant::now());
                    }
                    st.trimmed = all;
                    if !all {
                        st.quiet_since = Some(Instant::now());
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
            }
        }
    }
}
