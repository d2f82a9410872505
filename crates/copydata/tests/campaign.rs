//! Robustness at scale, with real processes (Linux): a `kill -9` campaign
//! and a load test. Both are ignored tests run by `scripts/campaign.sh`;
//! each prints one summary line.
//!
//! - `kill_campaign`: `COPYDATA_KILL_TRIALS` randomized trials (default
//!   1,000), each killing a sender, a receiver, a section holder, a section
//!   creator, a single-instance primary or a lock owner at a random moment,
//!   then checking that nothing hangs past its timeout, no message arrives
//!   corrupted or twice, and nothing is left in `/dev/shm` or the runtime
//!   directory once everyone is gone.
//! - `load`: `COPYDATA_LOAD_MESSAGES` messages (default 10^6) posted by 16
//!   sender processes to one mailbox: none lost or duplicated, order per
//!   sender kept, and the receiver's memory flat.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Kid, hear, say};
use copydata::instance::{InstanceOptions, SingleInstance};
use copydata::sync::Mutex;
use copydata::{Mailbox, Reply, Section, Sender};

#[test]
fn child_entry() {
    common::child_main(role);
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A message: its sequence number, a checksum of the rest, the rest.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq).wrapping_mul(31) as u8).collect();
    let mut m = seq.to_le_bytes().to_vec();
    m.extend_from_slice(&fnv(&body).to_le_bytes());
    m.extend_from_slice(&body);
    m
}

const TAG_STOP: u64 = 99;
const TAG_LOAD: u64 = 7;

