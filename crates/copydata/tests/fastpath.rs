//! The guarantees of the fast path (a shared region with two rings per
//! connection) across real processes: posts and their back-pressure, loans,
//! large payloads both ways, dead peers on either side, handler threads,
//! timeouts, the cost of an idle connection and both wait modes.
//!
//! Linux and (from the same sources) Windows under Wine; what reads `/proc`
//! or stops a process with `SIGSTOP` is Linux-only.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{Kid, hear, pattern, say, unique};
use copydata::{Mailbox, MailboxOptions, Message, Reply, SendError, Sender, SenderOptions, TimeoutStage, Wait};

const MIB: usize = 1 << 20;
/// How long a failure (a hang, a missed death) may take to surface.
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn child_entry() {
    common::child_main(role);
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ------------------------------------------------------------ checksums

/// A checksum both sides compute, word-wise (quick in lightly optimised
/// builds), fed in pieces whose lengths are multiples of 8 but the last.
struct Sum(u64);

impl Sum {
    fn new(len: usize) -> Sum {
        Sum(0xcbf2_9ce4_8422_2325u64 ^ len as u64)
    }

    fn update(&mut self, data: &[u8]) {
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.0 = (self.0 ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x100_0000_01b3).rotate_left(17);
        }
        for &b in words.remainder() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn sum(data: &[u8]) -> u64 {
    let mut s = Sum::new(data.len());
    s.update(data);
    s.0
}

// ------------------------------------------------------------ the receiver

/// What the receiver child (`srv`) does with a message: the top byte of the
/// tag, the rest is the argument.
const ECHO: u64 = 1; // reply code = checksum, data = the payload
const SUM: u64 = 2; // reply code = checksum (read chunk-wise), data = `describe`
const REC: u64 = 3; // record (arg, len, checksum, call?, loan?, worker); code = arg
const REC_SLOW: u64 = 4; // REC, sleeping 2 ms now and then
const REPORT: u64 = 5; // reply with the records so far (and forget them)
const GATE: u64 = 6; // say `@gated arg`, wait for a `go` line on stdin; code = arg
const SLEEP: u64 = 7; // say `@got arg`, sleep arg ms; code = arg
const MAKE: u64 = 8; // reply with pattern(arg, arg); code = its checksum
const COUNT: u64 = 9; // count; code = the count
const GATE_SUM: u64 = 10; // GATE, then say `@loansum SUM LEN` of the payload read only then
const MAKE_LOANED: u64 = 11; // MAKE as a loaned reply (arg >= 1 << 40: drop a loan of arg - 2^40 bytes, reply empty)

fn tag(op: u64, arg: u64) -> u64 {
    assert!(arg < 1 << 56);
    (op << 56) | arg
}

/// One message as the receiver recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    arg: u64,
    len: u64,
    sum: u64,
    call: bool,
    loan: bool,
    worker: u8,
}

const REC_LEN: usize = 26;

impl Rec {
    fn encode(&self) -> [u8; REC_LEN] {
        let mut b = [0u8; REC_LEN];
        b[0..8].copy_from_slice(&self.arg.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..24].copy_from_slice(&self.sum.to_le_bytes());
        b[24] = u8::from(self.call) | u8::from(self.loan) << 1;
        b[25] = self.worker;
        b
    }

    fn decode(b: &[u8]) -> Rec {
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Rec { arg: word(0), len: word(8), sum: word(16), call: b[24] & 1 != 0, loan: b[24] & 2 != 0, worker: b[25] }
    }
}

#[derive(Default)]
struct SrvState {
    records: Mutex<Vec<u8>>,
    permits: Mutex<u64>,
    opened: Condvar,
    count: AtomicU64,
}

impl SrvState {
    fn wait_gate(&self) {
        let mut permits = self.permits.lock().unwrap();
        while *permits == 0 {
            permits = self.opened.wait(permits).unwrap();
        }
        *permits -= 1;
    }

    fn open_gate(&self, n: u64) {
        *self.permits.lock().unwrap() += n;
        self.opened.notify_all();
    }
}

/// The handler thread's number (from its name, `copydata-serve-NAME-W`).
fn worker_index() -> u8 {
    let thread = std::thread::current();
    thread.name().and_then(|n| n.rsplit('-').next()).and_then(|w| w.parse().ok()).unwrap_or(255)
}

fn len_of(m: &Message) -> usize {
    m.loan().map_or(m.payload().len(), |l| l.len())
}

/// The checksum of a message, a loan read chunk by chunk.
fn sum_of(m: &Message) -> u64 {
    match m.loan() {
        Some(loan) => {
            let mut s = Sum::new(loan.len());
            loan.for_each_chunk(64 << 10, |c| s.update(c));
            s.0
        }
        None => sum(m.payload()),
    }
}

fn bytes_of(m: &Message) -> Vec<u8> {
    m.loan().map_or_else(|| m.payload().to_vec(), |l| l.to_vec())
}

/// For `SUM`: flags (loan, expects a reply, `payload()` as a slice holds the bytes, `read_at`
/// agrees with `to_vec` and refuses out-of-range reads), the checksum of
/// `to_vec`, the length.
fn describe(m: &Message) -> Vec<u8> {
    let copy = bytes_of(m);
    let read_at_ok = match m.loan() {
        Some(loan) => {
            let at = loan.len() / 3;
            let mut piece = vec![0u8; (loan.len() - at).min(4096)];
            loan.read_at(at, &mut piece).is_ok()
                && piece[..] == copy[at..at + piece.len()]
                && loan.read_at(loan.len(), &mut [0u8; 1]).is_err()
                && loan.read_at(usize::MAX, &mut [0u8; 2]).is_err()
        }
        None => true,
    };
    let flags = u8::from(m.loan().is_some())
        | u8::from(m.expects_reply()) << 1
        | u8::from(m.payload().len() == copy.len() && m.payload()[..] == copy[..]) << 2
        | u8::from(read_at_ok) << 3;
    let mut out = vec![flags];
    out.extend_from_slice(&sum(&copy).to_le_bytes());
    out.extend_from_slice(&(copy.len() as u64).to_le_bytes());
    out
}

fn handle(st: &SrvState, m: &mut Message) -> Reply {
    let (op, arg) = (m.tag() >> 56, m.tag() & ((1 << 56) - 1));
    match op {
        ECHO => {
            let data = bytes_of(m);
            Reply::new(sum(&data) as i64, data)
        }
        SUM => Reply::new(sum_of(m) as i64, describe(m)),
        REC | REC_SLOW => {
            if op == REC_SLOW && (arg & 0xffff_ffff) % 61 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            let rec = Rec {
                arg,
                len: len_of(m) as u64,
                sum: sum_of(m),
                call: m.expects_reply(),
                loan: m.loan().is_some(),
                worker: worker_index(),
            };
            st.records.lock().unwrap().extend_from_slice(&rec.encode());
            Reply::code(arg as i64)
        }
        REPORT => Reply::new(0, std::mem::take(&mut *st.records.lock().unwrap())),
        GATE => {
            say("gated", &arg.to_string());
            st.wait_gate();
            Reply::code(arg as i64)
        }
        SLEEP => {
            say("got", &arg.to_string());
            std::thread::sleep(Duration::from_millis(arg));
            Reply::code(arg as i64)
        }
        MAKE => {
            let data = pattern(arg as usize, arg);
            Reply::new(sum(&data) as i64, data)
        }
        COUNT => Reply::code(st.count.fetch_add(1, Ordering::Relaxed) as i64 + 1),
        MAKE_LOANED => {
            let (len, drop_first) = if arg >= 1 << 40 { (0, Some(arg - (1 << 40))) } else { (arg, None) };
            if let Some(n) = drop_first {
                drop(m.loan_reply(n as usize).expect("a reply loan"));
            }
            let data = pattern(len as usize, len);
            let mut loan = m.loan_reply(len as usize).expect("a reply loan");
            loan.write_at(0, &data).expect("in range");
            Reply::loaned(sum(&data) as i64, loan)
        }
        GATE_SUM => {
            say("gated", &arg.to_string());
            st.wait_gate();
            let s = sum_of(m);
            say("loansum", &format!("{s} {}", len_of(m)));
            Reply::code(arg as i64)
        }
        _ => panic!("unknown operation {op}"),
    }
}

/// The resident set of this process (0 where not measured).
fn rss_self() -> u64 {
    #[cfg(target_os = "linux")]
    return procfs::rss(std::process::id());
    #[cfg(not(target_os = "linux"))]
    0
}

/// The child roles.
fn role(role: &str, args: &[String]) -> Result<(), String> {
    match role {
        // Serves `args[0]` with `args[1]` handler threads (`handle`); a `go`
        // line opens the gate once, `quit` (or the end of stdin) unbinds.
        // Connects to `args[0]` in park mode; each `send` line sends
        // `args[1]` bytes (a streamed copy when large), saying `sending`
        // before and `sent CODE` after.
        "park-sender" => {
            let len: usize = args[1].parse().map_err(fail)?;
            let data = pattern(len, 7);
            let mut s = Sender::connect_with(&args[0], &SenderOptions::new().wait(Wait::Park)).map_err(fail)?;
            while hear() == "send" {
                say("sending", "");
                let reply = s.send_timeout(tag(SUM, 0), &data, Duration::from_secs(60)).map_err(fail)?;
                say("sent", &reply.code.to_string());
            }
            Ok(())
        }
        "srv" => {
            let threads: usize = args[1].parse().map_err(fail)?;
            let state = Arc::new(SrvState::default());
            let options = MailboxOptions::new().handler_threads(threads);
            let server = Mailbox::bind_with(&args[0], &options).map_err(fail)?.serve({
                let state = state.clone();
                move |m| handle(&state, m)
            });
            say("ready", &std::process::id().to_string());
            while hear() == "go" {
                state.open_gate(1);
            }
            state.open_gate(1 << 40);
            drop(server);
            say("bye", "");
            Ok(())
        }
        // Receives on `args[0]` with `recv_timeout` in short slices (as a
        // receiver that checks for something else in between does), each
        // message answered by `handle`, until a `quit` line (or the end of
        // stdin).
        "poll-srv" => {
            let state = SrvState::default();
            state.open_gate(1 << 40);
            let mailbox = Mailbox::bind(&args[0]).map_err(fail)?;
            let stop = Arc::new(AtomicBool::new(false));
            let stopper = stop.clone();
            std::thread::spawn(move || {
                while hear() == "go" {}
                stopper.store(true, Ordering::SeqCst);
            });
            say("ready", &std::process::id().to_string());
            while !stop.load(Ordering::SeqCst) {
                match mailbox.recv_timeout(Duration::from_millis(50)) {
                    Ok(mut request) => {
                        let reply = handle(&state, request.message_mut());
                        request.reply(reply).map_err(fail)?;
                    }
                    Err(copydata::RecvError::Timeout) => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            drop(mailbox);
            say("bye", "");
            Ok(())
        }
        // Gates the receiver `args[0]`, then posts `args[1]` messages of
        // `args[2]` bytes (`REC`), telling its progress; reports its resident
        // set before and after.
        "flood" => {
            let n: u64 = args[1].parse().map_err(fail)?;
            let size: usize = args[2].parse().map_err(fail)?;
            let mut s = Sender::connect(&args[0]).map_err(fail)?;
            s.send(tag(ECHO, 0), b"warm up").map_err(fail)?;
            let before = rss_self();
            s.post(tag(GATE, 0), b"").map_err(fail)?;
            let every: u64 = args.get(3).map_or(Ok(100), |e| e.parse()).map_err(fail)?;
            for i in 0..n {
                s.post(tag(REC, i), &pattern(size, i)).map_err(fail)?;
                if (i + 1) % every == 0 && i < 20_000 {
                    say("progress", &(i + 1).to_string());
                }
            }
            let after = rss_self();
            s.send(tag(ECHO, 0), b"sync").map_err(fail)?;
            say("done", &format!("{before} {after}"));
            Ok(())
        }
        // Posts to `args[0]` in a tight loop (some posts large, through
        // pooled buffers) until killed.
        "post-loop" => {
            let mut s = Sender::connect(&args[0]).map_err(fail)?;
            let big = pattern(100_000, 1);
            say("posting", "");
            for i in 0u64.. {
                if i % 50 == 0 {
                    s.post(tag(COUNT, i), &big).map_err(fail)?;
                } else {
                    s.post(tag(COUNT, i), &[1; 64]).map_err(fail)?;
                }
            }
            Ok(())
        }
        // Sends `args[1]` loans of `args[2]` bytes to `args[0]` after a
        // warm-up; reports how many distinct buffers they used and the
        // resident set before and after.
        "loans" => {
            let count: usize = args[1].parse().map_err(fail)?;
            let size: usize = args[2].parse().map_err(fail)?;
            let mut s = Sender::connect(&args[0]).map_err(fail)?;
            let one = |s: &mut Sender, i: usize| -> Result<usize, String> {
                let mut loan = s.loan(size).map_err(fail)?;
                let at = loan.as_mut_ptr() as usize;
                loan.fill(i as u8);
                let reply = loan.send(tag(SUM, 0)).map_err(fail)?;
                if reply.code != sum(&vec![i as u8; size]) as i64 {
                    return Err(format!("loan {i}: checksum differs"));
                }
                Ok(at)
            };
            for i in 0..10 {
                one(&mut s, i)?;
            }
            let before = rss_self();
            let mut seen = HashSet::new();
            for i in 0..count {
                seen.insert(one(&mut s, i)?);
            }
            let after = rss_self();
            say("loans", &format!("{} {before} {after}", seen.len()));
            Ok(())
        }
        // Takes pool buffers of `args[1]` MiB from a connection to `args[0]`
        // three ways and reports the resident set after each, once the pool
        // has been idle long enough to be trimmed: loans sent, loans dropped
        // unsent, and payloads refused by `try_post` (full queue).
        "give-back" => {
            let size = args[1].parse::<usize>().map_err(fail)? * MIB;
            let connect = || Sender::connect(&args[0]).map_err(fail);
            let settle = |s: &mut Sender| -> Result<u64, String> {
                // Idle past the trim delay; then any message trims the pool.
                std::thread::sleep(Duration::from_millis(500));
                s.send(tag(ECHO, 0), b"trim").map_err(fail)?;
                Ok(rss_self())
            };
            let check = |s: &mut Sender, what: &str| -> Result<(), String> {
                // The pool still serves loans.
                let mut loan = s.loan(size).map_err(fail)?;
                loan.fill(9);
                if loan.send(tag(SUM, 0)).map_err(fail)?.code != sum(&vec![9u8; size]) as i64 {
                    return Err(format!("a loan after {what} arrived damaged"));
                }
                Ok(())
            };
            // Each way on a connection of its own (dropping a connection
            // frees its pool whatever became of the buffers).
            let mut s = connect()?;
            let base = settle(&mut s)?;
            for i in 0..8 {
                let mut loan = s.loan(size).map_err(fail)?;
                loan.fill(i);
                loan.send(tag(SUM, 0)).map_err(fail)?;
            }
            let sent = settle(&mut s)?;
            check(&mut s, "sent loans")?;
            drop(s);
            let mut s = connect()?;
            for i in 0..8 {
                let mut loan = s.loan(size).map_err(fail)?;
                loan.fill(i);
                drop(loan);
            }
            let dropped = settle(&mut s)?;
            check(&mut s, "dropped loans")?;
            drop(s);
            let mut s = connect()?;
            s.send(tag(ECHO, 0), b"warm up").map_err(fail)?;
            s.post(tag(GATE, 0), b"").map_err(fail)?;
            hear(); // the parent has seen the receiver gated
            let mut filled = 0;
            loop {
                // Empty posts take the least room: once they no longer fit,
                // nothing does.
                match s.try_post(tag(COUNT, 0), b"") {
                    Ok(()) => filled += 1,
                    Err(SendError::Full { .. }) => break,
                    Err(e) => return Err(fail(e)),
                }
                if filled > 1_000_000 {
                    return Err("the queue never filled".into());
                }
            }
            let big = vec![7u8; size];
            for _ in 0..8 {
                match s.try_post(tag(SUM, 0), &big) {
                    Err(SendError::Full { .. }) => {}
                    other => return Err(format!("try_post on a full queue: {other:?}")),
                }
            }
            drop(big);
            say("filled", "");
            s.send(tag(ECHO, 0), b"sync").map_err(fail)?;
            let refused = settle(&mut s)?;
            check(&mut s, "refused posts")?;
            say("rss", &format!("{base} {sent} {dropped} {refused}"));
            Ok(())
        }
        // Posts `args[1]` messages (`REC`) to `args[0]` and exits at once.
        "post-and-exit" => {
            let n: u64 = args[1].parse().map_err(fail)?;
            let mut s = Sender::connect(&args[0]).map_err(fail)?;
            for i in 0..n {
                s.post(tag(REC, i), &pattern(i as usize * 10, i)).map_err(fail)?;
            }
            say("posted", "");
            Ok(())
        }
        // Posts `args[0]` a large message (seed 0) and a large loan (seed 1),
        // none of them taken yet: says `@short timed-out` or `@short ok` as
        // a short flush ends, then flushes for good, says `@flushed` and
        // exits at once.
        // With `args[1]` "dropped": the posts go through a sender dropped
        // at once, and another (never connected) flushes.
        "post-flush-exit" => {
            let mut s = Sender::connect(&args[0]).map_err(fail)?;
            s.post(tag(REC, 0), &pattern(FLUSHED[0], 0)).map_err(fail)?;
            let mut loan = s.loan(FLUSHED[1]).map_err(fail)?;
            loan.write_at(0, &pattern(FLUSHED[1], 1)).map_err(fail)?;
            loan.post(tag(REC, 1)).map_err(fail)?;
            if args.get(1).is_some_and(|a| a == "dropped") {
                drop(s);
                s = Sender::unconnected(&args[0], &SenderOptions::new()).map_err(fail)?;
            }
            match s.flush_timeout(Duration::from_millis(300)) {
                Err(SendError::TimedOut { .. }) => say("short", "timed-out"),
                Ok(()) => say("short", "ok"),
                Err(e) => return Err(fail(e)),
            }
            s.flush().map_err(fail)?;
            say("flushed", "");
            Ok(())
        }
        // Sends `args[0]` a loan of `args[1]` bytes (pattern seed 5) that the
        // handler reads only after the gate opens (`GATE_SUM`); killed meanwhile.
        "loan-once" => {
            let size: usize = args[1].parse().map_err(fail)?;
            let mut s = Sender::connect(&args[0]).map_err(fail)?;
            let mut loan = s.loan(size).map_err(fail)?;
            loan.write_at(0, &pattern(size, 5)).map_err(fail)?;
            loan.send(tag(GATE_SUM, 0)).map_err(fail)?;
            Ok(())
        }
        // Binds `args[0]` with `args[1]` handler threads and serves it only
        // after a `serve` line (senders may connect before), with a handler
        // that says `@got ID SEQ LEN SUM` for a message tagged `ID << 32 | SEQ`
        // and sleeps `args[2]` ms; `quit` (or the end of stdin) unbinds.
        "srv-late" => {
            let threads: usize = args[1].parse().map_err(fail)?;
            let delay = Duration::from_millis(args[2].parse().map_err(fail)?);
            let mailbox =
                Mailbox::bind_with(&args[0], &MailboxOptions::new().handler_threads(threads)).map_err(fail)?;
            say("ready", &std::process::id().to_string());
            if hear() != "serve" {
                return Err("expected `serve`".into());
            }
            let server = mailbox.serve(move |m| {
                let (id, seq) = (m.tag() >> 32, m.tag() & 0xffff_ffff);
                say("got", &format!("{id} {seq} {} {}", len_of(m), sum_of(m)));
                std::thread::sleep(delay);
                Reply::code(0)
            });
            say("serving", "");
            while !matches!(hear().as_str(), "quit" | "") {}
            drop(server);
            say("bye", "");
            Ok(())
        }
        // Connects to `args[0]` as sender `args[1]`, says `@connected`, waits
        // for a line, posts `args[2]` messages (tag `ID << 32 | SEQ`, payload
        // `pattern(SEQ * 10, ID * 1000 + SEQ)`), says `@posted`, and exits:
        // at once if `args[3]` is `exit`, after another line if `wait`.
        "post-wait" => {
            let id: u64 = args[1].parse().map_err(fail)?;
            let n: u64 = args[2].parse().map_err(fail)?;
            let mut s = Sender::connect(&args[0]).map_err(fail)?;
            say("connected", "");
            hear();
            for seq in 0..n {
                s.post(id << 32 | seq, &pattern(seq as usize * 10, id * 1000 + seq)).map_err(fail)?;
            }
            say("posted", "");
            if args[3] == "wait" {
                hear();
            }
            Ok(())
        }
        _ => Err(format!("unknown role {role}")),
    }
}

// ------------------------------------------------------------ parent helpers

/// A receiver child. Dropped without [`quit`](Srv::quit) (a failing test),
/// it is killed and its mailbox files removed.
struct Srv {
    kid: Option<Kid>,
    name: String,
    /// Read by the Linux-only checks (CPU, memory, descriptors).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pid: u32,
}

impl Srv {
    fn start(threads: usize) -> Srv {
        let name = unique("fast");
        let mut kid = Kid::spawn("srv", &[&name, &threads.to_string()]);
        let pid = kid.expect("ready").parse().unwrap();
        Srv { kid: Some(kid), name, pid }
    }

    fn kid(&mut self) -> &mut Kid {
        self.kid.as_mut().expect("the receiver child")
    }

    fn sender(&self) -> Sender {
        Sender::connect(&self.name).unwrap()
    }

    /// Unbinds and exits cleanly.
    fn quit(mut self) {
        let mut kid = self.kid.take().expect("the receiver child");
        kid.tell("quit");
        kid.expect("bye");
        kid.wait_ok();
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        if let Some(kid) = self.kid.take() {
            drop(kid);
            let _ = copydata::send_timeout(&self.name, 0, b"", Duration::from_secs(1));
        }
    }
}

/// After its receiver was killed: the name is gone (looking removes the
/// dead binder's files).
fn reclaim(name: &str) {
    match copydata::send_timeout(name, 0, b"", Duration::from_secs(10)) {
        Err(SendError::NoSuchMailbox { .. }) => {}
        other => panic!("mailbox {name} after its receiver was killed: {other:?}"),
    }
}

fn report(s: &mut Sender) -> Vec<Rec> {
    let reply = s.send_timeout(tag(REPORT, 0), b"", BOUND).unwrap();
    assert_eq!(reply.data.len() % REC_LEN, 0);
    reply.data.chunks_exact(REC_LEN).map(Rec::decode).collect()
}

fn check_echo(reply: &Reply, data: &[u8], what: &str) {
    assert_eq!(reply.code, sum(data) as i64, "{what}: checksum of {} bytes", data.len());
    assert_eq!(reply.data.len(), data.len(), "{what}: reply length");
    assert!(reply.data[..] == data[..], "{what}: reply bytes of {} bytes", data.len());
}

/// Runs `f` on a thread and gives its result, failing the test if it takes
/// longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|e| panic!("{what}: no result within {limit:?} ({e})"))
}

/// Whether `bytes` more can be allocated without crowding the machine.
fn memory_allows(bytes: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let available = info
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(u64::MAX, |kb| kb * 1024);
        available > bytes
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = bytes;
        true
    }
}

#[cfg(target_os = "linux")]
mod procfs {
    use std::time::Duration;

    fn read(pid: u32, what: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap_or_else(|e| panic!("/proc/{pid}/{what}: {e}"))
    }

    /// Resident bytes (private and shared).
    pub fn rss(pid: u32) -> u64 {
        let pages: u64 = read(pid, "statm").split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * rustix::param::page_size() as u64
    }

    /// The fields of `/proc/PID/stat` from the state on (field 3 first).
    fn stat(pid: u32) -> Vec<String> {
        let text = read(pid, "stat");
        let after = &text[text.rfind(')').unwrap() + 2..];
        after.split_whitespace().map(str::to_owned).collect()
    }

    /// User plus system CPU time.
    pub fn cpu(pid: u32) -> Duration {
        let f = stat(pid);
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
    }

    /// The process state letter (`T` when stopped).
    pub fn state(pid: u32) -> char {
        stat(pid)[0].chars().next().unwrap()
    }

    pub fn fds(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
    }

    /// Mappings of memfds (connection regions, buffers).
    pub fn memfd_maps(pid: u32) -> usize {
        read(pid, "maps").lines().filter(|l| l.contains("/memfd:")).count()
    }

    /// Asserts that `pid` sleeps: after 300 ms of quiet, it uses under 20 ms
    /// of CPU in the next second.
    pub fn assert_sleeps(pid: u32, what: &str) {
        std::thread::sleep(Duration::from_millis(300));
        let before = cpu(pid);
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu(pid).saturating_sub(before);
        assert!(used < Duration::from_millis(20), "{what}: the receiver used {used:?} of CPU in 1 s of quiet");
    }

    /// Waits (at most 10 s) until `f` holds.
    pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ------------------------------------------------------------ posts

/// Posts arrive in order with sends between them, each exactly once, and a
/// posted message says it expects no reply; payloads large enough for the
/// pooled buffers take part.
#[test]
fn posts_arrive_in_order_between_sends() {
    let srv = Srv::start(1);
    let mut s = srv.sender();
    let n = 3000u64;
    let data = |i: u64| pattern((i as usize * 131) % 40_000, i);
    for i in 0..n {
        if i % 10 == 9 {
            let reply = s.send_timeout(tag(REC, i), &data(i), BOUND).unwrap();
            assert_eq!(reply.code, i as i64, "the reply to send {i}");
        } else {
            s.post(tag(REC, i), &data(i)).unwrap();
        }
    }
    let recs = report(&mut s);
    assert_eq!(recs.len() as u64, n, "every message arrives exactly once");
    for (i, r) in recs.iter().enumerate() {
        let i = i as u64;
        let d = data(i);
        assert_eq!(r.arg, i, "message {i} out of order");
        assert_eq!(r.call, i % 10 == 9, "message {i}: expects_reply");
        assert_eq!((r.len, r.sum, r.loan), (d.len() as u64, sum(&d), false), "message {i}: payload");
    }
    srv.quit();
}

/// One sender keeps the handler thread busy with posts, never pausing;
/// another sender's calls still get through, each well within a second
/// (a worker serves its connections in turn, and a sender it serves alone
/// lets a newcomer wait only a few messages).
#[test]
fn a_flooding_sender_starves_no_other() {
    let srv = Srv::start(1);
    let mut flooder = srv.sender();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                flooder.post(tag(COUNT, 0), &[1; 64]).expect("a post of the flood");
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut other = srv.sender();
    let mut took = Vec::new();
    for i in 0..300 {
        let data = pattern(64, i);
        let started = Instant::now();
        check_echo(&other.send_timeout(tag(ECHO, 0), &data, BOUND).unwrap(), &data, "a call beside the flood");
        took.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let posted = flood.join().expect("the flooding thread");
    took.sort_unstable();
    let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("calls beside {posted} posts: median {median:?}, slowest {slowest:?}");
    assert!(posted > 1000, "the flood sent only {posted} posts");
    // Generous for a loaded machine; a starved sender waits for the flood.
    assert!(median < Duration::from_millis(5), "calls beside a flood of {posted} posts: median {median:?}");
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?} beside a flood of {posted} posts");
    srv.quit();
}

/// A worker that took a message straight from the connection it served
/// last (the others idle at its last round) still finds another
/// connection's message at once: `recv_timeout(0)` returns it rather than
/// a timeout. (The requests are held: answering one has the worker look at
/// every connection afresh.)
#[test]
fn a_zero_timeout_recv_finds_another_connections_message() {
    let name = unique("zero-timeout");
    let mailbox = Mailbox::bind(&name).unwrap();
    let options = SenderOptions::new().wait(Wait::SpinThenPark);
    let mut a = Sender::connect_with(&name, &options).unwrap();
    let mut b = Sender::connect_with(&name, &options).unwrap();
    let mut held = Vec::new();
    // A's second post is found by a round that came back to A with B idle,
    // so A's third is taken straight, with B's post waiting.
    for t in [1, 2, 3] {
        a.post(t, b"a").unwrap();
        if t == 3 {
            b.post(10, b"b").unwrap();
        }
        held.push(mailbox.recv_timeout(BOUND).unwrap());
    }
    match mailbox.recv_timeout(Duration::ZERO) {
        Ok(r) => held.push(r),
        Err(e) => panic!("a post was waiting, but recv_timeout(0) said {e}"),
    }
    let tags: Vec<u64> = held.iter().map(|r| r.tag()).collect();
    assert!(tags == [1, 2, 3, 10] || tags == [1, 2, 10, 3], "tags in the order received: {tags:?}");
}

/// A reply above the sender's limit (`SenderOptions::max_reply`), copied
/// or loaned, fails the call as a protocol error before it is mapped or
/// copied; the next call, on a new connection, works.
#[test]
fn a_reply_above_the_senders_limit_is_refused() {
    let srv = Srv::start(1);
    let options = SenderOptions::new().max_reply(64 << 10);
    let mut s = Sender::connect_with(&srv.name, &options).unwrap();
    for op in [MAKE, MAKE_LOANED] {
        match s.send_timeout(tag(op, MIB as u64), &[], BOUND) {
            Err(SendError::Protocol { reason, .. }) => assert!(reason.contains("limit"), "{reason}"),
            other => panic!("a 1 MiB reply past a 64 KiB limit (op {op}): {other:?}"),
        }
        let small = s.send_timeout(tag(MAKE, 1000), &[], BOUND).unwrap();
        assert_eq!(small.data.len(), 1000);
    }
    // Inline replies too (they take a shorter way).
    let mut tiny = Sender::connect_with(&srv.name, &SenderOptions::new().max_reply(100)).unwrap();
    assert_eq!(tiny.send_timeout(tag(MAKE, 100), &[], BOUND).unwrap().data.len(), 100);
    match tiny.send_timeout(tag(MAKE, 101), &[], BOUND) {
        Err(SendError::Protocol { reason, .. }) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("a 101-byte reply past a 100-byte limit: {other:?}"),
    }
    srv.quit();
}

/// A sender child floods a held-up receiver with `n` posts of `size` bytes:
/// while the receiver is held, at most `max_held` go out (the sender blocks,
/// without error); once it goes on, every post arrives once, in order.
/// Returns the sender's resident set before and after its posts.
fn flood_a_held_receiver(n: u64, size: usize, every: u64, max_held: u64) -> (u64, u64) {
    let mut srv = Srv::start(1);
    let mut flood = Kid::spawn("flood", &[&srv.name, &n.to_string(), &size.to_string(), &every.to_string()]);
    srv.kid().expect("gated");
    // Progress until the sender has been quiet for 3 s (longer than any
    // step of the protocol may wait for the peer, so a sender that gives up
    // instead of blocking says so: `@error` fails the test).
    let mut posted: u64 = flood.expect("progress").parse().unwrap();
    while let Some(p) = flood.expect_within("progress", Duration::from_secs(3)) {
        posted = p.parse().unwrap();
        assert!(
            posted <= max_held,
            "{posted} posts of {size} bytes went out while the receiver was held ({} MiB in flight)",
            posted * size as u64 / MIB as u64
        );
    }
    eprintln!("{posted} posts of {size} bytes went out while the receiver was held");
    srv.kid().tell("go");
    let rss = loop {
        match flood.next_line(common::WAIT) {
            Some((t, _)) if t == "progress" => {}
            Some((t, rest)) if t == "done" => break rest,
            other => panic!("flood: {other:?}"),
        }
    };
    flood.wait_ok();
    let mut s = srv.sender();
    let recs = report(&mut s);
    assert_eq!(recs.len() as u64, n, "every post arrives exactly once");
    for (i, r) in recs.iter().enumerate() {
        let i = i as u64;
        assert_eq!(r.arg, i, "post {i} out of order");
        assert!(!r.call, "post {i} expects a reply");
        assert_eq!((r.len, r.sum), (size as u64, sum(&pattern(size, i))), "post {i}: payload");
    }
    srv.quit();
    let (before, after) = rss.split_once(' ').unwrap();
    (before.parse().unwrap(), after.parse().unwrap())
}

/// A flood of small posts far larger than the request ring, into a receiver
/// that is held up: the sender blocks once the ring is full (it neither
/// buffers nor grows), and when the receiver goes on, every post arrives
/// once, in order.
#[test]
fn a_post_flood_blocks_instead_of_buffering() {
    // The ring (256 KiB) holds some 450 records of 512 bytes.
    let (before, after) = flood_a_held_receiver(100_000, 512, 100, 2000);
    if cfg!(target_os = "linux") {
        // 100 000 posts of 512 bytes are 51 MB: a sender that buffered them
        // would show it.
        assert!(after < before + 16 * MIB as u64, "the sender grew from {before} to {after} bytes");
    }
}

/// The same with posts of 1 MiB, which travel in pooled buffers: a held-up
/// receiver must make `post` block here too (not hand over a fresh section
/// per post without bound, nor fail), once a bounded amount is in flight.
#[test]
fn a_flood_of_large_posts_blocks_too() {
    // The pool holds at most 8 buffers per direction; 64 MiB in flight is
    // generous.
    flood_a_held_receiver(300, MIB, 4, 64);
}

/// Posts `REC` messages of `len` bytes numbered from `first` with
/// `try_post` until the queue is full; returns the next number.
fn fill_the_queue(s: &mut Sender, first: u64, len: usize) -> u64 {
    let mut n = first;
    loop {
        match s.try_post(tag(REC, n), &pattern(len, n)) {
            Ok(()) => n += 1,
            Err(SendError::Full { .. }) => return n,
            Err(e) => panic!("try_post {n}: {e}"),
        }
        assert!(n - first < 100_000, "the queue never filled");
    }
}

/// Holds the receiver `srv` (one handler thread) with the request ring of
/// `s` full to the brim and a trim of `s`'s pool due, such that the
/// receiver's next step gives the pool's large buffer back and frees the
/// room of exactly one record, the buffer's. In order: a `GATE` post (the
/// handler holds it), a `GATE` post of 2 MiB (a pooled buffer larger than
/// the pool keeps when idle, in use until the receiver takes it, so no trim
/// can give it back before), then posts of 16 bytes (one 64-byte line each,
/// the size of a RETIRE record) until `Full`, then 300 ms of quiet (longer
/// than the pool's trim delay). The next `go` lets the handler take the
/// large post, which releases its buffer, and hold again (`@gated 2`).
/// Returns the number of small posts (`REC` 0..n) and the room that step
/// frees: the large post's record (64 bytes on Linux; more on Windows, where
/// its attachment travels in the ring).
fn a_full_ring_and_a_trim_due(srv: &mut Srv, s: &mut Sender) -> (u64, usize) {
    s.post(tag(GATE, 1), b"").unwrap();
    assert_eq!(srv.kid().expect("gated"), "1");
    s.post(tag(GATE, 2), &vec![2u8; 2 * MIB]).unwrap();
    let n = fill_the_queue(s, 0, 16);
    // The ring (256 KiB) holds the large post's record and n lines.
    let room = (256 << 10) - 64 * n as usize;
    assert!((64..=4096).contains(&room), "{n} small posts fill the ring");
    if cfg!(target_os = "linux") {
        assert_eq!(room, 64, "the large post's record");
    }
    std::thread::sleep(Duration::from_millis(300));
    (n, room)
}

/// A call that times out waiting for room in a full queue has queued
/// nothing: its connection is kept (it was dropped, and the messages after
/// it then went on a new connection, which the receiver may serve before
/// the posts still queued on the old one), and every post arrives once, in
/// order, the timed-out call not at all.
#[test]
fn a_call_that_times_out_waiting_for_room_keeps_its_connection() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    s.post(tag(GATE, 1), b"").unwrap();
    assert_eq!(srv.kid().expect("gated"), "1");
    let n = fill_the_queue(&mut s, 0, 16);
    let pid = s.receiver_pid();
    assert!(pid.is_some());
    let started = Instant::now();
    match s.send_timeout(tag(REC, n), &pattern(16, n), Duration::from_millis(200)) {
        Err(SendError::TimedOut { .. }) => {}
        other => panic!("a call into a full queue: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(s.receiver_pid(), pid, "the connection was dropped");
    srv.kid().tell("go");
    s.post(tag(REC, n), &pattern(16, n)).unwrap();
    check_posts(&mut s, n + 1, |_| 16);
    srv.quit();
}

/// The payload length whose record takes exactly `room` bytes: 32 bytes in
/// the first line of 64, 56 in each further line.
fn filling(room: usize) -> usize {
    32 + 56 * (room / 64 - 1)
}

/// Checks that the receiver got `REC` 0..n, in order, each once, `len(i)`
/// bytes of `pattern(len(i), i)`.
fn check_posts(s: &mut Sender, n: u64, len: impl Fn(u64) -> usize) {
    let recs = report(s);
    let args: Vec<u64> = recs.iter().map(|r| r.arg).collect();
    assert_eq!(args, (0..n).collect::<Vec<_>>(), "every post arrives exactly once, in order");
    for r in &recs {
        let d = pattern(len(r.arg), r.arg);
        assert_eq!((r.len, r.sum, r.call), (d.len() as u64, sum(&d), false), "post {}", r.arg);
    }
}

/// A post waiting for room in a full request ring gets the room it waited
/// for, even when the sender's pool is due to give back a large buffer (a
/// RETIRE record) at that moment: the RETIRE waits for a later message.
/// Before the fix, the RETIRE took the room, the post found none after
/// waiting for it and failed with `SendError::Protocol` (its message lost,
/// the connection dropped). See `a_full_ring_and_a_trim_due` for the set-up;
/// the waiting post needs all the room the receiver frees. Every post
/// arrives once, in order, and the sender goes on.
#[test]
fn a_retire_record_never_takes_the_room_a_post_waited_for() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    let (n, room) = a_full_ring_and_a_trim_due(&mut srv, &mut s);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let r = s.post(tag(REC, n), &pattern(filling(room), n));
        let _ = tx.send((s, r));
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "post returned while the queue was full");
    srv.kid().tell("go");
    assert_eq!(srv.kid().expect("gated"), "2");
    let (mut s, r) = rx.recv_timeout(BOUND).expect("post did not return once there was room");
    r.expect("the post that waited for room");
    srv.kid().tell("go");
    // More posts (the first of them take the RETIRE along).
    for i in n + 1..n + 50 {
        s.post(tag(REC, i), &pattern(16, i)).unwrap_or_else(|e| panic!("post {i}: {e}"));
    }
    check_posts(&mut s, n + 50, |i| if i == n { filling(room) } else { 16 });
    srv.quit();
}

/// The same with `try_post`: it never blocks (each call returns within
/// 100 ms) and never fails but with `Full`, and once there is room for its
/// message it takes it, whatever the pool wants to give back. Before the
/// fix, the RETIRE record took the room and `try_post` failed with
/// `SendError::Protocol` (its message lost).
#[test]
fn try_post_takes_the_room_there_is_when_a_trim_is_due() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    let (first, room) = a_full_ring_and_a_trim_due(&mut srv, &mut s);
    let len = |i: u64| if i == first { filling(room) } else { 16 };
    let try_post = |s: &mut Sender, i: u64| {
        let started = Instant::now();
        let r = s.try_post(tag(REC, i), &pattern(len(i), i));
        let took = started.elapsed();
        assert!(took < Duration::from_millis(100), "try_post {i} took {took:?}");
        match r {
            Ok(()) => true,
            Err(SendError::Full { .. }) => false,
            Err(e) => panic!("try_post {i}: {e}"),
        }
    };
    assert!(!try_post(&mut s, first), "try_post into the full ring");
    srv.kid().tell("go");
    assert_eq!(srv.kid().expect("gated"), "2");
    // Room for exactly this post now.
    assert!(try_post(&mut s, first), "try_post with room for its message");
    for _ in 0..3 {
        assert!(!try_post(&mut s, first + 1), "try_post into the ring full again");
    }
    srv.kid().tell("go");
    // Once the receiver catches up, the queue drains: try_post goes through
    // again (the first ones take the RETIRE along).
    let mut n = first + 1;
    let deadline = Instant::now() + BOUND;
    while n < first + 50 {
        if try_post(&mut s, n) {
            n += 1;
        } else {
            assert!(Instant::now() < deadline, "try_post found the queue full for {BOUND:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    check_posts(&mut s, n, len);
    srv.quit();
}

/// `try_post` fails with `Full` while the receiver is held up and the ring
/// is full (nothing sent, also for a payload that would need a pooled
/// buffer); `post` then blocks; the connection stays usable, and everything
/// that did go out arrives once, in order.
#[test]
fn try_post_reports_full_and_the_connection_stays_usable() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    s.post(tag(GATE, 0), b"").unwrap();
    srv.kid().expect("gated");
    // Fill the ring with small posts, then with empty ones (the smallest
    // records: once they no longer fit, nothing does).
    let mut lens = Vec::new();
    for len in [100, 0] {
        loop {
            let n = lens.len() as u64;
            match s.try_post(tag(REC, n), &pattern(len, n)) {
                Ok(()) => lens.push(len),
                Err(SendError::Full { .. }) => break,
                Err(e) => panic!("try_post {n}: {e}"),
            }
            assert!(n < 100_000, "the queue never filled");
        }
    }
    let n = lens.len() as u64;
    assert!(n > 100, "the queue held only {n} small posts");
    for size in [0, 100, 20_000, 3 * MIB] {
        match s.try_post(tag(REC, n), &pattern(size, n)) {
            Err(SendError::Full { .. }) => {}
            other => panic!("try_post of {size} bytes on a full queue: {other:?}"),
        }
    }
    // A blocking post waits for room.
    let posted = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel();
    std::thread::spawn({
        let posted = posted.clone();
        move || {
            let r = s.post(tag(REC, n), &pattern(100, n));
            posted.store(true, Ordering::SeqCst);
            let _ = tx.send((s, r));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!posted.load(Ordering::SeqCst), "post returned while the queue was full");
    srv.kid().tell("go");
    let (mut s, r) = rx.recv_timeout(BOUND).expect("post did not return once the receiver went on");
    r.unwrap();
    let reply = s.send_timeout(tag(REC, n + 1), &pattern(30_000, n + 1), BOUND).unwrap();
    assert_eq!(reply.code, (n + 1) as i64);
    let recs = report(&mut s);
    assert_eq!(recs.len() as u64, n + 2, "what went out arrived exactly once");
    for (i, r) in recs.iter().enumerate() {
        let i = i as u64;
        let len = if i == n + 1 { 30_000 } else { lens.get(i as usize).copied().unwrap_or(100) };
        assert_eq!(r.arg, i, "message {i} out of order");
        assert_eq!(r.call, i == n + 1, "message {i}: expects_reply");
        assert_eq!((r.len, r.sum), (len as u64, sum(&pattern(len, i))), "message {i}: payload");
    }
    srv.quit();
}

/// `post_timeout` on a full queue (the receiver held up) gives `TimedOut`,
/// not before the time given; nothing of it is sent and the connection is
/// kept, so the posts before and after it arrive once each, in order.
#[test]
fn post_timeout_gives_up_on_a_full_queue_and_keeps_the_order() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    s.post(tag(GATE, 0), b"").unwrap();
    srv.kid().expect("gated");
    let n = fill_the_queue(&mut s, 0, 100);
    let t = Duration::from_millis(300);
    let started = Instant::now();
    match s.post_timeout(tag(REC, n), &pattern(100, n), t) {
        Err(SendError::TimedOut { timeout, stage, .. }) => {
            assert_eq!((timeout, stage), (t, TimeoutStage::Room), "the timeout and stage reported");
        }
        other => panic!("post_timeout on a full queue: {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= t, "gave up after {took:?}, before {t:?}");
    assert!(took < Duration::from_secs(5), "a timeout of {t:?} took {took:?}");
    srv.kid().tell("go");
    // The same connection goes on: the next posts queue behind the others.
    for i in n..n + 20 {
        s.post_timeout(tag(REC, i), &pattern(100, i), BOUND).unwrap();
    }
    let recs = report(&mut s);
    assert_eq!(recs.len() as u64, n + 20, "every post that went out arrives exactly once");
    for (i, r) in recs.iter().enumerate() {
        let i = i as u64;
        assert_eq!(r.arg, i, "post {i} out of order");
        assert_eq!((r.len, r.sum), (100, sum(&pattern(100, i))), "post {i}: payload");
    }
    srv.quit();
}

/// A loan posted into a full queue comes back: `Loan::try_post` at once
/// with `Full`, `Loan::post_timeout` with `TimedOut` no sooner than its
/// timeout, the loan still filled and lent each time; posted again once
/// there is room, it arrives once, in order, in place, as do the posts
/// around it.
#[test]
fn a_loan_posted_into_a_full_queue_comes_back() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    s.post(tag(GATE, 0), b"").unwrap();
    srv.kid().expect("gated");
    // Posts of 16 bytes: one line each, no larger than the loan's record.
    let n = fill_the_queue(&mut s, 0, 16);
    let len = 100_000;
    let mut loan = s.loan(len).unwrap();
    // SAFETY: the loan is ours to write until it is posted.
    unsafe { loan.as_mut_slice() }.copy_from_slice(&pattern(len, n));
    let err = loan.try_post(tag(REC, n)).expect_err("try_post into a full queue");
    assert!(matches!(err.error(), SendError::Full { .. }), "try_post into a full queue: {err}");
    let loan = err.into_loan().expect("the loan comes back with Full");
    let t = Duration::from_millis(300);
    let started = Instant::now();
    let err = loan.post_timeout(tag(REC, n), t).expect_err("post_timeout into a full queue");
    let took = started.elapsed();
    match err.error() {
        SendError::TimedOut { timeout, stage, .. } => {
            assert_eq!((*timeout, *stage), (t, TimeoutStage::Room), "the timeout and stage reported");
        }
        other => panic!("post_timeout into a full queue: {other:?}"),
    }
    assert!(took >= t, "gave up after {took:?}, before {t:?}");
    assert!(took < Duration::from_secs(5), "a timeout of {t:?} took {took:?}");
    let loan = err.into_loan().expect("the loan comes back with TimedOut");
    assert_eq!(loan.len(), len);
    srv.kid().tell("go");
    // Room comes as the receiver catches up: the same loan, still filled.
    loan.post_timeout(tag(REC, n), BOUND).unwrap();
    s.post(tag(REC, n + 1), &pattern(16, n + 1)).unwrap();
    // A loan given up on is dropped: its buffer goes back, nothing is sent.
    let mut spare = s.loan(len).unwrap();
    spare.fill(9);
    drop(spare);
    let recs = report(&mut s);
    assert_eq!(recs.len() as u64, n + 2, "every post that went out arrives exactly once");
    for (i, r) in recs.iter().enumerate() {
        let i = i as u64;
        let size = if i == n { len } else { 16 };
        assert_eq!(r.arg, i, "post {i} out of order");
        assert_eq!(r.loan, i == n, "post {i}: loaned");
        assert_eq!((r.len, r.sum), (size as u64, sum(&pattern(size, i))), "post {i}: payload");
    }
    srv.quit();
}

/// When every buffer of the pool is held by the receiver (posted loans it
/// has not taken yet), `try_loan` fails at once with `Full` and
/// `loan_timeout` with `TimedOut`, no sooner than its timeout, both
/// keeping the connection; once the receiver catches up, a loan comes at
/// once, and every loan posted before arrives once, in order, in place.
#[test]
fn a_loan_waits_for_a_buffer_only_as_long_as_asked() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    s.post(tag(GATE, 0), b"").unwrap();
    srv.kid().expect("gated");
    let len = 100_000;
    // Post loans until the pool has none left (it holds a few buffers).
    let mut held = 0u64;
    loop {
        match s.try_loan(len) {
            Ok(mut loan) => {
                held += 1;
                // SAFETY: the loan is ours to write until it is posted.
                unsafe { loan.as_mut_slice() }.copy_from_slice(&pattern(len, held));
                loan.post(tag(REC, held)).unwrap();
            }
            Err(SendError::Full { name }) => {
                assert_eq!(name, srv.name);
                break;
            }
            Err(e) => panic!("try_loan: {e}"),
        }
        assert!(held < 64, "the pool never ran out");
    }
    assert!(held >= 2, "only {held} loans before the pool ran out");
    let t = Duration::from_millis(300);
    let started = Instant::now();
    let err = s.loan_timeout(len, t).expect_err("loan_timeout with every buffer held");
    let took = started.elapsed();
    match err {
        SendError::TimedOut { timeout, stage, .. } => {
            assert_eq!((timeout, stage), (t, TimeoutStage::Room), "the timeout and stage reported");
        }
        other => panic!("loan_timeout with every buffer held: {other:?}"),
    }
    assert!(took >= t, "gave up after {took:?}, before {t:?}");
    assert!(took < Duration::from_secs(5), "a timeout of {t:?} took {took:?}");
    // The connection was kept: a post queues behind the loans.
    assert!(s.max_payload().is_some(), "the connection was dropped");
    s.post(tag(REC, held + 1), &pattern(16, held + 1)).unwrap();
    srv.kid().tell("go");
    // Buffers come back as the receiver catches up.
    let mut loan = s.loan_timeout(len, BOUND).unwrap();
    // SAFETY: as above.
    unsafe { loan.as_mut_slice() }.copy_from_slice(&pattern(len, held + 2));
    loan.post(tag(REC, held + 2)).unwrap();
    let recs = report(&mut s);
    assert_eq!(recs.len() as u64, held + 2, "every post arrives exactly once");
    for (r, i) in recs.iter().zip(1..) {
        let size = if i == held + 1 { 16 } else { len };
        assert_eq!(r.arg, i, "post {i} out of order");
        assert_eq!(r.loan, i != held + 1, "post {i}: loaned");
        assert_eq!((r.len, r.sum), (size as u64, sum(&pattern(size, i))), "post {i}: payload");
    }
    srv.quit();
}

/// A loan for which the pool empties a buffer too small and fills its slot
/// anew, at once, does not retire that slot after announcing the new
/// buffer: the receiver would forget the new buffer and drop the
/// connection at its next use. Set-up: the pool at its 8 buffers (one free
/// and small, seven queued), the ring full, so the RETIRE of the small
/// buffer must wait; then room for the loan's record alone (the receiver
/// takes a held post whose record is the same size: a first-use loan).
/// Before the fix, the RETIRE went out with the next message, and the
/// loans that used the slot again broke the connection.
#[test]
fn a_slot_emptied_and_filled_at_once_is_not_retired_after_its_new_buffer() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    let big = 100_000;
    let post_loan = |s: &mut Sender, t: u64| {
        let mut l = s.loan(big).unwrap();
        // SAFETY: the loan is ours to write until it is posted.
        unsafe { l.as_mut_slice() }.copy_from_slice(&pattern(big, t & 0xffff));
        l.post(t).unwrap();
    };
    // A small buffer, lent and given back unsent: free, in the first slot.
    drop(s.loan(1000).unwrap());
    s.post(tag(GATE, 0), b"").unwrap();
    srv.kid().expect("gated");
    // Behind the held post: a held loan (its record the size of the one to
    // come), then six more: seven buffers in use, the pool at its limit.
    post_loan(&mut s, tag(GATE, 1));
    for i in 0..6 {
        post_loan(&mut s, tag(REC, i));
    }
    let n = fill_the_queue(&mut s, 6, 16);
    let mut loan = s.try_loan(big).expect("a loan from the small buffer's slot, filled anew");
    // SAFETY: as above.
    unsafe { loan.as_mut_slice() }.copy_from_slice(&pattern(big, n));
    let loan = loan.try_post(tag(REC, n)).expect_err("the ring is full").into_loan().expect("the loan back");
    // The receiver takes the held loan and holds it: room for one record.
    srv.kid().tell("go");
    assert_eq!(srv.kid().expect("gated"), "1");
    loan.post_timeout(tag(REC, n), BOUND).expect("the loan, with room for its record");
    srv.kid().tell("go");
    let recs = report(&mut s);
    assert_eq!(recs.len() as u64, n + 1, "every post arrives once");
    // Every slot in use again, the refilled one among them.
    s.post(tag(GATE, 2), b"").unwrap();
    assert_eq!(srv.kid().expect("gated"), "2");
    for i in 0..8 {
        post_loan(&mut s, tag(REC, n + 1 + i));
    }
    srv.kid().tell("go");
    let recs = report(&mut s);
    let args: Vec<u64> = recs.iter().map(|r| r.arg).collect();
    assert_eq!(args, (n + 1..n + 9).collect::<Vec<_>>(), "the loans that use every slot again");
    for r in &recs {
        assert_eq!((r.len, r.sum, r.loan), (big as u64, sum(&pattern(big, r.arg)), true), "loan {}", r.arg);
    }
    srv.quit();
}

/// A call of this process that holds the receiver's only handler thread
/// (`GATE`) until the receiver child is told `go`; the channel gives the
/// sender back with the call's result.
type Held = std::sync::mpsc::Receiver<(Sender, Result<Reply, SendError>)>;

fn hold_the_handler(srv: &mut Srv) -> Held {
    let mut holder = srv.sender();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let r = holder.send(tag(GATE, 1), b"");
        let _ = tx.send((holder, r));
    });
    srv.kid().expect("gated");
    rx
}

