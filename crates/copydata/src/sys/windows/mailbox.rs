//! Windows mailboxes: real `WM_COPYDATA` to message-only windows.
//!
//! A mailbox is a message-only window (`HWND_MESSAGE`) of the class
//! `copydata.mailbox.NAME`, created and pumped by a thread of its own. The
//! name is held by the named mutex `Local\copydata.mailbox.NAME`, owned by
//! that thread: Windows abandons it when the process dies, so the next bind
//! takes the name over.
//!
//! A sender finds the window with `FindWindowExW(HWND_MESSAGE, class)` and
//! sends `WM_COPYDATA` with `SendMessageTimeoutW`: `dwData` is the tag and
//! `wParam` the sender's own message-only window (class `copydata.sender`,
//! one per sending thread), as the convention says. Copydata senders wrap
//! the payload in a small envelope (magic `CDW1`) that can also name
//! sections (large payloads, sections in messages) by their handle values in
//! the sender: the receiver takes its own copies with `DuplicateHandle` out
//! of the sender's process while the sender waits, so it only ever owns
//! handles it made itself. The receiver answers, before its window procedure returns, with
//! a `WM_COPYDATA` back to the sender's window (magic `CDR1`): status, code
//! and reply bytes. The `LRESULT` is the reply code, so plain Win32 programs
//! can talk to a mailbox (their payload is taken as is, their reply is the
//! `LRESULT`), and copydata can talk to plain windows
//! ([`send_to_window`]).

use std::cell::RefCell;
use std::ffi::c_void;
use std::io;
use std::os::windows::io::AsRawHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    ERROR_TIMEOUT, GetLastError, HANDLE, HWND, LPARAM, LRESULT, SetLastError, WAIT_ABANDONED, WAIT_OBJECT_0, WPARAM,
};
use windows_sys::Win32::System::DataExchange::COPYDATASTRUCT;
use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
use windows_sys::Win32::System::Threading::{CreateMutexW, ReleaseMutex, WaitForSingleObject};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CreateWindowExW, DefWindowProcW, DestroyWindow, DispatchMessageW, FindWindowExW, FindWindowW, GWLP_USERDATA,
    GetClassNameW, GetMessageW, GetWindowLongPtrW, GetWindowThreadProcessId, HWND_MESSAGE, IsWindow, MSG, PostMessageW,
    RegisterClassExW, SMTO_NORMAL, SendMessageTimeoutW, SetWindowLongPtrW, WM_APP, WM_COPYDATA, WNDCLASSEXW,
};

use super::{handover, owned, wide};
use crate::error::{BindError, ListError, ReplyError, SendError};
use crate::mailbox::{MailboxInfo, MailboxOptions, Message, Payload, Peer, Reply, Request};
use crate::name::Name;
use crate::section::{Access, Section};

