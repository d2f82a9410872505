//! `copydata::tokio`: async senders and mailboxes, across real processes.
#![cfg(feature = "tokio")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Kid, say, unique};
use copydata::tokio::{AsyncMailbox, AsyncSender};
use copydata::{Mailbox, Reply, SendError, Sender, TimeoutStage};

#[test]
fn child_entry() {
    common::child_main(role);
}

/// The tag the echo child never answers.
const HELD: u64 = 999;

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The child roles.
fn role(role: &str, args: &[String]) -> Result<(), String> {
    match role {
        // Serves `args[0]` (blocking API): echoes the payload with code =
        // tag; a payload starting with "sleep:N" is answered after N ms; tag
        // 9 is never answered (the message is held until the process ends).
        "echo" => {
            let mailbox = Mailbox::bind(&args[0]).map_err(fail)?;
            say("ready", &std::process::id().to_string());
            let mut held = Vec::new();
            loop {
                let request = mailbox.recv().map_err(fail)?;
                if request.tag() == HELD {
                    held.push(request);
                    continue;
                }
                if let Some(ms) = std::str::from_utf8(request.payload()).ok().and_then(|s| s.strip_prefix("sleep:")) {
                    let ms = ms.split(' ').next().unwrap_or_default();
                    std::thread::sleep(Duration::from_millis(ms.parse().map_err(fail)?));
                }
                let reply = Reply::new(request.tag() as i64, request.payload().to_vec());
                match request.reply(reply) {
                    // A cancelled call dropped its connection: its sender
                    // is gone, which is no error of the echo.
                    Ok(()) | Err(copydata::ReplyError::SenderGone) => {}
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        // Serves `args[0]` (blocking API), holding the first message until
        // the parent says "go" (the queue fills up behind it); answers a
        // call with the tags of every message taken so far, in order.
        "tally" => {
            let mailbox = Mailbox::bind(&args[0]).map_err(fail)?;
            say("ready", &std::process::id().to_string());
            let mut tags = Vec::new();
            loop {
                let request = mailbox.recv().map_err(fail)?;
                if tags.is_empty() {
                    say("held", "");
                    if common::hear() != "go" {
                        return Err("expected go".into());
                    }
                }
                tags.push(request.tag());
                if request.expects_reply() {
                    let text = tags.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
                    request.reply(Reply::new(0, text.into_bytes())).map_err(fail)?;
                }
            }
        }
        // Sends `args[1]` messages to `args[0]` with the blocking API and
        // checks each answer.
        "blocking-sender" => {
            let n: u64 = args[1].parse().map_err(fail)?;
            let mut sender = Sender::connect(&args[0]).map_err(fail)?;
            for i in 0..n {
                let data = format!("msg {i} from {}", std::process::id());
                let reply = sender.send_timeout(i, data.as_bytes(), Duration::from_secs(20)).map_err(fail)?;
                if reply.code != (i as i64) * 2 || reply.data[..] != *data.to_uppercase().as_bytes() {
                    return Err(format!("reply {i}: code {} data {:?}", reply.code, reply.data));
                }
            }
            say("done", &n.to_string());
            Ok(())
        }
        other => Err(format!("unknown role {other}")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs `f` on a fresh runtime, failing the test if it takes over 60 s.
fn within<F: std::future::Future<Output = ()>>(f: F) {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), f).await.expect("the test did not finish within 60 s")
    });
}

/// An echo child; dropping it ends the child and removes the files its
/// mailbox leaves behind (a killed process cannot remove them itself).
struct Echo {
    kid: Option<Kid>,
}

impl Echo {
    fn kill(&mut self) {
        if let Some(kid) = self.kid.take() {
            kid.kill();
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.kill();
        // Listing mailboxes reclaims those of dead processes.
        let _ = copydata::mailboxes();
    }
}

fn echo_child() -> (Echo, String) {
    let name = unique("async-echo");
    let mut kid = Kid::spawn("echo", &[&name]);
    kid.expect("ready");
    (Echo { kid: Some(kid) }, name)
}

#[test]
fn async_senders_talk_to_a_blocking_mailbox_in_another_process() {
    let (kid, name) = echo_child();
    let pid = kid.kid.as_ref().unwrap().id();
    within(async {
        // One sender, in sequence, with payloads inline and in buffers.
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        assert_eq!(sender.receiver_pid(), Some(pid));
        for (i, len) in [0usize, 1, 64, 16 << 10, (16 << 10) + 1, 1 << 20, 9 << 20].into_iter().enumerate() {
            let data = common::pattern(len, i as u64);
            let reply = sender.send_timeout(i as u64, &data, Duration::from_secs(20)).await.unwrap();
            assert_eq!((reply.code, reply.data.len()), (i as i64, len));
            assert!(reply.data[..] == data[..], "payload of {len} bytes came back changed");
        }
        // Many senders at once, each on its own task: all answered, each
        // with its own reply.
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = AsyncSender::connect(&name).await.unwrap();
                for i in 0..50u64 {
                    let data = format!("task {t} msg {i}");
                    let reply = s.send(t, data.as_bytes()).await.unwrap();
                    assert_eq!((reply.code, &reply.data[..]), (t as i64, data.as_bytes()));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // The one-shot helpers.
        let reply = copydata::tokio::send_timeout(&name, 5, b"once", Duration::from_secs(10)).await.unwrap();
        assert_eq!((reply.code, &reply.data[..]), (5, &b"once"[..]));
        let reply = copydata::tokio::send(&name, 6, b"twice").await.unwrap();
        assert_eq!((reply.code, &reply.data[..]), (6, &b"twice"[..]));
    });
}

#[test]
fn async_loans_are_filled_in_place_and_sent() {
    let (_kid, name) = echo_child();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        // Sizes from nothing to beyond the largest pooled buffer.
        for (i, len) in [0usize, 64, 1 << 20, 9 << 20].into_iter().enumerate() {
            let data = common::pattern(len, i as u64);
            let mut loan = sender.loan(len).await.unwrap();
            assert_eq!((loan.len(), loan.is_empty()), (len, len == 0));
            loan.write_at(0, &data).unwrap();
            assert!(matches!(loan.write_at(len, b"x"), Err(copydata::AccessError::OutOfRange { .. })));
            let reply = loan.send_timeout(i as u64, Duration::from_secs(20)).await.unwrap();
            assert_eq!((reply.code, reply.data.len()), (i as i64, len));
            assert!(reply.data[..] == data[..], "a loan of {len} bytes came back changed");
        }
        // A loan dropped unsent gives its buffer back: a pool's worth and
        // more of them in a row never run it dry.
        for _ in 0..200 {
            sender.loan(1 << 20).await.unwrap().fill(1);
        }
        // Posted loans, then a call: answered after all of them.
        for i in 0..100u64 {
            let mut loan = sender.loan(64 << 10).await.unwrap();
            loan.fill(i as u8);
            loan.post(i).await.unwrap();
        }
        assert_eq!(sender.send(7, b"after").await.unwrap().code, 7);
        // A loan's future can run on another task (it is `Send`).
        let task = tokio::spawn(async move {
            let mut loan = sender.loan(4096).await.unwrap();
            loan.fill(9);
            loan.send(3).await.map(|r| r.data.to_vec())
        });
        assert_eq!(task.await.unwrap().unwrap(), vec![9u8; 4096]);
    });
}

/// A pending call holds no thread of tokio's blocking pool, on any
/// platform: with a pool of one thread, eight calls left unanswered still
/// let a ninth connect (set-up runs on that pool) and be answered. On
/// Windows each pending call used to wait on a thread of the pool, so the
/// ninth never got one.
#[test]
fn pending_async_calls_hold_no_blocking_thread() {
    let (_kid, name) = echo_child();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut held = Vec::new();
            for _ in 0..8 {
                let mut sender = AsyncSender::connect(&name).await.unwrap();
                held.push(tokio::spawn(async move { sender.send(HELD, b"never answered").await }));
            }
            // Let them all start waiting.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut sender = AsyncSender::connect(&name).await.unwrap();
            let reply = sender.send_timeout(1, b"still served", Duration::from_secs(20)).await.unwrap();
            assert_eq!(&reply.data[..], b"still served");
            for call in &held {
                assert!(!call.is_finished(), "an unanswered call returned");
            }
            for call in held {
                call.abort();
            }
        })
        .await
        .expect("the test did not finish within 60 s");
    });
}

