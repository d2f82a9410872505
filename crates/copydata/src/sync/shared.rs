//! [`Shared<T>`]: a named, typed value in shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::header::{self, HEADER_LEN, INCONSISTENT, ObjectKind, VALUE_ALIGN, VALUE_READY, VALUE_SIZE, VALUE_TAG};
use super::{Lock, LockError, Object, RawGuard, SyncOpenError};
use crate::deadline;
use crate::view::ViewMut;

/// The largest alignment a shared value may ask for (a page: views are
/// page-aligned on every platform).
const MAX_ALIGN: usize = 4096;

/// Types made only of atomics, which processes may read and write through
/// a shared reference at any time ([`Shared::get`]). Implemented for the
/// standard atomic integers and `AtomicBool`, and arrays of them.
///
/// # Safety
///
/// Every byte of the type must be inside an atomic (so concurrent access
/// from other processes is never a data race), the all-zero bytes and any
/// value written through the type's own methods must be valid, and the type
/// must have no `Drop` glue (a shared value is never dropped).
pub unsafe trait AtomicValue: bytemuck::Zeroable + Send + Sync + 'static {}

macro_rules! atomic_values {
    ($($t:ty),*) => {
        $(
            // SAFETY: a std atomic is one atomic cell without drop glue; zero
            // is a valid value of each.
            unsafe impl AtomicValue for $t {}
        )*
    };
}
atomic_values!(
    std::sync::atomic::AtomicBool,
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16,
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicIsize
);
// SAFETY: an array of atomic values is contiguous atomic values, no padding.
unsafe impl<A: AtomicValue, const N: usize> AtomicValue for [A; N] {}

/// FNV-1a of a type tag, never 0 (0 means "not claimed yet").
fn tag_hash(tag: &str) -> u64 {
    let h = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    h.max(1)
}

/// A named value of type `T` shared by every process that opens the name:
/// the seed's DLL shared data section (`#pragma data_seg(".shared")` linked
/// with `/SECTION:.shared,RWS`), typed and synchronised.
///
/// - [`open_or_create`](Self::open_or_create) runs its initialiser
///   **exactly once** across all the processes racing to create the value;
///   nobody sees the value before it is initialised, and if the initialising
///   process dies halfway, the next opener initialises it again.
/// - For plain data (`T:` [`bytemuck::Pod`]), [`lock`](Self::lock) gives a
///   guard that dereferences to `&mut T` under the value's cross-process
///   mutex (with the owner-death semantics of [`Mutex`](super::Mutex)).
///   The processes sharing a value are cooperating processes of one user:
///   the guard trusts that they, too, touch the value only under the lock.
///   `Pod` means any bytes are a valid `T`, so even a value a dying process
///   left half-written is still a `T` (just not a consistent one: see
///   [`SharedGuard::owner_died`]).
/// - For values made of atomics ([`AtomicValue`]), [`get`](Self::get)
///   gives `&T` to use without the lock.
///
/// The header records the value's size, alignment and a type tag (by
/// default `std::any::type_name::<T>()`; choose your own with the
/// `*_tagged` constructors to stay compatible across crate renames):
/// opening the name as a different type is refused
/// ([`SyncOpenError::LayoutMismatch`]).
///
/// Deriving `Pod` needs the derive macros: either depend on `bytemuck`
/// with its `derive` feature yourself, or use the re-export
/// ([`copydata::sync::bytemuck`](super::bytemuck)) and tell the derive
/// where it is, as here. Arrays of any length are `Pod` (copydata turns on
/// bytemuck's `min_const_generics`), and atomics are `Zeroable`
/// (`zeroable_atomics`).
///
/// ```no_run
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use copydata::sync::{Shared, bytemuck};
///
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[bytemuck(crate = "copydata::sync::bytemuck")]
/// #[repr(C)]
/// struct Stats { requests: u64, errors: u64 }
///
/// let stats = Shared::open_or_create("stats", || Stats { requests: 0, errors: 0 })?;
/// stats.lock()?.requests += 1;
///
/// // Atomics need no lock.
/// let hits = Shared::open_or_create("hits", || AtomicU64::new(0))?;
/// hits.get().fetch_add(1, Ordering::Relaxed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "data_seg")]
pub struct Shared<T> {
    lock: Lock,
    value: ViewMut,
    _t: PhantomData<T>,
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.lock.object().name.as_str();
        f.debug_struct("Shared").field("name", &name).field("type", &std::any::type_name::<T>()).finish()
    }
}

/// How [`Shared::with`] initialises a value no process has initialised.
enum Init<F> {
    /// It does not: the value must exist already.
    None,
    /// With the value a function returns.
    Value(F),
    /// With zero bytes, written in place.
    Zeroed,
}

