//! Fuzzing the decoders that read what another process wrote, with a small
//! mutation engine on stable Rust (random bytes, bit flips, splices,
//! insertions and deletions, boundary values, over seeds that decode): not
//! coverage-guided, but deterministic per seed and fast enough for tens of
//! millions of executions.
//!
//! - `fuzz_targets_survive_a_short_run` (every test run): the seeds and
//!   20,000 mutations per target.
//! - `fuzz_campaign` (ignored; `scripts/campaign.sh` runs it):
//!   `COPYDATA_FUZZ_EXECS` executions per target (default 10 million) or
//!   until `COPYDATA_FUZZ_SECONDS` per target; prints one line per target.
//!   Inputs that panic are saved under `target/fuzz-crashes/`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

type Target = (&'static str, fn(&[u8]), fn() -> Vec<Vec<u8>>);

fn targets() -> Vec<Target> {
    vec![
        ("launch-record", copydata::fuzz::launch_record, launch_seeds),
        ("inherit-token", copydata::fuzz::inherit_token, token_seeds),
        ("ring-records", copydata::fuzz::ring_records, ring_seeds),
        ("windows-envelopes", copydata::fuzz::windows_envelopes, envelope_seeds),
    ]
}

fn launch_seeds() -> Vec<Vec<u8>> {
    // Records as a secondary sends them (fixed-width little-endian, see
    // src/instance/wire.rs). Strings of an even length of bytes are valid
    // on both platforms (bytes on Unix, UTF-16 units on Windows).
    let kind = if cfg!(windows) { 2 } else { 1 };
    let string = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s);
    };
    let mut full = b"CDL1".to_vec();
    full.extend_from_slice(&[kind, 1, 0, 0]);
    full.extend_from_slice(&2u32.to_le_bytes());
    string(&mut full, b"ab");
    string(&mut full, b"x|");
    string(&mut full, b"/t");
    full.extend_from_slice(&1u32.to_le_bytes());
    string(&mut full, b"KE");
    string(&mut full, b"va");
    full.extend_from_slice(&3u64.to_le_bytes());
    full.extend_from_slice(b"abc");
    let mut empty = b"CDL1".to_vec();
    empty.extend_from_slice(&[kind, 0, 0, 0]);
    empty.extend_from_slice(&[0; 16]);
    vec![full, empty, Vec::new()]
}

fn token_seeds() -> Vec<Vec<u8>> {
    ["1;5:6:7", "1;5:6:7,8:9:w:a.b-c", "1;", "1;4096:65536:r:name", "1;10:2049:1234567"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

fn ring_seeds() -> Vec<Vec<u8>> {
    // One record description: kind, user flags, len (8), word (8), inline
    // length (2), damage flag, damage offset; then the inline bytes.
    let record = |kind: u8, user: u8, len: u64, inline: &[u8], damage: u8| {
        let mut r = vec![kind, user];
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(&7u64.to_le_bytes());
        r.extend_from_slice(&(inline.len() as u16).to_le_bytes());
        r.extend_from_slice(&[damage, 3]);
        r.extend_from_slice(inline);
        r
    };
    let mut several = record(1, 0, 5, b"hello", 0);
    several.extend(record(2, 0, 0, b"", 0));
    several.extend(record(1, 1, 0, &[16, 0, 0, 0, 1, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9], 0));
    several.extend(record(1, 2, 4096, &[0; 24], 1));
    vec![several, record(1, 0, 100, &[7; 100], 0), record(3, 0, 3, b"abc", 1)]
}

fn envelope_seeds() -> Vec<Vec<u8>> {
    let words = |magic: &[u8], u32s: &[u32], u64s: &[u64]| {
        let mut v = magic.to_vec();
        u32s.iter().for_each(|w| v.extend_from_slice(&w.to_le_bytes()));
        u64s.iter().for_each(|w| v.extend_from_slice(&w.to_le_bytes()));
        v
    };
    let hello = words(b"CDH2", &[3, 0, 0], &[0x1234_5678]);
    let mut answer = words(b"CDA2", &[0, 3, 1], &[0x1234_5678, 4 << 30]);
    answer.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]);
    for v in [4u64, 8, 12, 16] {
        answer.extend_from_slice(&v.to_le_bytes());
    }
    let mut refusal = words(b"CDA2", &[1, 2, 0], &[7, 0]);
    refusal.extend_from_slice(&[0; 8]);
    refusal.extend_from_slice(b"the mailbox accepts only its own user");
    // Attachments: a shape byte (bit 0: a buffer; the rest: sections), the
    // set number, then value, length, flags, name length, name.
    let mut attach = vec![0b11u8];
    attach.extend_from_slice(&1u64.to_le_bytes());
    for (value, flags, name) in [(8u64, 1u32, &b""[..]), (12, 2, b"frames")] {
        attach.extend_from_slice(&value.to_le_bytes());
        attach.extend_from_slice(&4096u64.to_le_bytes());
        attach.extend_from_slice(&flags.to_le_bytes());
        attach.extend_from_slice(&(name.len() as u32).to_le_bytes());
        attach.extend_from_slice(name);
    }
    vec![hello, answer, refusal, attach]
}

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: [u64; 10] = [0, 1, 2, 7, 8, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// One input: a seed, mutated a few times (or, now and then, random bytes).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(16) == 0 {
        let len = rng.below(300);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => v.insert(at, rng.next() as u8),
            3 if at < v.len() => {
                let n = rng.below(v.len() - at + 1);
                v.drain(at..at + n);
            }
            4 => {
                // A boundary value, as 4 or 8 little-endian bytes.
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let bytes =
                    if rng.below(2) == 0 { x.to_le_bytes().to_vec() } else { (x as u32).to_le_bytes().to_vec() };
                for (k, b) in bytes.into_iter().enumerate() {
                    if at + k < v.len() {
                        v[at + k] = b;
                    }
                }
            }
            5 => {
                // Splice in part of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let n = rng.below(other.len() - from + 1);
                v.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => v.truncate(at),
        }
    }
    v
}

