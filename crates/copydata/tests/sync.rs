//! Shared values, mutexes and events across real processes, on Linux and
//! (from the same sources) Windows under Wine.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Kid, hear, say, unique};
use copydata::sync::{Event, EventKind, LockError, Mutex, ObjectType, Shared, SharedBytes, SyncOpenError, WaitError};

#[test]
fn child_entry() {
    common::child_main(role);
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

const TAG: &str = "copydata-test.counter";
const INIT_MAGIC: u64 = 0x1a2b_3c4d_5e6f_7788;
const PAIR_TAG: &str = "copydata-test.pair";

fn role(role: &str, args: &[String]) -> Result<(), String> {
    let name = args.first().map(String::as_str).unwrap_or_default();
    match role {
        // Increments the counter `name` `args[1]` times under its lock.
        "increment" => {
            let n: u64 = args[1].parse().map_err(fail)?;
            let counter = Shared::<u64>::open_or_create_tagged(name, TAG, || 0).map_err(fail)?;
            say("up", "");
            hear();
            for _ in 0..n {
                *counter.lock().map_err(fail)? += 1;
            }
            say("done", "");
        }
        // Opens the 64 MiB table `name` (zeroed if it is new), checks that
        // every entry is 0 or the parent's mark, and marks the last entry.
        "table" => {
            let table = Shared::<Table>::open_or_create_zeroed(name).map_err(fail)?;
            let mut g = table.lock().map_err(fail)?;
            let odd = g.iter().enumerate().filter(|&(i, &v)| v != if i % 4096 == 0 { i as u64 } else { 0 }).count();
            if odd > 0 {
                return Err(format!("{odd} entries are neither 0 nor marked"));
            }
            *g.last_mut().expect("entries") = 7;
            say("done", "");
        }
        // Takes the mutex `name` (or the shared value's lock) and holds it
        // until killed; with "scribble", changes the value half-way first.
        "hold" => {
            if args.get(1).is_some_and(|a| a == "shared") {
                let v = Shared::<[u64; 2]>::open_or_create(name, || [0, 0]).map_err(fail)?;
                let mut g = v.lock().map_err(fail)?;
                g[0] = 1; // the second half never comes
                say("locked", "");
                common::park_forever();
            }
            let m = Mutex::open_or_create(name).map_err(fail)?;
            let _g = m.lock().map_err(fail)?;
            say("locked", "");
            common::park_forever();
        }
        // Locks the mutex and reports whether its previous owner died.
        "lock" => {
            let m = Mutex::open_or_create(name).map_err(fail)?;
            let g = m.lock_timeout(Duration::from_secs(30)).map_err(fail)?;
            say("locked", &g.owner_died().to_string());
        }
        // 16 of these race to create `name`; the initialiser counts its runs
        // in the shared atomic `args[1]` and takes its time.
        "init" => {
            let runs = Shared::<AtomicU64>::open(&args[1]).map_err(fail)?;
            say("up", "");
            hear();
            let v = Shared::<[u64; 2]>::open_or_create(name, || {
                runs.get().fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
                [INIT_MAGIC, 42]
            })
            .map_err(fail)?;
            let seen = *v.lock().map_err(fail)?;
            say("value", &format!("{:x} {}", seen[0], seen[1]));
            hear();
        }
        // As "init", with a `SharedBytes` of the same layout and tag as a
        // `Shared<[u64; 2]>` tagged PAIR_TAG.
        "bytes-init" => {
            let runs = Shared::<AtomicU64>::open(&args[1]).map_err(fail)?;
            say("up", "");
            hear();
            let v = SharedBytes::open_or_create_with(name, 16, 8, PAIR_TAG, |bytes| {
                runs.get().fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
                bytes[..8].copy_from_slice(&INIT_MAGIC.to_ne_bytes());
                bytes[8..].copy_from_slice(&42u64.to_ne_bytes());
                Ok::<(), std::io::Error>(())
            })
            .map_err(fail)?;
            let g = v.lock().map_err(fail)?;
            let word = |i: usize| u64::from_ne_bytes(g[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            say("value", &format!("{:x} {}", word(0), word(1)));
            drop(g);
            hear();
        }
        // Takes the lock of the bytes `name`, changes them half-way and
        // holds it until killed.
        "hold-bytes" => {
            let v = SharedBytes::open_or_create(name, 16, 8, PAIR_TAG).map_err(fail)?;
            let mut g = v.lock().map_err(fail)?;
            g[0] = 1;
            say("locked", "");
            common::park_forever();
        }
        // A thread takes the mutex `name` through an Arc guard that holds
        // the only reference, hands the guard to this thread, which drops it
        // (it cannot unlock), then takes another robust mutex (`args[1]`:
        // glibc updates its robust list, which runs through the first
        // mutex) and ends holding the first; reports what the next locker
        // sees.
        "arc-dropped-elsewhere" => {
            let (tx, rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let (first, second) = (name.to_owned(), args[1].clone());
            let holder = std::thread::spawn(move || -> Result<(), String> {
                let guard =
                    std::sync::Arc::new(Mutex::open_or_create(&first).map_err(fail)?).lock_arc().map_err(fail)?;
                tx.send(guard).map_err(fail)?;
                go_rx.recv().map_err(fail)?;
                let other = Mutex::open_or_create(&second).map_err(fail)?;
                drop(other.lock().map_err(fail)?);
                Ok(())
            });
            let guard = rx.recv().map_err(fail)?;
            assert!(!guard.is_mine());
            drop(guard);
            go_tx.send(()).map_err(fail)?;
            holder.join().map_err(|_| "the holding thread panicked".to_string())??;
            match Mutex::open(name) {
                Ok(m) => {
                    let g = m.lock_timeout(Duration::from_secs(30)).map_err(fail)?;
                    say("owner-died", &g.owner_died().to_string());
                }
                Err(SyncOpenError::NotFound { .. }) => say("owner-died", "gone"),
                Err(e) => return Err(fail(e)),
            }
        }
        // Forgets a guard, drops its mutex, maps a page of 0xAA (where the
        // mutex's mapping was, if it went), then locks another mutex: says
        // whether the page is intact (glibc's robust list of this thread
        // still points into the first mutex).
        "forgotten-guard" => {
            let m = Mutex::open_or_create(name).map_err(fail)?;
            std::mem::forget(m.lock().map_err(fail)?);
            drop(m);
            let page = copydata::Section::anonymous(4096).map_err(fail)?;
            let view = page.map_mut(0, 4096).map_err(fail)?;
            view.write_at(0, &[0xAA; 4096]).map_err(fail)?;
            let other = Mutex::open_or_create(&args[1]).map_err(fail)?;
            drop(other.lock().map_err(fail)?);
            let mut seen = [0u8; 4096];
            view.read_at(0, &mut seen).map_err(fail)?;
            say("intact", &seen.iter().all(|&b| b == 0xAA).to_string());
        }
        // A creator that dies inside its initialiser.
        "init-and-die" => {
            let _v = Shared::<[u64; 2]>::open_or_create(name, || {
                say("initialising", "");
                common::park_forever()
            })
            .map_err(fail)?;
        }
        // Opens or creates `name` with the initialiser [magic, 7].
        "init-7" => {
            let v = Shared::<[u64; 2]>::open_or_create(name, || [INIT_MAGIC, 7]).map_err(fail)?;
            let seen = *v.lock().map_err(fail)?;
            say("value", &format!("{:x} {}", seen[0], seen[1]));
        }
        // Waits for the event `name` (of kind args[1]) and says so.
        "wait" => {
            let kind = if args[1] == "auto" { EventKind::AutoReset } else { EventKind::ManualReset };
            let e = Event::open_or_create(name, kind).map_err(fail)?;
            say("waiting", "");
            match e.wait_timeout(Duration::from_secs(args[2].parse().map_err(fail)?)) {
                Ok(()) => say("woken", ""),
                Err(WaitError::TimedOut) => say("timeout", ""),
                Err(e) => return Err(fail(e)),
            }
            hear();
        }
        other => return Err(format!("unknown role {other}")),
    }
    Ok(())
}

/// What is left of the object `name` after its holders were killed.
fn gone(name: &str, kind: ObjectType) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Listing also reclaims what a killed last holder left (Linux).
        let listed = copydata::sync::objects().unwrap().iter().any(|o| o.name == name && o.kind == kind);
        #[cfg(target_os = "linux")]
        let listed = listed || common::in_dev_shm(&format!("copydata.{kind}.{name}"));
        if !listed {
            return true;
        }
        // Wine closes a killed process's handles a moment after it exits.
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn four_processes_increment_one_counter_exactly() {
    let name = unique("counter");
    let n = 100_000;
    let counter = Shared::<u64>::open_or_create_tagged(&name, TAG, || 0).unwrap();
    let mut kids: Vec<Kid> = (0..4).map(|_| Kid::spawn("increment", &[&name, &n.to_string()])).collect();
    for k in &mut kids {
        k.expect("up");
    }
    for k in &mut kids {
        k.tell("go");
    }
    for mut k in kids {
        k.expect("done");
        k.wait_ok();
    }
    let total = *counter.lock().unwrap();
    assert_eq!(total, 4 * n);
    drop(counter);
    assert!(gone(&name, ObjectType::Shared));
}

#[test]
fn a_killed_owner_is_reported_to_every_locker_until_marked_consistent() {
    let name = unique("owner");
    let m = Mutex::open_or_create(&name).unwrap();
    let mut holder = Kid::spawn("hold", &[&name]);
    holder.expect("locked");
    assert!(matches!(m.try_lock(), Err(LockError::WouldBlock)));
    // A locker waiting when the owner dies gets the lock, told so.
    let limit = Duration::from_secs(30);
    let started = Instant::now();
    let waiter = {
        let name = name.clone();
        std::thread::spawn(move || {
            let m = Mutex::open(&name).unwrap();
            m.lock_timeout(limit).map(|g| g.owner_died())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    holder.kill();
    assert!(waiter.join().unwrap().unwrap(), "the waiter was not told the owner died");
    assert!(started.elapsed() < limit);
    // Not marked consistent: the next lockers, here and in another process,
    // are told too.
    assert!(m.lock().unwrap().owner_died());
    let mut other = Kid::spawn("lock", &[&name]);
    assert_eq!(other.expect("locked"), "true");
    other.wait_ok();
    let mut g = m.lock().unwrap();
    assert!(g.owner_died());
    g.mark_consistent();
    drop(g);
    assert!(!m.lock().unwrap().owner_died());
    let mut other = Kid::spawn("lock", &[&name]);
    assert_eq!(other.expect("locked"), "false");
    other.wait_ok();
    drop(m);
    assert!(gone(&name, ObjectType::Mutex));
}

/// The name under which a lock lives is no section's: removing it as one
/// is refused as a reserved name (it used to free the name, so that a
/// second lock of the same name could be made beside the held one).
#[cfg(target_os = "linux")]
#[test]
fn a_locks_name_is_not_removed_as_a_sections() {
    let name = unique("not-a-section");
    let m = Mutex::open_or_create(&name).unwrap();
    let held = m.lock().unwrap();
    let object = format!("copydata.mutex.{name}");
    let removed = copydata::remove(&object);
    assert!(
        matches!(&removed, Err(copydata::RemoveError::InvalidName { reason: copydata::NameError::Reserved, .. })),
        "{removed:?}"
    );
    let again = Mutex::open_or_create(&name).unwrap();
    assert!(matches!(again.try_lock(), Err(LockError::WouldBlock | LockError::WouldDeadlock)), "a second lock");
    drop(held);
}

/// An `ArcMutexGuard` unlocks when dropped on the thread that locked; sent
/// to another thread and dropped there, it leaves the lock with its thread,
/// which the OS frees (owner died) when that thread ends.
#[test]
fn an_arc_guard_unlocks_only_on_its_own_thread() {
    let name = unique("arc");
    let m = std::sync::Arc::new(Mutex::open_or_create(&name).unwrap());
    let mut g = m.lock_arc().unwrap();
    assert!(g.is_mine() && !g.owner_died());
    assert_eq!(g.mutex().name(), name);
    g.mark_consistent();
    assert!(matches!(m.try_lock_arc(), Err(LockError::WouldDeadlock | LockError::WouldBlock)));
    drop(g);
    drop(m.try_lock_arc().expect("free once its guard was dropped where it was taken"));
    let elsewhere = {
        let m = m.clone();
        std::thread::spawn(move || m.lock_arc_timeout(Duration::from_secs(10)).unwrap()).join().unwrap()
    };
    assert!(!elsewhere.is_mine());
    drop(elsewhere);
    // The thread that took it has ended holding it.
    let mut g = m.lock_arc_timeout(Duration::from_secs(30)).expect("freed when its thread ended");
    assert!(g.owner_died());
    g.mark_consistent();
    drop(g);
    assert!(!m.lock().unwrap().owner_died());
}

/// An Arc guard dropped on another thread while the thread that locked
/// still runs. Linux: the mutex stays mapped for that thread (glibc keeps
/// held mutexes on a list running through them), which ends holding it,
/// and the next locker is told. Windows: the mutex is a kernel object that
/// goes with its last handle, whoever owns it. Run in a child, which on
/// Linux keeps the mutex for the rest of its life: what it leaves is
/// reclaimed once it has exited.
#[test]
fn an_arc_guard_dropped_elsewhere_keeps_the_mutex_for_its_holder() {
    let (name, other) = (unique("arc-elsewhere"), unique("arc-other"));
    let mut kid = Kid::spawn("arc-dropped-elsewhere", &[&name, &other]);
    assert_eq!(kid.expect("owner-died"), if cfg!(windows) { "gone" } else { "true" });
    kid.wait_ok();
    assert!(gone(&name, ObjectType::Mutex));
    assert!(gone(&other, ObjectType::Mutex));
}

/// `mem::forget` on a guard is safe Rust: dropping its mutex afterwards
/// must not leave the locking thread's robust list (Linux) pointing at
/// memory that is then reused.
#[test]
fn a_forgotten_guard_leaves_no_dangling_lock_behind() {
    let (name, other) = (unique("forgotten"), unique("forgotten-other"));
    let mut kid = Kid::spawn("forgotten-guard", &[&name, &other]);
    assert_eq!(kid.expect("intact"), "true");
    kid.wait_ok();
    assert!(gone(&name, ObjectType::Mutex));
    assert!(gone(&other, ObjectType::Mutex));
}

/// The same mutex opened twice in one process: dropping one opening while
/// the lock is held through the other keeps nothing of the first (the
/// name goes with the last holder as usual).
#[test]
fn an_opening_dropped_while_another_holds_the_lock_keeps_nothing() {
    let name = unique("two-openings");
    let first = Mutex::open_or_create(&name).unwrap();
    let second = Mutex::open(&name).unwrap();
    let guard = second.lock().unwrap();
    drop(first);
    drop(guard);
    drop(second);
    assert!(gone(&name, ObjectType::Mutex));
}

#[test]
fn a_shared_value_left_half_written_is_reported() {
    let name = unique("half");
    let v = Shared::<[u64; 2]>::open_or_create(&name, || [0, 0]).unwrap();
    let mut holder = Kid::spawn("hold", &[&name, "shared"]);
    holder.expect("locked");
    holder.kill();
    let mut g = v.lock_timeout(Duration::from_secs(30)).unwrap();
    assert!(g.owner_died());
    assert_eq!(*g, [1, 0], "the half-made change is there to repair");
    *g = [2, 2];
    g.mark_consistent();
    drop(g);
    let g = v.lock().unwrap();
    assert!(!g.owner_died());
    assert_eq!(*g, [2, 2]);
}

/// A value far larger than a thread's stack: 64 MiB.
type Table = [u64; 8 << 20];

#[test]
fn a_value_larger_than_the_stack_is_made_zeroed_in_place() {
    let name = unique("table");
    // A closure returning a 64 MiB array would overflow the stack in a debug
    // build; the zeros are written straight into shared memory instead.
    let table = Shared::<Table>::open_or_create_zeroed(&name).unwrap();
    {
        let mut g = table.lock().unwrap();
        assert!(g.iter().all(|&v| v == 0));
        for i in (0..g.len()).step_by(4096) {
            g[i] = i as u64;
        }
    }
    // Another process opening it the same way finds it made, not zeroed again.
    let mut kid = Kid::spawn("table", &[&name]);
    kid.expect("done");
    kid.wait_ok();
    let g = table.lock().unwrap();
    assert_eq!((g[4096], g[g.len() - 1]), (4096, 7));
    // Atomics are made zeroed too.
    let hits = Shared::<[std::sync::atomic::AtomicU32; 1000]>::open_or_create_zeroed(&unique("hits")).unwrap();
    assert_eq!(hits.get()[999].fetch_add(1, Ordering::Relaxed), 0);
}

/// Starts `n` children of `role` (`init` or `bytes-init`) racing to create
/// `name`; once each has read the value, checks that it is the
/// initialiser's and that the initialiser ran once, and returns them
/// (waiting for "exit").
fn race_to_create(role: &str, n: usize, name: &str) -> Vec<Kid> {
    let runs_name = unique("runs");
    let runs = Shared::<AtomicU64>::open_or_create(&runs_name, || AtomicU64::new(0)).unwrap();
    let mut kids: Vec<Kid> = (0..n).map(|_| Kid::spawn(role, &[name, &runs_name])).collect();
    for k in &mut kids {
        k.expect("up");
    }
    for k in &mut kids {
        k.tell("go");
    }
    for k in &mut kids {
        assert_eq!(k.expect("value"), format!("{INIT_MAGIC:x} 42"));
    }
    assert_eq!(runs.get().load(Ordering::SeqCst), 1, "the initialiser ran more than once");
    kids
}

fn let_exit(kids: Vec<Kid>) {
    for mut k in kids {
        k.tell("exit");
        k.wait_ok();
    }
}

#[test]
fn sixteen_racing_creators_initialise_once_and_nobody_reads_early() {
    let name = unique("once");
    let_exit(race_to_create("init", 16, &name));
    assert!(gone(&name, ObjectType::Shared));
}

#[test]
fn racing_byte_creators_initialise_once_a_value_rust_types_read() {
    let name = unique("bytes-once");
    let kids = race_to_create("bytes-init", 8, &name);
    // The same object, seen as a typed value and as bytes of any layout.
    let typed = Shared::<[u64; 2]>::open_tagged(&name, PAIR_TAG).unwrap();
    assert_eq!(*typed.lock().unwrap(), [INIT_MAGIC, 42]);
    let bytes = SharedBytes::open(&name, PAIR_TAG).unwrap();
    assert_eq!((bytes.len(), bytes.align(), bytes.name()), (16, 8, name.as_str()));
    bytes.lock().unwrap()[8..].copy_from_slice(&43u64.to_ne_bytes());
    assert_eq!(typed.lock().unwrap()[1], 43);
    let_exit(kids);
    drop((typed, bytes));
    assert!(gone(&name, ObjectType::Shared));
}

#[test]
fn shared_bytes_refuse_other_layouts_and_failed_initialisers_leave_nothing() {
    let name = unique("bytes");
    let mismatch = |r: Result<SharedBytes, SyncOpenError>| matches!(r, Err(SyncOpenError::LayoutMismatch { .. }));
    assert!(matches!(SharedBytes::open(&name, PAIR_TAG), Err(SyncOpenError::NotFound { .. })));
    // A failing initialiser: the error comes back, and nothing is made.
    let failed = SharedBytes::open_or_create_with(&name, 16, 8, PAIR_TAG, |bytes| {
        bytes[0] = 9;
        Err("no config")
    });
    match failed {
        Err(SyncOpenError::InitFailed { source, .. }) => assert_eq!(source.to_string(), "no config"),
        other => panic!("a failing initialiser gave {other:?}"),
    }
    assert!(gone(&name, ObjectType::Shared));
    let v = SharedBytes::open_or_create(&name, 16, 8, PAIR_TAG).unwrap();
    assert_eq!(&v.lock().unwrap()[..], &[0u8; 16], "zeros, not the failed initialiser's bytes");
    assert!(mismatch(SharedBytes::open_or_create(&name, 17, 8, PAIR_TAG)));
    assert!(mismatch(SharedBytes::open_or_create(&name, 16, 4, PAIR_TAG)));
    assert!(mismatch(SharedBytes::open_or_create(&name, 16, 8, "another tag")));
    assert!(mismatch(SharedBytes::open(&name, "another tag")));
    // Layouts no value can have are the caller's mistake, whatever exists.
    let invalid = |r: Result<SharedBytes, SyncOpenError>| matches!(r, Err(SyncOpenError::InvalidLayout { .. }));
    assert!(invalid(SharedBytes::open_or_create(&unique("bytes"), 8, 3, PAIR_TAG)));
    assert!(invalid(SharedBytes::open_or_create(&unique("bytes"), 8, 8192, PAIR_TAG)));
    assert!(invalid(SharedBytes::open_or_create(&unique("bytes"), 8, 0, PAIR_TAG)));
    assert!(invalid(SharedBytes::open_or_create(&unique("bytes"), usize::MAX, 8, PAIR_TAG)));
    assert!(invalid(SharedBytes::open_or_create(&unique("bytes"), usize::MAX - 100, 1, PAIR_TAG)));
    assert!(matches!(Shared::<[u32; 4]>::open_tagged(&name, PAIR_TAG), Err(SyncOpenError::LayoutMismatch { .. })));
    // A value larger than the shared-memory file system's free space (Linux)
    // says so; nothing is left behind.
    #[cfg(target_os = "linux")]
    {
        let big = unique("bytes-big");
        // (A /dev/shm that sets no limit says so by having no blocks; then
        // the memory runs out instead.)
        let limited = rustix::fs::statvfs("/dev/shm").unwrap().f_blocks != 0;
        match SharedBytes::open_or_create(&big, 1 << 60, 8, PAIR_TAG) {
            Err(SyncOpenError::NoSpace { size, available, .. }) => assert!(size > available),
            Err(SyncOpenError::Io { .. }) if !limited => {}
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(gone(&big, ObjectType::Shared));
    }
    // An empty value is a value too.
    let empty = SharedBytes::open_or_create(&unique("bytes"), 0, 1, "empty").unwrap();
    assert!(empty.is_empty() && empty.lock().unwrap().is_empty());
}

#[test]
fn shared_bytes_report_a_killed_holder_and_lock_through_an_arc() {
    let name = unique("bytes-died");
    let v = std::sync::Arc::new(SharedBytes::open_or_create(&name, 16, 8, PAIR_TAG).unwrap());
    let mut holder = Kid::spawn("hold-bytes", &[&name]);
    holder.expect("locked");
    assert!(matches!(v.try_lock(), Err(LockError::WouldBlock)));
    assert!(matches!(v.lock_arc_timeout(Duration::from_millis(100)), Err(LockError::TimedOut)));
    holder.kill();
    let mut g = v.lock_timeout(Duration::from_secs(30)).unwrap();
    assert!(g.owner_died());
    assert_eq!(g[0], 1, "the half-made change is there to repair");
    g[0] = 0;
    g.mark_consistent();
    drop(g);
    // An Arc guard: stored, written through its pointer, unlocked on drop.
    let mut held = Some(v.lock_arc().unwrap());
    let guard = held.as_ref().unwrap();
    assert!(guard.is_mine() && !guard.owner_died());
    // SAFETY: the lock is held; the value has 16 bytes.
    unsafe { guard.as_ptr().add(15).write(5) };
    assert!(matches!(v.try_lock(), Err(LockError::WouldDeadlock) | Err(LockError::WouldBlock)));
    held = None;
    assert!(held.is_none());
    assert_eq!(v.try_lock().unwrap()[15], 5);
}

#[test]
fn a_creator_killed_while_initialising_leaves_nothing_half_made() {
    let name = unique("initdie");
    let mut creator = Kid::spawn("init-and-die", &[&name]);
    creator.expect("initialising");
    // A second opener waits for the initialiser...
    let mut second = Kid::spawn("init-7", &[&name]);
    std::thread::sleep(Duration::from_millis(300));
    // ...which dies: the second one initialises it itself.
    creator.kill();
    assert_eq!(second.expect("value"), format!("{INIT_MAGIC:x} 7"));
    second.wait_ok();
    assert!(gone(&name, ObjectType::Shared));
}

/// As `SetEvent`: two sets of an auto-reset event with two processes
/// asleep on it release both, and a manual-reset event's set releases
/// every sleeper even if a reset follows at once.
#[test]
fn back_to_back_sets_and_a_set_then_reset_release_every_sleeper() {
    for (kind, what) in [(EventKind::AutoReset, "auto"), (EventKind::ManualReset, "manual")] {
        let name = unique(&format!("sleepers-{what}"));
        let e = Event::open_or_create(&name, kind).unwrap();
        let mut waiters: Vec<Kid> = (0..2).map(|_| Kid::spawn("wait", &[&name, what, "30"])).collect();
        for w in &mut waiters {
            w.expect("waiting");
        }
        // Both asleep in their wait by now.
        std::thread::sleep(Duration::from_millis(300));
        match kind {
            EventKind::AutoReset => {
                e.set().unwrap();
                e.set().unwrap();
            }
            EventKind::ManualReset => {
                e.set().unwrap();
                e.reset().unwrap();
            }
        }
        for w in &mut waiters {
            let woken = w.expect_within("woken", Duration::from_secs(10));
            assert!(woken.is_some(), "{what}-reset: a sleeper was not released");
        }
        // Nothing left over: both sets went to the sleepers, or reset.
        assert!(matches!(e.wait_timeout(Duration::from_millis(50)), Err(WaitError::TimedOut)), "{what}-reset");
        for mut w in waiters {
            w.tell("exit");
            w.wait_ok();
        }
    }
}

#[test]
fn events_wake_other_processes_manual_and_auto() {
    // Manual-reset: one set wakes every waiter and stays set.
    let name = unique("manual");
    let e = Event::open_or_create(&name, EventKind::ManualReset).unwrap();
    let mut waiters: Vec<Kid> = (0..2).map(|_| Kid::spawn("wait", &[&name, "manual", "30"])).collect();
    for w in &mut waiters {
        w.expect("waiting");
    }
    std::thread::sleep(Duration::from_millis(200));
    e.set().unwrap();
    // Woken by the set, not by their own 30 s timeout.
    for w in &mut waiters {
        assert!(w.expect_within("woken", Duration::from_secs(10)).is_some(), "a waiter was not woken");
    }
    e.wait_timeout(Duration::ZERO).unwrap();
    e.reset().unwrap();
    assert!(matches!(e.wait_timeout(Duration::from_millis(50)), Err(WaitError::TimedOut)));
    for mut w in waiters {
        w.tell("exit");
        w.wait_ok();
    }

    // Auto-reset: one set wakes one waiter, then it is unset again.
    let name = unique("auto");
    let e = Event::open_or_create(&name, EventKind::AutoReset).unwrap();
    let mut waiters: Vec<Kid> = (0..2).map(|_| Kid::spawn("wait", &[&name, "auto", "30"])).collect();
    for w in &mut waiters {
        w.expect("waiting");
    }
    std::thread::sleep(Duration::from_millis(200));
    e.set().unwrap();
    let mut woken = 0;
    let mut pending = Vec::new();
    for mut w in waiters {
        match w.expect_within("woken", Duration::from_millis(1000)) {
            Some(_) => {
                woken += 1;
                w.tell("exit");
                w.wait_ok();
            }
            None => pending.push(w),
        }
    }
    assert_eq!(woken, 1, "one set of an auto-reset event woke {woken} waiters");
    e.set().unwrap();
    for mut w in pending {
        assert!(w.expect_within("woken", Duration::from_secs(10)).is_some(), "the second set woke nobody");
        w.tell("exit");
        w.wait_ok();
    }
    // Set with nobody waiting: stays set for exactly one wait.
    e.set().unwrap();
    e.wait_timeout(Duration::ZERO).unwrap();
    assert!(matches!(e.wait_timeout(Duration::from_millis(50)), Err(WaitError::TimedOut)));
}

#[test]
fn timeouts_are_honoured() {
    let e = Event::open_or_create(&unique("timeout"), EventKind::ManualReset).unwrap();
    for limit in [Duration::from_millis(1), Duration::from_millis(120), Duration::from_millis(500)] {
        let started = Instant::now();
        assert!(matches!(e.wait_timeout(limit), Err(WaitError::TimedOut)));
        let took = started.elapsed();
        assert!(took >= limit, "gave up after {took:?}, before {limit:?}");
        assert!(took < limit + Duration::from_secs(5), "{took:?} for {limit:?}");
    }
    let name = unique("locktimeout");
    let m = Mutex::open_or_create(&name).unwrap();
    let mut holder = Kid::spawn("hold", &[&name]);
    holder.expect("locked");
    for limit in [Duration::from_millis(1), Duration::from_millis(120), Duration::from_millis(500)] {
        let started = Instant::now();
        assert!(matches!(m.lock_timeout(limit), Err(LockError::TimedOut)));
        let took = started.elapsed();
        assert!(took >= limit, "gave up after {took:?}, before {limit:?}");
        assert!(took < limit + Duration::from_secs(5), "{took:?} for {limit:?}");
    }
    holder.kill();
    // A timeout too large to add to the clock waits for ever (and gets the
    // lock at once here).
    assert!(m.lock_timeout(Duration::MAX).unwrap().owner_died());
}

#[test]
fn mismatches_and_bad_names_are_refused() {
    let name = unique("layout");
    let _a = Shared::<u64>::open_or_create(&name, || 1).unwrap();
    assert!(matches!(Shared::<u32>::open_or_create(&name, || 1), Err(SyncOpenError::LayoutMismatch { .. })));
    assert!(matches!(Shared::<[u8; 8]>::open(&name), Err(SyncOpenError::LayoutMismatch { .. })));
    assert!(matches!(Shared::<u64>::open_tagged(&name, "other"), Err(SyncOpenError::LayoutMismatch { .. })));
    assert_eq!(*Shared::<u64>::open(&name).unwrap().lock().unwrap(), 1);
    let e = unique("kind");
    let _m = Event::open_or_create(&e, EventKind::ManualReset).unwrap();
    match Event::open_or_create(&e, EventKind::AutoReset) {
        Err(SyncOpenError::WrongKind { reason, .. }) => assert!(reason.contains("manual-reset"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(Event::open(&e).unwrap().kind(), EventKind::ManualReset);
    assert!(matches!(Mutex::open(&unique("none")), Err(SyncOpenError::NotFound { .. })));
    assert!(matches!(Event::open(&unique("none")), Err(SyncOpenError::NotFound { .. })));
    assert!(matches!(Shared::<u64>::open(&unique("none")), Err(SyncOpenError::NotFound { .. })));
    for bad in ["", "a/b", "..", "sp ace"] {
        assert!(matches!(Mutex::open_or_create(bad), Err(SyncOpenError::InvalidName { .. })), "{bad:?}");
        assert!(matches!(Event::open_or_create(bad, EventKind::AutoReset), Err(SyncOpenError::InvalidName { .. })));
        assert!(matches!(Shared::<u8>::open_or_create(bad, || 0), Err(SyncOpenError::InvalidName { .. })));
    }
    // Not recursive: a second lock on the same thread is refused, not a
    // second guard.
    let m = Mutex::open_or_create(&unique("rec")).unwrap();
    let g = m.lock().unwrap();
    assert!(matches!(m.lock(), Err(LockError::WouldDeadlock)));
    assert!(matches!(m.lock_timeout(Duration::from_millis(10)), Err(LockError::WouldDeadlock | LockError::TimedOut)));
    drop(g);
    drop(m.lock().unwrap());
}

/// A kernel mutex is recursive, a copydata mutex is not: what tells a
/// second lock by the holding thread apart lives in that process, not in
/// the object's memory, where any process of the user could write this
/// thread's ids and so make its every lock fail as a deadlock (the header
/// held the holder's process and thread at offsets 16 and 12 once).
#[cfg(windows)]
#[test]
fn ids_written_into_a_mutexs_memory_do_not_refuse_its_lock() {
    use windows_sys::Win32::System::Memory::{
        FILE_MAP_WRITE, MEMORY_MAPPED_VIEW_ADDRESS, MapViewOfFile, OpenFileMappingW, UnmapViewOfFile,
    };
    use windows_sys::Win32::System::Threading::GetCurrentThreadId;
    let name = unique("forged");
    let m = Mutex::open_or_create(&name).unwrap();
    let object: Vec<u16> = format!("Local\\copydata.mutex.{name}").encode_utf16().chain([0]).collect();
    // SAFETY: a NUL-terminated name; the handle is closed below.
    let mapping = unsafe { OpenFileMappingW(FILE_MAP_WRITE, 0, object.as_ptr()) };
    assert!(!mapping.is_null(), "{}", std::io::Error::last_os_error());
    // SAFETY: a view of the whole mapping, unmapped below.
    let view = unsafe { MapViewOfFile(mapping, FILE_MAP_WRITE, 0, 0, 0) };
    assert!(!view.Value.is_null(), "{}", std::io::Error::last_os_error());
    let words = view.Value.cast::<u32>();
    // SAFETY: the header is 128 bytes, and these words are aligned in it;
    // no Rust reference to the shared memory is made. GetCurrentThreadId
    // cannot fail.
    unsafe {
        words.add(3).write_volatile(GetCurrentThreadId());
        words.add(4).write_volatile(std::process::id());
    }
    let g = m.try_lock().expect("a free mutex locks, whatever its memory says");
    assert!(matches!(m.try_lock(), Err(LockError::WouldDeadlock)), "a second lock on this thread");
    drop(g);
    drop(m.lock_timeout(Duration::from_secs(10)).unwrap());
    // SAFETY: the view and handle made above, unused from here.
    unsafe {
        UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS { Value: view.Value });
        windows_sys::Win32::Foundation::CloseHandle(mapping);
    }
}

/// Windows: a kernel mutex goes with its last handle, held or not (a
/// guard forgotten, an Arc guard dropped on another thread). The name
/// opened again later is a new mutex, free: the thread that held the old
/// one locks it (and only once, as any mutex).
#[cfg(windows)]
#[test]
fn a_mutex_made_again_after_a_held_one_went_is_free() {
    let name = unique("made-again");
    let m = Mutex::open_or_create(&name).unwrap();
    std::mem::forget(m.lock().unwrap());
    drop(m);
    let m = std::sync::Arc::new(Mutex::open_or_create(&name).unwrap());
    let g = m.try_lock_arc().expect("the mutex that went with a forgotten guard left no lock behind");
    assert!(matches!(m.try_lock(), Err(LockError::WouldDeadlock)), "a second lock on this thread");
    drop(m);
    std::thread::spawn(move || drop(g)).join().unwrap();
    let m = Mutex::open_or_create(&name).unwrap();
    let g = m.try_lock().expect("the mutex that went with an Arc guard dropped elsewhere left no lock behind");
    assert!(matches!(m.try_lock(), Err(LockError::WouldDeadlock)), "a second lock on this thread");
    drop(g);
    drop(m.lock_timeout(Duration::from_secs(10)).unwrap());
}

#[test]
fn objects_are_listed_while_held_and_gone_after_the_last_holder() {
    let name = unique("listed");
    let m = Mutex::open_or_create(&name).unwrap();
    let e = Event::open_or_create(&name, EventKind::AutoReset).unwrap();
    let s = Shared::<u64>::open_or_create(&name, || 0).unwrap();
    let listed: Vec<ObjectType> =
        copydata::sync::objects().unwrap().into_iter().filter(|o| o.name == name).map(|o| o.kind).collect();
    assert_eq!(listed, [ObjectType::Mutex, ObjectType::Event, ObjectType::Shared]);
    // Not sections.
    assert!(!copydata::list().unwrap().iter().any(|s| s.name.contains(&name)));
    drop((m, e, s));
    for kind in [ObjectType::Mutex, ObjectType::Event, ObjectType::Shared] {
        assert!(gone(&name, kind), "{kind} {name} is still there");
    }
    // Killed holders leave nothing behind either.
    let name = unique("killed");
    let mut holder = Kid::spawn("hold", &[&name]);
    holder.expect("locked");
    holder.kill();
    assert!(gone(&name, ObjectType::Mutex));
}

/// A file of a mutex's name that copydata did not make (zero bytes are a
/// private, non-robust glibc mutex) is refused, not used as a mutex whose
/// dead holder would never be noticed.
#[cfg(target_os = "linux")]
#[test]
fn a_file_copydata_did_not_make_is_not_taken_for_a_mutex() {
    use std::os::unix::fs::OpenOptionsExt;
    let name = unique("planted");
    let path = format!("/dev/shm/copydata.mutex.{name}");
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path).unwrap();
    f.set_len(128).unwrap();
    drop(f);
    let opened = Mutex::open_or_create(&name);
    let _ = std::fs::remove_file(&path);
    match opened {
        Err(SyncOpenError::WrongKind { reason, .. }) => assert!(reason.contains("did not make"), "{reason}"),
        other => panic!("a planted file was opened as a mutex: {other:?}"),
    }
}

/// `Shared::open` of a value whose creator is still in its initialiser
/// (which may take any time, or never end) says `NotFound` at once rather
/// than wait for the initialiser's lock.
#[test]
fn opening_a_value_still_being_initialised_does_not_wait_for_its_initialiser() {
    let name = unique("opening");
    let mut creator = Kid::spawn("init-and-die", &[&name]);
    creator.expect("initialising");
    let (tx, rx) = std::sync::mpsc::channel();
    let opener = {
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Shared::<[u64; 2]>::open(&name).map(|_| ()));
        })
    };
    // Generous: a wait behind the initialiser would last until the kill.
    let opened = rx.recv_timeout(Duration::from_secs(20));
    creator.kill();
    opener.join().unwrap();
    // The killed creator's object goes when the objects are listed.
    let _ = copydata::sync::objects();
    match opened {
        Ok(Err(SyncOpenError::NotFound { .. })) => {}
        Ok(other) => panic!("{other:?}"),
        Err(_) => panic!("Shared::open waited for a creator's initialiser"),
    }
}

/// A wait in slices is one wait: a manual-reset event set and reset at once
/// between two slices (here by the check itself, as another process could
/// at that moment) ends it, where a loop of short waits would miss it.
/// An error from the check ends the wait with that error, and the timeout
/// holds.
#[test]
fn a_checked_wait_sees_a_set_between_its_slices() {
    for kind in [EventKind::ManualReset, EventKind::AutoReset] {
        let name = unique("checked");
        let event = Event::open_or_create(&name, kind).unwrap();
        let other = Event::open(&name).unwrap();
        let mut checks = 0;
        let started = Instant::now();
        let waited = event.wait_checked(Some(Duration::from_secs(30)), Duration::from_millis(10), || {
            checks += 1;
            if checks == 2 {
                other.set()?;
                if kind == EventKind::ManualReset {
                    other.reset()?;
                }
            }
            Ok(())
        });
        assert!(waited.is_ok(), "{kind:?}: {waited:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{kind:?}: ended after {:?}", started.elapsed());
        assert_eq!(checks, 2, "{kind:?}: the set was seen after the check that made it");
        // An auto-reset event was taken by the wait; a manual one was reset.
        assert!(matches!(event.wait_timeout(Duration::ZERO), Err(WaitError::TimedOut)), "{kind:?}");
    }

    let name = unique("checked-stop");
    let event = Event::open_or_create(&name, EventKind::ManualReset).unwrap();
    let stopped = event.wait_checked(None, Duration::from_millis(5), || {
        Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped by the caller"))
    });
    assert!(matches!(&stopped, Err(WaitError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted), "{stopped:?}");

    let started = Instant::now();
    let timed_out = event.wait_checked(Some(Duration::from_millis(200)), Duration::from_millis(30), || Ok(()));
    assert!(matches!(timed_out, Err(WaitError::TimedOut)), "{timed_out:?}");
    assert!(started.elapsed() >= Duration::from_millis(200), "timed out after {:?}", started.elapsed());
}
