//! A hostile receiver against the sender: a hand-made mailbox (the
//! library's own wire pieces, put together wrongly on purpose) that hands
//! over descriptors that block when closed, stops reading its socket, or
//! announces buffers larger than any reply the sender takes. The sender
//! must keep to its timeouts and limits whatever the receiver does.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::wire::{self, Header};
use super::*;
use crate::fast::conn::{CALL, REPLY};
use crate::fast::pool::{BUF_NEW, BufRef};
use crate::fast::ring::{Consumer, Producer, pack_flags};
use crate::sys::linux::scm::tests::{lingering_tcp, open_fds, send_raw};

fn listen(name: &str) -> (UnixListener, PathBuf) {
    let n = Name::new(name).unwrap();
    let dir = runtime::runtime_dir().unwrap();
    let path = runtime::socket_path(&dir, &n);
    let _ = std::fs::remove_file(&path);
    (UnixListener::bind(&path).unwrap(), path)
}

/// A hand-made receiver at `name` answers the sender's hello with
/// `answer`, keeps what that returns (the peer of a lingering socket, say)
/// 4 s, long enough that a close waiting for a linger would show, then
/// ends: how long the sender's `connect_timeout(3 s)` took, and what it
/// gave.
fn connect_to_hand_made(
    name: &str,
    answer: impl FnOnce(&UnixStream) -> Box<dyn std::any::Any + Send> + Send + 'static,
) -> (Duration, Result<crate::Sender, SendError>) {
    let (listener, path) = listen(name);
    let recv = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let _ = wire::recv_header(&s, Patience::Until(Instant::now() + Duration::from_secs(5)), false);
        let keep = answer(&s);
        std::thread::sleep(Duration::from_secs(4));
        drop((keep, s));
    });
    let started = Instant::now();
    let r = crate::Sender::connect_timeout(name, Duration::from_millis(3000));
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    recv.join().unwrap();
    (took, r)
}

/// The receiver passes a lingering TCP socket along with a refusal: the
/// sender refuses a descriptor of that kind and closes it on another
/// thread (closing it here would wait out the linger, far beyond the
/// connect timeout).
#[test]
fn a_lingering_socket_in_a_refusal_does_not_hold_the_sender() {
    let name = &format!("hostile-linger-{}", std::process::id());
    let (took, r) = connect_to_hand_made(name, |s| {
        let (a, b) = lingering_tcp(Duration::from_secs(6));
        let reason = b"go away";
        let h = Header { magic: WELCOME, b0: SETUP_REFUSED, b1: 0, seq: 4, word: 0, len: reason.len() as u64 };
        wire::send_frame(s, &h, &[], &[a.as_fd()]).unwrap();
        drop(a); // the sender now holds the only reference
        std::thread::sleep(Duration::from_millis(100));
        // (The sender may have gone already.)
        let _ = (&*s).write_all(reason);
        Box::new(b)
    });
    assert!(took < Duration::from_millis(3500), "the sender hung {took:?} past its 3 s connect timeout");
    assert!(matches!(r, Err(SendError::Protocol { .. })), "{:?}", r.map(|_| ()));
}

/// A minimal receiver: a valid welcome, then it answers every CALL in the
/// ring at once, but never reads the connection's socket.
struct FakeReceiver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl FakeReceiver {
    fn start(
        name: &str,
        reply: impl Fn(&Region, &UnixStream, &mut Producer, &OwnedFd) -> bool + Send + 'static,
    ) -> FakeReceiver {
        Self::start_with(name, false, reply)
    }

