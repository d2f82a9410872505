//! The Windows backend's set-up envelopes and attachment lists: parsing of
//! what a peer wrote, kept portable (no Win32 here) so that it is tested
//! and fuzzed on every platform. All fields are fixed-width little-endian.
//!
//! ```text
//! hello   (sender → mailbox window, WM_COPYDATA):
//!         "CDH2" protocol:u32 wait:u32 0:u32 nonce:u64                      (24 bytes)
//! answer  (mailbox → sender window):
//!         "CDA2" status:u32 protocol:u32 bells:u32 nonce:u64 max_payload:u64 pid:u32 0:u32
//!         then, with status 0: region wake look bell×bells (u64 handle values)
//!         else: a reason (UTF-8, at most 4 KiB shown)
//! attachments (in a ring record):
//!         set:u64, then per handle: value:u64 len:u64 flags:u32 name_len:u32 name
//! ```

// Only the Windows backend (and the fuzz targets) read envelopes.
#![cfg_attr(not(windows), allow(dead_code))]

use crate::fast::conn::MAX_SECTIONS;
use crate::fast::serve::MAX_WORKERS;
use crate::name::MAX_NAME_LEN;

pub(crate) const HELLO_MAGIC: [u8; 4] = *b"CDH2";
pub(crate) const HELLO_LEN: usize = 24;
pub(crate) const ANSWER_MAGIC: [u8; 4] = *b"CDA2";
pub(crate) const STATUS_OK: u32 = 0;
/// An attachment's flags.
pub(crate) const ATTACH_RO: u32 = 1;
pub(crate) const ATTACH_NAMED: u32 = 2;
/// How much of a refusal's reason is kept.
pub(crate) const MAX_REASON: usize = 4096;

/// A little-endian reader over a peer's bytes: every read is checked.
pub(crate) struct In<'a>(pub(crate) &'a [u8]);

impl<'a> In<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// A hello's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) protocol: u32,
    pub(crate) wait: u32,
    pub(crate) nonce: u64,
}

/// Parses a hello (exactly [`HELLO_LEN`] bytes with its magic).
pub(crate) fn parse_hello(data: &[u8]) -> Result<Hello, String> {
    if data.len() != HELLO_LEN || !data.starts_with(&HELLO_MAGIC) {
        return Err(format!("a hello of {} bytes", data.len()));
    }
    let mut r = In(&data[4..]);
    let (protocol, wait, _zero, nonce) = (r.u32()?, r.u32()?, r.u32()?, r.u64()?);
    Ok(Hello { protocol, wait, nonce })
}

/// An answer's fixed part, and what follows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerHead<'a> {
    pub(crate) status: u32,
    pub(crate) protocol: u32,
    pub(crate) bells: u32,
    pub(crate) nonce: u64,
    pub(crate) max_payload: u64,
    pub(crate) pid: u32,
    pub(crate) rest: &'a [u8],
}

/// Parses an answer's fixed part.
pub(crate) fn parse_answer(data: &[u8]) -> Result<AnswerHead<'_>, String> {
    if !data.starts_with(&ANSWER_MAGIC) {
        return Err("not an answer (bad magic)".into());
    }
    let mut r = In(&data[4..]);
    let (status, protocol, bells, nonce, max_payload, pid, _zero) =
        (r.u32()?, r.u32()?, r.u32()?, r.u64()?, r.u64()?, r.u32()?, r.u32()?);
    Ok(AnswerHead { status, protocol, bells, nonce, max_payload, pid, rest: r.0 })
}

/// A refusal's reason, as far as it is kept.
pub(crate) fn reason(head: &AnswerHead<'_>) -> String {
    String::from_utf8_lossy(&head.rest[..head.rest.len().min(MAX_REASON)]).into_owned()
}

/// A handle value a Windows process can have: nonzero, a multiple of 4,
/// below 2^32 (also for 64-bit processes, handles fit in 32 bits).
pub(crate) fn plausible_handle(v: u64) -> bool {
    v != 0 && v.is_multiple_of(4) && v < 1 << 32
}

/// The handle values of an accepted answer: region, wake, look, then one
/// per doorbell; every count and value checked.
pub(crate) fn answer_values(head: &AnswerHead<'_>) -> Result<Vec<u64>, String> {
    let bells = head.bells as usize;
    if bells == 0 || bells > MAX_WORKERS || head.rest.len() != 8 * (3 + bells) {
        return Err(format!("an answer with {} bytes of handles for {bells} doorbells", head.rest.len()));
    }
    let mut r = In(head.rest);
    let values: Vec<u64> = (0..3 + bells).map(|_| r.u64().expect("length checked")).collect();
    if !values.iter().all(|&v| plausible_handle(v)) {
        return Err("the answer names impossible handle values".into());
    }
    Ok(values)
}

/// One handle in an attachment list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub(crate) value: u64,
    pub(crate) len: u64,
    pub(crate) read_only: bool,
    pub(crate) name: Option<String>,
}