/// Once the held call returns: the first `n` records of the messages the
/// receiver handled next. Its one handler thread takes other senders'
/// posts and this connection's REPORTs in turn, so they are collected
/// until all are in (or 10 s pass).
fn records_after(held: Held, n: usize) -> (Sender, Vec<Rec>) {
    let (mut holder, r) = held.recv_timeout(BOUND).expect("the held call did not return");
    assert_eq!(r.unwrap().code, 1);
    let mut recs = Vec::new();
    let started = Instant::now();
    while recs.len() < n && started.elapsed() < Duration::from_secs(10) {
        recs.extend(report(&mut holder));
        std::thread::sleep(Duration::from_millis(20));
    }
    (holder, recs)
}

/// Posts that `post` accepted are delivered even if their sender exits
/// before the receiver gets to them (as `PostMessage`'s are): here the
/// receiver's only handler thread is held by another sender's call while a
/// sender child posts and exits.
#[test]
fn posts_of_a_sender_that_exits_are_delivered() {
    let mut srv = Srv::start(1);
    let held = hold_the_handler(&mut srv);
    let n = 20u64;
    let mut poster = Kid::spawn("post-and-exit", &[&srv.name, &n.to_string()]);
    poster.expect("posted");
    poster.wait_ok();
    // Let the receiver notice the hang-up before its handler thread is free.
    std::thread::sleep(Duration::from_millis(300));
    srv.kid().tell("go");
    let (_, recs) = records_after(held, n as usize);
    let args: Vec<u64> = recs.iter().map(|r| r.arg).collect();
    assert_eq!(args, (0..n).collect::<Vec<_>>(), "the posts of a sender that exited");
    for (i, r) in recs.iter().enumerate() {
        let d = pattern(i * 10, i as u64);
        assert_eq!((r.len, r.sum, r.call), (d.len() as u64, sum(&d), false), "post {i}");
    }
    srv.quit();
}

