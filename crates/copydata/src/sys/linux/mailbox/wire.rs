//! The socket's frames (Unix stream socket, `SCM_RIGHTS` for descriptors).
//!
//! Every frame starts with a 32-byte header (little-endian):
//!
//! ```text
//! magic:[u8;4] b0:u8 b1:u8 0:u16 seq:u64 word:u64 len:u64
//! hello    "CDH2" wait mode, 0, protocol, 0, 0                      (sender, at set-up)
//! welcome  "CDA2" status, 0, protocol, max payload, reason length   (receiver; region + doorbell memfds)
//! attach   "CDX2" has buffer, sections, 0, buffer size, records length  (either side, beside a ring record)
//! ```
//!
//! An attachment carries a pool buffer's memfd and/or the sections of a
//! message: per section `len:u64 flags:u8 name_len:u8 name`, descriptors in
//! the same control message. A protocol-1 sender ("CDQ1" requests) is
//! answered with a protocol-1 refusal ("CDR1") that says why. Everything a
//! peer sends is checked before use: magic, counts, sizes, the number and
//! kind of descriptors, and the seals of a memfd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::fs::{self as rfs, MemfdFlags, SealFlags};
use rustix::io::Errno;

use super::super::scm::{self, Patience};
use super::super::{Section as SysSection, kind_of};
use crate::name::Name;
use crate::section::{Access, Section};

pub(crate) const HEADER: usize = 32;
pub(crate) const REQUEST: [u8; 4] = *b"CDQ1";
pub(crate) const REPLY: [u8; 4] = *b"CDR1";
/// The most sections one message may carry (one more descriptor may carry
/// the payload).
pub(crate) const MAX_SECTIONS: usize = scm::MAX_FDS - 1;
/// Status of a protocol-1 reply refusing the request.
pub(crate) const STATUS_REFUSED: u8 = 1;
const SECTION_RO: u8 = 1;
const SECTION_NAMED: u8 = 2;
const MAX_REASON: u64 = 4096;

/// A parsed header: the four numbers after the magic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) magic: [u8; 4],
    pub(crate) b0: u8,
    pub(crate) b1: u8,
    pub(crate) seq: u64,
    pub(crate) word: u64,
    pub(crate) len: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..4].copy_from_slice(&self.magic);
        h[4] = self.b0;
        h[5] = self.b1;
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.word.to_le_bytes());
        h[24..32].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER]) -> Header {
        let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        Header {
            magic: h[..4].try_into().expect("4 bytes"),
            b0: h[4],
            b1: h[5],
            seq: word(8),
            word: word(16),
            len: word(24),
        }
    }
}

/// Sends one frame: header, body, and descriptors with the first byte.
pub(crate) fn send_frame(sock: impl AsFd, header: &Header, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    scm::send_with_fds(sock, &[&header.encode(), body], fds)
}