fn role(role: &str, args: &[String]) -> Result<(), String> {
    let name = args.first().map(String::as_str).unwrap_or_default();
    match role {
        // Checks every message; on TAG_STOP replies corrupt * 10^6 + dups.
        // `args[1]` > 0: sleeps up to that many ms per message.
        "receiver" => {
            let slow: u64 = args[1].parse().map_err(fail)?;
            let mailbox = Mailbox::bind(name).map_err(fail)?;
            say("ready", "");
            let (mut corrupt, mut dups) = (0i64, 0i64);
            let mut seen = HashSet::new();
            let mut n = 0u64;
            loop {
                let request = mailbox.recv().map_err(fail)?;
                if request.tag() == TAG_STOP {
                    let _ = request.reply(Reply::code(corrupt * 1_000_000 + dups));
                    return Ok(());
                }
                let data = request.payload();
                if data.len() < 16 || fnv(&data[16..]) != u64::from_le_bytes(data[8..16].try_into().unwrap()) {
                    corrupt += 1;
                } else if !seen.insert((request.sender().pid, u64::from_le_bytes(data[..8].try_into().unwrap()))) {
                    dups += 1;
                }
                if slow > 0 {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    std::thread::sleep(Duration::from_millis(n % slow));
                }
                let _ = request.reply(Reply::code(0));
            }
        }
        // Sends messages of varied sizes until killed.
        "sender" => {
            let mut sender = Sender::connect(name).map_err(fail)?;
            say("sending", "");
            for seq in 0.. {
                let len = [0usize, 100, 5_000, 70_000, 300_000][seq as usize % 5];
                sender.send_timeout(0, &message(seq, len), Duration::from_secs(10)).map_err(fail)?;
            }
        }
        "holder" => {
            let _s = Section::create(name, 64 << 10).map_err(fail)?;
            say("holding", "");
            common::park_forever();
        }
        "creator" => {
            say("creating", "");
            for i in 0u64.. {
                let s = Section::create(&format!("{name}-{}", i % 4), 4096 + 4096 * (i % 3)).map_err(fail)?;
                s.map_mut(0, 8).map_err(fail)?.write_at(0, &i.to_le_bytes()).map_err(fail)?;
                drop(s);
            }
        }
        "primary" => {
            let SingleInstance::Primary(p) = SingleInstance::acquire(name, &InstanceOptions::new()).map_err(fail)?
            else {
                return Err("not the primary".into());
            };
            say("primary", "");
            for launch in p.incoming() {
                drop(launch);
            }
        }
        "locker" => {
            let m = Mutex::open_or_create(name).map_err(fail)?;
            say("locking", "");
            loop {
                let g = m.lock().map_err(fail)?;
                std::thread::sleep(Duration::from_micros(300));
                drop(g);
            }
        }
        // Posts `args[1]` messages (sequence numbers 0..) then one send.
        "poster" => {
            let n: u64 = args[1].parse().map_err(fail)?;
            let mut sender = Sender::connect(name).map_err(fail)?;
            say("up", "");
            hear();
            for seq in 0..n {
                sender.post(TAG_LOAD, &seq.to_le_bytes()).map_err(fail)?;
            }
            sender.send_timeout(TAG_STOP, b"", Duration::from_secs(60)).map_err(fail)?;
            say("done", "");
            // Connected until told, so the receiver's memory is measured with
            // every connection still open.
            hear();
        }
        other => return Err(format!("unknown role {other}")),
    }
    Ok(())
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// Objects whose names contain `prefix` left in /dev/shm or the runtime
/// directory, after the listings have reclaimed what dead holders left.
fn leftovers(prefix: &str) -> Vec<String> {
    let _ = copydata::list();
    let _ = copydata::mailboxes();
    let _ = copydata::sync::objects();
    let runtime = match std::env::var("COPYDATA_RUNTIME_DIR").ok().filter(|d| !d.is_empty()) {
        Some(d) => d,
        None => match std::env::var("XDG_RUNTIME_DIR") {
            Ok(x) => format!("{x}/copydata"),
            Err(_) => format!("/tmp/copydata-{}", rustix::process::getuid().as_raw()),
        },
    };
    let mut out = Vec::new();
    for dir in ["/dev/shm", runtime.as_str()] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.contains(prefix) {
                out.push(format!("{dir}/{n}"));
            }
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    trials: u64,
    hangs: u64,
    corrupt: u64,
    duplicated: u64,
    leaked: u64,
    by_kind: [u64; 6],
}

const KINDS: [&str; 6] = ["sender", "receiver", "section holder", "section creator", "primary", "lock owner"];

fn trial(kind: usize, name: &str, rng: &mut Rng, t: &mut Tally) {
    match kind {
        0 => {
            let mut rx = Kid::spawn("receiver", &[name, "0"]);
            rx.expect("ready");
            let mut tx = Kid::spawn("sender", &[name]);
            tx.expect("sending");
            std::thread::sleep(Duration::from_micros(rng.below(30_000)));
            tx.kill();
            // The receiver goes on serving; then it reports what it saw.
            let started = Instant::now();
            match copydata::send_timeout(name, TAG_STOP, b"", Duration::from_secs(10)) {
                Ok(r) => {
                    t.corrupt += (r.code / 1_000_000) as u64;
                    t.duplicated += (r.code % 1_000_000) as u64;
                }
                Err(e) => {
                    eprintln!("trial {name}: the receiver stopped serving after a sender was killed: {e}");
                    t.hangs += 1;
                }
            }
            if started.elapsed() > Duration::from_secs(11) {
                t.hangs += 1;
            }
            rx.wait_ok();
        }
        1 => {
            let mut rx = Kid::spawn("receiver", &[name, "20"]);
            rx.expect("ready");
            let limit = Duration::from_secs(2);
            let sending = {
                let name = name.to_owned();
                std::thread::spawn(move || {
                    let mut worst = Duration::ZERO;
                    let Ok(mut s) = Sender::connect(&name) else { return worst };
                    for seq in 0.. {
                        let started = Instant::now();
                        let r = s.send_timeout(0, &message(seq, 1000), limit);
                        worst = worst.max(started.elapsed());
                        if r.is_err() {
                            return worst;
                        }
                    }
                    worst
                })
            };
            std::thread::sleep(Duration::from_micros(rng.below(30_000)));
            rx.kill();
            let worst = sending.join().unwrap();
            if worst > limit + Duration::from_secs(3) {
                eprintln!("trial {name}: a send took {worst:?} with a {limit:?} timeout");
                t.hangs += 1;
            }
        }
        2 => {
            let mut h = Kid::spawn("holder", &[name]);
            h.expect("holding");
            std::thread::sleep(Duration::from_micros(rng.below(5_000)));
            h.kill();
        }
        3 => {
            let mut c = Kid::spawn("creator", &[name]);
            c.expect("creating");
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
            c.kill();
        }
        4 => {
            let mut p = Kid::spawn("primary", &[name]);
            p.expect("primary");
            std::thread::sleep(Duration::from_micros(rng.below(5_000)));
            p.kill();
            let started = Instant::now();
            match SingleInstance::acquire(name, &InstanceOptions::new().timeout(Duration::from_secs(5))) {
                Ok(SingleInstance::Primary(p)) => drop(p),
                other => {
                    eprintln!("trial {name}: after the primary was killed: {other:?}");
                    t.hangs += 1;
                }
            }
            if started.elapsed() > Duration::from_secs(2) {
                t.hangs += 1;
            }
        }
        _ => {
            let mine = Mutex::open_or_create(name).unwrap();
            let mut l = Kid::spawn("locker", &[name]);
            l.expect("locking");
            std::thread::sleep(Duration::from_micros(rng.below(10_000)));
            l.kill();
            match mine.lock_timeout(Duration::from_secs(5)) {
                Ok(mut g) => g.mark_consistent(),
                Err(e) => {
                    eprintln!("trial {name}: the lock was not free 5 s after its owner died: {e}");
                    t.hangs += 1;
                }
            }
        }
    }
}

#[test]
#[ignore = "long: run by scripts/campaign.sh"]
fn kill_campaign() {
    let trials = env("COPYDATA_KILL_TRIALS", 1000);
    let seed = env("COPYDATA_KILL_SEED", 0x6b11_1a11);
    let mut rng = Rng(seed | 1);
    let mut t = Tally::default();
    let prefix = format!("copydata-campaign-{}-", std::process::id());
    let started = Instant::now();
    for i in 0..trials {
        let kind = rng.below(6) as usize;
        let name = format!("{prefix}{i}");
        trial(kind, &name, &mut rng, &mut t);
        let left = leftovers(&name);
        if !left.is_empty() {
            eprintln!("trial {i} ({}): left {left:?}", KINDS[kind]);
            t.leaked += left.len() as u64;
        }
        t.trials += 1;
        t.by_kind[kind] += 1;
    }
    let kinds: Vec<String> = KINDS.iter().zip(t.by_kind).map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "KILL: {} trials, {} hangs, {} corrupt, {} duplicated, {} leaked ({}; {:.0?}, seed {seed:#x})",
        t.trials,
        t.hangs,
        t.corrupt,
        t.duplicated,
        t.leaked,
        kinds.join(", "),
        started.elapsed()
    );
    assert_eq!((t.hangs, t.corrupt, t.duplicated, t.leaked), (0, 0, 0, 0));
}

