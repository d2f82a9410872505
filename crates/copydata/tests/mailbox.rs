//! Mailboxes across real processes, on Linux and (from the same sources)
//! Windows under Wine.

mod common;

use std::time::{Duration, Instant};

use common::{Kid, hear, pattern, say, unique};
use copydata::{Mailbox, MailboxOptions, RecvError, Reply, SendError, Sender, TimeoutStage};

#[test]
fn child_entry() {
    common::child_main(role);
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A checksum both sides compute (word-wise, so that it is quick even in
/// unoptimised test builds).
fn sum(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ data.len() as u64;
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x100_0000_01b3).rotate_left(17);
    }
    words.remainder().iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Makes this thread send descriptors as an unprivileged process whose
/// limit of open files is `files` would: the kernel refuses (ETOOMANYREFS)
/// once this user has more than that in flight, except to threads with
/// `CAP_SYS_RESOURCE` or `CAP_SYS_ADMIN`, which this one gives up.
#[cfg(target_os = "linux")]
fn limit_descriptors_in_flight(files: u64) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(files), ..limit }).map_err(fail)?;
    let mut caps = capabilities(None).map_err(fail)?;
    caps.effective -= CapabilitySet::SYS_RESOURCE | CapabilitySet::SYS_ADMIN;
    set_capabilities(None, caps).map_err(fail)
}

/// How the forked child `pid` ended ("exited STATUS"), or "hung" if it
/// did not within `limit` (then it is killed).
#[cfg(target_os = "linux")]
fn ended_within(pid: libc::pid_t, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: polls a child of this process.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return format!("exited {status}");
        }
        if started.elapsed() > limit {
            // SAFETY: ends and reaps that child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return "hung".to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The child roles.
fn role(role: &str, args: &[String]) -> Result<(), String> {
    match role {
        // Serves `args[0]`: replies with code = checksum of the payload and
        // data = the payload reversed; tag 1 sleeps `args[1]` ms first (and
        // says `@held` as it begins to, if `args[2]` is "tell"); tag 2
        // refuses; tag 3 panics; tag 4 answers with the sections it got.
        // Binds and serves `args[0]`, and calls it through a sender; then
        // forks without exec: the forked copy drops its copies of the
        // mailbox and the sender and exits. This process then says how the
        // copy ended, and whether its mailbox still serves, through the
        // old connection and a new one. Then the same with a request in
        // hand (the mailbox `args[0]-held`): the forked copy drops it, and
        // this process answers it.
        #[cfg(target_os = "linux")]
        "fork-drop" => {
            // (Tag 2 takes long enough for the sender's wait to look at the
            // connection's socket, which a copy that stopped it would have
            // ended.)
            let server = Mailbox::bind(&args[0]).map_err(fail)?.serve(|m| {
                if m.tag() == 2 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                Reply::code(m.tag() as i64)
            });
            let park = copydata::SenderOptions::new().wait(copydata::Wait::Park);
            let mut sender = Sender::connect_with(&args[0], &park).map_err(fail)?;
            sender.send(1, b"before").map_err(fail)?;
            // SAFETY: the forked copy only drops the two and leaves with
            // _exit; the parent waits for it (killing it if it hangs).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                drop(sender);
                drop(server);
                // SAFETY: ends the forked copy at once.
                unsafe { libc::_exit(0) };
            }
            say("forked", &ended_within(pid, Duration::from_secs(10)));
            let old = sender.send_timeout(2, b"after", Duration::from_secs(10)).map(|r| r.code);
            let new = Sender::connect_timeout(&args[0], Duration::from_secs(10))
                .and_then(|mut s| s.send_timeout(3, b"new", Duration::from_secs(10)))
                .map(|r| r.code);
            say("after", &format!("{old:?} {new:?}"));
            drop(sender);
            drop(server);

            let held = format!("{}-held", args[0]);
            let mailbox = Mailbox::bind(&held).map_err(fail)?;
            let call = std::thread::spawn(move || copydata::send_timeout(&held, 4, b"held", Duration::from_secs(30)));
            let request = mailbox.recv_timeout(Duration::from_secs(10)).map_err(fail)?;
            // SAFETY: as above.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                drop(request);
                drop(mailbox);
                // SAFETY: ends the forked copy at once.
                unsafe { libc::_exit(0) };
            }
            let ended = ended_within(pid, Duration::from_secs(10));
            let code = 40 + request.tag() as i64;
            request.reply(Reply::code(code)).map_err(fail)?;
            let answered = call.join().map_err(|_| "the caller panicked")?.map(|r| r.code);
            say("held", &format!("{ended} {answered:?}"));
            Ok(())
        }
        "serve" => {
            let delay: u64 = args.get(1).map_or(Ok(0), |d| d.parse()).map_err(fail)?;
            let tell = args.get(2).is_some_and(|a| a == "tell");
            let mailbox = Mailbox::bind(&args[0]).map_err(fail)?;
            say("ready", &std::process::id().to_string());
            let mut count = 0u64;
            loop {
                let Ok(mut request) = mailbox.recv() else { break };
                count += 1;
                match request.tag() {
                    1 => {
                        if tell {
                            say("held", "");
                        }
                        std::thread::sleep(Duration::from_millis(delay));
                    }
                    2 => {
                        request.refuse("tag 2 is refused");
                        continue;
                    }
                    3 => {
                        drop(request);
                        continue;
                    }
                    4 => {
                        let sections = request.message_mut().take_sections();
                        let mut text = Vec::new();
                        for s in &sections {
                            let v = s.map(0, 16).map_err(fail)?.to_vec();
                            let end = v.iter().position(|&b| b == 0).unwrap_or(16);
                            text.push(format!("{}:{:?}", String::from_utf8_lossy(&v[..end]), s.access()));
                            if let Ok(w) = s.map_mut(0, 6) {
                                w.write_at(0, b"reply\0").map_err(fail)?;
                            }
                        }
                        let reply = Reply::new(sections.len() as i64, text.join(",").into_bytes());
                        request.reply(reply).map_err(fail)?;
                        continue;
                    }
                    5 => {
                        // Echo unchanged (large payloads: compared with memcmp).
                        let code = sum(request.payload()) as i64;
                        let data = request.payload().to_vec();
                        let _ = request.reply(Reply::new(code, data));
                        continue;
                    }
                    99 => {
                        let _ = request.reply(Reply::code(count as i64));
                        break;
                    }
                    _ => {}
                }
                let mut back = request.payload().to_vec();
                back.reverse();
                let code = sum(request.payload()) as i64;
                let _ = request.reply(Reply::new(code, back));
            }
            say("served", &count.to_string());
            Ok(())
        }
        // Sends `args[2]` messages to `args[0]` as sender number `args[1]`,
        // checking every reply.
        "send-many" => {
            let id: u64 = args[1].parse().map_err(fail)?;
            let n: u64 = args[2].parse().map_err(fail)?;
            let mut sender = Sender::connect(&args[0]).map_err(fail)?;
            for i in 0..n {
                let data = pattern((i % 97) as usize * 13, id * 1_000_000 + i);
                let reply = sender.send(100 + i, &data).map_err(fail)?;
                let mut expect = data.clone();
                expect.reverse();
                if reply.code != sum(&data) as i64 || reply.data[..] != expect[..] {
                    return Err(format!("sender {id}: reply {i} does not match its message"));
                }
            }
            say("sent", &n.to_string());
            Ok(())
        }
        // Serves `args[0]` (code = tag) with every descriptor of the process
        // in use, until told "free"; then until told "end".
        #[cfg(target_os = "linux")]
        "serve-starved" => {
            use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
            let _server = Mailbox::bind(&args[0]).map_err(fail)?.serve(|m| Reply::code(m.tag() as i64));
            let limit = getrlimit(Resource::Nofile);
            setrlimit(Resource::Nofile, Rlimit { current: Some(256), ..limit }).map_err(fail)?;
            let mut filler = Vec::new();
            while let Ok(fd) = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()) {
                filler.push(fd);
            }
            say("ready", &filler.len().to_string());
            if hear() != "free" {
                return Err("expected free".into());
            }
            drop(filler);
            say("freed", "");
            hear();
            Ok(())
        }
        // Sends `args[0]` a message with the most sections one takes, this
        // process letting its user have at most 64 descriptors in flight
        // (as an unprivileged process whose limit is 64 would): more waits
        // for the receiver to take them (the kernel refuses with
        // ETOOMANYREFS meanwhile).
        #[cfg(target_os = "linux")]
        "send-many-sections" => {
            let section = copydata::Section::anonymous(4096).map_err(fail)?;
            limit_descriptors_in_flight(64)?;
            let mut sender = Sender::connect(&args[0]).map_err(fail)?;
            let all = [&section; copydata::MAX_SECTIONS];
            let reply = sender
                .send_with_sections(4, b"", &all, Some(Duration::from_secs(40)))
                .map_err(|e| format!("{e} ({e:?})"))?;
            say("sent", &reply.code.to_string());
            Ok(())
        }
        // Serves `args[0]` (code = tag) as an unprivileged process
        // whose limit of open files is 64 would (the kernel checks the
        // sending task's limit and capabilities when it sends descriptors:
        // here the welcome of a set-up).
        #[cfg(target_os = "linux")]
        "serve-refs-limited" => {
            // (Before the mailbox's threads start: they inherit this thread's.)
            limit_descriptors_in_flight(64)?;
            let _server = Mailbox::bind(&args[0]).map_err(fail)?.serve(|m| Reply::code(m.tag() as i64));
            say("ready", "");
            hear();
            Ok(())
        }
        // Sends to `args[0]` once and reports the receiver's pid as
        // the sender sees it.
        "print-receiver-pid" => {
            let mut sender = Sender::connect(&args[0]).map_err(fail)?;
            sender.send(7, b"who").map_err(fail)?;
            say("pid", &format!("{:?}", sender.receiver_pid()));
            Ok(())
        }
        // Binds and holds `args[0]` until killed.
        "bind-hold" => {
            let _m = Mailbox::bind(&args[0]).map_err(fail)?;
            say("ready", "");
            common::park_forever()
        }
        // Tries to bind `args[0]`; reports the error.
        "bind-try" => {
            match Mailbox::bind(&args[0]) {
                Ok(_) => say("bound", ""),
                Err(copydata::BindError::AlreadyBound { pid, .. }) => say("taken", &pid.unwrap_or(0).to_string()),
                Err(e) => return Err(fail(e)),
            }
            Ok(())
        }
        // Sends once, reports the outcome's kind.
        // (With a second argument `unlimited`: no limit on the reply's size.)
        "send-once" => {
            let result = if args.get(1).is_some_and(|a| a == "unlimited") {
                let options = copydata::SenderOptions::new().max_reply(u64::MAX);
                copydata::Sender::connect_with(&args[0], &options)
                    .and_then(|mut s| s.send_timeout(0, b"x", Duration::from_secs(20)))
            } else {
                copydata::send_timeout(&args[0], 0, b"x", Duration::from_secs(20))
            };
            say("result", &kind(&result));
            Ok(())
        }
        "wait" => {
            hear();
            Ok(())
        }
        // Receives on `args[0]` with `recv_timeout` of 500 ms in a loop: says
        // `@timeout MS` (how long it waited) at each timeout, echoes like
        // `serve` (code = checksum, data = the payload reversed), stops after
        // tag 99.
        "recv-loop" => {
            let mailbox = Mailbox::bind(&args[0]).map_err(fail)?;
            say("ready", &std::process::id().to_string());
            loop {
                let started = Instant::now();
                match mailbox.recv_timeout(Duration::from_millis(500)) {
                    Ok(request) => {
                        let stop = request.tag() == 99;
                        let mut back = request.payload().to_vec();
                        back.reverse();
                        let code = sum(request.payload()) as i64;
                        let _ = request.reply(Reply::new(code, back));
                        if stop {
                            break;
                        }
                    }
                    Err(RecvError::Timeout) => say("timeout", &started.elapsed().as_millis().to_string()),
                    Err(e) => return Err(fail(e)),
                }
            }
            say("served", "");
            Ok(())
        }
        _ => Err(format!("unknown role {role}")),
    }
}

fn kind(result: &Result<Reply, SendError>) -> String {
    match result {
        Ok(r) => format!("ok {}", r.code),
        Err(SendError::NoSuchMailbox { .. }) => "no-such-mailbox".into(),
        Err(SendError::TimedOut { .. }) => "timed-out".into(),
        Err(SendError::ReceiverDied { .. }) => "receiver-died".into(),
        Err(SendError::Refused { reason, .. }) => format!("refused: {reason}"),
        Err(SendError::PayloadTooLarge { .. }) => "too-large".into(),
        Err(e) => format!("other {e}"),
    }
}

fn server(name: &str, delay_ms: u64) -> Kid {
    let mut kid = Kid::spawn("serve", &[name, &delay_ms.to_string()]);
    kid.expect("ready");
    kid
}

fn stop_server(mut kid: Kid, name: &str) -> u64 {
    copydata::send(name, 99, b"").expect("stopping the server");
    let served = kid.expect("served").parse().unwrap();
    kid.wait_ok();
    served
}

fn check_echo(reply: &Reply, data: &[u8]) {
    assert_eq!(reply.code, sum(data) as i64, "checksum of {} bytes", data.len());
    assert_eq!(reply.data.len(), data.len());
    assert!(reply.data.iter().rev().eq(data.iter()), "reply bytes of {} bytes", data.len());
}

#[test]
fn payloads_of_every_size_round_trip() {
    let name = unique("sizes");
    let kid = server(&name, 0);
    let mut sender = Sender::connect(&name).unwrap();
    for len in [0usize, 1, 5, 65_535, 65_536, 65_537, 1 << 20, 64 << 20] {
        let data = pattern(len, len as u64);
        let reply = sender.send(7, &data).unwrap();
        check_echo(&reply, &data);
    }
    let reply = copydata::send(&name, 0, b"Hello").unwrap();
    check_echo(&reply, b"Hello");
    assert_eq!(stop_server(kid, &name), 10);
}

#[test]
fn a_one_gib_payload_and_reply() {
    let name = unique("gib");
    let kid = server(&name, 0);
    let data = pattern(1 << 30, 1);
    let reply = copydata::send(&name, 5, &data).unwrap();
    assert_eq!(reply.code, sum(&data) as i64);
    assert!(reply.data[..] == data[..], "the 1 GiB reply differs");
    stop_server(kid, &name);
}

#[test]
fn eight_senders_times_a_thousand_messages() {
    let name = unique("many");
    let kid = server(&name, 0);
    let senders: Vec<Kid> = (0..8).map(|i| Kid::spawn("send-many", &[&name, &i.to_string(), "1000"])).collect();
    for mut s in senders {
        assert_eq!(s.expect("sent"), "1000");
        s.wait_ok();
    }
    assert_eq!(stop_server(kid, &name), 8000 + 1);
}

