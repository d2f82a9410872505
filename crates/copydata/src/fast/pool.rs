//! Pools of large-payload buffers, one per direction of a connection.
//!
//! The side that writes a payload owns the buffer: it creates the section,
//! keeps the only writable mapping (on Linux the memfd is then sealed with
//! `F_SEAL_FUTURE_WRITE`, so the peer cannot map it writable), and hands a
//! read-only handle to the peer the first time the buffer is used (the
//! record says so). Buffers are reused, so a stream of large messages does
//! not fault in fresh pages for each. Each use has a number; the peer
//! stores that number in the region's release table when it is done, which
//! frees the buffer for its owner. The pool is bounded in count and bytes;
//! a payload larger than its largest buffer gets a one-shot section.
//!
//! A use that never reaches the peer (a loan dropped unsent, a post refused
//! for lack of room) is cancelled, which gives the buffer back at once.
//! When every buffer is out, a sender waits for one to come back rather than
//! allocate without bound.
//!
//! ```text
//! buffer reference (16 bytes, in the record):
//!   slot: u32, flags: u32 (NEW: the handle comes with this record; LOAN), use: u64
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::region::{Region, SLOTS, Side};
use crate::section::Section;
use crate::view::{View, ViewMut};

/// The handle to this buffer comes with the record.
pub(crate) const BUF_NEW: u32 = 1;
/// The payload is a loan: the receiver reads it in place.
pub(crate) const BUF_LOAN: u32 = 2;
/// A one-shot section, not in the pool (slot is `ONESHOT`).
pub(crate) const BUF_ONESHOT: u32 = 4;
/// The sender writes the payload after queueing the record, publishing its
/// progress in the region (copied payloads of 4 MiB and more).
pub(crate) const BUF_STREAM: u32 = 8;
pub(crate) const ONESHOT: u32 = u32::MAX;
const KNOWN: u32 = BUF_NEW | BUF_LOAN | BUF_ONESHOT | BUF_STREAM;

/// The smallest pooled buffer.
const MIN_BUF: usize = 64 << 10;
/// The largest pooled buffer: larger payloads use one-shot sections.
pub(crate) const MAX_BUF: usize = 256 << 20;
/// At most this many bytes pooled per direction and connection.
const MAX_POOL: usize = 512 << 20;
/// At most this many buffers pooled per direction (the rest of the slots
/// let a retired buffer's slot rest until its last use is released).
const MAX_BUFFERS: usize = 8;
/// Buffers above this size are given back after the pool has been idle
/// this long.
pub(crate) const TRIM_AFTER: Duration = Duration::from_millis(200);
const KEEP_WHEN_IDLE: usize = 1 << 20;

/// A buffer reference as carried in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufRef {
    pub(crate) slot: u32,
    pub(crate) flags: u32,
    pub(crate) use_no: u64,
}

impl BufRef {
    pub(crate) const LEN: usize = 16;

    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.slot.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..16].copy_from_slice(&self.use_no.to_ne_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<BufRef, String> {
        let b: &[u8; 16] = b.try_into().map_err(|_| "short buffer reference".to_string())?;
        let r = BufRef {
            slot: u32::from_ne_bytes(b[0..4].try_into().expect("4")),
            flags: u32::from_ne_bytes(b[4..8].try_into().expect("4")),
            use_no: u64::from_ne_bytes(b[8..16].try_into().expect("8")),
        };
        if r.flags & !KNOWN != 0 {
            return Err(format!("unknown buffer flags {:#x}", r.flags));
        }
        let oneshot = r.flags & BUF_ONESHOT != 0;
        if oneshot != (r.slot == ONESHOT) || (!oneshot && r.slot as usize >= SLOTS) {
            return Err(format!("buffer slot {} with flags {:#x}", r.slot, r.flags));
        }
        if oneshot && r.flags & BUF_NEW == 0 {
            return Err("a one-shot buffer without its handle".into());
        }
        Ok(r)
    }
}

#[derive(Debug)]
struct Buf {
    /// The read-only handle handed to the peer (keeps the memory alive).
    peer_handle: Section,
    view: ViewMut,
    cap: usize,
    /// The number of its last use, 0 if never used.
    last_use: u64,
    /// Whether the peer has been given the handle.
    announced: bool,
}

/// A buffer handed out for one message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lent {
    pub(crate) slot: u32,
    pub(crate) use_no: u64,
    /// Whether the peer lacks the handle: send [`Pool::handle`] with the record.
    pub(crate) announce: bool,
    pub(crate) ptr: *mut u8,
    /// The buffer's previous use, restored if this one is cancelled.
    pub(crate) prev_use: u64,
}

