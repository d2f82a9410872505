//! Windows mailboxes: a message-only window per mailbox for lookup and
//! set-up, `WM_COPYDATA` from plain Win32 programs, and the shared region of
//! the fast path ([`crate::fast`]) between copydata processes.
//!
//! A mailbox is a message-only window (`HWND_MESSAGE`) of the class
//! `copydata.mailbox.NAME`, created and pumped by a thread of its own. The
//! name is held by the named mutex `Local\copydata.mailbox.NAME`, owned by
//! that thread: Windows abandons it when the process dies, so the next bind
//! takes the name over.
//!
//! **Plain Win32 programs** send `WM_COPYDATA` to the window as they always
//! have: the bytes become a [`Message`] for the handler (`dwData` is the
//! tag), the window procedure waits for the handler's answer and returns the
//! reply code as the `LRESULT`; reply bytes, if any, go back to the sender's
//! window (`wParam`) with `WM_COPYDATA`, the usual convention.
//!
//! **Copydata senders** set up a connection the Win32 way, once: the sender
//! finds the window with `FindWindowExW(HWND_MESSAGE, class)` and sends it a
//! `WM_COPYDATA` hello (magic `CDH2`: protocol, wait mode, a random nonce),
//! `wParam` being the sender's own message-only window (class
//! `copydata.sender`, one per sending thread). The receiver's window
//! procedure creates the connection's region and an event for waking the
//! sender, opens the sender's process (for pulling attachments and for
//! noticing its death) and answers with a `WM_COPYDATA` to the sender's
//! window (magic `CDA2`) carrying the values of its own handles on the
//! region, that event and the doorbell events of the mailbox's handler
//! threads, its pid and the payload limit. The sender accepts only the
//! answer that echoes the nonce of the hello it is sending right now,
//! *pulls* the handles out of the receiver's process with `DuplicateHandle`
//! (nothing is ever put into another process), and claims the connection
//! in the region's header. A receiver whose answer was not taken while it
//! waited gives the connection up there instead; whichever comes first
//! decides for both (see [`SETUP`]), so a sender's thread held up past the
//! receiver's wait neither adopts a connection the receiver dropped nor
//! leaves one behind in it. From then on messages and
//! replies travel through the region; a sender sleeps on its event and the
//! receiver's process handle (so it notices the receiver's death at once),
//! a handler thread on its doorbell. The mailbox's thread sleeps on its
//! window's messages, the senders' process handles and one more event
//! (*look*, also pushed into each sender), which a sender sets when it
//! drops its connection: so the mailbox notices a sender that has gone
//! without polling.
//!
//! Attachments (the handles of pool buffers, one-shot payloads and sections
//! inside messages) travel as handle values in the ring's records; the
//! side that takes them *pulls* them out of the peer's process with
//! `DuplicateHandle` (see [`Link::recv_aux`] for why that is safe). The
//! value named is a duplicate made for that record, which its owner keeps
//! until the peer says (in the region's header line, beside the
//! connection's "closed" flags) that it has pulled it; so each process only
//! ever owns handles it made itself or pulled itself. A sender's process that has exited can
//! no longer hand over what it had not handed over yet: its posts are
//! delivered, except those whose attachments were still in it.
//!
//! Envelopes of copydata 0.1 (`CDW1`) are answered with a refusal in their
//! own format ("incompatible peer"). All fields of the envelopes are
//! fixed-width little-endian, so 32- and 64-bit processes agree on them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    ERROR_TIMEOUT, GetLastError, HANDLE, HWND, LPARAM, LRESULT, SetLastError, WAIT_ABANDONED, WAIT_FAILED,
    WAIT_OBJECT_0, WAIT_TIMEOUT, WPARAM,
};
use windows_sys::Win32::System::DataExchange::COPYDATASTRUCT;
use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
use windows_sys::Win32::System::Memory::{FILE_MAP_READ, FILE_MAP_WRITE};
use windows_sys::Win32::System::Threading::{
    CreateEventW, CreateMutexW, EVENT_MODIFY_STATE, INFINITE, OpenProcess, PROCESS_DUP_HANDLE, PROCESS_SYNCHRONIZE,
    ReleaseMutex, SYNCHRONIZATION_SYNCHRONIZE, SetEvent, WaitForMultipleObjects, WaitForSingleObject,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    AllowSetForegroundWindow, CreateWindowExW, DefWindowProcW, DestroyWindow, DispatchMessageW, FindWindowExW,
    FindWindowW, GWLP_USERDATA, GetClassNameW, GetWindowLongPtrW, GetWindowThreadProcessId, HWND_MESSAGE, IsWindow,
    MSG, MWMO_INPUTAVAILABLE, MsgWaitForMultipleObjectsEx, PM_NOREMOVE, PM_REMOVE, PeekMessageW, QS_ALLINPUT,
    RegisterClassExW, SEND_MESSAGE_TIMEOUT_FLAGS, SMTO_ABORTIFHUNG, SMTO_BLOCK, SMTO_NORMAL, SendMessageTimeoutW,
    SetWindowLongPtrW, WM_CLOSE, WM_COPYDATA, WM_QUIT, WNDCLASSEXW,
};

use super::{
    SECTION_QUERY, Section as SysSection, current_process, duplicate, duplicate_from, handover, owned, raw, wide,
};
use crate::error::{BindError, ListError, ReplyError, SendError};
use crate::fast::conn::{MAX_SECTIONS, ServerConn};
use crate::fast::envelope::{
    self, ANSWER_MAGIC, ATTACH_NAMED, ATTACH_RO, HELLO_LEN, HELLO_MAGIC, MAX_REASON, STATUS_OK,
};
use crate::fast::region::{PROTOCOL, REGION_LEN, Region, Side};
use crate::fast::ring::LINE;
use crate::fast::serve::{Dispatch, MAX_WORKERS};
use crate::fast::{Bell, Park, Wait};
use crate::mailbox::{MailboxInfo, MailboxOptions, Message, Payload, Peer, Reply};
use crate::name::Name;
use crate::section::{Access, Section, SectionOptions};

const MAILBOX_CLASS_PREFIX: &str = "copydata.mailbox.";
const SENDER_CLASS: &str = "copydata.sender";

/// A sender's hello (`dwData` and magic).
const HELLO_TAG: usize = 0x4344_4832;
/// The hello's layout: see [`crate::fast::envelope`].
/// The receiver's answer to a hello (`dwData` and magic).
const ANSWER_TAG: usize = 0x4344_4132;
/// The fixed part of an answer: `magic, status: u32, protocol: u32,
/// doorbells: u32, nonce: u64, max_payload: u64, pid: u32, 0: u32`; then,
/// with `STATUS_OK`, `region: u64, wake: u64, look: u64, doorbell: u64 ×
/// doorbells` (handle values in the sender), else the reason (UTF-8).
const ANSWER_HEAD: usize = 40;
const STATUS_REFUSED: u32 = 1;
const STATUS_INCOMPATIBLE: u32 = 2;
/// Refused for now: the mailbox has as many connections as it takes.
const STATUS_BUSY: u32 = 3;
/// The mailbox is closing: as if it had gone a moment earlier.
const STATUS_CLOSING: u32 = 4;
/// What a sender's window returns for the answer it takes (handles and
/// all); anything else means the handles pushed with it were not taken.
const ACCEPTED: LRESULT = 0x4344_4f4b;
/// What a mailbox's window returns for a hello whose answer the sender did
/// not take while the mailbox waited for it (a sender's thread held up for
/// [`REPLY_TIMEOUT_MS`]): the mailbox has given the connection up, and the
/// sender may say hello again (a late answer is never taken). Not for an
/// answer that could not be delivered at all: that hello gets 0.
const ANSWER_ABANDONED: LRESULT = 0x4344_4142;

/// Envelopes of copydata 0.1 (protocol 1): a request, and the reply that
/// tells such a sender it speaks an older protocol.
const OLD_REQUEST_MAGIC: [u8; 4] = *b"CDW1";
const OLD_REPLY_MAGIC: [u8; 4] = *b"CDR1";
const OLD_REPLY_TAG: usize = 0x4344_5752;
const OLD_STATUS_REFUSED: u32 = 1;

/// How many senders' process handles the mailbox's thread waits on (with
/// `MsgWaitForMultipleObjectsEx`, at most 63 handles, two of them the look
/// and stop events); beyond that it also looks every `SWEEP_MS`.
const MAX_WATCHED: usize = 61;
const SWEEP_MS: u32 = 100;
/// How long the receiver waits for a sender's window to take an answer or
/// a reply; a live sender takes it at once (its thread is inside the
/// `SendMessage` to us, which handles sent messages). A window whose thread
/// does not handle messages is given up on sooner still (`SMTO_ABORTIFHUNG`),
/// so such a sender holds up the mailbox's other senders for half a second
/// at most.
const REPLY_TIMEOUT_MS: u32 = 500;

/// Words of this backend in the header line of a connection's region,
/// after the portable fields (which end at +36):
/// - `+40 receiver_closed: u32`, `+44 sender_closed: u32`: set by a side
///   that has dropped the connection;
/// - `+48 taken_from_sender: u64`, `+56 taken_from_receiver: u64`: the
///   number of the last attachment set the other side has pulled, so the
///   owner can close the handles it kept for it;
/// - `+80 setup_nonce: u64`: the nonce of the hello the region answers,
///   written by the receiver before it answers;
/// - `+88 setup: u32`: who decided the set-up, [`SETUP_ANSWERED`] until
///   either the sender takes the answer ([`SETUP_TAKEN`]) or the receiver
///   gives it up ([`SETUP_ABANDONED`]), each with one compare-and-swap from
///   `SETUP_ANSWERED`: whichever comes first decides for both, so a set-up
///   is made on both sides or on neither, however late the answer is taken.
const RECEIVER_CLOSED: usize = 40;
const SENDER_CLOSED: usize = 44;
const TAKEN_FROM_SENDER: usize = 48;
const TAKEN_FROM_RECEIVER: usize = 56;
const SETUP_NONCE: usize = 80;
const SETUP: usize = 88;
const SETUP_ANSWERED: u32 = 0;
const SETUP_TAKEN: u32 = 1;
const SETUP_ABANDONED: u32 = 2;

/// `handle: u64, len: u64, flags: u32, name_len: u32`, then the name.
const ATTACH_HEAD: usize = 24;

// ---------------------------------------------------------------- helpers

fn class_name(name: &Name) -> String {
    format!("{MAILBOX_CLASS_PREFIX}{name}")
}

fn module() -> HANDLE {
    // SAFETY: the handle of this executable; no preconditions.
    unsafe { GetModuleHandleW(std::ptr::null()) }
}

fn window_pid(hwnd: HWND) -> u32 {
    let mut pid = 0u32;
    // SAFETY: `pid` is a writable u32; an invalid window gives 0.
    unsafe { GetWindowThreadProcessId(hwnd, &mut pid) };
    pid
}

fn is_window(hwnd: HWND) -> bool {
    // SAFETY: IsWindow only inspects the value; any value is allowed.
    unsafe { IsWindow(hwnd) != 0 }
}

fn class_of(hwnd: HWND) -> String {
    let mut buf = [0u16; 256];
    // SAFETY: `buf` is writable for its length; an invalid window gives 0.
    let n = unsafe { GetClassNameW(hwnd, buf.as_mut_ptr(), buf.len() as i32) };
    String::from_utf16_lossy(&buf[..n.max(0) as usize])
}

/// Registers a window class for this process (once per name).
fn register_class(
    name: &str,
    proc_: unsafe extern "system" fn(HWND, u32, WPARAM, LPARAM) -> LRESULT,
) -> io::Result<()> {
    let class = wide(name);
    let wc = WNDCLASSEXW {
        cbSize: size_of::<WNDCLASSEXW>() as u32,
        lpfnWndProc: Some(proc_),
        hInstance: module(),
        lpszClassName: class.as_ptr(),
        // SAFETY: all-zero is valid for the remaining fields of this C struct.
        ..unsafe { std::mem::zeroed() }
    };
    // SAFETY: `wc` and the class name it points to outlive the call.
    if unsafe { RegisterClassExW(&wc) } == 0 {
        let e = io::Error::last_os_error();
        // Registered earlier by this process: fine.
        if e.raw_os_error() != Some(1410) {
            return Err(e);
        }
    }
    Ok(())
}

fn message_window(class: &str, title: &str) -> io::Result<HWND> {
    let (class, title) = (wide(class), wide(title));
    // SAFETY: the class is registered in this process; the strings outlive
    // the call; HWND_MESSAGE makes a message-only window.
    let hwnd = unsafe {
        CreateWindowExW(
            0,
            class.as_ptr(),
            title.as_ptr(),
            0,
            0,
            0,
            0,
            0,
            HWND_MESSAGE,
            std::ptr::null_mut(),
            module(),
            std::ptr::null(),
        )
    };
    if hwnd.is_null() { Err(io::Error::last_os_error()) } else { Ok(hwnd) }
}

/// `SendMessageTimeoutW(WM_COPYDATA)`: `Ok(LRESULT)` or the last error.
fn send_copydata(to: HWND, from: HWND, tag: usize, data: &[u8], timeout_ms: u32) -> io::Result<isize> {
    send_copydata_with(to, from, tag, data, timeout_ms, SMTO_NORMAL)
}

/// An answer or a reply from the receiver to a sender's window.
///
/// `SMTO_BLOCK`: the calling thread (the mailbox's, for an answer) handles
/// no other sent message meanwhile, so set-ups never nest in each other's
/// waits on its stack; the senders behind wait their turn, [`REPLY_TIMEOUT_MS`]
/// at most each. (No deadlock: a sender's window takes an answer without
/// sending anything back, and a live sender's thread is inside its own
/// `SendMessage` to us, which handles the answer.)
fn answer_copydata(to: HWND, from: HWND, tag: usize, data: &[u8]) -> io::Result<isize> {
    send_copydata_with(to, from, tag, data, REPLY_TIMEOUT_MS, SMTO_NORMAL | SMTO_ABORTIFHUNG | SMTO_BLOCK)
}

fn send_copydata_with(
    to: HWND,
    from: HWND,
    tag: usize,
    data: &[u8],
    timeout_ms: u32,
    flags: SEND_MESSAGE_TIMEOUT_FLAGS,
) -> io::Result<isize> {
    // `cbData` is 32 bits: a longer payload must not go out cut short.
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WM_COPYDATA carries at most 4 GiB - 1 bytes"))?;
    let cds = COPYDATASTRUCT { dwData: tag, cbData: len, lpData: data.as_ptr() as *mut c_void };
    let mut result = 0usize;
    // SAFETY:
    // - `cds` and the bytes it points to stay valid for the whole call (the
    //   system copies them into the receiver before it returns);
    // - `result` is a writable usize.
    let ok = unsafe {
        SetLastError(0);
        SendMessageTimeoutW(to, WM_COPYDATA, from as WPARAM, &cds as *const _ as LPARAM, flags, timeout_ms, &mut result)
    };
    if ok == 0 {
        // SAFETY: reads this thread's last-error value.
        let code = unsafe { GetLastError() };
        return Err(if code == 0 {
            io::Error::from_raw_os_error(ERROR_TIMEOUT as i32)
        } else {
            io::Error::from_raw_os_error(code as i32)
        });
    }
    Ok(result as isize)
}

