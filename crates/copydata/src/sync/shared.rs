//! [`Shared<T>`]: a named, typed value in shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::header::{self, HEADER_LEN, INCONSISTENT, ObjectKind, VALUE_ALIGN, VALUE_READY, VALUE_SIZE, VALUE_TAG};
use super::{Holder, Lock, LockError, Object, RawGuard, SyncOpenError};
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

/// An initialiser's error.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The size and alignment of a value to open.
#[derive(Clone, Copy)]
enum Layout {
    /// As the caller's type says: claimed in the header, or checked
    /// against what another process claimed.
    Known { size: usize, align: usize },
    /// As the header says (the value must have been created).
    FromHeader,
}

/// Makes a value with `init` and moves it to `at`, in a frame of its own:
/// only this path needs stack room for a `T`. (Inlined, the value's
/// temporary would sit in the frame of every opener, `open_or_create_zeroed`
/// of a value larger than the stack included, whose frame is probed whole
/// on entry.)
///
/// # Safety
///
/// `at` is valid for a write of a `T` and aligned for it.
#[inline(never)]
unsafe fn write_made<T>(at: *mut T, init: impl FnOnce() -> T) {
    let v = init();
    // SAFETY: the caller's promise.
    unsafe { at.write(v) };
}

/// Opens the value `name` (the machinery of [`Shared`] and [`SharedBytes`]):
/// claims or checks its layout and tag; if it is not initialised yet (or
/// its initialiser died), creates it if `init` is given and initialises it
/// under the lock: zero bytes first, then `init` with the value's address.
/// An `init` that fails leaves it uninitialised for the next opener.
fn open_value(
    name: &str,
    layout: Layout,
    tag: &str,
    init: Option<impl FnOnce(*mut u8) -> Result<(), BoxError>>,
) -> Result<Opened, SyncOpenError> {
    let mismatch = |reason: String| SyncOpenError::LayoutMismatch { name: name.into(), reason };
    let not_found = || SyncOpenError::NotFound { name: name.into() };
    // Where the value starts and how long the object must be, if this
    // process can map that much.
    let span = |size: usize, align: usize| {
        let offset = HEADER_LEN.next_multiple_of(align);
        offset.checked_add(size.max(1)).filter(|&len| len <= isize::MAX as usize).map(|len| (offset, len))
    };
    let create = init.is_some();
    let (obj, size, align) = match layout {
        Layout::Known { size, align } => {
            let invalid = |reason: String| SyncOpenError::InvalidLayout { name: name.into(), reason };
            if !align.is_power_of_two() || align > MAX_ALIGN {
                return Err(invalid(format!(
                    "an alignment of {align} is refused: it must be a power of two, at most {MAX_ALIGN}"
                )));
            }
            let (_, len) = span(size, align).ok_or_else(|| invalid(format!("{size} bytes do not fit in memory")))?;
            (Object::open(name, ObjectKind::Shared, len as u64, create)?, size, align)
        }
        Layout::FromHeader => {
            let obj = Object::open(name, ObjectKind::Shared, 0, false)?;
            let size = header::u64_at(&obj.header, VALUE_SIZE).load(Ordering::Acquire);
            let align = header::u32_at(&obj.header, VALUE_ALIGN).load(Ordering::Acquire) as usize;
            // Not claimed yet: its creator has not got this far.
            if size == 0 || align == 0 {
                return Err(not_found());
            }
            let size = usize::try_from(size - 1)
                .ok()
                .filter(|&s| span(s, align).is_some())
                .ok_or_else(|| mismatch(format!("its header says {} bytes", size - 1)))?;
            if !align.is_power_of_two() || align > MAX_ALIGN {
                return Err(mismatch(format!("its header says an alignment of {align}")));
            }
            (obj, size, align)
        }
    };
    let h = &obj.header;
    let size_field = size as u64 + 1; // (fits: `span` bounds `size` by isize::MAX)
    let hash = tag_hash(tag);
    let (size_seen, align_seen, tag_seen) = if create {
        // A creator claims the layout, or meets the one another claimed:
        // field by field, stopping at the first that differs, so that a
        // racing creator of another layout claims nothing past the field it
        // lost (each field is then claimed by one that matched every field
        // before it, and the header holds one creator's whole layout).
        let size_seen = header::claim_u64(h, VALUE_SIZE, size_field);
        let align_seen = match size_seen {
            Ok(()) => header::claim_u32(h, VALUE_ALIGN, align as u32),
            Err(_) => Ok(()),
        };
        let tag_seen = match (size_seen, align_seen) {
            (Ok(()), Ok(())) => header::claim_u64(h, VALUE_TAG, hash),
            _ => Ok(()),
        };
        (size_seen, align_seen, tag_seen)
    } else {
        // An opener only compares: it must not claim a layout for a value
        // whose creator has not claimed its own yet.
        let seen_u64 = |at, want| match header::u64_at(h, at).load(Ordering::Acquire) {
            v if v == want => Ok(()),
            v => Err(v),
        };
        let seen_align = match header::u32_at(h, VALUE_ALIGN).load(Ordering::Acquire) {
            v if v == align as u32 => Ok(()),
            v => Err(v),
        };
        (seen_u64(VALUE_SIZE, size_field), seen_align, seen_u64(VALUE_TAG, hash))
    };
    if !create && matches!(size_seen, Err(0)) | matches!(align_seen, Err(0)) | matches!(tag_seen, Err(0)) {
        return Err(not_found());
    }
    size_seen.map_err(|found| mismatch(format!("it holds {} bytes, this type has {size}", found.saturating_sub(1))))?;
    align_seen.map_err(|found| mismatch(format!("it is aligned to {found}, this type to {align}")))?;
    tag_seen.map_err(|_| mismatch(format!("it was made with another type tag (this one is {tag:?})")))?;
    let (offset, len) = span(size, align).expect("checked above");
    if obj.section().len() < len as u64 {
        return Err(mismatch(format!("it is {} bytes long, this type needs {len}", obj.section().len())));
    }
    let value =
        obj.section().map_mut(offset as u64, size.max(1)).map_err(|e| obj.io(super::map_error(e, "its value")))?;
    let lock = Lock::new(obj)?;
    if header::u32_at(&lock.object().header, VALUE_READY).load(Ordering::Acquire) == 1 {
        return Ok(Opened { lock, value, size, align });
    }
    // Not initialised yet (or its initialiser died, or is at work now): an
    // opener that may not create says so at once, rather than wait for a
    // creator's initialiser (which may take any time, or never end).
    let Some(init) = init else { return Err(not_found()) };
    // A creator initialises it under the lock, unless someone else did
    // meanwhile.
    let guard = lock.acquire(None, false).map_err(|e| lock.object().io(e.into()))?;
    let ready = header::u32_at(&lock.object().header, VALUE_READY);
    if ready.load(Ordering::Acquire) != 1 {
        let at = value.as_mut_ptr();
        // SAFETY: `at` is the start of a writable view of at least `size`
        // bytes, which nobody reads or writes now (we hold the lock and the
        // value is not ready). An initialiser that died may have left
        // anything there, so the zeros are written, not assumed.
        unsafe { at.write_bytes(0, size) };
        init(at).map_err(|source| SyncOpenError::InitFailed { name: name.into(), source })?;
        ready.store(1, Ordering::Release);
        // A fresh value: whoever died before left nothing to repair.
        header::u32_at(&lock.object().header, INCONSISTENT).store(0, Ordering::SeqCst);
    }
    drop(guard);
    Ok(Opened { lock, value, size, align })
}

