//! `copydata.Section` and its views, exported through the buffer protocol.
//!
//! A buffer handed to Python points into a mapping, and the mapping must
//! outlive every consumer of the buffer (a `memoryview`, a numpy array, ...).
//! Both exporters guarantee it:
//!
//! - a `View` (what `Section.map` wraps in a memoryview) owns its mapping,
//!   and every buffer it exports holds a reference to it;
//! - a `Section` exports a mapping of the whole section, counts its exports,
//!   and keeps that mapping after `close()` until the last one is released.
//!
//! Both types define `__releasebuffer__` (the Section's does the counting,
//! the View's nothing), so consumers that keep only the exporter and release
//! the buffer at once (numpy's `frombuffer`) wrap it in a memoryview first.

use std::ffi::c_int;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyMemoryView, PyTuple};

use crate::errors::{self, Kind};

/// A mapping of part of a section, readable or writable.
enum Mapped {
    Read(copydata::View),
    Write(copydata::ViewMut),
}

impl Mapped {
    fn of(py: Python<'_>, section: &copydata::Section, offset: u64, len: usize) -> PyResult<Mapped> {
        let mapped = match section.access() {
            copydata::Access::ReadOnly => section.map(offset, len).map(Mapped::Read),
            copydata::Access::ReadWrite => section.map_mut(offset, len).map(Mapped::Write),
        };
        mapped.map_err(|e| errors::map_error(py, e))
    }

    fn view(&self) -> &copydata::View {
        match self {
            Mapped::Read(v) => v,
            Mapped::Write(v) => v,
        }
    }

    fn readonly(&self) -> bool {
        matches!(self, Mapped::Read(_))
    }

    /// Fills `buffer` with this mapping, owned by `owner`.
    ///
    /// # Safety
    ///
    /// - `buffer` is the `Py_buffer` the interpreter passed to
    ///   `bf_getbuffer`;
    /// - the mapping stays alive for as long as `owner` holds the export
    ///   (until its `__releasebuffer__` for this buffer).
    unsafe fn export(&self, buffer: *mut ffi::Py_buffer, flags: c_int, owner: &Bound<'_, PyAny>) -> PyResult<()> {
        if buffer.is_null() {
            return Err(PyBufferError::new_err("no buffer to fill"));
        }
        let view = self.view();
        let len = isize::try_from(view.len()).map_err(|_| PyBufferError::new_err("the view is too large"))?;
        // SAFETY:
        // - `buffer` is valid for writing (the caller's first promise);
        // - the pointer is valid for `len` bytes (writable ones unless
        //   `readonly`) while the mapping lives, which the caller's second
        //   promise extends to the export's whole life;
        // - `PyBuffer_FillInfo` takes its own reference to `owner`, refuses a
        //   writable request on read-only memory, and describes the memory
        //   as `len` unsigned bytes, contiguous;
        // - the thread is attached (we were given `owner`'s `Bound`).
        let status = unsafe {
            ffi::PyBuffer_FillInfo(
                buffer,
                owner.as_ptr(),
                view.as_ptr().cast_mut().cast(),
                len,
                c_int::from(self.readonly()),
                flags,
            )
        };
        if status == 0 { Ok(()) } else { Err(PyErr::fetch(owner.py())) }
    }
}

/// A section of shared memory: the Win32 file-mapping object.
///
/// `create` makes a named section of `size` bytes (zero-filled), which any
/// process of the same user can `open` by name (on Linux it is the POSIX
/// shared-memory object `/NAME`); `anonymous` makes one only this process
/// (and those it is handed to) can reach. A named section lives while any
/// process holds it.
///
/// The memory is reached without copying through the buffer protocol:
/// `memoryview(section)` covers the whole section, `section.map(offset,
/// length)` any part of it, and `numpy.frombuffer(section, dtype)` wraps it
/// as an array. Such buffers stay valid after `close()`, which releases the
/// handle; the memory is unmapped once the last of them is released.
#[pyclass(weakref, module = "copydata", name = "Section")]
pub(crate) struct Section {
    /// `None` once closed. Shared with the sends that carry the section,
    /// so that a send can be interrupted (Ctrl-C) and finish in the
    /// background with its own reference, as other sends do.
    handle: Option<std::sync::Arc<copydata::Section>>,
    name: Option<String>,
    size: u64,
    readonly: bool,
    /// The whole section as exported to `memoryview(section)`. Behind a
    /// lock of its own, so that exporting and releasing need only a shared
    /// borrow: a call that holds the section (a send with sections) does
    /// not stop other threads from taking or releasing its buffers.
    exported: std::sync::Mutex<Exported>,
}

/// The whole section's mapping and its exports.
#[derive(Default)]
struct Exported {
    /// Mapped at the first export.
    whole: Option<Mapped>,
    /// Buffers of `whole` not released yet.
    count: usize,
}

