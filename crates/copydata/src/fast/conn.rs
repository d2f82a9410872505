//! The message protocol on the rings of one connection.
//!
//! Records (see [`ring`](super::ring) for the header):
//!
//! | kind | ring | word | inline bytes |
//! |---|---|---|---|
//! | `CALL`, `POST` | requests | tag | [aux] [buffer reference \| payload] |
//! | `REPLY` | replies | code | [aux] [buffer reference \| payload] |
//! | `REFUSED` | replies | 0 | the reason (UTF-8, at most 4 KiB) |
//! | `TOO_LARGE` | replies | the limit | none |
//! | `RETIRE` | either | a buffer slot | none |
//!
//! `len` is the payload's length wherever it is. With the `AUX` flag the
//! inline bytes start with `aux_len: u32, sections: u32` and `aux_len`
//! bytes (padded to 8) for the backend (`Link::recv_aux`); with `BUF` a
//! 16-byte [`BufRef`] follows, else the payload itself.
//!
//! A sender has at most one `CALL` outstanding (it waits for the reply), so
//! the reply ring never fills unless the sender misbehaves: then the
//! receiver drops the connection rather than wait. Posts fill the request
//! ring; a full ring blocks `post` (backpressure).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::pool::{
    BUF_LOAN, BUF_NEW, BUF_ONESHOT, BUF_STREAM, BufRef, Lend, Lent, MAX_BUF, ONESHOT, PeerBuffers, Pool,
};
use super::region::{REP_CAP, REQ_CAP, ReleaseWord, SLOTS, Side};
use super::ring::{Consumer, Corrupt, Producer, Rec, RingPtr, max_inline, pack_flags, record_size, user_flags};
use super::{Bell, INLINE_MAX, Park, Wait, spin};
use crate::fork::Made;
use crate::mailbox::{Message, Payload, Peer, Reply};
use crate::section::Section;
use crate::sys::mailbox::Link;
use crate::view::View;

pub(crate) const CALL: u32 = 1;
pub(crate) const POST: u32 = 2;
pub(crate) const REPLY: u32 = 3;
pub(crate) const REFUSED: u32 = 4;
pub(crate) const TOO_LARGE: u32 = 5;
pub(crate) const RETIRE: u32 = 6;
const F_AUX: u32 = 1;
const F_BUF: u32 = 2;
const MAX_REASON: usize = 4096;
/// The most buffers a side retires between two messages: each of its
/// slots once (a slot is used again only once a message announces it),
/// twice over for slack. More is a peer flooding the ring to hold the
/// reader in one take: the connection is dropped.
const MAX_RETIRES: u32 = 2 * SLOTS as u32;
/// Copied payloads from this size on are streamed: the record goes out
/// first and the receiver copies chunks as the sender writes them, so the
/// two copies overlap instead of following each other.
const STREAM_MIN: usize = 4 << 20;
const STREAM_CHUNK: usize = 256 << 10;
/// How long a streaming sender may make no progress (less than a chunk).
const STREAM_STALL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the receiver waits for a streaming sender's next bytes before
/// it puts the copy aside and serves its other senders (it comes back to
/// the copy on its next pass).
const STREAM_PATIENCE: std::time::Duration = std::time::Duration::from_micros(200);
/// The longest one pass copies a streamed payload, however steadily its
/// sender goes on, before it puts the copy aside (its other senders are
/// served meanwhile): a sender that trickles bytes just fast enough never
/// trips [`STREAM_PATIENCE`] or [`STREAM_STALL`].
const STREAM_SLICE: std::time::Duration = std::time::Duration::from_millis(2);
/// A copy put aside that has not moved for this long is stalled: it gets
/// one look per pass instead of a spell of waiting, and the worker naps
/// between passes (see `serve`).
const STREAM_STALE: std::time::Duration = std::time::Duration::from_millis(1);
const STREAM_SHIFT: u32 = 40;
const STREAM_DONE_MASK: u64 = (1 << STREAM_SHIFT) - 1;
const STREAM_ID_MASK: u64 = (1 << (64 - STREAM_SHIFT)) - 1;

/// The progress word of a streamed payload: which use (low bits of its
/// number) and how many bytes are written.
fn stream_word(use_no: u64, done: usize) -> u64 {
    (use_no & STREAM_ID_MASK) << STREAM_SHIFT | done as u64
}

/// The most sections one message may carry.
pub(crate) const MAX_SECTIONS: usize = 16;

/// Why an exchange failed, before the portable layer names the mailbox.
#[derive(Debug)]
pub(crate) enum Fail {
    TimedOut,
    PeerGone,
    Refused(String),
    TooLarge {
        max: u64,
    },
    /// The request ring is full (`try_post`).
    Full,
    /// The peer broke the protocol; the connection is unusable.
    Broken(String),
    Io(io::Error),
}

impl From<Corrupt> for Fail {
    fn from(c: Corrupt) -> Fail {
        Fail::Broken(c.to_string())
    }
}

/// A payload on its way out.
pub(crate) enum Body<'a> {
    Bytes(&'a [u8]),
    /// A loan, filled in place: `len` bytes of the lent buffer.
    Lent(&'a LentBuf, usize),
}

/// A buffer lent to the application for a zero-copy message: pooled, or a
/// one-shot section when the pool cannot serve it.
#[derive(Debug)]
pub(crate) struct LentBuf {
    pub(crate) ptr: *mut u8,
    slot: u32,
    use_no: u64,
    announce: bool,
    prev_use: u64,
    oneshot: Option<(Section, crate::view::ViewMut)>,
}

impl LentBuf {
    /// A pooled buffer, or (`None`) a one-shot section of `len` bytes.
    fn new(lent: Option<Lent>, len: usize) -> io::Result<LentBuf> {
        Ok(match lent {
            Some(Lent { slot, use_no, announce, ptr, prev_use }) => {
                LentBuf { ptr, slot, use_no, announce, prev_use, oneshot: None }
            }
            None => {
                let section = Section::anonymous(len.max(1) as u64).map_err(io::Error::other)?;
                let view = section.map_mut(0, len.max(1)).map_err(io::Error::other)?;
                LentBuf {
                    ptr: view.as_mut_ptr(),
                    slot: ONESHOT,
                    use_no: 0,
                    announce: true,
                    prev_use: 0,
                    oneshot: Some((section, view)),
                }
            }
        })
    }
}

// SAFETY:
// - the pointer is into a mapping kept alive by the connection's pool (or by
//   `oneshot`); it is only written by the thread owning the `Loan`.
unsafe impl Send for LentBuf {}
// SAFETY: `&LentBuf` gives no access to the memory; only its owner writes.
unsafe impl Sync for LentBuf {}

/// The inline bytes of a request or reply record, parsed and checked.
pub(crate) struct Parsed {
    aux: Option<(Vec<u8>, usize)>,
    buf: Option<BufRef>,
    /// Offset and length of an inline payload.
    inline_payload: (usize, usize),
}

pub(crate) fn parse(c: &Consumer, rec: &Rec) -> Result<Parsed, String> {
    let flags = user_flags(rec);
    if flags & !(F_AUX | F_BUF) != 0 {
        return Err(format!("unknown record flags {flags:#x}"));
    }
    let mut at = 0usize;
    let mut aux = None;
    if flags & F_AUX != 0 {
        if rec.inline < 8 {
            return Err("record too short for its attachment".into());
        }
        let mut head = [0u8; 8];
        c.read(rec, 0, &mut head);
        let aux_len = u64::from(u32::from_ne_bytes(head[0..4].try_into().expect("4")));
        let sections = u32::from_ne_bytes(head[4..8].try_into().expect("4")) as usize;
        // In u64: a hostile length must not wrap around on 32-bit targets.
        if sections > MAX_SECTIONS || 8 + aux_len.next_multiple_of(8) > rec.inline as u64 {
            return Err(format!("attachment of {aux_len} bytes and {sections} sections"));
        }
        let aux_len = aux_len as usize;
        let mut bytes = vec![0u8; aux_len];
        c.read(rec, 8, &mut bytes);
        aux = Some((bytes, sections));
        at = 8 + aux_len.next_multiple_of(8);
    }
    let mut buf = None;
    if flags & F_BUF != 0 {
        if rec.inline != at + BufRef::LEN {
            return Err("record with a buffer reference has stray bytes".into());
        }
        let mut b = [0u8; BufRef::LEN];
        c.read(rec, at, &mut b);
        buf = Some(BufRef::decode(&b)?);
        at += BufRef::LEN;
    } else {
        check_inline(rec, at)?;
    }
    Ok(Parsed { aux, buf, inline_payload: (at, rec.inline - at) })
}

/// Checks that the inline bytes of `rec` from `at` on are its whole
/// payload, as its length says.
fn check_inline(rec: &Rec, at: usize) -> Result<(), String> {
    if (rec.inline - at) as u64 != rec.len {
        return Err(format!("inline payload of {} bytes announced as {}", rec.inline - at, rec.len));
    }
    Ok(())
}

/// The inline parts of a record (at most four slices, no allocation).
struct Parts<'a> {
    flags: u32,
    list: [&'a [u8]; 4],
    n: usize,
}

impl<'a> Parts<'a> {
    fn as_slice(&self) -> &[&'a [u8]] {
        &self.list[..self.n]
    }
}

/// Builds the inline parts of a record: attachment header, attachment, and
/// buffer reference or payload.
fn parts<'a>(
    aux_head: &'a mut [u8; 8],
    aux: Option<&'a (Vec<u8>, usize)>,
    pad: &'a [u8; 8],
    bufref: Option<&'a [u8; 16]>,
    payload: &'a [u8],
) -> Parts<'a> {
    let mut p = Parts { flags: 0, list: [&[]; 4], n: 0 };
    let add = |p: &mut Parts<'a>, s: &'a [u8]| {
        p.list[p.n] = s;
        p.n += 1;
    };
    if let Some((bytes, sections)) = aux {
        p.flags |= F_AUX;
        aux_head[0..4].copy_from_slice(&(bytes.len() as u32).to_ne_bytes());
        aux_head[4..8].copy_from_slice(&(*sections as u32).to_ne_bytes());
        add(&mut p, &aux_head[..]);
        add(&mut p, bytes);
        add(&mut p, &pad[..bytes.len().next_multiple_of(8) - bytes.len()]);
    }
    if let Some(b) = bufref {
        p.flags |= F_BUF;
        add(&mut p, &b[..]);
    } else {
        add(&mut p, payload);
    }
    p
}