/// Runs `target` on `execs` inputs (or until `limit`); returns the number
/// run and the inputs that panicked.
fn run(target: fn(&[u8]), seeds: &[Vec<u8>], seed: u64, execs: u64, limit: Duration) -> (u64, Vec<Vec<u8>>) {
    let mut rng = Rng(seed | 1);
    let mut crashes = Vec::new();
    let started = Instant::now();
    let mut done = 0;
    for s in seeds {
        if catch_unwind(AssertUnwindSafe(|| target(s))).is_err() {
            crashes.push(s.clone());
        }
        done += 1;
    }
    while done < execs {
        let input = mutate(&mut rng, seeds);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            crashes.push(input);
        }
        done += 1;
        if done % 4096 == 0 && started.elapsed() > limit {
            break;
        }
    }
    (done, crashes)
}

#[test]
fn fuzz_targets_survive_a_short_run() {
    for (name, target, seeds) in targets() {
        let (done, crashes) = run(target, &seeds(), 0x5eed, 20_000, Duration::from_secs(60));
        assert!(crashes.is_empty(), "{name}: {} of {done} inputs panicked, e.g. {:?}", crashes.len(), crashes[0]);
    }
}

#[test]
#[ignore = "long: run by scripts/campaign.sh"]
fn fuzz_campaign() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let execs = env("COPYDATA_FUZZ_EXECS", 10_000_000);
    let limit = Duration::from_secs(env("COPYDATA_FUZZ_SECONDS", 24 * 3600));
    let seed = env("COPYDATA_FUZZ_SEED", 0x0c0f_fee5);
    // Panics are counted, not printed one by one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for (name, target, seeds) in targets() {
        let started = Instant::now();
        let (done, crashes) = run(target, &seeds(), seed, execs, limit);
        println!("FUZZ {name}: {done} execs in {:.0?}, {} crashes (seed {seed:#x})", started.elapsed(), crashes.len());
        if !crashes.is_empty() {
            failed = true;
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes").join(name);
            let _ = std::fs::create_dir_all(&dir);
            for (i, c) in crashes.iter().take(20).enumerate() {
                let _ = std::fs::write(dir.join(format!("crash-{i}")), c);
            }
        }
    }
    let _ = std::panic::take_hook();
    assert!(!failed, "some inputs panicked (saved under target/fuzz-crashes/)");
}