/// An opened value: its lock, its bytes and the layout it has.
struct Opened {
    lock: Lock,
    value: ViewMut,
    size: usize,
    align: usize,
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
        let layout = Layout::Known { size: size_of::<T>(), align: align_of::<T>() };
        let Opened { lock, value, .. } = match init {
            Init::None => open_value(name, layout, tag, None::<fn(*mut u8) -> Result<(), BoxError>>)?,
            Init::Value(init) => open_value(
                name,
                layout,
                tag,
                Some(|at: *mut u8| {
                    // SAFETY:
                    // - `at` is the start of a writable view of at least
                    //   `size_of::<T>()` bytes, aligned for `T` (page-aligned
                    //   mapping, offset a multiple of the alignment);
                    // - we hold the lock and the value is not ready, so no
                    //   process reads or writes it now; `write` drops nothing
                    //   that was there.
                    unsafe { write_made(at.cast::<T>(), init) };
                    Ok::<(), BoxError>(())
                }),
            )?,
            // The zeros are written by `open_value` before any initialiser.
            Init::Zeroed => open_value(name, layout, tag, Some(|_: *mut u8| Ok::<(), BoxError>(())))?,
        };
        Ok(Shared { lock, value, _t: PhantomData })
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

/// A named block of bytes shared by every process that opens the name,
/// with one-time initialisation and a lock: [`Shared`] for a layout known
/// only at run time, as other languages use it (Python's
/// `copydata.Shared`, C's `copydata_shared_*`).
///
/// It is the same object as a [`Shared<T>`]: opened with `T`'s size,
/// alignment and type tag (by default `std::any::type_name::<T>()`), a
/// `SharedBytes` reaches the bytes of a value a Rust program shares, and
/// the other way round. Its bytes are read and written under the lock
/// only: do not open a value that others use without the lock (an
/// [`AtomicValue`] through [`Shared::get`]) as `SharedBytes`.
///
/// ```no_run
/// use copydata::sync::SharedBytes;
///
/// // 16 bytes, aligned to 8, tagged "stats-v1"; the first process to get
/// // here fills them, exactly once across all processes.
/// let stats = SharedBytes::open_or_create_with("stats", 16, 8, "stats-v1", |bytes| {
///     bytes[..8].copy_from_slice(&1u64.to_le_bytes());
///     Ok::<(), std::io::Error>(())
/// })?;
/// let mut bytes = stats.lock()?;
/// let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
/// bytes[..8].copy_from_slice(&(n + 1).to_le_bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedBytes {
    lock: Lock,
    value: ViewMut,
    len: usize,
    align: usize,
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes").field("name", &self.name()).field("len", &self.len).finish()
    }
}