/// Copies `len` bytes of a view into `out` (cleared first), without zeroing
/// the destination first.
/// Room for `len` more bytes in `out`, or why not: the length comes from
/// the peer, and memory that cannot be had drops the connection instead of
/// aborting the process.
fn reserve(out: &mut Vec<u8>, len: usize) -> Result<(), String> {
    out.try_reserve_exact(len).map_err(|_| format!("no memory for a payload of {len} bytes"))
}

/// Copies the first `len` bytes of `view` into `out` (its old contents
/// dropped).
fn copy_out(view: &View, len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    assert!(len <= view.len());
    out.clear();
    reserve(out, len)?;
    // SAFETY:
    // - the source is inside the view (checked above) and mapped while
    //   `view` lives; the destination is `len` bytes of `out`'s spare
    //   capacity (just reserved), private memory, so they do not overlap;
    // - after the copy the first `len` bytes are initialised, so `set_len`
    //   is sound;
    // - no reference to the shared bytes is formed.
    unsafe {
        std::ptr::copy_nonoverlapping(view.as_ptr(), out.as_mut_ptr(), len);
        out.set_len(len);
    }
    Ok(())
}

// ---------------------------------------------------------------- sender

/// The sending side of a connection.
#[derive(Debug)]
pub(crate) struct Client {
    link: Link,
    req: Producer,
    rep: Consumer,
    pool: Pool,
    peer: PeerBuffers,
    wait: Wait,
    max_payload: u64,
    /// The largest reply taken (`SenderOptions::max_reply`): a receiver
    /// cannot make this process map or allocate more.
    max_reply: u64,
    /// The request-ring position past the last posted one-shot section: the
    /// next one waits until the receiver has taken it (at most one such
    /// post in flight).
    oneshot_until: Option<u64>,
    /// The request-ring position past the last record whose attachments
    /// live on in this process until the receiver takes the record
    /// (`Link::ATTACHMENTS_NEED_SENDER`); 0 for none.
    pinned_until: u64,
    /// Slots of buffers given back whose RETIRE record has not gone out.
    retiring: Vec<u32>,
    /// The number of the last loan announced (never 0, which means none):
    /// the receiver tells one loan from the next by it.
    announced: u32,
}

impl Client {
    /// The receiver's process id.
    pub(crate) fn peer_pid(&self) -> Option<u32> {
        self.link.peer_pid()
    }

    pub(crate) fn new(link: Link, wait: Wait, max_payload: u64) -> Client {
        let (req, rep) = (Producer::new(link.region().requests()), Consumer::new(link.region().replies()));
        Client {
            link,
            req,
            rep,
            pool: Pool::new(Side::Sender),
            peer: PeerBuffers::new(crate::mailbox::DEFAULT_MAX_PAYLOAD),
            wait,
            max_payload,
            max_reply: crate::mailbox::DEFAULT_MAX_PAYLOAD,
            oneshot_until: None,
            pinned_until: 0,
            retiring: Vec::new(),
            announced: 0,
        }
    }

    /// Sets the largest reply taken.
    pub(crate) fn with_max_reply(mut self, max: u64) -> Client {
        self.max_reply = max;
        self.peer = PeerBuffers::new(max);
        self
    }

    /// The largest payload the receiver takes.
    pub(crate) fn max_payload(&self) -> u64 {
        self.max_payload
    }