/// What [`Pool::lend`] found.
#[derive(Debug)]
pub(crate) enum Lend {
    Buffer(Lent),
    /// Larger than any pooled buffer: use a one-shot section.
    TooLarge,
    /// Every buffer is in use by the peer and the pool is at its limits:
    /// wait for one to come back ([`Pool::available`]).
    Exhausted,
}

/// The buffers a side owns (writes) on one connection.
#[derive(Debug)]
pub(crate) struct Pool {
    owner: Side,
    slots: Vec<Option<Buf>>,
    /// Bit `s` set: `slots[s]` holds a buffer. Every look at the pool goes
    /// through the few slots in use, not all [`SLOTS`] (each a line or two
    /// of memory, all of them cold after a pause such as filling a loan).
    used: u64,
    /// Bit `s` set: the buffer in `slots[s]` is lent to this process's own
    /// code (a reply loan being written), not yet sent. It is not free
    /// whatever the peer writes in the release table: a peer that forged
    /// its release must not make this side lend it twice, or unmap it
    /// (`trim`) under the code writing it.
    held: u64,
    uses: u64,
    last_activity: Instant,
}

const _: () = assert!(SLOTS <= 64, "a pool's slots in use are the bits of a u64");

/// The slots in `used` (its set bits), lowest first.
fn slots_in(used: u64) -> impl Iterator<Item = usize> {
    let mut left = used;
    std::iter::from_fn(move || {
        (left != 0).then(|| {
            let s = left.trailing_zeros() as usize;
            left &= left - 1;
            s
        })
    })
}

impl Pool {
    pub(crate) fn new(owner: Side) -> Pool {
        Pool {
            owner,
            slots: (0..SLOTS).map(|_| None).collect(),
            used: 0,
            held: 0,
            uses: 0,
            last_activity: Instant::now(),
        }
    }

    fn buffers(&self) -> impl Iterator<Item = (usize, &Buf)> {
        slots_in(self.used).filter_map(|s| self.slots[s].as_ref().map(|b| (s, b)))
    }

    fn fill(&mut self, slot: usize, buf: Buf) {
        self.slots[slot] = Some(buf);
        self.used |= 1 << slot;
    }

    fn empty(&mut self, slot: usize) {
        debug_assert!(self.held & (1 << slot) == 0, "a held buffer is never given back");
        self.slots[slot] = None;
        self.used &= !(1 << slot);
    }

    /// Marks the buffer of a use just lent as held by this process's own
    /// code until [`unhold`](Self::unhold): see `held`.
    pub(crate) fn hold(&mut self, slot: u32) {
        if (slot as usize) < SLOTS {
            self.held |= 1 << slot;
        }
    }

    /// Ends [`hold`](Self::hold): the use was sent (the peer's release
    /// frees it from now on) or cancelled.
    pub(crate) fn unhold(&mut self, slot: u32) {
        if (slot as usize) < SLOTS {
            self.held &= !(1 << slot);
        }
    }

    fn is_free(&self, region: &Region, slot: usize) -> bool {
        if self.held & (1 << slot) != 0 {
            return false;
        }
        match &self.slots[slot] {
            Some(b) => {
                b.last_use == 0
                    || region.released(self.owner, slot).load(std::sync::atomic::Ordering::Acquire) == b.last_use
            }
            None => false,
        }
    }

    /// Whether [`lend`](Self::lend) of `len` bytes would find a buffer now.
    pub(crate) fn available(&self, region: &Region, len: usize) -> bool {
        let want = len.max(MIN_BUF).next_power_of_two();
        let (mut busy, mut busy_bytes) = (0, 0);
        for (slot, b) in self.buffers() {
            if self.is_free(region, slot) {
                if b.cap >= want {
                    return true;
                }
            } else {
                busy += 1;
                busy_bytes += b.cap;
            }
        }
        busy < MAX_BUFFERS && busy_bytes + want <= MAX_POOL
    }

