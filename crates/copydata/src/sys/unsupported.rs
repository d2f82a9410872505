//! Stub backend for platforms copydata does not support yet: everything
//! compiles, and every operation fails with an `Unsupported` error.

use std::fs::File;
use std::io;
use std::process::{Child, Command};
use std::sync::Arc;

use crate::error::{CreateError, InheritError, ListError, Listing, MapError, OpenError, ReadOnlyError, RemoveError};
use crate::name::Name;
use crate::section::{Access, SectionInfo};

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "copydata does not support this platform")
}

/// Never constructed: every constructor fails. (A struct rather than an
/// empty enum, so the portable code after a `?` does not count as unreachable.)
#[derive(Debug)]
pub(crate) struct Section {
    _private: (),
}

impl Section {
    pub(crate) fn anonymous(_size: u64) -> Result<Section, CreateError> {
        Err(CreateError::Unsupported)
    }
    pub(crate) fn create(_name: &Name, _size: u64, _options: &crate::SectionOptions) -> Result<Section, CreateError> {
        Err(CreateError::Unsupported)
    }
    pub(crate) fn open(_name: &Name, _options: &crate::SectionOptions) -> Result<Section, OpenError> {
        Err(OpenError::Unsupported)
    }
    pub(crate) fn open_or_create(
        _name: &Name,
        _size: u64,
        _options: &crate::SectionOptions,
    ) -> Result<(Section, bool), CreateError> {
        Err(CreateError::Unsupported)
    }
    pub(crate) fn from_file(_file: &File, _access: Access) -> Result<Section, CreateError> {
        Err(CreateError::Unsupported)
    }
    pub(crate) fn len(&self) -> u64 {
        unreachable!("no section exists on this platform")
    }
    pub(crate) fn size_sealed(&self) -> bool {
        unreachable!("no section exists on this platform")
    }
    pub(crate) fn memory_backed(&self) -> bool {
        unreachable!("no section exists on this platform")
    }
    pub(crate) fn access(&self) -> Access {
        unreachable!("no section exists on this platform")
    }
    pub(crate) fn read_only(&self) -> Result<Section, ReadOnlyError> {
        unreachable!("no section exists on this platform")
    }
    pub(crate) fn map(&self, _offset: u64, _len: usize, _access: Access) -> Result<(Arc<Mapping>, usize), MapError> {
        unreachable!("no section exists on this platform")
    }
}

/// Never constructed: only a `Section` could make one.
#[derive(Debug)]
pub(crate) struct Mapping {
    _private: (),
}

impl Mapping {
    pub(crate) fn ptr(&self) -> *mut u8 {
        unreachable!("no section exists on this platform")
    }
    pub(crate) fn len(&self) -> usize {
        unreachable!("no section exists on this platform")
    }
    pub(crate) fn flush(&self, _start: usize, _len: usize) -> io::Result<()> {
        unreachable!("no section exists on this platform")
    }
}

pub(crate) fn remove(_name: &Name) -> Result<(), RemoveError> {
    Err(RemoveError::Unsupported)
}

pub(crate) fn list() -> Result<Vec<SectionInfo>, ListError> {
    Err(ListError::Unsupported { what: Listing::Sections })
}

pub(crate) fn spawn_with_sections(_cmd: &mut Command, _sections: &[(&Section, Option<&Name>)]) -> io::Result<Child> {
    Err(unsupported())
}

pub(crate) fn prepare_inheritance(_sections: &[(&Section, Option<&Name>)]) -> io::Result<(Vec<Passed>, String)> {
    Err(unsupported())
}

/// What would be passed to a child: nothing here.
pub(crate) enum Passed {}

pub(crate) fn take_inherited(_token: &str) -> Result<Vec<(Section, Option<Name>)>, InheritError> {
    Err(InheritError::Unsupported)
}

/// Synchronisation objects: none on this platform.
pub(crate) mod sync {
    use std::io;
    use std::time::Instant;

    use crate::error::{ListError, Listing, LockError, SyncOpenError, WaitError};
    use crate::name::Name;
    use crate::section::Section;
    use crate::sync::header::ObjectKind;
    use crate::view::ViewMut;

    pub(crate) fn lock_holder() -> u64 {
        0
    }

    pub(crate) fn thread_may_point_into_lock(_holder: u64) -> bool {
        false
    }

    pub(crate) fn open_object(
        _object: &Name,
        _name: &str,
        _kind: ObjectKind,
        _size: u64,
        _create: bool,
    ) -> Result<(Section, bool), SyncOpenError> {
        Err(SyncOpenError::Unsupported)
    }

    pub(crate) fn list() -> Result<Vec<(&'static str, String)>, ListError> {
        Err(ListError::Unsupported { what: Listing::Objects })
    }

    #[derive(Debug)]
    pub(crate) struct RawMutex;

    impl RawMutex {
        pub(crate) fn attach(_header: &ViewMut, _object: &Name) -> io::Result<RawMutex> {
            Err(io::ErrorKind::Unsupported.into())
        }
        pub(crate) fn lock(&self, _h: &ViewMut, _d: Option<Instant>, _try: bool) -> Result<bool, LockError> {
            Err(LockError::Io(io::ErrorKind::Unsupported.into()))
        }
        pub(crate) fn unlock(&self, _h: &ViewMut) {}
    }

    #[derive(Debug)]
    pub(crate) struct RawEvent;

    impl RawEvent {
        pub(crate) fn attach(_header: &ViewMut, _object: &Name, _auto: bool) -> io::Result<RawEvent> {
            Err(io::ErrorKind::Unsupported.into())
        }
        pub(crate) fn set(&self, _h: &ViewMut) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        pub(crate) fn reset(&self, _h: &ViewMut) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        pub(crate) fn wait(
            &self,
            _h: &ViewMut,
            _d: Option<Instant>,
            _between: crate::sync::Between<'_>,
        ) -> Result<(), WaitError> {
            Err(WaitError::Io(io::ErrorKind::Unsupported.into()))
        }
    }
}

/// `fork`s since this process's line first used copydata: none here (see
/// `crate::fork`).
pub(crate) fn forks() -> u32 {
    0
}
