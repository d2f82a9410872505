//! A single-producer, single-consumer ring of variable-length records in
//! memory shared with another process.
//!
//! ```text
//! ring header (3 lines of 128 bytes, so no two writers share a line pair):
//!   +0    tail: u64            consumer's position (written by the consumer)
//!   +128  cons_parked: u32     the consumer is (about to be) asleep
//!   +132  cons_wake: u32       bumped by the producer when it wakes the consumer (a futex word)
//!   +256  prod_parked: u32     the producer waits for space
//!   +260  prod_wake: u32       bumped by the consumer when it wakes the producer
//! data: `cap` bytes (a power of two), records made of 64-byte lines:
//!   line 0:  stamp: u64   position + 1 once the record is complete
//!            kind: u32, flags: u32 (user flags << 24 | inline length)
//!            len: u64     payload length (inline or elsewhere, by kind and flags)
//!            word: u64    tag, reply code or limit
//!            the first 32 inline bytes
//!   line i:  0: u64, then the next 56 inline bytes
//! ```
//!
//! Positions grow without wrapping (`u64`); a record never straddles the end
//! of the data area: when it would, the producer first writes a `PAD`
//! record to the end. Every line starts with a word the producer wrote for
//! that very position: a record's first line its stamp, the others 0. So
//! the consumer, waiting at position `p`, sees either the stamp `p + 1` (the
//! record is there) or a value left by an earlier lap (0, or the stamp of a
//! record that began at `p` one or more laps ago), never stray payload
//! bytes, and the producer never has to clear a slot ahead of itself. The
//! stamp shares a cache line with the header and the first inline bytes, so
//! a small message moves with one or two line transfers, and the consumer
//! never reads the producer's position.
//!
//! The peer can write all of this memory at any moment: every value read
//! from it is loaded once into a local, checked, and only then used; no
//! Rust reference to the data area is ever formed (bytes move with
//! `ptr::copy_nonoverlapping`, words through atomics). A value that cannot
//! come from a well-behaved peer is reported as [`Corrupt`].

use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A cache line pair: the adjacent-line prefetcher of x86 moves lines in
/// pairs, so words written by different sides stay 128 bytes apart.
pub(crate) const LINE: usize = 128;
/// Size of a ring's header.
pub(crate) const RING_HEADER: usize = 3 * LINE;
/// Size of a record's header (before its inline bytes).
pub(crate) const REC_HEADER: usize = 32;
/// Records start at multiples of this: the line size.
pub(crate) const ALIGN: usize = 64;
/// Inline bytes in the first line of a record.
const FIRST: usize = ALIGN - REC_HEADER;
/// Inline bytes in each further line (after its zero word).
const MORE: usize = ALIGN - 8;
/// The kind of a padding record, which fills the data area to its end.
pub(crate) const KIND_PAD: u32 = 0xffff;

/// What a peer wrote cannot be right; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt shared ring: {}", self.0)
    }
}

/// A record's header fields, copied out of shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rec {
    pub(crate) kind: u32,
    pub(crate) flags: u32,
    pub(crate) len: u64,
    pub(crate) word: u64,
    /// Inline bytes that follow the header.
    pub(crate) inline: usize,
}

/// The bytes a record with `inline` inline bytes occupies.
pub(crate) const fn record_size(inline: usize) -> usize {
    let more = if inline > FIRST { (inline - FIRST).div_ceil(MORE) } else { 0 };
    ALIGN * (1 + more)
}

/// The largest inline part a ring of `cap` bytes can carry in one record
/// (about half the ring, so a record always fits after at most one pad).
pub(crate) const fn max_inline(cap: usize) -> usize {
    FIRST + MORE * (cap / 2 / ALIGN - 1)
}

/// Where logical inline byte `at` of a record lies, from the record's
/// start, and how many inline bytes follow it in the same line.
fn locate(at: usize) -> (usize, usize) {
    if at < FIRST {
        (REC_HEADER + at, FIRST - at)
    } else {
        let line = 1 + (at - FIRST) / MORE;
        let within = (at - FIRST) % MORE;
        (line * ALIGN + 8 + within, MORE - within)
    }
}

/// The location of one ring inside a mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingPtr {
    base: *mut u8,
    cap: usize,
}