/// The threads of this process named `name` (the threads of a runtime
/// built with that `thread_name`: the other tests, running meanwhile, make
/// threads of their own).
#[cfg(target_os = "linux")]
fn threads(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// Linux: pending calls wait in the reactor, not on threads.
#[cfg(target_os = "linux")]
#[test]
fn pending_calls_do_not_take_a_thread_each() {
    let (_kid, name) = echo_child();
    let rt = tokio::runtime::Builder::new_current_thread().thread_name("cd-pending").enable_all().build().unwrap();
    let threads = || threads("cd-pending");
    rt.block_on(async {
        // Set-up runs on the blocking pool: connect first, then count.
        let mut senders = Vec::new();
        for _ in 0..40 {
            senders.push(AsyncSender::connect(&name).await.unwrap());
        }
        // Let the blocking pool's set-up threads go idle and be counted.
        let before = threads();
        let started = Instant::now();
        let calls: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                tokio::spawn(async move {
                    let data = format!("sleep:{}", 300 + i);
                    s.send(1, data.as_bytes()).await.map(|r| r.code)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let during = threads();
        assert!(during <= before + 1, "{} threads while 40 calls were pending ({before} before)", during);
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), 1);
        }
        assert!(started.elapsed() >= Duration::from_millis(300));
    });
}

/// A sender connected on one runtime and used on another (the first one
/// dropped, or idle) hears its replies through the runtime it runs on, not
/// from the 100 ms look that guards against lost wake-ups.
#[test]
fn a_sender_moves_between_runtimes() {
    let (_kid, name) = echo_child();
    let single = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = single();
    let mut sender = first.block_on(AsyncSender::connect(&name)).unwrap();
    let idle = single();
    let mut idle_sender = idle.block_on(AsyncSender::connect(&name)).unwrap();
    drop(first);
    within(async {
        for (what, s) in [("a dropped runtime", &mut sender), ("an idle runtime", &mut idle_sender)] {
            let started = Instant::now();
            for i in 0..20u64 {
                let reply = s.send_timeout(i, b"sleep:2", Duration::from_secs(10)).await.unwrap();
                assert_eq!(reply.code, i as i64);
            }
            // Each call waits for a handler of 2 ms: 20 calls woken by the
            // 100 ms look alone would take 2 s.
            let took = started.elapsed();
            assert!(took < Duration::from_millis(1500), "20 calls on a sender made on {what} took {took:?}");
        }
    });
    drop(idle);
}