    /// Spins (per the wait strategy), then parks on `bell` until `check`
    /// finds something or `deadline` passes.
    fn wait_for<T>(
        &mut self,
        bell: Bell,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut Client) -> Result<Option<T>, Fail>,
    ) -> Result<T, Fail> {
        if self.wait == Wait::SpinThenPark {
            // Spin on a cheap look (the reply ring's next stamp, or the
            // consumer's position and the release words, taken before the
            // first check so no change is missed), then check for real.
            // A reply wait reads nothing but the reply ring: the request
            // ring's position is the receiver's to write just then.
            let (rep, rep_at, req) = (*self.rep.ring(), self.rep.position(), *self.req.ring());
            let (consumed, released) = match bell {
                Bell::Reply => (0, 0),
                _ => (self.req.consumed(), self.link.region().released_sum(Side::Sender)),
            };
            if let Some(t) = check(self)? {
                return Ok(t);
            }
            let region = self.link.region();
            let moved = spin(|| match bell {
                Bell::Reply => rep.has_stamp(rep_at),
                _ => req.consumed() != consumed || region.released_sum(Side::Sender) != released,
            });
            if moved && let Some(t) = check(self)? {
                return Ok(t);
            }
        }
        let ring = match bell {
            Bell::Reply => *self.rep.ring(),
            _ => *self.req.ring(),
        };
        let (flag, word) = match bell {
            Bell::Reply => (ring.cons_parked(), ring.cons_wake()),
            _ => (ring.prod_parked(), ring.prod_wake()),
        };
        let mut round = 0u32;
        loop {
            // The flag says where this park sleeps (`Link::park_flag`), so
            // the receiver wakes it there.
            let how = Link::park_flag(round);
            round = round.saturating_add(1);
            let seen = word.load(Ordering::Acquire);
            flag.store(how, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            let found = check(self);
            if !matches!(found, Ok(None)) {
                flag.store(0, Ordering::Relaxed);
                return found.map(|t| t.expect("checked"));
            }
            let parked = self.link.park(bell, seen, how, deadline);
            flag.store(0, Ordering::Relaxed);
            if let Some(t) = check(self)? {
                return Ok(t);
            }
            match parked {
                Park::Woken => {}
                Park::TimedOut => return Err(Fail::TimedOut),
                Park::PeerGone => return Err(Fail::PeerGone),
            }
        }
    }

    /// Waits for room for a record of `inline` bytes (or fails with `Full`
    /// when `block` is false).
    fn room_for(&mut self, size: usize, block: bool, deadline: Option<Instant>) -> Result<(), Fail> {
        if self.req.has_room(size)? {
            return Ok(());
        }
        if !block {
            return Err(Fail::Full);
        }
        self.wait_for(Bell::Space, deadline, |c| Ok(c.req.has_room(size)?.then_some(())))
    }

    fn push(&mut self, kind: u32, flags: u32, len: u64, word: u64, parts: &[&[u8]]) -> Result<(), Fail> {
        let inline: usize = parts.iter().map(|p| p.len()).sum();
        match self.req.push(kind, pack_flags(flags, inline), len, word, parts)? {
            Some(true) => self.link.wake(Bell::Request),
            Some(false) => {}
            None => return Err(Fail::Broken("no room after waiting for it".into())),
        }
        Ok(())
    }

    /// Tells the receiver about buffers given back (and gives back large ones
    /// after a quiet spell), as far as the request ring has room beyond
    /// `keep` bytes for the record that follows; the rest waits for a later
    /// message. A slot that is filled again before its RETIRE went out needs
    /// none: the new buffer's record replaces the receiver's handle.
    fn retire(&mut self, slots: Vec<u32>, keep: usize) -> Result<(), Fail> {
        self.retiring.extend(slots);
        if self.pool.has_large() {
            let trimmed = self.pool.trim(self.link.region(), Instant::now());
            self.retiring.extend(trimmed);
        }
        while let Some(&slot) = self.retiring.last() {
            if !self.req.has_room(record_size(0) + keep)? {
                break;
            }
            self.push(RETIRE, 0, 0, u64::from(slot), &[])?;
            self.retiring.pop();
        }
        Ok(())
    }

    /// Forgets a pending RETIRE for a slot that is being filled again,
    /// whether it waits for room (`retiring`) or comes from the lend that
    /// just emptied the slot and filled it anew (`retired`): the new
    /// buffer's record replaces the receiver's handle, and a RETIRE sent
    /// after that record would make the receiver forget the new buffer.
    fn reusing(&mut self, slot: u32, retired: &mut Vec<u32>) {
        self.retiring.retain(|&s| s != slot);
        retired.retain(|&s| s != slot);
    }

    /// A pooled buffer of `len` bytes, waiting (unless `block` is false) for
    /// one to come back when the pool is exhausted. `None` when `len` is too
    /// large for the pool.
    fn lend_pooled(
        &mut self,
        len: usize,
        block: bool,
        deadline: Option<Instant>,
        retired: &mut Vec<u32>,
    ) -> Result<Option<Lent>, Fail> {
        loop {
            match self.pool.lend(self.link.region(), len, retired).map_err(Fail::Io)? {
                Lend::Buffer(l) => return Ok(Some(l)),
                Lend::TooLarge => return Ok(None),
                Lend::Exhausted if !block => return Err(Fail::Full),
                Lend::Exhausted => {
                    // (Checked here too: a receiver that flips a release word
                    // back and forth could make the wait below end and the
                    // lend fail again for ever.)
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Fail::TimedOut);
                    }
                    self.wait_for(Bell::Space, deadline, |c| Ok(c.pool.available(c.link.region(), len).then_some(())))?;
                }
            }
        }
    }

    /// A buffer for a loan of `len` bytes, waiting for one of the pool's
    /// to come back if `block` (until `deadline`, then `TimedOut`), else
    /// failing with `Full`. Either failure leaves the connection clean.
    pub(crate) fn lend(&mut self, len: usize, block: bool, deadline: Option<Instant>) -> Result<LentBuf, Fail> {
        if len as u64 > self.max_payload {
            return Err(Fail::TooLarge { max: self.max_payload });
        }
        let mut retired = Vec::new();
        let lent = match self.lend_pooled(len, block, deadline, &mut retired) {
            // Buffers the pool gave back on the way are still told of.
            Err(f @ (Fail::Full | Fail::TimedOut)) => {
                self.retire(retired, 0)?;
                return Err(f);
            }
            lent => lent?,
        };
        if let Some(l) = &lent {
            self.reusing(l.slot, &mut retired);
        }
        self.retire(retired, 0)?;
        let buf = LentBuf::new(lent, len).map_err(Fail::Io)?;
        // A message is coming: a receiver parked in spin-then-park mode polls
        // (yielding) until it arrives, so the send after a long fill does not
        // pay for a wake-up (see `serve`).
        if self.wait == Wait::SpinThenPark {
            // The receiver raises its parked flag, fences, then looks at this
            // word; this side raises the word, fences, then looks at the
            // flag: one of the two sees the other, so the receiver either
            // polls or is woken here.
            self.announced = self.announced.wrapping_add(1).max(1);
            self.link.region().loan_pending().store(self.announced, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.req.ring().cons_parked().load(Ordering::SeqCst) != 0 {
                self.link.wake(Bell::Request);
            }
        }
        Ok(buf)
    }

    /// Gives back a loan that was not sent.
    pub(crate) fn cancel(&mut self, buf: &LentBuf) {
        if buf.slot != ONESHOT {
            self.pool.cancel(buf.slot, buf.use_no, buf.announce, buf.prev_use);
        }
        self.link.region().loan_pending().store(0, Ordering::Release);
    }

    /// Waits until a posted one-shot section has been taken by the receiver.
    fn oneshot_taken(&mut self, block: bool, deadline: Option<Instant>) -> Result<(), Fail> {
        let Some(until) = self.oneshot_until else { return Ok(()) };
        if self.req.consumed() >= until {
            self.oneshot_until = None;
            return Ok(());
        }
        if !block {
            return Err(Fail::Full);
        }
        self.wait_for(Bell::Space, deadline, |c| Ok((c.req.consumed() >= until).then_some(())))?;
        self.oneshot_until = None;
        Ok(())
    }

    /// Waits until nothing queued so far needs this process any more: until
    /// the receiver has taken (and so pulled what they carry) the records
    /// whose attachments live on here (`pinned_until`). At once where
    /// attachments need no sender, or none went.
    ///
    /// Posts still queued for a receiver that is gone are lost: that is
    /// `PeerGone` (a look at the peer only while some are queued).
    pub(crate) fn settled(&mut self, deadline: Option<Instant>) -> Result<(), Fail> {
        if self.pinned().is_err() {
            self.wait_for(Bell::Space, deadline, |c| Ok(c.pinned().ok()))?;
        }
        self.none_lost()
    }

    /// [`settled`](Self::settled) without waiting: `Full` while such a
    /// record is still queued.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn try_settled(&mut self) -> Result<(), Fail> {
        self.pinned()?;
        self.none_lost()
    }

    /// `Full` while a record whose attachments live here is still queued.
    fn pinned(&self) -> Result<(), Fail> {
        if self.req.consumed() >= self.pinned_until { Ok(()) } else { Err(Fail::Full) }
    }

    /// `PeerGone` when records are still queued for a receiver that is gone
    /// (they are lost); a look at the peer only while some are.
    fn none_lost(&self) -> Result<(), Fail> {
        if self.req.consumed() < self.req.position() && !self.link.alive() {
            return Err(Fail::PeerGone);
        }
        Ok(())
    }

    /// Queues a `CALL` or `POST`. Nothing reaches the receiver unless this
    /// returns `Ok` (or fails after queueing: then the connection is dropped).
    #[inline(always)]
    pub(crate) fn put(
        &mut self,
        kind: u32,
        tag: u64,
        body: Body<'_>,
        sections: &[&Section],
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(), Fail> {
        let result = self.put_inner(kind, tag, &body, sections, block, deadline);
        if let Body::Lent(l, _) = body {
            if result.is_err() {
                self.cancel(l);
            } else {
                self.link.region().loan_pending().store(0, Ordering::Release);
            }
        }
        result
    }

    /// Queues a loan as a `CALL` or `POST`, waiting for room per `block`
    /// and `deadline`. Unlike [`put`](Self::put), a loan that found no room
    /// (`Full`, `TimedOut`: nothing was queued then) stays lent, for the
    /// caller to send again or give back with [`cancel`](Self::cancel).
    pub(crate) fn put_lent(
        &mut self,
        kind: u32,
        tag: u64,
        buf: &LentBuf,
        len: usize,
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(), Fail> {
        match self.put_inner(kind, tag, &Body::Lent(buf, len), &[], block, deadline) {
            Ok(()) => {
                self.link.region().loan_pending().store(0, Ordering::Release);
                Ok(())
            }
            Err(f @ (Fail::Full | Fail::TimedOut)) => Err(f),
            Err(f) => {
                self.cancel(buf);
                Err(f)
            }
        }
    }

    // Inlined into `put`, its one caller: see `ServerConn::deliver`.
    #[inline(always)]
    fn put_inner(
        &mut self,
        kind: u32,
        tag: u64,
        body: &Body<'_>,
        sections: &[&Section],
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(), Fail> {
        let len = match body {
            Body::Bytes(d) => d.len(),
            Body::Lent(_, len) => *len,
        };
        if len as u64 > self.max_payload {
            return Err(Fail::TooLarge { max: self.max_payload });
        }
        // The common case, on a short path of its own: a payload that
        // travels inline, nothing attached, nothing to give back.
        if let Body::Bytes(d) = body
            && d.len() <= INLINE_MAX
            && sections.is_empty()
            && self.retiring.is_empty()
            && !self.pool.has_large()
        {
            self.room_for(record_size(d.len()), block, deadline)?;
            return self.push(kind, 0, len as u64, tag, &[d]);
        }
        // A loan in a pooled buffer the receiver already knows, likewise:
        // the send that follows a long filling runs with cold caches, where
        // every step skipped counts. (No pool trim either: `lend` has just
        // marked the pool busy.)
        if let Body::Lent(l, _) = body
            && l.slot != ONESHOT
            && !l.announce
            && sections.is_empty()
            && self.retiring.is_empty()
        {
            let bufref = BufRef { slot: l.slot, flags: BUF_LOAN, use_no: l.use_no }.encode();
            self.room_for(record_size(BufRef::LEN), block, deadline)?;
            return self.push(kind, F_BUF, len as u64, tag, &[&bufref]);
        }
        if sections.len() > MAX_SECTIONS {
            return Err(Fail::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_SECTIONS} sections per message"),
            )));
        }
        let inline_data = match body {
            Body::Bytes(d) if d.len() <= INLINE_MAX => Some(*d),
            _ => None,
        };
        // Room first, for the largest record this message can need (and the
        // RETIRE records a lend may cause), so that nothing is lent or
        // handed over for a message that then cannot be queued.
        let worst = match inline_data {
            Some(d) => {
                let aux = if sections.is_empty() { 0 } else { 8 + Link::aux_len(false, sections).next_multiple_of(8) };
                record_size(aux + d.len())
            }
            None => record_size(8 + Link::aux_len(true, sections).next_multiple_of(8) + BufRef::LEN),
        };
        if worst > record_size(max_inline(REQ_CAP)) {
            return Err(Fail::Io(io::Error::new(io::ErrorKind::InvalidInput, "message attachments too large")));
        }
        self.room_for(worst, block, deadline)?;
        // Where the payload goes: inline, a pooled buffer, or a one-shot section.
        let mut retired = Vec::new();
        let mut oneshot: Option<Section> = None;
        let mut lent: Option<Lent> = None;
        let bufref = match body {
            _ if inline_data.is_some() => None,
            Body::Bytes(d) => match self.lend_pooled(d.len(), block, deadline, &mut retired) {
                Err(e) => {
                    self.retiring.append(&mut retired);
                    return Err(e);
                }
                Ok(Some(l)) => {
                    self.reusing(l.slot, &mut retired);
                    let mut flags = if l.announce { BUF_NEW } else { 0 };
                    if d.len() >= STREAM_MIN {
                        // Copied after the record is queued, chunk by chunk,
                        // while the receiver copies the chunks already there.
                        flags |= BUF_STREAM;
                        self.link.region().streamed().store(stream_word(l.use_no, 0), Ordering::Release);
                    } else {
                        // SAFETY:
                        // - `l.ptr` is the start of our own writable mapping
                        //   of at least `d.len()` bytes (the pool picked a
                        //   buffer that large), free for this use (the peer
                        //   released its last);
                        // - `d` is the caller's memory, distinct from the mapping.
                        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), l.ptr, d.len()) };
                    }
                    let r = BufRef { slot: l.slot, flags, use_no: l.use_no };
                    lent = Some(l);
                    Some(r)
                }
                Ok(None) => {
                    if kind == POST {
                        self.oneshot_taken(block, deadline)?;
                    }
                    oneshot = Some(Link::oneshot(d).map_err(Fail::Io)?);
                    Some(BufRef { slot: ONESHOT, flags: BUF_ONESHOT | BUF_NEW, use_no: 0 })
                }
            },
            Body::Lent(l, _) => {
                if l.slot == ONESHOT && kind == POST {
                    self.oneshot_taken(block, deadline)?;
                }
                let mut flags = BUF_LOAN;
                if l.announce {
                    flags |= BUF_NEW;
                }
                if l.slot == ONESHOT {
                    flags |= BUF_ONESHOT;
                }
                Some(BufRef { slot: l.slot, flags, use_no: l.use_no })
            }
        };
        // Attachments wait for room on the socket as the record would in
        // the ring: not at all unless `block`, else by `deadline`.
        let until = if block { deadline } else { Some(Instant::now()) };
        let queued = self.queue(kind, tag, len, body, bufref, oneshot.as_ref(), retired, sections, (block, until));
        if queued.is_err()
            && let Some(l) = &lent
        {
            self.pool.cancel(l.slot, l.use_no, l.announce, l.prev_use);
        }
        queued?;
        if let (Some(l), Some(b), Body::Bytes(d)) = (&lent, bufref, body)
            && b.flags & BUF_STREAM != 0
        {
            let word = self.link.region().streamed();
            let mut done = 0;
            while done < d.len() {
                let n = STREAM_CHUNK.min(d.len() - done);
                // SAFETY: as for the plain copy above: our own writable
                // mapping of at least `d.len()` bytes, free for this use; the
                // receiver only reads below the published progress.
                unsafe { std::ptr::copy_nonoverlapping(d.as_ptr().add(done), l.ptr.add(done), n) };
                done += n;
                word.store(stream_word(l.use_no, done), Ordering::Release);
            }
        }
        if kind == POST && bufref.is_some_and(|b| b.slot == ONESHOT) {
            self.oneshot_until = Some(self.req.position());
        }
        Ok(())
    }

    /// Writes the RETIRE records and the message's record (room is there).
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        kind: u32,
        tag: u64,
        len: usize,
        body: &Body<'_>,
        bufref: Option<BufRef>,
        oneshot: Option<&Section>,
        retired: Vec<u32>,
        sections: &[&Section],
        (block, until): (bool, Option<Instant>),
    ) -> Result<(), Fail> {
        let has_new = bufref.is_some_and(|b| b.flags & BUF_NEW != 0);
        let attach = has_new || !sections.is_empty();
        let payload_len = match (&bufref, body) {
            (None, Body::Bytes(d)) => d.len(),
            _ => 0,
        };
        let inline = if attach { 8 + Link::aux_len(has_new, sections).next_multiple_of(8) } else { 0 }
            + if bufref.is_some() { BufRef::LEN } else { payload_len };
        self.retire(retired, record_size(inline))?;
        let new_buffer: Option<&Section> = match (&bufref, body) {
            (Some(_), _) if !has_new => None,
            (Some(_), Body::Lent(l, _)) => match &l.oneshot {
                Some((s, _)) => Some(s),
                None => self.pool.handle(l.slot),
            },
            (Some(b), Body::Bytes(_)) if b.slot == ONESHOT => oneshot,
            (Some(b), Body::Bytes(_)) => self.pool.handle(b.slot),
            (None, _) => None,
        };
        let aux = if attach {
            let bytes = self.link.send_aux(new_buffer, sections, until).map_err(|e| match e.kind() {
                // The receiver hung up (Linux: attachments go on the
                // connection's socket).
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected => {
                    Fail::PeerGone
                }
                // No room on the socket by then (a receiver that does not
                // read it), nothing sent: as a full ring.
                io::ErrorKind::TimedOut if !block => Fail::Full,
                io::ErrorKind::TimedOut => Fail::TimedOut,
                _ => Fail::Io(e),
            })?;
            Some((bytes, sections.len()))
        } else {
            None
        };
        let encoded = bufref.map(|b| b.encode());
        let payload: &[u8] = match (&bufref, body) {
            (None, Body::Bytes(d)) => d,
            _ => &[],
        };
        let (mut head, pad) = ([0u8; 8], [0u8; 8]);
        let ps = parts(&mut head, aux.as_ref(), &pad, encoded.as_ref(), payload);
        self.push(kind, ps.flags, len as u64, tag, ps.as_slice())?;
        if attach && Link::ATTACHMENTS_NEED_SENDER {
            self.pinned_until = self.req.position();
        }
        Ok(())
    }

    /// Waits for the reply to the outstanding call.
    #[inline(always)]
    pub(crate) fn reply(&mut self, deadline: Option<Instant>) -> Result<Reply, Fail> {
        self.wait_for(Bell::Reply, deadline, |c| c.take_reply())
    }

    /// The reply to the outstanding call, if it is there (never waits).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn try_reply(&mut self) -> Result<Option<Reply>, Fail> {
        self.take_reply()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Raises (Linux: `PARKED_ASYNC`; Windows: `PARKED`) or lowers (0) this
    /// side's parked flag for `bell` for a wait outside the library (an
    /// async runtime watching the connection's readiness handle, or its
    /// wake event). Raising is a full barrier: a record published after it
    /// makes the receiver signal, one published before it is seen by the
    /// caller's next look.
    #[cfg(feature = "tokio")]
    pub(crate) fn set_parked(&self, bell: Bell, value: u32) {
        let ring = match bell {
            Bell::Reply => *self.rep.ring(),
            _ => *self.req.ring(),
        };
        let flag = if bell == Bell::Reply { ring.cons_parked() } else { ring.prod_parked() };
        flag.store(value, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    #[inline(always)]
    fn take_reply(&mut self) -> Result<Option<Reply>, Fail> {
        let mut retired = 0;
        loop {
            let Some(rec) = self.rep.peek()? else { return Ok(None) };
            if rec.kind == REPLY && user_flags(&rec) == 0 && rec.len <= self.max_reply {
                // An inline reply (the common case): what `parse` and
                // `payload_of` would find, without their general steps
                // (one above `max_reply` goes the general way, refused).
                check_inline(&rec, 0).map_err(Fail::Broken)?;
                let data = self.rep.read_vec(&rec, 0, rec.inline);
                self.rep.advance(&rec, false);
                return Ok(Some(Reply { code: rec.word as i64, data: Payload::from(data) }));
            }
            match rec.kind {
                RETIRE => {
                    if rec.word >= SLOTS as u64 {
                        return Err(Fail::Broken(format!("retired buffer slot {}", rec.word)));
                    }
                    retired += 1;
                    if retired > MAX_RETIRES {
                        return Err(Fail::Broken(format!("more than {MAX_RETIRES} buffers retired in a row")));
                    }
                    self.peer.retire(rec.word as u32);
                    self.rep.advance(&rec, false);
                    continue;
                }
                REFUSED => {
                    if rec.inline > MAX_REASON {
                        return Err(Fail::Broken("refusal reason too long".into()));
                    }
                    let mut text = vec![0u8; rec.inline];
                    self.rep.read(&rec, 0, &mut text);
                    self.rep.advance(&rec, false);
                    return Err(Fail::Refused(String::from_utf8_lossy(&text).into_owned()));
                }
                TOO_LARGE => {
                    self.rep.advance(&rec, false);
                    return Err(Fail::TooLarge { max: rec.word });
                }
                REPLY => {}
                other => return Err(Fail::Broken(format!("unknown reply kind {other}"))),
            }
            let p = parse(&self.rep, &rec).map_err(Fail::Broken)?;
            let data = self.payload_of(&rec, &p)?;
            self.rep.advance(&rec, false);
            return Ok(Some(Reply { code: rec.word as i64, data }));
        }
    }

    fn payload_of(&mut self, rec: &Rec, p: &Parsed) -> Result<Payload, Fail> {
        if rec.len > self.max_reply {
            return Err(Fail::Broken(format!(
                "a reply of {} bytes, above this sender's limit of {} (SenderOptions::max_reply)",
                rec.len, self.max_reply
            )));
        }
        let (new_buf, _) = match &p.aux {
            Some((bytes, n)) => {
                let buffer = p.buf.is_some_and(|b| b.flags & BUF_NEW != 0);
                self.link.recv_aux(bytes, buffer, *n).map_err(|e| Fail::Broken(e.to_string()))?
            }
            None => (None, Vec::new()),
        };
        let Some(b) = p.buf else {
            return Ok(Payload::from(self.rep.read_vec(rec, p.inline_payload.0, p.inline_payload.1)));
        };
        let len = usize::try_from(rec.len).map_err(|_| Fail::Broken("reply larger than memory".into()))?;
        let loaned = b.flags & BUF_LOAN != 0;
        if b.flags & BUF_ONESHOT != 0 {
            let section = new_buf.ok_or_else(|| Fail::Broken("one-shot reply without its section".into()))?;
            if loaned {
                return Ok(Payload::borrowed(oneshot_loan(&section, len).map_err(Fail::Broken)?));
            }
            return oneshot_payload(&section, len).map_err(Fail::Broken);
        }
        if b.flags & BUF_NEW != 0 {
            self.peer
                .insert(b.slot, new_buf.ok_or_else(|| Fail::Broken("new reply buffer without its handle".into()))?)
                .map_err(Fail::Broken)?;
        }
        let view = self.peer.view(b.slot, rec.len).map_err(Fail::Broken)?;
        if loaned {
            let word = self.link.region().release_word(Side::Receiver, b.slot as usize);
            let release = Release::ToReceiver { word, use_no: b.use_no, made: Made::here() };
            return Ok(Payload::borrowed(crate::loan::LoanView::new(Some(view), len, Some(release))));
        }
        let mut out = Vec::new();
        if len > 0 {
            copy_out(&view, len, &mut out).map_err(Fail::Broken)?;
        }
        self.link.region().released(Side::Receiver, b.slot as usize).store(b.use_no, Ordering::Release);
        Ok(Payload::from(out))
    }
}

/// A loan in a one-shot section, read in place (nothing to release: the
/// section goes with the view).
fn oneshot_loan(section: &Section, len: usize) -> Result<crate::loan::LoanView, String> {
    let view =
        if len == 0 { None } else { Some(Arc::new(section.map(0, len).map_err(|e| format!("mapping a loan: {e}"))?)) };
    Ok(crate::loan::LoanView::new(view, len, None))
}

/// The payload of a one-shot section: read in place if the kernel keeps it
/// from changing, else copied.
fn oneshot_payload(section: &Section, len: usize) -> Result<Payload, String> {
    if len == 0 {
        return Ok(Payload::default());
    }
    if (section.len() as usize) < len {
        return Err("one-shot payload section too small".into());
    }
    let view = section.map(0, len).map_err(|e| e.to_string())?;
    if Link::frozen(section) {
        // SAFETY: `Link::frozen` checked that no process can write the
        // section's memory any more (Linux: F_SEAL_WRITE on the memfd).
        // Windows cannot seal a section (`frozen` is always false there).
        #[cfg(target_os = "linux")]
        return Ok(unsafe { Payload::frozen(view) });
    }
    let mut out = Vec::new();
    copy_out(&view, len, &mut out)?;
    Ok(Payload::from(out))
}

// ---------------------------------------------------------------- receiver

#[derive(Debug)]
struct ServerState {
    req: Consumer,
    rep: Producer,
    peer: PeerBuffers,
    pool: Pool,
    /// A payload buffer kept between messages (no page faults per message).
    spare: Vec<u8>,
    /// A streamed payload whose sender paused: its copy goes on when the
    /// connection is next looked at. The connection's later messages wait.
    stream: Option<Stream>,
}

/// A streamed copy in progress (see [`ServerConn::take`]).
#[derive(Debug)]
struct Stream {
    rec: Rec,
    sections: Vec<Section>,
    view: Arc<View>,
    slot: u32,
    use_no: u64,
    len: usize,
    /// The private copy: its first `done` bytes are written (its length
    /// stays 0 until all are).
    out: Vec<u8>,
    done: usize,
    /// When the sender last made real progress: a chunk, or the end.
    last_progress: Instant,
    /// `done` as it was then.
    progress_mark: usize,
    /// When the copy last moved at all.
    moved: Instant,
}

/// The receiving side of a connection.
#[derive(Debug)]
pub(crate) struct ServerConn {
    link: Link,
    pub(crate) peer: Peer,
    pub(crate) wait: Wait,
    max_payload: u64,
    state: Mutex<ServerState>,
    /// A `CALL` taken and not yet answered: the connection's next message
    /// waits (order per sender).
    pub(crate) busy: AtomicBool,
    /// A streamed copy is put aside (`ServerState::stream`): the sender's
    /// progress wakes nobody, so the worker must look again, not sleep.
    pub(crate) streaming: AtomicBool,
    /// ... and it has not moved for [`STREAM_STALE`].
    pub(crate) stalled: AtomicBool,
    /// The sender is gone or broke the protocol, or the mailbox closed.
    pub(crate) dead: AtomicBool,
    /// The mailbox closed while a call was in progress: the connection
    /// ends once it is answered (see [`hang_up_after_call`](Self::hang_up_after_call)).
    closing: AtomicBool,
    /// The number of the loan the sender announced last as this side first
    /// saw it, and when (see [`loan_fresh`](Self::loan_fresh)).
    loan_seen: Mutex<Option<(u32, Instant)>>,
    /// The request ring and the consumer's position in it, for a look
    /// without taking the lock.
    requests: RingPtr,
    next: AtomicU64,
}

/// Why a reply's attachments could not go: an honest sender reads its
/// socket before it takes each reply, so there is always room for the one
/// reply it waits for; no room means a sender that does not read it, and
/// the handler thread does not wait for it.
fn reply_aux_failed(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut => "the sender does not read its socket (no room for a reply's attachments)".into(),
        _ => e.to_string(),
    }
}