// SAFETY:
// - a `RingPtr` is an address range inside a shared mapping that its owner
//   (the connection) keeps mapped for as long as any `RingPtr` into it is
//   used; all accesses are atomics or raw copies, valid from any thread.
unsafe impl Send for RingPtr {}
// SAFETY: as for `Send`; `&RingPtr` only allows the same atomic/raw accesses.
unsafe impl Sync for RingPtr {}

impl RingPtr {
    /// # Safety
    ///
    /// - `base` is 128-byte aligned and `RING_HEADER + cap` bytes from it are
    ///   mapped readable and writable for as long as the `RingPtr` (and every
    ///   copy of it) is used;
    /// - `cap` is a power of two and at least 4 KiB.
    pub(crate) unsafe fn new(base: *mut u8, cap: usize) -> RingPtr {
        assert!(cap.is_power_of_two() && cap >= 4096, "a ring of {cap} bytes");
        debug_assert!((base as usize).is_multiple_of(LINE));
        RingPtr { base, cap }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset + 8 <= RING_HEADER + self.cap && offset.is_multiple_of(8));
        // SAFETY:
        // - `offset` is inside the ring and 8-aligned (the base is 128-aligned),
        //   and the memory stays mapped while `self` is used (`new`'s contract);
        // - the other process may change the word at any time, which atomics
        //   allow: we only ever access it atomically.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast()) }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= RING_HEADER && offset.is_multiple_of(4));
        // SAFETY: as in `u64_at`, for a 4-aligned word of the header.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast()) }
    }

    fn tail(&self) -> &AtomicU64 {
        self.u64_at(0)
    }
    /// The consumer's "I am parking" flag.
    pub(crate) fn cons_parked(&self) -> &AtomicU32 {
        self.u32_at(LINE)
    }
    /// The word the consumer sleeps on (a futex on Linux).
    pub(crate) fn cons_wake(&self) -> &AtomicU32 {
        self.u32_at(LINE + 4)
    }
    /// The producer's "I wait for space" flag.
    pub(crate) fn prod_parked(&self) -> &AtomicU32 {
        self.u32_at(2 * LINE)
    }
    /// The word the producer sleeps on.
    pub(crate) fn prod_wake(&self) -> &AtomicU32 {
        self.u32_at(2 * LINE + 4)
    }

    /// The stamp word of the record at absolute position `pos`.
    fn stamp(&self, pos: u64) -> &AtomicU64 {
        self.u64_at(RING_HEADER + (pos as usize & (self.cap - 1)))
    }

    /// How far the consumer has taken records.
    pub(crate) fn consumed(&self) -> u64 {
        self.tail().load(Ordering::Acquire)
    }

    /// Whether the word at position `pos` is anything but what an earlier
    /// lap left there (a record, a pad, or garbage: look closer).
    pub(crate) fn has_stamp(&self, pos: u64) -> bool {
        let stamp = self.stamp(pos).load(Ordering::Acquire);
        // `cap` is a power of two: masks, not divisions (this runs on every
        // look of a spinning receiver, for each of its connections).
        let mask = self.cap as u64 - 1;
        stamp == pos + 1 || !(stamp == 0 || (stamp <= pos && (stamp - 1) & mask == pos & mask))
    }

    /// Starts fetching the further lines (up to three) of the record at
    /// `pos`, whose stamp was just seen: their transfers from the producer's
    /// cache then overlap with the work before the bytes are read, instead
    /// of following it. The length comes from the record's header, which
    /// only steers the hint: it is checked when the record is taken.
    pub(crate) fn prefetch_record(&self, pos: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let off = pos as usize & (self.cap - 1);
            // The word after the stamp: kind, then flags (inline length in
            // the low 24 bits), as the producer wrote them.
            let word = self.u64_at(RING_HEADER + off + 8).load(Ordering::Relaxed).to_ne_bytes();
            let flags = u32::from_ne_bytes([word[4], word[5], word[6], word[7]]);
            let lines = record_size((flags & 0x00ff_ffff) as usize) / ALIGN;
            for line in 1..lines.min(4) {
                let at = off + line * ALIGN;
                if at >= self.cap {
                    break;
                }
                // SAFETY: SSE is part of the x86_64 baseline; `at` is inside
                // the mapped data area, and a prefetch only hints the cache
                // (it reads nothing into the program and cannot fault).
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        self.base.add(RING_HEADER + at).cast_const().cast(),
                    )
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = pos;
    }

    /// A pointer into the data area at absolute position `pos` plus `at`.
    fn data(&self, pos: u64, at: usize) -> *mut u8 {
        let off = (pos as usize & (self.cap - 1)) + at;
        debug_assert!(off <= self.cap);
        // SAFETY: `off <= cap`, so the pointer is inside (or one past) the
        // mapped ring.
        unsafe { self.base.add(RING_HEADER + off) }
    }
}