    /// A buffer of at least `len` bytes for one message. `retire` receives
    /// the slots of buffers given back, to tell the peer.
    pub(crate) fn lend(&mut self, region: &Region, len: usize, retire: &mut Vec<u32>) -> std::io::Result<Lend> {
        self.last_activity = Instant::now();
        if len > MAX_BUF {
            return Ok(Lend::TooLarge);
        }
        let want = len.max(MIN_BUF).next_power_of_two();
        // A free buffer the peer has never been handed (its first use was
        // cancelled) is not announced at a size larger than this payload
        // needs: the peer refuses a new buffer larger than its own limit
        // needs, and that limit (the sender's `max_reply`, for replies) is
        // not known here. Such a buffer is left for payloads of its size,
        // and given up only to make room.
        let oversized = |b: &Buf| !b.announced && b.cap > want;
        // The smallest free buffer that fits.
        let mut best: Option<(usize, usize)> = None;
        for (slot, b) in self.buffers() {
            if b.cap >= want && !oversized(b) && self.is_free(region, slot) && best.is_none_or(|(_, cap)| cap > b.cap) {
                best = Some((slot, b.cap));
            }
        }
        let slot = match best {
            Some((s, _)) => s,
            None => {
                // Make room: give back free buffers that are too small, then
                // check the limits.
                let live = |p: &Pool| p.used.count_ones() as usize;
                let bytes = |p: &Pool| p.buffers().map(|(_, b)| b.cap).sum::<usize>();
                for s in slots_in(self.used) {
                    if (live(self) >= MAX_BUFFERS || bytes(self) + want > MAX_POOL)
                        && self.slots[s].as_ref().is_some_and(|b| b.cap < want || oversized(b))
                        && self.is_free(region, s)
                    {
                        // (The peer knows nothing of an unannounced one, but
                        // a RETIRE of a slot it does not know is harmless.)
                        self.empty(s);
                        retire.push(s as u32);
                    }
                }
                if live(self) >= MAX_BUFFERS || bytes(self) + want > MAX_POOL {
                    return Ok(Lend::Exhausted);
                }
                // An emptied slot's release word holds an old use number, never
                // reused (numbers only grow), so the slot can be refilled at once.
                let s = (!self.used).trailing_zeros() as usize;
                if s >= SLOTS {
                    return Ok(Lend::Exhausted);
                }
                let section = Section::anonymous(want as u64).map_err(std::io::Error::other)?;
                let view = section.map_mut(0, want).map_err(std::io::Error::other)?;
                let peer_handle = section.read_only().map_err(std::io::Error::other)?;
                self.fill(s, Buf { peer_handle, view, cap: want, last_use: 0, announced: false });
                s
            }
        };
        self.uses += 1;
        let use_no = self.uses;
        let b = self.slots[slot].as_mut().expect("chosen slot holds a buffer");
        let prev_use = b.last_use;
        b.last_use = use_no;
        let announce = !b.announced;
        b.announced = true;
        Ok(Lend::Buffer(Lent { slot: slot as u32, use_no, announce, ptr: b.view.as_mut_ptr(), prev_use }))
    }

    /// Takes back a use that never reached the peer (ending its
    /// [`hold`](Self::hold), if any).
    pub(crate) fn cancel(&mut self, slot: u32, use_no: u64, announce: bool, prev_use: u64) {
        self.unhold(slot);
        if let Some(Some(b)) = self.slots.get_mut(slot as usize)
            && b.last_use == use_no
        {
            b.last_use = prev_use;
            if announce {
                b.announced = false;
            }
        }
    }

    /// The read-only handle of the buffer in `slot`, to hand to the peer.
    pub(crate) fn handle(&self, slot: u32) -> Option<&Section> {
        self.slots.get(slot as usize)?.as_ref().map(|b| &b.peer_handle)
    }

    /// Whether the pool holds buffers that [`trim`](Self::trim) would give back.
    pub(crate) fn has_large(&self) -> bool {
        self.uses > 0 && self.buffers().any(|(_, b)| b.cap > KEEP_WHEN_IDLE)
    }

    /// Gives back large free buffers after a quiet spell. Returns their slots
    /// (the peer must be told to drop its handles).
    pub(crate) fn trim(&mut self, region: &Region, now: Instant) -> Vec<u32> {
        let mut gone = Vec::new();
        if now.duration_since(self.last_activity) < TRIM_AFTER {
            return gone;
        }
        for s in slots_in(self.used) {
            if self.slots[s].as_ref().is_some_and(|b| b.cap > KEEP_WHEN_IDLE) && self.is_free(region, s) {
                self.empty(s);
                gone.push(s as u32);
            }
        }
        gone
    }
}

/// A buffer of the peer, mapped read-only.
#[derive(Debug)]
struct PeerBuf {
    section: Section,
    view: Option<Arc<View>>,
}

/// The peer's buffers as this side knows them.
#[derive(Debug)]
pub(crate) struct PeerBuffers {
    slots: Vec<Option<PeerBuf>>,
    /// The largest buffer an honest peer makes for payloads this side
    /// takes: the buffer for the largest payload taken.
    largest: u64,
}

impl PeerBuffers {
    /// The peer's buffers for payloads of at most `max_payload` bytes (this
    /// side's limit, checked before a record's buffer is taken).
    pub(crate) fn new(max_payload: u64) -> PeerBuffers {
        let largest =
            max_payload.max(MIN_BUF as u64).checked_next_power_of_two().unwrap_or(u64::MAX).min(MAX_BUF as u64);
        PeerBuffers { slots: (0..SLOTS).map(|_| None).collect(), largest }
    }

