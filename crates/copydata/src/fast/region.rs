//! The shared region of one connection: a header, the release tables of
//! the two buffer pools, and two rings.
//!
//! ```text
//! +0     header (one 128-byte line, written once by the receiver at set-up)
//!          magic "CDREGN02", protocol: u32, req_cap: u32, rep_cap: u32, slots: u32,
//!          +32 worker: u32   which handler thread serves the connection (its doorbell)
//!          +40 receiver_closed: u32, +44 sender_closed: u32 (Windows: a side dropped the connection)
//!          +48 taken_from_sender: u64, +56 taken_from_receiver: u64 (Windows: the last
//!              attachments the other side has pulled)
//!          +64 loan_pending: u32   the sender holds a loan it is about to send
//!          +72 streamed: u64   progress of a payload the sender is still copying
//!          +80 setup_nonce: u64, +88 setup: u32 (Windows: which hello the region
//!              answers, and whether the sender took it or the receiver gave it up)
//! +128   released by the receiver: u64 × SLOTS   (sender-owned buffers it is done with)
//! +640   released by the sender:   u64 × SLOTS   (receiver-owned buffers)
//! +1152  request ring  (sender → receiver), `ring::RING_HEADER + REQ_CAP`
//! ...    reply ring    (receiver → sender), `ring::RING_HEADER + REP_CAP`
//! ```
//!
//! Every field has a fixed width, so 32- and 64-bit processes agree on the
//! layout. The receiver creates the region; the sender checks the header
//! before using anything else in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::ring::{LINE, RING_HEADER, RingPtr};
use crate::section::Section;
use crate::view::ViewMut;

/// The protocol version spoken at set-up and recorded in the region.
pub(crate) const PROTOCOL: u32 = 4;
const MAGIC: u64 = u64::from_le_bytes(*b"CDREGN02");
/// Bytes of the request ring's data area.
pub(crate) const REQ_CAP: usize = 256 << 10;
/// Bytes of the reply ring's data area.
pub(crate) const REP_CAP: usize = 64 << 10;
/// Buffer slots per pool (per direction).
pub(crate) const SLOTS: usize = 64;
const REL_BY_RECEIVER: usize = LINE;
const REL_BY_SENDER: usize = LINE + SLOTS * 8;
const REQ_RING: usize = LINE + 2 * SLOTS * 8;
const REP_RING: usize = REQ_RING + RING_HEADER + REQ_CAP;
/// The region's size.
pub(crate) const REGION_LEN: usize = (REP_RING + RING_HEADER + REP_CAP).next_multiple_of(4096);

const _: () = assert!(REQ_RING.is_multiple_of(LINE) && REP_RING.is_multiple_of(LINE));

/// Which side of the connection a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Sender,
    Receiver,
}

/// A mapped connection region.
#[derive(Debug)]
pub(crate) struct Region {
    view: Arc<ViewMut>,
    section: Section,
}

/// One release word of a region, usable after the connection is gone (it
/// keeps the mapping).
#[derive(Debug)]
pub(crate) struct ReleaseWord {
    view: Arc<ViewMut>,
    offset: usize,
}

impl ReleaseWord {
    pub(crate) fn store(&self, use_no: u64) {
        self.view.atomic_u64(self.offset).expect("offset inside the region").swap(use_no, Ordering::SeqCst);
    }
}

impl Region {
    /// Creates and initialises a region (the receiver's side).
    pub(crate) fn create(worker: u32) -> std::io::Result<Region> {
        let section = Section::anonymous(REGION_LEN as u64).map_err(std::io::Error::other)?;
        let view = section.map_mut(0, REGION_LEN).map_err(std::io::Error::other)?;
        let mut head = [0u8; 32];
        head[0..8].copy_from_slice(&MAGIC.to_ne_bytes());
        head[8..12].copy_from_slice(&PROTOCOL.to_ne_bytes());
        head[12..16].copy_from_slice(&(REQ_CAP as u32).to_ne_bytes());
        head[16..20].copy_from_slice(&(REP_CAP as u32).to_ne_bytes());
        head[20..24].copy_from_slice(&(SLOTS as u32).to_ne_bytes());
        view.write_at(0, &head).map_err(std::io::Error::other)?;
        // Every page is made resident now, not as the rings first fill: a
        // connection costs the same memory from set-up to close (its
        // ~330 KiB, never more), and no message pays a page fault on the
        // rings' first lap. Nobody else maps the region yet.
        for page in (4096..REGION_LEN).step_by(4096) {
            view.write_at(page, &[0]).map_err(std::io::Error::other)?;
        }
        let region = Region { view: Arc::new(view), section };
        region.worker().store(worker, Ordering::Release);
        Ok(region)
    }