/// Calls cancelled during set-up against a stopped receiver: the set-up
/// goes on in the background, once, and the next call takes it over,
/// rather than each call leaving another blocking thread behind.
#[cfg(target_os = "linux")]
#[test]
fn cancelled_set_ups_are_taken_over_not_doubled() {
    let (kid, name) = echo_child();
    let pid = kid.kid.as_ref().unwrap().id();
    // (On a current-thread runtime only the blocking pool's threads bear
    // its name.)
    let rt = tokio::runtime::Builder::new_current_thread().thread_name("cd-setups").enable_all().build().unwrap();
    let threads = || threads("cd-setups");
    let test = async {
        let mut sender = AsyncSender::unconnected(&name, &Default::default()).unwrap();
        // SAFETY: stops the child; it is continued below (or killed).
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let before = threads();
        for _ in 0..30 {
            let cancelled = tokio::time::timeout(Duration::from_millis(20), sender.send(1, b"x")).await;
            assert!(cancelled.is_err(), "a call to a stopped receiver returned");
        }
        let during = threads();
        // SAFETY: continues the child stopped above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        assert!(during <= before + 2, "{during} threads after 30 cancelled set-ups ({before} before)");
        let reply = sender.send_timeout(5, b"after", Duration::from_secs(20)).await.unwrap();
        assert_eq!((reply.code, &reply.data[..]), (5, &b"after"[..]));
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), test).await })
        .expect("the test did not finish within 60 s");
    drop(kid);
}

/// An async call times out at the stage it had reached: against a
/// stopped receiver, every way of connecting at the set-up (nothing sent,
/// also for a call that takes over the set-up an earlier one began); with
/// the connection made and the receiver going again, a call whose handler
/// takes longer at the reply.
#[cfg(target_os = "linux")]
#[test]
fn async_time_outs_say_at_which_stage_they_came() {
    let (kid, name) = echo_child();
    let pid = kid.kid.as_ref().unwrap().id();
    common::stop(pid);
    within(async {
        let t = Duration::from_millis(300);
        let connecting = |what: &str, err: SendError| match err {
            SendError::TimedOut { timeout, stage: TimeoutStage::Connecting, .. } => {
                assert_eq!(timeout, t, "{what}: the timeout reported")
            }
            other => panic!("{what} to a stopped receiver: {other:?}"),
        };
        let mut sender = AsyncSender::unconnected(&name, &Default::default()).unwrap();
        connecting("send_timeout", sender.send_timeout(1, b"x", t).await.unwrap_err());
        // (The set-up the first call began is taken over, and still hangs.)
        connecting("send_timeout again", sender.send_timeout(1, b"x", t).await.unwrap_err());
        connecting("post_timeout", sender.post_timeout(1, b"x", t).await.unwrap_err());
        connecting("loan_timeout", sender.loan_timeout(10, t).await.map(drop).unwrap_err());
        let err = copydata::tokio::send_timeout(&name, 1, b"x", t).await.unwrap_err();
        connecting("copydata::tokio::send_timeout", err);
        // SAFETY: continues the child stopped above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        let reply = sender.send_timeout(5, b"after", Duration::from_secs(20)).await.unwrap();
        assert_eq!((reply.code, &reply.data[..]), (5, &b"after"[..]));
        let err = sender.send_timeout(6, b"sleep:1500", t).await.unwrap_err();
        match &err {
            SendError::TimedOut { timeout, stage: TimeoutStage::Reply, .. } => assert_eq!(*timeout, t, "{err}"),
            other => panic!("a call to a handler sleeping 1.5 s: {other:?}"),
        }
        assert!(err.to_string().contains("waiting for the reply of mailbox"), "{err}");
    });
    drop(kid);
}

/// A set-up that nobody can take over any more (a dropped `connect`
/// future, a sender dropped after a call cancelled during set-up, a task
/// dropped with its runtime) ends at once, not at its connect timeout
/// (10 s): with a blocking pool of one thread, a connect to another
/// mailbox right after is served within seconds, and dropping a runtime
/// that had such a set-up under way does not wait for it.
#[cfg(target_os = "linux")]
#[test]
fn abandoned_set_ups_end_at_once() {
    let (stopped, stopped_name) = echo_child();
    let (_live, live_name) = echo_child();
    let pid = stopped.kid.as_ref().unwrap().id();
    // SAFETY: stops the child; it is continued below (or killed).
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let one_thread = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let rt = one_thread();
    rt.block_on(async {
        let within = Duration::from_secs(5);
        // A dropped connect future.
        let dropped = tokio::time::timeout(Duration::from_millis(100), AsyncSender::connect(&stopped_name)).await;
        assert!(dropped.is_err(), "a connect to a stopped receiver returned");
        let started = Instant::now();
        let mut live = tokio::time::timeout(within, AsyncSender::connect(&live_name))
            .await
            .expect("the abandoned set-up still held the blocking pool's thread")
            .unwrap();
        assert!(started.elapsed() < within);
        // A sender dropped after its call was cancelled during set-up.
        let mut sender = AsyncSender::unconnected(&stopped_name, &Default::default()).unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(100), sender.send(1, b"x")).await;
        assert!(cancelled.is_err(), "a call to a stopped receiver returned");
        drop(sender);
        let reply = tokio::time::timeout(within, copydata::tokio::send(&live_name, 2, b"after"))
            .await
            .expect("the abandoned set-up still held the blocking pool's thread")
            .unwrap();
        assert_eq!(&reply.data[..], b"after");
        assert_eq!(live.send(3, b"still").await.unwrap().code, 3);
    });
    // A runtime dropped with a set-up under way in one of its tasks.
    let rt2 = one_thread();
    let name = stopped_name.clone();
    rt2.spawn(async move { AsyncSender::connect(&name).await.map(drop) });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    drop(rt2);
    let took = started.elapsed();
    // SAFETY: continues the child stopped above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert!(took < Duration::from_secs(5), "dropping the runtime waited {took:?} for an abandoned set-up");
    drop(rt);
    drop(stopped);
}