impl Section {
    pub(crate) fn wrap(section: copydata::Section) -> Section {
        Section {
            name: section.name().map(str::to_owned),
            size: section.len(),
            readonly: section.access() == copydata::Access::ReadOnly,
            handle: Some(std::sync::Arc::new(section)),
            exported: Default::default(),
        }
    }

    /// [`wrap`](Self::wrap) as a Python object; a named section is closed
    /// at interpreter exit if still open then ([`crate::opened`]).
    pub(crate) fn wrap_py(py: Python<'_>, section: copydata::Section) -> PyResult<Py<Section>> {
        let named = section.name().is_some();
        let section = Section::wrap(section);
        if named { crate::opened(py, section) } else { Py::new(py, section) }
    }

    pub(crate) fn handle(&self, py: Python<'_>) -> PyResult<&copydata::Section> {
        self.shared(py).map(|h| &**h)
    }

    /// The handle, for a call that goes on with it after it returns (an
    /// interrupted send): `close()` then closes this object's reference,
    /// and the handle is closed once that call ends too.
    pub(crate) fn shared(&self, py: Python<'_>) -> PyResult<&std::sync::Arc<copydata::Section>> {
        self.handle.as_ref().ok_or_else(|| errors::raise(py, Kind::Closed, "the section is closed"))
    }

    fn too_large(py: Python<'_>, size: u64) -> PyErr {
        errors::raise(py, Kind::InvalidArgument, format!("{size} bytes do not fit in this process's address space"))
    }
}

#[pymethods]
impl Section {
    /// Creates the named section `name` of `size` bytes, zero-filled.
    /// Raises `AlreadyExists` while a live section has this name.
    #[staticmethod]
    fn create(py: Python<'_>, name: &str, size: u64) -> PyResult<Py<Section>> {
        let section = copydata::Section::create(name, size).map_err(|e| errors::create_error(py, e))?;
        Section::wrap_py(py, section)
    }

    /// Opens the live named section `name`, for reading only if `readonly`.
    /// Raises `NotFound` if there is none.
    #[staticmethod]
    #[pyo3(signature = (name, *, readonly = false))]
    fn open(py: Python<'_>, name: &str, readonly: bool) -> PyResult<Py<Section>> {
        let access = if readonly { copydata::Access::ReadOnly } else { copydata::Access::ReadWrite };
        let section = copydata::Section::open_with(name, access).map_err(|e| errors::open_error(py, e))?;
        Section::wrap_py(py, section)
    }

    /// Creates an anonymous section of `size` bytes, zero-filled.
    #[staticmethod]
    fn anonymous(py: Python<'_>, size: u64) -> PyResult<Section> {
        copydata::Section::anonymous(size).map(Section::wrap).map_err(|e| errors::create_error(py, e))
    }

    /// Makes a section over the whole of the existing regular file at
    /// `path` (str or path-like), of the file's current size: writes
    /// through its buffers reach the file (read-only if `readonly`).
    /// Raises `NotFound` if there is no such file, `InvalidArgument` for an
    /// empty file (size it first) or one that is not a regular file.
    #[staticmethod]
    #[pyo3(signature = (path, *, readonly = false))]
    fn file(py: Python<'_>, path: std::path::PathBuf, readonly: bool) -> PyResult<Section> {
        let access = if readonly { copydata::Access::ReadOnly } else { copydata::Access::ReadWrite };
        copydata::Section::from_path(path, access).map(Section::wrap).map_err(|e| errors::create_error(py, e))
    }

    /// A new handle to the same memory that can only read it, to hand out
    /// (to a child with `copydata.Popen`, or with a message): the receiver
    /// cannot turn it back into write access (memfd seals on Linux, the
    /// handle's access mask on Windows). This handle stays writable.
    fn read_only(&self, py: Python<'_>) -> PyResult<Py<Section>> {
        let section = self.handle(py)?.read_only().map_err(|e| errors::read_only_error(py, e))?;
        Section::wrap_py(py, section)
    }