impl SharedBytes {
    /// Opens the value `name` of `len` bytes aligned to `align` (a power of
    /// two, at most 4096) with the type tag `tag`, creating it all zeros if
    /// no process holds it. Another layout or tag is refused
    /// ([`SyncOpenError::LayoutMismatch`]).
    pub fn open_or_create(name: &str, len: usize, align: usize, tag: &str) -> Result<SharedBytes, SyncOpenError> {
        Self::open_or_create_with(name, len, align, tag, |_| Ok::<(), BoxError>(()))
    }

    /// [`open_or_create`](Self::open_or_create), with `init` filling the
    /// bytes (zeros at first) when this process creates the value: it runs
    /// exactly once across all the processes racing to create it, under
    /// the value's lock, and nobody sees the bytes before it returns. If it
    /// fails ([`SyncOpenError::InitFailed`], with its error) or its process
    /// dies halfway, the value stays uninitialised and the next opener
    /// initialises it.
    pub fn open_or_create_with<E: Into<BoxError>>(
        name: &str,
        len: usize,
        align: usize,
        tag: &str,
        init: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<SharedBytes, SyncOpenError> {
        let layout = Layout::Known { size: len, align };
        let init = |at: *mut u8| {
            // SAFETY: `at` is the start of a writable view of `len` bytes
            // that nobody else reads or writes while the initialiser runs
            // (`open_value` holds the lock and the value is not ready).
            let bytes = unsafe { std::slice::from_raw_parts_mut(at, len) };
            init(bytes).map_err(Into::into)
        };
        let Opened { lock, value, .. } = open_value(name, layout, tag, Some(init))?;
        Ok(SharedBytes { lock, value, len, align })
    }

    /// Opens the existing value `name`, of whatever size and alignment it
    /// was made with, if its type tag is `tag`
    /// ([`SyncOpenError::NotFound`] if no process holds it, or it has not
    /// been initialised yet).
    pub fn open(name: &str, tag: &str) -> Result<SharedBytes, SyncOpenError> {
        let Opened { lock, value, size, align } =
            open_value(name, Layout::FromHeader, tag, None::<fn(*mut u8) -> Result<(), BoxError>>)?;
        Ok(SharedBytes { lock, value, len: size, align })
    }

    /// The value's name.
    pub fn name(&self) -> &str {
        self.lock.object().name.as_str()
    }

    /// The value's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the value has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The alignment it was made with.
    pub fn align(&self) -> usize {
        self.align
    }

    /// The address of the first byte, mapped while `self` lives. Reading
    /// or writing through it without holding the lock is up to the caller
    /// (other processes may change the bytes at any time).
    pub fn as_ptr(&self) -> *mut u8 {
        self.value.as_mut_ptr()
    }

    /// Waits for the value's lock, however long it takes.
    pub fn lock(&self) -> Result<SharedBytesGuard<'_>, LockError> {
        self.guard(self.lock.acquire(None, false)?)
    }

