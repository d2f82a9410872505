//! The header every named synchronisation object starts with: fixed-width
//! fields at fixed offsets, all read and written atomically (another
//! process may write them at any time).
//!
//! ```text
//! 0   magic        u32  "CDS" + kind byte, set by the first opener
//! 4   version      u32
//! 8   inconsistent u32  mutex: a locker's owner died and nobody marked the state consistent
//! 12  (reserved)   u32  0
//! 16  (reserved)   u32  0
//! 20  event_kind   u32  event: 1 manual-reset, 2 auto-reset
//! 24  event_state  u32  event (Linux): the futex word (manual-reset: set bit and a count of sets; auto-reset: waits to grant)
//! 28  waiters      u32  event (Linux): sleepers
//! 32  size+1       u64  shared value: the value's size, plus one
//! 40  align        u32  shared value: its alignment
//! 44  ready        u32  shared value: 1 once initialised
//! 48  tag          u64  shared value: FNV-1a of the type tag (never 0)
//! 64  the OS mutex (Linux: a glibc pthread_mutex_t), up to 64 bytes
//! 128 the shared value, at the next multiple of its alignment
//! ```
//!
//! Each identifying field is claimed with a compare-exchange from 0, so
//! processes racing to open the same object agree on it without a lock, a
//! process that dies halfway leaves nothing the next one cannot finish,
//! and one that asks for something else sees the difference.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::view::ViewMut;

pub(crate) const INCONSISTENT: usize = 8;
pub(crate) const EVENT_KIND: usize = 20;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const EVENT_STATE: usize = 24;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const EVENT_WAITERS: usize = 28;
pub(crate) const VALUE_SIZE: usize = 32;
pub(crate) const VALUE_ALIGN: usize = 40;
pub(crate) const VALUE_READY: usize = 44;
pub(crate) const VALUE_TAG: usize = 48;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const MUTEX_AT: usize = 64;
pub(crate) const HEADER_LEN: usize = 128;

/// 2: a Linux event's futex word counts (see `RawEvent`); 1 held 0 or 1.
const VERSION: u32 = 2;

/// The kinds of named synchronisation objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    Mutex,
    Event,
    Shared,
}

impl ObjectKind {
    /// The word in object names (`copydata.mutex.NAME`) and markers.
    pub(crate) fn marker(self) -> &'static str {
        match self {
            ObjectKind::Mutex => "mutex",
            ObjectKind::Event => "event",
            ObjectKind::Shared => "shared",
        }
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn has_mutex(self) -> bool {
        matches!(self, ObjectKind::Mutex | ObjectKind::Shared)
    }

    fn magic(self) -> u32 {
        let b = match self {
            ObjectKind::Mutex => b'M',
            ObjectKind::Event => b'E',
            ObjectKind::Shared => b'S',
        };
        u32::from_le_bytes([b'C', b'D', b'S', b])
    }
}

pub(crate) fn u32_at(header: &ViewMut, at: usize) -> &AtomicU32 {
    header.atomic_u32(at).expect("header fields are in range and aligned")
}

pub(crate) fn u64_at(header: &ViewMut, at: usize) -> &AtomicU64 {
    header.atomic_u64(at).expect("header fields are in range and aligned")
}

/// Claims `value` for a field, or returns what another process claimed.
pub(crate) fn claim_u32(header: &ViewMut, at: usize, value: u32) -> Result<(), u32> {
    match u32_at(header, at).compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(()),
        Err(v) if v == value => Ok(()),
        Err(v) => Err(v),
    }
}

pub(crate) fn claim_u64(header: &ViewMut, at: usize, value: u64) -> Result<(), u64> {
    match u64_at(header, at).compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(()),
        Err(v) if v == value => Ok(()),
        Err(v) => Err(v),
    }
}

/// Claims the magic and version of `kind`; `Err` says what the object is.
pub(crate) fn claim_kind(header: &ViewMut, kind: ObjectKind) -> Result<(), String> {
    claim_u32(header, 0, kind.magic()).map_err(|found| {
        [ObjectKind::Mutex, ObjectKind::Event, ObjectKind::Shared].into_iter().find(|k| k.magic() == found).map_or_else(
            || format!("not a copydata {} (magic {found:#010x})", kind.marker()),
            |k| format!("a copydata {}, not a {}", k.marker(), kind.marker()),
        )
    })?;
    claim_u32(header, 4, VERSION).map_err(|v| format!("made by another copydata version ({v}, this is {VERSION})"))
}