impl ServerConn {
    pub(crate) fn new(link: Link, peer: Peer, wait: Wait, max_payload: u64) -> ServerConn {
        let (req, rep) = (Consumer::new(link.region().requests()), Producer::new(link.region().replies()));
        let requests = link.region().requests();
        ServerConn {
            requests,
            link,
            peer,
            wait,
            max_payload,
            state: Mutex::new(ServerState {
                req,
                rep,
                peer: PeerBuffers::new(max_payload),
                pool: Pool::new(Side::Receiver),
                spare: Vec::new(),
                stream: None,
            }),
            busy: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            loan_seen: Mutex::new(None),
            next: AtomicU64::new(0),
        }
    }

    /// Whether something may be waiting in the request ring (a record's
    /// stamp, or garbage, at the consumer's position): a cheap look before
    /// [`take`](Self::take).
    pub(crate) fn maybe_ready(&self) -> bool {
        self.requests.has_stamp(self.next.load(Ordering::Relaxed))
    }

    /// Starts fetching the next record's further lines (after
    /// [`maybe_ready`](Self::maybe_ready) said it is there).
    pub(crate) fn prefetch(&self) {
        self.requests.prefetch_record(self.next.load(Ordering::Relaxed));
    }

    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Ends the connection from this side: the sender sees the receiver
    /// gone, and a reply given afterwards fails as `SenderGone` instead of
    /// going into a ring nobody reads.
    pub(crate) fn hang_up(&self) {
        self.dead.store(true, Ordering::Release);
        self.link.shutdown();
    }