#[test]
fn a_cancelled_call_never_hands_its_reply_to_the_next_one() {
    let (_kid, name) = echo_child();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        for round in 0..5 {
            // The first call is dropped while the receiver still works on it.
            let slow = format!("sleep:300 round {round}");
            let dropped = tokio::time::timeout(Duration::from_millis(50), sender.send(7, slow.as_bytes())).await;
            assert!(dropped.is_err(), "the slow call answered within 50 ms");
            // The next call gets its own answer, not the late one.
            let fresh = format!("fresh {round}");
            let reply = sender.send_timeout(8, fresh.as_bytes(), Duration::from_secs(10)).await.unwrap();
            assert_eq!((reply.code, &reply.data[..]), (8, fresh.as_bytes()));
        }
        // The same through send_timeout's own deadline.
        let started = Instant::now();
        let err = sender.send_timeout(HELD, b"never answered", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, SendError::TimedOut { stage: TimeoutStage::Reply, .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Never before the timeout, however short (timers of a millisecond's
        // grain may fire a little early).
        for ms in [1, 2, 3, 5, 7, 11, 13] {
            let timeout = Duration::from_micros(ms * 1000 + 300);
            let started = Instant::now();
            let err = sender.send_timeout(HELD, b"never answered", timeout).await.unwrap_err();
            assert!(matches!(err, SendError::TimedOut { .. }), "{err:?}");
            assert!(started.elapsed() >= timeout, "timed out after {:?} of {timeout:?}", started.elapsed());
        }
        let reply = sender.send_timeout(3, b"after", Duration::from_secs(10)).await.unwrap();
        assert_eq!((reply.code, &reply.data[..]), (3, &b"after"[..]));
    });
}

#[test]
fn a_receiver_killed_during_an_async_call_is_reported() {
    let (mut kid, name) = echo_child();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        let pending = tokio::spawn(async move {
            let started = Instant::now();
            (sender.send(HELD, b"held").await, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        kid.kill();
        let (result, took) = pending.await.unwrap();
        assert!(matches!(result, Err(SendError::ReceiverDied { .. })), "{result:?}");
        assert!(took < Duration::from_secs(10), "the death was noticed after {took:?}");
        // And a missing mailbox is an error, not a hang.
        let err = copydata::tokio::send(&name, 1, b"x").await.unwrap_err();
        assert!(matches!(err, SendError::NoSuchMailbox { .. }), "{err:?}");
    });
}

#[test]
fn async_posts_wait_for_room_and_all_arrive() {
    let name = unique("async-post");
    let mailbox = Mailbox::bind(&name).unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let count = seen.clone();
    let server = mailbox.serve(move |m| {
        // A slow consumer, so the queue fills up.
        if m.tag() % 500 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(m.tag(), u64::from(count.load(Ordering::Relaxed)), "posts arrive in order");
        count.fetch_add(1, Ordering::Relaxed);
        Reply::code(0)
    });
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        let data = vec![7u8; 2000];
        for i in 0..5000u64 {
            sender.post(i, &data).await.unwrap();
        }
        // A call after the posts is answered after all of them.
        sender.send_timeout(5000, b"", Duration::from_secs(30)).await.unwrap();
    });
    assert_eq!(seen.load(Ordering::Relaxed), 5001);
    drop(server);
}

/// What [`Gated`] records of a message: tag, payload length, loaned, sum
/// of the bytes.
type Seen = (u64, usize, bool, u64);

/// A mailbox in this process whose handler holds the first message until
/// [`open`](Gated::open) (so the queue fills up behind it), then records
/// every message: (tag, payload length, loaned, sum of the bytes). The
/// gate opens when the value drops, so a failing test cannot leave the
/// handler waiting for ever.
struct Gated {
    name: String,
    open: Arc<std::sync::atomic::AtomicBool>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    server: Option<copydata::Server>,
}

impl Gated {
    fn start(what: &str) -> Gated {
        use std::sync::atomic::AtomicBool;
        let name = unique(what);
        let (open, busy) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (gate, handling, log) = (open.clone(), busy.clone(), seen.clone());
        let server = Mailbox::bind(&name).unwrap().serve(move |m| {
            handling.store(true, Ordering::Release);
            while !gate.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let bytes = m.payload();
            let sum = bytes.iter().map(|&b| u64::from(b)).sum();
            log.lock().unwrap().push((m.tag(), bytes.len(), m.loan().is_some(), sum));
            Reply::code(0)
        });
        Gated { name, open, busy, seen, server: Some(server) }
    }

    /// Waits until the handler holds the first message.
    async fn held(&self) {
        while !self.busy.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::Release);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.open();
        drop(self.server.take());
    }
}

/// Fills the receiver's queue with `try_post`s of `data` from tag `from`
/// on, while its handler is held: returns the next tag.
async fn fill_the_queue(sender: &mut AsyncSender, name: &str, from: u64, data: &[u8]) -> u64 {
    let mut queued = from;
    loop {
        match sender.try_post(queued, data).await {
            Ok(()) => queued += 1,
            Err(SendError::Full { name: n }) => {
                assert_eq!(n, name);
                return queued;
            }
            Err(e) => panic!("try_post: {e}"),
        }
        assert!(queued < 100_000, "the queue never filled");
    }
}