    /// Whether the section's size is sealed (Linux: a memfd that cannot
    /// shrink, so a peer cannot truncate it under a mapping; always True
    /// on Windows, where a mapped section cannot shrink).
    #[getter]
    fn size_sealed(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.handle(py)?.is_size_sealed())
    }

    /// Whether the section's pages live in memory: anonymous and named
    /// sections, and files on a memory file system (tmpfs, ramfs,
    /// hugetlbfs; on Windows the paging file). False for a file on a disk,
    /// network or FUSE file system, whose reads can fail and kill this
    /// process (SIGBUS): refuse such sections from peers you do not trust.
    #[getter]
    fn memory_backed(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.handle(py)?.is_memory_backed())
    }

    /// The section's name (None for an anonymous section).
    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The size in bytes (on Windows a section opened by name reports its
    /// size rounded up to a whole page).
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    /// Whether the section may only be read.
    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.handle.is_none()
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        usize::try_from(self.size).map_err(|_| Section::too_large(py, self.size))
    }

    /// A memoryview of `length` bytes of the section from `offset` (to the
    /// end if `length` is None), writable unless the section is read-only.
    /// The offset needs no alignment. The view maps the memory itself: it
    /// stays valid after the section is closed, until it is released.
    #[pyo3(signature = (offset = 0, length = None))]
    fn map<'py>(&self, py: Python<'py>, offset: u64, length: Option<usize>) -> PyResult<Bound<'py, PyMemoryView>> {
        let handle = self.handle(py)?;
        let length = match length {
            Some(l) => l,
            None => {
                let rest = self.size.checked_sub(offset).ok_or_else(|| {
                    errors::raise(
                        py,
                        Kind::InvalidArgument,
                        format!("offset {offset} is past the end of the section of {} bytes", self.size),
                    )
                })?;
                usize::try_from(rest).map_err(|_| Section::too_large(py, rest))?
            }
        };
        let mapped = Mapped::of(py, handle, offset, length)?;
        let view = Bound::new(py, View { mapped, offset })?;
        PyMemoryView::from(view.as_any())
    }

    /// Releases this process's handle to the section (a named section
    /// disappears once no process holds it). Buffers already taken from the
    /// section stay valid until they are released; a send that carries the
    /// section keeps the handle until it ends. Closing twice does nothing.
    /// Raises `copydata.Error` while another thread's call holds the
    /// section (`send_section`, `Inheritance`): close it once that ends.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut this = slf.try_borrow_mut().map_err(|_| {
            errors::raise(
                slf.py(),
                Kind::Error,
                "the section is in use by a call in progress (send_section, Inheritance)",
            )
        })?;
        this.handle = None;
        let exported = this.exported.get_mut().unwrap_or_else(|e| e.into_inner());
        if exported.count == 0 {
            exported.whole = None;
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(slf: &Bound<'_, Self>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        Self::close(slf)?;
        Ok(false)
    }

    /// # Safety
    ///
    /// Called by the interpreter (`bf_getbuffer`) with the buffer to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, buffer: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let py = slf.py();
        let this = slf.try_borrow()?;
        let handle = this.handle(py)?;
        let mut exported = this.exported.lock().unwrap_or_else(|e| e.into_inner());
        if exported.whole.is_none() {
            let len = usize::try_from(this.size).map_err(|_| Section::too_large(py, this.size))?;
            exported.whole = Some(Mapped::of(py, handle, 0, len)?);
        }
        let whole = exported.whole.as_ref().expect("mapped just above");
        // SAFETY:
        // - `buffer` is the interpreter's (this method's contract);
        // - `whole` is dropped only when no export is left (`close`,
        //   `__releasebuffer__`), and the export is counted just below,
        //   under the same lock.
        unsafe { whole.export(buffer, flags, slf.as_any())? };
        exported.count += 1;
        Ok(())
    }

    /// # Safety
    ///
    /// Called by the interpreter (`bf_releasebuffer`) for a buffer this
    /// section exported.
    unsafe fn __releasebuffer__(&self, _buffer: *mut ffi::Py_buffer) {
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        exported.count = exported.count.saturating_sub(1);
        // (`close` takes the section mutably: no export or release runs
        // meanwhile, so `handle` cannot change under this lock.)
        if exported.count == 0 && self.handle.is_none() {
            exported.whole = None;
        }
    }

    fn __repr__(&self) -> String {
        let name = self.name.as_ref().map_or("anonymous".to_owned(), |n| format!("{n:?}"));
        let mut flags = String::new();
        if self.readonly {
            flags.push_str(", read-only");
        }
        if self.handle.is_none() {
            flags.push_str(", closed");
        }
        format!("Section({name}, {} bytes{flags})", self.size)
    }
}

/// The memory behind a `Section.map` memoryview: a mapping of part of a
/// section, alive while any buffer of it is.
#[pyclass(frozen, module = "copydata", name = "View")]
pub(crate) struct View {
    mapped: Mapped,
    offset: u64,
}

#[pymethods]
impl View {
    /// Where the view starts in its section.
    #[getter]
    fn offset(&self) -> u64 {
        self.offset
    }

    fn __len__(&self) -> usize {
        self.mapped.view().len()
    }

    /// # Safety
    ///
    /// Called by the interpreter (`bf_getbuffer`) with the buffer to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, buffer: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        // SAFETY:
        // - `buffer` is the interpreter's (this method's contract);
        // - the mapping is owned by the view, which the export holds a
        //   reference to until it is released.
        unsafe { slf.get().mapped.export(buffer, flags, slf.as_any()) }
    }

    /// # Safety
    ///
    /// Called by the interpreter (`bf_releasebuffer`). Nothing to do: the
    /// export's reference to the view is what kept the mapping alive.
    unsafe fn __releasebuffer__(&self, _buffer: *mut ffi::Py_buffer) {}

    fn __repr__(&self) -> String {
        format!("View(offset={}, {} bytes)", self.offset, self.mapped.view().len())
    }
}