/// The bytes of the `COPYDATASTRUCT` a `WM_COPYDATA` points to.
///
/// # Safety
///
/// `lparam` is the `lParam` of a `WM_COPYDATA` being handled: a pointer to
/// a `COPYDATASTRUCT` and its bytes, valid (and written by nobody) until
/// the window procedure returns, which bounds the result's use.
unsafe fn copydata_of<'a>(lparam: LPARAM) -> (usize, &'a [u8]) {
    // SAFETY: the caller's contract: a COPYDATASTRUCT valid for this call.
    let cds = unsafe { &*(lparam as *const COPYDATASTRUCT) };
    let data: &[u8] = if cds.cbData == 0 || cds.lpData.is_null() {
        &[]
    } else {
        // SAFETY: `cbData` bytes at `lpData`, owned by the system for this
        // call and written by nobody meanwhile (the caller's contract).
        unsafe { std::slice::from_raw_parts(cds.lpData as *const u8, cds.cbData as usize) }
    };
    (cds.dwData, data)
}

/// The longest wait passed to `SendMessageTimeoutW`: about 24 days ("no
/// timeout"). Larger values are taken as negative by some implementations.
const FOREVER_MS: u32 = i32::MAX as u32;

/// Milliseconds to `deadline`, rounded up (so a wait never ends early),
/// below `INFINITE`; `None` once it has passed.
fn ms_until(deadline: Instant) -> Option<u32> {
    let left = deadline.checked_duration_since(Instant::now()).filter(|l| !l.is_zero())?;
    Some(ms_ceil(left))
}

fn ms_ceil(d: Duration) -> u32 {
    d.as_nanos().div_ceil(1_000_000).min(u128::from(INFINITE - 1)) as u32
}

/// A little-endian writer and reader for envelopes and attachments.
struct Out(Vec<u8>);

impl Out {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// A new auto-reset event, not signalled, unnamed.
fn new_event() -> io::Result<OwnedHandle> {
    // SAFETY: default security, auto-reset, not signalled, no name.
    owned(unsafe { CreateEventW(std::ptr::null(), 0, 0, std::ptr::null()) })
}

fn set_event(event: &OwnedHandle) {
    // SAFETY: `event` is a live event handle of ours with EVENT_MODIFY_STATE.
    unsafe { SetEvent(raw(event)) };
}

/// Whether a process (or any waitable object) is signalled now: for a
/// process, whether it has ended.
fn signalled(object: &OwnedHandle) -> bool {
    // SAFETY: a live handle of ours with SYNCHRONIZE; a zero wait.
    unsafe { WaitForSingleObject(raw(object), 0) == WAIT_OBJECT_0 }
}

/// Opens process `pid` with the given rights.
fn open_process(pid: u32, rights: u32) -> io::Result<OwnedHandle> {
    // SAFETY: opens a process handle by id; no memory is passed.
    owned(unsafe { OpenProcess(rights, 0, pid) })
}

/// The value of one of our handles, as carried in envelopes and records.
fn value_of(h: &OwnedHandle) -> u64 {
    h.as_raw_handle() as usize as u64
}

// ---------------------------------------------------------------- doorbells

/// The doorbells of a mailbox's handler threads: one auto-reset event per
/// worker. Senders get a handle on each that allows setting it (and, with
/// the same right, resetting it: a sender could make the worker miss
/// another sender's ring, which the worker's one-second longest sleep
/// bounds). The flags that decide whether to ring live in each
/// connection's own region.
#[derive(Debug)]
pub(crate) struct Bells {
    events: Vec<OwnedHandle>,
    /// How often each bell was rung (the `seen` of the portable protocol).
    rung: Vec<AtomicU32>,
}

impl Bells {
    fn new(workers: usize) -> io::Result<Bells> {
        let n = workers.clamp(1, MAX_WORKERS);
        let events = (0..n).map(|_| new_event()).collect::<io::Result<Vec<_>>>()?;
        Ok(Bells { events, rung: (0..n).map(|_| AtomicU32::new(0)).collect() })
    }

    pub(crate) fn ring(&self, w: usize) {
        if let (Some(event), Some(rung)) = (self.events.get(w), self.rung.get(w)) {
            rung.fetch_add(1, Ordering::Release);
            set_event(event);
        }
    }

    pub(crate) fn load(&self, w: usize) -> u32 {
        self.rung.get(w).map_or(0, |r| r.load(Ordering::Acquire))
    }

    /// Sleeps until rung, or `timeout`. Returns `false` on timeout. A ring
    /// between `load` and this call left the event signalled, so it is not
    /// lost (`seen` only saves the wait).
    pub(crate) fn wait(&self, w: usize, seen: u32, timeout: Option<Duration>) -> bool {
        let Some(event) = self.events.get(w) else {
            std::thread::sleep(timeout.unwrap_or(Duration::from_millis(10)));
            return false;
        };
        if self.load(w) != seen {
            // Rung since `load`: take the event's signal too (if it is set
            // yet), so it does not cause a spurious wake-up later.
            // SAFETY: a live event handle of ours; a zero wait.
            unsafe { WaitForSingleObject(raw(event), 0) };
            return true;
        }
        let ms = timeout.map_or(INFINITE, ms_ceil);
        // SAFETY: a live event handle of ours.
        unsafe { WaitForSingleObject(raw(event), ms) != WAIT_TIMEOUT }
    }
}

/// The receiving side's handle on one message from a plain Win32 program:
/// the mailbox's window procedure waits for it to be answered.
#[derive(Debug)]
pub(crate) struct NativeResponder {
    /// The sender's window (`wParam`), for reply bytes.
    reply_to: Option<usize>,
    /// The mailbox's window.
    from: usize,
    tag: usize,
    done: mpsc::SyncSender<isize>,
}

impl NativeResponder {
    /// Sends the reply bytes (if any) back to the sender's window, then lets
    /// the window procedure return the code.
    pub(crate) fn reply(&self, reply: Reply) -> Result<(), ReplyError> {
        let mut result = Ok(());
        if let Some(to) = self.reply_to
            && !reply.data.is_empty()
        {
            result = answer_copydata(to as HWND, self.from as HWND, self.tag, &reply.data)
                .map(|_| ())
                .map_err(|_| ReplyError::SenderGone);
        }
        let _ = self.done.send(reply.code as isize);
        result
    }

    /// The window procedure returns 0.
    pub(crate) fn refuse(&self, _reason: &str) {
        let _ = self.done.send(0);
    }
}

// ---------------------------------------------------------------- link

/// The most attachment sets a receiver keeps for replies its sender has not
/// taken yet. An honest sender takes a reply's attachments as it reads the
/// reply, before its next call, so it leaves one or two; one that reads its
/// replies but never takes what they carry would otherwise make the
/// receiver keep a section per reply for ever.
const MAX_KEPT_FOR_SENDER: usize = 16;

/// The most attachment sets a sender keeps for records its receiver has not
/// acknowledged (`taken_from_sender`). An honest receiver acknowledges a
/// record's set before it takes the record off the request ring, so the
/// sets kept are at most the records in that ring (each at least one
/// 64-byte line); more is a receiver that takes records but never says so,
/// which would otherwise make the sender keep a handle (and the section
/// behind it) per message for as long as the connection lives.
const MAX_KEPT_FOR_RECEIVER: usize = crate::fast::region::REQ_CAP / crate::fast::ring::ALIGN;

/// Attachment handles this side made for the peer, kept until it has
/// pulled them.
#[derive(Debug, Default)]
struct Outgoing {
    /// The number of the last attachment set sent.
    sent: u64,
    kept: VecDeque<(u64, Vec<OwnedHandle>)>,
}

/// One side's hold on a connection.
#[derive(Debug)]
pub(crate) struct Link {
    side: Side,
    region: Region,
    /// The region's header line, mapped again for this backend's words.
    ctl: crate::view::ViewMut,
    /// The peer's process (`PROCESS_DUP_HANDLE | SYNCHRONIZE`): attachments
    /// are pulled out of it, and it is signalled when the peer dies.
    peer: OwnedHandle,
    /// The sender's wake event: the sender sleeps on it, the receiver sets it.
    wake: OwnedHandle,
    /// The sender's handles on the doorbells of the mailbox's workers.
    bells: Vec<OwnedHandle>,
    /// The mailbox's look event: set when the mailbox's thread should look
    /// at its connections (one was dropped, or attachments were pulled).
    look: Arc<OwnedHandle>,
    out: Mutex<Outgoing>,
    /// The number of the oldest set in `out.kept` (`u64::MAX`: none), so
    /// `prune` costs one load when there is nothing to close.
    oldest_kept: AtomicU64,
    /// The number of the last attachment set pulled from the peer.
    taken: AtomicU64,
    /// The peer's process id, as the set-up checked it.
    peer_pid: u32,
}

impl Link {
    fn new(
        side: Side,
        region: Region,
        (peer, peer_pid): (OwnedHandle, u32),
        wake: OwnedHandle,
        bells: Vec<OwnedHandle>,
        look: Arc<OwnedHandle>,
    ) -> io::Result<Link> {
        let ctl = Self::header_line(&region)?;
        Ok(Link::from_parts(side, region, ctl, (peer, peer_pid), wake, bells, look))
    }

    /// The region's header line, mapped for this backend's words.
    fn header_line(region: &Region) -> io::Result<crate::view::ViewMut> {
        region.section().map_mut(0, LINE).map_err(io::Error::other)
    }

    /// [`new`](Self::new) with the header line mapped already: nothing can
    /// fail any more (a sender makes its link only once the set-up is
    /// decided for both sides).
    fn from_parts(
        side: Side,
        region: Region,
        ctl: crate::view::ViewMut,
        (peer, peer_pid): (OwnedHandle, u32),
        wake: OwnedHandle,
        bells: Vec<OwnedHandle>,
        look: Arc<OwnedHandle>,
    ) -> Link {
        Link {
            side,
            region,
            ctl,
            peer,
            wake,
            bells,
            look,
            out: Mutex::new(Outgoing::default()),
            oldest_kept: AtomicU64::new(u64::MAX),
            taken: AtomicU64::new(0),
            peer_pid,
        }
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The peer's process id (the set-up checked that the peer's window
    /// belongs to it).
    pub(crate) fn peer_pid(&self) -> Option<u32> {
        Some(self.peer_pid)
    }

    fn u32_word(&self, offset: usize) -> &AtomicU32 {
        self.ctl.atomic_u32(offset).expect("a word of the header line")
    }

    fn u64_word(&self, offset: usize) -> &AtomicU64 {
        self.ctl.atomic_u64(offset).expect("a word of the header line")
    }

    fn closed_word(&self, side: Side) -> &AtomicU32 {
        self.u32_word(match side {
            Side::Receiver => RECEIVER_CLOSED,
            Side::Sender => SENDER_CLOSED,
        })
    }

    /// The word where the peer says how far it has pulled `owner`'s
    /// attachments.
    fn taken_word(&self, owner: Side) -> &AtomicU64 {
        self.u64_word(match owner {
            Side::Sender => TAKEN_FROM_SENDER,
            Side::Receiver => TAKEN_FROM_RECEIVER,
        })
    }

    fn peer_side(&self) -> Side {
        match self.side {
            Side::Sender => Side::Receiver,
            Side::Receiver => Side::Sender,
        }
    }

    /// Whether the peer has dropped the connection or died.
    fn peer_gone(&self) -> bool {
        self.closed_word(self.peer_side()).load(Ordering::Acquire) != 0 || signalled(&self.peer)
    }

    /// The objects an async sender waits on, for a reply or for room: its
    /// wake event and the receiver's process (signalled when it dies), as
    /// raw values for `sys::readiness::any_signalled`, valid while this
    /// link lives.
    #[cfg(feature = "tokio")]
    pub(crate) fn wait_objects(&self) -> [usize; 2] {
        [raw(&self.wake) as usize, raw(&self.peer) as usize]
    }

    /// Whether the peer is there and has not dropped the connection.
    pub(crate) fn alive(&self) -> bool {
        !self.peer_gone()
    }

    /// Whether either side has dropped the connection, or the peer died.
    fn closed(&self) -> bool {
        self.closed_word(self.side).load(Ordering::Acquire) != 0 || self.peer_gone()
    }

    /// The word in the region that counts the sender's wake-ups for `bell`
    /// (the request doorbells count in the receiver's own memory, [`Bells`]).
    fn word(&self, bell: Bell) -> Option<&AtomicU32> {
        match bell {
            Bell::Request => None,
            Bell::Reply => Some(self.region.reply_wake()),
            Bell::Space => Some(self.region.space_wake()),
        }
    }

    /// Bumps the bell's word and sets the event the other side sleeps on: a
    /// sender rings the doorbell of the worker serving the connection, a
    /// receiver the sender's wake event (one for both of its bells: a
    /// sender waits for one thing at a time).
    pub(crate) fn wake(&self, bell: Bell) {
        if let Some(word) = self.word(bell) {
            word.fetch_add(1, Ordering::Release);
        }
        match (self.side, bell) {
            (Side::Sender, Bell::Request) => {
                let w = self.region.worker().load(Ordering::Acquire) as usize;
                if let Some(event) = self.bells.get(w) {
                    set_event(event);
                }
            }
            (Side::Receiver, Bell::Reply | Bell::Space) => set_event(&self.wake),
            _ => {}
        }
        self.prune();
    }

    /// The value a sender puts in its parked flag before each park (the
    /// receiver sets the wake event for any).
    pub(crate) fn park_flag(_round: u32) -> u32 {
        crate::fast::PARKED
    }

    /// Sleeps on the wake event and the receiver's process (the sending side
    /// only), unless the bell's word has moved from `seen`. A wake between
    /// the caller's look and the wait left the auto-reset event signalled,
    /// so it is not lost either way.
    pub(crate) fn park(&self, bell: Bell, seen: u32, _flag: u32, deadline: Option<Instant>) -> Park {
        if self.side != Side::Sender {
            return Park::PeerGone;
        }
        let parked = loop {
            if self.peer_gone() {
                break Park::PeerGone;
            }
            if self.word(bell).is_some_and(|w| w.load(Ordering::Acquire) != seen) {
                break Park::Woken;
            }
            let ms = match deadline {
                None => INFINITE,
                Some(d) => match ms_until(d) {
                    Some(ms) => ms,
                    None => break Park::TimedOut,
                },
            };
            let objects = [raw(&self.wake), raw(&self.peer)];
            // SAFETY: two live handles of ours with SYNCHRONIZE, in an array
            // that outlives the call.
            let got = unsafe { WaitForMultipleObjects(2, objects.as_ptr(), 0, ms) };
            match got {
                WAIT_OBJECT_0 if self.closed_word(Side::Receiver).load(Ordering::Acquire) != 0 => {
                    break Park::PeerGone;
                }
                WAIT_OBJECT_0 => break Park::Woken,
                WAIT_TIMEOUT => {
                    // A deadline beyond INFINITE: wait again.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break Park::TimedOut;
                    }
                }
                _ => break Park::PeerGone,
            }
        };
        self.prune();
        parked
    }

    /// Marks the connection closed for the peer and wakes it: a sender
    /// parked for a reply sees `PeerGone`. Either way the mailbox's thread
    /// is told to look, and forgets the connection.
    pub(crate) fn shutdown(&self) {
        self.closed_word(self.side).store(1, Ordering::Release);
        if self.side == Side::Receiver {
            set_event(&self.wake);
        }
        set_event(&self.look);
    }

