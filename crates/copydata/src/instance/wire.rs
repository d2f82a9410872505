//! The launch record a secondary sends its primary, and its decoding.
//!
//! Fixed-width little-endian fields, so any two builds agree on it:
//!
//! ```text
//! magic    4 bytes  "CDL1"
//! kind     u8       how OS strings are stored: 1 = bytes (Unix), 2 = UTF-16LE (Windows)
//! flags    u8       bit 0: a working directory follows
//! reserved u16      zero
//! argc     u32      then argc strings
//! cwd      string   if flags bit 0
//! envc     u32      then envc pairs of strings (name, value)
//! data     u64 length, then the bytes
//! ```
//!
//! A string is a `u32` byte length and its bytes: the OS string's own bytes
//! on Unix, its UTF-16 code units on Windows, so both round-trip exactly
//! (any bytes, unpaired surrogates). The record arrives from another
//! process: [`decode`] checks every length against what is left before it
//! takes anything. Each string costs an `OsString` (24 bytes on 64-bit
//! targets) besides its bytes, and the shortest is 4 bytes on the wire (a
//! record of empty strings would decode to about 7 times its size), so the
//! primary decodes with [`decode_within`], which charges every string and
//! refuses a record that would exceed the primary's limit.

use std::ffi::{OsStr, OsString};

const MAGIC: &[u8; 4] = b"CDL1";
const HAS_CWD: u8 = 1;

#[cfg(unix)]
const KIND: u8 = 1;
#[cfg(windows)]
const KIND: u8 = 2;
#[cfg(not(any(unix, windows)))]
const KIND: u8 = 3;

/// A launch as it travels: everything but the sender's pid, which the
/// primary takes from the OS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub args: Vec<OsString>,
    pub cwd: Option<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub data: Vec<u8>,
}

fn os_bytes(s: &OsStr) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStrExt;
        s.encode_wide().flat_map(u16::to_le_bytes).collect()
    }
    #[cfg(not(any(unix, windows)))]
    {
        s.to_string_lossy().into_owned().into_bytes()
    }
}

fn os_string(bytes: &[u8]) -> Result<OsString, String> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        Ok(OsString::from_vec(bytes.to_vec()))
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStringExt;
        if !bytes.len().is_multiple_of(2) {
            return Err(format!("a UTF-16 string of an odd {} bytes", bytes.len()));
        }
        let wide: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        Ok(OsString::from_wide(&wide))
    }
    #[cfg(not(any(unix, windows)))]
    {
        String::from_utf8(bytes.to_vec()).map(OsString::from).map_err(|e| e.to_string())
    }
}

fn put_str(out: &mut Vec<u8>, s: &OsStr) -> Result<(), String> {
    let bytes = os_bytes(s);
    let len = u32::try_from(bytes.len()).map_err(|_| format!("a string of {} bytes (at most 4 GiB)", bytes.len()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

fn count(n: usize, what: &str) -> Result<[u8; 4], String> {
    u32::try_from(n).map(u32::to_le_bytes).map_err(|_| format!("{n} {what}"))
}

/// Encodes a launch. Fails only for absurd sizes (a string over 4 GiB).
pub(crate) fn encode(r: &Record) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64 + r.data.len());
    out.extend_from_slice(MAGIC);
    out.push(KIND);
    out.push(if r.cwd.is_some() { HAS_CWD } else { 0 });
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&count(r.args.len(), "arguments")?);
    for a in &r.args {
        put_str(&mut out, a)?;
    }
    if let Some(cwd) = &r.cwd {
        put_str(&mut out, cwd)?;
    }
    out.extend_from_slice(&count(r.env.len(), "variables")?);
    for (k, v) in &r.env {
        put_str(&mut out, k)?;
        put_str(&mut out, v)?;
    }
    out.extend_from_slice(&(r.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&r.data);
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.0.len()).ok_or_else(|| {
            format!("{what} of {n} bytes runs past the end of the record ({} bytes left)", self.0.len())
        })?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    fn string(&mut self, what: &str) -> Result<OsString, String> {
        let len = self.u32(what)?;
        os_string(self.take(u64::from(len), what)?)
    }

    /// A count of items, each at least `min` bytes: more than the record
    /// could hold is refused before anything is allocated for them.
    fn count(&mut self, min: usize, what: &str) -> Result<usize, String> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(format!("{n} {what} cannot fit in the {} bytes left", self.0.len()));
        }
        Ok(n)
    }
}

/// Decodes a launch record, or says what is wrong with it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, String> {
    decode_within(bytes, u64::MAX)
}