/// The sizes `post-flush-exit` posts: a pooled buffer and a loan, both
/// handed over with a buffer of their own (on Windows, pulled out of the
/// sending process by the receiver).
const FLUSHED: [usize; 2] = [100_000, 200_000];

/// After `Sender::flush` the sender may exit at once and its large posts
/// still arrive whole. On Windows flush waits until the receiver has taken
/// them (it pulls their buffers out of the sender; a short flush times out
/// and keeps the connection); on Linux they need nothing of the sender and
/// flush returns at once, the sender exiting before the receiver has
/// taken them.
#[test]
fn a_flushed_sender_may_exit_at_once() {
    flushed_posts_arrive(false);
}

/// The same when the posts went through a sender dropped before the
/// flush: flush also waits for connections this process dropped.
#[test]
fn a_flush_covers_the_posts_of_a_dropped_sender() {
    flushed_posts_arrive(true);
}

fn flushed_posts_arrive(dropped: bool) {
    let mut srv = Srv::start(1);
    let held = hold_the_handler(&mut srv);
    let how = if dropped { "dropped" } else { "kept" };
    let mut poster = Kid::spawn("post-flush-exit", &[&srv.name, how]);
    let short = poster.expect("short");
    if cfg!(windows) {
        assert_eq!(short, "timed-out", "the receiver has not taken the posts yet");
        srv.kid().tell("go");
        poster.expect("flushed");
        poster.wait_ok();
    } else {
        assert_eq!(short, "ok", "nothing needs the sender");
        poster.expect("flushed");
        poster.wait_ok();
        srv.kid().tell("go");
    }
    let (mut holder, recs) = records_after(held, FLUSHED.len());
    assert_eq!(recs.len(), FLUSHED.len(), "the flushed posts: {recs:?}");
    for (i, r) in recs.iter().enumerate() {
        let d = pattern(FLUSHED[i], i as u64);
        assert_eq!(
            (r.arg, r.len, r.sum, r.call, r.loan),
            (i as u64, d.len() as u64, sum(&d), false, i == 1),
            "post {i}"
        );
    }
    // Nothing posted: a flush returns at once, connected or not.
    holder.flush_timeout(Duration::ZERO).unwrap();
    Sender::unconnected(&srv.name, &SenderOptions::new()).unwrap().flush().unwrap();
    srv.quit();
}