    /// Ends the connection as its mailbox closes: at once if no call is in
    /// progress, else once that call is answered (or refused), so that the
    /// sender waiting for it gets its reply.
    pub(crate) fn hang_up_after_call(&self) {
        // Under the state's lock, as `finish` clears `busy` and reads
        // `closing`: whichever of the two comes second sees the other's
        // flag, so exactly one of them hangs up.
        let busy = {
            let _st = self.state();
            self.closing.store(true, Ordering::Relaxed);
            self.busy.load(Ordering::Relaxed)
        };
        if !busy {
            self.hang_up();
        }
    }

    fn state(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the sender has announced a loan it is about to send.
    pub(crate) fn loan_pending(&self) -> bool {
        self.link.region().loan_pending().load(Ordering::Relaxed) != 0
    }

    /// Whether the sender has announced a loan it is about to send, and
    /// this side first saw that loan's announcement less than `within`
    /// before `now`: worth polling for. (Each loan has a number of its own,
    /// so a loan held for long stops being polled for after `within`, while
    /// the next loan of the same sender is polled for afresh.)
    pub(crate) fn loan_fresh(&self, now: Instant, within: Duration) -> bool {
        let n = self.link.region().loan_pending().load(Ordering::Relaxed);
        if n == 0 {
            return false;
        }
        let mut seen = self.loan_seen.lock().unwrap_or_else(|e| e.into_inner());
        match *seen {
            Some((m, since)) if m == n => now.saturating_duration_since(since) < within,
            _ => {
                *seen = Some((n, now));
                true
            }
        }
    }

    /// The request ring, for the handler thread's parked flag.
    pub(crate) fn requests(&self) -> RingPtr {
        self.requests
    }

    /// The next message, if one is complete. `Err` means the sender broke
    /// the protocol (the reason is logged and the connection dropped).
    pub(crate) fn take(self: &Arc<Self>) -> Result<Option<Message>, String> {
        let mut st = self.state();
        if let Some(stream) = st.stream.take() {
            return self.stream_on(&mut st, stream);
        }
        let mut retired = 0;
        loop {
            let peeked = st.req.peek();
            // Padding moves the position without a record: keep the lock-free
            // look (`maybe_ready`) in step.
            self.next.store(st.req.position(), Ordering::Relaxed);
            let Some(rec) = peeked.map_err(|c| c.to_string())? else { return Ok(None) };
            match rec.kind {
                RETIRE => {
                    let slot = rec.word;
                    if slot >= SLOTS as u64 {
                        return Err(format!("retired buffer slot {slot}"));
                    }
                    retired += 1;
                    if retired > MAX_RETIRES {
                        return Err(format!("more than {MAX_RETIRES} buffers retired in a row"));
                    }
                    st.peer.retire(slot as u32);
                    self.skip(&mut st, &rec);
                    continue;
                }
                CALL | POST => {}
                other => return Err(format!("unknown request kind {other}")),
            }
            if rec.len > self.max_payload {
                return Err(format!("a payload of {} bytes above the mailbox's limit", rec.len));
            }
            if user_flags(&rec) == 0 {
                // An inline payload and nothing attached (the common case):
                // what `parse` would find, without its general steps.
                check_inline(&rec, 0)?;
                let payload = Payload::from(st.req.read_vec(&rec, 0, rec.inline));
                return Ok(Some(self.deliver(&mut st, &rec, payload, Vec::new())));
            }
            let p = parse(&st.req, &rec)?;
            let (new_buf, sections) = match &p.aux {
                Some((bytes, n)) => {
                    let buffer = p.buf.is_some_and(|b| b.flags & BUF_NEW != 0);
                    match self.link.recv_aux(bytes, buffer, *n) {
                        Ok(pulled) => pulled,
                        // The sender has exited with this message's
                        // attachments still in it (Windows pulls them out of
                        // its process): this message is lost, not the ones
                        // behind it.
                        Err(e) if Link::ATTACHMENTS_NEED_SENDER && self.dead.load(Ordering::Acquire) => {
                            log::warn!("a message of exited pid {} lost its attachments: {e}", self.peer.pid);
                            // A new buffer that never came: the slot's
                            // earlier one must not stand in for it.
                            if let Some(b) = p.buf.filter(|_| buffer) {
                                st.peer.retire(b.slot);
                            }
                            self.skip(&mut st, &rec);
                            continue;
                        }
                        Err(e) => return Err(format!("attachment: {e}")),
                    }
                }
                None => (None, Vec::new()),
            };
            let len = usize::try_from(rec.len).map_err(|_| "payload larger than memory".to_string())?;
            let payload = match p.buf {
                None => Payload::from(st.req.read_vec(&rec, p.inline_payload.0, len)),
                Some(b) if b.flags & BUF_ONESHOT != 0 => {
                    let section = new_buf.ok_or("one-shot payload without its section")?;
                    if b.flags & BUF_LOAN != 0 {
                        Payload::borrowed(oneshot_loan(&section, len)?)
                    } else {
                        oneshot_payload(&section, len)?
                    }
                }
                Some(b) => {
                    if b.flags & BUF_NEW != 0 {
                        st.peer.insert(b.slot, new_buf.ok_or("new buffer without its handle")?)?;
                    }
                    let view = match st.peer.view(b.slot, rec.len) {
                        Ok(view) => view,
                        // A buffer whose handle an exited sender could no
                        // longer hand over (above): skipped likewise.
                        Err(e) if Link::ATTACHMENTS_NEED_SENDER && self.dead.load(Ordering::Acquire) => {
                            log::warn!("a message of exited pid {} lost its buffer: {e}", self.peer.pid);
                            self.skip(&mut st, &rec);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if b.flags & BUF_LOAN != 0 {
                        let release = Release::ToSender {
                            conn: self.clone(),
                            slot: b.slot,
                            use_no: b.use_no,
                            made: Made::here(),
                        };
                        Payload::borrowed(crate::loan::LoanView::new(Some(view), len, Some(release)))
                    } else if b.flags & BUF_STREAM != 0 {
                        if len > view.len() {
                            return Err("streamed payload larger than its buffer".into());
                        }
                        let mut out = std::mem::take(&mut st.spare);
                        out.clear();
                        reserve(&mut out, len)?;
                        let (slot, use_no, last_progress) = (b.slot, b.use_no, Instant::now());
                        let stream = Stream {
                            rec,
                            sections,
                            view,
                            slot,
                            use_no,
                            len,
                            out,
                            done: 0,
                            last_progress,
                            progress_mark: 0,
                            moved: last_progress,
                        };
                        return self.stream_on(&mut st, stream);
                    } else {
                        let mut v = std::mem::take(&mut st.spare);
                        if len > 0 {
                            copy_out(&view, len, &mut v)?;
                        } else {
                            v.clear();
                        }
                        self.release(b.slot, b.use_no);
                        Payload::from(v)
                    }
                }
            };
            return Ok(Some(self.deliver(&mut st, &rec, payload, sections)));
        }
    }

    /// Takes the record off the ring (its message, if any, is made by the
    /// caller).
    #[inline(always)]
    fn skip(&self, st: &mut ServerState, rec: &Rec) {
        if st.req.advance(rec, true) {
            self.link.wake(Bell::Space);
        }
        self.next.store(st.req.position(), Ordering::Relaxed);
    }

    /// Takes the record off the ring and makes its message.
    // Inlined, like the steps around it on the way of a small message: a
    // result written field by field and then copied whole out of a callee's
    // frame stalls the load on store forwarding (a few ns each time).
    #[inline(always)]
    fn deliver(self: &Arc<Self>, st: &mut ServerState, rec: &Rec, payload: Payload, sections: Vec<Section>) -> Message {
        self.skip(st, rec);
        let call = rec.kind == CALL;
        if call {
            self.busy.store(true, Ordering::Release);
        }
        // Made in one go where it is returned (a message moves by value
        // through every layer up to the handler).
        Message::from_ring(rec.word, payload, sections, self.peer, call, self.clone())
    }

    /// Goes on with a streamed copy: its message once complete, else
    /// `None` with the copy put aside for the next look.
    fn stream_on(self: &Arc<Self>, st: &mut ServerState, mut stream: Stream) -> Result<Option<Message>, String> {
        let done = self.copy_streamed(&mut stream);
        let aside = matches!(done, Ok(false));
        self.stalled.store(aside && stream.moved.elapsed() > STREAM_STALE, Ordering::Release);
        self.streaming.store(aside, Ordering::Release);
        if !done? {
            st.stream = Some(stream);
            return Ok(None);
        }
        let Stream { rec, sections, slot, use_no, mut out, len, .. } = stream;
        // SAFETY: `copy_streamed` returned true: the first `len` bytes of
        // `out`'s reserved capacity are written.
        unsafe { out.set_len(len) };
        self.release(slot, use_no);
        Ok(Some(self.deliver(st, &rec, Payload::from(out), sections)))
    }

    /// Copies a payload the sender is still writing, as far as its
    /// progress word says: `true` once all its bytes are there, `false` when
    /// the sender made no progress for [`STREAM_PATIENCE`] or the pass took
    /// [`STREAM_SLICE`] (the copy is put aside, so other senders are served
    /// meanwhile). A sender that makes no progress (stopped, dead, hostile)
    /// for [`STREAM_STALL`] breaks the protocol.
    fn copy_streamed(&self, s: &mut Stream) -> Result<bool, String> {
        let word = self.link.region().streamed();
        let waiting_since = Instant::now();
        // A stalled copy gets one look, not another spell of waiting: its
        // sender is stopped (or long descheduled).
        let stale = s.moved.elapsed() > STREAM_STALE;
        let mut spins = 0u32;
        while s.done < s.len {
            let w = word.load(Ordering::Acquire);
            // Progress of a later message means this one is complete (the
            // sender finishes one copy before it starts the next).
            let ready = if w >> STREAM_SHIFT == s.use_no & STREAM_ID_MASK {
                usize::try_from(w & STREAM_DONE_MASK).unwrap_or(usize::MAX).min(s.len)
            } else {
                s.len
            };
            if ready > s.done {
                // SAFETY:
                // - `done..ready` lies inside the view (`ready <= len <=
                //   view.len()`, checked when the copy began), mapped while
                //   `view` lives;
                // - the destination is `out`'s reserved spare capacity (at
                //   least `len` bytes), private memory;
                // - the sender has published these bytes (Release/Acquire on
                //   the progress word) and no longer writes them;
                // - no reference to the shared bytes is formed.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        s.view.as_ptr().add(s.done),
                        s.out.as_mut_ptr().add(s.done),
                        ready - s.done,
                    )
                };
                s.done = ready;
                s.moved = Instant::now();
                // Only a whole chunk (an honest sender publishes nothing
                // smaller, but the end) renews its time: one that trickles
                // a few bytes at a time counts as stopped.
                if s.done - s.progress_mark >= STREAM_CHUNK || s.done == s.len {
                    s.last_progress = Instant::now();
                    s.progress_mark = s.done;
                }
                if s.done < s.len && waiting_since.elapsed() > STREAM_SLICE {
                    return Ok(false);
                }
                continue;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(64) {
                if self.dead.load(Ordering::Acquire) {
                    return Err("the sender died while writing a payload".into());
                }
                if s.last_progress.elapsed() > STREAM_STALL {
                    return Err("the sender stopped writing a payload".into());
                }
                if stale && s.moved < waiting_since {
                    return Ok(false);
                }
                if s.moved.max(waiting_since).elapsed() > STREAM_PATIENCE {
                    // Let the sender in, should it share this CPU.
                    std::thread::yield_now();
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Gives a payload buffer back for the next message: kept if it is
    /// larger than the spare and no larger than a pooled buffer (the spare
    /// only ever receives pooled and streamed payloads), and only if the
    /// connection's state is free now. (A request answered on another
    /// thread must not wait while the worker copies the next message out
    /// under that lock; the buffer is then simply freed.)
    pub(crate) fn recycle(&self, v: Vec<u8>) {
        if v.capacity() <= INLINE_MAX || v.capacity() > MAX_BUF {
            return;
        }
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if v.capacity() > st.spare.capacity() {
            st.spare = v;
        }
    }

    /// Marks a use of a sender buffer as done, and wakes the sender if it
    /// waits for a buffer (its pool exhausted). The full barrier of the
    /// exchange pairs with the sender's between raising its parked flag
    /// and looking at the buffers once more, so one of the two sees the
    /// other, whatever the caller does next.
    fn release(&self, slot: u32, use_no: u64) {
        self.link.region().released(Side::Sender, slot as usize).swap(use_no, Ordering::SeqCst);
        if self.requests.prod_parked().load(Ordering::SeqCst) != 0 {
            self.link.wake(Bell::Space);
        }
    }

    /// Queues a reply record; `Err` if the sender does not read its replies.
    fn put_reply(&self, st: &mut ServerState, kind: u32, word: u64, data: &[u8]) -> Result<(), String> {
        if data.len() <= INLINE_MAX || kind != REPLY {
            // Inline, nothing attached (the common case, on a short path).
            return self.push_reply(st, kind, 0, data.len() as u64, word, &[data]);
        }
        // A large reply goes in a pooled buffer. One reply per connection is
        // in flight at a time, so an exhausted pool (a sender not releasing
        // its replies) falls back to a one-shot section without piling them
        // up.
        let mut retired = Vec::new();
        let mut oneshot = None;
        let bufref = match st.pool.lend(self.link.region(), data.len(), &mut retired).map_err(|e| e.to_string())? {
            Lend::Buffer(lent) => {
                // SAFETY: as in `Client::put`: our own writable mapping of at
                // least `data.len()` bytes, free for this use.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), lent.ptr, data.len()) };
                BufRef { slot: lent.slot, flags: if lent.announce { BUF_NEW } else { 0 }, use_no: lent.use_no }
            }
            Lend::TooLarge | Lend::Exhausted => {
                oneshot = Some(Link::oneshot(data).map_err(|e| e.to_string())?);
                BufRef { slot: ONESHOT, flags: BUF_ONESHOT | BUF_NEW, use_no: 0 }
            }
        };
        for slot in retired {
            self.push_reply(st, RETIRE, 0, 0, u64::from(slot), &[])?;
        }
        let new_buffer = match bufref {
            b if b.flags & BUF_NEW == 0 => None,
            b if b.slot == ONESHOT => oneshot.as_ref(),
            b => st.pool.handle(b.slot),
        };
        let aux = match new_buffer {
            Some(s) => Some((self.link.send_aux(Some(s), &[], Some(Instant::now())).map_err(reply_aux_failed)?, 0)),
            None => None,
        };
        let encoded = bufref.encode();
        let (mut head, pad) = ([0u8; 8], [0u8; 8]);
        let ps = parts(&mut head, aux.as_ref(), &pad, Some(&encoded), &[]);
        self.push_reply(st, kind, ps.flags, data.len() as u64, word, ps.as_slice())
    }

    fn push_reply(
        &self,
        st: &mut ServerState,
        kind: u32,
        flags: u32,
        len: u64,
        word: u64,
        ps: &[&[u8]],
    ) -> Result<(), String> {
        let inline: usize = ps.iter().map(|p| p.len()).sum();
        if inline > max_inline(REP_CAP) {
            return Err("reply record too large".into());
        }
        match st.rep.push(kind, pack_flags(flags, inline), len, word, ps).map_err(|c| c.to_string())? {
            Some(true) => self.link.wake(Bell::Reply),
            Some(false) => {}
            None => return Err("the sender does not read its replies".into()),
        }
        Ok(())
    }

    fn answer(&self, kind: u32, word: u64, data: &[u8]) -> Result<(), String> {
        self.finish(|st| self.put_reply(st, kind, word, data))
    }

    /// Queues the answer to the outstanding call with `put`, then lets the
    /// connection's next message be taken; a failure breaks the connection.
    fn finish(&self, put: impl FnOnce(&mut ServerState) -> Result<(), String>) -> Result<(), String> {
        let (result, closing) = {
            let mut st = self.state();
            let result = put(&mut st);
            self.busy.store(false, Ordering::Release);
            // (Read under the lock: see `hang_up_after_call`.)
            (result, self.closing.load(Ordering::Relaxed))
        };
        if result.is_err() {
            self.dead.store(true, Ordering::Release);
        }
        if closing {
            self.hang_up();
        }
        result
    }

    /// Answers the outstanding call.
    pub(crate) fn reply(self: &Arc<Self>, code: i64, data: &Payload) -> Result<(), String> {
        if let Some(loan) = data.reply_loan()
            && loan.is_of(self)
        {
            return self.finish(|st| self.put_loaned_reply(st, code as u64, loan));
        }
        self.answer(REPLY, code as u64, data)
    }

    /// A buffer of this connection's pool for a loaned reply.
    pub(crate) fn lend_reply(&self, len: usize) -> Result<LentBuf, String> {
        let mut st = self.state();
        let mut retired = Vec::new();
        let lent = match st.pool.lend(self.link.region(), len, &mut retired).map_err(|e| e.to_string())? {
            Lend::Buffer(l) => Some(l),
            Lend::TooLarge | Lend::Exhausted => None,
        };
        // Written by the handler's code outside the lock, for as long as it
        // likes: held, so that nothing the sender writes frees it meanwhile.
        if let Some(l) = &lent {
            st.pool.hold(l.slot);
        }
        let give_back = |st: &mut ServerState| {
            if let Some(l) = &lent {
                st.pool.cancel(l.slot, l.use_no, l.announce, l.prev_use);
            }
        };
        // The sender takes RETIRE records with the next reply.
        for slot in retired {
            if let Err(e) = self.push_reply(&mut st, RETIRE, 0, 0, u64::from(slot), &[]) {
                give_back(&mut st);
                return Err(e);
            }
        }
        let made = LentBuf::new(lent, len).map_err(|e| e.to_string());
        if made.is_err() {
            give_back(&mut st);
        }
        made
    }

    /// Gives back a reply loan that was not sent.
    pub(crate) fn cancel_reply(&self, buf: &LentBuf) {
        if buf.slot != ONESHOT {
            self.state().pool.cancel(buf.slot, buf.use_no, buf.announce, buf.prev_use);
        }
    }

    fn put_loaned_reply(&self, st: &mut ServerState, code: u64, loan: &crate::loan::ReplyLoan) -> Result<(), String> {
        let buf = loan.buf();
        let mut flags = BUF_LOAN;
        if buf.announce {
            flags |= BUF_NEW;
        }
        if buf.slot == ONESHOT {
            flags |= BUF_ONESHOT;
        }
        let bufref = BufRef { slot: buf.slot, flags, use_no: buf.use_no };
        let new_buffer = if buf.announce {
            match &buf.oneshot {
                Some((s, _)) => Some(s),
                None => st.pool.handle(buf.slot),
            }
        } else {
            None
        };
        let aux = match new_buffer {
            Some(s) => Some((self.link.send_aux(Some(s), &[], Some(Instant::now())).map_err(reply_aux_failed)?, 0)),
            None => None,
        };
        loan.mark_sent();
        // Sent now (or the connection breaks): the sender's release frees it.
        if buf.slot != ONESHOT {
            st.pool.unhold(buf.slot);
        }
        let encoded = bufref.encode();
        let (mut head, pad) = ([0u8; 8], [0u8; 8]);
        let ps = parts(&mut head, aux.as_ref(), &pad, Some(&encoded), &[]);
        self.push_reply(st, REPLY, ps.flags, loan.len() as u64, code, ps.as_slice())
    }

    /// Refuses the outstanding call.
    pub(crate) fn refuse(&self, reason: &str) -> Result<(), String> {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.answer(REFUSED, 0, &reason.as_bytes()[..end])
    }

    /// Gives back memory after a quiet spell: unmaps the sender's buffers,
    /// drops the spare payload buffer and large reply buffers. Returns
    /// whether all is given back (not when the sender still holds a large
    /// reply buffer).
    pub(crate) fn trim(&self, now: Instant) -> bool {
        let mut st = self.state();
        st.peer.unmap_all();
        st.spare = Vec::new();
        let region = self.link.region();
        let gone = st.pool.trim(region, now);
        for slot in gone {
            if self.push_reply(&mut st, RETIRE, 0, 0, u64::from(slot), &[]).is_err() {
                break;
            }
        }
        // A large reply buffer the sender has not given back yet stays: the
        // caller tries again later.
        !st.pool.has_large()
    }
}

/// Releases a loaned buffer when the reader is done with it (not a copy
/// in a child made by `fork`: the parent still reads it, see
/// `crate::fork`).
#[derive(Debug)]
pub(crate) enum Release {
    /// A sender's buffer read by this receiver (a sender waiting for a
    /// buffer is woken).
    ToSender { conn: Arc<ServerConn>, slot: u32, use_no: u64, made: Made },
    /// A receiver's buffer (a loaned reply) read by this sender.
    ToReceiver { word: ReleaseWord, use_no: u64, made: Made },
}

impl Drop for Release {
    fn drop(&mut self) {
        match self {
            Release::ToSender { made, .. } | Release::ToReceiver { made, .. } if made.copied_by_fork() => {}
            Release::ToSender { conn, slot, use_no, .. } => conn.release(*slot, *use_no),
            Release::ToReceiver { word, use_no, .. } => word.store(*use_no),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Mailbox, Sender, SenderOptions};

    /// A sender that streams a large payload a few bytes at a time, just
    /// fast enough never to count as stopped, does not hold the handler
    /// thread: another sender's calls are answered meanwhile.
    #[test]
    fn a_trickling_stream_does_not_hold_the_handler() {
        let name = format!("copydata-unit-trickle-{}", std::process::id());
        let server = Mailbox::bind(&name).unwrap().serve(|m| Reply::code(m.tag() as i64));
        let valid = crate::name::Name::new(&name).unwrap();
        let mut c = crate::mailbox::connect_client(&valid, &SenderOptions::new(), None, None).unwrap();
        // A streamed call, as `put_inner` queues one, whose bytes then come
        // 64 at a time.
        let len = STREAM_MIN;
        let mut retired = Vec::new();
        let l = c.lend_pooled(len, true, None, &mut retired).unwrap().expect("a pooled buffer");
        let bufref = BufRef { slot: l.slot, flags: BUF_NEW | BUF_STREAM, use_no: l.use_no };
        c.link.region().streamed().store(stream_word(l.use_no, 0), Ordering::Release);
        c.queue(CALL, 1, len, &Body::Bytes(&[]), Some(bufref), None, retired, &[], (true, None)).unwrap();
        let other = std::thread::spawn(move || {
            let mut s = Sender::connect(&name).unwrap();
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let started = Instant::now();
                assert_eq!(s.send_timeout(2, b"x", Duration::from_secs(30)).unwrap().code, 2);
                slowest = slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            slowest
        });
        // About 3 MB/s: a chunk well within every `STREAM_STALL`, and never
        // a pause of `STREAM_PATIENCE`.
        let word = c.link.region().streamed();
        let mut done = 0;
        while !other.is_finished() && done + 64 < len {
            done += 64;
            word.store(stream_word(l.use_no, done), Ordering::Release);
            let step = Instant::now();
            while step.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            }
        }
        let slowest = other.join().unwrap();
        eprintln!("slowest call beside the trickle: {slowest:?}");
        word.store(stream_word(l.use_no, len), Ordering::Release);
        assert_eq!(c.reply(Some(Instant::now() + Duration::from_secs(30))).unwrap().code, 1);
        assert!(slowest < Duration::from_millis(300), "a call beside the trickle took {slowest:?}");
        drop(c);
        drop(server);
    }
}