/// [`send_frame`] waiting for room by `until` at most (see
/// `scm::send_with_fds_until`).
pub(crate) fn send_frame_until(
    sock: impl AsFd,
    header: &Header,
    body: &[u8],
    fds: &[BorrowedFd<'_>],
    until: Option<Instant>,
) -> io::Result<()> {
    scm::send_with_fds_until(sock, &[&header.encode(), body], fds, until)
}

/// Receives a header and the descriptors that came with it (Unix sockets
/// among them only where `sockets` allows, see `scm::recv_with_fds`).
/// `Ok(None)` is a clean end of stream before a frame.
pub(crate) fn recv_header(
    sock: impl AsFd,
    patience: Patience,
    sockets: bool,
) -> io::Result<Option<(Header, Vec<OwnedFd>)>> {
    let mut head = [0u8; HEADER];
    let (bytes, fds) = scm::recv_with_fds(sock, &mut head, patience, sockets)?;
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if bytes < HEADER {
        scm::close_elsewhere(fds);
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short header ({bytes} bytes)")));
    }
    Ok(Some((Header::decode(&head), fds)))
}

pub(crate) fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// Copies `data` into a new memfd and seals it against every change, so the
/// receiver can read it in place.
pub(crate) fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = rfs::memfd_create("copydata-payload", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rfs::ftruncate(&fd, data.len() as u64)?;
    let mut at = 0;
    while at < data.len() {
        at += rustix::io::pwrite(&fd, &data[at..], at as u64)?;
    }
    rfs::fcntl_add_seals(&fd, SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// The section records of a request, and the descriptors to send with them.
pub(crate) fn encode_sections(sections: &[&Section]) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    if sections.len() > MAX_SECTIONS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_SECTIONS} sections per message"),
        ));
    }
    let mut records = Vec::new();
    let mut fds = Vec::with_capacity(sections.len());
    for s in sections {
        let mut flags = 0;
        if s.access() == Access::ReadOnly {
            flags |= SECTION_RO;
        }
        let name = s.name().unwrap_or("");
        if !name.is_empty() {
            flags |= SECTION_NAMED;
        }
        records.extend_from_slice(&s.len().to_le_bytes());
        records.push(flags);
        records.push(name.len() as u8);
        records.extend_from_slice(name.as_bytes());
        fds.push(s.inner().transfer_fd()?);
    }
    Ok((records, fds))
}

/// The most bytes of section records an attachment of `count` sections
/// can have (each: 10 bytes and a name of at most 255).
pub(crate) fn max_section_records(count: usize) -> u64 {
    count as u64 * (10 + 255)
}

/// Parses `count` section records (all of `records`, read off the socket
/// beforehand) and pairs them with `fds`, validating each.
pub(crate) fn decode_sections(mut records: &[u8], count: usize, fds: Vec<OwnedFd>) -> io::Result<Vec<Section>> {
    if fds.len() != count {
        return Err(bad(format!("{} descriptors for {count} sections", fds.len())));
    }
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let (head, rest) = records.split_at_checked(n).ok_or_else(|| bad("section records cut short"))?;
        records = rest;
        Ok(head)
    };
    let mut out = Vec::with_capacity(count);
    for fd in fds {
        let rec = take(10)?;
        let len = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let flags = rec[8];
        let name = take(usize::from(rec[9]))?.to_vec();
        if flags & !(SECTION_RO | SECTION_NAMED) != 0 {
            return Err(bad(format!("unknown section flags {flags:#x}")));
        }
        let name = match (flags & SECTION_NAMED != 0, name.is_empty()) {
            (false, true) => None,
            (true, false) => {
                let s = std::str::from_utf8(&name).map_err(|_| bad("section name is not UTF-8"))?;
                Some(Name::new(s).map_err(|e| bad(format!("bad section name: {e}")))?)
            }
            _ => return Err(bad("section name flag and name disagree")),
        };
        let st = rfs::fstat(&fd)?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile || len == 0 || len > st.st_size as u64
        {
            return Err(bad("a section descriptor does not match its record"));
        }
        let mut access = super::super::access_of(&fd)?;
        if flags & SECTION_RO != 0 {
            access = Access::ReadOnly;
        }
        let kind = kind_of(&fd, name.is_some());
        out.push(Section::from_parts(SysSection::from_fd(fd, len, access, kind, name.as_ref()), name));
    }
    if !records.is_empty() {
        return Err(bad("section records longer than their sections"));
    }
    Ok(out)
}

/// Reads a refusal's reason text, by `deadline` at the latest.
pub(crate) fn read_reason(sock: impl AsFd, len: u64, deadline: Instant) -> io::Result<String> {
    if len > MAX_REASON {
        return Err(bad("refusal reason too long"));
    }
    let mut text = vec![0u8; len as usize];
    scm::recv_exact(sock, &mut text, Patience::Until(deadline))?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Whether an error means the peer is gone.
pub(crate) fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// Whether an error is an expired socket timeout.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::AGAIN.raw_os_error()) || e.kind() == io::ErrorKind::TimedOut
}