/// A receiver killed while a sender is blocked in `post` on a full queue:
/// `post` fails with `ReceiverDied` within a few seconds.
#[test]
fn receiver_killed_while_post_waits_for_room() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    s.post(tag(GATE, 0), b"").unwrap();
    srv.kid().expect("gated");
    let mut n = 0;
    loop {
        match s.try_post(tag(COUNT, 0), b"") {
            Ok(()) => n += 1,
            Err(SendError::Full { .. }) => break,
            Err(e) => panic!("try_post: {e}"),
        }
        assert!(n < 1_000_000, "the queue never filled");
    }
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(s.post(tag(COUNT, 0), b"blocked"));
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(rx.try_recv().is_err(), "post returned on a full queue");
    let name = srv.name.clone();
    srv.kid.take().expect("the receiver child").kill();
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Err(SendError::ReceiverDied { .. })) => {}
        Ok(other) => panic!("the blocked post got {other:?}"),
        Err(_) => panic!("no error within 5 s of killing the receiver"),
    }
    reclaim(&name);
}

// ------------------------------------------------------------ loans

/// Loans of every size, from empty to larger than the pool's biggest
/// buffer, arrive intact and in place (`loan()` set), read with `read_at`,
/// `to_vec`, `for_each_chunk` and as `payload()`'s slice; posted loans too;
/// loans dropped unsent are harmless.
#[test]
fn loans_of_every_size_arrive_intact() {
    let srv = Srv::start(1);
    let mut s = srv.sender();
    let mut sizes = vec![0, 1, 4096, 64 << 10, MIB, 64 * MIB];
    let beyond_pool = (256 * MIB) + 1;
    if memory_allows(4 * beyond_pool as u64) {
        sizes.push(beyond_pool);
    } else {
        eprintln!("skipped the loan of {beyond_pool} bytes: not enough free memory");
    }
    for (k, &size) in sizes.iter().enumerate() {
        let data = pattern(size, k as u64 + 1);
        let mut loan = s.loan(size).unwrap();
        assert_eq!((loan.len(), loan.is_empty()), (size, size == 0));
        loan.write_at(0, &data).unwrap();
        assert!(loan.write_at(size, &[1]).is_err(), "a write past the loan");
        let reply = loan.send(tag(SUM, 0)).unwrap();
        assert_eq!(reply.code, sum(&data) as i64, "loan of {size} bytes: checksum read chunk-wise");
        let d = &reply.data;
        assert_eq!(d.len(), 17);
        assert_eq!(d[0], 0b1111, "loan of {size} bytes: flags (loan, call, payload as a slice, read_at) {:#b}", d[0]);
        assert_eq!(u64::from_le_bytes(d[1..9].try_into().unwrap()), sum(&data), "loan of {size} bytes: to_vec");
        assert_eq!(u64::from_le_bytes(d[9..17].try_into().unwrap()), size as u64);
    }
    // Loans dropped unsent: nothing arrives, and the next ones work.
    for size in [MIB, 3 * MIB] {
        let mut loan = s.loan(size).unwrap();
        loan.fill(0xee);
        drop(loan);
    }
    drop(s.loan(beyond_pool).unwrap());
    // Posted loans, between ordinary messages.
    let posted = [0usize, 1000, MIB, 3 * MIB];
    for (k, &size) in posted.iter().enumerate() {
        let data = pattern(size, 100 + k as u64);
        let mut loan = s.loan(size).unwrap();
        loan.write_at(0, &data).unwrap();
        loan.post(tag(REC, k as u64)).unwrap();
        s.post(tag(REC, 1000 + k as u64), b"plain").unwrap();
    }
    let recs = report(&mut s);
    assert_eq!(recs.len(), 2 * posted.len(), "{recs:?}");
    for (k, &size) in posted.iter().enumerate() {
        let (loaned, plain) = (recs[2 * k], recs[2 * k + 1]);
        let expect = Rec {
            arg: k as u64,
            len: size as u64,
            sum: sum(&pattern(size, 100 + k as u64)),
            call: false,
            loan: true,
            worker: loaned.worker,
        };
        assert_eq!(loaned, expect, "posted loan {k}");
        assert_eq!((plain.arg, plain.loan, plain.call), (1000 + k as u64, false, false));
    }
    srv.quit();
}