#[test]
fn async_posts_can_give_up_when_the_queue_stays_full() {
    let gated = Gated::start("async-post-full");
    let name = gated.name.clone();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        let data = vec![3u8; 1000];
        sender.post(0, &data).await.unwrap();
        gated.held().await;
        let queued = fill_the_queue(&mut sender, &name, 1, &data).await;
        assert!(queued > 1);
        // A bounded post gives up, no sooner than asked, having sent nothing.
        let started = Instant::now();
        let err = sender.post_timeout(queued, &data, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, SendError::TimedOut { stage: TimeoutStage::Room, .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "gave up after {:?}", started.elapsed());
        // The connection was kept: once the receiver takes messages again,
        // the next posts follow those already queued, in order.
        gated.open();
        sender.post_timeout(queued, &data, Duration::from_secs(30)).await.unwrap();
        sender.send_timeout(queued + 1, b"", Duration::from_secs(30)).await.unwrap();
        let tags: Vec<u64> = gated.seen().iter().map(|r| r.0).collect();
        assert_eq!(tags, (0..queued + 2).collect::<Vec<_>>(), "posts arrive once each, in order");
        // With room again, try_post goes through at once.
        sender.try_post(queued + 2, b"last").await.unwrap();
        sender.send_timeout(queued + 3, b"", Duration::from_secs(30)).await.unwrap();
        assert_eq!(gated.seen().len() as u64, queued + 4);
    });
}

/// Every call's future can move between a runtime's threads
/// (`tokio::spawn`), loans' included.
#[test]
fn the_calls_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    async fn calls(mut s: AsyncSender) {
        let _ = s.send(0, b"").await;
        let _ = s.send_timeout(0, b"", Duration::from_secs(1)).await;
        let _ = s.post(0, b"").await;
        let _ = s.flush().await;
        if let Ok(l) = s.loan(1).await {
            let _ = l.send(1).await;
        }
        if let Ok(l) = s.loan(1).await {
            let _ = l.send_timeout(1, Duration::from_secs(1)).await;
        }
        if let Ok(l) = s.loan(1).await {
            let _ = l.post(1).await;
        }
    }
    let sender = AsyncSender::unconnected("copydata-test-send-futures", &copydata::SenderOptions::default()).unwrap();
    is_send(&calls(sender));
}

/// A post dropped while it waits for room in a full queue has queued
/// nothing: the connection is kept (its queue still full, the receiver
/// still known), and the message is neither delivered nor doubled. The
/// same for a call (dropped, or timed out, while it waits for room) and a
/// loan's call or post, whose buffer goes back to the pool.
#[test]
fn a_post_cancelled_while_waiting_for_room_keeps_the_connection() {
    let name = unique("async-post-cancel");
    // (Killed, its mailbox's files reclaimed, when the test ends.)
    let mut tally = Echo { kid: Some(Kid::spawn("tally", &[&name])) };
    let kid = tally.kid.as_mut().unwrap();
    kid.expect("ready");
    let pid = kid.id();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        assert_eq!(sender.receiver_pid(), Some(pid));
        let data = vec![4u8; 1000];
        sender.post(0, &data).await.unwrap();
        tokio::task::block_in_place(|| kid.expect("held"));
        let n = fill_the_queue(&mut sender, &name, 1, &data).await;
        // Dropped while it waits for room, several times over.
        for _ in 0..3 {
            let cancelled = tokio::time::timeout(Duration::from_millis(50), sender.post(n, &data)).await;
            assert!(cancelled.is_err(), "a post into a full queue completed: {cancelled:?}");
            // Still connected, to the same full queue: a new connection
            // would have an empty one.
            assert_eq!(sender.receiver_pid(), Some(pid), "the connection was dropped");
            let err = sender.try_post(n, &data).await.unwrap_err();
            assert!(matches!(err, SendError::Full { .. }), "{err:?}");
        }
        // A call too, while it waits for room (not yet for its reply):
        // dropped, or timed out.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), sender.send(n, &data)).await;
        assert!(cancelled.is_err(), "a call into a full queue completed: {cancelled:?}");
        assert_eq!(sender.receiver_pid(), Some(pid), "the connection was dropped with the call");
        let timed_out = sender.send_timeout(n, &data, Duration::from_millis(50)).await;
        assert!(matches!(timed_out, Err(SendError::TimedOut { stage: TimeoutStage::Room, .. })), "{timed_out:?}");
        assert_eq!(sender.receiver_pid(), Some(pid), "the connection was dropped with the timed-out call");
        // A loan's call, likewise: the buffer goes back, nothing is sent.
        let mut loan = sender.loan(100_000).await.unwrap();
        loan.fill(7);
        let cancelled = tokio::time::timeout(Duration::from_millis(50), loan.send(n)).await;
        assert!(cancelled.is_err(), "a loan's call into a full queue completed: {cancelled:?}");
        assert_eq!(sender.receiver_pid(), Some(pid), "the connection was dropped with the loan's call");
        let mut loan = sender.loan(100_000).await.unwrap();
        loan.fill(7);
        let timed_out = loan.send_timeout(n, Duration::from_millis(50)).await;
        assert!(matches!(timed_out, Err(SendError::TimedOut { stage: TimeoutStage::Room, .. })), "{timed_out:?}");
        assert_eq!(sender.receiver_pid(), Some(pid), "the connection was dropped with the loan's timed-out call");
        // A loan's post, likewise: the buffer goes back, nothing is sent.
        let mut loan = sender.loan(100_000).await.unwrap();
        loan.fill(8);
        let cancelled = tokio::time::timeout(Duration::from_millis(50), loan.post(n)).await;
        assert!(cancelled.is_err(), "a loan posted into a full queue completed: {cancelled:?}");
        assert_eq!(sender.receiver_pid(), Some(pid), "the connection was dropped with the loan's post");
        let err = sender.try_post(n, &data).await.unwrap_err();
        assert!(matches!(err, SendError::Full { .. }), "{err:?}");
        // Once the receiver takes messages again, the next ones follow
        // those already queued: every message once, in order, none of the
        // cancelled ones.
        kid.tell("go");
        sender.post(n, &data).await.unwrap();
        let mut loan = sender.loan(100_000).await.unwrap();
        loan.fill(9);
        loan.post(n + 1).await.unwrap();
        let reply = sender.send_timeout(n + 2, b"", Duration::from_secs(30)).await.unwrap();
        let want = (0..n + 3).map(|t| t.to_string()).collect::<Vec<_>>().join(" ");
        assert!(reply.data[..] == *want.as_bytes(), "every message once, in order; got {:?}", reply.data);
    });
    drop(tally);
}