/// The producing side of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    ring: RingPtr,
    pos: u64,
    /// The consumer's position as last read (re-read only when the ring
    /// seems full, or to see whether it is drained for an early wrap).
    tail: u64,
    /// The position from which to look again whether the ring is drained.
    next_look: u64,
}

/// A producer that finds the ring drained this far into a lap (or a quarter
/// of a small ring) starts the next lap at once, with a pad to the end. A
/// ring that never backs up (calls, and posts the receiver keeps up with)
/// so keeps to its first pages: its memory in both processes stays a few
/// pages however many records pass, instead of growing to the whole ring.
/// A ring with a backlog is used to its end as before.
const EARLY_WRAP: usize = 32 << 10;

impl Producer {
    pub(crate) fn new(ring: RingPtr) -> Producer {
        Producer { ring, pos: 0, tail: 0, next_look: 0 }
    }

    pub(crate) fn ring(&self) -> &RingPtr {
        &self.ring
    }

    /// Space for a record of `size` bytes (plus a possible pad): `Ok(pad)` if
    /// there is room now.
    fn room(&mut self, size: usize) -> Result<Option<usize>, Corrupt> {
        let cap = self.ring.cap;
        let off = self.pos as usize & (cap - 1);
        let mut pad = if off + size > cap { cap - off } else { 0 };
        let early = EARLY_WRAP.min(cap / 4);
        if pad == 0 && off >= early && size <= off && self.pos >= self.next_look {
            // Look at the consumer's position once per eighth of the early
            // mark, not at every record: it is the other side's cache line.
            self.next_look = self.pos + (early / 8) as u64;
            if self.load_tail()? == self.pos {
                pad = cap - off;
            }
        }
        let need = (pad + size) as u64;
        if self.pos - self.tail + need <= cap as u64 {
            return Ok(Some(pad));
        }
        self.load_tail()?;
        Ok((self.pos - self.tail + need <= cap as u64).then_some(pad))
    }

    /// Reads and checks the consumer's position.
    fn load_tail(&mut self) -> Result<u64, Corrupt> {
        let cap = self.ring.cap;
        let tail = self.ring.tail().load(Ordering::Acquire);
        if tail > self.pos || self.pos - tail > cap as u64 || !(tail as usize).is_multiple_of(ALIGN) {
            return Err(Corrupt(format!("consumer position {tail} (producer at {})", self.pos)));
        }
        self.tail = tail;
        Ok(tail)
    }

    /// The position after the last record queued.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// How far the consumer has taken records.
    pub(crate) fn consumed(&self) -> u64 {
        self.ring.consumed()
    }

    /// Whether a record of `size` bytes fits now.
    pub(crate) fn has_room(&mut self, size: usize) -> Result<bool, Corrupt> {
        Ok(self.room(size)?.is_some())
    }