/// Many loans in a row reuse the pool's buffers: a handful of distinct
/// buffers, and (Linux) the sender's resident set does not grow by the
/// 200 MiB that fresh buffers would take.
#[test]
fn loans_in_a_row_reuse_buffers() {
    let srv = Srv::start(1);
    let mut kid = Kid::spawn("loans", &[&srv.name, "200", &MIB.to_string()]);
    let line = kid.expect("loans");
    kid.wait_ok();
    let v: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    let (distinct, before, after) = (v[0], v[1], v[2]);
    assert!(distinct <= 2, "200 loans in a row used {distinct} buffers");
    if cfg!(target_os = "linux") {
        assert!(
            after < before + 32 * MIB as u64,
            "the sender grew from {before} to {after} bytes over 200 loans of 1 MiB"
        );
    }
    srv.quit();
}

/// Pool buffers come back however a use ends: a loan sent, a loan dropped
/// unsent, a payload `try_post` refused on a full queue. After each, once the
/// pool was idle, the sender's memory (Linux) is back near where it was;
/// and the pool still works.
#[test]
fn pool_buffers_come_back_however_a_use_ends() {
    let mut srv = Srv::start(1);
    let mut kid = Kid::spawn("give-back", &[&srv.name, "32"]);
    srv.kid().expect("gated");
    kid.tell("gated");
    kid.expect("filled");
    srv.kid().tell("go");
    let line = kid.expect("rss");
    kid.wait_ok();
    if cfg!(target_os = "linux") {
        let v: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        let base = v[0];
        // Eight uses of 32 MiB each: 256 MiB if the buffers were kept.
        let mut kept = Vec::new();
        for (what, rss) in [("sent loans", v[1]), ("loans dropped unsent", v[2]), ("refused try_posts", v[3])] {
            let more = rss.saturating_sub(base) / MIB as u64;
            eprintln!("after {what}: {more} MiB more than before");
            if rss >= base + 48 * MIB as u64 {
                kept.push(format!("after {what} the sender holds {more} MiB more than before"));
            }
        }
        assert!(kept.is_empty(), "{}", kept.join("; "));
    }
    srv.quit();
}