/// (resident memory, of which private anonymous memory: the heap), in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |k: &str| -> u64 {
        status.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    };
    (field("VmRSS:"), field("RssAnon:"))
}

#[test]
#[ignore = "long: run by scripts/campaign.sh"]
fn load() {
    const SENDERS: usize = 16;
    let total = env("COPYDATA_LOAD_MESSAGES", 1_000_000);
    let per = total / SENDERS as u64;
    let name = format!("copydata-campaign-load-{}", std::process::id());
    let mailbox = Mailbox::bind(&name).unwrap();
    let mut kids: Vec<Kid> = (0..SENDERS).map(|_| Kid::spawn("poster", &[&name, &per.to_string()])).collect();
    for k in &mut kids {
        k.expect("up");
    }
    let pids: Vec<u32> = kids.iter().map(Kid::id).collect();
    let started = Instant::now();
    for k in &mut kids {
        k.tell("go");
    }
    let mut next = [0u64; SENDERS];
    let (mut lost, mut duplicated, mut disordered, mut received, mut finished) = (0u64, 0u64, 0u64, 0u64, 0);
    let mut rss_early = None;
    while finished < SENDERS {
        let request = mailbox.recv_timeout(Duration::from_secs(60)).expect("a message within 60 s");
        let who = pids.iter().position(|&p| p == request.sender().pid).expect("a known sender");
        if request.tag() == TAG_STOP {
            lost += per - next[who].min(per);
            finished += 1;
            let _ = request.reply(Reply::code(0));
            continue;
        }
        let seq = u64::from_le_bytes(request.payload()[..8].try_into().unwrap());
        received += 1;
        match seq.cmp(&next[who]) {
            std::cmp::Ordering::Equal => next[who] += 1,
            std::cmp::Ordering::Less => duplicated += 1,
            std::cmp::Ordering::Greater => {
                disordered += 1;
                lost += seq - next[who];
                next[who] = seq + 1;
            }
        }
        if received == 10_000 {
            rss_early = Some(rss_kib());
        }
    }
    let took = started.elapsed();
    for k in &mut kids {
        k.expect("done");
    }
    let rss_end = rss_kib();
    for mut k in kids {
        k.tell("bye");
        k.wait_ok();
    }
    let early = rss_early.unwrap_or(rss_end);
    let mib = |k: u64| k as f64 / 1024.0;
    let growth = |a: u64, b: u64| (b as f64 - a as f64) / a as f64 * 100.0;
    // A connection's rings are resident from set-up, so neither the heap
    // (private anonymous memory) nor the whole resident memory may grow
    // while messages flow. Both are measured with every connection open.
    println!(
        "LOAD: {received} messages from {SENDERS} senders, {lost} lost, {duplicated} duplicated, {disordered} out of order; receiver RSS {:.1} MiB after 10^4 messages, {:.1} MiB at the end ({:+.1}%), of which heap {:.1} -> {:.1} MiB ({:+.1}%); {:.0} messages/s",
        mib(early.0),
        mib(rss_end.0),
        growth(early.0, rss_end.0),
        mib(early.1),
        mib(rss_end.1),
        growth(early.1, rss_end.1),
        received as f64 / took.as_secs_f64()
    );
    assert_eq!((lost, duplicated, disordered), (0, 0, 0));
    assert_eq!(received, per * SENDERS as u64);
    assert!(growth(early.1, rss_end.1) <= 10.0, "the receiver's heap grew by {:.1}%", growth(early.1, rss_end.1));
    assert!(
        growth(early.0, rss_end.0).abs() <= 10.0,
        "the receiver's resident memory went from {:.1} to {:.1} MiB",
        mib(early.0),
        mib(rss_end.0)
    );
}