/// A shared value is one of plain data ([`bytemuck::Pod`]) or of atomics
/// ([`AtomicValue`]): both are [`bytemuck::Zeroable`], which keeps out
/// types whose bytes mean nothing in another process, such as `String`
/// or `Box` (pointers into the creator's heap).
impl<T: bytemuck::Zeroable + Send + Sync + 'static> Shared<T> {
    fn offset() -> usize {
        HEADER_LEN.next_multiple_of(align_of::<T>())
    }

    /// Opens the value `name`, creating and initialising it with `init` if
    /// no process holds it. The type tag is `std::any::type_name::<T>()`.
    ///
    /// `init` returns the value, which may pass through the stack: for a
    /// value of megabytes, use [`open_or_create_zeroed`](Self::open_or_create_zeroed).
    pub fn open_or_create(name: &str, init: impl FnOnce() -> T) -> Result<Shared<T>, SyncOpenError> {
        Self::open_or_create_tagged(name, std::any::type_name::<T>(), init)
    }

    /// [`open_or_create`](Self::open_or_create) with a type tag of your own.
    pub fn open_or_create_tagged(name: &str, tag: &str, init: impl FnOnce() -> T) -> Result<Shared<T>, SyncOpenError> {
        Self::with(name, tag, Init::Value(init))
    }

    /// Opens the value `name`, creating it all zeros if no process holds
    /// it. The zeros are written in place, in shared memory: no `T` is ever
    /// built on the stack, so this suits values of any size (a table of
    /// megabytes), which a closure returning the value may not in a debug
    /// build.
    ///
    /// ```no_run
    /// use copydata::sync::Shared;
    ///
    /// // 64 MiB of counters, shared by every process that opens "table".
    /// let table = Shared::<[u64; 8 << 20]>::open_or_create_zeroed("table")?;
    /// table.lock()?[12] += 1;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create_zeroed(name: &str) -> Result<Shared<T>, SyncOpenError> {
        Self::open_or_create_zeroed_tagged(name, std::any::type_name::<T>())
    }

    /// [`open_or_create_zeroed`](Self::open_or_create_zeroed) with a type
    /// tag of your own.
    pub fn open_or_create_zeroed_tagged(name: &str, tag: &str) -> Result<Shared<T>, SyncOpenError> {
        Self::with(name, tag, Init::<fn() -> T>::Zeroed)
    }

    /// Opens the existing value `name` ([`SyncOpenError::NotFound`] if no
    /// process holds it, or it has not been initialised yet).
    pub fn open(name: &str) -> Result<Shared<T>, SyncOpenError> {
        Self::open_tagged(name, std::any::type_name::<T>())
    }

    /// [`open`](Self::open) with a type tag of your own.
    pub fn open_tagged(name: &str, tag: &str) -> Result<Shared<T>, SyncOpenError> {
        Self::with(name, tag, Init::<fn() -> T>::None)
    }

    fn with(name: &str, tag: &str, init: Init<impl FnOnce() -> T>) -> Result<Shared<T>, SyncOpenError> {
        let mismatch = |reason: String| SyncOpenError::LayoutMismatch { name: name.into(), reason };
        if align_of::<T>() > MAX_ALIGN {
            return Err(mismatch(format!("an alignment of {} (at most {MAX_ALIGN})", align_of::<T>())));
        }
        let (offset, size) = (Self::offset(), size_of::<T>());
        let len = offset + size.max(1);
        let obj = Object::open(name, ObjectKind::Shared, len as u64, !matches!(init, Init::None))?;
        let h = &obj.header;
        header::claim_u64(h, VALUE_SIZE, size as u64 + 1)
            .map_err(|found| mismatch(format!("it holds {} bytes, this type has {size}", found.saturating_sub(1))))?;
        header::claim_u32(h, VALUE_ALIGN, align_of::<T>() as u32)
            .map_err(|found| mismatch(format!("it is aligned to {found}, this type to {}", align_of::<T>())))?;
        header::claim_u64(h, VALUE_TAG, tag_hash(tag))
            .map_err(|_| mismatch(format!("it was made with another type tag (this one is {tag:?})")))?;
        if obj.section().len() < len as u64 {
            return Err(mismatch(format!("it is {} bytes long, this type needs {len}", obj.section().len())));
        }
        let value = obj.section().map_mut(offset as u64, size.max(1)).map_err(|e| obj.io(std::io::Error::other(e)))?;
        let shared = Shared { lock: super::Lock::new(obj)?, value, _t: PhantomData };
        if header::u32_at(&shared.lock.object().header, VALUE_READY).load(Ordering::Acquire) == 1 {
            return Ok(shared);
        }
        // Not initialised yet (or its initialiser died): initialise it under
        // the lock, unless someone else did meanwhile.
        let guard = shared.lock.acquire(None, false).map_err(|e| shared.lock.object().io(e.into()))?;
        let ready = header::u32_at(&shared.lock.object().header, VALUE_READY);
        if ready.load(Ordering::Acquire) != 1 {
            let at = shared.value.as_mut_ptr().cast::<T>();
            match init {
                Init::None => return Err(SyncOpenError::NotFound { name: name.into() }),
                Init::Value(init) => {
                    let v = init();
                    // SAFETY:
                    // - `at` is the start of a writable view of at least
                    //   `size_of::<T>()` bytes, aligned for `T` (page-aligned
                    //   mapping, offset a multiple of the alignment);
                    // - we hold the lock and the value is not ready, so no
                    //   process reads or writes it now; `write` drops nothing
                    //   that was there.
                    unsafe { at.write(v) };
                }
                // SAFETY: `at` as above, writable for one `T`, which nobody
                // reads or writes now; all-zero bytes are a valid `T`
                // (`T: Zeroable`). An initialiser that died may have left
                // anything there, so the zeros are written, not assumed.
                Init::Zeroed => unsafe { at.write_bytes(0, 1) },
            }
            ready.store(1, Ordering::Release);
            // A fresh value: whoever died before left nothing to repair.
            header::u32_at(&shared.lock.object().header, INCONSISTENT).store(0, Ordering::SeqCst);
        }
        drop(guard);
        Ok(shared)
    }

    /// The value's name.
    pub fn name(&self) -> &str {
        self.lock.object().name.as_str()
    }

    fn ptr(&self) -> *mut T {
        self.value.as_mut_ptr().cast()
    }
}