/// A loan that waits for a buffer, dropped while it waits, leaves the
/// connection as it was: every buffer still held by the posts queued
/// behind a held handler, which then all arrive once, in order.
#[test]
fn a_loan_cancelled_while_waiting_for_a_buffer_keeps_the_connection() {
    let gated = Gated::start("async-loan-cancel");
    let name = gated.name.clone();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        let pid = sender.receiver_pid();
        assert_eq!(pid, Some(std::process::id()));
        sender.post(0, b"").await.unwrap();
        gated.held().await;
        let mut n = 1;
        loop {
            match sender.try_loan(100_000).await {
                Ok(mut loan) => {
                    loan.fill(1);
                    loan.post(n).await.unwrap();
                    n += 1;
                }
                Err(SendError::Full { .. }) => break,
                Err(e) => panic!("try_loan: {e}"),
            }
            assert!(n < 64, "the pool never ran out");
        }
        let cancelled = tokio::time::timeout(Duration::from_millis(50), sender.loan(100_000)).await.is_err();
        assert!(cancelled, "a loan came with every buffer held");
        assert_eq!(sender.receiver_pid(), pid, "the connection was dropped with the wait for a buffer");
        let err = sender.try_loan(100_000).await.unwrap_err();
        assert!(matches!(err, SendError::Full { .. }), "{err:?}");
        gated.open();
        sender.post(n, b"after").await.unwrap();
        sender.send_timeout(n + 1, b"", Duration::from_secs(30)).await.unwrap();
        let tags: Vec<u64> = gated.seen().iter().map(|r| r.0).collect();
        assert_eq!(tags, (0..n + 2).collect::<Vec<_>>(), "every message arrives once, in order");
    });
}

/// `flush` of a large post: on Windows it waits until the receiver has
/// taken it (a bounded one gives up while the handler is held, keeping the
/// connection); on Linux, and for small posts, it returns at once.
#[test]
fn async_flush_waits_until_the_posts_are_taken() {
    let gated = Gated::start("async-flush");
    let name = gated.name.clone();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        sender.flush().await.unwrap();
        sender.post(0, b"first").await.unwrap();
        gated.held().await;
        sender.post(1, b"small").await.unwrap();
        sender.flush_timeout(Duration::ZERO).await.unwrap();
        sender.post(2, &vec![5u8; 100_000]).await.unwrap();
        let started = Instant::now();
        let flushed = sender.flush_timeout(Duration::from_millis(300)).await;
        if cfg!(windows) {
            let err = flushed.unwrap_err();
            assert!(matches!(err, SendError::TimedOut { stage: TimeoutStage::Flush, .. }), "{err:?}");
            assert!(started.elapsed() >= Duration::from_millis(300), "gave up after {:?}", started.elapsed());
        } else {
            flushed.unwrap();
        }
        gated.open();
        sender.flush().await.unwrap();
        sender.flush_timeout(Duration::ZERO).await.unwrap();
        sender.send_timeout(3, b"", Duration::from_secs(30)).await.unwrap();
        let seen: Vec<(u64, usize)> = gated.seen().iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(seen, [(0, 5), (1, 5), (2, 100_000), (3, 0)]);
    });
}