/// A receiver that has run out of file descriptors tells a sender it is
/// busy, with the reason, at once, rather than leave it waiting in the
/// listen queue until its timeout; once descriptors are free again,
/// senders get in.
#[cfg(target_os = "linux")]
#[test]
fn a_receiver_out_of_descriptors_refuses_at_once() {
    let name = unique("starved");
    let mut kid = Kid::spawn("serve-starved", &[&name]);
    kid.expect("ready");
    for _ in 0..2 {
        let started = Instant::now();
        match copydata::send_timeout(&name, 1, b"x", Duration::from_secs(30)) {
            Err(SendError::Busy { reason, .. }) => assert!(reason.contains("file descriptors"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "refused after {took:?}");
    }
    kid.tell("free");
    kid.expect("freed");
    assert_eq!(copydata::send_timeout(&name, 7, b"x", Duration::from_secs(30)).unwrap().code, 7);
    kid.tell("end");
    kid.wait_ok();
}

/// Many senders of one user each send the most sections a message takes,
/// together more descriptors than the kernel lets that user have in flight
/// at once (ETOOMANYREFS): each waits until the receiver has taken enough
/// of the others', rather than fail.
#[cfg(target_os = "linux")]
#[test]
fn sections_beyond_the_kernels_in_flight_limit_wait_for_room() {
    let name = unique("refs");
    let mailbox = Mailbox::bind(&name).unwrap();
    let kids: Vec<Kid> = (0..8).map(|_| Kid::spawn("send-many-sections", &[&name])).collect();
    // Slowly, so that the senders' sections pile up on the way.
    for _ in 0..kids.len() {
        std::thread::sleep(Duration::from_millis(100));
        let mut request = mailbox.recv_timeout(Duration::from_secs(60)).unwrap();
        let sections = request.message_mut().take_sections();
        assert_eq!(sections.len(), copydata::MAX_SECTIONS);
        request.reply(Reply::code(sections.len() as i64)).unwrap();
    }
    for mut kid in kids {
        assert_eq!(kid.expect("sent"), copydata::MAX_SECTIONS.to_string());
        kid.wait_ok();
    }
}

/// A sender knows which process its receiver is (the one that bound the
/// mailbox) while it is connected, and not once the connection is gone.
#[test]
fn a_sender_knows_its_receivers_pid() {
    let name = unique("receiver-pid");
    let kid = server(&name, 0);
    let pid = kid.id();
    let mut sender = Sender::connect(&name).unwrap();
    assert_eq!(sender.receiver_pid(), Some(pid));
    check_echo(&sender.send(7, b"who").unwrap(), b"who");
    assert_eq!(sender.receiver_pid(), Some(pid));
    stop_server(kid, &name);
    assert!(sender.send(7, b"anyone?").is_err());
    assert_eq!(sender.receiver_pid(), None);
}

/// Posts await no reply, so a receiver that dies with posts still queued
/// is reported by `flush` (they are lost), not silently.
#[test]
fn flush_reports_posts_lost_with_their_receiver() {
    let name = unique("lost-posts");
    let mut kid = Kid::spawn("bind-hold", &[&name]);
    kid.expect("ready");
    let mut sender = Sender::connect(&name).unwrap();
    for i in 0..3 {
        sender.post(i, b"queued").unwrap();
    }
    // Alive (if not taking messages): the posts still need nothing here.
    sender.flush_timeout(Duration::from_secs(10)).unwrap();
    kid.kill();
    let started = Instant::now();
    loop {
        match sender.flush_timeout(Duration::from_secs(10)) {
            Err(SendError::ReceiverDied { .. }) => break,
            // (Wine notices a killed process a moment after it counts as gone.)
            Ok(()) if started.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(10)),
            other => panic!("expected ReceiverDied, got {other:?}"),
        }
    }
}

#[test]
fn a_killed_receiver_is_noticed_within_a_second() {
    let name = unique("killed");
    let kid = server(&name, 60_000);
    let waiter = std::thread::spawn({
        let name = name.clone();
        move || {
            let started = Instant::now();
            let result = copydata::send(&name, 1, b"slow");
            (kind(&result), started)
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    kid.kill();
    let (outcome, _) = waiter.join().unwrap();
    let noticed = killed_at.elapsed();
    assert_eq!(outcome, "receiver-died");
    assert!(noticed < Duration::from_secs(1), "noticed after {noticed:?}");
    // The killed receiver's name is reclaimed by the next look.
    assert!(!copydata::mailboxes().unwrap().iter().any(|m| m.name == name));
}

#[test]
fn a_late_reply_is_never_taken_for_a_later_one() {
    let name = unique("late");
    let kid = server(&name, 1500);
    let mut sender = Sender::connect(&name).unwrap();
    let started = Instant::now();
    match sender.send_timeout(1, b"slow one", Duration::from_millis(300)) {
        Err(SendError::TimedOut { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The handler is still busy with the slow one; this one gets its own
    // reply, not the slow one's.
    let reply = sender.send_timeout(0, b"fast one", Duration::from_secs(30)).unwrap();
    check_echo(&reply, b"fast one");
    let reply = sender.send(0, b"").unwrap();
    check_echo(&reply, b"");
    stop_server(kid, &name);
}

/// The time-out of a call whose handler takes longer says it waited for
/// the reply: the message went out (the handler has it) and may still be
/// handled. The stage shows in the message, which an `io::Error` keeps;
/// `copydata::send_timeout`, which connects first, reports the same.
#[test]
fn a_handler_slower_than_the_timeout_times_out_at_the_reply() {
    let name = unique("stage-reply");
    let mut kid = Kid::spawn("serve", &[&name, "1500", "tell"]);
    kid.expect("ready");
    let mut sender = Sender::connect(&name).unwrap();
    let t = Duration::from_millis(300);
    let err = sender.send_timeout(1, b"slow one", t).unwrap_err();
    match &err {
        SendError::TimedOut { name: n, timeout, stage } => {
            assert_eq!((n, *timeout, *stage), (&name, t, TimeoutStage::Reply), "{err}");
        }
        other => panic!("a handler sleeping 1.5 s with a timeout of {t:?}: {other:?}"),
    }
    assert_eq!(err.timeout_stage(), Some(TimeoutStage::Reply));
    assert!(TimeoutStage::Reply.message_sent(), "a message waiting for its reply went out");
    assert_eq!(err.to_string(), format!("timed out after 300ms waiting for the reply of mailbox {name:?}"));
    // It did go out: the handler took it.
    kid.expect("held");
    let io = std::io::Error::from(err);
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    assert!(io.to_string().contains("waiting for the reply"), "{io}");
    // A new connection, then the same wait.
    let err = copydata::send_timeout(&name, 1, b"slow two", t).unwrap_err();
    assert_eq!(err.timeout_stage(), Some(TimeoutStage::Reply), "{err}");
    assert!(matches!(err, SendError::TimedOut { timeout, .. } if timeout == t), "{err:?}");
    kid.expect("held");
    // Other errors have no stage.
    assert_eq!(SendError::NoSuchMailbox { name: name.clone() }.timeout_stage(), None);
    stop_server(kid, &name);
}

/// A post or a call that finds the receiver's queue full and no room
/// within its timeout says it waited for room: nothing was sent (the
/// receiver never sees it) and the connection is kept.
#[test]
fn a_full_queue_times_out_at_the_room_stage_and_sends_nothing() {
    let name = unique("stage-room");
    let mut kid = Kid::spawn("serve", &[&name, "4000", "tell"]);
    kid.expect("ready");
    let mut sender = Sender::connect(&name).unwrap();
    // The handler sleeps on the first post; the queue fills behind it.
    sender.post(1, b"hold").unwrap();
    kid.expect("held");
    // (Empty posts: the smallest records, so that no message of any kind
    // fits in what is left.)
    let data = [7u8; 1000];
    let mut posted = 0u64;
    loop {
        match sender.try_post(0, b"") {
            Ok(()) => posted += 1,
            Err(SendError::Full { .. }) => break,
            Err(e) => panic!("try_post: {e}"),
        }
        assert!(posted < 1_000_000, "the queue never filled");
    }
    let t = Duration::from_millis(200);
    let room = |what: &str, err: SendError| {
        match &err {
            SendError::TimedOut { timeout, stage, .. } => {
                assert_eq!((*timeout, *stage), (t, TimeoutStage::Room), "{what}: {err}");
            }
            other => panic!("{what} into a full queue: {other:?}"),
        }
        assert!(!TimeoutStage::Room.message_sent(), "{what}: waiting for room sends nothing");
        let want = format!("timed out after 200ms waiting for room in the queue of mailbox {name:?}");
        assert_eq!(err.to_string(), want, "{what}");
    };
    room("post_timeout", sender.post_timeout(0, &data, t).unwrap_err());
    room("send_timeout", sender.send_timeout(0, &data, t).unwrap_err());
    let mut loan = sender.loan(data.len()).unwrap();
    loan.fill(7);
    let err = loan.post_timeout(0, t).expect_err("a loan posted into a full queue");
    room("Loan::post_timeout", err.into_error());
    // Still connected to the same queue.
    assert!(sender.max_payload().is_some(), "the connection was dropped");
    // Once the handler is done, a call behind the posts is answered after
    // them; nothing else of this sender was taken.
    check_echo(&sender.send_timeout(0, b"after", Duration::from_secs(30)).unwrap(), b"after".as_slice());
    let served = stop_server(kid, &name);
    assert_eq!(served, 1 + posted + 1 + 1, "the hold, the posts, the call and the stop, nothing more");
}

/// Against a receiver stopped with `SIGSTOP`, a set-up never completes:
/// every way of connecting times out at the connecting stage, having sent
/// nothing.
#[cfg(target_os = "linux")]
#[test]
fn a_stopped_receiver_times_out_at_the_connecting_stage() {
    let name = unique("stage-connect");
    let kid = server(&name, 0);
    common::stop(kid.id());
    let t = Duration::from_millis(300);
    let connecting = |what: &str, err: SendError| {
        match &err {
            SendError::TimedOut { timeout, stage, .. } => {
                assert_eq!((*timeout, *stage), (t, TimeoutStage::Connecting), "{what}: {err}");
            }
            other => panic!("{what} to a stopped receiver: {other:?}"),
        }
        assert!(!TimeoutStage::Connecting.message_sent(), "{what}: a set-up sends no message");
        assert_eq!(err.to_string(), format!("timed out after 300ms connecting to mailbox {name:?}"), "{what}");
    };
    connecting("connect_timeout", Sender::connect_timeout(&name, t).unwrap_err());
    connecting("copydata::send_timeout", copydata::send_timeout(&name, 0, b"x", t).unwrap_err());
    let mut sender = Sender::unconnected(&name, &copydata::SenderOptions::new()).unwrap();
    connecting("send_timeout with set-up", sender.send_timeout(0, b"x", t).unwrap_err());
    connecting("post_timeout with set-up", sender.post_timeout(0, b"x", t).unwrap_err());
    connecting("loan_timeout with set-up", sender.loan_timeout(10, t).map(drop).unwrap_err());
    // Going on, the receiver serves again: none of those messages reached
    // it, only this call and the stop.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(kid.id() as i32).unwrap(),
        rustix::process::Signal::CONT,
    )
    .unwrap();
    check_echo(&sender.send_timeout(0, b"after", Duration::from_secs(30)).unwrap(), b"after".as_slice());
    assert_eq!(stop_server(kid, &name), 2, "only the call after SIGCONT and the stop were served");
}

#[test]
fn refusals_and_panics_are_reported_and_serving_goes_on() {
    let name = unique("refuse");
    let kid = server(&name, 0);
    let mut sender = Sender::connect(&name).unwrap();
    assert!(matches!(sender.send(2, b"x"), Err(SendError::Refused { reason, .. }) if reason.contains("tag 2")));
    assert!(matches!(sender.send(3, b"x"), Err(SendError::Refused { .. })));
    check_echo(&sender.send(0, b"still here").unwrap(), b"still here");
    stop_server(kid, &name);
}

#[test]
fn the_serve_helper_survives_a_panicking_handler() {
    let name = unique("serve");
    let server = Mailbox::bind(&name).unwrap().serve(|msg| {
        if msg.tag() == 13 {
            panic!("unlucky");
        }
        Reply::new(msg.tag() as i64, msg.payload().to_vec())
    });
    assert_eq!(server.name(), name);
    let mut sender = Sender::connect(&name).unwrap();
    assert!(matches!(sender.send(13, b""), Err(SendError::Refused { reason, .. }) if reason.contains("panicked")));
    let reply = sender.send(12, b"ok").unwrap();
    assert_eq!((reply.code, &reply.data[..]), (12, &b"ok"[..]));
    drop(server);
    assert!(matches!(sender.send(1, b""), Err(SendError::ReceiverDied { .. } | SendError::NoSuchMailbox { .. })));
    assert!(matches!(copydata::send(&name, 1, b""), Err(SendError::NoSuchMailbox { .. })));
}

#[test]
fn binding_a_live_name_fails_and_a_dead_one_is_reclaimed() {
    let name = unique("bind");
    let mut holder = Kid::spawn("bind-hold", &[&name]);
    holder.expect("ready");
    let pid = holder.id();
    match Mailbox::bind(&name) {
        Err(copydata::BindError::AlreadyBound { pid: p, .. }) => {
            if cfg!(target_os = "linux") {
                assert_eq!(p, Some(pid));
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(copydata::mailboxes().unwrap().iter().any(|m| m.name == name && m.pid == pid));
    holder.kill();
    assert!(!copydata::mailboxes().unwrap().iter().any(|m| m.name == name), "a dead binder is not listed");
    let rebound = Mailbox::bind(&name).expect("the name of a killed binder is free");
    let mut other = Kid::spawn("bind-try", &[&name]);
    let taken_by = other.expect("taken");
    if cfg!(target_os = "linux") {
        assert_eq!(taken_by, std::process::id().to_string());
    }
    other.wait_ok();
    drop(rebound);
    assert!(matches!(copydata::send(&name, 0, b""), Err(SendError::NoSuchMailbox { .. })));
}

#[test]
fn sending_to_nobody_fails_fast() {
    let started = Instant::now();
    assert!(matches!(copydata::send(&unique("nobody"), 0, b"x"), Err(SendError::NoSuchMailbox { .. })));
    assert!(matches!(Sender::connect("bad/name"), Err(SendError::InvalidName { .. })));
    assert!(matches!(Mailbox::bind(""), Err(copydata::BindError::InvalidName { .. })));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// `Sender::unconnected` checks only the name; its first call connects
/// (a missing mailbox reported then, at once), and once a receiver binds
/// the name, the same sender reaches it.
#[test]
fn an_unconnected_sender_connects_on_its_first_call() {
    assert!(matches!(
        Sender::unconnected("bad/name", &copydata::SenderOptions::new()),
        Err(SendError::InvalidName { .. })
    ));
    let name = unique("unconnected");
    let mut sender = Sender::unconnected(&name, &copydata::SenderOptions::new()).unwrap();
    assert_eq!(sender.max_payload(), None, "not connected yet");
    let started = Instant::now();
    let err = sender.send_timeout(1, b"x", Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, SendError::NoSuchMailbox { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "a missing mailbox took {:?}", started.elapsed());
    let kid = server(&name, 0);
    check_echo(&sender.send_timeout(10, b"now", Duration::from_secs(20)).unwrap(), b"now");
    assert!(sender.max_payload().is_some(), "connected by the call");
    drop(sender);
    stop_server(kid, &name);
}

#[test]
fn oversized_payloads_are_refused_before_transfer() {
    let name = unique("max");
    let mailbox = Mailbox::bind_with(&name, &MailboxOptions::new().max_payload(1000)).unwrap();
    let server = mailbox.serve(|m| Reply::code(m.payload().len() as i64));
    let mut sender = Sender::connect(&name).unwrap();
    // The limit is known once connected, to check before making a payload.
    assert_eq!(sender.max_payload(), Some(1000));
    match sender.send(0, &vec![1u8; 200_000]) {
        Err(SendError::PayloadTooLarge { size: 200_000, max: 1000, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(sender.send(0, &[1u8; 1000]).unwrap().code, 1000);
    drop(server);
}

#[test]
fn recv_timeout_returns_when_nothing_comes() {
    let mailbox = Mailbox::bind(&unique("quiet")).unwrap();
    let started = Instant::now();
    assert_eq!(mailbox.recv_timeout(Duration::from_millis(100)).unwrap_err(), copydata::RecvError::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[test]
fn messages_carry_sections() {
    let name = unique("carry");
    let kid = server(&name, 0);
    let rw = copydata::Section::anonymous(4096).unwrap();
    rw.map_mut(0, 8).unwrap().write_at(0, b"writable").unwrap();
    let data = copydata::Section::anonymous(4096).unwrap();
    data.map_mut(0, 6).unwrap().write_at(0, b"frozen").unwrap();
    let ro = data.read_only().unwrap();
    let mut sender = Sender::connect(&name).unwrap();
    let reply = sender.send_with_sections(4, b"", &[&rw, &ro], Some(Duration::from_secs(30))).unwrap();
    assert_eq!(reply.code, 2);
    assert_eq!(String::from_utf8_lossy(&reply.data), "writable:ReadWrite,frozen:ReadOnly");
    assert_eq!(rw.map(0, 6).unwrap().to_vec(), b"reply\0");
    assert_eq!(data.map(0, 6).unwrap().to_vec(), b"frozen");
    stop_server(kid, &name);
}

/// A sender made by hand, over the raw socket and the mapped region, to
/// write into the shared rings what no well-behaved sender would (and to
/// play a receiver for a real sender). Offsets from `fast/region.rs` and
/// `fast/ring.rs`; the wire header from `sys/linux/mailbox/wire.rs`.
#[cfg(target_os = "linux")]
mod raw {
    use std::io::{IoSliceMut, Read, Write};
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use rustix::mm::{MapFlags, ProtFlags};
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

    // fast/region.rs: the worker's number at +32, the request ring at +1152,
    // the reply ring after it; fast/ring.rs: a ring's header is 384 bytes
    // (the consumer's position at +0, its parked flag at +128, the word it
    // sleeps on at +132), its data area follows.
    /// The protocol version spoken at set-up (fast/region.rs).
    pub const PROTOCOL: u64 = 4;
    pub const WORKER: usize = 32;
    pub const RING_HEADER: usize = 384;
    pub const REQ_RING: usize = 1152;
    pub const REQ_DATA: usize = REQ_RING + RING_HEADER;
    pub const REQ_CAP: usize = 256 << 10;
    pub const REP_RING: usize = REQ_DATA + REQ_CAP;
    pub const REP_DATA: usize = REP_RING + RING_HEADER;
    pub const REP_CAP: usize = 64 << 10;
    pub const REGION_LEN: usize = (REP_DATA + REP_CAP).next_multiple_of(4096);
    pub const CONS_PARKED: usize = 128;
    pub const CONS_WAKE: usize = 132;
    pub const BELL_STRIDE: usize = 128;
    /// sys/linux/mailbox: one doorbell line per handler thread, 64 at most.
    pub const BELLS_LEN: usize = 64 * BELL_STRIDE;
    // fast/conn.rs: kinds and user flags; fast/pool.rs: buffer flags.
    pub const CALL: u32 = 1;
    pub const REPLY: u32 = 3;
    pub const RETIRE: u32 = 6;
    pub const PAD: u32 = 0xffff;
    pub const F_AUX: u32 = 1;
    pub const F_BUF: u32 = 2;
    pub const BUF_NEW: u32 = 1;

    /// A 32-byte wire header: magic, two bytes, 0u16, then three u64 (LE).
    pub fn frame(magic: &[u8; 4], b0: u8, b1: u8, seq: u64, word: u64, len: u64) -> Vec<u8> {
        let mut h = magic.to_vec();
        h.extend_from_slice(&[b0, b1, 0, 0]);
        for v in [seq, word, len] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    pub fn le(h: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(h[at..at + 8].try_into().unwrap())
    }

    /// A memfd of `len` bytes sealed against resizing, as a receiver's.
    pub fn sealed_memfd(len: usize) -> OwnedFd {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create("raw-receiver", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, len as u64).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        fd
    }

    /// A receiver's welcome of this protocol (payload limit 1 MiB) with the
    /// set-up's descriptors (region, doorbells, readiness handle).
    pub fn send_welcome(sock: &UnixStream, fds: &[std::os::fd::BorrowedFd<'_>; 3]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        let welcome = frame(b"CDA2", 0, 0, PROTOCOL, 1 << 20, 0);
        rustix::net::sendmsg(sock, &[std::io::IoSlice::new(&welcome)], &mut control, SendFlags::NOSIGNAL).unwrap();
    }

    /// A readiness handle: this side's end of a Unix socket pair, and the
    /// sender's.
    pub fn readiness_pair() -> (OwnedFd, OwnedFd) {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap()
    }

    /// Sends `header` with one descriptor.
    pub fn send_with_fd(sock: &UnixStream, header: &[u8], fd: std::os::fd::BorrowedFd<'_>) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let fds = [fd];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(sock, &[std::io::IoSlice::new(header)], &mut control, SendFlags::NOSIGNAL).unwrap();
    }

    /// A header and the descriptors that came with it; `None` at the end of
    /// the stream.
    pub fn recv_frame(sock: &UnixStream) -> Option<([u8; 32], Vec<OwnedFd>)> {
        let mut head = [0u8; 32];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut head)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
        )
        .expect("receiving a frame");
        let mut fds = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        if got.bytes == 0 && fds.is_empty() {
            return None;
        }
        assert_eq!(got.bytes, 32, "a short frame header");
        Some((head, fds))
    }

    /// The text after an answer's header (`len` bytes).
    pub fn recv_text(sock: &UnixStream, len: u64) -> String {
        assert!(len > 0 && len <= 4096, "a reason of {len} bytes");
        let mut text = vec![0u8; len as usize];
        (&*sock).read_exact(&mut text).unwrap();
        String::from_utf8(text).unwrap()
    }

    /// The mailbox drops the connection: end of stream (or a reset) within
    /// 10 s, and nothing more was sent.
    pub fn assert_dropped(sock: &UnixStream, what: &str) {
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        match (&*sock).read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: the connection was not dropped within 10 s ({e})"),
        }
        assert!(rest.is_empty(), "{what}: the mailbox answered with {} bytes", rest.len());
    }

    /// A shared read-write mapping of a received descriptor.
    pub struct Map {
        at: *mut u8,
        len: usize,
    }

    impl Map {
        pub fn new(fd: &OwnedFd) -> Map {
            let len = rustix::fs::fstat(fd).unwrap().st_size as usize;
            // SAFETY: a fresh mapping chosen by the kernel (no existing
            // memory is replaced) of the whole object; it stays mapped until
            // `Map` is dropped.
            let at = unsafe {
                rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, fd, 0)
            }
            .expect("mapping a received descriptor");
            Map { at: at.cast(), len }
        }

        pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
            assert!(offset + 4 <= self.len && offset.is_multiple_of(4));
            // SAFETY: inside the mapping (checked), aligned (page-aligned
            // base), shared with another process, so only used atomically.
            unsafe { AtomicU32::from_ptr(self.at.add(offset).cast()) }
        }

        pub fn u64_at(&self, offset: usize) -> &AtomicU64 {
            assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
            // SAFETY: as in `u32_at`.
            unsafe { AtomicU64::from_ptr(self.at.add(offset).cast()) }
        }

        pub fn write(&self, offset: usize, bytes: &[u8]) {
            assert!(offset + bytes.len() <= self.len);
            // SAFETY: inside the mapping (checked); the source is private
            // memory; no reference to the shared bytes is formed.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at.add(offset), bytes.len()) };
        }

        pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
            assert!(offset + len <= self.len);
            let mut out = vec![0u8; len];
            // SAFETY: as in `write`, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(self.at.add(offset), out.as_mut_ptr(), len) };
            out
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`; nothing refers to it after
            // this (the atomics borrowed from `self` are gone).
            let _ = unsafe { rustix::mm::munmap(self.at.cast(), self.len) };
        }
    }

    /// A connection set up by hand.
    pub struct Raw {
        pub sock: UnixStream,
        pub region: Map,
        pub bells: Map,
    }

    impl Raw {
        /// Sends the attachment frame of a new pool buffer (wire.rs: "CDX2",
        /// one buffer, no sections, word = its size) with `memfd`.
        pub fn send_buffer(&self, memfd: &OwnedFd, size: u64) {
            use std::os::fd::AsFd;
            send_with_fd(&self.sock, &frame(b"CDX2", 1, 0, 0, size, 0), memfd.as_fd());
        }

        pub fn set_up(path: &std::path::Path) -> Raw {
            let mut sock = UnixStream::connect(path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            sock.write_all(&frame(b"CDH2", 0, 0, PROTOCOL, 0, 0)).unwrap();
            let (h, fds) = recv_frame(&sock).expect("a welcome");
            assert_eq!((&h[..4], h[4], le(&h, 8), le(&h, 24)), (&b"CDA2"[..], 0, PROTOCOL, 0), "the welcome");
            assert_eq!(fds.len(), 3, "the welcome's descriptors (region, doorbells, readiness)");
            let (region, bells) = (Map::new(&fds[0]), Map::new(&fds[1]));
            assert!(region.len >= REP_DATA + (64 << 10), "a region of {} bytes", region.len);
            assert_eq!(&region.read(0, 8)[..], b"CDREGN02", "the region's magic");
            Raw { sock, region, bells }
        }

        /// Writes a record at `pos` of the request ring, the stamp last.
        #[allow(clippy::too_many_arguments)]
        pub fn put(&self, pos: usize, stamp: u64, kind: u32, flags: u32, len: u64, word: u64, inline: &[u8]) {
            let at = REQ_DATA + pos;
            let mut head = Vec::new();
            head.extend_from_slice(&kind.to_ne_bytes());
            head.extend_from_slice(&flags.to_ne_bytes());
            head.extend_from_slice(&len.to_ne_bytes());
            head.extend_from_slice(&word.to_ne_bytes());
            self.region.write(at + 8, &head);
            self.region.write(at + 32, inline);
            self.region.u64_at(at).store(stamp, Ordering::Release);
        }

        /// Rings the doorbell of the connection's handler thread.
        pub fn ring(&self) {
            let w = self.region.u32_at(WORKER).load(Ordering::Acquire) as usize;
            let word = self.bells.u32_at(w * BELL_STRIDE);
            word.fetch_add(1, Ordering::Release);
            rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1).unwrap();
        }

        /// The record at `pos` of the reply ring, once there (10 s at most):
        /// kind, flags, len, word, inline bytes.
        pub fn reply(&self, pos: usize) -> (u32, u32, u64, u64, Vec<u8>) {
            let at = REP_DATA + pos;
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.region.u64_at(at).load(Ordering::Acquire) != pos as u64 + 1 {
                assert!(Instant::now() < deadline, "no reply within 10 s");
                std::thread::sleep(Duration::from_millis(1));
            }
            let h = self.region.read(at + 8, 24);
            let u32_at = |i: usize| u32::from_ne_bytes(h[i..i + 4].try_into().unwrap());
            let u64_at = |i: usize| u64::from_ne_bytes(h[i..i + 8].try_into().unwrap());
            let (kind, flags, len, word) = (u32_at(0), u32_at(4), u64_at(8), u64_at(16));
            let inline = self.region.read(at + 32, (flags & 0xff_ffff) as usize);
            (kind, flags, len, word, inline)
        }
    }
}

/// Garbage from a sender is rejected and only its connection dropped, with
/// nothing else sent, while a well-behaved sender goes on being served.
///
/// On the socket (which carries only the set-up hello and, later, the
/// descriptors that go with a message): random bytes, a bad magic, a short
/// header, frames other than a hello. A hello of another protocol version or
/// wait mode gets the "incompatible" welcome (status 2, no descriptors), a
/// protocol-1 request (`CDQ1`) a refusal naming the protocol.
///
/// In the shared region, after a genuine set-up by hand (the hello, the
/// welcome with the region and the doorbells, both mapped here): a record
/// written the right way is answered (which checks the offsets below), then
/// garbage, each on a fresh connection: a bad stamp, an inline length past
/// the ring, an attachment announced but never sent, an unsealed memfd as a
/// new buffer, a reference to an empty buffer slot, an unknown kind, padding
/// at the start of the ring, a bad retired slot, a payload above the limit.
/// Offsets from `fast/region.rs` and `fast/ring.rs`; the wire header from
/// `sys/linux/mailbox/wire.rs`.
#[cfg(target_os = "linux")]
#[test]
fn garbage_on_the_socket_is_rejected_and_others_are_served() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use raw::{BUF_NEW, CALL, F_AUX, F_BUF, PAD, REPLY, RETIRE, Raw, assert_dropped, frame, le, recv_frame, recv_text};

    let name = unique("garbage");
    let kid = server(&name, 0);
    let pid = kid.id();
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let good = std::thread::spawn({
        let (name, stop, served) = (name.clone(), stop.clone(), served.clone());
        move || {
            let mut sender = Sender::connect(&name).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) || n < 50 {
                let data = pattern(100 + n as usize, n);
                check_echo(&sender.send_timeout(0, &data, Duration::from_secs(30)).unwrap(), &data);
                n += 1;
                served.store(n, Ordering::SeqCst);
            }
            n
        }
    });
    // The good sender is served between any two cases.
    let still_served = |what: &str| {
        let from = served.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while served.load(Ordering::SeqCst) < from + 2 {
            assert!(Instant::now() < deadline, "{what}: the good sender was not served for 30 s");
            assert!(!good.is_finished(), "{what}: the good sender failed");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    still_served("start");
    let fds_of = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let maps_of = || {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        maps.lines().filter(|l| l.contains("/memfd:")).count()
    };
    let (fds, maps) = (fds_of(), maps_of());

    // ---- the socket, before set-up
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nothing at all", Vec::new()),
        ("random bytes", pattern(4096, 99)),
        ("bad magic", frame(b"XXXX", 0, 0, 2, 0, 0)),
        ("a short header", b"CDH2\0\0".to_vec()),
        ("an attachment frame before set-up", frame(b"CDX2", 1, 0, 0, 4096, 0)),
        ("a welcome sent by a sender", frame(b"CDA2", 0, 0, 2, 0, 0)),
        ("a protocol-1 reply", frame(b"CDR1", 0, 0, 1, 0, 0)),
    ];
    for (what, bytes) in cases {
        let mut raw = UnixStream::connect(&path).unwrap();
        let _ = raw.write_all(&bytes);
        // Ending our side makes the short cases definite.
        let _ = raw.shutdown(std::net::Shutdown::Write);
        assert_dropped(&raw, what);
        still_served(what);
    }
    // Hellos the mailbox cannot serve: an "incompatible" welcome, then the end.
    for (what, wait, protocol) in [
        ("protocol 1 hello", 0, 1),
        ("protocol 2 hello", 0, 2),
        ("protocol 3 hello", 0, 3),
        ("protocol 5 hello", 0, 5),
        ("protocol 2^64-1 hello", 0, u64::MAX),
        ("wait mode 2", 2, raw::PROTOCOL),
        ("wait mode 255", 255, raw::PROTOCOL),
    ] {
        let mut raw = UnixStream::connect(&path).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(&frame(b"CDH2", wait, 0, protocol, 0, 0)).unwrap();
        let (h, fds) = recv_frame(&raw).unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!((&h[..4], h[4]), (&b"CDA2"[..], 2), "{what}: an incompatible welcome");
        assert!(fds.is_empty(), "{what}: the welcome carries {} descriptors", fds.len());
        let reason = recv_text(&raw, le(&h, 24));
        assert!(reason.contains("protocol"), "{what}: {reason:?}");
        assert_dropped(&raw, what);
        still_served(what);
    }
    // A sender of protocol 1: a refusal in its own terms.
    {
        let mut raw = UnixStream::connect(&path).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(&frame(b"CDQ1", 0, 0, 1, 7, 0)).unwrap();
        let (h, fds) = recv_frame(&raw).expect("an answer to a protocol-1 request");
        assert_eq!((&h[..4], h[4], le(&h, 8)), (&b"CDR1"[..], 1, 1), "a protocol-1 refusal of request 1");
        assert!(fds.is_empty());
        let reason = recv_text(&raw, le(&h, 24));
        assert!(reason.contains("protocol"), "{reason:?}");
        assert_dropped(&raw, "a protocol-1 request");
        still_served("a protocol-1 request");
    }

    // ---- the shared region, after a genuine set-up
    let ctl = Raw::set_up(&path);
    // A record written by the book is answered: the offsets are right.
    ctl.put(0, 1, CALL, 9, 9, 0, b"hello raw");
    ctl.ring();
    let (kind, flags, len, word, inline) = ctl.reply(0);
    assert_eq!((kind, flags, len, word as i64), (REPLY, 9, 9, sum(b"hello raw") as i64), "the reply record");
    assert_eq!(inline, b"war olleh");
    // The next record (at 64: 32 header bytes + 9, rounded to 64) has a bad
    // stamp.
    ctl.put(64, 0x5eed_f00d_dead_beef, CALL, 0, 0, 0, &[]);
    ctl.ring();
    assert_dropped(&ctl.sock, "a bad stamp after a good record");
    drop(ctl);
    still_served("a bad stamp after a good record");

    let aux_head = [0u8; 8]; // aux_len 0, sections 0 (the descriptors go on the socket)
    let bufref = |slot: u32, flags: u32, use_no: u64| {
        let mut b = slot.to_ne_bytes().to_vec();
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&use_no.to_ne_bytes());
        b
    };
    let new_buffer = [&aux_head[..], &bufref(0, BUF_NEW, 1)].concat();
    // Done by the book (a memfd sealed against resizing, as the pool's are),
    // a new buffer is taken, read and released: so what follows is refused
    // for its garbage, not for its form.
    {
        use rustix::fs::{MemfdFlags, SealFlags};
        let raw = Raw::set_up(&path);
        let memfd = rustix::fs::memfd_create("pooled", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&memfd, 1 << 20).unwrap();
        rustix::io::pwrite(&memfd, b"pooled", 0).unwrap();
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        raw.send_buffer(&memfd, 1 << 20);
        raw.put(0, 1, CALL, (F_AUX | F_BUF) << 24 | 24, 6, 0, &new_buffer);
        raw.ring();
        let (kind, flags, len, word, inline) = raw.reply(0);
        assert_eq!((kind, flags, len, word as i64), (REPLY, 6, 6, sum(b"pooled") as i64), "the reply record");
        assert_eq!(inline, b"deloop");
        // fast/region.rs: the receiver's release table at +128, per slot.
        assert_eq!(raw.region.u64_at(128).load(Ordering::Acquire), 1, "use 1 of buffer 0 released");
        drop(raw);
        still_served("a buffer by the book");
    }
    // A buffer of a size no pool makes (not a power of two, or 1 TiB of
    // sparse memory to map): refused before it is mapped.
    for (what, size) in [("a buffer of an odd size", (1u64 << 20) + 4096), ("a buffer of 1 TiB", 1 << 40)] {
        use rustix::fs::{MemfdFlags, SealFlags};
        let raw = Raw::set_up(&path);
        let memfd = rustix::fs::memfd_create("pooled", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&memfd, size).unwrap();
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        raw.send_buffer(&memfd, size);
        raw.put(0, 1, CALL, (F_AUX | F_BUF) << 24 | 24, 6, 0, &new_buffer);
        raw.ring();
        assert_dropped(&raw.sock, what);
        drop(raw);
        still_served(what);
    }
    type Case<'a> = (&'a str, bool, u64, u32, u32, u64, u64, Vec<u8>);
    // (what, an unsealed memfd on the socket first, stamp, kind, flags, len, word, inline)
    let cases: Vec<Case<'_>> = vec![
        ("a random stamp", false, 0x0123_4567_89ab_cdef, CALL, 0, 0, 0, Vec::new()),
        ("an inline length past the ring", false, 1, CALL, 0x00ff_ffff, 0, 0, Vec::new()),
        ("an attachment that never comes", false, 1, CALL, F_AUX << 24 | 8, 0, 0, aux_head.to_vec()),
        ("an unsealed memfd as a new buffer", true, 1, CALL, (F_AUX | F_BUF) << 24 | 24, 4096, 0, new_buffer),
        ("a reference to an empty buffer slot", false, 1, CALL, F_BUF << 24 | 16, 100_000, 0, bufref(5, 0, 1)),
        ("an unknown kind", false, 1, 77, 0, 0, 0, Vec::new()),
        ("padding at the start of the ring", false, 1, PAD, 0, 0, 0, Vec::new()),
        ("a retired slot out of range", false, 1, RETIRE, 0, 0, 1000, Vec::new()),
        ("a payload above the limit", false, 1, CALL, F_BUF << 24 | 16, 1 << 40, 0, bufref(0, 0, 1)),
        ("unknown record flags", false, 1, CALL, 0x80 << 24, 0, 0, Vec::new()),
    ];
    for (what, memfd, stamp, kind, flags, len, word, inline) in cases {
        let raw = Raw::set_up(&path);
        if memfd {
            // A memfd not sealed at all: the sender could shrink it under the
            // receiver's mapping.
            let memfd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
            rustix::fs::ftruncate(&memfd, 1 << 20).unwrap();
            raw.send_buffer(&memfd, 1 << 20);
        }
        raw.put(0, stamp, kind, flags, len, word, &inline);
        raw.ring();
        assert_dropped(&raw.sock, what);
        drop(raw);
        still_served(what);
    }

    stop.store(true, Ordering::SeqCst);
    let served = good.join().unwrap();
    assert!(served >= 50);
    // Every dropped connection is let go of: its socket and region.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds_of() > fds || maps_of() > maps {
        assert!(
            Instant::now() < deadline,
            "the receiver holds {} descriptors and {} memfd mappings (before the garbage: {fds} and {maps})",
            fds_of(),
            maps_of()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    check_echo(&copydata::send(&name, 0, b"after the garbage").unwrap(), b"after the garbage");
    stop_server(kid, &name);
}

/// A record that announces an attachment the sender never sent is refused
/// at once: the sender writes the attachment before the record, so a
/// missing one is a broken or hostile peer, not a slow one. The receiver
/// used to wait 2 s for it, holding its handler thread, so a sender that
/// reconnected and did it again kept every other sender waiting: here five
/// such rounds, each followed by an honest call, took over 10 s before.
#[cfg(target_os = "linux")]
#[test]
fn an_attachment_that_never_comes_holds_up_nobody() {
    use raw::{CALL, F_AUX, Raw, assert_dropped};

    let name = unique("noaux");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let started = Instant::now();
    for round in 0..5 {
        let raw = Raw::set_up(&path);
        // aux_len 0, no sections: the descriptors would come on the socket.
        raw.put(0, 1, CALL, F_AUX << 24 | 8, 0, 0, &[0u8; 8]);
        raw.ring();
        let data = format!("honest call {round}");
        check_echo(
            &copydata::send_timeout(&name, 0, data.as_bytes(), Duration::from_secs(10)).unwrap(),
            data.as_bytes(),
        );
        assert_dropped(&raw.sock, "an attachment that never comes");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "five rounds of a missing attachment held the mailbox for {took:?}");
    stop_server(kid, &name);
}

/// Where a streaming sender publishes its progress: fast/region.rs puts the
/// word at +72; fast/conn.rs keeps the use's number in its top 24 bits and
/// the bytes written below.
#[cfg(target_os = "linux")]
const STREAMED: usize = 72;

/// A hand-made sender that hands over a pool buffer of 1 MiB and starts a
/// call of 1 MiB streamed through it, saying 4 KiB are written.
#[cfg(target_os = "linux")]
fn start_a_stream(path: &std::path::Path) -> raw::Raw {
    use std::sync::atomic::Ordering;

    use raw::{BUF_NEW, CALL, F_AUX, F_BUF, Raw};
    use rustix::fs::{MemfdFlags, SealFlags};

    // fast/pool.rs: a buffer reference is slot (u32), flags (u32), use
    // (u64); BUF_STREAM = 8.
    const BUF_STREAM: u32 = 8;
    let raw = Raw::set_up(path);
    let memfd = rustix::fs::memfd_create("pooled", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&memfd, 1 << 20).unwrap();
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    raw.send_buffer(&memfd, 1 << 20);
    raw.region.u64_at(STREAMED).store(1 << 40 | 4096, Ordering::Release);
    let mut inline = vec![0u8; 8]; // aux_len 0, no sections
    inline.extend_from_slice(&0u32.to_ne_bytes());
    inline.extend_from_slice(&(BUF_NEW | BUF_STREAM).to_ne_bytes());
    inline.extend_from_slice(&1u64.to_ne_bytes());
    raw.put(0, 1, CALL, (F_AUX | F_BUF) << 24 | 24, 1 << 20, 0, &inline);
    raw.ring();
    raw
}

/// Senders that start streaming a large payload and stop writing it hold
/// up nobody: the receiver puts such a copy aside and serves its other
/// senders, and drops the stalled ones after 2 s. Each hand-made sender
/// here hands over a pool buffer, publishes a streamed record for 1 MiB of
/// it and a progress word that says 4 KiB are written, then writes nothing
/// more. The receiver used to wait for each on its handler thread: three
/// of them held an honest sender up for 2 to 6 s.
#[cfg(target_os = "linux")]
#[test]
fn a_stream_that_stops_holds_up_nobody() {
    use raw::{Raw, assert_dropped};

    let name = unique("stall");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let mut honest = copydata::Sender::connect(&name).unwrap();
    check_echo(&honest.send(0, b"before").unwrap(), b"before");
    let stalled: Vec<Raw> = (0..3).map(|_| start_a_stream(&path)).collect();
    let started = Instant::now();
    for i in 0..5 {
        let data = format!("honest call {i}");
        check_echo(&honest.send_timeout(0, data.as_bytes(), Duration::from_secs(10)).unwrap(), data.as_bytes());
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "three stalled streams held an honest sender up for {took:?}");
    for raw in &stalled {
        assert_dropped(&raw.sock, "a stream that stops");
    }
    check_echo(&honest.send(0, b"after").unwrap(), b"after");
    drop(honest);
    stop_server(kid, &name);
}

/// A sender that streams a payload a few bytes at a time is dropped as one
/// that stopped (an honest sender publishes whole chunks of 256 KiB), and
/// while its copy is put aside the receiver naps between looks instead of
/// spinning. The hand-made sender here adds 1 byte to its progress every
/// 100 ms. Before, each byte renewed its 2 s: the connection lived for as
/// long as the trickle went on, and the receiver's handler thread polled
/// at 100 % CPU all the while.
#[cfg(target_os = "linux")]
#[test]
fn a_stream_that_trickles_is_dropped_and_costs_no_cpu() {
    use std::io::Read;
    use std::sync::atomic::Ordering;

    let name = unique("trickle-stream");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let raw = start_a_stream(&path);
    let progress = raw.region.u64_at(STREAMED);
    let started = Instant::now();
    // Let the receiver put the copy aside, then watch its CPU.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_of(kid.id());
    let watched = Instant::now();
    raw.sock.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let dropped = loop {
        std::thread::sleep(Duration::from_millis(100));
        progress.fetch_add(1, Ordering::Release);
        match (&raw.sock).read(&mut byte) {
            Ok(0) => break started.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break started.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the mailbox answered a trickled stream: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "a trickled stream was still served after 10 s");
    };
    let (used, over) = (cpu_of(kid.id()).saturating_sub(before), watched.elapsed());
    assert!(dropped < Duration::from_secs(6), "a trickled stream was dropped only after {dropped:?}");
    assert!(used < over / 2, "the receiver used {used:?} of CPU in {over:?} of a stalled stream");
    let mut honest = copydata::Sender::connect(&name).unwrap();
    check_echo(&honest.send(0, b"after").unwrap(), b"after");
    drop(honest);
    stop_server(kid, &name);
}

/// The CPU time (user and system) a process has used (Linux: from
/// `/proc/PID/stat`).
#[cfg(target_os = "linux")]
fn cpu_of(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = text[text.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// A padding record with nothing after it leaves the receiver idle and
/// serving. A sender made by hand writes one record by the book at position
/// 0 of the request ring (answered), then, at the next position, a valid
/// padding record: the receiver follows it to the next lap's start
/// (262144), where the only stamp is the one an earlier lap left (1), so
/// there is nothing to take. The receiver's cheap look at the ring must
/// follow the pad too: before the fix it stayed on the pad's stamp, which
/// looked like a record for ever, so the handler thread spun at 100 % CPU
/// and `recv_timeout` never returned. Here the receiver (a child in a loop
/// of `recv_timeout(500 ms)`) goes on timing out on time, sleeps, serves
/// another sender, and serves the hand-made one at the next lap's start.
#[cfg(target_os = "linux")]
#[test]
fn a_padding_record_with_nothing_after_it_leaves_the_receiver_idle() {
    use std::sync::atomic::Ordering;

    use raw::{CALL, PAD, REPLY, REQ_CAP, REQ_RING, Raw};

    /// Reads `n` `@timeout` lines: each within 3 s, each on time.
    fn timeouts(kid: &mut Kid, n: usize, what: &str) {
        for _ in 0..n {
            let ms: u64 = kid
                .expect_within("timeout", Duration::from_secs(3))
                .unwrap_or_else(|| panic!("{what}: recv_timeout(500 ms) did not return within 3 s"))
                .parse()
                .unwrap();
            assert!((500..1500).contains(&ms), "{what}: recv_timeout(500 ms) returned after {ms} ms");
        }
    }

    let name = unique("pad");
    let mut kid = Kid::spawn("recv-loop", &[&name]);
    let pid: u32 = kid.expect("ready").parse().unwrap();
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let raw = Raw::set_up(&path);
    raw.put(0, 1, CALL, 9, 9, 0, b"hello raw");
    raw.ring();
    let (kind, flags, len, word, inline) = raw.reply(0);
    assert_eq!((kind, flags, len, word as i64), (REPLY, 9, 9, sum(b"hello raw") as i64), "the reply record");
    assert_eq!(inline, b"war olleh");
    // The call took one line (32 header bytes + 9): the pad goes at 64.
    raw.put(64, 65, PAD, 0, 0, 0, &[]);
    raw.ring();
    // The receiver follows it: its position (the request ring's consumer
    // word) becomes the next lap's start.
    let position = raw.region.u64_at(REQ_RING);
    let deadline = Instant::now() + Duration::from_secs(10);
    while position.load(Ordering::Acquire) != REQ_CAP as u64 {
        assert!(
            Instant::now() < deadline,
            "the receiver did not follow the pad ({})",
            position.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_of(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_of(pid).saturating_sub(before);
    assert!(used < Duration::from_millis(100), "the receiver used {used:?} of CPU in 1 s of quiet after the pad");
    // The lines of that quiet spell (1.3 s: two at least), and more.
    timeouts(&mut kid, 4, "after the pad");
    let mut sender = Sender::connect(&name).unwrap();
    check_echo(&sender.send_timeout(0, b"a good sender", Duration::from_secs(30)).unwrap(), b"a good sender");
    // The hand-made sender goes on at the next lap's start (offset 0, stamp
    // 262144 + 1); the reply comes at the reply ring's next position.
    raw.put(0, REQ_CAP as u64 + 1, CALL, 5, 5, 0, b"again");
    raw.ring();
    let (kind, flags, len, word, inline) = raw.reply(64);
    assert_eq!((kind, flags, len, word as i64), (REPLY, 5, 5, sum(b"again") as i64), "the reply after the pad");
    assert_eq!(inline, b"niaga");
    timeouts(&mut kid, 1, "at the end");
    sender.send_timeout(99, b"", Duration::from_secs(30)).unwrap();
    loop {
        match kid.next_line(common::WAIT) {
            Some((t, _)) if t == "timeout" => {}
            Some((t, _)) if t == "served" => break,
            other => panic!("the receiver said {other:?}, expected @served"),
        }
    }
    kid.wait_ok();
}

/// Clients that connect and never say hello (or only part of one) hold up
/// nobody: set-up starts
/// only once a hello is there (before, the mailbox's acceptor waited up to
/// 2 s on each silent client, so a sender behind five of them could not
/// connect within a second), and each silent client is dropped after 2 s.
#[cfg(target_os = "linux")]
#[test]
fn silent_clients_do_not_hold_up_other_senders() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    let name = unique("silent");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let mut silent: Vec<UnixStream> = (0..5).map(|_| UnixStream::connect(&path).unwrap()).collect();
    // Nor do clients that send part of a hello and stop (set-up used to
    // wait 2 s for the rest of each).
    for _ in 0..5 {
        let mut s = UnixStream::connect(&path).unwrap();
        std::io::Write::write_all(&mut s, b"C").unwrap();
        silent.push(s);
    }
    for round in 0..3u64 {
        let data = pattern(64, round);
        let mut sender = Sender::connect_timeout(&name, Duration::from_secs(1)).expect("set-up behind silent clients");
        check_echo(&sender.send_timeout(0, &data, Duration::from_secs(1)).unwrap(), &data);
    }
    // The silent ones are hung up on once their 2 s are over (a reset for
    // those whose byte was left unread).
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent client was not hung up on: {other:?}"),
        }
    }
    stop_server(kid, &name);
}

/// A hello that comes in two parts is set up as soon as its rest is there,
/// not at its 2 s deadline: the acceptor, which stops polling a partial
/// hello for input (it would stay readable), looks at it again every few
/// milliseconds. It used to look only at the deadline.
#[cfg(target_os = "linux")]
#[test]
fn a_hello_in_two_parts_is_set_up_when_complete() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use raw::{frame, recv_frame};

    let name = unique("two-part");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let hello = frame(b"CDH2", 0, 0, raw::PROTOCOL, 0, 0);
    let mut sock = UnixStream::connect(&path).unwrap();
    let started = Instant::now();
    sock.write_all(&hello[..1]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    sock.write_all(&hello[1..]).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (welcome, _fds) = recv_frame(&sock).expect("a welcome");
    let took = started.elapsed();
    assert_eq!(&welcome[..4], b"CDA2", "the welcome");
    assert!(took < Duration::from_millis(1500), "the welcome came {took:?} after the hello began (its deadline: 2 s)");
    drop(sock);
    stop_server(kid, &name);
}

/// What a mailbox hands every sender at set-up cannot be turned against the
/// others: the doorbells (shared by all its senders) and the region take no
/// further seal (a sender sealing the doorbells against new writable
/// mappings would shut out every later sender), and the readiness handle
/// is a socket of the sender's own, not a description the receiver writes
/// through (a sender could clear its `O_NONBLOCK` and make the receiver's
/// next signal block).
#[cfg(target_os = "linux")]
#[test]
fn what_set_up_hands_over_cannot_be_turned_against_the_others() {
    use rustix::fs::SealFlags;
    use rustix::net::{AddressFamily, SocketType, sockopt};
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use raw::{frame, recv_frame};
    let name = unique("sealed-setup");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let mut sock = UnixStream::connect(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(&frame(b"CDH2", 0, 0, raw::PROTOCOL, 0, 0)).unwrap();
    let (_, fds) = recv_frame(&sock).expect("a welcome");
    assert_eq!(fds.len(), 3);
    for (fd, what) in [(&fds[0], "region"), (&fds[1], "doorbells")] {
        let seals = rustix::fs::fcntl_get_seals(fd).unwrap();
        assert!(seals.contains(SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW), "{what}: {seals:?}");
        assert_eq!(
            rustix::fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE),
            Err(rustix::io::Errno::PERM),
            "{what}: sealed against writes by a sender"
        );
    }
    assert_eq!(sockopt::socket_type(&fds[2]).unwrap(), SocketType::STREAM);
    assert_eq!(sockopt::socket_domain(&fds[2]).unwrap(), AddressFamily::UNIX);
    drop((sock, fds));
    check_echo(&copydata::send(&name, 0, b"still").unwrap(), b"still");
    stop_server(kid, &name);
}

/// Connections that look as if their whole hello had arrived (an
/// out-of-band byte counts in `FIONREAD` but is skipped by a read) do not
/// hold up set-up for others: the hello is read without waiting, and a
/// short one drops that connection. (Each used to stall the mailbox's
/// set-up for 2 s, one after another.)
#[cfg(target_os = "linux")]
#[test]
fn hellos_that_only_look_complete_hold_up_no_one() {
    use std::os::unix::net::UnixStream;

    use rustix::net::SendFlags;
    let name = unique("oob-hello");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let hello = raw::frame(b"CDH2", 0, 0, raw::PROTOCOL, 0, 0);
    let tricks: Vec<UnixStream> = (0..4)
        .map(|_| {
            let sock = UnixStream::connect(&path).unwrap();
            rustix::net::send(&sock, &hello[..1], SendFlags::OOB).unwrap();
            rustix::net::send(&sock, &hello[..31], SendFlags::empty()).unwrap();
            sock
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut sender = Sender::connect_timeout(&name, Duration::from_secs(6)).expect("connected in time");
    check_echo(&sender.send(0, b"through").unwrap(), b"through");
    eprintln!("connected after {:?} beside {} tricky hellos", started.elapsed(), tricks.len());
    drop(tricks);
    stop_server(kid, &name);
}

/// A receiver that drips its refusal's reason a byte at a time cannot keep
/// a sender past its connect timeout (each read used to get the whole
/// timeout anew).
#[cfg(target_os = "linux")]
#[test]
fn a_dripped_refusal_does_not_outlast_the_connect_timeout() {
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    use raw::{frame, recv_frame};
    let name = unique("drip");
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&path).unwrap();
    let sender = std::thread::spawn({
        let name = name.clone();
        move || {
            let started = Instant::now();
            let r = Sender::connect_timeout(&name, Duration::from_secs(1)).map(|_| ());
            (r, started.elapsed())
        }
    });
    let (mut sock, _) = listener.accept().unwrap();
    std::fs::remove_file(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    recv_frame(&sock).expect("a hello");
    // A refusal (status 1) announcing a reason of 4096 bytes, then a byte
    // every 200 ms until the sender hangs up (at most 30 s).
    sock.write_all(&frame(b"CDA2", 1, 0, raw::PROTOCOL, 0, 4096)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sender.is_finished() && Instant::now() < deadline {
        if sock.write_all(b"x").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (r, took) = sender.join().unwrap();
    assert!(matches!(r, Err(SendError::TimedOut { .. })), "{r:?}");
    assert!(took < Duration::from_secs(5), "the connect timeout of 1 s took {took:?}");
}

/// A receiver that hands over something else than a Unix stream socket
/// connected to it as the connection's readiness handle is refused at
/// set-up: the sender never polls or reads a file or pipe it was given, nor
/// a socket that reads as hung up from the start (which would keep a
/// waiting sender spinning).
#[cfg(target_os = "linux")]
#[test]
fn a_readiness_handle_that_is_not_a_socket_is_refused() {
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::net::UnixListener;

    use raw::{BELLS_LEN, REGION_LEN, recv_frame, sealed_memfd, send_welcome};

    let unconnected = || -> OwnedFd {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap()
    };
    // A listening socket (with a connection pending, so it polls readable
    // for ever) passes the peer check: its creator is the receiver.
    let listening = || -> OwnedFd {
        let dir = std::env::temp_dir().join(unique("listening"));
        let l = UnixListener::bind(&dir).unwrap();
        let _pending = std::os::unix::net::UnixStream::connect(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        l.into()
    };
    let fakes = [
        (sealed_memfd(4096), "a memfd"),
        (unconnected(), "an unconnected socket"),
        (listening(), "a listening socket"),
    ];
    for (fake, what) in fakes {
        let name = unique("not-socket");
        let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        let sender = std::thread::spawn({
            let name = name.clone();
            move || Sender::connect_timeout(&name, Duration::from_secs(10)).map(|_| ())
        });
        let (sock, _) = listener.accept().unwrap();
        let _ = std::fs::remove_file(&path);
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        recv_frame(&sock).expect("a hello");
        let (region, bells) = (sealed_memfd(REGION_LEN), sealed_memfd(BELLS_LEN));
        send_welcome(&sock, &[region.as_fd(), bells.as_fd(), fake.as_fd()]);
        let err = sender.join().unwrap().unwrap_err();
        assert!(
            matches!(&err, SendError::Protocol { reason, .. } if reason.contains("readiness handle")),
            "{what} as the readiness handle gave {err:?}"
        );
    }
}

/// A sender parked for its reply looks at the reply ring again after a
/// slice (20 ms), even if no wake-up ever comes. A receiver made by hand (a
/// listening socket at the mailbox's path, the set-up by the book: a
/// welcome with the region and the doorbells) takes a park-mode sender's
/// call and writes the reply record without bumping the word the sender
/// sleeps on. Before the fix, a parked sender only checked that the
/// receiver lived at each slice and slept on until its deadline (10 s):
/// a missed wake-up was never made good.
#[cfg(target_os = "linux")]
#[test]
fn a_parked_sender_finds_a_reply_that_came_without_a_wake_up() {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::Ordering;

    use copydata::{SenderOptions, Wait};
    use raw::{
        BELLS_LEN, CALL, CONS_PARKED, CONS_WAKE, Map, REGION_LEN, REP_CAP, REP_DATA, REP_RING, REPLY, REQ_CAP,
        REQ_DATA, le, recv_frame, sealed_memfd, send_welcome,
    };

    /// Removes the hand-made mailbox's socket.
    struct Unlink(std::path::PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Waits (10 s at most) until `f` holds.
    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    let name = unique("slice");
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let listener = UnixListener::bind(&path).unwrap();
    let _unlink = Unlink(path);
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn({
        let name = name.clone();
        move || {
            let mut s = Sender::connect_with(&name, &SenderOptions::new().wait(Wait::Park)).unwrap();
            let r = s.send_timeout(7, b"ping", Duration::from_secs(10));
            let _ = tx.send((r, Instant::now()));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let sock = loop {
        match listener.accept() {
            Ok((sock, _)) => break sock,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the sender did not connect within 10 s");
                assert!(!sender.is_finished(), "the sender failed to connect");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (hello, _) = recv_frame(&sock).expect("a hello");
    assert_eq!(
        (&hello[..4], hello[4], le(&hello, 8)),
        (&b"CDH2"[..], 1, raw::PROTOCOL),
        "the hello of a park-mode sender"
    );
    // The region: its header (magic, protocol, ring sizes, buffer slots), the
    // rest zero; the doorbells; and the readiness handle (a socket pair's
    // end).
    let (region_fd, bells_fd) = (sealed_memfd(REGION_LEN), sealed_memfd(BELLS_LEN));
    let (_notify_mine, notify_fd) = raw::readiness_pair();
    let region = Map::new(&region_fd);
    let mut head = b"CDREGN02".to_vec();
    for v in [raw::PROTOCOL as u32, REQ_CAP as u32, REP_CAP as u32, 64] {
        head.extend_from_slice(&v.to_ne_bytes());
    }
    region.write(0, &head);
    send_welcome(&sock, &[region_fd.as_fd(), bells_fd.as_fd(), notify_fd.as_fd()]);
    // The call arrives at request position 0, by the book.
    until("the call", || region.u64_at(REQ_DATA).load(Ordering::Acquire) == 1);
    let h = region.read(REQ_DATA + 8, 24);
    assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), CALL);
    assert_eq!(u64::from_ne_bytes(h[16..24].try_into().unwrap()), 7, "the call's tag");
    assert_eq!(region.read(REQ_DATA + 32, 4), b"ping");
    // The sender parks for the reply (its flag in the reply ring's header:
    // 1 while it sleeps on the futex word, its first millisecond; then 2,
    // "signal my readiness handle", which it sleeps on with the socket);
    // give it time to fall asleep.
    until("the sender parks", || region.u32_at(REP_RING + CONS_PARKED).load(Ordering::Acquire) == 2);
    std::thread::sleep(Duration::from_millis(200));
    let word = region.u32_at(REP_RING + CONS_WAKE).load(Ordering::Acquire);
    // The reply at reply position 0, the stamp last; no wake-up.
    let mut rec = Vec::new();
    rec.extend_from_slice(&REPLY.to_ne_bytes());
    rec.extend_from_slice(&4u32.to_ne_bytes());
    rec.extend_from_slice(&4u64.to_ne_bytes());
    rec.extend_from_slice(&42u64.to_ne_bytes());
    rec.extend_from_slice(b"pong");
    region.write(REP_DATA + 8, &rec);
    region.u64_at(REP_DATA).store(1, Ordering::Release);
    let written = Instant::now();
    let (result, at) = rx.recv_timeout(Duration::from_secs(30)).expect("the sender thread gave no result");
    let reply = result.expect("the reply written without a wake-up");
    assert_eq!((reply.code, &reply.data[..]), (42, &b"pong"[..]));
    let took = at.duration_since(written);
    eprintln!("the parked sender found the reply after {took:?}");
    assert!(took < Duration::from_secs(2), "the parked sender found the reply only after {took:?}");
    assert_eq!(region.u32_at(REP_RING + CONS_WAKE).load(Ordering::Acquire), word, "nobody woke the sender");
    sender.join().unwrap();
    drop(sock);
}

/// A sender running as another user is refused: by the file system (the
/// runtime directory is 0700, the socket 0600), and, where those are opened
/// up by hand, by the receiver's check of the peer's uid.
#[cfg(target_os = "linux")]
#[test]
fn a_sender_of_another_user_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: needs root to run a sender as another user (nobody)");
        return;
    }
    let nobody = 65534;
    let name = unique("otheruser");
    let kid = server(&name, 0);
    let socket = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    // A runtime directory of nobody's, holding a link to our socket, whose
    // mode we widen: only the receiver's uid check stands in the way now.
    let dir = std::env::temp_dir().join(unique("nobody-dir"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(nobody), Some(nobody)).unwrap();
    let link = dir.join(socket.file_name().unwrap());
    std::fs::hard_link(&socket, &link).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let outcome = |runtime_dir: &std::path::Path| {
        let mut cmd = common::child_command("send-once", &[&name]);
        cmd.env("COPYDATA_RUNTIME_DIR", runtime_dir).uid(nobody).gid(nobody);
        let mut kid = Kid::start(cmd, "send-once", &[]);
        let result = kid.expect("result");
        kid.wait_ok();
        result
    };
    assert_eq!(outcome(&dir), "refused: the mailbox accepts only its own user", "the receiver's uid check");
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    // Through our own (0700) runtime directory it cannot even look.
    let ours = socket.parent().unwrap();
    let through_ours = outcome(ours);
    eprintln!("another user through our runtime directory: {through_ours}");
    assert!(
        through_ours.starts_with("refused: runtime directory") && through_ours.contains("owned by uid 0"),
        "{through_ours}"
    );
    check_echo(&copydata::send(&name, 0, b"own user").unwrap(), b"own user");
    stop_server(kid, &name);
}

/// The plain Win32 peer built from `tests/c/peer.c` (scripts/test.sh builds
/// it with mingw and names it in `COPYDATA_C_PEER`).
#[cfg(windows)]
fn c_peer() -> Option<String> {
    let peer = std::env::var("COPYDATA_C_PEER").ok();
    if peer.is_none() {
        eprintln!("skipped: COPYDATA_C_PEER is not set (scripts/test.sh builds the C peer)");
    }
    peer
}

#[cfg(windows)]
fn run_c_peer(peer: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(peer)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the C peer")
}

/// A plain C program sends `WM_COPYDATA` to a mailbox: `dwData` is the tag,
/// its bytes the payload, and it gets the reply code as the `LRESULT`.
#[cfg(windows)]
#[test]
fn a_plain_win32_program_sends_to_a_mailbox() {
    let Some(peer) = c_peer() else { return };
    let name = unique("cpeer-in");
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let server = Mailbox::bind(&name).unwrap().serve(move |msg| {
        let _ = seen_tx.send((msg.tag(), msg.payload().to_vec(), msg.sender().pid));
        Reply::code(msg.tag() as i64 * 2 + msg.payload().len() as i64)
    });
    let child = run_c_peer(&peer, &["send", &format!("copydata.mailbox.{name}"), "21", "hello from C"]);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("lresult {}", 21 * 2 + 12));
    let (tag, payload, from) = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((tag, payload.as_slice(), from), (21, &b"hello from C"[..], pid));
    drop(server);
}

/// Issue (W2): another program posting `WM_APP + 1` (the old internal
/// "close" message) or `WM_QUIT` to a mailbox's window closed the mailbox.
/// No message from outside may close it.
#[cfg(windows)]
#[test]
fn messages_posted_by_other_programs_do_not_close_a_mailbox() {
    let Some(peer) = c_peer() else { return };
    let name = unique("cpeer-post");
    let server = Mailbox::bind(&name).unwrap().serve(|msg| Reply::code(msg.tag() as i64));
    let class = format!("copydata.mailbox.{name}");
    for message in ["32769", "16", "2"] {
        // WM_APP + 1, WM_CLOSE, WM_DESTROY (each followed by WM_QUIT).
        let out = run_c_peer(&peer, &["post", &class, message]).wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "posted");
        std::thread::sleep(Duration::from_millis(200));
        let reply = copydata::send_timeout(&name, 7, b"still there?", Duration::from_secs(10));
        assert_eq!(reply.map(|r| r.code).ok(), Some(7), "after message {message}");
    }
    drop(server);
}

/// Issue (W1): a plain program that made a window of a mailbox's class
/// after the mailbox was bound received the next send. Senders talk only to
/// the window the name's holder published.
#[cfg(windows)]
#[test]
fn a_window_of_the_same_class_does_not_take_a_mailboxs_messages() {
    use std::io::BufRead;
    let Some(peer) = c_peer() else { return };
    let name = unique("cpeer-squat");
    let server = Mailbox::bind(&name).unwrap().serve(|msg| Reply::code(msg.tag() as i64 + 1));
    let mut squatter = run_c_peer(&peer, &["serve", &format!("copydata.mailbox.{name}")]);
    let mut line = String::new();
    std::io::BufReader::new(squatter.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    for tag in [1u64, 2, 3] {
        let reply = copydata::send_timeout(&name, tag, b"for the mailbox", Duration::from_secs(10)).unwrap();
        assert_eq!(reply.code, tag as i64 + 1, "the reply came from the squatter's window");
    }
    assert_eq!(copydata::mailboxes().unwrap().iter().filter(|m| m.name == name).count(), 1);
    let _ = squatter.kill();
    let _ = squatter.wait();
    drop(server);
}

/// Issue (W5): a plain program whose reply window does not handle messages
/// held the handler thread (and so every sender it serves) for 5 s per
/// message while the reply bytes waited to be delivered. Now 2 s at most.
#[cfg(windows)]
#[test]
fn a_plain_sender_that_does_not_take_its_reply_holds_up_others_briefly() {
    let Some(peer) = c_peer() else { return };
    let name = unique("cpeer-hung");
    // Every message is answered with bytes (which go to the sender's window).
    let server = Mailbox::bind(&name).unwrap().serve(|msg| Reply::new(7, msg.payload().to_vec()));
    let mut good = Sender::connect(&name).unwrap();
    assert_eq!(good.send(1, b"warm").unwrap().code, 7);
    let hung = run_c_peer(&peer, &["send-hung", &format!("copydata.mailbox.{name}"), "reply to nobody"]);
    std::thread::sleep(Duration::from_millis(300));
    // The handler is busy delivering to the hung window now; the next
    // message waits for it, boundedly.
    let started = Instant::now();
    assert_eq!(good.send_timeout(2, b"next", Duration::from_secs(30)).unwrap().code, 7);
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(4000), "a sender waited {waited:?} behind a hung plain sender");
    let out = hung.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "lresult 7");
    drop(server);
}

/// Issue (W4): the reply bytes of `send_to_window` were the first
/// `WM_COPYDATA` that reached the sender's window while it waited, from
/// anyone. A third program writing to it meanwhile is not taken for the
/// answer now.
#[cfg(windows)]
#[test]
fn a_third_program_cannot_answer_for_the_window_sent_to() {
    use std::io::BufRead;
    let Some(peer) = c_peer() else { return };
    /// Ends the child even if the test fails half-way.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let class = unique("CopydataCPeerSlow");
    let mut slow = KillOnDrop(run_c_peer(&peer, &["serve", &class, "1500"]));
    let mut line = String::new();
    std::io::BufReader::new(slow.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let sending = {
        let class = class.clone();
        std::thread::spawn(move || {
            copydata::os::windows::send_to_window(Some(&class), None, 5, b"abc", Duration::from_secs(30))
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = run_c_peer(&peer, &["inject", "copydata.sender", "forged answer"]).wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("injected "), "{out:?}");
    let reply = sending.join().unwrap().unwrap();
    assert_eq!((reply.code, &reply.data[..]), (1005, &b"C got 3 bytes"[..]));
    drop(slow);
}

/// copydata sends to a plain window of a C program found by its class: the
/// reply code is the `LRESULT`, the reply bytes what it sent back.
#[cfg(windows)]
#[test]
fn copydata_sends_to_a_plain_win32_window() {
    use std::io::BufRead;
    let Some(peer) = c_peer() else { return };
    let class = unique("CopydataCPeer");
    let mut child = run_c_peer(&peer, &["serve", &class]);
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let reply = copydata::os::windows::send_to_window(Some(&class), None, 5, b"abc", Duration::from_secs(30)).unwrap();
    assert_eq!(reply.code, 1005);
    assert_eq!(&reply.data[..], b"C got 3 bytes");
    let reply = copydata::os::windows::send_to_window(Some(&class), None, 6, b"", Duration::from_secs(30)).unwrap();
    assert_eq!((reply.code, &reply.data[..]), (1006, &b"C got 0 bytes"[..]));
    // Reply bytes that happen to look like a mailbox's set-up answer (its
    // tag and magic) are the reply all the same.
    let lookalike = b"CDA2 is how this reply starts";
    let reply =
        copydata::os::windows::send_to_window(Some(&class), None, 0x4344_4132, lookalike, Duration::from_secs(30))
            .unwrap();
    assert_eq!((reply.code, &reply.data[..]), (1000 + 0x4344_4132, &lookalike[..]));
    assert!(matches!(
        copydata::os::windows::send_to_window(Some("NoSuchClassAnywhere"), None, 0, b"", Duration::from_secs(1)),
        Err(SendError::NoSuchMailbox { .. })
    ));
    let _ = copydata::os::windows::send_to_window(Some(&class), None, 999, b"", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the C peer did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Malformed envelopes (from a window of copydata's sender class, so they are
/// parsed as envelopes) are dropped, also ones naming bogus handles, and the
/// mailbox goes on serving.
#[cfg(windows)]
#[test]
fn malformed_envelopes_are_dropped_and_serving_goes_on() {
    let name = unique("envelopes");
    let kid = server(&name, 0);
    let class = format!("copydata.mailbox.{name}");
    let envelope = |flags: u32, payload_len: u64, handle: u64, sections: u32| {
        let mut e = b"CDW1".to_vec();
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&1u64.to_le_bytes());
        e.extend_from_slice(&payload_len.to_le_bytes());
        e.extend_from_slice(&handle.to_le_bytes());
        e.extend_from_slice(&sections.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e
    };
    let mut bogus_section = envelope(0, 0, 0, 1);
    for v in [4u64, 4096, 0, 0] {
        bogus_section.extend_from_slice(&v.to_le_bytes()[..if v == 0 { 4 } else { 8 }]);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"CDW1\x01".to_vec()),
        ("unknown flags", envelope(0x80, 0, 0, 0)),
        ("too many sections", envelope(0, 0, 0, 500)),
        ("length mismatch", envelope(0, 100, 0, 0)),
        ("bogus payload handle", envelope(1, 1 << 20, 4, 0)),
        ("bogus section handle", bogus_section),
    ];
    for (what, bytes) in cases {
        let reply = copydata::os::windows::send_to_window(Some(&class), None, 0, &bytes, Duration::from_secs(30));
        let reply = reply.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((reply.code, reply.data.len()), (0, 0), "{what}: dropped without a reply");
    }
    check_echo(&copydata::send(&name, 0, b"still serving").unwrap(), b"still serving");
    stop_server(kid, &name);
}

/// Issue: thousands of idle connections made the receiver run a thread
/// each, without limit. Connections cost no threads, and beyond
/// `max_connections` a sender is refused as busy, with a clear reason,
/// while the connected ones go on.
#[test]
fn connections_are_capped_and_cost_no_threads() {
    let name = unique("cap");
    let server = Mailbox::bind_with(&name, &MailboxOptions::new().max_connections(8))
        .unwrap()
        .serve(|msg| Reply::code(msg.tag() as i64));
    let mut senders: Vec<Sender> = (0..8).map(|_| Sender::connect(&name).unwrap()).collect();
    match Sender::connect(&name) {
        Err(e @ SendError::Busy { .. }) => {
            assert!(e.to_string().contains("it already has 8 connections, its limit"), "{e}");
            assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::ResourceBusy);
        }
        other => panic!("a ninth connection: {other:?}"),
    }
    for (i, s) in senders.iter_mut().enumerate() {
        assert_eq!(s.send(i as u64, b"still served").unwrap().code, i as i64);
    }
    // A sender that leaves makes room (once the receiver has noticed).
    drop(senders.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        match Sender::connect(&name) {
            Ok(s) => break s,
            Err(SendError::Busy { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no room after a sender left: {e}"),
        }
    };
    assert_eq!(again.send(42, b"").unwrap().code, 42);
    drop(server);
}

#[cfg(target_os = "linux")]
#[test]
fn hundreds_of_connections_run_on_a_few_threads() {
    let name = unique("threads");
    let mut kid = Kid::spawn("serve", &[&name]);
    let pid = kid.expect("ready");
    let mut senders: Vec<Sender> = (0..300).map(|_| Sender::connect(&name).unwrap()).collect();
    for s in senders.iter_mut().step_by(37) {
        s.send(5, b"x").unwrap();
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads: usize = status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap();
    assert!(threads <= 8, "the receiver runs {threads} threads for 300 connections");
    drop(senders);
    stop_server(kid, &name);
}

/// Issue: a sender that pipelines requests and never reads its replies
/// filled its socket, the handler thread blocked writing to it, and every
/// other sender timed out. Replies go into the connection's reply ring now;
/// when it is full, that connection is dropped and nobody else waits.
#[cfg(target_os = "linux")]
#[test]
fn a_sender_that_never_reads_its_replies_holds_up_nobody() {
    use raw::{CALL, Raw, assert_dropped};
    let name = unique("pipeline");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let hostile = Raw::set_up(&path);
    // 3,000 calls back to back (one 64-byte line each): their replies need
    // three times the reply ring.
    for i in 0..3000usize {
        hostile.put(i * 64, (i * 64 + 1) as u64, CALL, 0, 0, 0, &[]);
    }
    hostile.ring();
    let mut good = Sender::connect(&name).unwrap();
    let started = Instant::now();
    for n in 0..200u64 {
        let data = pattern(64, n);
        check_echo(&good.send_timeout(0, &data, Duration::from_secs(10)).unwrap(), &data);
    }
    assert!(started.elapsed() < Duration::from_secs(20), "the good sender waited {:?}", started.elapsed());
    assert_dropped(&hostile.sock, "a sender that never reads its replies");
    stop_server(kid, &name);
}

/// The abstract address where a mailbox of user OWNER that accepts other
/// users listens (sys/linux/mailbox/runtime.rs: FNV-1a of the name, two
/// bases).
#[cfg(target_os = "linux")]
fn shared_address(owner: u32, name: &str) -> String {
    let fnv = |basis: u64| name.bytes().fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("copydata/{owner}/m-{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}

/// Issue (finding 1): mailboxes get an explicit opt-in for other users.
/// Their way in is an abstract socket anyone could bind first, so a sender
/// checks that the listener runs as the owner it asked for; and a mailbox
/// that lets other users in still refuses the ones it did not name.
#[cfg(target_os = "linux")]
#[test]
fn other_users_come_in_only_by_invitation_and_only_to_the_real_owner() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let me = rustix::process::getuid().as_raw();
    // A squatter (this process) holds the address of uid 65534's mailbox.
    let name = unique("squat-shared");
    let addr = SocketAddr::from_abstract_name(shared_address(65534, &name).as_bytes()).unwrap();
    let _squatter = UnixListener::bind_addr(&addr).unwrap();
    match Sender::connect_with(&name, &copydata::SenderOptions::new().owner(65534)) {
        Err(SendError::Refused { reason, .. }) => assert!(reason.contains(&format!("held by uid {me}")), "{reason}"),
        other => panic!("a sender talked to a squatter: {other:?}"),
    }
    // A mailbox that lets uid 12345 in: reachable by its owner's address,
    // and its own user still gets in that way too.
    let name = unique("invite");
    let server = Mailbox::bind_with(&name, &MailboxOptions::new().allow_uid(12345))
        .unwrap()
        .serve(|msg| Reply::code(i64::from(msg.sender().uid.unwrap_or(u32::MAX))));
    let mut s = Sender::connect_with(&name, &copydata::SenderOptions::new().owner(me)).unwrap();
    assert_eq!(s.send(1, b"").unwrap().code, i64::from(me));
    // Another user's mailbox that does not exist.
    assert!(matches!(
        Sender::connect_with(&unique("nobodys"), &copydata::SenderOptions::new().owner(65534)),
        Err(SendError::NoSuchMailbox { .. })
    ));
    // The same name bound twice with other users allowed: the second bind
    // fails (the name is held), not the address.
    assert!(Mailbox::bind_with(&name, &MailboxOptions::new().allow_uid(12345)).is_err());
    drop(server);
    // A squatter on this user's own address: the bind fails, and leaves
    // none of the name's files behind.
    let name = unique("squat-mine");
    let addr = SocketAddr::from_abstract_name(shared_address(me, &name).as_bytes()).unwrap();
    let squatter = UnixListener::bind_addr(&addr).unwrap();
    let err = Mailbox::bind_with(&name, &MailboxOptions::new().allow_uid(12345)).unwrap_err();
    assert!(err.to_string().contains("taken by another process"), "{err}");
    let socket = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    assert!(!socket.exists(), "{} left behind", socket.display());
    let lock = socket.with_file_name(format!("{name}.mailbox"));
    assert!(!lock.exists(), "{} left behind", lock.display());
    drop(squatter);
}

#[test]
fn the_longest_timeouts_mean_for_ever() {
    let name = unique("forever");
    let kid = server(&name, 0);
    let max = Duration::MAX;
    let mut sender = Sender::connect_timeout(&name, max).unwrap();
    check_echo(&sender.send_timeout(0, b"one", max).unwrap(), b"one");
    sender.post_timeout(0, b"two", max).unwrap();
    let mut loan = sender.loan(64).unwrap();
    loan.write_at(0, b"three").unwrap();
    assert!(loan.send_timeout(0, max).is_ok());
    let options = copydata::SenderOptions::new().connect_timeout(max);
    check_echo(&Sender::connect_with(&name, &options).unwrap().send(0, b"four").unwrap(), b"four");
    check_echo(&copydata::send_timeout(&name, 0, b"five", max).unwrap(), b"five");
    stop_server(kid, &name);
    // A receiver that waits for ever on a mailbox, woken by a message.
    let mailbox = copydata::Mailbox::bind(&unique("forever-recv")).unwrap();
    let to = mailbox.name().to_string();
    let sent = std::thread::spawn(move || copydata::send(&to, 7, b"").map(|r| r.code));
    let request = mailbox.recv_timeout(max).unwrap();
    assert_eq!(request.tag(), 7);
    request.reply(Reply::code(7)).unwrap();
    assert_eq!(sent.join().unwrap().unwrap(), 7);
}

/// A sender that floods the request ring with buffer retirements (more
/// than it has buffers) is dropped: it cannot hold the handler thread in
/// one take while the other senders wait.
#[cfg(target_os = "linux")]
#[test]
fn a_flood_of_retirements_drops_the_connection() {
    use std::io::Read;

    use raw::{RETIRE, Raw};

    let name = unique("retire");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let mut honest = Sender::connect(&name).unwrap();
    let mut raw = Raw::set_up(&path);
    // Twice the 64 slots is still taken as retirements; one more is not.
    // Written last to first, so the receiver finds them all at once.
    for k in (0..2 * 64 + 1).rev() {
        raw.put(k * 64, k as u64 * 64 + 1, RETIRE, 0, 0, 0, &[]);
    }
    raw.ring();
    let mut buf = [0u8; 64];
    assert_eq!(raw.sock.read(&mut buf).unwrap(), 0, "the flooding sender was not hung up on");
    check_echo(&honest.send_timeout(0, b"still served", Duration::from_secs(30)).unwrap(), b"still served");
    stop_server(kid, &name);
}

/// A receiver that answers with a reply too large to copy (a one-shot
/// section of 1 TiB, sparse) makes the call fail; the sender does not
/// abort on the allocation: past its reply limit (the default, 4 GiB)
/// before mapping anything, and without a limit when the copy's memory
/// cannot be had.
#[cfg(target_os = "linux")]
#[test]
fn a_reply_too_large_to_copy_fails_the_call_not_the_sender() {
    let limited = huge_reply_to(&[]);
    assert!(limited.contains("above this sender's limit of 4294967296"), "{limited}");
    let unlimited = huge_reply_to(&["unlimited"]);
    assert!(unlimited.contains("no memory for a payload of 1099511627776 bytes"), "{unlimited}");
}

/// Answers a `send-once` child (with `args` after the name) with a reply
/// of 1 TiB in a sparse one-shot section; returns what the child said of
/// its call.
#[cfg(target_os = "linux")]
fn huge_reply_to(args: &[&str]) -> String {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::Ordering;

    use raw::{
        BELLS_LEN, BUF_NEW, F_AUX, F_BUF, Map, REGION_LEN, REP_CAP, REP_DATA, REPLY, REQ_CAP, REQ_DATA, frame,
        recv_frame, sealed_memfd, send_welcome,
    };
    use rustix::fs::{MemfdFlags, SealFlags};

    let name = unique("hugereply");
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&path).unwrap();
    let mut kid = Kid::spawn("send-once", &[&[name.as_str()], args].concat());
    let (sock, _) = listener.accept().unwrap();
    std::fs::remove_file(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    recv_frame(&sock).expect("a hello");
    let (region_fd, bells_fd) = (sealed_memfd(REGION_LEN), sealed_memfd(BELLS_LEN));
    let (_notify_mine, notify_fd) = raw::readiness_pair();
    let region = Map::new(&region_fd);
    let mut head = b"CDREGN02".to_vec();
    for v in [raw::PROTOCOL as u32, REQ_CAP as u32, REP_CAP as u32, 64] {
        head.extend_from_slice(&v.to_ne_bytes());
    }
    region.write(0, &head);
    send_welcome(&sock, &[region_fd.as_fd(), bells_fd.as_fd(), notify_fd.as_fd()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while region.u64_at(REQ_DATA).load(Ordering::Acquire) != 1 {
        assert!(Instant::now() < deadline, "no call within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The reply's new buffer: 1 TiB, sealed against shrinking and growing.
    let size: u64 = 1 << 40;
    let buf = rustix::fs::memfd_create("huge", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&buf, size).unwrap();
    rustix::fs::fcntl_add_seals(&buf, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    raw::send_with_fd(&sock, &frame(b"CDX2", 1, 0, 0, size, 0), buf.as_fd());
    // A reply record: an empty attachment (for the section's handle), then
    // the buffer reference (a one-shot section: slot u32::MAX, flags new and
    // one-shot, use 1), the payload's length 1 TiB. The section is not
    // sealed against writing, so the sender copies it out.
    let mut rec = Vec::new();
    rec.extend_from_slice(&REPLY.to_ne_bytes());
    rec.extend_from_slice(&(((F_AUX | F_BUF) << 24) | 24).to_ne_bytes());
    rec.extend_from_slice(&size.to_ne_bytes());
    rec.extend_from_slice(&0u64.to_ne_bytes());
    rec.extend_from_slice(&[0u8; 8]);
    rec.extend_from_slice(&u32::MAX.to_ne_bytes());
    rec.extend_from_slice(&(BUF_NEW | 4).to_ne_bytes());
    rec.extend_from_slice(&1u64.to_ne_bytes());
    region.write(REP_DATA + 8, &rec);
    region.u64_at(REP_DATA).store(1, Ordering::Release);
    let result = kid.expect("result");
    kid.wait_ok();
    drop(sock);
    result
}

/// An attachment that announces no bytes of section records and then
/// trickles them in, a byte at a time, is refused at once: the handler
/// thread does not wait for the bytes while its other senders wait.
#[cfg(target_os = "linux")]
#[test]
fn section_records_that_trickle_in_do_not_hold_the_handler() {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use raw::{CALL, F_AUX, Raw, assert_dropped, frame};

    let name = unique("trickle");
    let kid = server(&name, 0);
    let path = copydata::os::linux::mailbox_socket_path(&name).unwrap();
    let mut honest = Sender::connect(&name).unwrap();
    let raw = Raw::set_up(&path);
    let memfd = rustix::fs::memfd_create("section", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, 4096).unwrap();
    // One section, 0 bytes of records announced.
    raw::send_with_fd(&raw.sock, &frame(b"CDX2", 0, 1, 0, 0, 0), memfd.as_fd());
    // The record: an attachment of 0 bytes and 1 section.
    raw.put(0, 1, CALL, (F_AUX << 24) | 8, 0, 0, &[0, 0, 0, 0, 1, 0, 0, 0]);
    raw.ring();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = std::thread::spawn({
        let mut sock = raw.sock.try_clone().unwrap();
        let stop = stop.clone();
        move || {
            for _ in 0..20 {
                if stop.load(Ordering::SeqCst) || sock.write_all(&[0]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1500));
            }
        }
    });
    check_echo(&honest.send_timeout(0, b"not held", Duration::from_secs(5)).unwrap(), b"not held");
    assert_dropped(&raw.sock, "records that trickle in");
    stop.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    stop_server(kid, &name);
}

#[test]
fn more_sections_than_a_message_carries_are_refused_before_sending() {
    let name = unique("many-sections");
    let kid = server(&name, 0);
    let mut sender = Sender::connect(&name).unwrap();
    let section = copydata::Section::anonymous(4096).unwrap();
    let too_many = vec![&section; copydata::MAX_SECTIONS + 1];
    match sender.send_with_sections(0, b"x", &too_many, Some(Duration::from_secs(30))) {
        Err(SendError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput);
            assert!(source.to_string().contains("at most 16"), "{source}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // Nothing was sent: the connection is kept.
    assert!(sender.max_payload().is_some(), "the connection was dropped");
    check_echo(&sender.send(0, b"after").unwrap(), b"after");
    stop_server(kid, &name);
}

#[test]
fn a_reply_to_a_sender_that_is_gone_says_so() {
    let mailbox = copydata::Mailbox::bind(&unique("gone")).unwrap();
    let kid = Kid::spawn("send-once", &[mailbox.name()]);
    let request = mailbox.recv_timeout(common::WAIT).unwrap();
    kid.kill();
    // The receiver notices the hang-up within milliseconds.
    std::thread::sleep(Duration::from_secs(1));
    match request.reply(Reply::code(1)) {
        Err(copydata::ReplyError::SenderGone) => {}
        other => panic!("expected SenderGone, got {other:?}"),
    }
}

/// A sender whose mailbox has closed learns it as `ReceiverDied` whatever
/// it sends next: a small message, a large one (whose buffer goes on the
/// socket the receiver hung up), or a loan.
#[test]
fn every_kind_of_send_to_a_closed_mailbox_says_the_receiver_died() {
    let name = unique("closed-kinds");
    for kind in ["small", "large", "loan"] {
        let server = Mailbox::bind(&name).unwrap().serve(|m| Reply::code(m.tag() as i64));
        let mut sender = Sender::connect(&name).unwrap();
        assert_eq!(sender.send(1, b"warm").unwrap().code, 1);
        drop(server);
        let r = match kind {
            "small" => sender.send_timeout(2, b"x", Duration::from_secs(10)),
            "large" => sender.send_timeout(2, &vec![7u8; 100_000], Duration::from_secs(10)),
            _ => sender.loan(100).and_then(|l| l.send_timeout(2, Duration::from_secs(10))),
        };
        assert!(matches!(r, Err(SendError::ReceiverDied { .. })), "{kind}: {r:?}");
    }
}

/// A message taken before its mailbox was dropped can still be answered:
/// its sender waits for the reply and gets it, and the connection ends
/// then (a second reply to the same message is no message to answer);
/// a sender with nothing in progress is told at once that the receiver
/// is gone.
#[test]
fn a_message_taken_before_the_mailbox_closed_is_still_answered() {
    let mailbox = copydata::Mailbox::bind(&unique("closed")).unwrap();
    let mut kid = Kid::spawn("send-once", &[mailbox.name()]);
    let mut idle = Sender::connect(mailbox.name()).unwrap();
    let request = mailbox.recv_timeout(common::WAIT).unwrap();
    drop(mailbox);
    let started = Instant::now();
    assert!(matches!(idle.send_timeout(0, b"x", Duration::from_secs(20)), Err(SendError::ReceiverDied { .. })));
    assert!(started.elapsed() < Duration::from_secs(10), "the idle sender waited {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(200));
    request.reply(Reply::code(1)).unwrap();
    assert_eq!(kid.expect("result"), "ok 1");
    kid.wait_ok();
}

/// A thread that pumped no window messages for longer than Windows' 5 s
/// "not responding" threshold (busy, or asleep) still sets up connections:
/// the mailbox's answer to its hello used to be refused as sent to a hung
/// window.
#[cfg(windows)]
#[test]
fn a_thread_busy_for_seconds_still_connects() {
    let name = unique("busy");
    let kid = server(&name, 0);
    check_echo(&copydata::send(&name, 0, b"one").unwrap(), b"one");
    std::thread::sleep(Duration::from_secs(6));
    check_echo(&copydata::send(&name, 0, b"two").unwrap(), b"two");
    stop_server(kid, &name);
}

/// A handler that lends a large reply buffer and drops it unsent, then
/// answers with less: the buffer the sender is handed is sized for that
/// answer, within the sender's `max_reply` (a buffer sized for the dropped
/// loan would exceed it, and be refused).
#[test]
fn a_dropped_reply_loan_does_not_oversize_later_replies() {
    let name = unique("loan-dropped");
    let mailbox = Mailbox::bind(&name).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let request = mailbox.recv_timeout(Duration::from_secs(30)).unwrap();
            drop(request.loan_reply(8 << 20).unwrap());
            request.reply(Reply::new(0, vec![5u8; 500 << 10])).unwrap();
        }
    });
    let mut sender = Sender::connect_with(&name, &copydata::SenderOptions::new().max_reply(1 << 20)).unwrap();
    for tag in 1..=2 {
        let reply = sender.send_timeout(tag, b"x", Duration::from_secs(30)).unwrap();
        assert_eq!(reply.data.len(), 500 << 10);
    }
    server.join().unwrap();
}

/// While this user has more descriptors in flight than the
/// receiver's limit (ETOOMANYREFS for a moment, as in
/// `sections_beyond_the_kernels_in_flight_limit_wait_for_room`), a sender
/// connecting waits for room as sends with sections now do, and once the
/// descriptors are taken it is served; it is not told that the receiver
/// is an incompatible one.
#[cfg(target_os = "linux")]
#[test]
fn a_set_up_while_descriptors_are_in_flight_waits_for_room() {
    use std::os::fd::AsFd;
    let name = unique("refs-setup");
    let mut kid = Kid::spawn("serve-refs-limited", &[&name]);
    kid.expect("ready");
    // More than 64 descriptors of this user in flight, on a socket nobody
    // reads yet.
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let memfd = rustix::fs::memfd_create("refs", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    for _ in 0..10 {
        let fds = [memfd.as_fd(); 10];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(10))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(&a, &[std::io::IoSlice::new(b"x")], &mut control, rustix::net::SendFlags::empty())
            .unwrap();
    }
    // Taken out of flight a moment later.
    let drain = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(b);
    });
    let result = copydata::send_timeout(&name, 5, b"x", Duration::from_secs(20));
    drain.join().unwrap();
    drop(a);
    kid.tell("end");
    kid.wait_ok();
    match result {
        Ok(reply) => assert_eq!(reply.code, 5),
        Err(e) => panic!("a set-up under the in-flight limit failed: {e} ({e:?})"),
    }
}

/// A sender in a pid namespace of its own (a container, a sandbox)
/// cannot name a receiver outside it: the kernel says pid 0 there, which
/// is no process id (`kill(0, ..)` is this process's whole group) and
/// must not be reported as the receiver's.
#[cfg(target_os = "linux")]
#[test]
fn a_receiver_outside_the_senders_pid_namespace_has_no_pid() {
    use std::io::BufRead;
    if !std::process::Command::new("unshare").args(["-p", "-f", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("unshare -p is not allowed here: skipped");
        return;
    }
    let name = unique("pidns");
    let kid = server(&name, 0);
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["-p", "-f", "--kill-child"])
        .arg(exe)
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("COPYDATA_TEST_ROLE", "print-receiver-pid")
        .env("COPYDATA_TEST_ARGS", &name)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    stop_server(kid, &name);
    let line = out.stdout.lines().map_while(Result::ok).find(|l| l.starts_with("@pid ")).unwrap_or_default();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("sender in its own pid namespace says: {line}");
    assert_eq!(line, "@pid None", "pid 0 reported as the receiver's");
}

/// A sender's thread held up while the mailbox answers its hello (here
/// busy in a sent message of its own until the mailbox's wait for the
/// answer has ended): the set-up is made on both sides or on neither, and
/// the sender's first call is answered. The set-up used to fail ("the
/// mailbox did not answer"), or succeed on the sender's side only, whose
/// first call then failed with "receiver gone".
#[cfg(windows)]
#[test]
fn a_sender_held_up_while_its_answer_waits_still_connects() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
    use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        CreateWindowExW, DefWindowProcW, DestroyWindow, HWND_MESSAGE, RegisterClassW, SendNotifyMessageW, WM_USER,
        WNDCLASSW,
    };

    static RELEASED: AtomicBool = AtomicBool::new(false);
    /// Holds its thread on `WM_USER` until released (30 s at most). Sent
    /// from another thread, the message is handled inside whatever wait
    /// for a reply its thread is in (the sender's hello), before the sent
    /// messages that come after it (the mailbox's answer).
    unsafe extern "system" fn hold(hwnd: HWND, msg: u32, wparam: WPARAM, lparam: LPARAM) -> LRESULT {
        if msg == WM_USER {
            let until = Instant::now() + Duration::from_secs(30);
            while !RELEASED.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            return 0;
        }
        // SAFETY: default handling of every other message.
        unsafe { DefWindowProcW(hwnd, msg, wparam, lparam) }
    }

    let name = unique("held-up");
    // Tag 1 is answered after 1.5 s: a plain WM_COPYDATA with it holds the
    // mailbox's thread (which waits for the handler's answer to it), so the
    // hello queues up behind it.
    let mut kid = Kid::spawn("serve", &[&name, "1500", "tell"]);
    kid.expect("ready");
    let class = format!("copydata.mailbox.{name}");
    let plain = |tag: u64| {
        let class = class.clone();
        std::thread::spawn(move || {
            copydata::os::windows::send_to_window(Some(&class), None, tag, b"plain", Duration::from_secs(30))
        })
    };
    let stall = plain(1);
    kid.expect("held");
    let (window_tx, window_rx) = std::sync::mpsc::channel();
    let sender = {
        let name = name.clone();
        std::thread::spawn(move || -> Result<i64, SendError> {
            let class: Vec<u16> = "copydata.test.hold\0".encode_utf16().collect();
            // SAFETY: a class of this test's window procedure, registered
            // once; a message-only window of it on this thread, destroyed
            // below. The class name outlives the calls.
            let window = unsafe {
                let mut wc: WNDCLASSW = std::mem::zeroed();
                wc.lpfnWndProc = Some(hold);
                wc.hInstance = GetModuleHandleW(std::ptr::null());
                wc.lpszClassName = class.as_ptr();
                RegisterClassW(&wc);
                let empty = [0u16];
                let null = std::ptr::null_mut();
                let module = wc.hInstance;
                CreateWindowExW(0, class.as_ptr(), empty.as_ptr(), 0, 0, 0, 0, 0, HWND_MESSAGE, null, module, null)
            };
            assert!(!window.is_null(), "{}", std::io::Error::last_os_error());
            window_tx.send(window as usize).unwrap();
            let first =
                Sender::connect_timeout(&name, Duration::from_secs(30)).and_then(|mut s| s.send(5, b"first call"));
            // SAFETY: this thread's own window.
            unsafe { DestroyWindow(window) };
            Ok(first?.code)
        })
    };
    let window = window_rx.recv().unwrap() as HWND;
    // The hello is queued now (at worst not yet sent; then the thread is
    // held before it says hello, and this test shows nothing, but does
    // not fail).
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a window of the sender's thread, alive until its first call
    // is answered; a message without pointers.
    assert_ne!(unsafe { SendNotifyMessageW(window, WM_USER, 0, 0) }, 0, "{}", std::io::Error::last_os_error());
    // Queued behind the hello: handled once the mailbox is done with it
    // (its answer to the held thread given up after half a second).
    let behind = plain(5);
    let watchdog = Instant::now() + Duration::from_secs(30);
    while !behind.is_finished() && Instant::now() < watchdog {
        std::thread::sleep(Duration::from_millis(10));
    }
    RELEASED.store(true, Ordering::Release);
    assert!(behind.join().unwrap().is_ok());
    assert!(stall.join().unwrap().is_ok());
    let first = sender.join().unwrap();
    assert!(matches!(first, Ok(code) if code != 0), "the first call of the held-up sender: {first:?}");
    stop_server(kid, &name);
}

/// A set-up that times out while the mailbox's thread is held up fails
/// with `TimedOut` within its timeout, and its hello, answered once the
/// mailbox gets to it, sets nothing up: a mailbox of one connection takes
/// the same thread's next set-up.
#[cfg(windows)]
#[test]
fn a_set_up_that_timed_out_leaves_nothing_to_fail_later() {
    let name = unique("timed-out");
    let options = MailboxOptions::new().max_connections(1);
    let (held_tx, held) = std::sync::mpsc::channel();
    let server = Mailbox::bind_with(&name, &options).unwrap().serve(move |m| {
        if m.tag() == 1 {
            let _ = held_tx.send(());
            std::thread::sleep(Duration::from_millis(1500));
        }
        Reply::code(m.tag() as i64)
    });
    let class = format!("copydata.mailbox.{name}");
    let stall = std::thread::spawn(move || {
        copydata::os::windows::send_to_window(Some(&class), None, 1, b"plain", Duration::from_secs(30))
    });
    // The mailbox's thread waits for the handler's answer from now on.
    held.recv_timeout(Duration::from_secs(30)).expect("the handler got the plain message");
    let started = Instant::now();
    let first = Sender::connect_timeout(&name, Duration::from_millis(300));
    let took = started.elapsed();
    let connecting = matches!(first, Err(SendError::TimedOut { stage: TimeoutStage::Connecting, .. }));
    assert!(connecting, "{:?}", first.map(|_| ()));
    assert!(took < Duration::from_secs(5), "connect_timeout(300 ms) returned after {took:?}");
    let mut sender = Sender::connect_timeout(&name, Duration::from_secs(30)).expect("the next set-up");
    assert_eq!(sender.send(6, b"next").unwrap().code, 6);
    assert!(stall.join().unwrap().is_ok());
    drop(sender);
    drop(server);
}

/// A plain `WM_COPYDATA` (`send_to_window`) that times out says it waited
/// for the reply: `SendMessageTimeoutW` does not tell whether the window's
/// thread took the message, so it may have been (or still be) handled.
/// (Whether a message still queued when the time ran out is delivered
/// later is up to the system: Wine drops it.)
#[cfg(windows)]
#[test]
fn a_plain_send_that_times_out_says_it_waited_for_the_reply() {
    let name = unique("plain-stage");
    let (held_tx, held) = std::sync::mpsc::channel();
    let server = Mailbox::bind(&name).unwrap().serve(move |m| {
        if m.tag() == 1 {
            let _ = held_tx.send(());
            std::thread::sleep(Duration::from_millis(1500));
        }
        Reply::code(m.tag() as i64)
    });
    let class = format!("copydata.mailbox.{name}");
    let stall = std::thread::spawn({
        let class = class.clone();
        move || copydata::os::windows::send_to_window(Some(&class), None, 1, b"held", Duration::from_secs(30))
    });
    // The mailbox's thread waits for the handler's answer from now on.
    held.recv_timeout(Duration::from_secs(30)).expect("the handler got the first message");
    let t = Duration::from_millis(300);
    let err = copydata::os::windows::send_to_window(Some(&class), None, 2, b"late", t).unwrap_err();
    match &err {
        SendError::TimedOut { timeout, stage, .. } => assert_eq!((*timeout, *stage), (t, TimeoutStage::Reply), "{err}"),
        other => panic!("a plain send to a held window: {other:?}"),
    }
    assert!(err.timeout_stage().is_some_and(TimeoutStage::message_sent), "{err}");
    assert!(err.to_string().contains("waiting for the reply of mailbox"), "{err}");
    assert!(stall.join().unwrap().is_ok());
    drop(server);
}

/// A process that forks without exec shares its descriptors, and the
/// memory they map, with the child: the child dropping its copies of a
/// mailbox, a connected sender or a request in hand (as an interpreter
/// ending a forked child normally does) must leave the parent's mailbox,
/// connection and call alone. The copy of a served mailbox used to abort
/// the child (joining threads it does not have) and remove the parent's
/// name; a dropped request was refused for the parent.
#[cfg(target_os = "linux")]
#[test]
fn a_forked_copy_dropping_a_mailbox_a_sender_or_a_request_leaves_the_parents_alone() {
    let name = unique("fork");
    let mut kid = Kid::spawn("fork-drop", &[&name]);
    let (ended, after, held) = (kid.expect("forked"), kid.expect("after"), kid.expect("held"));
    // How the forked copy ended; the parent's old connection and a new one;
    // how the copy that dropped a request ended, and the caller's reply.
    assert_eq!((ended.as_str(), after.as_str(), held.as_str()), ("exited 0", "Ok(2) Ok(3)", "exited 0 Ok(44)"));
    kid.wait_ok();
}