impl<T: AtomicValue> Shared<T> {
    /// The value, for atomic access without the lock.
    pub fn get(&self) -> &T {
        // SAFETY:
        // - the value is initialised (the constructor returned only once
        //   `ready` was set) and lives as long as `self` keeps it mapped;
        // - `T` is made only of atomics (`AtomicValue`), so other processes
        //   changing it concurrently is not a data race, and it is never
        //   dropped.
        unsafe { &*self.ptr() }
    }
}

impl<T: bytemuck::Pod + Send + Sync + 'static> Shared<T> {
    /// Waits for the value's lock, however long it takes (the value's
    /// mutex: `WaitForSingleObject` / `pthread_mutex_lock`).
    #[doc(alias = "WaitForSingleObject")]
    #[doc(alias = "pthread_mutex_lock")]
    pub fn lock(&self) -> Result<SharedGuard<'_, T>, LockError> {
        self.guard(self.lock.acquire(None, false)?)
    }

    /// Takes the lock if it is free now, else [`LockError::WouldBlock`].
    pub fn try_lock(&self) -> Result<SharedGuard<'_, T>, LockError> {
        self.guard(self.lock.acquire(None, true)?)
    }

    /// Waits at most `timeout` for the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<SharedGuard<'_, T>, LockError> {
        self.guard(self.lock.acquire(deadline(timeout), false)?)
    }

    fn guard<'a>(&'a self, raw: RawGuard<'a>) -> Result<SharedGuard<'a, T>, LockError> {
        Ok(SharedGuard { raw, ptr: self.ptr(), _t: PhantomData })
    }
}

/// The locked value of a [`Shared`]; dereferences to `T`, unlocks on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SharedGuard<'a, T> {
    raw: RawGuard<'a>,
    ptr: *mut T,
    _t: PhantomData<&'a mut T>,
}

impl<T> SharedGuard<'_, T> {
    /// Whether a process died holding this lock and nobody has marked the
    /// value consistent since (`WAIT_ABANDONED` / `EOWNERDEAD`; see
    /// [`Mutex`](super::Mutex)).
    #[doc(alias = "WAIT_ABANDONED")]
    #[doc(alias = "EOWNERDEAD")]
    pub fn owner_died(&self) -> bool {
        self.raw.owner_died()
    }

    /// Declares the value consistent again (after repairing it).
    pub fn mark_consistent(&mut self) {
        self.raw.mark_consistent();
    }
}

impl<T: bytemuck::Pod> Deref for SharedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY:
        // - `ptr` is the initialised, aligned value, mapped while the
        //   `Shared` (which this guard borrows) lives;
        // - the lock is held: cooperating processes do not touch the value
        //   meanwhile (the documented contract of `Shared::lock`);
        // - `T: Pod`: whatever bytes are there form a valid `T`.
        unsafe { &*self.ptr }
    }
}

impl<T: bytemuck::Pod> DerefMut for SharedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference
        // this process hands out while the lock is held.
        unsafe { &mut *self.ptr }
    }
}

impl<T: bytemuck::Pod + fmt::Debug> fmt::Debug for SharedGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGuard").field("value", &**self).field("owner_died", &self.owner_died()).finish()
    }
}