    /// Maps a region received from the receiver and checks its header (the
    /// sender's side).
    pub(crate) fn adopt(section: Section) -> Result<Region, String> {
        if section.len() != REGION_LEN as u64 {
            return Err(format!("connection region of {} bytes (expected {REGION_LEN})", section.len()));
        }
        let view = section.map_mut(0, REGION_LEN).map_err(|e| format!("mapping the connection region: {e}"))?;
        let mut head = [0u8; 24];
        view.read_at(0, &mut head).map_err(|e| e.to_string())?;
        let u32_at = |i: usize| u32::from_ne_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        if u64::from_ne_bytes(head[0..8].try_into().expect("8 bytes")) != MAGIC {
            return Err("the connection region is not a copydata region".into());
        }
        if u32_at(8) != PROTOCOL {
            return Err(format!("the receiver speaks protocol {}, this process {PROTOCOL}", u32_at(8)));
        }
        if (u32_at(12), u32_at(16), u32_at(20)) != (REQ_CAP as u32, REP_CAP as u32, SLOTS as u32) {
            return Err("the connection region's layout differs".into());
        }
        Ok(Region { view: Arc::new(view), section })
    }

    /// The section, to hand to the peer.
    pub(crate) fn section(&self) -> &Section {
        &self.section
    }

    fn base(&self) -> *mut u8 {
        self.view.as_mut_ptr()
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.view.atomic_u64(offset).expect("offset inside the region")
    }

    /// The handler thread (doorbell) serving this connection, as the
    /// receiver last wrote it. The sender must bound-check it.
    pub(crate) fn worker(&self) -> &AtomicU32 {
        self.view.atomic_u32(32).expect("offset inside the region")
    }

    /// The number of the loan the sender holds (a message is coming), 0
    /// for none: each loan has a number of its own.
    pub(crate) fn loan_pending(&self) -> &AtomicU32 {
        self.view.atomic_u32(64).expect("offset inside the region")
    }

    /// The progress of a streamed payload (see `conn`), written by the sender.
    pub(crate) fn streamed(&self) -> &AtomicU64 {
        self.u64_at(72)
    }

    /// The release word of buffer `slot` owned by `owner`, as a handle that
    /// outlives `self`.
    pub(crate) fn release_word(&self, owner: Side, slot: usize) -> ReleaseWord {
        assert!(slot < SLOTS);
        let table = match owner {
            Side::Sender => REL_BY_RECEIVER,
            Side::Receiver => REL_BY_SENDER,
        };
        ReleaseWord { view: self.view.clone(), offset: table + slot * 8 }
    }

    /// The release word of buffer `slot` owned by `owner`: the other side
    /// stores there the use number of the last use it has finished with.
    pub(crate) fn released(&self, owner: Side, slot: usize) -> &AtomicU64 {
        assert!(slot < SLOTS);
        let table = match owner {
            Side::Sender => REL_BY_RECEIVER,
            Side::Receiver => REL_BY_SENDER,
        };
        self.u64_at(table + slot * 8)
    }

    /// The word a sender parked for a reply sleeps on.
    pub(crate) fn reply_wake(&self) -> &AtomicU32 {
        self.view.atomic_u32(REP_RING + LINE + 4).expect("offset inside the region")
    }

    /// The word a sender waiting for room in the request ring sleeps on.
    pub(crate) fn space_wake(&self) -> &AtomicU32 {
        self.view.atomic_u32(REQ_RING + 2 * LINE + 4).expect("offset inside the region")
    }

    /// A value that changes whenever the other side releases a buffer of
    /// `owner` (for spinning on it cheaply).
    pub(crate) fn released_sum(&self, owner: Side) -> u64 {
        (0..SLOTS).fold(0u64, |acc, slot| acc.wrapping_add(self.released(owner, slot).load(Ordering::Relaxed)))
    }

    /// The request ring (sender → receiver).
    pub(crate) fn requests(&self) -> RingPtr {
        // SAFETY:
        // - the ring lies inside the mapping (REGION_LEN covers it), which
        //   `self` keeps mapped; the connection keeps the region alive for as
        //   long as its rings are used;
        // - the offset is a multiple of 128 from a page-aligned base;
        // - REQ_CAP is a power of two >= 4 KiB.
        unsafe { RingPtr::new(self.base().add(REQ_RING), REQ_CAP) }
    }

    /// The reply ring (receiver → sender).
    pub(crate) fn replies(&self) -> RingPtr {
        // SAFETY: as in `requests`, for the reply ring.
        unsafe { RingPtr::new(self.base().add(REP_RING), REP_CAP) }
    }
}