    /// Records the handle of the buffer in `slot` (replacing a retired one).
    /// Refuses a buffer no honest pool makes (a size that is not a power of
    /// two from 64 KiB to 256 MiB, or larger than the largest payload this
    /// side takes needs) and more buffers in all than a pool may hold, with
    /// slack for retirements still on their way: a peer must not make this
    /// process map memory without bound, nor more than its limit asks.
    pub(crate) fn insert(&mut self, slot: u32, section: Section) -> Result<(), String> {
        let size = section.len();
        if !size.is_power_of_two() || !(MIN_BUF as u64..=MAX_BUF as u64).contains(&size) {
            return Err(format!("a pooled buffer of {size} bytes"));
        }
        if size > self.largest {
            return Err(format!("a pooled buffer of {size} bytes, more than payloads of the limit here need"));
        }
        let slot = slot as usize;
        let others: u64 = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(s, _)| s != slot)
            .filter_map(|(_, b)| b.as_ref())
            .map(|b| b.section.len())
            .sum();
        if others + size > 2 * MAX_POOL as u64 {
            return Err(format!("pooled buffers of more than {} bytes in all", 2 * MAX_POOL));
        }
        self.slots[slot] = Some(PeerBuf { section, view: None });
        Ok(())
    }

    /// Forgets a retired buffer.
    pub(crate) fn retire(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = None;
        }
    }

    /// A read-only view of the first `len` bytes of the buffer in `slot`.
    pub(crate) fn view(&mut self, slot: u32, len: u64) -> Result<Arc<View>, String> {
        let b = self
            .slots
            .get_mut(slot as usize)
            .and_then(|b| b.as_mut())
            .ok_or_else(|| format!("a record names buffer slot {slot}, which holds no buffer"))?;
        if len > b.section.len() {
            return Err(format!("a payload of {len} bytes in a buffer of {}", b.section.len()));
        }
        if b.view.is_none() {
            let whole = usize::try_from(b.section.len()).map_err(|_| "buffer larger than the address space")?;
            b.view = Some(Arc::new(b.section.map(0, whole).map_err(|e| format!("mapping a peer buffer: {e}"))?));
        }
        Ok(b.view.clone().expect("just mapped"))
    }

    /// Unmaps every buffer (their handles stay, to map again on next use).
    pub(crate) fn unmap_all(&mut self) {
        for b in self.slots.iter_mut().flatten() {
            b.view = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_in_use_are_the_set_bits() {
        assert_eq!(slots_in(0).count(), 0);
        assert_eq!(slots_in(0b1011).collect::<Vec<_>>(), [0, 1, 3]);
        assert_eq!(slots_in(1 << 63 | 1).collect::<Vec<_>>(), [0, 63]);
        assert_eq!(slots_in(u64::MAX).count(), SLOTS);
    }

    fn lent(pool: &mut Pool, region: &Region, len: usize) -> Lent {
        match pool.lend(region, len, &mut Vec::new()).unwrap() {
            Lend::Buffer(l) => l,
            other => panic!("no buffer: {other:?}"),
        }
    }

    /// A reply loan being written is held: a sender that forges the
    /// release of its use neither gets it lent a second time nor makes the
    /// receiver unmap it.
    #[test]
    fn a_held_buffer_is_not_free_whatever_the_peer_writes() {
        let region = Region::create(0).unwrap();
        let mut pool = Pool::new(Side::Receiver);
        let a = lent(&mut pool, &region, 2 << 20);
        pool.hold(a.slot);
        // The peer forges the release of that use.
        region.released(Side::Receiver, a.slot as usize).store(a.use_no, std::sync::atomic::Ordering::Release);
        let b = lent(&mut pool, &region, 2 << 20);
        assert_ne!(b.slot, a.slot, "a held buffer was lent again");
        let idle = Instant::now() + 2 * TRIM_AFTER;
        assert!(!pool.trim(&region, idle).contains(&a.slot), "a held buffer was given back");
        // Sent: from now on the release frees it, as for any use.
        pool.unhold(a.slot);
        assert!(pool.trim(&region, idle).contains(&a.slot));
        // A cancelled hold gives the buffer back at once.
        let c = lent(&mut pool, &region, 2 << 20);
        pool.hold(c.slot);
        pool.cancel(c.slot, c.use_no, c.announce, c.prev_use);
        assert_eq!(lent(&mut pool, &region, 2 << 20).slot, c.slot);
    }
}