/// A loan the handler reads only after its sender was killed is still
/// intact (the receiver's mapping keeps the memory; the sender cannot have
/// shrunk it), and the receiver goes on serving.
#[test]
fn a_loan_outlives_its_killed_sender() {
    let mut srv = Srv::start(1);
    let size = 8 * MIB;
    let sender = Kid::spawn("loan-once", &[&srv.name, &size.to_string()]);
    srv.kid().expect("gated");
    sender.kill();
    srv.kid().tell("go");
    let line = srv.kid().expect("loansum");
    assert_eq!(line, format!("{} {size}", sum(&pattern(size, 5))), "the loan read after its sender died");
    let mut s = srv.sender();
    check_echo(&s.send_timeout(tag(ECHO, 0), b"next", BOUND).unwrap(), b"next", "the next sender");
    srv.quit();
}

// ------------------------------------------------------------ large payloads

/// Large payloads by copy arrive intact, repeatedly (the pooled buffer is
/// reused), and replies of every size come back intact: inline, through the
/// receiver's pool, and beyond it (a one-shot section).
#[test]
fn large_copies_and_replies_arrive_intact() {
    let srv = Srv::start(1);
    let mut s = srv.sender();
    for round in 0..5u64 {
        let data = pattern(64 * MIB, round);
        let reply = s.send_timeout(tag(SUM, 0), &data, BOUND).unwrap();
        assert_eq!(reply.code, sum(&data) as i64, "round {round}");
        assert_eq!(reply.data[0] & 0b0011, 0b0010, "round {round}: a copy that expects a reply");
        assert_eq!(u64::from_le_bytes(reply.data[9..17].try_into().unwrap()), data.len() as u64);
    }
    let mut sizes = vec![0, 100, 16 << 10, (16 << 10) + 1, 100_000, MIB, 64 * MIB];
    if memory_allows(4 * 300 * MIB as u64) {
        sizes.push(300 * MIB);
    } else {
        eprintln!("skipped the reply of 300 MiB: not enough free memory");
    }
    for len in sizes {
        let reply = s.send_timeout(tag(MAKE, len as u64), b"", BOUND).unwrap();
        check_echo(&reply, &pattern(len, len as u64), &format!("reply of {len} bytes"));
    }
    // And the connection goes on with small messages.
    check_echo(&s.send_timeout(tag(ECHO, 0), b"small", BOUND).unwrap(), b"small", "after");
    srv.quit();
}

/// Loaned replies: the receiver fills a buffer of its pool in place and the
/// sender reads it in place (`Reply::loan`), for every size; buffers come
/// back (a stream of loaned replies uses a bounded number of them), and an
/// unsent reply loan is harmless.
#[test]
fn loaned_replies_arrive_intact() {
    let srv = Srv::start(1);
    let mut s = srv.sender();
    let mut sizes = vec![0, 1, 100, 4096, 64 << 10, MIB, 64 * MIB];
    if memory_allows(4 * 300 * MIB as u64) {
        sizes.push(300 * MIB);
    }
    for len in sizes {
        for round in 0..3 {
            let reply = s.send_timeout(tag(MAKE_LOANED, len as u64), b"", BOUND).unwrap();
            let loan = reply.loan().unwrap_or_else(|| panic!("{len} bytes: not a loaned reply"));
            assert_eq!((loan.len(), reply.data.len()), (len, len), "round {round}");
            let want = pattern(len, len as u64);
            assert_eq!(reply.code, sum(&want) as i64, "{len} bytes, round {round}: the receiver's sum");
            assert!(loan.to_vec() == want, "{len} bytes, round {round}: the bytes read in place differ");
            if len <= 64 * MIB {
                // As a slice: copied out on first use.
                assert!(reply.data[..] == want[..], "{len} bytes, round {round}: the reply's slice differs");
            }
        }
    }
    for _ in 0..200 {
        let reply = s.send_timeout(tag(MAKE_LOANED, MIB as u64), b"", BOUND).unwrap();
        assert_eq!(reply.loan().map(|l| l.len()), Some(MIB));
    }
    // A reply loan dropped unsent, then an empty loaned reply.
    let reply = s.send_timeout(tag(MAKE_LOANED, (1 << 40) + MIB as u64), b"", BOUND).unwrap();
    assert_eq!(reply.loan().map(|l| l.len()), Some(0));
    check_echo(&s.send_timeout(tag(ECHO, 0), b"after", BOUND).unwrap(), b"after", "after");
    srv.quit();
}

// ------------------------------------------------------------ dead peers

/// The receiver is killed while a sender waits for its reply: the sender
/// gets `ReceiverDied` within a few seconds, never a hang.
fn receiver_killed_during_a_call(options: SenderOptions, parked: bool) {
    let mut srv = Srv::start(1);
    let mut s = Sender::connect_with(&srv.name, &options).unwrap();
    check_echo(&s.send_timeout(tag(ECHO, 0), b"hi", BOUND).unwrap(), b"hi", "warm-up");
    let (started_tx, started_rx) = channel();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        started_tx.send(()).unwrap();
        let _ = tx.send(s.send(tag(SLEEP, 60_000), b"zzz"));
    });
    started_rx.recv().unwrap();
    if parked {
        // The handler has the message and sleeps; the sender sleeps too.
        srv.kid().expect("got");
        std::thread::sleep(Duration::from_millis(200));
    }
    let name = srv.name.clone();
    srv.kid.take().expect("the receiver child").kill();
    let killed = Instant::now();
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Err(SendError::ReceiverDied { .. })) => {}
        Ok(other) => panic!("the sender got {other:?}"),
        Err(_) => panic!("no error within 5 s of killing the receiver"),
    }
    eprintln!("ReceiverDied after {:?}", killed.elapsed());
    reclaim(&name);
}

#[test]
fn receiver_killed_while_the_sender_is_parked() {
    receiver_killed_during_a_call(SenderOptions::new(), true);
}

#[test]
fn receiver_killed_while_the_sender_spins() {
    receiver_killed_during_a_call(SenderOptions::new().wait(Wait::SpinThenPark), false);
}

#[test]
fn receiver_killed_while_a_park_mode_sender_waits() {
    receiver_killed_during_a_call(SenderOptions::new().wait(Wait::Park), true);
}