/// An async loan posted into a full queue comes back: `try_post` at once
/// with `Full`, `post_timeout` with `TimedOut` no sooner than its timeout,
/// still filled and lent each time; posted again once there is room, it
/// arrives once, in order, in place.
#[test]
fn an_async_loan_posted_into_a_full_queue_comes_back() {
    let gated = Gated::start("async-loan-full");
    let name = gated.name.clone();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        sender.post(0, b"").await.unwrap();
        gated.held().await;
        let n = fill_the_queue(&mut sender, &name, 1, &[1; 16]).await;
        let len = 100_000;
        let mut loan = sender.loan(len).await.unwrap();
        loan.fill(5);
        let err = loan.try_post(n).expect_err("try_post into a full queue");
        assert!(matches!(err.error(), SendError::Full { .. }), "try_post into a full queue: {err}");
        let loan = err.into_loan().expect("the loan comes back with Full");
        let t = Duration::from_millis(300);
        let started = Instant::now();
        let err = loan.post_timeout(n, t).await.expect_err("post_timeout into a full queue");
        let took = started.elapsed();
        match err.error() {
            SendError::TimedOut { timeout, stage, .. } => {
                assert_eq!((*timeout, *stage), (t, TimeoutStage::Room), "the timeout and stage reported");
            }
            other => panic!("post_timeout into a full queue: {other:?}"),
        }
        assert!(took >= t, "gave up after {took:?}, before {t:?}");
        let (error, loan) = err.into_parts();
        let mut loan = loan.unwrap_or_else(|| panic!("the loan comes back with {error}"));
        assert_eq!(loan.len(), len);
        loan.write_at(len - 1, &[6]).unwrap();
        gated.open();
        // Room comes as the receiver catches up: the same loan, still filled.
        loan.post_timeout(n, Duration::from_secs(30)).await.unwrap();
        // A call: once it is answered, everything before it was taken.
        sender.send_timeout(n + 1, b"", Duration::from_secs(30)).await.unwrap();
        // With room, try_post goes through at once.
        let mut next = sender.loan(64).await.unwrap();
        next.fill(2);
        next.try_post(n + 2).unwrap();
        // A loan given up on is dropped: its buffer goes back, nothing is sent.
        let mut spare = sender.loan(len).await.unwrap();
        spare.fill(9);
        drop(spare);
        sender.send_timeout(n + 3, b"", Duration::from_secs(30)).await.unwrap();
        let seen = gated.seen();
        let tags: Vec<u64> = seen.iter().map(|r| r.0).collect();
        assert_eq!(tags, (0..n + 4).collect::<Vec<_>>(), "every message arrives once, in order");
        assert_eq!(seen[n as usize], (n, len, true, 5 * (len as u64 - 1) + 6), "the loan, as filled");
        assert_eq!(seen[n as usize + 2], (n + 2, 64, true, 128), "the loan posted at once");
    });
}

/// When every buffer of the pool is held by the receiver, an async
/// `try_loan` fails at once with `Full` and `loan_timeout` with `TimedOut`,
/// no sooner than its timeout, both keeping the connection; once the
/// receiver catches up a loan comes, and every loan posted arrives once.
#[test]
fn an_async_loan_waits_for_a_buffer_only_as_long_as_asked() {
    let gated = Gated::start("async-loan-wait");
    let name = gated.name.clone();
    within(async {
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        sender.post(0, b"").await.unwrap();
        gated.held().await;
        let len = 100_000;
        let mut held = 0u64;
        loop {
            match sender.try_loan(len).await {
                Ok(mut loan) => {
                    held += 1;
                    loan.fill(held as u8);
                    loan.post(held).await.unwrap();
                }
                Err(SendError::Full { name: n }) => {
                    assert_eq!(n, name);
                    break;
                }
                Err(e) => panic!("try_loan: {e}"),
            }
            assert!(held < 64, "the pool never ran out");
        }
        assert!(held >= 2, "only {held} loans before the pool ran out");
        let t = Duration::from_millis(300);
        let started = Instant::now();
        let err = sender.loan_timeout(len, t).await.expect_err("loan_timeout with every buffer held");
        let took = started.elapsed();
        assert!(
            matches!(err, SendError::TimedOut { timeout, stage: TimeoutStage::Room, .. } if timeout == t),
            "{err:?}"
        );
        assert!(took >= t, "gave up after {took:?}, before {t:?}");
        // The connection was kept: a post queues behind the loans.
        sender.post(held + 1, b"after").await.unwrap();
        gated.open();
        let mut loan = sender.loan_timeout(len, Duration::from_secs(30)).await.unwrap();
        loan.fill(7);
        loan.post(held + 2).await.unwrap();
        sender.send_timeout(held + 3, b"", Duration::from_secs(30)).await.unwrap();
        let seen = gated.seen();
        let tags: Vec<u64> = seen.iter().map(|r| r.0).collect();
        assert_eq!(tags, (0..held + 4).collect::<Vec<_>>(), "every message arrives once, in order");
        for &(tag, size, loaned, total) in &seen[1..=held as usize] {
            assert_eq!((size, loaned, total), (len, true, tag % 256 * len as u64), "loan {tag}");
        }
        assert_eq!(seen[held as usize + 2], (held + 2, len, true, 7 * len as u64), "the loan that waited");
    });
}

#[test]
fn an_async_mailbox_serves_blocking_senders_in_other_processes() {
    let name = unique("async-mailbox");
    within(async {
        let mut inbox = AsyncMailbox::bind(&name).unwrap();
        assert_eq!(inbox.name(), name);
        let kids: Vec<Kid> = (0..3).map(|_| Kid::spawn("blocking-sender", &[&name, "40"])).collect();
        let mut answered = 0;
        while answered < 120 {
            let request = inbox.recv().await.expect("the mailbox is open");
            let text = String::from_utf8(request.payload().to_vec()).unwrap();
            let reply = Reply::new(request.tag() as i64 * 2, text.to_uppercase().into_bytes());
            request.reply(reply).unwrap();
            answered += 1;
        }
        for mut kid in kids {
            assert_eq!(kid.expect("done"), "40");
            kid.wait_ok();
        }
        // Dropping the stream unbinds the mailbox.
        drop(inbox);
        let err = copydata::tokio::send(&name, 1, b"x").await.unwrap_err();
        assert!(matches!(err, SendError::NoSuchMailbox { .. }), "{err:?}");
    });
}