/// Parses an attachment list: its set number, then the pool or one-shot
/// buffer (if `buffer`) and `sections` sections. A buffer must be read-only
/// and unnamed; names are valid UTF-8 of at most [`MAX_NAME_LEN`] bytes.
pub(crate) fn parse_attachments(
    inline: &[u8],
    buffer: bool,
    sections: usize,
) -> Result<(u64, Vec<Attachment>), String> {
    if sections > MAX_SECTIONS {
        return Err(format!("{sections} sections in one message"));
    }
    let mut r = In(inline);
    let set = r.u64()?;
    let mut out = Vec::with_capacity(usize::from(buffer) + sections);
    for i in 0..usize::from(buffer) + sections {
        let is_buffer = buffer && i == 0;
        let (value, len, flags, name_len) = (r.u64()?, r.u64()?, r.u32()?, r.u32()? as usize);
        if flags & !(ATTACH_RO | ATTACH_NAMED) != 0 || name_len > MAX_NAME_LEN {
            return Err(format!("attachment flags {flags:#x}, name of {name_len} bytes"));
        }
        let name = r.take(name_len)?;
        let name = match (flags & ATTACH_NAMED != 0, name_len) {
            (false, 0) => None,
            (true, n) if n > 0 && !is_buffer => {
                Some(std::str::from_utf8(name).map_err(|_| "a section name that is not UTF-8")?.to_owned())
            }
            _ => return Err("attachment name and flags disagree".into()),
        };
        if is_buffer && flags & ATTACH_RO == 0 {
            return Err("a writable buffer handle".into());
        }
        out.push(Attachment { value, len, read_only: flags & ATTACH_RO != 0, name });
    }
    if !r.0.is_empty() {
        return Err("stray bytes after the attachments".into());
    }
    Ok((set, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(protocol: u32, wait: u32, nonce: u64) -> Vec<u8> {
        let mut v = HELLO_MAGIC.to_vec();
        for w in [protocol, wait, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(&nonce.to_le_bytes());
        v
    }

    #[test]
    fn hellos() {
        assert_eq!(parse_hello(&hello(2, 1, 77)).unwrap(), Hello { protocol: 2, wait: 1, nonce: 77 });
        let h = hello(2, 1, 77);
        for cut in 0..h.len() {
            assert!(parse_hello(&h[..cut]).is_err());
        }
        let mut long = h.clone();
        long.push(0);
        assert!(parse_hello(&long).is_err());
    }

    #[test]
    fn answers() {
        let mut a = ANSWER_MAGIC.to_vec();
        for w in [STATUS_OK, 2, 2] {
            a.extend_from_slice(&w.to_le_bytes());
        }
        a.extend_from_slice(&9u64.to_le_bytes());
        a.extend_from_slice(&1000u64.to_le_bytes());
        a.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        for v in [4u64, 8, 12, 16, 20] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        let head = parse_answer(&a).unwrap();
        assert_eq!((head.nonce, head.pid, head.bells), (9, 7, 2));
        assert_eq!(answer_values(&head).unwrap(), [4, 8, 12, 16, 20]);
        for cut in 0..a.len() {
            if let Ok(h) = parse_answer(&a[..cut]) {
                assert!(answer_values(&h).is_err(), "cut at {cut}");
            }
        }
        let mut odd = a.clone();
        odd[a.len() - 8] = 5;
        assert!(answer_values(&parse_answer(&odd).unwrap()).is_err());
    }

    #[test]
    fn attachments() {
        let entry = |v: &mut Vec<u8>, value: u64, flags: u32, name: &[u8]| {
            v.extend_from_slice(&value.to_le_bytes());
            v.extend_from_slice(&4096u64.to_le_bytes());
            v.extend_from_slice(&flags.to_le_bytes());
            v.extend_from_slice(&(name.len() as u32).to_le_bytes());
            v.extend_from_slice(name);
        };
        let mut ok = 3u64.to_le_bytes().to_vec();
        entry(&mut ok, 8, ATTACH_RO, b"");
        entry(&mut ok, 12, ATTACH_NAMED, b"frames");
        let (set, list) = parse_attachments(&ok, true, 1).unwrap();
        assert_eq!(set, 3);
        assert_eq!(list[1].name.as_deref(), Some("frames"));
        for cut in 0..ok.len() {
            assert!(parse_attachments(&ok[..cut], true, 1).is_err(), "cut at {cut}");
        }
        let mut writable_buffer = 3u64.to_le_bytes().to_vec();
        entry(&mut writable_buffer, 8, 0, b"");
        assert!(parse_attachments(&writable_buffer, true, 0).is_err());
        let mut named_buffer = 3u64.to_le_bytes().to_vec();
        entry(&mut named_buffer, 8, ATTACH_RO | ATTACH_NAMED, b"x");
        assert!(parse_attachments(&named_buffer, true, 0).is_err());
        assert!(parse_attachments(&ok, false, MAX_SECTIONS + 1).is_err());
    }
}