    /// Appends a record whose inline bytes are the concatenation of `parts`,
    /// if there is room. Returns `Ok(None)` when the ring is full, else
    /// `Ok(Some(parked))` where `parked` says the consumer may be asleep and
    /// must be woken.
    pub(crate) fn push(
        &mut self,
        kind: u32,
        flags: u32,
        len: u64,
        word: u64,
        parts: &[&[u8]],
    ) -> Result<Option<bool>, Corrupt> {
        let inline: usize = parts.iter().map(|p| p.len()).sum();
        assert!(inline <= max_inline(self.ring.cap), "record larger than the ring allows");
        let size = record_size(inline);
        let Some(pad) = self.room(size)? else { return Ok(None) };
        let at = self.pos + pad as u64;
        let mut header = [0u8; REC_HEADER - 8];
        header[0..4].copy_from_slice(&kind.to_ne_bytes());
        header[4..8].copy_from_slice(&flags.to_ne_bytes());
        header[8..16].copy_from_slice(&len.to_ne_bytes());
        header[16..24].copy_from_slice(&word.to_ne_bytes());
        // SAFETY: (this and the copies below)
        // - the record `at..at + size` is inside the data area (a record never
        //   straddles its end: `pad` moved it to the next lap) and is free:
        //   `room` checked the consumer has passed it;
        // - every offset comes from `locate` for an inline byte below
        //   `inline`, so it stays inside the record's `size` bytes;
        // - sources are private buffers, so the ranges do not overlap;
        // - no reference to shared memory is formed.
        unsafe { ptr::copy_nonoverlapping(header.as_ptr(), self.ring.data(at, 8), header.len()) };
        for line in 1..size / ALIGN {
            self.ring.stamp(at + (line * ALIGN) as u64).store(0, Ordering::Relaxed);
        }
        let mut logical = 0;
        for p in parts {
            let mut done = 0;
            while done < p.len() {
                let (offset, room) = locate(logical);
                let n = room.min(p.len() - done);
                // SAFETY: see above.
                unsafe { ptr::copy_nonoverlapping(p.as_ptr().add(done), self.ring.data(at, offset), n) };
                done += n;
                logical += n;
            }
        }
        if pad > 0 {
            let mut pad_header = [0u8; 8];
            pad_header[0..4].copy_from_slice(&KIND_PAD.to_ne_bytes());
            // SAFETY: the pad record lies at `pos`, inside the free area
            // (checked by `room`), with at least `ALIGN` bytes to the end.
            unsafe { ptr::copy_nonoverlapping(pad_header.as_ptr(), self.ring.data(self.pos, 8), 8) };
            // The record at the next lap's start is complete before the pad
            // that leads the consumer to it is published.
            self.ring.stamp(at).store(at + 1, Ordering::Release);
            self.pos = at + size as u64;
            // A full barrier (a locked exchange): pairs with the consumer's
            // between raising its parked flag and looking at the ring once
            // more, so one of the two sees the other.
            self.ring.stamp(at - pad as u64).swap(at - pad as u64 + 1, Ordering::SeqCst);
        } else {
            self.pos = at + size as u64;
            // Publishes the record with a full barrier (see above).
            self.ring.stamp(at).swap(at + 1, Ordering::SeqCst);
        }
        Ok(Some(self.ring.cons_parked().load(Ordering::SeqCst) != 0))
    }
}

/// The consuming side of a ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    ring: RingPtr,
    pos: u64,
}

impl Consumer {
    pub(crate) fn new(ring: RingPtr) -> Consumer {
        Consumer { ring, pos: 0 }
    }

    pub(crate) fn ring(&self) -> &RingPtr {
        &self.ring
    }

    /// The position of the next record.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// The next complete record, if any (padding is skipped).
    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Result<Option<Rec>, Corrupt> {
        loop {
            let stamp = self.ring.stamp(self.pos).load(Ordering::Acquire);
            if stamp != self.pos + 1 {
                // What an earlier lap left here: 0, or the stamp of a record
                // that began at this offset then.
                let mask = self.ring.cap as u64 - 1;
                if stamp == 0 || (stamp <= self.pos && (stamp - 1) & mask == self.pos & mask) {
                    return Ok(None);
                }
                return Err(Corrupt(format!("stamp {stamp:#x} at position {}", self.pos)));
            }
            let mut header = [0u8; REC_HEADER - 8];
            // SAFETY:
            // - the header lies inside the data area (positions are 64-aligned
            //   and the area a multiple of 64 long);
            // - it is copied into a private array; no reference is formed.
            unsafe { ptr::copy_nonoverlapping(self.ring.data(self.pos, 8), header.as_mut_ptr(), header.len()) };
            let u32_at = |i: usize| u32::from_ne_bytes(header[i..i + 4].try_into().expect("4 bytes"));
            let u64_at = |i: usize| u64::from_ne_bytes(header[i..i + 8].try_into().expect("8 bytes"));
            let (kind, flags) = (u32_at(0), u32_at(4));
            let off = self.pos as usize & (self.ring.cap - 1);
            if kind == KIND_PAD {
                if off == 0 {
                    return Err(Corrupt("padding at the start of the ring".into()));
                }
                self.pos += (self.ring.cap - off) as u64;
                self.ring.tail().store(self.pos, Ordering::Release);
                continue;
            }
            let rec = Rec { kind, flags, len: u64_at(8), word: u64_at(16), inline: 0 };
            return Ok(Some(Rec { inline: self.inline_len(&rec, off)?, ..rec }));
        }
    }