#[test]
fn an_async_mailbox_is_a_stream_and_answers_async_senders() {
    use futures_core::Stream;
    let name = unique("async-both");
    within(async {
        let inbox = AsyncMailbox::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            let mut inbox = Box::pin(inbox);
            let mut n = 0;
            while let Some(request) = std::future::poll_fn(|cx| inbox.as_mut().poll_next(cx)).await {
                let reply = Reply::new(request.tag() as i64 + 1, request.payload().to_vec());
                request.reply(reply).unwrap();
                n += 1;
                if n == 100 {
                    break;
                }
            }
            n
        });
        let mut sender = AsyncSender::connect(&name).await.unwrap();
        for i in 0..100u64 {
            let reply = sender.send_timeout(i, &i.to_le_bytes(), Duration::from_secs(10)).await.unwrap();
            assert_eq!((reply.code, &reply.data[..]), (i as i64 + 1, &i.to_le_bytes()[..]));
        }
        assert_eq!(server.await.unwrap(), 100);
    });
}

#[test]
fn async_errors_are_clear() {
    within(async {
        let err = AsyncSender::connect("bad/name").await.unwrap_err();
        assert!(matches!(err, SendError::InvalidName { .. }), "{err:?}");
        let err = AsyncSender::connect(&unique("nobody-here")).await.unwrap_err();
        assert!(matches!(err, SendError::NoSuchMailbox { .. }), "{err:?}");
    });
}

#[test]
fn the_async_echo_example_runs() {
    let Some(path) = common::example("async_echo") else { return };
    let mut child = std::process::Command::new(path).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{status}: {out}");
    for line in [
        "client: hello -> HELLO (code 0)",
        "client: async -> ASYNC (code 1)",
        "client: copydata -> COPYDATA (code 2)",
        "client: a loan of 4 bytes -> LOAN (code 3)",
    ] {
        assert!(out.contains(line), "no {line:?} in {out:?}");
    }
    assert!(out.contains("server: client exited with"), "{out}");
}

/// `flush` and `flush_timeout` report posts lost with a receiver that died
/// (as the blocking `Sender::flush` does).
#[test]
fn async_flush_reports_posts_lost_with_their_receiver() {
    let (mut echo, name) = echo_child();
    within(async move {
        let mut senders = Vec::new();
        for _ in 0..2 {
            let mut sender = AsyncSender::connect(&name).await.unwrap();
            assert_eq!(sender.send(7, b"up").await.unwrap().code, 7);
            senders.push(sender);
        }
        echo.kill();
        for (timed, sender) in senders.iter_mut().enumerate() {
            let started = std::time::Instant::now();
            loop {
                // (Posted after the death: queued, never taken.)
                match sender.post(1, b"lost").await {
                    Ok(()) => {}
                    Err(SendError::ReceiverDied { .. }) => break,
                    Err(e) => panic!("post: {e:?}"),
                }
                let flushed =
                    if timed == 1 { sender.flush_timeout(Duration::from_secs(10)).await } else { sender.flush().await };
                match flushed {
                    Err(SendError::ReceiverDied { .. }) => break,
                    // (Wine notices a killed process a moment after it
                    // counts as gone.)
                    Ok(()) if started.elapsed() < Duration::from_secs(5) => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    other => panic!("expected ReceiverDied, got {other:?}"),
                }
            }
        }
    });
}

/// A sender polled outside a tokio runtime (another executor) fails with
/// an error, keeping its connection, rather than panicking in its first
/// wait.
#[test]
fn outside_a_runtime_a_call_fails_cleanly() {
    let (_kid, name) = echo_child();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut sender = rt.block_on(AsyncSender::connect(&name)).unwrap();
    // A minimal executor that is not tokio.
    struct Nothing;
    impl std::task::Wake for Nothing {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Nothing));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut poll_once =
        |what: &str, call: std::pin::Pin<&mut dyn std::future::Future<Output = Result<(), SendError>>>| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.poll(&mut cx))) {
                Ok(std::task::Poll::Ready(Err(SendError::Io { .. }))) => {}
                Ok(other) => panic!("{what} outside a runtime: {other:?}"),
                Err(_) => panic!("{what} outside a runtime panicked"),
            }
        };
    poll_once("send", std::pin::pin!(async { sender.send(1, b"sleep:200").await.map(drop) }));
    poll_once(
        "send_timeout",
        std::pin::pin!(async { sender.send_timeout(1, b"x", Duration::from_secs(5)).await.map(drop) }),
    );
    poll_once("post_timeout", std::pin::pin!(sender.post_timeout(1, b"x", Duration::from_secs(5))));
    // A loan sent outside a runtime gives its buffer back: a pool's worth
    // and more of them never run it dry.
    for _ in 0..20 {
        let loan = rt.block_on(sender.loan(1 << 20)).unwrap();
        poll_once("a loan's send", std::pin::pin!(async { loan.send(1).await.map(drop) }));
    }
    assert!(rt.block_on(sender.try_loan(1 << 20)).is_ok(), "loans sent outside a runtime kept their buffers");
    let reply = rt.block_on(sender.send_timeout(2, b"after", Duration::from_secs(10))).unwrap();
    assert_eq!((reply.code, &reply.data[..]), (2, &b"after"[..]));
}

/// A loan taken on one runtime and sent on another (the first one
/// dropped) goes through that other runtime's reactor, as calls do.
#[test]
fn a_loan_moves_between_runtimes() {
    let (_kid, name) = echo_child();
    let single = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = single();
    let mut sender = first.block_on(AsyncSender::connect(&name)).unwrap();
    let mut loan = first.block_on(sender.loan(7)).unwrap();
    loan.write_at(0, b"sleep:2").unwrap();
    drop(first);
    let reply = single().block_on(loan.send_timeout(4, Duration::from_secs(10)));
    let reply = reply.expect("a loan sent on another runtime");
    assert_eq!((reply.code, &reply.data[..]), (4, &b"sleep:2"[..]));
}