/// A sender killed in the middle of a stream of posts (some of them in
/// pooled buffers) does not wedge the receiver: others are served, and
/// (Linux) the receiver lets go of the dead connection and sleeps.
#[test]
fn a_sender_killed_mid_stream_does_not_wedge_the_receiver() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    check_echo(&s.send_timeout(tag(ECHO, 0), b"before", BOUND).unwrap(), b"before", "before");
    #[cfg(target_os = "linux")]
    let (fds, maps) = (procfs::fds(srv.pid), procfs::memfd_maps(srv.pid));
    let mut flooder = Kid::spawn("post-loop", &[&srv.name]);
    flooder.expect("posting");
    std::thread::sleep(Duration::from_millis(300));
    flooder.kill();
    check_echo(&s.send_timeout(tag(ECHO, 0), b"after", BOUND).unwrap(), b"after", "the other sender");
    let reply = copydata::send_timeout(&srv.name, tag(COUNT, 0), b"", BOUND).unwrap();
    assert!(reply.code > 1, "the killed sender's posts were counted: {}", reply.code);
    assert!(srv.kid().running(), "the receiver died");
    #[cfg(target_os = "linux")]
    {
        procfs::eventually("the receiver closes the dead connections", || procfs::fds(srv.pid) <= fds);
        procfs::eventually("the receiver unmaps the dead connections", || procfs::memfd_maps(srv.pid) <= maps);
        procfs::assert_sleeps(srv.pid, "after a sender was killed mid-stream");
    }
    check_echo(&s.send_timeout(tag(ECHO, 0), b"still", BOUND).unwrap(), b"still", "still");
    srv.quit();
}

// ------------------------------------------------------------ handler threads

/// With four handler threads, a handler call held up for sender A does not
/// stall sender B: B's sends complete while A's call is still in the handler.
#[test]
fn a_slow_handler_holds_up_only_its_own_sender() {
    let mut srv = Srv::start(4);
    let mut a = srv.sender();
    check_echo(&a.send_timeout(tag(ECHO, 0), b"a", BOUND).unwrap(), b"a", "A");
    let mut b = srv.sender();
    check_echo(&b.send_timeout(tag(ECHO, 0), b"b", BOUND).unwrap(), b"b", "B");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(a.send(tag(GATE, 7), b"slow"));
    });
    srv.kid().expect("gated");
    for i in 0..50u64 {
        let data = pattern(i as usize * 100, i);
        check_echo(&b.send_timeout(tag(ECHO, 0), &data, BOUND).unwrap(), &data, &format!("B's send {i}"));
    }
    assert!(rx.try_recv().is_err(), "A's call returned while its handler was still held");
    srv.kid().tell("go");
    let reply = rx.recv_timeout(BOUND).expect("A's call did not return after the handler went on").unwrap();
    assert_eq!(reply.code, 7);
    srv.quit();
}

/// With four handler threads and six senders at once (posts and sends, the
/// handler sleeping now and then), each sender's messages are handled in
/// order, each sender's on one thread, and the senders spread over threads.
#[test]
fn handler_threads_keep_each_senders_order() {
    let srv = Srv::start(4);
    let n = 400u64;
    let mut threads = Vec::new();
    for id in 0..6u64 {
        let name = srv.name.clone();
        threads.push(std::thread::spawn(move || {
            let mut s = Sender::connect(&name).unwrap();
            for seq in 0..n {
                let t = tag(REC_SLOW, id << 32 | seq);
                let data = pattern((seq as usize * 7) % 3000, id * 1000 + seq);
                if seq % 4 == 3 {
                    assert_eq!(s.send_timeout(t, &data, BOUND).unwrap().code, (id << 32 | seq) as i64);
                } else {
                    s.post(t, &data).unwrap();
                }
            }
            s.send_timeout(tag(ECHO, 0), b"", BOUND).unwrap();
        }));
    }
    let done = within(Duration::from_secs(60), "six senders", move || {
        let joined: Vec<bool> = threads.into_iter().map(|t| t.join().is_ok()).collect();
        joined.into_iter().all(|ok| ok)
    });
    assert!(done, "a sender failed");
    let mut s = srv.sender();
    let recs = report(&mut s);
    let mut by_sender: BTreeMap<u64, Vec<Rec>> = BTreeMap::new();
    for r in recs {
        by_sender.entry(r.arg >> 32).or_default().push(r);
    }
    assert_eq!(by_sender.len(), 6);
    let mut workers = HashSet::new();
    for (id, recs) in &by_sender {
        let seqs: Vec<u64> = recs.iter().map(|r| r.arg & 0xffff_ffff).collect();
        assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "sender {id}: order");
        for r in recs {
            let seq = r.arg & 0xffff_ffff;
            assert_eq!(r.call, seq % 4 == 3, "sender {id}, message {seq}: expects_reply");
            let data = pattern((seq as usize * 7) % 3000, id * 1000 + seq);
            assert_eq!((r.len, r.sum), (data.len() as u64, sum(&data)), "sender {id}, message {seq}: payload");
        }
        let on: HashSet<u8> = recs.iter().map(|r| r.worker).collect();
        assert_eq!(on.len(), 1, "sender {id} was handled on threads {on:?}");
        workers.extend(on);
    }
    assert!(workers.len() >= 2, "six senders all on handler thread(s) {workers:?}");
    assert!(workers.iter().all(|&w| w < 4), "{workers:?}");
    srv.quit();
}