const MAILBOX_CLASS_PREFIX: &str = "copydata.mailbox.";
const SENDER_CLASS: &str = "copydata.sender";
const REQUEST_MAGIC: [u8; 4] = *b"CDW1";
const REPLY_MAGIC: [u8; 4] = *b"CDR1";
/// `dwData` of a reply envelope.
const REPLY_TAG: usize = 0x4344_5752;
/// Payloads up to this size travel inside the `WM_COPYDATA`; larger ones in
/// a section duplicated into the peer.
const INLINE_MAX: usize = 64 * 1024;
const MAX_SECTIONS: usize = 16;
const FLAG_SECTION: u32 = 1;
const SECTION_RO: u32 = 1;
const SECTION_NAMED: u32 = 2;
const STATUS_OK: u32 = 0;
const STATUS_REFUSED: u32 = 1;
const STATUS_TOO_LARGE: u32 = 2;
/// Asks a mailbox's thread to close its window.
const WM_CLOSE_MAILBOX: u32 = WM_APP + 1;
/// How long a receiver waits to hand a reply to a sender that has stopped
/// listening (it timed out); a live sender takes it at once.
const REPLY_TIMEOUT_MS: u32 = 5_000;

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
    let cds = COPYDATASTRUCT { dwData: tag, cbData: data.len() as u32, lpData: data.as_ptr() as *mut c_void };
    let mut result = 0usize;
    // SAFETY:
    // - `cds` and the bytes it points to stay valid for the whole call (the
    //   system copies them into the receiver before it returns);
    // - `result` is a writable usize.
    let ok = unsafe {
        SetLastError(0);
        SendMessageTimeoutW(
            to,
            WM_COPYDATA,
            from as WPARAM,
            &cds as *const _ as LPARAM,
            SMTO_NORMAL,
            timeout_ms,
            &mut result,
        )
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

/// The longest wait passed to `SendMessageTimeoutW`: about 24 days ("no
/// timeout"). Larger values are taken as negative by some implementations.
const FOREVER_MS: u32 = i32::MAX as u32;

fn timeout_ms(deadline: Option<Instant>) -> Option<u32> {
    match deadline {
        None => Some(FOREVER_MS),
        Some(d) => {
            let left = d.checked_duration_since(Instant::now())?;
            Some(left.as_millis().clamp(1, u128::from(FOREVER_MS)) as u32)
        }
    }
}

/// A little-endian writer and reader for envelopes.
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

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated envelope".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// A payload too large to travel inline: copied into a new section. The peer
/// takes its own copy of the handle (by its value in this process) while
/// this process waits in `SendMessageTimeoutW`, so the section must live
/// until then.
fn payload_section(data: &[u8]) -> Result<Section, String> {
    let s = Section::anonymous(data.len() as u64).map_err(|e| e.to_string())?;
    s.map_mut(0, data.len()).map_err(|e| e.to_string())?.write_at(0, data).map_err(|e| e.to_string())?;
    Ok(s)
}

/// The value of a section's handle in this process, for an envelope.
fn handle_value(s: &Section) -> u64 {
    use std::os::windows::io::{AsHandle, AsRawHandle};
    s.as_handle().as_raw_handle() as usize as u64
}

/// Takes a copy of a section handle of the peer `pid`.
fn adopt(pid: u32, handle: u64, len: u64, access: Access, name: Option<&str>) -> Result<Section, String> {
    handover::duplicate_from(pid, handle, len, access, name).map_err(|e| e.to_string())
}

/// Copies a payload received in a section (the sender could still write
/// it, so it is copied rather than lent).
fn read_payload_section(pid: u32, handle: u64, len: u64) -> Result<Payload, String> {
    let s = adopt(pid, handle, len, Access::ReadOnly, None)?;
    let len = usize::try_from(len).map_err(|_| "payload larger than the address space".to_string())?;
    Ok(Payload::from(s.map(0, len).map_err(|e| e.to_string())?.to_vec()))
}

// ---------------------------------------------------------------- receiving

/// What the window procedure of a mailbox needs.
struct WindowState {
    name: Name,
    hwnd: HWND,
    max_payload: u64,
    tx: mpsc::Sender<Request>,
    closing: Arc<AtomicBool>,
}

/// The receiving side's handle on one request.
pub(crate) struct Responder {
    /// The sender's window, if it is a copydata sender (it gets an envelope).
    reply_to: Option<HWND>,
    from: HWND,
    seq: u64,
    done: mpsc::SyncSender<isize>,
}

// SAFETY: window handles are plain identifiers, usable from any thread with
// SendMessageTimeoutW (which is what the responder does).
unsafe impl Send for Responder {}

impl Responder {
    /// The reply envelope, and the section holding a large reply (to keep
    /// alive until the sender has taken it).
    fn envelope(&self, status: u32, code: i64, data: &[u8]) -> Result<(Vec<u8>, Option<Section>), String> {
        let mut out = Out(Vec::with_capacity(48 + data.len().min(INLINE_MAX)));
        out.bytes(&REPLY_MAGIC).u32(status).u64(self.seq).u64(code as u64).u64(data.len() as u64);
        if data.len() > INLINE_MAX {
            let section = payload_section(data)?;
            out.u32(FLAG_SECTION).u32(0).u64(handle_value(&section));
            return Ok((out.0, Some(section)));
        }
        out.u32(0).u32(0).u64(0).bytes(data);
        Ok((out.0, None))
    }

    fn answer(self, status: u32, code: i64, data: &[u8]) -> Result<(), ReplyError> {
        let mut result = Ok(());
        if let Some(to) = self.reply_to {
            result = self.envelope(status, code, data).map_err(|e| ReplyError::Io(io::Error::other(e))).and_then(
                |(env, _keep)| {
                    send_copydata(to, self.from, REPLY_TAG, &env, REPLY_TIMEOUT_MS)
                        .map_err(|_| ReplyError::SenderGone)
                        .map(|_| ())
                },
            );
        }
        let _ = self.done.send(if status == STATUS_OK { code as isize } else { 0 });
        result
    }

    pub(crate) fn reply(self, reply: Reply) -> Result<(), ReplyError> {
        let code = reply.code;
        self.answer(STATUS_OK, code, &reply.data)
    }

    pub(crate) fn refuse(self, reason: &str) {
        let _ = self.answer(STATUS_REFUSED, 0, reason.as_bytes());
    }
}

/// A copydata request envelope, parsed.
struct Envelope {
    seq: u64,
    payload: Payload,
    payload_len: u64,
    sections: Vec<Section>,
}

fn parse_request(data: &[u8], pid: u32, max_payload: u64) -> Result<Envelope, String> {
    let mut r = In(data);
    if r.take(4)? != REQUEST_MAGIC {
        return Err("bad magic".into());
    }
    let flags = r.u32()?;
    let seq = r.u64()?;
    let payload_len = r.u64()?;
    let payload_handle = r.u64()?;
    let nsec = r.u32()? as usize;
    let _pad = r.u32()?;
    if flags & !FLAG_SECTION != 0 || nsec > MAX_SECTIONS {
        return Err(format!("bad flags {flags:#x} or {nsec} sections"));
    }
    let mut sections = Vec::with_capacity(nsec);
    for _ in 0..nsec {
        let (handle, len, sflags, name_len) = (r.u64()?, r.u64()?, r.u32()?, r.u32()? as usize);
        let name = std::str::from_utf8(r.take(name_len)?).map_err(|_| "section name is not UTF-8".to_string())?;
        let name = (sflags & SECTION_NAMED != 0).then_some(name);
        let access = if sflags & SECTION_RO != 0 { Access::ReadOnly } else { Access::ReadWrite };
        sections.push(adopt(pid, handle, len, access, name)?);
    }
    let payload = if flags & FLAG_SECTION != 0 {
        if payload_len > max_payload {
            // Refused below; nothing to take.
            Payload::default()
        } else {
            read_payload_section(pid, payload_handle, payload_len)?
        }
    } else {
        if r.0.len() as u64 != payload_len {
            return Err("inline payload length mismatch".into());
        }
        Payload::from(r.0)
    };
    Ok(Envelope { seq, payload, payload_len, sections })
}

unsafe extern "system" fn mailbox_proc(hwnd: HWND, msg: u32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
    if msg != WM_COPYDATA {
        // SAFETY: default handling of every other message.
        return unsafe { DefWindowProcW(hwnd, msg, wparam, lparam) };
    }
    // SAFETY: GWLP_USERDATA holds the `WindowState` the mailbox thread set
    // before any message could arrive, and cleared only after the window is
    // destroyed; the thread outlives the window.
    let state = unsafe { GetWindowLongPtrW(hwnd, GWLP_USERDATA) } as *const WindowState;
    if state.is_null() || lparam == 0 {
        return 0;
    }
    // SAFETY: see above; only shared access.
    let state = unsafe { &*state };
    // SAFETY: for WM_COPYDATA, lParam points to a COPYDATASTRUCT (and its
    // bytes) valid for the duration of this call; the system made the copy.
    let cds = unsafe { &*(lparam as *const COPYDATASTRUCT) };
    let data: &[u8] = if cds.cbData == 0 || cds.lpData.is_null() {
        &[]
    } else {
        // SAFETY: as above: `cbData` bytes at `lpData`, owned by the system
        // for this call and written by nobody meanwhile.
        unsafe { std::slice::from_raw_parts(cds.lpData as *const u8, cds.cbData as usize) }
    };
    let sender = wparam as HWND;
    let sender_pid = window_pid(sender);
    let copydata_sender = class_of(sender) == SENDER_CLASS;
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let responder =
        |seq| Responder { reply_to: copydata_sender.then_some(sender), from: state.hwnd, seq, done: done_tx.clone() };
    let peer = Peer { pid: sender_pid, uid: None };
    let message = if copydata_sender {
        match parse_request(data, sender_pid, state.max_payload) {
            Ok(env) if env.payload_len > state.max_payload => {
                let r = responder(env.seq);
                let _ = r.answer(STATUS_TOO_LARGE, state.max_payload as i64, &[]);
                return 0;
            }
            Ok(env) => (env.seq, Message::new(cds.dwData as u64, env.payload, env.sections, peer)),
            Err(reason) => {
                log::warn!("mailbox {}: dropped a malformed message from pid {sender_pid}: {reason}", state.name);
                return 0;
            }
        }
    } else {
        (0, Message::new(cds.dwData as u64, Payload::from(data), Vec::new(), peer))
    };
    let (seq, message) = message;
    // If the mailbox is closing, the request is dropped here, which refuses it.
    let _ = state.tx.send(Request::new(message, responder(seq)));
    drop(done_tx);
    loop {
        match done_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(code) => return code,
            Err(mpsc::RecvTimeoutError::Disconnected) => return 0,
            Err(mpsc::RecvTimeoutError::Timeout) if state.closing.load(Ordering::SeqCst) => return 0,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    hwnd: usize,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mailbox {
    pub(crate) fn bind(name: &Name, options: &MailboxOptions, tx: mpsc::Sender<Request>) -> Result<Mailbox, BindError> {
        let closing = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (name2, max_payload, closing2) = (name.clone(), options.max(), closing.clone());
        let thread = std::thread::Builder::new()
            .name(format!("copydata-mailbox-{name}"))
            .spawn(move || mailbox_thread(name2, max_payload, tx, closing2, ready_tx))
            .map_err(|source| BindError::Io { name: name.to_string(), source })?;
        match ready_rx.recv() {
            Ok(Ok(hwnd)) => Ok(Mailbox { hwnd, closing, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(BindError::Io { name: name.to_string(), source: io::Error::other("the mailbox thread failed") })
            }
        }
    }
}

fn mailbox_thread(
    name: Name,
    max_payload: u64,
    tx: mpsc::Sender<Request>,
    closing: Arc<AtomicBool>,
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
    let waited = unsafe { WaitForSingleObject(mutex.as_raw_handle() as HANDLE, 0) };
    if waited != WAIT_OBJECT_0 && waited != WAIT_ABANDONED {
        let class = wide(&class_name(&name));
        // SAFETY: the class name outlives the call.
        let holder = unsafe { FindWindowExW(HWND_MESSAGE, std::ptr::null_mut(), class.as_ptr(), std::ptr::null()) };
        let pid = (!holder.is_null()).then(|| window_pid(holder));
        return drop(ready.send(Err(BindError::AlreadyBound { name: name.to_string(), pid })));
    }
    let window = register_class(&class_name(&name), mailbox_proc)
        .and_then(|()| message_window(&class_name(&name), name.as_str()));
    let hwnd = match window {
        Ok(h) => h,
        Err(e) => {
            // SAFETY: this thread owns the mutex.
            unsafe { ReleaseMutex(mutex.as_raw_handle() as HANDLE) };
            return drop(ready.send(Err(io(e))));
        }
    };
    let state = Box::into_raw(Box::new(WindowState { name: name.clone(), hwnd, max_payload, tx, closing }));
    // SAFETY: `hwnd` is our window; the pointer stays valid until it is
    // cleared and freed below, after the window is destroyed.
    unsafe { SetWindowLongPtrW(hwnd, GWLP_USERDATA, state as isize) };
    let _ = ready.send(Ok(hwnd as usize));
    // SAFETY: an all-zero MSG is valid; GetMessageW fills it.
    let mut msg: MSG = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `msg` is writable; messages for any window of this thread.
        let got = unsafe { GetMessageW(&mut msg, std::ptr::null_mut(), 0, 0) };
        if got <= 0 || (msg.hwnd == hwnd && msg.message == WM_CLOSE_MAILBOX) {
            break;
        }
        // SAFETY: dispatches the message just received.
        unsafe { DispatchMessageW(&msg) };
    }
    // SAFETY: our window, destroyed on the thread that made it; then the
    // state is detached and freed (no message can reach it any more).
    unsafe {
        DestroyWindow(hwnd);
        SetWindowLongPtrW(hwnd, GWLP_USERDATA, 0);
        drop(Box::from_raw(state));
        ReleaseMutex(mutex.as_raw_handle() as HANDLE);
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // SAFETY: posts to our own window; fails harmlessly if it is gone.
        unsafe { PostMessageW(self.hwnd as HWND, WM_CLOSE_MAILBOX, 0, 0) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- sending

/// What the sender's window received during a send.
enum Received {
    /// A copydata reply envelope.
    Envelope { status: u32, seq: u64, code: i64, payload: Result<Payload, String> },
    /// Plain bytes from a plain Win32 receiver.
    Plain(Vec<u8>),
}

thread_local! {
    /// This thread's sender window (made on first use, destroyed with the thread).
    static SENDER_WINDOW: RefCell<Option<SenderWindow>> = const { RefCell::new(None) };
    /// Replies that arrived at this thread's sender window.
    static RECEIVED: RefCell<Vec<Received>> = const { RefCell::new(Vec::new()) };
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
    // SAFETY: as in `mailbox_proc`: a COPYDATASTRUCT valid for this call.
    let cds = unsafe { &*(lparam as *const COPYDATASTRUCT) };
    let data: Vec<u8> = if cds.cbData == 0 || cds.lpData.is_null() {
        Vec::new()
    } else {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(cds.lpData as *const u8, cds.cbData as usize) }.to_vec()
    };
    let received = if cds.dwData == REPLY_TAG && data.starts_with(&REPLY_MAGIC) {
        match parse_reply(&data, window_pid(wparam as HWND)) {
            Ok(r) => r,
            Err(reason) => {
                log::warn!("copydata: dropped a malformed reply: {reason}");
                return 0;
            }
        }
    } else {
        Received::Plain(data)
    };
    RECEIVED.with(|r| r.borrow_mut().push(received));
    1
}

fn parse_reply(data: &[u8], pid: u32) -> Result<Received, String> {
    let mut r = In(data);
    r.take(4)?;
    let (status, seq, code, len) = (r.u32()?, r.u64()?, r.u64()? as i64, r.u64()?);
    let (flags, _pad, handle) = (r.u32()?, r.u32()?, r.u64()?);
    let payload = if flags & FLAG_SECTION != 0 {
        read_payload_section(pid, handle, len)
    } else if r.0.len() as u64 == len {
        Ok(Payload::from(r.0))
    } else {
        Err("reply length mismatch".into())
    };
    Ok(Received::Envelope { status, seq, code, payload })
}

#[derive(Debug)]
pub(crate) struct Sender {
    name: Name,
    target: usize,
    seq: u64,
}

fn find_mailbox(name: &Name) -> Option<HWND> {
    let class = wide(&class_name(name));
    // SAFETY: the class name outlives the call.
    let h = unsafe { FindWindowExW(HWND_MESSAGE, std::ptr::null_mut(), class.as_ptr(), std::ptr::null()) };
    (!h.is_null()).then_some(h)
}

impl Sender {
    pub(crate) fn connect(name: &Name) -> Result<Sender, SendError> {
        let target = find_mailbox(name).ok_or_else(|| SendError::NoSuchMailbox { name: name.to_string() })?;
        Ok(Sender { name: name.clone(), target: target as usize, seq: 0 })
    }

    pub(crate) fn call(
        &mut self,
        tag: u64,
        data: &[u8],
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<Reply, SendError> {
        let name = || self.name.to_string();
        let io = |source: io::Error| SendError::Io { name: name(), source };
        let deadline = timeout.map(|t| Instant::now() + t);
        let timed_out = || SendError::TimedOut { name: name(), timeout: timeout.unwrap_or_default() };
        if !is_window(self.target as HWND) {
            // The receiver went away since the lookup; it may have come back.
            self.target = find_mailbox(&self.name).ok_or_else(|| SendError::NoSuchMailbox { name: name() })? as usize;
        }
        let target = self.target as HWND;
        if sections.len() > MAX_SECTIONS {
            return Err(io(io::Error::new(io::ErrorKind::InvalidInput, format!("at most {MAX_SECTIONS} sections"))));
        }
        let from = sender_window().map_err(io)?;
        self.seq += 1;
        let mut env = Out(Vec::with_capacity(40 + data.len().min(INLINE_MAX)));
        // A large payload's section: the receiver takes its own copy of the
        // handle while we wait in SendMessageTimeoutW, so it lives until then.
        let large = if data.len() > INLINE_MAX {
            Some(payload_section(data).map_err(|e| io(io::Error::other(e)))?)
        } else {
            None
        };
        env.bytes(&REQUEST_MAGIC)
            .u32(if large.is_some() { FLAG_SECTION } else { 0 })
            .u64(self.seq)
            .u64(data.len() as u64)
            .u64(large.as_ref().map_or(0, handle_value))
            .u32(sections.len() as u32)
            .u32(0);
        for s in sections {
            let mut flags = if s.access() == Access::ReadOnly { SECTION_RO } else { 0 };
            let n = s.name().unwrap_or("");
            if !n.is_empty() {
                flags |= SECTION_NAMED;
            }
            env.u64(handle_value(s)).u64(s.len()).u32(flags).u32(n.len() as u32).bytes(n.as_bytes());
        }
        if large.is_none() {
            env.bytes(data);
        }
        RECEIVED.with(|r| r.borrow_mut().clear());
        let ms = timeout_ms(deadline).ok_or_else(timed_out)?;
        let sent = send_copydata(target, from, tag as usize, &env.0, ms);
        let received = RECEIVED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        drop(large);
        // Copydata receivers answer with an envelope; the LRESULT only
        // matters for plain windows (see `send_to_window`).
        match sent {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(ERROR_TIMEOUT as i32) && is_window(target) => return Err(timed_out()),
            Err(_) => return Err(SendError::ReceiverDied { name: name() }),
        }
        for r in received {
            if let Received::Envelope { status, seq, code, payload } = r {
                if seq != self.seq {
                    // A late reply to an earlier, timed-out message.
                    continue;
                }
                return match status {
                    STATUS_OK => Ok(Reply { code, data: payload.map_err(|e| io(io::Error::other(e)))? }),
                    STATUS_REFUSED => Err(SendError::Refused {
                        name: name(),
                        reason: String::from_utf8_lossy(&payload.map(Payload::into_vec).unwrap_or_default())
                            .into_owned(),
                    }),
                    STATUS_TOO_LARGE => {
                        Err(SendError::PayloadTooLarge { name: name(), size: data.len() as u64, max: code as u64 })
                    }
                    other => Err(io(io::Error::other(format!("unknown reply status {other}")))),
                };
            }
        }
        // No envelope came back: the receiver went away, or dropped the
        // message (malformed for it, or the mailbox was closing).
        Err(SendError::ReceiverDied { name: name() })
    }
}

/// Sends a plain `WM_COPYDATA` to an existing window, found by class and/or
/// title (`FindWindowW`, then among message-only windows), and waits at most
/// `timeout` for it to be handled. The reply code is the window's `LRESULT`;
/// the reply bytes are whatever it sent back to the sender's window (passed
/// as `wParam`) with `WM_COPYDATA` while handling the message.
#[doc(alias = "FindWindowW")]
#[doc(alias = "SendMessageTimeoutW")]
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
    RECEIVED.with(|r| r.borrow_mut().clear());
    let ms = timeout.as_millis().clamp(1, u128::from(FOREVER_MS)) as u32;
    let sent = send_copydata(target, from, tag as usize, data, ms);
    let received = RECEIVED.with(|r| std::mem::take(&mut *r.borrow_mut()));
    match sent {
        Ok(code) => {
            let data = received.into_iter().find_map(|r| if let Received::Plain(d) = r { Some(d) } else { None });
            Ok(Reply::new(code as i64, data.unwrap_or_default()))
        }
        Err(e) if e.raw_os_error() == Some(ERROR_TIMEOUT as i32) && is_window(target) => {
            Err(SendError::TimedOut { name: shown, timeout })
        }
        Err(_) => Err(SendError::ReceiverDied { name: shown }),
    }
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
        if let Some(name) = class_of(after).strip_prefix(MAILBOX_CLASS_PREFIX).and_then(|n| Name::new(n).ok()) {
            out.push(MailboxInfo { name: name.to_string(), pid: window_pid(after) });
        }
    }
}