    /// Closes the attachment handles the peer has pulled.
    fn prune(&self) {
        let taken = self.taken_word(self.side).load(Ordering::Acquire);
        if self.oldest_kept.load(Ordering::Acquire) > taken {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        Self::prune_locked(&mut out, taken);
        self.oldest_kept.store(out.kept.front().map_or(u64::MAX, |(n, _)| *n), Ordering::Release);
    }

    fn prune_locked(out: &mut Outgoing, taken: u64) {
        while out.kept.front().is_some_and(|(n, _)| *n <= taken) {
            out.kept.pop_front();
        }
    }

    /// The receiver pulls attachments out of the sending process
    /// (`DuplicateHandle`), which must still be there.
    pub(crate) const ATTACHMENTS_NEED_SENDER: bool = true;

    /// Waits until no connection this process dropped keeps attachments
    /// for a receiver any more (every [`linger`](Self::linger) thread has
    /// ended), at most until `deadline`. Whether none is left.
    pub(crate) fn await_lingering(deadline: Option<Instant>) -> bool {
        await_count(&LINGERING, deadline)
    }

    /// The bytes `send_aux` returns: a set number, then per handle its value,
    /// length, flags and name.
    pub(crate) fn aux_len(buffer: bool, sections: &[&Section]) -> usize {
        8 + if buffer { ATTACH_HEAD } else { 0 }
            + sections.iter().map(|s| ATTACH_HEAD + s.name().map_or(0, str::len)).sum::<usize>()
    }

    /// Describes a buffer and sections for the peer, which pulls them out of
    /// this process. Each goes as a duplicate of its own, which this side
    /// keeps until the peer says it has pulled it (`taken_*` in the region):
    /// the caller may drop the section as soon as the record is queued (a
    /// one-shot payload, a post, a call that timed out), and the value named
    /// in the record must stay that section's until the peer took it. A
    /// buffer's duplicate is read-only, and so is a read-only section's.
    /// (`_until`: nothing here waits for the peer.)
    pub(crate) fn send_aux(
        &self,
        buffer: Option<&Section>,
        sections: &[&Section],
        _until: Option<Instant>,
    ) -> io::Result<Vec<u8>> {
        if sections.len() > MAX_SECTIONS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_SECTIONS} sections per message"),
            ));
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        Self::prune_locked(&mut out, self.taken_word(self.side).load(Ordering::Acquire));
        if self.side == Side::Receiver && out.kept.len() >= MAX_KEPT_FOR_SENDER {
            return Err(io::Error::other(format!(
                "the sender has not taken the attachments of {} replies",
                out.kept.len()
            )));
        }
        if self.side == Side::Sender && out.kept.len() >= MAX_KEPT_FOR_RECEIVER {
            return Err(io::Error::other(format!(
                "the receiver has not acknowledged the attachments of {} messages",
                out.kept.len()
            )));
        }
        let number = out.sent + 1;
        let mut bytes = Out(Vec::with_capacity(Self::aux_len(buffer.is_some(), sections)));
        bytes.u64(number);
        let mut kept = Vec::with_capacity(usize::from(buffer.is_some()) + sections.len());
        let items = buffer.map(|b| (b, true)).into_iter().chain(sections.iter().map(|s| (*s, false)));
        for (s, is_buffer) in items {
            let read_only = is_buffer || s.access() == Access::ReadOnly;
            let rights = if read_only { SECTION_QUERY | FILE_MAP_READ } else { 0 };
            let copy = owned(duplicate(s.inner().handle(), current_process(), rights, false)?)?;
            let name = if is_buffer { "" } else { s.name().unwrap_or("") };
            let mut flags = if read_only { ATTACH_RO } else { 0 };
            if !name.is_empty() {
                flags |= ATTACH_NAMED;
            }
            bytes.u64(value_of(&copy)).u64(s.len()).u32(flags).u32(name.len() as u32).bytes(name.as_bytes());
            kept.push(copy);
        }
        out.sent = number;
        out.kept.push_back((number, kept));
        self.oldest_kept.store(out.kept.front().map_or(u64::MAX, |(n, _)| *n), Ordering::Release);
        Ok(bytes.0)
    }

    /// Pulls the buffer and sections a record names out of the peer's
    /// process.
    ///
    /// Why a handle value from the record is safe to use: it is only ever
    /// interpreted *in the peer's process*, by `DuplicateHandle` out of the
    /// process handle this side opened at set-up for this connection. The
    /// region is mapped only by the two processes of the connection (the
    /// receiver made it, and the sender pulled it out of the receiver's
    /// process during a set-up the receiver answered to the window of the
    /// process it opened), so whatever wrote the record runs in that
    /// process or could already act for it. The handle made is this
    /// process's own, so a bogus value reaches at worst one of the peer's
    /// own objects (then checked to be a section of the announced size),
    /// never a handle this process owns.
    pub(crate) fn recv_aux(
        &self,
        inline: &[u8],
        buffer: bool,
        sections: usize,
    ) -> io::Result<(Option<Section>, Vec<Section>)> {
        if sections > MAX_SECTIONS {
            return Err(bad(format!("{sections} sections in one message")));
        }
        // The set number first: a set out of order is refused without being
        // counted as taken; any other fault ends the set (it is taken).
        let number =
            inline.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)).ok_or_else(|| bad("attachment: truncated"))?;
        let expected = self.taken.load(Ordering::Relaxed) + 1;
        if number != expected {
            return Err(bad(format!("attachment set {number} (expected {expected})")));
        }
        let take = |a: &envelope::Attachment| -> io::Result<Section> {
            // Never a pseudo-handle (-1, -2: the peer's own process or
            // thread, with all access if duplicated with the same access).
            if !envelope::plausible_handle(a.value) {
                return Err(bad(format!("attachment: handle value {:#x}", a.value)));
            }
            let access = if a.read_only { Access::ReadOnly } else { Access::ReadWrite };
            handover::duplicate_out_of(&self.peer, a.value, a.len, access, a.name.as_deref()).map_err(io::Error::from)
        };
        let pulled = (|| -> io::Result<(Option<Section>, Vec<Section>)> {
            let (_, list) =
                envelope::parse_attachments(inline, buffer, sections).map_err(|e| bad(format!("attachment: {e}")))?;
            let mut list = list.iter();
            let buf = if buffer {
                let b = take(list.next().expect("parsed"))?;
                // A pool buffer or one-shot payload is paging-file memory
                // the peer made for it; one backed by a file could fail to
                // page in mid-copy.
                if super::is_file_backed(b.inner().handle())? {
                    return Err(bad("a message buffer backed by a file"));
                }
                Some(b)
            } else {
                None
            };
            let secs = list.map(take).collect::<io::Result<Vec<_>>>()?;
            Ok((buf, secs))
        })();
        // Pulled (or failed for good): the peer may close what it kept for us
        // (a receiver does so when told to look; a sender at its next step).
        self.taken.store(number, Ordering::Relaxed);
        self.taken_word(self.peer_side()).store(number, Ordering::Release);
        match self.side {
            Side::Sender => set_event(&self.look),
            // A sender that dropped its end may linger for this.
            Side::Receiver => set_event(&self.wake),
        }
        pulled
    }

    /// A payload too large for the pool, in a section of its own. Windows
    /// cannot seal a section, so the peer copies it ([`frozen`](Self::frozen)).
    pub(crate) fn oneshot(data: &[u8]) -> io::Result<Section> {
        let s = Section::anonymous(data.len().max(1) as u64).map_err(io::Error::other)?;
        if !data.is_empty() {
            s.map_mut(0, data.len()).map_err(io::Error::other)?.write_at(0, data).map_err(io::Error::other)?;
        }
        Ok(s)
    }

    /// Never: a section's creator can always write it.
    pub(crate) fn frozen(_section: &Section) -> bool {
        false
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The peer must not wait for us any more (a receiver still delivers
        // what a sender left in the ring); what it has not pulled yet stays
        // open for it a while, on a thread of its own (never here: this may
        // be the mailbox's thread, which every set-up waits for).
        self.shutdown();
        self.linger();
    }
}

/// How long a dropped sender's attachments wait at most for the receiver
/// to pull them.
const LINGER: Duration = Duration::from_secs(30);

/// How long a dropped receiver's attachments (a large reply's buffer) wait
/// at most for the sender to pull them.
const RECEIVER_LINGER: Duration = Duration::from_secs(2);

/// The most receiver-side linger threads at once: beyond, a dropped
/// connection's attachments are closed at once (senders that never pull
/// what they are given cannot make a mailbox start threads without end).
const MAX_RECEIVER_LINGERING: usize = 64;

/// The most sender-side linger threads at once (a process's senders
/// together): beyond, a dropped connection's attachments are closed at once
/// and the receiver fails to pull them (a receiver that never says it
/// pulled what it was given cannot make a sending process start threads
/// without end, one per connection its calls gave up on).
const MAX_SENDER_LINGERING: usize = 256;

/// A count of linger threads while they live, and a signal as each ends:
/// the sending side's, which [`Link::await_lingering`] (a sender's flush)
/// waits for, and the receiving side's, which a dropped mailbox waits for
/// ([`Link::await_receiver_lingering`]).
type LingerCount = (Mutex<usize>, std::sync::Condvar);
static LINGERING: LingerCount = (Mutex::new(0), std::sync::Condvar::new());
static RECEIVER_LINGERING: LingerCount = (Mutex::new(0), std::sync::Condvar::new());

/// Counts a linger thread while it lives (also if it panics).
struct Lingering(&'static LingerCount);

impl Lingering {
    /// Counted, unless `limit` threads are counted already.
    fn start(count: &'static LingerCount, limit: usize) -> Option<Lingering> {
        let mut n = count.0.lock().unwrap_or_else(|e| e.into_inner());
        (*n < limit).then(|| {
            *n += 1;
            Lingering(count)
        })
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (count, ended) = self.0;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        ended.notify_all();
    }
}

/// Waits until `count` is 0, at most until `deadline`. Whether it is.
fn await_count(count: &'static LingerCount, deadline: Option<Instant>) -> bool {
    let (count, ended) = count;
    let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
    while *n > 0 {
        n = match deadline {
            None => ended.wait(n).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let Some(left) = d.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) else {
                    return false;
                };
                ended.wait_timeout(n, left).unwrap_or_else(|e| e.into_inner()).0
            }
        };
    }
    true
}