/// Senders that connected before the receiver called `serve` (so set up for
/// handler thread 0, then spread over four by `serve`) are let go of when
/// they hang up: every post is delivered, and the receiver's descriptors
/// return to what they were before within a few seconds. Six sender
/// children connect while the receiver waits between `bind` and `serve`;
/// each posts five messages while the handler sleeps 20 ms per message;
/// half exit at once (while the handler is busy with their posts), half
/// only after the receiver has handled everything and its threads have gone
/// to sleep. Before the fix, the hang-up woke the thread a connection was
/// set up for (0), not the one serving it since `serve`, so a connection
/// moved to another thread that slept for good was never dropped.
#[cfg(target_os = "linux")]
#[test]
fn senders_connected_before_serve_are_let_go_of_when_they_hang_up() {
    let name = unique("late");
    let mut srv = Kid::spawn("srv-late", &[&name, "4", "20"]);
    let pid: u32 = srv.expect("ready").parse().unwrap();
    let fds = procfs::fds(pid);
    let (senders, n) = (6u64, 5u64);
    let mut kids: Vec<Kid> = (0..senders)
        .map(|id| {
            let how = if id % 2 == 0 { "exit" } else { "wait" };
            Kid::spawn("post-wait", &[&name, &id.to_string(), &n.to_string(), how])
        })
        .collect();
    for k in &mut kids {
        k.expect("connected");
    }
    procfs::eventually("the receiver holds the connections", || procfs::fds(pid) > fds);
    srv.tell("serve");
    srv.expect("serving");
    for k in &mut kids {
        k.tell("post");
    }
    let mut waiting = Vec::new();
    for (id, mut k) in kids.into_iter().enumerate() {
        k.expect("posted");
        if id % 2 == 0 {
            k.wait_ok();
        } else {
            waiting.push(k);
        }
    }
    let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for _ in 0..senders * n {
        let line = srv.expect("got");
        let v: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        let (id, seq) = (v[0], v[1]);
        let d = pattern(seq as usize * 10, id * 1000 + seq);
        assert_eq!((v[2], v[3]), (d.len() as u64, sum(&d)), "sender {id}, post {seq}: payload");
        got.entry(id).or_default().push(seq);
    }
    for id in 0..senders {
        assert_eq!(got.get(&id), Some(&(0..n).collect::<Vec<_>>()), "sender {id}: its posts, once each, in order");
    }
    // Every handler thread goes idle for good (past the trim delay), then
    // the other half hang up.
    std::thread::sleep(Duration::from_millis(600));
    for mut k in waiting {
        k.tell("exit");
        k.wait_ok();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while procfs::fds(pid) > fds {
        assert!(
            Instant::now() < deadline,
            "5 s after its senders hung up the receiver holds {} descriptors (before they connected: {fds})",
            procfs::fds(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    srv.tell("quit");
    srv.expect("bye");
    srv.wait_ok();
}

// ------------------------------------------------------------ timeouts

/// Against a receiver stopped with `SIGSTOP`: `connect_timeout` and
/// `send_timeout` give `TimedOut`, never before the time given and well
/// before a watchdog; a `send_timeout` that must set the connection up again
/// counts the set-up inside its own deadline.
#[cfg(target_os = "linux")]
#[test]
fn timeouts_against_a_stopped_receiver() {
    use rustix::process::{Pid, Signal, kill_process};

    struct Stopped(u32);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = kill_process(Pid::from_raw(self.0 as i32).unwrap(), Signal::CONT);
        }
    }

    let srv = Srv::start(1);
    let mut s = srv.sender();
    check_echo(&s.send_timeout(tag(ECHO, 0), b"hi", BOUND).unwrap(), b"hi", "warm-up");
    let stopped = Stopped(srv.pid);
    kill_process(Pid::from_raw(srv.pid as i32).unwrap(), Signal::STOP).unwrap();
    procfs::eventually("the receiver stops", || procfs::state(srv.pid) == 'T');
    let timed_out = |what: &str, t: Duration, started: Instant, r: Result<(), SendError>| {
        let took = started.elapsed();
        // A set-up sends nothing; a send on the live connection is queued
        // (the receiver takes it once it goes on) and waits for its reply.
        let want = if what == "send_timeout" { TimeoutStage::Reply } else { TimeoutStage::Connecting };
        match r {
            Err(SendError::TimedOut { timeout, stage, .. }) => {
                assert_eq!((timeout, stage), (t, want), "{what}: the timeout and stage reported");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(took >= t, "{what}: gave up after {took:?}, before {t:?}");
        took
    };
    // Set-up bounded by connect_timeout (the default would be 10 s).
    let t = Duration::from_secs(1);
    let started = Instant::now();
    let took = timed_out("connect_timeout", t, started, Sender::connect_timeout(&srv.name, t).map(drop));
    assert!(took < Duration::from_secs(8), "connect_timeout of {t:?} took {took:?}");
    // A send on a live connection.
    let started = Instant::now();
    let took = timed_out("send_timeout", t, started, s.send_timeout(tag(ECHO, 0), b"x", t).map(drop));
    assert!(took < Duration::from_secs(8), "send_timeout of {t:?} took {took:?}");
    // The timed-out connection was dropped: the next send sets up a new one,
    // inside its own deadline (not after it, not after the default 10 s).
    let t = Duration::from_secs(3);
    let started = Instant::now();
    let took = timed_out("send_timeout with set-up", t, started, s.send_timeout(tag(ECHO, 0), b"x", t).map(drop));
    assert!(took < Duration::from_millis(5500), "send_timeout of {t:?} with set-up took {took:?}");
    let started = Instant::now();
    let took = timed_out(
        "copydata::send_timeout",
        t,
        started,
        copydata::send_timeout(&srv.name, tag(ECHO, 0), b"x", t).map(drop),
    );
    assert!(took < Duration::from_millis(5500), "copydata::send_timeout of {t:?} took {took:?}");
    // Going on, the receiver serves again, on a new connection of the same
    // sender.
    drop(stopped);
    check_echo(&s.send_timeout(tag(ECHO, 0), b"again", BOUND).unwrap(), b"again", "after SIGCONT");
    srv.quit();
}

/// A loan sent with `send_timeout` to a handler that takes longer gives
/// `TimedOut`, never before the time given; the late reply is never taken
/// for the next call's.
#[test]
fn a_loan_times_out_like_a_send() {
    let mut srv = Srv::start(1);
    let mut s = srv.sender();
    check_echo(&s.send_timeout(tag(ECHO, 0), b"hi", BOUND).unwrap(), b"hi", "warm-up");
    let t = Duration::from_millis(300);
    let mut loan = s.loan(64 << 10).unwrap();
    loan.fill(7);
    let started = Instant::now();
    match loan.send_timeout(tag(SLEEP, 1500), t) {
        Err(SendError::TimedOut { timeout, stage, .. }) => {
            assert_eq!((timeout, stage), (t, TimeoutStage::Reply), "the timeout and stage reported");
        }
        other => panic!("a loan to a handler sleeping 1.5 s with a timeout of {t:?}: {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= t, "gave up after {took:?}, before {t:?}");
    assert!(took < Duration::from_millis(1400), "a timeout of {t:?} took {took:?}");
    srv.kid().expect("got");
    // The next call gets its own reply (the handler first finishes the
    // sleep, whose reply goes nowhere).
    check_echo(&s.send_timeout(tag(ECHO, 0), b"next", BOUND).unwrap(), b"next", "after the timeout");
    srv.quit();
}

// ------------------------------------------------------------ idle cost

/// An idle receiver sleeps (no CPU) and holds little memory: a connection
/// that went quiet costs under 1 MiB of its resident set, and after one
/// connection moved 64 MiB each way and idled, the pools are trimmed.
#[cfg(target_os = "linux")]
#[test]
fn an_idle_receiver_sleeps_and_gives_memory_back() {
    let srv = Srv::start(1);
    std::thread::sleep(Duration::from_millis(300));
    let base = procfs::rss(srv.pid);
    let mut first = srv.sender();
    for i in 0..50u64 {
        let data = pattern(i as usize * 40, i);
        check_echo(&first.send_timeout(tag(ECHO, 0), &data, BOUND).unwrap(), &data, "first sender");
    }
    procfs::assert_sleeps(srv.pid, "one idle connection");
    let mut others = Vec::new();
    for k in 0..19u64 {
        let mut s = srv.sender();
        for i in 0..10u64 {
            let data = pattern(i as usize * 300, k * 100 + i);
            check_echo(&s.send_timeout(tag(ECHO, 0), &data, BOUND).unwrap(), &data, "other senders");
        }
        others.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle = procfs::rss(srv.pid);
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!("receiver: {:.1} MiB alone, {:.1} MiB with 20 idle connections", mib(base), mib(idle));
    assert!(
        idle <= base + 20 * MIB as u64,
        "20 idle connections cost {:.1} MiB (from {:.1} MiB)",
        mib(idle.saturating_sub(base)),
        mib(base)
    );
    procfs::assert_sleeps(srv.pid, "20 idle connections");
    let big = pattern(64 * MIB, 64);
    check_echo(&first.send_timeout(tag(ECHO, 0), &big, BOUND).unwrap(), &big, "64 MiB");
    drop(big);
    std::thread::sleep(Duration::from_secs(1));
    let after = procfs::rss(srv.pid);
    eprintln!("receiver: {:.1} MiB after 64 MiB each way and 1 s idle", mib(after));
    assert!(
        after <= base + 20 * MIB as u64,
        "after 64 MiB each way and 1 s idle the receiver holds {:.1} MiB more than alone",
        mib(after.saturating_sub(base))
    );
    procfs::assert_sleeps(srv.pid, "after the large exchange");
    drop((first, others));
    srv.quit();
}

/// The same for a receiver that polls with `recv_timeout` in 50 ms slices
/// (as the Python package and `copydata listen` do): each slice ends its
/// sleep before the trim delay, yet the quiet adds up, and the pools and
/// the buffer kept for the next large message are given back. (Before, a
/// trim needed one sleep of the whole delay, and such a receiver kept
/// them for as long as the connection lived.)
#[cfg(target_os = "linux")]
#[test]
fn a_receiver_polling_in_short_slices_gives_memory_back() {
    if !memory_allows(4 * 64 * MIB as u64) {
        return;
    }
    let name = unique("poll");
    let mut kid = Kid::spawn("poll-srv", &[&name]);
    let pid: u32 = kid.expect("ready").parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let base = procfs::rss(pid);
    let mut s = Sender::connect(&name).unwrap();
    let big = pattern(64 * MIB, 65);
    check_echo(&s.send_timeout(tag(ECHO, 0), &big, BOUND).unwrap(), &big, "64 MiB");
    drop(big);
    let busy = procfs::rss(pid);
    std::thread::sleep(Duration::from_secs(1));
    let after = procfs::rss(pid);
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "polling receiver: {:.1} MiB alone, {:.1} MiB after 64 MiB each way, {:.1} MiB 1 s later",
        mib(base),
        mib(busy),
        mib(after)
    );
    assert!(
        after <= base + 20 * MIB as u64,
        "after 64 MiB each way and 1 s idle the polling receiver holds {:.1} MiB more than alone",
        mib(after.saturating_sub(base))
    );
    drop(s);
    kid.tell("quit");
    kid.expect("bye");
    kid.wait_ok();
}

/// A streamed copy from a park-mode sender that pauses mid-stream still
/// completes: the receiver, having put the copy aside, keeps looking
/// instead of sleeping (the sender's progress rings no doorbell). The
/// sender child is stopped (SIGSTOP) a few milliseconds into each 64 MiB
/// send and resumed 700 ms later; before the fix the receiver slept through
/// the rest of the stream and the send never got its reply.
#[cfg(target_os = "linux")]
#[test]
fn a_park_mode_stream_that_pauses_completes() {
    use rustix::process::{Pid, Signal, kill_process};

    if !memory_allows(4 * 64 * MIB as u64) {
        return;
    }
    let srv = Srv::start(1);
    let mut kid = Kid::spawn("park-sender", &[&srv.name, &(64 * MIB).to_string()]);
    let pid = Pid::from_raw(kid.id() as i32).unwrap();
    let want = sum(&pattern(64 * MIB, 7));
    for delay_ms in [2, 6, 12] {
        kid.tell("send");
        kid.expect("sending");
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill_process(pid, Signal::STOP).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        kill_process(pid, Signal::CONT).unwrap();
        let code = kid
            .expect_within("sent", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("stopped {delay_ms} ms into a stream: no reply within 20 s of resuming"));
        assert_eq!(code.parse::<i64>().ok(), Some(want as i64), "the receiver's checksum of 64 MiB");
    }
    kid.tell("quit");
    kid.wait_ok();
    srv.quit();
}

/// A large reply buffer that the sender gives back only after the
/// receiver's first quiet spell is still given back to the system: the
/// receiver tries again after each quiet spell until it can. It used to try
/// once, find the buffer still lent, and keep its 64 MiB for as long as the
/// connection stayed idle (seen as a flaky failure of the idle test above
/// on a loaded machine, where the sender read its reply slowly).
#[cfg(target_os = "linux")]
#[test]
fn a_reply_buffer_given_back_late_is_trimmed_too() {
    let srv = Srv::start(1);
    std::thread::sleep(Duration::from_millis(300));
    let base = procfs::rss(srv.pid);
    let mut s = srv.sender();
    let reply = s.send_timeout(tag(MAKE_LOANED, 64 * MIB as u64), b"", BOUND).unwrap();
    assert!(reply.loan().is_some_and(|l| l.len() == 64 * MIB), "a loaned reply of 64 MiB");
    // Past the receiver's first quiet spell (200 ms) with the buffer lent.
    std::thread::sleep(Duration::from_millis(700));
    drop(reply);
    let mib = |b: u64| b as f64 / MIB as f64;
    procfs::eventually("the receiver gives back the reply buffer", || procfs::rss(srv.pid) <= base + 20 * MIB as u64);
    eprintln!("receiver: {:.1} MiB before, {:.1} MiB after", mib(base), mib(procfs::rss(srv.pid)));
    procfs::assert_sleeps(srv.pid, "after the late release");
    drop(s);
    srv.quit();
}

/// While a spinning sender fills a loan, the receiver polls instead of
/// sleeping, so the send after a long fill finds it awake; a loan held past
/// the polling limit lets it sleep again. A loan taken right after a reply
/// used to find the receiver still spinning, and the receiver then parked
/// without seeing the loan (it used about no CPU here).
#[cfg(target_os = "linux")]
#[test]
fn a_receiver_polls_while_a_loan_is_filled() {
    let srv = Srv::start(1);
    let mut s = srv.sender();
    for round in 0..3u64 {
        let data = pattern(100, round);
        check_echo(&s.send_timeout(tag(ECHO, 0), &data, BOUND).unwrap(), &data, "before the loan");
        let mut loan = s.loan(4096).unwrap();
        let before = procfs::cpu(srv.pid);
        // Shorter than the receiver's first sleep after a message (it wakes
        // then to trim its pool, and would find the loan).
        std::thread::sleep(Duration::from_millis(150));
        let used = procfs::cpu(srv.pid).saturating_sub(before);
        assert!(
            used >= Duration::from_millis(30),
            "round {round}: the receiver used {used:?} of CPU while a loan was filled for 150 ms (it slept)"
        );
        loan.fill(7);
        let reply = loan.send_timeout(tag(SUM, 0), BOUND).unwrap();
        assert_eq!(reply.code as u64, sum(&[7; 4096]), "round {round}: the loan's sum");
    }
    let loan = s.loan(4096).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    procfs::assert_sleeps(srv.pid, "a loan held for more than a second");
    // Another sender's calls meanwhile do not start the poll for that same
    // loan over: a call every 100 ms costs the receiver little.
    let mut other = srv.sender();
    let before = procfs::cpu(srv.pid);
    for i in 0..20u64 {
        let data = pattern(64, i);
        check_echo(&other.send_timeout(tag(ECHO, 0), &data, BOUND).unwrap(), &data, "beside the held loan");
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = procfs::cpu(srv.pid).saturating_sub(before);
    assert!(used < Duration::from_millis(500), "20 calls beside a held loan cost the receiver {used:?} of CPU in 2 s");
    // Nor do another sender's loans (each polled for while it is filled).
    let before = procfs::cpu(srv.pid);
    for i in 0..10u64 {
        let mut l = other.loan(4096).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        l.fill(i as u8);
        assert_eq!(l.send_timeout(tag(SUM, 0), BOUND).unwrap().code as u64, sum(&[i as u8; 4096]));
        std::thread::sleep(Duration::from_millis(150));
    }
    let used = procfs::cpu(srv.pid).saturating_sub(before);
    assert!(used < Duration::from_millis(800), "10 loans beside a held loan cost the receiver {used:?} of CPU");
    drop(loan);
    drop((s, other));
    // A sender that connects afterwards: its first loan is polled for.
    let mut late = srv.sender();
    let mut loan = late.loan(4096).unwrap();
    let before = procfs::cpu(srv.pid);
    std::thread::sleep(Duration::from_millis(150));
    let used = procfs::cpu(srv.pid).saturating_sub(before);
    assert!(used >= Duration::from_millis(30), "a new sender's first loan: the receiver used {used:?} (it slept)");
    loan.fill(1);
    assert_eq!(loan.send_timeout(tag(SUM, 0), BOUND).unwrap().code as u64, sum(&[1; 4096]));
    drop(late);
    srv.quit();
}

// ------------------------------------------------------------ wait modes

fn echo_a_thousand(wait: Wait) {
    let srv = Srv::start(1);
    let mut s = Sender::connect_with(&srv.name, &SenderOptions::new().wait(wait)).unwrap();
    for i in 0..1000u64 {
        let data = pattern((i as usize * 37) % 40_000, i);
        let reply = s.send_timeout(tag(ECHO, 0), &data, BOUND).unwrap();
        check_echo(&reply, &data, &format!("{wait:?}, message {i}"));
    }
    srv.quit();
}

#[test]
fn spin_then_park_echoes_a_thousand_messages() {
    echo_a_thousand(Wait::SpinThenPark);
}

#[test]
fn park_echoes_a_thousand_messages() {
    echo_a_thousand(Wait::Park);
}