    /// Takes the lock if it is free now, else [`LockError::WouldBlock`].
    pub fn try_lock(&self) -> Result<SharedBytesGuard<'_>, LockError> {
        self.guard(self.lock.acquire(None, true)?)
    }

    /// Waits at most `timeout` for the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<SharedBytesGuard<'_>, LockError> {
        self.guard(self.lock.acquire(deadline(timeout), false)?)
    }

    fn guard<'a>(&'a self, raw: RawGuard<'a>) -> Result<SharedBytesGuard<'a>, LockError> {
        Ok(SharedBytesGuard { raw, ptr: self.as_ptr(), len: self.len })
    }
}

impl SharedBytes {
    /// Waits for the lock, however long it takes, and returns a guard that
    /// holds the value through an `Arc` (as [`Mutex::lock_arc`](super::Mutex::lock_arc):
    /// one that can be stored and moved, for code that locks and unlocks in
    /// separate calls).
    pub fn lock_arc(self: &Arc<Self>) -> Result<ArcSharedBytesGuard, LockError> {
        self.acquire_arc(None, false)
    }

    /// [`try_lock`](Self::try_lock), with an [`ArcSharedBytesGuard`].
    pub fn try_lock_arc(self: &Arc<Self>) -> Result<ArcSharedBytesGuard, LockError> {
        self.acquire_arc(None, true)
    }

    /// [`lock_timeout`](Self::lock_timeout), with an [`ArcSharedBytesGuard`].
    pub fn lock_arc_timeout(self: &Arc<Self>, timeout: Duration) -> Result<ArcSharedBytesGuard, LockError> {
        self.acquire_arc(deadline(timeout), false)
    }

    fn acquire_arc(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        try_only: bool,
    ) -> Result<ArcSharedBytesGuard, LockError> {
        // The lock stays taken when the guard goes: the Arc guard unlocks.
        std::mem::forget(self.lock.acquire(deadline, try_only)?);
        Ok(ArcSharedBytesGuard { shared: self.clone(), holder: Holder::here() })
    }
}

/// A held [`SharedBytes`] that keeps it alive through an `Arc` and may be
/// stored and moved to other threads; unlocks when dropped on the thread
/// (and in the process) that locked, as an
/// [`ArcMutexGuard`](super::ArcMutexGuard) does. From
/// [`SharedBytes::lock_arc`].
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArcSharedBytesGuard {
    shared: Arc<SharedBytes>,
    holder: Holder,
}

impl ArcSharedBytesGuard {
    /// The value this guard holds.
    pub fn shared(&self) -> &Arc<SharedBytes> {
        &self.shared
    }

