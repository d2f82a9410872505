//! Typed messages (feature `serde`) across real processes, on Linux and
//! (from the same sources) Windows under Wine.

mod common;

use std::time::Duration;

use common::{Kid, hear, pattern, say, unique};
use copydata::typed::{TAG, TypedRecvError, TypedReply, TypedSendError, TypedSender};
use copydata::{Mailbox, Section, SendError, Sender};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Ask {
    Echo(String),
    Add(Vec<i64>),
    /// Posted: counted, no reply.
    Note(u32),
    /// How many notes arrived, and their sum.
    Notes,
    /// The checksum of `len` bytes of the message's section `section`.
    Frame(Frame),
    Quit,
    /// A request inside a request (a recursive type): answered as the
    /// innermost one.
    Nest(Box<Ask>),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Frame {
    section: usize,
    len: usize,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Answer {
    Echo(String),
    Sum(i64),
    Notes { count: u32, sum: u64 },
    Frame { sum: u64, sections: usize },
    NoSuchSection(usize),
    Bye,
}

#[test]
fn child_entry() {
    common::child_main(role);
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn sum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// What both kinds of child answer (the reply code is the request's kind).
fn answer(ask: &Ask, message: &copydata::Message, notes: &std::sync::Mutex<(u32, u64)>) -> TypedReply<Answer> {
    match ask {
        Ask::Echo(s) => TypedReply::new(1, Answer::Echo(s.clone())),
        Ask::Add(v) => TypedReply::new(2, Answer::Sum(v.iter().sum())),
        Ask::Note(n) => {
            let mut notes = notes.lock().unwrap();
            notes.0 += 1;
            notes.1 += u64::from(*n);
            TypedReply::new(3, Answer::Bye)
        }
        Ask::Notes => {
            let (count, sum) = *notes.lock().unwrap();
            TypedReply::new(4, Answer::Notes { count, sum })
        }
        Ask::Frame(f) => match message.sections().get(f.section).and_then(|s| s.map(0, f.len).ok()) {
            Some(view) => {
                TypedReply::new(5, Answer::Frame { sum: sum(&view.to_vec()), sections: message.sections().len() })
            }
            None => TypedReply::new(-1, Answer::NoSuchSection(f.section)),
        },
        Ask::Quit => TypedReply::new(6, Answer::Bye),
        Ask::Nest(inner) => answer(inner, message, notes),
    }
}

fn role(role: &str, args: &[String]) -> Result<(), String> {
    match role {
        // Serves `args[0]` with a typed handler until told to stop on stdin.
        "serve" => {
            let notes = std::sync::Mutex::new((0, 0));
            let server =
                Mailbox::bind(&args[0]).map_err(fail)?.serve_typed(move |ask, message| answer(&ask, message, &notes));
            say("ready", "");
            hear();
            drop(server);
            Ok(())
        }
        // Receives typed requests one at a time from `args[0]`, saying which
        // ones it refused, until `Ask::Quit`.
        "recv" => {
            let mailbox = Mailbox::bind(&args[0]).map_err(fail)?;
            let notes = std::sync::Mutex::new((0, 0));
            say("ready", "");
            loop {
                match mailbox.recv_typed_timeout::<Ask>(common::WAIT) {
                    Ok(request) => {
                        let quit = *request.value() == Ask::Quit;
                        let reply = answer(request.value(), &request, &notes);
                        request.reply(reply).map_err(fail)?;
                        if quit {
                            return Ok(());
                        }
                    }
                    Err(TypedRecvError::NotTyped { tag, sender }) => {
                        say("refused", &format!("tag {tag} {}", sender.pid))
                    }
                    Err(TypedRecvError::Decode { sender, source }) => {
                        say("refused", &format!("decode {} {source}", sender.pid))
                    }
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        other => Err(format!("unknown role {other}")),
    }
}

/// The reason of a refusal, or a panic.
fn refused(r: Result<impl std::fmt::Debug, SendError>) -> String {
    match r {
        Err(SendError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn typed_refused<T: std::fmt::Debug>(r: Result<T, TypedSendError>) -> String {
    match r {
        Err(TypedSendError::Send(e)) => refused(Err::<(), _>(e)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn typed_requests_and_replies_cross_processes() {
    let name = unique("typed-trip");
    let mut kid = Kid::spawn("serve", &[&name]);
    kid.expect("ready");
    let mut sender = TypedSender::<Ask, Answer>::connect(&name).unwrap();
    let text = "héllo, мир, \u{1f600}".repeat(100);
    let reply = sender.send_timeout(&Ask::Echo(text.clone()), T).unwrap();
    assert_eq!((reply.code, reply.value), (1, Answer::Echo(text)));
    let reply = sender.send(&Ask::Add(vec![1, -2, 3_000_000_000, i64::MIN / 2])).unwrap();
    assert_eq!((reply.code, reply.value), (2, Answer::Sum(1 - 2 + 3_000_000_000 + i64::MIN / 2)));
    // A large value travels too (through the connection's buffers).
    let big: Vec<i64> = (0..200_000).collect();
    let reply = sender.send_timeout(&Ask::Add(big.clone()), T).unwrap();
    assert_eq!(reply.value, Answer::Sum(big.iter().sum()));
    // Posts arrive in order before the next send is answered.
    for n in 1..=10 {
        if n % 2 == 0 {
            sender.post_timeout(&Ask::Note(n), T).unwrap();
        } else {
            sender.post(&Ask::Note(n)).unwrap();
        }
    }
    let reply = sender.send_timeout(&Ask::Notes, T).unwrap();
    assert_eq!((reply.code, reply.value), (4, Answer::Notes { count: 10, sum: 55 }));
    // A second sender with its own connection.
    let mut other: TypedSender<Ask, Answer> = Sender::connect(&name).unwrap().into();
    assert_eq!(other.send_timeout(&Ask::Quit, T).unwrap().value, Answer::Bye);
    kid.tell("stop");
    kid.wait_ok();
}

#[test]
fn garbage_is_refused_with_the_decode_failure_and_serving_goes_on() {
    let name = unique("typed-garbage");
    let mut kid = Kid::spawn("serve", &[&name]);
    kid.expect("ready");
    let mut raw = Sender::connect(&name).unwrap();
    // Bytes that are no `Ask` at all.
    let reason = refused(raw.send_timeout(TAG, &[0xff; 12], T));
    assert!(reason.starts_with("the request (12 bytes) is not a valid") && reason.contains("Ask"), "{reason}");
    // A valid `Ask` followed by more bytes.
    let mut bytes = postcard::to_stdvec(&Ask::Notes).unwrap();
    bytes.extend_from_slice(b"junk");
    let reason = refused(raw.send_timeout(TAG, &bytes, T));
    assert!(reason.contains("4 bytes left over"), "{reason}");
    // An empty payload.
    let reason = refused(raw.send_timeout(TAG, b"", T));
    assert!(reason.contains("(0 bytes) is not a valid"), "{reason}");
    // Not tagged as a typed message.
    let reason = refused(raw.send_timeout(7, &postcard::to_stdvec(&Ask::Notes).unwrap(), T));
    assert_eq!(reason, "tag 0x7 is not the typed-message tag");
    // A value of another type.
    let mut wrong = TypedSender::<(u64, String), Answer>::new(raw);
    let reason = typed_refused(wrong.send_timeout(&(99, "x".into()), T));
    assert!(reason.contains("is not a valid"), "{reason}");
    // A value nested deeper than any stack holds (one byte a level, the
    // `Nest` variant's number): refused, not a crash; a few levels are fine.
    let nest = postcard::to_stdvec(&Ask::Nest(Box::new(Ask::Notes))).unwrap()[0];
    let mut deep = vec![nest; 200_000];
    deep.extend(postcard::to_stdvec(&Ask::Notes).unwrap());
    let reason = refused(wrong.get_mut().send_timeout(TAG, &deep, T));
    assert!(reason.ends_with("nests deeper than 128 levels"), "{reason}");
    let shallow = Ask::Nest(Box::new(Ask::Nest(Box::new(Ask::Echo("nested".into())))));
    let reply = wrong.get_mut().send_timeout(TAG, &postcard::to_stdvec(&shallow).unwrap(), T).unwrap();
    assert_eq!(reply.code, 1);
    // Posted garbage is dropped (and logged) by the receiver; nothing counts it.
    let mut raw = wrong.into_inner();
    raw.post(TAG, &[0xff; 3]).unwrap();
    // The same connection, and the mailbox, go on serving good messages.
    let mut sender = TypedSender::<Ask, Answer>::new(raw);
    sender.post(&Ask::Note(5)).unwrap();
    let reply = sender.send_timeout(&Ask::Notes, T).unwrap();
    assert_eq!(reply.value, Answer::Notes { count: 1, sum: 5 });
    let reply = sender.send_timeout(&Ask::Echo("still here".into()), T).unwrap();
    assert_eq!(reply.value, Answer::Echo("still here".into()));
    kid.tell("stop");
    kid.wait_ok();
}

#[test]
fn a_reply_of_another_type_is_a_decode_error() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct NotAnAnswer(u64, u64, String);
    let name = unique("typed-mismatch");
    let mut kid = Kid::spawn("serve", &[&name]);
    kid.expect("ready");
    let mut sender = TypedSender::<Ask, NotAnAnswer>::connect(&name).unwrap();
    match sender.send_timeout(&Ask::Echo("hi".into()), T) {
        Err(TypedSendError::Decode { name: n, code, source }) => {
            assert_eq!((n.as_str(), code), (name.as_str(), 1));
            assert!(source.type_name().ends_with("NotAnAnswer"), "{source}");
            assert!(source.to_string().starts_with("the reply (4 bytes) is not a valid"), "{source}");
            assert!(std::error::Error::source(&source).is_some(), "postcard's error is the source");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // Bytes left over are a mismatch too: `Answer::Sum(5)` is not a bare `u8`.
    let mut small = TypedSender::<Ask, u8>::new(sender.into_inner());
    match small.send_timeout(&Ask::Add(vec![5]), T) {
        Err(TypedSendError::Decode { code: 2, source, .. }) => {
            assert!(source.to_string().contains("1 bytes left over"), "{source}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // The connection is still fine for the right type.
    let mut sender = TypedSender::<Ask, Answer>::new(small.into_inner());
    assert_eq!(sender.send_timeout(&Ask::Add(vec![5]), T).unwrap().value, Answer::Sum(5));
    kid.tell("stop");
    kid.wait_ok();
}

#[test]
fn a_typed_message_refers_to_its_sections_by_index() {
    let name = unique("typed-section");
    let mut kid = Kid::spawn("serve", &[&name]);
    kid.expect("ready");
    let len = 3 * 1024 * 1024 + 5;
    let data = pattern(len, 42);
    let first = Section::anonymous(16).unwrap();
    let pixels = Section::anonymous(len as u64).unwrap();
    pixels.map_mut(0, len).unwrap().write_at(0, &data).unwrap();
    let mut sender = TypedSender::<Ask, Answer>::connect(&name).unwrap();
    let ask = Ask::Frame(Frame { section: 1, len });
    let reply = sender.send_with_sections(&ask, &[&first, &pixels], Some(T)).unwrap();
    assert_eq!((reply.code, reply.value), (5, Answer::Frame { sum: sum(&data), sections: 2 }));
    // An index past the sections sent is the handler's answer, not a panic.
    let ask = Ask::Frame(Frame { section: 2, len });
    let reply = sender.send_with_sections(&ask, &[&first, &pixels], None).unwrap();
    assert_eq!((reply.code, reply.value), (-1, Answer::NoSuchSection(2)));
    kid.tell("stop");
    kid.wait_ok();
}

#[test]
fn recv_typed_refuses_bad_messages_and_returns_the_next_good_one() {
    let name = unique("typed-recv");
    let mut kid = Kid::spawn("recv", &[&name]);
    kid.expect("ready");
    let mut raw = Sender::connect(&name).unwrap();
    let me = std::process::id();
    let reason = refused(raw.send_timeout(TAG, &[0x80; 5], T));
    assert!(reason.contains("is not a valid") && reason.contains("Ask"), "{reason}");
    let said = kid.expect("refused");
    assert!(said.starts_with(&format!("decode {me} the request (5 bytes) is not a valid")), "{said}");
    let reason = refused(raw.send_timeout(1, b"", T));
    assert!(reason.contains("tag 0x1"), "{reason}");
    assert_eq!(kid.expect("refused"), format!("tag 1 {me}"));
    // The next good message is served, on the same connection.
    let mut sender = TypedSender::<Ask, Answer>::new(raw);
    let reply = sender.send_timeout(&Ask::Echo("next".into()), T).unwrap();
    assert_eq!((reply.code, reply.value), (1, Answer::Echo("next".into())));
    sender.post(&Ask::Note(7)).unwrap();
    sender.post(&Ask::Note(8)).unwrap();
    let reply = sender.send_timeout(&Ask::Notes, T).unwrap();
    assert_eq!(reply.value, Answer::Notes { count: 2, sum: 15 });
    assert_eq!(sender.send_timeout(&Ask::Quit, T).unwrap().value, Answer::Bye);
    kid.wait_ok();
}

#[test]
fn the_typed_example_sends_values_to_its_child() {
    let Some(exe) = common::example("typed") else { return };
    let mut child = std::process::Command::new(exe).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + common::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the typed example did not finish within {:?}", common::WAIT);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{status}: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    let resize = "Resize { width: 640, height: 480 }";
    assert!(lines[0].starts_with(&format!("parent: {resize} from pid ")), "{out}");
    assert_ne!(lines[0], format!("parent: {resize} from pid {pid}"), "the sender is the child");
    assert_eq!(lines[1], format!("child: {resize} -> code 0, Area(307200)"));
    assert!(lines[2].starts_with("parent: SetTitle(\"Привет, мир\") from pid "), "{out}");
    assert_eq!(lines[3], "child: SetTitle(\"Привет, мир\") -> code 1, Title { chars: 11 }");
    // The frame in a section beside the value: 256 rounds of 0..=255.
    let frame = "Frame { section: 0, len: 65536 }";
    assert!(lines[4].starts_with(&format!("parent: {frame} from pid ")), "{out}");
    assert_eq!(lines[5], format!("child: {frame} -> code 0, FrameSum({})", 256 * (255 * 256 / 2)));
}