    /// How many inline bytes the record carries (the low bits of its flags),
    /// checked against the ring.
    fn inline_len(&self, rec: &Rec, off: usize) -> Result<usize, Corrupt> {
        let inline = inline_of(rec) as usize;
        if inline > max_inline(self.ring.cap) || off + record_size(inline) > self.ring.cap {
            return Err(Corrupt(format!("record of {inline} inline bytes at offset {off}")));
        }
        Ok(inline)
    }

    /// Copies `dst.len()` inline bytes of the current record, from `at`.
    pub(crate) fn read(&self, rec: &Rec, at: usize, dst: &mut [u8]) {
        assert!(at + dst.len() <= rec.inline, "read past the record");
        // SAFETY: `dst` is a private buffer of `dst.len()` bytes; the range
        // was checked above.
        unsafe { self.read_into(rec, at, dst.as_mut_ptr(), dst.len()) };
    }

    /// Copies `len` inline bytes from `at` into a new vector (not zeroed
    /// first).
    #[inline(always)]
    pub(crate) fn read_vec(&self, rec: &Rec, at: usize, len: usize) -> Vec<u8> {
        assert!(at + len <= rec.inline, "read past the record");
        let mut v = Vec::with_capacity(len);
        // SAFETY: `v`'s spare capacity holds `len` bytes; `read_into` fills
        // all of them (the range was checked above), then `set_len` exposes
        // exactly those initialised bytes.
        unsafe {
            self.read_into(rec, at, v.as_mut_ptr(), len);
            v.set_len(len);
        }
        v
    }

    /// # Safety
    ///
    /// `dst` is valid for writing `len` bytes and does not overlap the
    /// ring; `at + len <= rec.inline`.
    unsafe fn read_into(&self, rec: &Rec, at: usize, dst: *mut u8, len: usize) {
        debug_assert!(at + len <= rec.inline);
        let mut done = 0;
        while done < len {
            let (offset, room) = locate(at + done);
            let n = room.min(len - done);
            // SAFETY:
            // - the bytes are inline bytes of the current record (below
            //   `rec.inline`), inside the data area (`inline_len` checked the
            //   record fits);
            // - the caller vouches for `dst`; no reference to shared memory
            //   is formed.
            unsafe { ptr::copy_nonoverlapping(self.ring.data(self.pos, offset), dst.add(done), n) };
            done += n;
        }
    }

    /// Releases the current record. With `producer_may_wait` (a producer
    /// that can block for room), returns whether it may be asleep and must
    /// be woken; else `false`.
    pub(crate) fn advance(&mut self, rec: &Rec, producer_may_wait: bool) -> bool {
        self.pos += record_size(rec.inline) as u64;
        if !producer_may_wait {
            self.ring.tail().store(self.pos, Ordering::Release);
            return false;
        }
        // A full barrier (a locked exchange) between publishing the room and
        // reading the producer's parked flag; pairs with the producer's.
        self.ring.tail().swap(self.pos, Ordering::SeqCst);
        self.ring.prod_parked().load(Ordering::SeqCst) != 0
    }
}

/// Inline bytes carried by a record: the low 24 bits of its flags word hold
/// nothing else; the layout is `flags = user_flags (8 bits) << 24 | inline`.
pub(crate) fn inline_of(rec: &Rec) -> u32 {
    rec.flags & 0x00ff_ffff
}

/// The flags of a record without its inline length.
pub(crate) fn user_flags(rec: &Rec) -> u32 {
    rec.flags >> 24
}