    /// Whether this is the thread (and the process) that locked: where
    /// dropping the guard unlocks.
    pub fn is_mine(&self) -> bool {
        self.holder.is_current()
    }

    /// As [`SharedGuard::owner_died`].
    pub fn owner_died(&self) -> bool {
        self.shared.lock.inconsistent().load(Ordering::SeqCst) != 0
    }

    /// As [`SharedGuard::mark_consistent`].
    pub fn mark_consistent(&mut self) {
        self.shared.lock.inconsistent().store(0, Ordering::SeqCst);
    }

    /// The address of the first of the value's [`len`](SharedBytes::len)
    /// bytes. The lock is held while the guard lives (on its thread); the
    /// bytes stay mapped while the `SharedBytes` does.
    pub fn as_ptr(&self) -> *mut u8 {
        self.shared.as_ptr()
    }
}

impl Drop for ArcSharedBytesGuard {
    fn drop(&mut self) {
        if self.is_mine() {
            self.shared.lock.unlock();
        } else {
            self.holder.keep_if_pointed_into(&self.shared);
        }
    }
}

impl fmt::Debug for ArcSharedBytesGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArcSharedBytesGuard")
            .field("name", &self.shared.name())
            .field("owner_died", &self.owner_died())
            .field("mine", &self.is_mine())
            .finish()
    }
}

/// The locked bytes of a [`SharedBytes`]; dereferences to `[u8]`, unlocks
/// on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SharedBytesGuard<'a> {
    raw: RawGuard<'a>,
    ptr: *mut u8,
    len: usize,
}

impl SharedBytesGuard<'_> {
    /// As [`SharedGuard::owner_died`].
    pub fn owner_died(&self) -> bool {
        self.raw.owner_died()
    }

    /// As [`SharedGuard::mark_consistent`].
    pub fn mark_consistent(&mut self) {
        self.raw.mark_consistent();
    }
}

impl Deref for SharedBytesGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY:
        // - `ptr` is valid for `len` bytes, mapped while the `SharedBytes`
        //   (which this guard borrows) lives;
        // - the lock is held: cooperating processes do not touch the bytes
        //   meanwhile (the contract of `lock`, as for `Shared`); any bytes
        //   are valid `u8`s.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for SharedBytesGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference
        // this process hands out while the lock is held.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl fmt::Debug for SharedBytesGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytesGuard").field("len", &self.len).field("owner_died", &self.owner_died()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two creators of different layouts racing: the one that lost a field
    /// claims nothing after it, so the other, resuming, claims the rest of
    /// its own layout and succeeds.
    #[test]
    fn a_losing_creator_claims_nothing_past_the_field_it_lost() {
        let name = format!("copydata-unit-claim-race-{}", std::process::id());
        let no_init = |_: *mut u8| -> Result<(), BoxError> { Ok(()) };
        // Creator A (16 bytes, aligned to 8) has published the object and
        // claimed its size, then stalls.
        let len = HEADER_LEN.next_multiple_of(8) + 16;
        let a = Object::open(&name, ObjectKind::Shared, len as u64, true).unwrap();
        header::claim_u64(&a.header, VALUE_SIZE, 16 + 1).unwrap();
        // Creator B (32 bytes, aligned to 4, another tag) runs meanwhile.
        let b = open_value(&name, Layout::Known { size: 32, align: 4 }, "b", Some(no_init));
        assert!(matches!(b, Err(SyncOpenError::LayoutMismatch { .. })), "{:?}", b.err());
        assert_eq!(header::u32_at(&a.header, VALUE_ALIGN).load(Ordering::SeqCst), 0, "B claimed an alignment");
        assert_eq!(header::u64_at(&a.header, VALUE_TAG).load(Ordering::SeqCst), 0, "B claimed a tag");
        // A resumes.
        let resumed = open_value(&name, Layout::Known { size: 16, align: 8 }, "a", Some(no_init));
        assert!(resumed.is_ok(), "{:?}", resumed.err());
    }
}