/// [`decode`], refusing a record whose decoded form (its bytes, plus an
/// `OsString` for each string) would take more than `budget` bytes, before
/// allocating for it.
pub(crate) fn decode_within(bytes: &[u8], budget: u64) -> Result<Record, String> {
    const STRING: u64 = size_of::<OsString>() as u64;
    let mut cost = bytes.len() as u64;
    let mut charge = |n: usize, per: u64, what: &str| {
        cost = cost.saturating_add((n as u64).saturating_mul(per));
        if cost > budget {
            return Err(format!(
                "{n} {what} would take {cost} bytes decoded, more than the {budget} this primary takes"
            ));
        }
        Ok(())
    };
    let mut r = Reader(bytes);
    if r.take(4, "the magic")? != MAGIC {
        return Err("not a launch record (bad magic)".into());
    }
    let head = r.take(4, "the header")?;
    if head[0] != KIND {
        return Err(format!("a launch from another platform (string kind {}, this one uses {KIND})", head[0]));
    }
    if head[1] & !HAS_CWD != 0 || head[2] != 0 || head[3] != 0 {
        return Err(format!("unknown flags {:#04x} {:#04x}{:02x}", head[1], head[2], head[3]));
    }
    let argc = r.count(4, "arguments")?;
    charge(argc, STRING, "arguments")?;
    // Exactly `argc` (checked against the record): collecting an iterator
    // of unknown length would grow the vector by doubling, to twice that.
    let mut args = Vec::with_capacity(argc);
    for _ in 0..argc {
        args.push(r.string("an argument")?);
    }
    let cwd = if head[1] & HAS_CWD != 0 { Some(r.string("the working directory")?) } else { None };
    let envc = r.count(8, "variables")?;
    charge(envc, 2 * STRING, "variables")?;
    let mut env = Vec::with_capacity(envc);
    for _ in 0..envc {
        env.push((r.string("a variable's name")?, r.string("a variable's value")?));
    }
    let len = r.u64("the data length")?;
    let data = r.take(len, "the data")?.to_vec();
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the end of the record", r.0.len()));
    }
    Ok(Record { args, cwd, env, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tricky() -> Vec<OsString> {
        let mut v: Vec<OsString> = ["a b", "x|y", "", "\"quoted\"", "new\nline", "ünï", "\0nul", "tab\tsep"]
            .iter()
            .map(OsString::from)
            .collect();
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            v.push(OsString::from_vec(vec![0xff, 0xfe, b'r', b'a', b'w']));
        }
        #[cfg(windows)]
        {
            use std::os::windows::ffi::OsStringExt;
            v.push(OsString::from_wide(&[0xD800, u16::from(b'x')]));
        }
        v
    }

    #[test]
    fn a_record_that_decodes_beyond_the_budget_is_refused() {
        let r = Record { args: vec![OsString::new(); 1000], ..Record::default() };
        let bytes = encode(&r).unwrap();
        assert_eq!(decode_within(&bytes, 1_000_000).unwrap(), r);
        assert!(decode_within(&bytes, bytes.len() as u64 + 999 * 24).unwrap_err().contains("more than"));
    }

    #[test]
    fn round_trips_exactly() {
        let r = Record {
            args: tricky(),
            cwd: Some(OsString::from("/tmp/some dir")),
            env: vec![(OsString::from("FOO"), OsString::from("bar=baz")), (OsString::from("E"), OsString::new())],
            data: vec![0, 1, 2, 255],
        };
        assert_eq!(decode(&encode(&r).unwrap()).unwrap(), r);
        let empty = Record::default();
        assert_eq!(decode(&encode(&empty).unwrap()).unwrap(), empty);
    }

    #[test]
    fn refuses_every_truncation_and_garbage() {
        let r =
            Record { args: tricky(), cwd: Some("/x".into()), env: vec![("A".into(), "b".into())], data: vec![7; 9] };
        let bytes = encode(&r).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut other_kind = bytes.clone();
        other_kind[4] = 9;
        assert!(decode(&other_kind).is_err());
        let mut flags = bytes.clone();
        flags[5] = 0x80;
        assert!(decode(&flags).is_err());
        // A huge count is refused without allocating for it.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[KIND, 0, 0, 0]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().contains("cannot fit"));
        // Pseudo-random garbage never panics.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..2000usize {
            let mut g = MAGIC.to_vec();
            g.extend_from_slice(&[KIND, (len % 2) as u8, 0, 0]);
            while g.len() < len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                g.push((x % 7) as u8);
            }
            let _ = decode(&g);
        }
    }
}
