//! A counter shared by several processes, incremented under a lock.
//!
//! ```text
//! cargo run -p copydata --example counter
//! cargo run -p copydata --example counter -- --hold    # then: copydata shared get NAME
//! ```
//!
//! The parent opens a named `u64` and starts four workers (itself again, in
//! the `worker` role) that each add 1,000 to it under its cross-process lock:
//! the total is always 4,000. The counter uses the type tag of the
//! `copydata shared` command, so while it lives `copydata shared get NAME`
//! and `copydata shared incr NAME` work on it too: with `--hold` the parent
//! prints its name and keeps it until Enter is pressed.

use std::process::Command;

use copydata::sync::Shared;

const WORKERS: u64 = 4;
const TIMES: u64 = 1000;
/// The type tag `copydata shared incr` uses for its counters.
const TAG: &str = "copydata.counter.u64";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, name] = &args[..]
        && role == "worker"
    {
        // CreateFileMappingW + CreateMutexW with names derived from NAME on
        // Windows; shm_open + mmap of an object holding a robust,
        // PTHREAD_PROCESS_SHARED pthread mutex on Linux.
        let counter = Shared::<u64>::open_tagged(name, TAG)?;
        for _ in 0..TIMES {
            // WaitForSingleObject(mutex) / pthread_mutex_lock; released when
            // the guard is dropped (ReleaseMutex / pthread_mutex_unlock).
            let mut n = counter.lock()?;
            if n.owner_died() {
                // WAIT_ABANDONED / EOWNERDEAD: a holder died mid-update. A
                // `+= 1` is never half done, so the value is fine as it is.
                n.mark_consistent();
            }
            *n += 1;
        }
        return Ok(());
    }

    let name = format!("copydata-example-counter-{}", std::process::id());
    // The first process to get here runs the initialiser, exactly once.
    let counter = Shared::<u64>::open_or_create_tagged(&name, TAG, || 0)?;
    let exe = std::env::current_exe()?;
    let workers: Vec<_> =
        (0..WORKERS).map(|_| Command::new(&exe).args(["worker", &name]).spawn()).collect::<Result<_, _>>()?;
    for mut worker in workers {
        if !worker.wait()?.success() {
            return Err("a worker failed".into());
        }
    }
    println!("{WORKERS} processes x {TIMES} increments = {}", *counter.lock()?);
    if args.iter().any(|a| a == "--hold") {
        println!("holding {name}: `copydata shared get {name}` reads it; press Enter to end");
        std::io::stdin().read_line(&mut String::new())?;
    }
    Ok(())
}