impl Link {
    /// Attachments the peer has not pulled yet must outlive this side's end
    /// of the connection: a receiver delivers what is in the ring after its
    /// sender has gone, and a sender takes a reply queued before its
    /// receiver closed; each needs the handles for it. A thread of their own
    /// keeps them until the peer has pulled them, dropped the connection or
    /// died (it sets an event after each pull: the sender's wake event, or
    /// the mailbox's look event), at most [`LINGER`] (a sender's) or
    /// [`RECEIVER_LINGER`] (a receiver's), so dropping a connection never
    /// waits. If this process exits first they are lost, like the messages
    /// of a killed sender, unless a `flush` (a sender) or the mailbox's drop
    /// (a receiver) waited for them.
    fn linger(&mut self) {
        let kept = {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            Self::prune_locked(&mut out, self.taken_word(self.side).load(Ordering::Acquire));
            std::mem::take(&mut out.kept)
        };
        if kept.is_empty() || self.peer_gone() {
            return;
        }
        let slice_looks = self.side == Side::Receiver;
        let (taken_at, closed_at, limit, count, max) = match self.side {
            Side::Sender => (TAKEN_FROM_SENDER, RECEIVER_CLOSED, LINGER, &LINGERING, MAX_SENDER_LINGERING),
            Side::Receiver => {
                (TAKEN_FROM_RECEIVER, SENDER_CLOSED, RECEIVER_LINGER, &RECEIVER_LINGERING, MAX_RECEIVER_LINGERING)
            }
        };
        let pulled_signal = match self.side {
            Side::Sender => self.wake.try_clone(),
            Side::Receiver => self.look.try_clone(),
        };
        let parts = (|| -> io::Result<_> {
            let header = self.region.section().map(0, LINE).map_err(io::Error::other)?;
            Ok((header, self.peer.try_clone()?, pulled_signal?))
        })();
        let Ok((header, peer, signal)) = parts else { return };
        // Counted from before the spawn, so a flush that follows this drop
        // sees it; a failed spawn drops the closure, and the count with it.
        let Some(counted) = Lingering::start(count, max) else {
            log::warn!("attachments of a closed connection dropped early: {max} connections linger already");
            return;
        };
        let spawned = std::thread::Builder::new().name("copydata-linger".into()).spawn(move || {
            let _counted = counted;
            let mut kept = kept;
            let deadline = Instant::now() + limit;
            loop {
                let taken = header.load_u64(taken_at, Ordering::Acquire).unwrap_or(u64::MAX);
                kept.retain(|(n, _)| *n > taken);
                let closed = header.load_u32(closed_at, Ordering::Acquire).unwrap_or(1) != 0;
                let Some(ms) = ms_until(deadline) else { break };
                if kept.is_empty() || closed {
                    break;
                }
                let objects = [raw(&peer), raw(&signal)];
                // (A receiver's signal would be the mailbox's look event, an
                // auto-reset event: waiting on it would take a set meant for
                // the mailbox's thread, which then misses a sender that
                // left. So a receiver's linger waits on the peer only and
                // looks again every 10 ms.)
                let (n, ms) = if slice_looks { (1, ms.min(10)) } else { (2, ms) };
                // SAFETY: live handles of ours with SYNCHRONIZE, in an array
                // that outlives the call.
                let got = unsafe { WaitForMultipleObjects(n, objects.as_ptr(), 0, ms) };
                if got != WAIT_OBJECT_0 + 1 && got != WAIT_TIMEOUT {
                    break;
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("attachments of a closed connection dropped early: {e}");
        }
    }

    /// Waits until no connection this process's mailboxes dropped keeps
    /// attachments for a sender any more, at most until `deadline`.
    fn await_receiver_lingering(deadline: Instant) -> bool {
        await_count(&RECEIVER_LINGERING, Some(deadline))
    }
}

// ---------------------------------------------------------------- receiving

/// What the window procedure of a mailbox needs.
struct WindowState {
    name: Name,
    hwnd: HWND,
    max_payload: u64,
    max_conns: usize,
    dispatch: Arc<Dispatch>,
    /// The connections set up by this window, watched by its thread.
    conns: RefCell<Vec<Arc<ServerConn>>>,
    look: Arc<OwnedHandle>,
}

impl WindowState {
    /// Drops the connections whose sender has gone (exited, or dropped its
    /// end), and closes attachment handles the senders have pulled.
    ///
    /// A connection whose sender has gone is marked dead and its worker
    /// told; the worker delivers what the sender left in the ring (posts)
    /// before it drops (and closes) the connection.
    fn sweep(&self) {
        let mut gone = false;
        self.conns.borrow_mut().retain(|c| {
            if c.dead.load(Ordering::Acquire) {
                // The worker has it (or has dropped it already).
                return false;
            }
            let link = c.link();
            if link.closed() {
                c.dead.store(true, Ordering::Release);
                gone = true;
                return false;
            }
            link.prune();
            true
        });
        if gone {
            // The region's worker number is the sender's to write too: tell
            // every worker rather than trust it.
            self.dispatch.poke_all();
        }
    }
}

unsafe extern "system" fn mailbox_proc(hwnd: HWND, msg: u32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
    // Anyone may post to the window: a WM_CLOSE must not destroy it (the
    // default handling would); only the mailbox's own thread closes it.
    if msg == WM_CLOSE {
        return 0;
    }
    if msg != WM_COPYDATA {
        // SAFETY: default handling of every other message.
        return unsafe { DefWindowProcW(hwnd, msg, wparam, lparam) };
    }
    // SAFETY: GWLP_USERDATA holds the `WindowState` the mailbox thread set
    // before any message could arrive, and cleared only after the window is
    // destroyed; the thread outlives the window.
    let state = unsafe { GetWindowLongPtrW(hwnd, GWLP_USERDATA) } as *const WindowState;
    if state.is_null() {
        return 0;
    }
    // SAFETY: see above; only shared access (the window thread is the only
    // one that touches it, and `RefCell` guards re-entry).
    let state = unsafe { &*state };
    if lparam == 0 {
        return 0;
    }
    // SAFETY: a WM_COPYDATA being handled; `data` is used only in this call.
    let (tag, data) = unsafe { copydata_of(lparam) };
    let sender = wparam as HWND;
    // Only windows of copydata's sender class speak the protocol, so a plain
    // program's payload is never mistaken for an envelope.
    if class_of(sender) == SENDER_CLASS {
        if tag == HELLO_TAG && data.starts_with(&HELLO_MAGIC) {
            return set_up(state, sender, data);
        }
        if data.starts_with(&OLD_REQUEST_MAGIC) {
            refuse_old(state, sender, data);
            return 0;
        }
    }
    native(state, sender, tag, data)
}

/// A `WM_COPYDATA` of a plain Win32 program: a message for the handler;
/// waits for its answer (polling, so a closing mailbox does not hang).
fn native(state: &WindowState, sender: HWND, tag: usize, data: &[u8]) -> LRESULT {
    let pid = window_pid(sender);
    if data.len() as u64 > state.max_payload {
        log::warn!(
            "mailbox {}: refused a WM_COPYDATA of {} bytes from pid {pid} (at most {})",
            state.name,
            data.len(),
            state.max_payload
        );
        return 0;
    }
    let (done, answered) = mpsc::sync_channel(1);
    let responder = NativeResponder {
        reply_to: is_window(sender).then_some(sender as usize),
        from: state.hwnd as usize,
        tag,
        done,
    };
    let message = Message::new(tag as u64, Payload::from(data), Vec::new(), Peer { pid, uid: None });
    state.dispatch.push_native(message, responder);
    loop {
        match answered.recv_timeout(Duration::from_millis(50)) {
            Ok(code) => return code,
            Err(mpsc::RecvTimeoutError::Disconnected) => return 0,
            Err(mpsc::RecvTimeoutError::Timeout) if state.dispatch.is_closed() => return 0,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// An envelope of copydata 0.1: answered, in its own format, with a refusal
/// that says why (its sender shows it as a refused send).
fn refuse_old(state: &WindowState, sender: HWND, data: &[u8]) {
    let seq = data.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let reason = format!("incompatible peer: this mailbox speaks copydata protocol {PROTOCOL}, the sender 1");
    log::warn!("mailbox {}: refused a message from pid {}: {reason}", state.name, window_pid(sender));
    let mut env = Out(Vec::with_capacity(48 + reason.len()));
    env.bytes(&OLD_REPLY_MAGIC).u32(OLD_STATUS_REFUSED).u64(seq).u64(0).u64(reason.len() as u64);
    env.u32(0).u32(0).u64(0).bytes(reason.as_bytes());
    let _ = answer_copydata(sender, state.hwnd, OLD_REPLY_TAG, &env.0);
}

/// An answer to a hello that carries no handles.
fn answer_without_handles(state: &WindowState, to: HWND, status: u32, nonce: u64, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
    let mut a = Out(Vec::with_capacity(ANSWER_HEAD + reason.len()));
    a.bytes(&ANSWER_MAGIC).u32(status).u32(PROTOCOL).u32(0).u64(nonce).u64(state.max_payload);
    a.u32(std::process::id()).u32(0).bytes(reason);
    let _ = answer_copydata(to, state.hwnd, ANSWER_TAG, &a.0);
}

/// A hello: sets up a connection for the sender whose window is `sender`.
/// Returns 1 once the sender has taken the connection,
/// [`ANSWER_ABANDONED`] if the answer was not taken in time, else 0.
///
/// The answer names this process's own handles (the region, the sender's
/// wake event, the look event, the doorbells); the sender pulls them out
/// of this process with `DuplicateHandle` while this thread waits for the
/// answer to return, so nothing is ever put into another process. A sender
/// that names a third process's window only makes us answer there; that
/// window does not take an answer it did not ask for (a copydata sender
/// window matches it against the nonce of the hello it is sending), and
/// the real sender gets nothing: its set-up fails.
///
/// Whether the connection is made is decided in the region (`setup`, see
/// [`SETUP`]), not by the answer's return: a sender's thread held up past
/// [`REPLY_TIMEOUT_MS`] may take the answer after this thread stopped
/// waiting for it (the message stays queued for it), and it used to adopt a
/// connection this side had dropped already (its first call failed with
/// "receiver gone"). Now it takes the answer only by moving `setup` from
/// answered to taken, and this side, unless the answer came back accepted,
/// moves it from answered to abandoned: the one that comes first decides.
fn set_up(state: &WindowState, sender: HWND, data: &[u8]) -> LRESULT {
    let pid = window_pid(sender);
    let (protocol, wait_code, nonce) = match envelope::parse_hello(data) {
        Ok(h) => (h.protocol, h.wait, h.nonce),
        Err(_) => {
            log::warn!("mailbox {}: dropped a malformed hello from pid {pid}", state.name);
            return 0;
        }
    };
    let wait = u8::try_from(wait_code).ok().and_then(Wait::from_code);
    let Some(wait) = wait.filter(|_| protocol == PROTOCOL) else {
        let reason =
            format!("this mailbox speaks copydata protocol {PROTOCOL}, the sender {protocol} (wait mode {wait_code})");
        log::warn!("mailbox {}: set-up with pid {pid} failed: {reason}", state.name);
        answer_without_handles(state, sender, STATUS_INCOMPATIBLE, nonce, &reason);
        return 0;
    };
    if state.dispatch.is_closed() {
        answer_without_handles(state, sender, STATUS_CLOSING, nonce, "the mailbox is closing");
        return 0;
    }
    let mut connected = state.conns.borrow().len();
    if connected >= state.max_conns {
        // The look event that would have told of senders that left may
        // have been missed (any sender can reset it): look before refusing.
        state.sweep();
        connected = state.conns.borrow().len();
    }
    if connected >= state.max_conns {
        let reason = crate::mailbox::at_connection_limit(connected);
        log::warn!("mailbox {}: refused a connection from pid {pid}: {reason}", state.name);
        answer_without_handles(state, sender, STATUS_BUSY, nonce, &reason);
        return 0;
    }
    let process = match open_process(pid, PROCESS_DUP_HANDLE | PROCESS_SYNCHRONIZE) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("mailbox {}: set-up with pid {pid} failed: opening the sender's process: {e}", state.name);
            let reason = format!("the mailbox cannot open the sender's process: {e}");
            answer_without_handles(state, sender, STATUS_REFUSED, nonce, &reason);
            return 0;
        }
    };
    // The window still belongs to `pid` after the open, so its process was
    // alive then and the handle is that process's (not a successor's that
    // got the pid meanwhile).
    if !is_window(sender) || window_pid(sender) != pid {
        return 0;
    }
    let w = state.dispatch.pick();
    let made = (|| -> io::Result<Link> {
        let (region, wake) = (Region::create(w)?, new_event()?);
        Link::new(Side::Receiver, region, (process, pid), wake, Vec::new(), state.look.clone())
    })();
    let link = match made {
        Ok(l) => l,
        Err(e) => {
            log::warn!("mailbox {}: set-up with pid {pid} failed: {e}", state.name);
            answer_without_handles(state, sender, STATUS_REFUSED, nonce, &format!("set-up failed: {e}"));
            return 0;
        }
    };
    // Which hello the region answers: a sender checks it before it takes
    // the region (a late sender may pull a handle value this process has
    // closed and reused since).
    link.u64_word(SETUP_NONCE).store(nonce, Ordering::Release);
    let bells = &state.dispatch.bells().events;
    let mut values =
        vec![link.region.section().inner().handle() as usize as u64, value_of(&link.wake), value_of(&state.look)];
    values.extend(bells.iter().map(value_of));
    let mut a = Out(Vec::with_capacity(ANSWER_HEAD + 8 * values.len()));
    a.bytes(&ANSWER_MAGIC).u32(STATUS_OK).u32(PROTOCOL).u32(bells.len() as u32).u64(nonce).u64(state.max_payload);
    a.u32(std::process::id()).u32(0);
    for &v in &values {
        a.u64(v);
    }
    #[cfg(test)]
    let answered = match undelivered_answer(&state.name) {
        Some(e) => Err(e),
        None => answer_copydata(sender, state.hwnd, ANSWER_TAG, &a.0),
    };
    #[cfg(not(test))]
    let answered = answer_copydata(sender, state.hwnd, ANSWER_TAG, &a.0);
    // Taken, or given up here: whoever moves `setup` first decides. (A
    // sender that says it took the answer without moving it is taken at
    // its word only if it did.)
    let abandoned = link
        .u32_word(SETUP)
        .compare_exchange(SETUP_ANSWERED, SETUP_ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if abandoned {
        // Refused (not the hello it is sending, or sent by another process
        // through its window, or an answer it could not use), or not taken
        // in time (the sender's thread held up, or it stopped waiting for
        // its hello), or the sender is gone: whatever it pulled is its own
        // to close, and the link goes (marked closed for a sender that
        // still holds the region).
        //
        // Only a wait that ended says the sender may be merely held up (its
        // answer still queued for it) and should say hello again. An answer
        // that could not be delivered at all (refused by UIPI to a sender of
        // a higher integrity level, or a window gone) would be refused as
        // surely the next time: the sender is told the set-up failed, not
        // made to repeat it until its deadline.
        return match answered {
            Ok(_) => {
                log::warn!("mailbox {}: set-up with pid {pid} failed: the sender did not take the answer", state.name);
                0
            }
            Err(e) if e.raw_os_error() == Some(ERROR_TIMEOUT as i32) => {
                log::warn!("mailbox {}: set-up with pid {pid} abandoned: the answer was not taken in time", state.name);
                ANSWER_ABANDONED
            }
            Err(e) => {
                log::warn!("mailbox {}: set-up with pid {pid} failed: answering the sender: {e}", state.name);
                0
            }
        };
    }
    if !matches!(answered, Ok(ACCEPTED)) {
        log::info!("mailbox {}: pid {pid} took its answer after the wait for it ended", state.name);
    }
    let conn = Arc::new(ServerConn::new(link, Peer { pid, uid: None }, wait, state.max_payload));
    state.dispatch.add(w, conn.clone());
    state.conns.borrow_mut().push(conn);
    1
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    dispatch: Arc<Dispatch>,
    thread: Option<JoinHandle<()>>,
    /// Tells the mailbox's thread to close. An event only this process can
    /// reach: a window message would let any program close the mailbox
    /// (anyone on the desktop may post to its window or thread).
    stop: Arc<OwnedHandle>,
}

impl Mailbox {
    pub(crate) fn bind(name: &Name, options: &MailboxOptions) -> Result<(Mailbox, Arc<Dispatch>), BindError> {
        let io = |source: io::Error| BindError::Io { name: name.to_string(), source };
        let bells = Bells::new(options.threads()).map_err(io)?;
        let dispatch = Arc::new(Dispatch::new(name.clone(), options.threads(), bells));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (name2, limits, dispatch2) = (name.clone(), (options.max(), options.max_conns()), dispatch.clone());
        // SAFETY: default security, manual-reset, not signalled, no name.
        let stop = Arc::new(owned(unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) }).map_err(io)?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("copydata-mailbox-{name}"))
            .spawn(move || mailbox_thread(name2, limits, dispatch2, stop2, ready_tx))
            .map_err(io)?;
        match ready_rx.recv() {
            Ok(Ok(_hwnd)) => Ok((Mailbox { dispatch: dispatch.clone(), thread: Some(thread), stop }, dispatch)),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io(io::Error::other("the mailbox thread failed")))
            }
        }
    }
}

fn mailbox_thread(
    name: Name,
    (max_payload, max_conns): (u64, usize),
    dispatch: Arc<Dispatch>,
    stop: Arc<OwnedHandle>,
    ready: mpsc::Sender<Result<usize, BindError>>,
) {
    let io = |source: io::Error| BindError::Io { name: name.to_string(), source };
    // The name: a mutex owned by this thread for as long as the mailbox lives.
    let mutex_name = wide(&format!("Local\\copydata.mailbox.{name}"));
    // SAFETY: default security, not inheritable; the name outlives the call.
    let mutex = match owned(unsafe { CreateMutexW(std::ptr::null(), 0, mutex_name.as_ptr()) }) {
        Ok(m) => m,
        Err(e) => return drop(ready.send(Err(io(e)))),
    };
    // SAFETY: waits on our own mutex handle, without blocking.
    let waited = unsafe { WaitForSingleObject(raw(&mutex), 0) };
    if waited != WAIT_OBJECT_0 && waited != WAIT_ABANDONED {
        let pid = owner_of(&name).map(|(_, pid)| pid);
        return drop(ready.send(Err(BindError::AlreadyBound { name: name.to_string(), pid })));
    }
    let window = register_class(&class_name(&name), mailbox_proc)
        .and_then(|()| message_window(&class_name(&name), name.as_str()));
    let hwnd = match window {
        Ok(h) => h,
        Err(e) => {
            // SAFETY: this thread owns the mutex.
            unsafe { ReleaseMutex(raw(&mutex)) };
            return drop(ready.send(Err(io(e))));
        }
    };
    let published = new_event().and_then(|look| Ok((look, publish_owner(&name, hwnd)?)));
    let (look, _owner_record) = match published {
        Ok((look, record)) => (Arc::new(look), record),
        Err(e) => {
            // SAFETY: our window, on this thread; this thread owns the mutex.
            unsafe {
                DestroyWindow(hwnd);
                ReleaseMutex(raw(&mutex));
            }
            return drop(ready.send(Err(io(e))));
        }
    };
    let state = Box::into_raw(Box::new(WindowState {
        name: name.clone(),
        hwnd,
        max_payload,
        max_conns,
        dispatch,
        conns: RefCell::new(Vec::new()),
        look,
    }));
    // SAFETY: `hwnd` is our window; the pointer stays valid until it is
    // cleared and freed below, after the window is destroyed.
    unsafe { SetWindowLongPtrW(hwnd, GWLP_USERDATA, state as isize) };
    let _ = ready.send(Ok(hwnd as usize));
    // SAFETY: `state` stays valid until freed below, after the loop; this
    // thread only reads it, re-entrant window procedures too.
    pump(unsafe { &*state }, &stop);
    // SAFETY: our window, destroyed on the thread that made it; then the
    // state is detached (no message can reach it any more).
    unsafe {
        DestroyWindow(hwnd);
        SetWindowLongPtrW(hwnd, GWLP_USERDATA, 0);
    }
    // SAFETY: the pointer came from `Box::into_raw` above and nothing refers
    // to it any more.
    let state = unsafe { Box::from_raw(state) };
    for c in state.conns.borrow().iter() {
        c.hang_up_after_call();
    }
    drop(state);
    // SAFETY: this thread owns the mutex.
    unsafe { ReleaseMutex(raw(&mutex)) };
}

/// The mailbox thread's loop: handles the window's messages (hellos and
/// plain `WM_COPYDATA` arrive as sent messages, handled inside
/// `PeekMessageW`), and looks at the connections when a sender process
/// ends or the look event is set, until `stop` is set. No message closes
/// it (not even `WM_QUIT`: other programs can post those).
fn pump(state: &WindowState, stop: &OwnedHandle) {
    // SAFETY: an all-zero MSG is valid; PeekMessageW fills it.
    let mut msg: MSG = unsafe { std::mem::zeroed() };
    loop {
        if signalled(stop) {
            return;
        }
        let (objects, polling) = {
            let conns = state.conns.borrow();
            let objects: Vec<HANDLE> = [raw(&state.look), raw(stop)]
                .into_iter()
                .chain(conns.iter().take(MAX_WATCHED).map(|c| raw(&c.link().peer)))
                .collect();
            (objects, conns.len() > MAX_WATCHED)
        };
        let n = objects.len() as u32;
        // SAFETY: live handles of ours with SYNCHRONIZE (the connections in
        // `state` keep them open during the wait), in an array that outlives
        // the call.
        let woke = unsafe {
            MsgWaitForMultipleObjectsEx(
                n,
                objects.as_ptr(),
                if polling { SWEEP_MS } else { INFINITE },
                QS_ALLINPUT,
                MWMO_INPUTAVAILABLE,
            )
        };
        if woke < WAIT_OBJECT_0 + n || woke == WAIT_TIMEOUT {
            state.sweep();
        } else if woke == WAIT_FAILED {
            log::warn!("mailbox {}: waiting failed: {}", state.name, io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(SWEEP_MS.into()));
            state.sweep();
        }
        // SAFETY: `msg` is writable; messages for any window of this thread.
        while unsafe { PeekMessageW(&mut msg, std::ptr::null_mut(), 0, 0, PM_REMOVE) } != 0 {
            if msg.message != WM_QUIT {
                // SAFETY: dispatches the message just received.
                unsafe { DispatchMessageW(&msg) };
            }
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.dispatch.close();
        set_event(&self.stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.dispatch.take_all() {
            c.hang_up_after_call();
        }
        // A process that exits right after its last reply (`listen --count
        // N`) would take that reply's attachments with it before the sender
        // pulled them: they get a moment.
        Link::await_receiver_lingering(Instant::now() + RECEIVER_LINGER);
    }
}

// ---------------------------------------------------------------- sending

/// What taking a hello's answer gave: the connection and the receiver's
/// payload limit, or a status and a reason.
type Taken = Result<(Link, u64), (u32, String)>;

/// The hello this thread is sending, if any.
struct Pending {
    nonce: u64,
    target: usize,
    pid: u32,
    outcome: Option<Taken>,
}

/// A status for answers that could not be used (`SendError::Protocol`).
const STATUS_BROKEN: u32 = u32::MAX;
/// A status for answers whose handles could not be taken (pulled, checked,
/// or the set-up claimed in the region): the answer was broken, or came
/// after the receiver had given it up, and with it the handles it names
/// (the mailbox's return for the hello tells which).
const STATUS_LOST: u32 = u32::MAX - 1;

#[cfg(test)]
thread_local! {
    /// A test's way to hold up or fail this thread's next set-up right
    /// before it claims the connection in the region.
    static SETUP_HOOK: std::cell::Cell<Option<SetUpHook>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetUpHook {
    /// Wait until the receiver has given up on the answer (marked the
    /// region closed), as a sender's thread held up for long would.
    TakeLate,
    /// Fail, as a sender whose last step of the set-up fails would.
    Fail,
}

/// The answers of a test's mailbox (by name) that its window does not
/// deliver, failing with an OS error instead, and how many hellos it got;
/// and how long its window holds every answer back first (the window's
/// thread slow in the set-up).
#[cfg(test)]
#[derive(Debug)]
struct UndeliveredAnswers {
    mailbox: String,
    code: i32,
    left: usize,
    hellos: usize,
    held: Duration,
}

#[cfg(test)]
static UNDELIVERED_ANSWERS: Mutex<Vec<UndeliveredAnswers>> = Mutex::new(Vec::new());

/// The error the answer of the mailbox `name` fails with in place of being
/// delivered, if a test asked for one (see [`UndeliveredAnswers`]).
#[cfg(test)]
fn undelivered_answer(name: &Name) -> Option<io::Error> {
    let (failed, held) = {
        let mut all = UNDELIVERED_ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
        let hook = all.iter_mut().find(|h| h.mailbox == name.as_str())?;
        hook.hellos += 1;
        let failed = (hook.left > 0).then(|| {
            hook.left -= 1;
            io::Error::from_raw_os_error(hook.code)
        });
        (failed, hook.held)
    };
    std::thread::sleep(held);
    failed
}

thread_local! {
    /// This thread's sender window (made on first use, destroyed with the thread).
    static SENDER_WINDOW: RefCell<Option<SenderWindow>> = const { RefCell::new(None) };
    /// While `send_to_window` waits: the window it sends to, and the reply
    /// bytes that came back naming that window (`wParam`), one entry per
    /// send under way (a window procedure run inside one send's wait may
    /// make another). Nothing is kept at other times: any program may send
    /// to this thread's window.
    static RECEIVING: RefCell<Vec<Receiving>> = const { RefCell::new(Vec::new()) };
    /// The hellos being sent: more than one when a window procedure run
    /// inside a set-up's wait sets up another connection.
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// The nonces of this thread's last hellos, the one being sent
    /// included: an answer to one of them that comes once its hello is no
    /// longer being sent (the mailbox got to it after the set-up's deadline)
    /// is refused, not taken for the reply bytes of a `send_to_window` to
    /// that mailbox's window under way meanwhile.
    static HELLOS: RefCell<[u64; RECENT_HELLOS]> = const { RefCell::new([0; RECENT_HELLOS]) };
}

/// How many of a thread's hellos [`HELLOS`] keeps: a late answer comes
/// after its hello's deadline, and each set-up says hello again only for an
/// answer given up (see [`ANSWER_ABANDONED`]), so an answer to an older one
/// would have been queued behind several whole set-ups' deadlines.
const RECENT_HELLOS: usize = 16;

/// Notes `nonce` as this thread's latest hello.
fn said_hello(nonce: u64) {
    HELLOS.with(|h| {
        let mut h = h.borrow_mut();
        h.rotate_right(1);
        h[0] = nonce;
    });
}

/// Whether `nonce` is one of this thread's last hellos'.
fn said_earlier(nonce: u64) -> bool {
    nonce != 0 && HELLOS.with(|h| h.borrow().contains(&nonce))
}

struct SenderWindow(HWND);

impl Drop for SenderWindow {
    fn drop(&mut self) {
        // SAFETY: our own window, destroyed on the thread that made it.
        unsafe { DestroyWindow(self.0) };
    }
}

fn sender_window() -> io::Result<HWND> {
    static CLASS: Once = Once::new();
    let mut registered = Ok(());
    CLASS.call_once(|| registered = register_class(SENDER_CLASS, sender_proc));
    registered?;
    SENDER_WINDOW.with(|w| {
        let mut w = w.borrow_mut();
        if let Some(SenderWindow(h)) = &*w {
            return Ok(*h);
        }
        let h = message_window(SENDER_CLASS, "")?;
        *w = Some(SenderWindow(h));
        Ok(h)
    })
}

unsafe extern "system" fn sender_proc(hwnd: HWND, msg: u32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
    if msg != WM_COPYDATA || lparam == 0 {
        // SAFETY: default handling of every other message.
        return unsafe { DefWindowProcW(hwnd, msg, wparam, lparam) };
    }
    // SAFETY: a WM_COPYDATA being handled; `data` is used only in this call.
    let (tag, data) = unsafe { copydata_of(lparam) };
    // An answer to a hello under way (by its nonce), if one is; with none,
    // bytes that look like an answer may be a plain program's reply (below).
    if tag == ANSWER_TAG
        && let Ok(head) = envelope::parse_answer(data)
    {
        let answered = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let pending = p.iter_mut().find(|pending| pending.nonce == head.nonce)?;
            Some(take_answer(pending, wparam as HWND, data))
        });
        if let Some(r) = answered {
            return r;
        }
        // A late answer to a hello whose set-up has ended: refused (the
        // mailbox gives up what it set up for it).
        if said_earlier(head.nonce) {
            return 0;
        }
    }
    if tag == OLD_REPLY_TAG && data.starts_with(&OLD_REPLY_MAGIC) {
        // An old mailbox's reply to an old envelope sent through
        // `send_to_window`: not a plain reply.
        return 0;
    }
    // The reply bytes of a plain send under way, the first that name its
    // target (see `send_to_window`; the innermost send to that window,
    // when sends are nested); anything else is not taken.
    RECEIVING.with(|r| {
        let mut r = r.borrow_mut();
        match r.iter_mut().rev().find(|e| e.reply.is_none() && same_window(e.target, wparam)) {
            Some(e) => {
                e.reply = Some(data.to_vec());
                1
            }
            None => 0,
        }
    })
}

/// A `send_to_window` under way on this thread (see `RECEIVING`).
struct Receiving {
    target: usize,
    reply: Option<Vec<u8>>,
}

/// An answer to a hello: taken (returns [`ACCEPTED`]) only if it answers
/// the hello this thread is sending now (nonce and window), from the
/// receiver we chose; anything else returns 0 and takes nothing. The handle
/// values in it are the receiver's own: they are pulled out of its process
/// into handles of this process's own, so a value a receiver gets wrong
/// or makes up can never name one of this process's handles.
fn take_answer(pending: &mut Pending, from: HWND, data: &[u8]) -> LRESULT {
    let Ok(head) = envelope::parse_answer(data) else { return 0 };
    if head.nonce != pending.nonce || !same_window(from as usize, pending.target) || pending.outcome.is_some() {
        return 0;
    }
    let taken = adopt_answer(&head, (from, pending.pid), pending.nonce);
    let accepted = taken.is_ok();
    pending.outcome = Some(taken);
    if accepted { ACCEPTED } else { 0 }
}

/// Makes the connection an answer describes and claims it in the region
/// (`setup`: answered → taken, see [`SETUP`]). Everything that can fail is
/// done before the claim, so a claimed set-up never fails on this side, and
/// one that fails leaves the region unclaimed: the receiver gives it up as
/// soon as the answer returns not accepted.
fn adopt_answer(head: &envelope::AnswerHead<'_>, (window, expected_pid): (HWND, u32), nonce: u64) -> Taken {
    if head.status != STATUS_OK {
        return Err((head.status, envelope::reason(head)));
    }
    let broken = |reason: String| Err((STATUS_BROKEN, reason));
    if head.protocol != PROTOCOL {
        return broken(format!("an answer of protocol {}", head.protocol));
    }
    let values = match envelope::answer_values(head) {
        Ok(v) => v,
        Err(reason) => return broken(reason),
    };
    let (pid, max_payload) = (head.pid, head.max_payload);
    if pid != expected_pid {
        return broken(format!("the answer names pid {pid}, the mailbox's window belongs to {expected_pid}"));
    }
    let receiver = match open_process(pid, PROCESS_DUP_HANDLE | PROCESS_SYNCHRONIZE) {
        Ok(p) => p,
        Err(e) => return broken(format!("opening the receiver's process: {e}")),
    };
    // Its window still belongs to `pid` after the open, so the handle is
    // the receiver's (not a successor's that got the pid meanwhile).
    if !is_window(window) || window_pid(window) != pid {
        return broken("the mailbox's window went away during the set-up".into());
    }
    // From here on a failure may also be an answer taken after the receiver
    // gave it up: it may have closed the handles named, and reused their
    // values since.
    let lost = |reason: String| Err((STATUS_LOST, reason));
    // Only the rights each needs: the region mapped, the wake event waited
    // on and set, the look event and the doorbells set.
    let rights = |i: usize| match i {
        0 => SECTION_QUERY | FILE_MAP_READ | FILE_MAP_WRITE,
        1 => EVENT_MODIFY_STATE | SYNCHRONIZATION_SYNCHRONIZE,
        _ => EVENT_MODIFY_STATE,
    };
    let pulled = values.iter().enumerate().map(|(i, &v)| duplicate_from(raw(&receiver), v, rights(i)));
    let mut handles = match pulled.collect::<io::Result<Vec<OwnedHandle>>>() {
        Ok(h) => h.into_iter(),
        Err(e) => return lost(format!("pulling the connection's handles out of the receiver: {e}")),
    };
    let region = handles.next().expect("3 + bells values");
    let wake = handles.next().expect("3 + bells values");
    let look = handles.next().expect("3 + bells values");
    let bells = handles.collect();
    let (region, ctl) = match adopt_region(region) {
        Ok(r) => r,
        Err(reason) => return lost(format!("the connection region: {reason}")),
    };
    let word = |offset| ctl.atomic_u64(offset).map_err(|e| e.to_string());
    match word(SETUP_NONCE).map(|w| w.load(Ordering::Acquire)) {
        Ok(n) if n == nonce => {}
        Ok(_) => return lost("the region named is not this set-up's".into()),
        Err(e) => return lost(format!("the connection region: {e}")),
    }
    #[cfg(test)]
    match SETUP_HOOK.with(std::cell::Cell::take) {
        Some(SetUpHook::TakeLate) => {
            let until = Instant::now() + Duration::from_secs(10);
            let closed = ctl.atomic_u32(RECEIVER_CLOSED).expect("a word of the header line");
            while closed.load(Ordering::Acquire) == 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Some(SetUpHook::Fail) => return lost("failed by the test".into()),
        None => {}
    }
    let setup = ctl.atomic_u32(SETUP).expect("a word of the header line");
    if setup.compare_exchange(SETUP_ANSWERED, SETUP_TAKEN, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Given up by the receiver first (its wait for this answer ended):
        // nothing is made on either side.
        return lost("the mailbox gave the answer up before this thread took it".into());
    }
    let link = Link::from_parts(Side::Sender, region, ctl, (receiver, pid), wake, bells, Arc::new(look));
    Ok((link, max_payload))
}

/// The connection region an answer names, checked (a mapping of its size,
/// backed by the paging file, with a copydata region's header) and mapped,
/// with its header line mapped for this backend's words. A region backed by
/// a file could fail to page in (a file on a drive gone), which would end
/// this process in the middle of any call.
fn adopt_region(handle: OwnedHandle) -> Result<(Region, crate::view::ViewMut), String> {
    let size = super::foreign_section_size(raw(&handle)).map_err(|e| e.to_string())?;
    if !super::size_matches(REGION_LEN as u64, size) {
        return Err(format!("{size} bytes (expected {REGION_LEN})"));
    }
    if super::is_file_backed(raw(&handle)).map_err(|e| e.to_string())? {
        return Err("backed by a file".into());
    }
    let section = Section::from_parts(SysSection::from_handle(handle, REGION_LEN as u64, Access::ReadWrite), None);
    let region = Region::adopt(section)?;
    let ctl = Link::header_line(&region).map_err(|e| format!("mapping its header: {e}"))?;
    Ok((region, ctl))
}

/// The owner record of a mailbox: the section `Local\copydata.mailbox.NAME.owner`
/// in which the process holding the name's mutex publishes its window and
/// pid (magic `CDMBOWN1` at 0, written last; the window at 8; the pid at 16).
/// A sender talks only to that window, and only while it still belongs to
/// that pid: any program may register the class `copydata.mailbox.NAME` and
/// make a window of it, and only the name's holder writes the record in
/// the ordinary course. The record has the default security of the user's
/// objects, so another process of the same user could rewrite it, as it
/// could open the mailbox's process itself: on Windows a mailbox trusts
/// the processes of its own user, and no one else's.
const OWNER_MAGIC: u64 = u64::from_le_bytes(*b"CDMBOWN1");
const OWNER_LEN: usize = 24;

/// Whether two window handle values name the same window: only their low
/// 32 bits count (a window handle is 32 bits wide, widened by sign in a
/// 64-bit process and passed zero-extended in some messages' parameters),
/// so 32- and 64-bit processes agree.
fn same_window(a: usize, b: usize) -> bool {
    a as u32 == b as u32
}

fn owner_record_name(name: &Name) -> Name {
    Name::derived(format!("copydata.mailbox.{name}.owner"))
}

/// Publishes this process's window as the mailbox's (called by the thread
/// that holds the name's mutex). The returned section keeps the record.
fn publish_owner(name: &Name, hwnd: HWND) -> io::Result<Section> {
    let (inner, _) = SysSection::open_or_create(&owner_record_name(name), OWNER_LEN as u64, &SectionOptions::new())
        .map_err(io::Error::other)?;
    let section = Section::from_parts(inner, None);
    let view = section.map_mut(0, OWNER_LEN).map_err(io::Error::other)?;
    let field = |at| view.atomic_u64(at).map_err(io::Error::other);
    // A record left by an earlier holder (still open in some process) is
    // overwritten: this thread holds the name now.
    field(0)?.store(0, Ordering::SeqCst);
    // (A window handle is 32 bits wide in 32- and 64-bit processes alike.)
    field(8)?.store(u64::from(hwnd as usize as u32), Ordering::SeqCst);
    field(16)?.store(u64::from(std::process::id()), Ordering::SeqCst);
    field(0)?.store(OWNER_MAGIC, Ordering::SeqCst);
    Ok(section)
}

/// The mailbox's window and its process, from the owner record, if the
/// window still exists, belongs to that process and is of the mailbox's
/// class.
fn owner_of(name: &Name) -> Option<(HWND, u32)> {
    let options = SectionOptions::new().access(Access::ReadOnly);
    let inner = SysSection::open(&owner_record_name(name), &options).ok()?;
    let section = Section::from_parts(inner, None);
    let view = section.map(0, OWNER_LEN).ok()?;
    if view.load_u64(0, Ordering::SeqCst).ok()? != OWNER_MAGIC {
        return None;
    }
    // Sign-extended, as Windows widens a 32-bit process's handles.
    let hwnd = view.load_u64(8, Ordering::SeqCst).ok()? as u32 as i32 as isize as HWND;
    let pid = u32::try_from(view.load_u64(16, Ordering::SeqCst).ok()?).ok()?;
    (is_window(hwnd) && window_pid(hwnd) == pid && class_of(hwnd) == class_name(name)).then_some((hwnd, pid))
}

fn find_mailbox(name: &Name) -> Option<HWND> {
    owner_of(name).map(|(hwnd, _)| hwnd)
}

/// A nonce no other process can guess: std's hasher keys come from the
/// system's random number generator.
fn nonce() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// What sending a hello gave: the `SendMessageTimeoutW` result and the
/// answer, if one came.
type HelloOutcome = (io::Result<isize>, Option<Taken>);

/// Sends a hello to the mailbox window `target` (of process `pid`) from
/// this thread's sender window, waiting at most `ms`.
fn hello(target: HWND, pid: u32, protocol: u32, wait_code: u32, ms: u32) -> io::Result<HelloOutcome> {
    let from = sender_window()?;
    // The receiver answers with `SMTO_ABORTIFHUNG`: a thread that looked at
    // no message for 5 s (busy with a large payload, say) and has not yet
    // begun to wait in the send below counts as hung, and the answer would
    // be dropped. Looking once marks the thread as responsive. (This hello
    // is not pending yet: an answer delivered here is taken only by the
    // set-up it answers, an outer one of this thread, if any.)
    //
    // SAFETY: an all-zero MSG is valid; PeekMessageW fills it.
    let mut msg: MSG = unsafe { std::mem::zeroed() };
    // SAFETY: `msg` is a writable MSG; PM_NOREMOVE leaves the queue as it
    // is (sent messages are dispatched, as during any wait).
    unsafe { PeekMessageW(&mut msg, from, 0, 0, PM_NOREMOVE) };
    let nonce = nonce();
    said_hello(nonce);
    let mut hello = Out(Vec::with_capacity(HELLO_LEN));
    hello.bytes(&HELLO_MAGIC).u32(protocol).u32(wait_code).u32(0).u64(nonce);
    PENDING.with(|p| p.borrow_mut().push(Pending { nonce, target: target as usize, pid, outcome: None }));
    let sent = send_copydata(target, from, HELLO_TAG, &hello.0, ms.min(FOREVER_MS));
    // Its own entry is the last: a nested set-up runs, and removes its
    // own, within this send.
    let outcome = PENDING.with(|p| p.borrow_mut().pop()).and_then(|p| p.outcome);
    Ok((sent, outcome))
}

/// Finds the mailbox `name` and sets up a connection with it. Returns the
/// link and the receiver's payload limit.
pub(crate) fn connect(
    name: &Name,
    wait: Wait,
    deadline: Instant,
    _owner: Option<u32>,
    // (A set-up here is one `SendMessageTimeoutW`: an abort is seen
    // before it starts, by the caller.)
    _abort: Option<&crate::mailbox::Abort>,
) -> Result<(Link, u64), SendError> {
    let shown = || name.to_string();
    let io = |source: io::Error| SendError::Io { name: shown(), source };
    let timed_out =
        || SendError::TimedOut { name: shown(), timeout: Duration::ZERO, stage: crate::TimeoutStage::Connecting };
    let bad = |reason: String| SendError::Protocol { name: shown(), reason };
    let target = find_mailbox(name).ok_or_else(|| SendError::NoSuchMailbox { name: shown() })?;
    let pid = window_pid(target);
    if pid == 0 {
        return Err(SendError::NoSuchMailbox { name: shown() });
    }
    loop {
        let ms = ms_until(deadline).ok_or_else(timed_out)?;
        let (sent, outcome) = hello(target, pid, PROTOCOL, u32::from(wait.code()), ms).map_err(io)?;
        return match (sent, outcome) {
            (_, Some(Ok(taken))) => Ok(taken),
            (_, Some(Err((STATUS_REFUSED, reason)))) => Err(SendError::Refused { name: shown(), reason }),
            (_, Some(Err((STATUS_BUSY, reason)))) => Err(SendError::Busy { name: shown(), reason }),
            // (A single-instance launch then takes the id over, or finds
            // the next primary, as after the primary's exit.)
            (_, Some(Err((STATUS_CLOSING, _)))) => Err(SendError::ReceiverDied { name: shown() }),
            // Taking the answer failed because the mailbox went meanwhile.
            (_, Some(Err((STATUS_BROKEN, _)))) if !is_window(target) => Err(SendError::ReceiverDied { name: shown() }),
            (_, Some(Err((STATUS_BROKEN, reason)))) => Err(bad(reason)),
            // The mailbox gave its answer up before this thread took it (the
            // thread was held up): nothing was set up on either side, and
            // whatever failed in taking the late answer was its handles
            // going. Again, within the deadline.
            (Ok(ANSWER_ABANDONED), None | Some(Err((STATUS_LOST, _)))) => continue,
            (Err(e), None | Some(Err((STATUS_LOST, _))))
                if e.raw_os_error() == Some(ERROR_TIMEOUT as i32) && is_window(target) =>
            {
                Err(timed_out())
            }
            (_, Some(Err((STATUS_LOST, reason)))) => Err(bad(reason)),
            (_, Some(Err((_, reason)))) => Err(SendError::Incompatible { name: shown(), reason }),
            // It was there when found: it went away during the set-up.
            (_, None) if !is_window(target) => Err(SendError::ReceiverDied { name: shown() }),
            (Err(e), None) => Err(io(e)),
            (Ok(_), None) => Err(SendError::Incompatible {
                name: shown(),
                reason: "the mailbox did not answer the set-up (an older copydata, or not a copydata mailbox)".into(),
            }),
        };
    }
}

/// Sends a plain `WM_COPYDATA` to an existing window, found by class and/or
/// title (`FindWindowW`, then among message-only windows), and waits at most
/// `timeout` for it to be handled. The reply code is the window's `LRESULT`;
/// the reply bytes are whatever it sent back to the sender's window (passed
/// as `wParam`) with `WM_COPYDATA` while handling the message.
#[doc(alias = "FindWindowW")]
#[doc(alias = "FindWindowExW")]
#[doc(alias = "SendMessageTimeoutW")]
#[doc(alias = "WM_COPYDATA")]
pub fn send_to_window(
    class: Option<&str>,
    title: Option<&str>,
    tag: u64,
    data: &[u8],
    timeout: Duration,
) -> Result<Reply, SendError> {
    let shown = format!("window class={class:?} title={title:?}");
    let (c, t) = (class.map(wide), title.map(wide));
    let ptr = |s: &Option<Vec<u16>>| s.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: the strings (or nulls) outlive the calls.
    let mut target = unsafe { FindWindowW(ptr(&c), ptr(&t)) };
    if target.is_null() {
        // SAFETY: as above.
        target = unsafe { FindWindowExW(HWND_MESSAGE, std::ptr::null_mut(), ptr(&c), ptr(&t)) };
    }
    if target.is_null() {
        return Err(SendError::NoSuchMailbox { name: shown });
    }
    let from = sender_window().map_err(|source| SendError::Io { name: shown.clone(), source })?;
    // The reply bytes are those the target sends back naming itself in
    // `wParam`, the convention; a WM_COPYDATA that names another window (a
    // third program writing to ours meanwhile) is not taken for them.
    // Windows cannot tell who really sent a message, so a program that
    // forges the target's handle in `wParam` is not caught: this is the
    // plain Win32 protocol's limit (copydata mailboxes answer through their
    // connection's private region instead).
    RECEIVING.with(|r| r.borrow_mut().push(Receiving { target: target as usize, reply: None }));
    let ms = timeout.as_millis().clamp(1, u128::from(FOREVER_MS)) as u32;
    let sent = send_copydata(target, from, tag as usize, data, ms);
    // Its own entry is the last: a nested send runs, and removes its own,
    // within this send.
    let reply = RECEIVING.with(|r| r.borrow_mut().pop()).and_then(|e| e.reply);
    match sent {
        Ok(code) => Ok(Reply::new(code as i64, reply.unwrap_or_default())),
        // `SendMessageTimeoutW` does not say whether the window's thread
        // took the message before the time ran out (its handler may be
        // running, or run later from a message it had already taken): as
        // for a reply that did not come, it may have been handled.
        Err(e) if e.raw_os_error() == Some(ERROR_TIMEOUT as i32) && is_window(target) => {
            Err(SendError::TimedOut { name: shown, timeout, stage: crate::TimeoutStage::Reply })
        }
        Err(_) if !is_window(target) => Err(SendError::ReceiverDied { name: shown }),
        // The window is there but refused (a process of higher integrity
        // filtering messages, say): the OS code tells.
        Err(source) => Err(SendError::Io { name: shown, source }),
    }
}

/// Lets the process `pid` bring a window to the front
/// (`AllowSetForegroundWindow`): a single-instance secondary does this for
/// its primary before forwarding, the reason the feature usually exists.
/// Windows allows it only while this process may set the foreground itself;
/// otherwise it is quietly not granted.
pub(crate) fn allow_foreground(pid: u32) {
    // SAFETY: takes a process id by value; any value is allowed.
    unsafe { AllowSetForegroundWindow(pid) };
}

pub(crate) fn list() -> Result<Vec<MailboxInfo>, ListError> {
    let mut out = Vec::new();
    let mut after: HWND = std::ptr::null_mut();
    loop {
        // SAFETY: enumerates message-only windows; null strings match any.
        after = unsafe { FindWindowExW(HWND_MESSAGE, after, std::ptr::null(), std::ptr::null()) };
        if after.is_null() {
            return Ok(out);
        }
        // Only the window its name's holder published: other programs may
        // make windows of the same class.
        if let Some(name) = class_of(after).strip_prefix(MAILBOX_CLASS_PREFIX).and_then(|n| Name::new(n).ok())
            && let Some((hwnd, pid)) = owner_of(&name)
            && same_window(hwnd as usize, after as usize)
        {
            out.push(MailboxInfo { name: name.to_string(), pid });
        }
    }
}

#[cfg(test)]
mod tests {
    //! The backend's answers to hostile or confused peers, in one process
    //! (a mailbox served on its threads, senders on the test's threads).

    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::fast::conn::{Body, CALL, Client, Fail};

    fn unique(tag: &str) -> Name {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Name::new(&format!("copydata-test-win-{tag}-{}-{n}", std::process::id())).unwrap()
    }

    /// A mailbox that is closing (its queue closed, its thread still
    /// there) answers a hello as one gone: `ReceiverDied`, which a
    /// single-instance launch takes for the primary's exit (it was
    /// `Refused`, and the launch failed instead of taking the id over).
    #[test]
    fn a_closing_mailbox_sends_senders_away_as_gone() {
        let name = unique("closing");
        let (mailbox, dispatch) = Mailbox::bind(&name, &crate::MailboxOptions::new()).unwrap();
        dispatch.close();
        let outcome = connect(&name, Wait::Park, Instant::now() + Duration::from_secs(30), None, None);
        assert!(matches!(outcome, Err(SendError::ReceiverDied { .. })), "{:?}", outcome.map(|_| ()));
        drop(mailbox);
    }

    fn echo(name: &Name) -> crate::Server {
        crate::Mailbox::bind(name.as_str()).unwrap().serve(|m| Reply::new(m.tag() as i64, m.payload().to_vec()))
    }

    fn link_to(name: &Name) -> (Link, u64) {
        connect(name, Wait::Park, Instant::now() + Duration::from_secs(30), None, None).unwrap()
    }

    /// Attachment bytes as a peer would write them: a set number, then
    /// `(handle, len, flags, name)` per item.
    fn aux(number: u64, items: &[(u64, u64, u32, &str)]) -> Vec<u8> {
        let mut o = Out(Vec::new());
        o.u64(number);
        for (h, len, flags, name) in items {
            o.u64(*h).u64(*len).u32(*flags).u32(name.len() as u32).bytes(name.as_bytes());
        }
        o.0
    }

    fn value(s: &Section) -> u64 {
        s.inner().handle() as usize as u64
    }

    /// A sender's link pulls reply attachments out of the receiver's
    /// process; here that is this process, so the values name our own
    /// handles. Every malformed attachment is an error, never a panic nor
    /// a handle this process owns taken over.
    #[test]
    fn hostile_attachments_are_refused() {
        let name = unique("aux");
        let _server = echo(&name);
        let (link, _) = link_to(&name);
        let page = Section::anonymous(4096).unwrap();
        page.map_mut(0, 5).unwrap().write_at(0, b"hello").unwrap();
        let event = value_of(&link.wake);
        let cases: Vec<(&str, Vec<u8>, bool, usize)> = vec![
            ("an out-of-order set number", aux(2, &[(value(&page), 4096, ATTACH_RO, "")]), false, 1),
            ("a value that is no handle", aux(1, &[(0x7ffc, 4096, ATTACH_RO, "")]), false, 1),
            ("the peer's process pseudo-handle", aux(2, &[(u64::MAX, 4096, 0, "")]), false, 1),
            ("an event, not a section", aux(3, &[(event, 4096, ATTACH_RO, "")]), false, 1),
            ("a size the section does not have", aux(4, &[(value(&page), 1 << 20, ATTACH_RO, "")]), false, 1),
            ("a writable buffer", aux(5, &[(value(&page), 4096, 0, "")]), true, 0),
            ("a named flag without a name", aux(6, &[(value(&page), 4096, ATTACH_NAMED, "")]), false, 1),
            ("unknown flags", aux(7, &[(value(&page), 4096, 0x80, "")]), false, 1),
            ("fewer items than announced", aux(8, &[(value(&page), 4096, ATTACH_RO, "")]), false, 2),
            ("stray bytes", [aux(9, &[(value(&page), 4096, ATTACH_RO, "")]), vec![0; 3]].concat(), false, 1),
            ("a truncated set number", vec![10, 0, 0], false, 1),
            ("too many sections", aux(9, &[]), false, MAX_SECTIONS + 1),
        ];
        for (what, bytes, buffer, n) in cases {
            assert!(link.recv_aux(&bytes, buffer, n).is_err(), "{what} was accepted");
        }
        // A good one: read-only means read-only at the handle, too.
        let (buf, secs) = link.recv_aux(&aux(10, &[(value(&page), 4096, ATTACH_RO, "")]), false, 1).unwrap();
        assert!(buf.is_none());
        assert_eq!(secs.len(), 1);
        assert_eq!(secs[0].map(0, 5).unwrap().to_vec(), b"hello");
        assert_eq!(secs[0].access(), Access::ReadOnly);
        assert!(secs[0].inner().map(0, 4096, Access::ReadWrite).is_err(), "a read-only pull can write");
        assert_eq!(link.taken_word(Side::Receiver).load(Ordering::Acquire), 10);
        // Our own section is still ours and intact.
        assert_eq!(page.map(0, 5).unwrap().to_vec(), b"hello");
    }

    /// A receiver that drops a connection (here: for an unknown record
    /// kind) makes the sender's wait fail at once; the mailbox goes on
    /// serving other senders.
    #[test]
    fn a_dropped_connection_fails_the_senders_wait() {
        let name = unique("drop");
        let _server = echo(&name);
        let (link, max) = link_to(&name);
        let mut c = Client::new(link, Wait::Park, max);
        let deadline = || Some(Instant::now() + Duration::from_secs(30));
        c.put(CALL, 5, Body::Bytes(b"hi"), &[], true, deadline()).unwrap();
        assert_eq!(c.reply(deadline()).unwrap().code, 5);
        c.put(77, 0, Body::Bytes(b"garbage"), &[], true, deadline()).unwrap();
        let started = Instant::now();
        assert!(matches!(c.reply(deadline()), Err(Fail::PeerGone)));
        assert!(started.elapsed() < Duration::from_secs(5), "noticed after {:?}", started.elapsed());
        assert_eq!(&crate::send(name.as_str(), 1, b"others").unwrap().data[..], b"others");
    }

    /// Posts whose attachments the mailbox has not pulled yet when their
    /// sender drops its end are still delivered whole (the handles linger
    /// for the mailbox).
    #[test]
    fn posts_outlive_their_senders_end() {
        use crate::fast::conn::POST;
        let name = unique("linger");
        let mailbox = crate::Mailbox::bind(name.as_str()).unwrap();
        let (link, max) = link_to(&name);
        let mut c = Client::new(link, Wait::Park, max);
        let page = Section::anonymous(4096).unwrap();
        page.map_mut(0, 6).unwrap().write_at(0, b"posted").unwrap();
        let big = vec![7u8; 100_000];
        c.put(POST, 1, Body::Bytes(b""), &[&page], true, None).unwrap();
        c.put(POST, 2, Body::Bytes(&big), &[], true, None).unwrap();
        drop(c);
        drop(page);
        // Let the mailbox see the sender go before it takes anything.
        std::thread::sleep(Duration::from_millis(200));
        let first = mailbox.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((first.tag(), first.expects_reply(), first.sections().len()), (1, false, 1));
        assert_eq!(first.sections()[0].map(0, 6).unwrap().to_vec(), b"posted");
        drop(first);
        let second = mailbox.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(second.tag(), 2);
        assert!(second.payload()[..] == big[..], "the large post");
    }

    /// A sender that drops its end is forgotten by the mailbox, which
    /// closes the connection (seen here in the region).
    #[test]
    fn a_sender_that_leaves_is_forgotten() {
        let name = unique("leave");
        let _server = echo(&name);
        let (link, _) = link_to(&name);
        let header = link.region().section().map(0, LINE).unwrap();
        drop(link);
        let deadline = Instant::now() + Duration::from_secs(10);
        while header.load_u32(RECEIVER_CLOSED, Ordering::Acquire).unwrap() == 0 {
            assert!(Instant::now() < deadline, "the mailbox kept the connection of a sender that left");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A hello of another protocol version is answered with the reason.
    #[test]
    fn a_hello_of_another_protocol_is_refused() {
        let name = unique("proto");
        let _server = echo(&name);
        let target = find_mailbox(&name).unwrap();
        let (sent, outcome) = hello(target, window_pid(target), PROTOCOL + 1, 0, 30_000).unwrap();
        assert_eq!(sent.unwrap(), 0);
        match outcome {
            Some(Err((STATUS_INCOMPATIBLE, reason))) => assert!(reason.contains("protocol"), "{reason}"),
            other => panic!("{:?}", other.map(|o| o.map(|_| ()))),
        }
        let (_, outcome) = hello(target, window_pid(target), PROTOCOL, 9, 30_000).unwrap();
        assert!(matches!(outcome, Some(Err((STATUS_INCOMPATIBLE, _)))));
    }

    /// Only the answer to the hello being sent is taken, and only if it is
    /// well-formed; nothing is adopted otherwise.
    #[test]
    fn answers_nobody_asked_for_are_not_taken() {
        let mut pending = Pending { nonce: 7, target: 0x1234, pid: std::process::id(), outcome: None };
        let answer = |nonce: u64, pid: u32, bells: u32, values: &[u64]| {
            let mut a = Out(Vec::new());
            a.bytes(&ANSWER_MAGIC).u32(STATUS_OK).u32(PROTOCOL).u32(bells).u64(nonce).u64(1000).u32(pid).u32(0);
            for v in values {
                a.u64(*v);
            }
            a.0
        };
        let me = std::process::id();
        let good = [8u64, 12, 16, 20];
        assert_eq!(take_answer(&mut pending, 0x1234 as HWND, &answer(8, me, 1, &good)), 0, "another nonce");
        assert_eq!(take_answer(&mut pending, 0x9999 as HWND, &answer(7, me, 1, &good)), 0, "another window");
        assert!(pending.outcome.is_none());
        for (what, a) in [
            ("another pid", answer(7, me + 1, 1, &good)),
            ("a pseudo-handle", answer(7, me, 1, &[8, 12, u64::MAX - 1, 20])),
            ("a count that does not match", answer(7, me, 2, &good)),
            ("no doorbells", answer(7, me, 0, &good[..3])),
            ("truncated", answer(7, me, 1, &good)[..50].to_vec()),
        ] {
            pending.outcome = None;
            assert_eq!(take_answer(&mut pending, 0x1234 as HWND, &a), 0, "{what}");
            let truncated = what == "truncated";
            assert!(truncated || matches!(pending.outcome, Some(Err((STATUS_BROKEN, _)))), "{what}");
        }
    }

    /// A hello whose `wParam` names another thread's sender window (as a
    /// third process's would be): the receiver pushes the handles there,
    /// that window does not take them (it is not sending that hello), so
    /// they are closed there again; the real sender gets nothing.
    #[test]
    fn a_hello_naming_someone_elses_window_sets_nothing_up() {
        let name = unique("third");
        let _server = echo(&name);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let other = std::thread::spawn({
            let stop = stop.clone();
            move || {
                tx.send(sender_window().unwrap() as usize).unwrap();
                // SAFETY: an all-zero MSG is valid; PeekMessageW fills it.
                let mut msg: MSG = unsafe { std::mem::zeroed() };
                while !stop.load(Ordering::SeqCst) {
                    // SAFETY: handles this thread's messages (sent ones too).
                    while unsafe { PeekMessageW(&mut msg, std::ptr::null_mut(), 0, 0, PM_REMOVE) } != 0 {
                        // SAFETY: dispatches the message just received.
                        unsafe { DispatchMessageW(&msg) };
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let theirs = rx.recv().unwrap() as HWND;
        let target = find_mailbox(&name).unwrap();
        let mut h = Out(Vec::new());
        h.bytes(&HELLO_MAGIC).u32(PROTOCOL).u32(0).u32(0).u64(42);
        assert_eq!(send_copydata(target, theirs, HELLO_TAG, &h.0, 30_000).unwrap(), 0);
        stop.store(true, Ordering::SeqCst);
        other.join().unwrap();
        assert_eq!(&crate::send(name.as_str(), 3, b"still").unwrap().data[..], b"still");
    }

    /// The doorbells: a ring before the wait is not lost, a wait with
    /// nothing rung times out, and a bell out of range is ignored.
    #[test]
    fn doorbells_keep_an_early_ring() {
        let bells = Bells::new(2).unwrap();
        let seen = bells.load(1);
        bells.ring(1);
        assert!(bells.wait(1, seen, Some(Duration::from_secs(5))));
        let seen = bells.load(1);
        assert!(!bells.wait(1, seen, Some(Duration::from_millis(20))));
        bells.ring(1);
        // The word moved: seen without waiting, and the event's signal is
        // taken with it (no spurious wake-up afterwards).
        assert!(bells.wait(1, seen, Some(Duration::from_secs(5))));
        assert!(!bells.wait(1, bells.load(1), Some(Duration::from_millis(20))));
        bells.ring(64);
        assert_eq!(bells.load(64), 0);
    }

    /// Handles of this process on sections of a connection region's size:
    /// the fewest seen over a few looks (other tests of this process make
    /// and drop connections meanwhile; a leaked region stays).
    fn count_regions() -> usize {
        let once = || {
            (1..0x8000usize)
                .filter(|v| super::super::section_info((v * 4) as HANDLE).is_ok_and(|(s, _)| s == REGION_LEN as u64))
                .count()
        };
        (0..10)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                once()
            })
            .min()
            .unwrap_or(0)
    }

    /// A hello that names another thread's window (here one of this
    /// process that pumps no messages) as the sender's: the mailbox answers
    /// there, nobody takes the answer, and nothing is left behind (the
    /// mailbox used to push the connection's handles into that window's
    /// process, where they stayed).
    #[test]
    fn a_hello_naming_another_window_leaves_nothing_behind() {
        let name = unique("leak");
        let server = echo(&name);
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tx.send(sender_window().unwrap() as usize).unwrap();
            let _ = stop_rx.recv();
        });
        let theirs = rx.recv().unwrap() as HWND;
        let target = find_mailbox(&name).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let before = count_regions();
        for i in 0..3u64 {
            let mut h = Out(Vec::new());
            h.bytes(&HELLO_MAGIC).u32(PROTOCOL).u32(0).u32(0).u64(42 + i);
            let r = send_copydata(target, theirs, HELLO_TAG, &h.0, 30_000);
            // Nobody took the answer in time: given up.
            assert!(matches!(r, Ok(ANSWER_ABANDONED)), "hello {i}: {r:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
        // Each hello used to leave one; others' come and go.
        let after = count_regions();
        assert!(after < before + 3, "{after} regions in this process after 3 hellos ({before} before)");
        stop_tx.send(()).unwrap();
        other.join().unwrap();
        // The mailbox still serves.
        let (link, max) = link_to(&name);
        let mut c = Client::new(link, Wait::Park, max);
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        c.put(CALL, 3, Body::Bytes(b"after"), &[], true, deadline).unwrap();
        assert_eq!(c.reply(deadline).unwrap().code, 3);
        drop(server);
    }

    /// A sender's link to a receiver played by this test, which takes the
    /// records off the request ring (as any receiver does) but never says
    /// it pulled their attachments (`taken_from_sender` stays 0).
    fn link_to_a_hostile_receiver() -> (Link, Region) {
        let region = Region::create(0).unwrap();
        let dup = owned(duplicate(region.section().inner().handle(), current_process(), 0, false).unwrap()).unwrap();
        let section = Section::from_parts(SysSection::from_handle(dup, REGION_LEN as u64, Access::ReadWrite), None);
        let me = open_process(std::process::id(), PROCESS_DUP_HANDLE | PROCESS_SYNCHRONIZE).unwrap();
        let (wake, bell, look) = (new_event().unwrap(), new_event().unwrap(), new_event().unwrap());
        let link = Link::new(
            Side::Sender,
            Region::adopt(section).unwrap(),
            (me, std::process::id()),
            wake,
            vec![bell],
            Arc::new(look),
        )
        .unwrap();
        (link, region)
    }

    /// Handles of this process on sections of `size` bytes.
    fn count_sections_of(size: u64) -> usize {
        (1..0x10000usize)
            .filter(|v| super::super::section_info((v * 4) as HANDLE).is_ok_and(|(s, _)| s == size))
            .count()
    }

    /// A receiver that takes every post off the ring but never acknowledges
    /// the pulls must not make the sender keep a handle (and with it the
    /// whole section) per post for as long as the connection lives.
    #[test]
    fn a_receiver_that_never_acknowledges_pulls_cannot_pile_up_handles_in_the_sender() {
        use crate::fast::conn::POST;
        use crate::fast::ring::Consumer;
        let (link, region) = link_to_a_hostile_receiver();
        let mut c = Client::new(link, Wait::Park, 1 << 20);
        let mut taker = Consumer::new(region.requests());
        const SIZE: u64 = 7 * 4096;
        let page = Section::anonymous(SIZE).unwrap();
        let before = count_sections_of(SIZE);
        let deadline = || Some(Instant::now() + Duration::from_secs(10));
        let mut refused = false;
        for i in 0..6000u64 {
            if c.put(POST, i, Body::Bytes(b""), &[&page], true, deadline()).is_err() {
                refused = true;
                break;
            }
            let rec = taker.peek().unwrap().expect("the post");
            taker.advance(&rec, false);
        }
        let kept = count_sections_of(SIZE) - before;
        assert!(refused, "6000 posts whose attachments the receiver never acknowledged were all accepted");
        assert!(kept <= MAX_KEPT_FOR_RECEIVER, "the sender keeps {kept} handles on the section");
        drop(c);
    }

    /// Senders that have left (their "closed" word set) while the mailbox's
    /// thread missed the look event (an auto-reset event any connected
    /// sender may reset, and which the receiver's linger threads wait on
    /// too) must not count against the connection limit: the mailbox
    /// looks at its connections before it refuses one.
    #[test]
    fn senders_that_left_unseen_do_not_fill_the_connection_limit() {
        let name = unique("limit");
        let options = crate::MailboxOptions::new().max_connections(2);
        let _server = crate::Mailbox::bind_with(name.as_str(), &options)
            .unwrap()
            .serve(|m| Reply::new(m.tag() as i64, m.payload().to_vec()));
        let gone: Vec<Link> = (0..2).map(|_| link_to(&name).0).collect();
        for l in &gone {
            // What `shutdown` writes, with the look event's signal lost.
            l.closed_word(Side::Sender).store(1, Ordering::Release);
        }
        std::thread::sleep(Duration::from_millis(200));
        let third = connect(&name, Wait::Park, Instant::now() + Duration::from_secs(30), None, None);
        assert!(third.is_ok(), "refused although both senders had left: {:?}", third.err());
        drop(gone);
    }

    /// A connection dropped for breaking the protocol while it still holds
    /// a reply's buffer its sender never pulled: the buffer lingers on a
    /// thread of its own, and set-ups of other senders go on at once (the
    /// mailbox's thread used to wait 2 s for the pull).
    #[test]
    fn a_dropped_connection_with_unpulled_replies_stalls_no_set_up() {
        let name = unique("stall");
        let server = echo(&name);
        let deadline = || Some(Instant::now() + Duration::from_secs(30));
        for round in 0..2 {
            let (link, max) = link_to(&name);
            let mut c = Client::new(link, Wait::Park, max);
            // A reply large enough for a buffer of its own, never read.
            c.put(CALL, 5, Body::Bytes(&[1u8; 200_000]), &[], true, deadline()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            // A record of no known kind: the connection is dropped.
            c.put(77, 0, Body::Bytes(b"x"), &[], true, deadline()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let (link, _) = link_to(&name);
            let took = started.elapsed();
            assert!(took < Duration::from_millis(1500), "round {round}: a set-up took {took:?}");
            drop((link, c));
        }
        drop(server);
    }

    /// A sender's thread that takes the answer only after the mailbox's
    /// wait for it ended (here held up until the mailbox has given the
    /// connection up, as a thread held up for more than half a second under
    /// load is): the set-up is made on both sides or on neither. It used to
    /// be made on the sender's side only, whose first call then failed
    /// with `PeerGone`.
    #[test]
    fn an_answer_taken_after_the_mailbox_gave_it_up_makes_no_half_connection() {
        let name = unique("late");
        let _server = echo(&name);
        SETUP_HOOK.with(|h| h.set(Some(SetUpHook::TakeLate)));
        let connected = connect(&name, Wait::Park, Instant::now() + Duration::from_secs(30), None, None);
        assert!(SETUP_HOOK.with(std::cell::Cell::get).is_none(), "the set-up never reached the hook");
        let (link, max) = connected.unwrap_or_else(|e| panic!("the set-up failed: {e}"));
        let mut c = Client::new(link, Wait::Park, max);
        let deadline = || Some(Instant::now() + Duration::from_secs(30));
        c.put(CALL, 6, Body::Bytes(b"late"), &[], true, deadline()).unwrap();
        let reply = c.reply(deadline());
        assert!(matches!(&reply, Ok(r) if r.code == 6), "the first call: {:?}", reply.map(|r| r.code));
    }

    /// A set-up that fails on the sender's side after the mailbox's answer
    /// came leaves nothing behind in the mailbox: with a limit of one
    /// connection, another sender of this (still running) process connects
    /// at once. The mailbox used to keep the half-made connection, and its
    /// slot, until the sending process exited.
    #[test]
    fn a_set_up_that_fails_after_the_answer_frees_its_slot_at_once() {
        let name = unique("halfmade");
        let options = crate::MailboxOptions::new().max_connections(1);
        let _server = crate::Mailbox::bind_with(name.as_str(), &options)
            .unwrap()
            .serve(|m| Reply::new(m.tag() as i64, m.payload().to_vec()));
        SETUP_HOOK.with(|h| h.set(Some(SetUpHook::Fail)));
        let failed = connect(&name, Wait::Park, Instant::now() + Duration::from_secs(30), None, None);
        assert!(SETUP_HOOK.with(std::cell::Cell::get).is_none(), "the set-up never reached the hook");
        assert!(matches!(failed, Err(SendError::Protocol { .. })), "{:?}", failed.map(|_| ()));
        let started = Instant::now();
        let (link, max) = loop {
            match connect(&name, Wait::Park, Instant::now() + Duration::from_secs(30), None, None) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(3), "the slot is still taken: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut c = Client::new(link, Wait::Park, max);
        let deadline = || Some(Instant::now() + Duration::from_secs(30));
        c.put(CALL, 4, Body::Bytes(b"second"), &[], true, deadline()).unwrap();
        assert_eq!(c.reply(deadline()).unwrap().code, 4);
    }

    /// Memory backed by a file is refused where copydata reads a peer's
    /// memory itself, since a file that cannot be paged in (on a network
    /// drive gone) would end this process in the middle of a copy: a
    /// message buffer (pool buffer, loan, one-shot payload), and the
    /// connection region a mailbox hands its sender (here a file holding a
    /// well-formed region). Sections attached to a message may be backed by
    /// a file.
    #[test]
    fn buffers_and_regions_backed_by_a_file_are_refused() {
        let name = unique("file");
        let _server = echo(&name);
        let (link, _) = link_to(&name);
        let path = std::env::temp_dir().join(format!("{name}.bin"));
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _remove = Remove(path.clone());
        let good = Region::create(0).unwrap();
        let mut bytes = vec![0u8; REGION_LEN];
        good.section().map(0, LINE).unwrap().read_at(0, &mut bytes[..LINE]).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let on_file = Section::from_file(&file, Access::ReadWrite).unwrap();
        let page = Section::anonymous(4096).unwrap();

        let refused = link.recv_aux(&aux(1, &[(value(&on_file), REGION_LEN as u64, ATTACH_RO, "")]), true, 0);
        let e = refused.map(|_| ()).expect_err("a buffer backed by a file was taken");
        assert!(e.to_string().contains("backed by a file"), "{e}");
        let (buf, _) = link.recv_aux(&aux(2, &[(value(&page), 4096, ATTACH_RO, "")]), true, 0).unwrap();
        assert!(buf.is_some());
        let (_, secs) = link.recv_aux(&aux(3, &[(value(&on_file), REGION_LEN as u64, 0, "")]), false, 1).unwrap();
        assert_eq!(secs.len(), 1, "a section backed by a file");

        let copy = |s: &Section| owned(duplicate(s.inner().handle(), current_process(), 0, false).unwrap()).unwrap();
        let e = adopt_region(copy(&on_file)).map(|_| ()).expect_err("a region backed by a file was taken");
        assert!(e.contains("backed by a file"), "{e}");
        assert!(adopt_region(copy(good.section())).is_ok());
    }

    /// Makes the answers of the mailbox `name` fail with the OS error
    /// `code` in place of being delivered, the first `left` of them; the
    /// count of hellos the mailbox got, while it lives.
    struct Undelivered(String);

    impl Undelivered {
        fn new(name: &Name, code: u32, left: usize) -> Undelivered {
            Undelivered::with(name, code, left, Duration::ZERO)
        }

        /// Holds every answer of the mailbox `name` back for `held`, then
        /// delivers it.
        fn held(name: &Name, held: Duration) -> Undelivered {
            Undelivered::with(name, 0, 0, held)
        }

        fn with(name: &Name, code: u32, left: usize, held: Duration) -> Undelivered {
            let hook = UndeliveredAnswers { mailbox: name.as_str().into(), code: code as i32, left, hellos: 0, held };
            UNDELIVERED_ANSWERS.lock().unwrap().push(hook);
            Undelivered(name.as_str().into())
        }

        fn hellos(&self) -> usize {
            UNDELIVERED_ANSWERS.lock().unwrap().iter().find(|h| h.mailbox == self.0).map_or(0, |h| h.hellos)
        }
    }

    impl Drop for Undelivered {
        fn drop(&mut self) {
            UNDELIVERED_ANSWERS.lock().unwrap_or_else(|e| e.into_inner()).retain(|h| h.mailbox != self.0);
        }
    }

    /// An answer the mailbox could not deliver at all (as UIPI refuses it
    /// to a sender of a higher integrity level) fails the set-up at once,
    /// after one hello. It used to be told "given up, say hello again", so
    /// the sender said hello again and again until its connect timeout,
    /// and then failed with `TimedOut`.
    #[test]
    fn an_answer_that_cannot_be_delivered_fails_the_set_up_at_once() {
        const ERROR_ACCESS_DENIED: u32 = 5;
        let name = unique("undelivered");
        let _server = echo(&name);
        let undelivered = Undelivered::new(&name, ERROR_ACCESS_DENIED, usize::MAX);
        let started = Instant::now();
        let failed = connect(&name, Wait::Park, Instant::now() + Duration::from_secs(10), None, None);
        let took = started.elapsed();
        assert!(matches!(failed, Err(SendError::Incompatible { .. })), "{:?}", failed.map(|_| ()));
        assert!(took < Duration::from_secs(5), "the set-up failed after {took:?}");
        assert_eq!(undelivered.hellos(), 1, "hellos said for one set-up");
        drop(undelivered);
        // The mailbox still serves.
        let (link, max) = link_to(&name);
        let mut c = Client::new(link, Wait::Park, max);
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        c.put(CALL, 7, Body::Bytes(b"after"), &[], true, deadline).unwrap();
        assert_eq!(c.reply(deadline).unwrap().code, 7);
    }

    /// An answer whose wait ended before the sender took it is given up,
    /// and the sender says hello again within its deadline: the second
    /// hello sets the connection up.
    #[test]
    fn an_answer_not_taken_in_time_is_followed_by_another_hello() {
        let name = unique("untaken");
        let _server = echo(&name);
        let undelivered = Undelivered::new(&name, ERROR_TIMEOUT, 1);
        let (link, max) = link_to(&name);
        assert_eq!(undelivered.hellos(), 2, "hellos said for one set-up");
        let mut c = Client::new(link, Wait::Park, max);
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        c.put(CALL, 8, Body::Bytes(b"again"), &[], true, deadline).unwrap();
        assert_eq!(c.reply(deadline).unwrap().code, 8);
    }

    /// An answer that comes after its set-up timed out (the mailbox's
    /// thread got the hello in time but was slow to answer) is refused,
    /// not taken for the reply bytes of the same thread's `send_to_window`
    /// to that mailbox's window, under way by then. It used to be taken:
    /// it comes first, and from the window sent to.
    #[test]
    fn a_late_answer_is_not_the_reply_of_a_later_plain_send() {
        let name = unique("late-answer");
        let _server = echo(&name);
        let held = Undelivered::held(&name, Duration::from_millis(1000));
        let failed = connect(&name, Wait::Park, Instant::now() + Duration::from_millis(300), None, None);
        let connecting = matches!(failed, Err(SendError::TimedOut { stage: crate::TimeoutStage::Connecting, .. }));
        assert!(connecting, "{:?}", failed.map(|_| ()));
        assert_eq!(held.hellos(), 1, "the mailbox got the hello");
        // Queued behind the hello: the mailbox answers the hello while this
        // thread waits here.
        let class = format!("copydata.mailbox.{name}");
        let reply = send_to_window(Some(&class), None, 7, b"after", Duration::from_secs(30)).unwrap();
        assert_eq!((reply.code, String::from_utf8_lossy(&reply.data).as_ref()), (7, "after"));
        drop(held);
        // Nothing was set up for the late hello: the mailbox still serves.
        let (link, max) = link_to(&name);
        let mut c = Client::new(link, Wait::Park, max);
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        c.put(CALL, 9, Body::Bytes(b"next"), &[], true, deadline).unwrap();
        assert_eq!(c.reply(deadline).unwrap().code, 9);
    }

    type Inside = Box<dyn FnOnce()>;

    thread_local! {
        /// What [`inside`]'s window procedure runs.
        static INSIDE: RefCell<Option<Inside>> = const { RefCell::new(None) };
    }

    /// A window procedure that runs what [`INSIDE`] holds on `WM_USER`.
    unsafe extern "system" fn inside_proc(hwnd: HWND, msg: u32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
        use windows_sys::Win32::UI::WindowsAndMessaging::WM_USER;
        if msg == WM_USER {
            if let Some(f) = INSIDE.with(|i| i.borrow_mut().take()) {
                f();
            }
            return 0;
        }
        // SAFETY: default handling of every other message.
        unsafe { DefWindowProcW(hwnd, msg, wparam, lparam) }
    }

    /// Runs `wait` on this thread, and `nested` on this thread too, inside
    /// `wait`'s wait: from a window procedure, for a message another thread
    /// sends to this thread's window 300 ms after `wait` started.
    fn inside<T>(nested: impl FnOnce() + 'static, wait: impl FnOnce() -> T) -> T {
        use windows_sys::Win32::UI::WindowsAndMessaging::{SendNotifyMessageW, WM_USER};
        static CLASS: Once = Once::new();
        CLASS.call_once(|| register_class("copydata.test.inside", inside_proc).unwrap());
        let window = message_window("copydata.test.inside", "").unwrap();
        INSIDE.with(|i| *i.borrow_mut() = Some(Box::new(nested)));
        let poke = {
            let window = window as usize;
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                // SAFETY: a window of the test's thread, destroyed only
                // after this thread is joined; a message without pointers.
                unsafe { SendNotifyMessageW(window as HWND, WM_USER, 0, 0) }
            })
        };
        let got = wait();
        assert_ne!(poke.join().unwrap(), 0, "the message to the thread's window was not sent");
        // SAFETY: this thread's own window.
        unsafe { DestroyWindow(window) };
        assert!(INSIDE.with(|i| i.borrow_mut().take()).is_none(), "the nested call did not run inside the wait");
        got
    }

    /// A window procedure run inside a set-up's wait (a message sent to the
    /// thread meanwhile) sets up another connection: both set-ups take
    /// their own answers and both connections serve. The inner set-up used
    /// to take the outer's place, and the outer then failed ("did not
    /// answer").
    #[test]
    fn a_set_up_inside_another_set_ups_wait_leaves_both_connected() {
        let (outer, inner) = (unique("outer"), unique("inner"));
        let (_a, _b) = (echo(&outer), echo(&inner));
        // The outer answer comes after the inner set-up is done.
        let held = Undelivered::held(&outer, Duration::from_millis(1500));
        let nested = std::rc::Rc::new(RefCell::new(None));
        let connected = inside(
            {
                let nested = nested.clone();
                move || {
                    let got = connect(&inner, Wait::Park, Instant::now() + Duration::from_secs(30), None, None);
                    *nested.borrow_mut() = Some(got);
                }
            },
            || connect(&outer, Wait::Park, Instant::now() + Duration::from_secs(30), None, None),
        );
        drop(held);
        let nested = nested.borrow_mut().take().expect("the inner set-up ran");
        let deadline = || Some(Instant::now() + Duration::from_secs(30));
        for (which, got) in [("outer", connected), ("inner", nested)] {
            let (link, max) = got.unwrap_or_else(|e| panic!("the {which} set-up: {e}"));
            let mut c = Client::new(link, Wait::Park, max);
            c.put(CALL, 3, Body::Bytes(which.as_bytes()), &[], true, deadline()).unwrap();
            let reply = c.reply(deadline()).unwrap();
            assert_eq!((reply.code, &reply.data[..]), (3, which.as_bytes()));
        }
    }

    /// A `send_to_window` made by a window procedure run inside another's
    /// wait leaves the outer one its reply bytes, whether they come before
    /// the nested send begins or during it. The nested send used to forget
    /// the outer's, which then returned no bytes.
    #[test]
    fn a_plain_send_inside_another_s_wait_leaves_it_its_reply() {
        let (outer, inner) = (unique("outer-plain"), unique("inner-plain"));
        // How long each tag's handler takes, in ms.
        let slow = |name: &Name| {
            crate::Mailbox::bind(name.as_str()).unwrap().serve(|m| {
                let ms = match m.tag() {
                    1 | 4 => 1500,
                    3 => 700,
                    _ => 0,
                };
                std::thread::sleep(Duration::from_millis(ms));
                Reply::new(m.tag() as i64, m.payload().to_vec())
            })
        };
        let (_a, _b) = (slow(&outer), slow(&inner));
        let class = |name: &Name| format!("copydata.mailbox.{name}");
        // (outer tag, inner tag): the outer's reply comes after the nested
        // send, then while it waits.
        for (outer_tag, inner_tag) in [(1, 2), (3, 4)] {
            let nested = std::rc::Rc::new(RefCell::new(None));
            let reply = inside(
                {
                    let (nested, class) = (nested.clone(), class(&inner));
                    move || {
                        let got = send_to_window(Some(&class), None, inner_tag, b"inner", Duration::from_secs(30));
                        *nested.borrow_mut() = Some(got);
                    }
                },
                || send_to_window(Some(&class(&outer)), None, outer_tag, b"outer", Duration::from_secs(30)),
            );
            let nested = nested.borrow_mut().take().expect("the inner send ran").unwrap();
            assert_eq!((nested.code, &nested.data[..]), (inner_tag as i64, &b"inner"[..]));
            let reply = reply.unwrap();
            assert_eq!((reply.code, &reply.data[..]), (outer_tag as i64, &b"outer"[..]));
        }
    }
}