    fn start_with(
        name: &str,
        listening_notify: bool,
        reply: impl Fn(&Region, &UnixStream, &mut Producer, &OwnedFd) -> bool + Send + 'static,
    ) -> FakeReceiver {
        let (listener, path) = listen(name);
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = wire::recv_header(&s, Patience::Until(Instant::now() + Duration::from_secs(5)), false);
            let region = Region::create(0).unwrap();
            region.section().inner().seal_seals().unwrap();
            let region_fd = region.section().inner().transfer_fd().unwrap();
            let bells = Bells::new().unwrap();
            let bells_fd = bells.section.inner().transfer_fd().unwrap();
            let (mine, mut theirs) = readiness_pair().unwrap();
            let mut _pending = None;
            if listening_notify {
                // A listening socket passes the checks (a Unix stream
                // socket, SO_PEERCRED = the receiver's pid); a connection
                // left pending on it makes it poll readable for ever.
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(format!(
                    "hostile-notify-{}",
                    std::process::id()
                ))
                .unwrap();
                let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
                _pending = Some(std::os::unix::net::UnixStream::connect_addr(&addr).unwrap());
                theirs = OwnedFd::from(l);
            }
            let h = Header { magic: WELCOME, b0: SETUP_OK, b1: 0, seq: u64::from(PROTOCOL), word: u64::MAX, len: 0 };
            wire::send_frame(&s, &h, &[], &[region_fd.as_fd(), bells_fd.as_fd(), theirs.as_fd()]).unwrap();
            let mut cons = Consumer::new(region.requests());
            let mut prod = Producer::new(region.replies());
            while !st.load(Ordering::Relaxed) {
                match cons.peek() {
                    Ok(Some(rec)) => {
                        cons.advance(&rec, false);
                        if rec.kind == CALL && reply(&region, &s, &mut prod, &mine) {
                            let w = region.reply_wake();
                            ring_word(w);
                            let _ = rustix::net::send(&mine, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
                        }
                    }
                    Ok(None) => std::thread::sleep(Duration::from_micros(100)),
                    Err(e) => panic!("{e}"),
                }
            }
            drop((s, mine, theirs, region, bells));
        });
        FakeReceiver { stop, thread: Some(thread), path }
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn empty_reply(_: &Region, _: &UnixStream, prod: &mut Producer, _: &OwnedFd) -> bool {
    prod.push(REPLY, pack_flags(0, 0), 0, 0, &[]).unwrap().unwrap();
    true
}

/// A receiver that answers calls but never reads the socket: once the
/// socket's buffer is full, a call with sections gives up at its own
/// timeout (it used to wait 2 s in the attachment's write, whatever the
/// timeout).
#[test]
fn a_receiver_that_does_not_read_its_socket_cannot_stretch_a_timeout() {
    let name = &format!("hostile-noread-{}", std::process::id());
    let fake = FakeReceiver::start(name, empty_reply);
    let mut s = crate::Sender::connect_timeout(name, Duration::from_secs(2)).unwrap();
    let sec = crate::Section::anonymous(4096).unwrap();
    let timeout = Duration::from_millis(50);
    let mut worst = Duration::ZERO;
    let mut calls = 0;
    for i in 0..5000 {
        let started = Instant::now();
        let r = s.send_with_sections(i, b"x", &[&sec], Some(timeout));
        let took = started.elapsed();
        calls += 1;
        worst = worst.max(took);
        if r.is_err() || took > Duration::from_millis(500) {
            eprintln!("call {i} with timeout {timeout:?} took {took:?}: {:?}", r.err());
            break;
        }
    }
    eprintln!("{calls} calls, slowest {worst:?}");
    drop(s);
    drop(fake);
    assert!(worst < Duration::from_millis(200), "a 50 ms send took {worst:?}");
}

/// A 1-byte reply in a new 256 MiB pooled buffer, max_reply 1 KiB: refused
/// (the sender used to map all 256 MiB, and keep them mapped).
#[test]
fn a_reply_buffer_larger_than_max_reply_needs_is_refused() {
    let name = &format!("hostile-bigmap-{}", std::process::id());
    let len = 256usize << 20;
    let sec = crate::Section::anonymous(len as u64).unwrap();
    let ro = sec.read_only().unwrap();
    let fd0 = ro.inner().transfer_fd().unwrap();
    let fd0 = std::sync::Mutex::new(Some(fd0));
    let fake = FakeReceiver::start(name, move |_region, s, prod, _mine| {
        let fd = fd0.lock().unwrap().take().unwrap();
        let h = Header { magic: AUX, b0: 1, b1: 0, seq: 0, word: len as u64, len: 0 };
        wire::send_frame(s, &h, &[], &[fd.as_fd()]).unwrap();
        let mut inline = vec![0u8; 8];
        inline.extend_from_slice(&BufRef { slot: 0, flags: BUF_NEW, use_no: 1 }.encode());
        prod.push(REPLY, pack_flags(1 | 2, inline.len()), 1, 0, &[&inline]).unwrap().unwrap();
        true
    });
    let vm = || {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmSize:")).unwrap().to_string();
        l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let opts = crate::SenderOptions::new().max_reply(1024);
    let mut s = crate::Sender::connect_with(name, &opts).unwrap();
    let before = vm();
    let r = s.send_timeout(1, b"x", Duration::from_secs(2));
    let after = vm();
    eprintln!(
        "reply: {:?}; VmSize {before} kB -> {after} kB (+{} MiB) with max_reply = 1 KiB",
        r.as_ref().map(|r| r.data.len()),
        (after.saturating_sub(before)) / 1024
    );
    drop(s);
    drop(fake);
    drop((sec, ro));
    // Refused before it is mapped: no honest receiver makes a buffer that
    // large for replies this sender takes.
    assert!(matches!(r, Err(SendError::Protocol { ref reason, .. }) if reason.contains("pooled buffer")), "{r:?}");
    assert!(after < before + (64 << 10), "VmSize grew from {before} kB to {after} kB");
}

/// The same through a reply's attachment frame: the receiver hands the
/// lingering socket as the "new buffer" of a reply; it is refused, and
/// closed elsewhere, within the call's 500 ms.
#[test]
fn a_lingering_socket_as_a_reply_buffer_does_not_hold_the_sender() {
    let name = &format!("hostile-linger-reply-{}", std::process::id());
    let (a, b) = lingering_tcp(Duration::from_secs(6));
    let a = std::sync::Mutex::new(Some(a));
    let fake = FakeReceiver::start(name, move |_region, s, prod, _mine| {
        let a = a.lock().unwrap().take().unwrap();
        let h = Header { magic: AUX, b0: 1, b1: 0, seq: 0, word: 1 << 20, len: 0 };
        wire::send_frame(s, &h, &[], &[a.as_fd()]).unwrap();
        drop(a);
        let mut inline = vec![0u8; 8];
        inline.extend_from_slice(&BufRef { slot: 0, flags: BUF_NEW, use_no: 1 }.encode());
        prod.push(REPLY, pack_flags(1 | 2, inline.len()), 1, 0, &[&inline]).unwrap().unwrap();
        true
    });
    let mut s = crate::Sender::connect_timeout(name, Duration::from_secs(2)).unwrap();
    let started = Instant::now();
    let r = s.send_timeout(1, b"x", Duration::from_millis(500));
    let took = started.elapsed();
    eprintln!("send_timeout(500 ms) returned after {took:?}: {:?}", r.as_ref().err());
    drop(s);
    drop(fake);
    drop(b);
    assert!(took < Duration::from_millis(1000), "send_timeout(500 ms) took {took:?}");
}

fn thread_cpu() -> Duration {
    // SAFETY: a zeroed rusage filled by the kernel.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    Duration::new(u.ru_utime.tv_sec as u64, u.ru_utime.tv_usec as u32 * 1000)
        + Duration::new(u.ru_stime.tv_sec as u64, u.ru_stime.tv_usec as u32 * 1000)
}

/// The receiver never answers, and puts one out-of-band byte on its
/// (honest) end of the readiness pair, which a read never takes: the
/// waiting sender must still sleep, not spin a CPU until its deadline.
#[test]
fn an_out_of_band_byte_on_the_readiness_handle_does_not_make_the_sender_spin() {
    let name = &format!("hostile-oob-{}", std::process::id());
    let fake = FakeReceiver::start(name, |_region, _s, _prod, mine| {
        let r = rustix::net::send(mine, b"!", SendFlags::OOB | SendFlags::NOSIGNAL);
        eprintln!("[receiver] no reply; MSG_OOB byte on the readiness pair: {r:?}");
        false
    });
    let mut s = crate::Sender::connect_with(name, &crate::SenderOptions::new().wait(Wait::Park)).unwrap();
    let (cpu0, t0) = (thread_cpu(), Instant::now());
    let r = s.send_timeout(1, b"x", Duration::from_secs(2));
    let (cpu, wall) = (thread_cpu() - cpu0, t0.elapsed());
    eprintln!("send_timeout(2 s): {:?} after {wall:?}, sender thread CPU {cpu:?}", r.as_ref().err());
    drop(s);
    drop(fake);
    assert!(cpu < Duration::from_millis(200), "the waiting sender burnt {cpu:?} of CPU in {wall:?}");
}

/// The receiver hands a listening Unix socket as the readiness handle (it
/// passes the type and SO_PEERCRED pid checks) with one connection pending
/// on it, so it polls readable for ever: refused at set-up (a blocking
/// sender's wait used to spin a CPU on it).
#[test]
fn a_listening_readiness_handle_is_refused() {
    let name = &format!("hostile-listen-notify-{}", std::process::id());
    let fake = FakeReceiver::start_with(name, true, |_region, _s, _prod, _mine| false);
    let r = crate::Sender::connect_with(name, &crate::SenderOptions::new().wait(Wait::Park));
    drop(fake);
    match r {
        Err(SendError::Protocol { reason, .. }) => assert!(reason.contains("readiness handle"), "{reason}"),
        other => panic!("a listening readiness handle was taken: {:?}", other.map(|_| ())),
    }
}

fn memfds(n: usize) -> Vec<OwnedFd> {
    (0..n).map(|_| rustix::fs::memfd_create("copydata-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()).collect()
}

/// More descriptors than one read may take, the last a lingering TCP
/// socket: a read that found no room for some would have the kernel close
/// them in the reading thread. Refused within the connect timeout.
#[test]
fn too_many_descriptors_in_a_refusal_do_not_hold_the_sender() {
    let name = &format!("hostile-many-{}", std::process::id());
    let (took, r) = connect_to_hand_made(name, |s| {
        let (a, b) = lingering_tcp(Duration::from_secs(6));
        let files = memfds(60);
        let mut fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        fds.push(a.as_fd());
        let h = Header { magic: WELCOME, b0: SETUP_REFUSED, b1: 0, seq: 4, word: 0, len: 0 };
        send_raw(s, &h.encode(), &fds);
        Box::new(b)
    });
    assert!(took < Duration::from_millis(3500), "connect_timeout(3 s) returned after {took:?}");
    assert!(matches!(r, Err(SendError::Protocol { .. })), "{:?}", r.map(|_| ()));
}

/// The same in a hello to a real mailbox: its accept thread goes on
/// setting up honest senders at once.
#[test]
fn too_many_descriptors_in_a_hello_do_not_stall_the_mailbox() {
    let name = format!("hostile-many-hello-{}", std::process::id());
    let mailbox = crate::Mailbox::bind(&name).unwrap();
    let path = runtime::socket_path(&runtime::runtime_dir().unwrap(), &Name::new(&name).unwrap());
    let (a, b) = lingering_tcp(Duration::from_secs(6));
    let s = UnixStream::connect(&path).unwrap();
    let files = memfds(60);
    let mut fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    fds.push(a.as_fd());
    let h = Header { magic: HELLO, b0: 0, b1: 0, seq: u64::from(PROTOCOL), word: 0, len: 0 };
    send_raw(&s, &h.encode(), &fds);
    drop((a, files));
    std::thread::sleep(Duration::from_millis(300));
    let r = crate::Sender::connect_timeout(&name, Duration::from_millis(2000));
    assert!(r.is_ok(), "an honest sender after the hostile hello: {:?}", r.map(|_| ()));
    drop((r, s, b, mailbox));
}

/// A Unix socket (allowed at set-up, but only as the readiness handle) in
/// the region's place, holding a lingering TCP socket in its queue: refused
/// within the connect timeout.
#[test]
fn a_socket_in_the_regions_place_is_refused_without_waiting() {
    let name = &format!("hostile-region-socket-{}", std::process::id());
    let (took, r) = connect_to_hand_made(name, |s| {
        let (a, b) = lingering_tcp(Duration::from_secs(6));
        let (x, y) = readiness_pair().unwrap();
        super::super::scm::send_with_fds(&x, &[b"z"], &[a.as_fd()]).unwrap();
        drop(a);
        let bells = Bells::new().unwrap();
        let bells_fd = bells.section.inner().transfer_fd().unwrap();
        let (_mine, theirs) = readiness_pair().unwrap();
        let h = Header { magic: WELCOME, b0: SETUP_OK, b1: 0, seq: u64::from(PROTOCOL), word: u64::MAX, len: 0 };
        wire::send_frame(s, &h, &[], &[y.as_fd(), bells_fd.as_fd(), theirs.as_fd()]).unwrap();
        Box::new(b)
    });
    assert!(took < Duration::from_millis(3500), "connect_timeout(3 s) returned after {took:?}");
    assert!(matches!(r, Err(SendError::Protocol { .. })), "{:?}", r.map(|_| ()));
}

/// A lingering socket handed to a mailbox is reset, not waited for: the
/// descriptors refused after it are closed at once too, not piled up.
#[test]
fn refused_descriptors_do_not_pile_up_behind_a_lingering_one() {
    let name = format!("hostile-pile-{}", std::process::id());
    let mailbox = crate::Mailbox::bind(&name).unwrap();
    let path = runtime::socket_path(&runtime::runtime_dir().unwrap(), &Name::new(&name).unwrap());
    let h = Header { magic: HELLO, b0: 0, b1: 0, seq: u64::from(PROTOCOL), word: 0, len: 0 };
    let (a, b) = lingering_tcp(Duration::from_secs(8));
    {
        let s = UnixStream::connect(&path).unwrap();
        send_raw(&s, &h.encode(), &[a.as_fd()]);
    }
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    let before = open_fds();
    for _ in 0..30 {
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..8)
            .map(|_| {
                let (r, w) = std::io::pipe().unwrap();
                (OwnedFd::from(r), OwnedFd::from(w))
            })
            .collect();
        let fds: Vec<_> = pipes.iter().flat_map(|(r, w)| [r.as_fd(), w.as_fd()]).collect();
        let s = UnixStream::connect(&path).unwrap();
        send_raw(&s, &h.encode(), &fds);
        std::thread::sleep(Duration::from_millis(20));
        drop((s, pipes));
    }
    // Other tests of this process open and close descriptors meanwhile: a
    // margin, far below the 480 refused here.
    let deadline = Instant::now() + Duration::from_secs(2);
    while open_fds() > before + 64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = open_fds();
    drop((b, mailbox));
    assert!(after <= before + 64, "open descriptors {before} -> {after}: refused ones piled up");
}

/// A receiver queues thousands of descriptor-carrying messages on the
/// sender's socket (as many as its send buffer takes), the last a
/// lingering TCP socket: dropping the sender empties the socket, whatever
/// its size, before closing it, so the drop does not wait.
#[test]
fn a_socket_full_of_descriptors_is_emptied_before_it_closes() {
    let name = &format!("hostile-full-socket-{}", std::process::id());
    let (a, b) = lingering_tcp(Duration::from_secs(6));
    let a = std::sync::Mutex::new(Some(a));
    let fake = FakeReceiver::start(name, move |_region, s, prod, _mine| {
        let a = a.lock().unwrap().take().unwrap();
        // (As large as the system allows: more messages than any fixed
        // number of reads.)
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, 8 << 20);
        let (r, _w) = std::io::pipe().unwrap();
        let r = OwnedFd::from(r);
        for i in 0..5000 {
            let last = i == 4999;
            use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage};
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let one = [if last { a.as_fd() } else { r.as_fd() }];
            control.push(SendAncillaryMessage::ScmRights(&one));
            let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
            if rustix::net::sendmsg(s, &[std::io::IoSlice::new(b"q")], &mut control, flags).is_err() {
                // Full: the lingering socket goes last anyway.
                let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                let one = [a.as_fd()];
                control.push(SendAncillaryMessage::ScmRights(&one));
                let _ = rustix::net::sendmsg(s, &[std::io::IoSlice::new(b"q")], &mut control, flags);
                break;
            }
        }
        drop(a);
        prod.push(REPLY, pack_flags(0, 0), 0, 0, &[]).unwrap().unwrap();
        true
    });
    let mut s = crate::Sender::connect_timeout(name, Duration::from_secs(2)).unwrap();
    let _ = s.send_timeout(1, b"x", Duration::from_secs(5));
    let started = Instant::now();
    drop(s);
    let took = started.elapsed();
    drop(fake);
    drop(b);
    assert!(took < Duration::from_secs(2), "dropping the sender took {took:?}");
}