/// Packs user flags and the inline length into a record's flags word.
pub(crate) fn pack_flags(user: u32, inline: usize) -> u32 {
    debug_assert!(user < 256 && inline < 1 << 24);
    (user << 24) | inline as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u128>);

    fn ring(cap: usize) -> (Mem, RingPtr) {
        let mut mem = Mem(vec![0u128; (RING_HEADER + cap) / 16]);
        // Align to 128: over-allocate slightly.
        mem.0.resize((RING_HEADER + cap + 128) / 16, 0);
        let p = mem.0.as_mut_ptr() as usize;
        let base = (p + 127) & !127;
        // SAFETY: the vector stays alive (returned with the pointer) and is
        // large enough for the aligned ring.
        let r = unsafe { RingPtr::new(base as *mut u8, cap) };
        (mem, r)
    }

    fn push(p: &mut Producer, kind: u32, data: &[u8]) -> Option<bool> {
        p.push(kind, pack_flags(0, data.len()), data.len() as u64, 7, &[data]).unwrap()
    }

    #[test]
    fn records_round_trip_across_laps() {
        let (_m, r) = ring(4096);
        let (mut p, mut c) = (Producer::new(r), Consumer::new(r));
        for i in 0..10_000usize {
            let data: Vec<u8> = (0..(i * 37) % 1500).map(|b| (b + i) as u8).collect();
            assert_eq!(push(&mut p, 1, &data), Some(false));
            let rec = c.peek().unwrap().expect("a record");
            assert_eq!((rec.kind, rec.len, rec.word, rec.inline), (1, data.len() as u64, 7, data.len()));
            let mut out = vec![0; rec.inline];
            c.read(&rec, 0, &mut out);
            assert_eq!(out, data);
            c.advance(&rec, true);
            assert_eq!(c.peek().unwrap(), None);
        }
    }

    #[test]
    fn a_drained_ring_keeps_to_its_first_pages_and_a_backlog_uses_it_all() {
        let cap = 256 << 10;
        let (_m, r) = ring(cap);
        let (mut p, mut c) = (Producer::new(r), Consumer::new(r));
        let mut furthest = 0;
        let take = |c: &mut Consumer, i: usize| {
            let rec = c.peek().unwrap().expect("a record");
            let mut out = vec![0; rec.inline];
            c.read(&rec, 0, &mut out);
            assert_eq!(out, vec![i as u8; (i * 13) % 700], "record {i}");
            c.advance(&rec, true);
        };
        // Ping-pong: the ring is drained before every push.
        for i in 0..20_000usize {
            assert_eq!(push(&mut p, 1, &vec![i as u8; (i * 13) % 700]), Some(false));
            furthest = furthest.max((p.position() as usize - 1) & (cap - 1));
            take(&mut c, i);
        }
        assert!(p.position() > 4 * cap as u64, "the records went round several laps");
        assert!(furthest < EARLY_WRAP + EARLY_WRAP / 8 + 1024, "a drained ring reached offset {furthest}");
        // A backlog: nothing is taken for a while, and the ring fills past
        // the early mark; then everything arrives in order.
        let mut queued = Vec::new();
        let mut i = 20_000;
        while push(&mut p, 1, &vec![i as u8; (i * 13) % 700]).is_some() {
            queued.push(i);
            i += 1;
        }
        assert!(queued.len() * 700 > cap / 4, "only {} records fitted", queued.len());
        for i in queued {
            take(&mut c, i);
        }
        assert_eq!(c.peek().unwrap(), None);
    }

    #[test]
    fn a_full_ring_refuses_then_accepts() {
        let (_m, r) = ring(4096);
        let (mut p, mut c) = (Producer::new(r), Consumer::new(r));
        let mut n = 0;
        while push(&mut p, 2, &[1; 100]).is_some() {
            n += 1;
        }
        assert!(n > 10);
        let rec = c.peek().unwrap().unwrap();
        c.advance(&rec, true);
        assert!(push(&mut p, 2, &[1; 100]).is_some());
    }

    #[test]
    fn garbage_is_reported_not_trusted() {
        let (_m, r) = ring(4096);
        let mut c = Consumer::new(r);
        r.stamp(0).store(12345, Ordering::Relaxed);
        assert!(c.peek().is_err());
        // A record claiming more inline bytes than the ring holds.
        r.stamp(0).store(1, Ordering::Relaxed);
        let flags = pack_flags(0, 0xff_ffff);
        // SAFETY: writes into the test ring's first record header.
        unsafe { ptr::copy_nonoverlapping(flags.to_ne_bytes().as_ptr(), r.data(0, 12), 4) };
        assert!(c.peek().is_err());
        // A consumer position that cannot be.
        let (_m2, r2) = ring(4096);
        let mut p = Producer::new(r2);
        r2.tail().store(1 << 40, Ordering::Relaxed);
        let mut full = 0;
        while full < 100 {
            match p.push(1, pack_flags(0, 64), 64, 0, &[&[0; 64]]) {
                Ok(Some(_)) => full += 1,
                Ok(None) => panic!("full without the consumer moving"),
                Err(_) => return,
            }
        }
        panic!("a bad consumer position went unnoticed");
    }
}
