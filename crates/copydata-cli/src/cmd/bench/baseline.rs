//! The OS baselines (Unix-socket, pipe and TCP-loopback ping-pong) and the
//! floors (spin ping-pong on one shared cache line, memcpy, fill-and-sum).
//!
//! Ping-pong: the client writes a request (an 8-byte length, then the
//! payload, filled once before the run) and waits for an 8-byte reply; the
//! server reads every byte of the request into its own buffer first.

use std::hint::spin_loop;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use copydata::Section;

use super::procs::{Proc, Stdout, child_command};
use super::{Budget, Ctx, Role, Row, Sample, Timings, Transport};

/// The largest request an echo server accepts.
const MAX_REQUEST: u64 = 1 << 30;

/// Where the portable sum adds bytes into `u32` lanes, it adds up this
/// many at a time (255 x 64 Ki cannot overflow a `u32`).
#[cfg(not(target_arch = "x86_64"))]
const CHUNK: usize = 64 * 1024;

pub fn run(row: &Row, ctx: &Ctx) -> anyhow::Result<Sample> {
    let budget = ctx.budget(row);
    match row.transport {
        Transport::UnixSocket => unix(row.payload, budget, ctx),
        Transport::Pipe => pipe(row.payload, budget, ctx),
        Transport::Tcp => tcp(row.payload, budget, ctx),
        Transport::FloorSpinPingPong => spin_floor(budget, ctx),
        Transport::FloorMemcpy => memcpy_floor(row.payload, budget),
        Transport::FloorFillAndSum => fill_and_sum_floor(row.payload, budget),
        other => bail!("{} is not a baseline", other.name()),
    }
}

/// Writes `byte` into every one of the `len` bytes at `dst`: the fill loop
/// of the end-to-end rows and of the fill-and-sum floor.
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes, and nothing else may
/// access them meanwhile.
pub unsafe fn fill_raw(dst: *mut u8, len: usize, byte: u8) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::write_bytes(dst, byte, len) }
}

/// The sum of every byte: the summing loop of the end-to-end rows and of
/// the fill-and-sum floor. Fast enough (SSE2 `psadbw` on x86-64, about
/// 16 bytes a cycle) that it is not what limits either.
pub fn sum_bytes(bytes: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86-64 baseline: every x86-64 CPU has it.
        unsafe { sum_sse2(bytes) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // u32 lanes vectorise well and cannot overflow within one chunk.
        bytes.chunks(CHUNK).map(|c| u64::from(c.iter().map(|&b| u32::from(b)).sum::<u32>())).sum()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn sum_sse2(bytes: &[u8]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi64, _mm_loadu_si128, _mm_sad_epu8, _mm_setzero_si128, _mm_storeu_si128,
    };
    let zero = _mm_setzero_si128();
    let mut acc = [_mm_setzero_si128(); 4];
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        for (k, lane) in acc.iter_mut().enumerate() {
            // SAFETY: `block` has 64 bytes, so bytes 16k..16k+16 are in it;
            // the unaligned load has no alignment requirement.
            let v = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>()) };
            *lane = _mm_add_epi64(*lane, _mm_sad_epu8(v, zero));
        }
    }
    let mut total = blocks.remainder().iter().map(|&b| u64::from(b)).sum::<u64>();
    for lane in acc {
        let mut words = [0u64; 2];
        // SAFETY: `words` is 16 writable bytes; the unaligned store has no
        // alignment requirement.
        unsafe { _mm_storeu_si128(words.as_mut_ptr().cast::<__m128i>(), lane) };
        total += words[0] + words[1];
    }
    total
}

/// A buffer of `len` bytes, every one written.
pub fn filled(len: usize, byte: u8) -> Vec<u8> {
    vec![byte; len]
}

/// `len` bytes set to `byte`, starting at a page boundary. The floors use
/// it: a copy between buffers at different offsets within their pages can
/// be several times slower on some CPUs, which would make the floor depend
/// on where the allocator happened to put them.
pub struct PageBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageBuf {
    const PAGE: usize = 4096;

    pub fn new(len: usize, byte: u8) -> PageBuf {
        let raw = filled(len + Self::PAGE, byte);
        let start = raw.as_ptr().align_offset(Self::PAGE).min(Self::PAGE);
        PageBuf { raw, start, len }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// The client half of a stream ping-pong.
fn ping_pong(mut w: impl Write, mut r: impl Read, payload: usize, budget: Budget) -> anyhow::Result<Timings> {
    let mut request = filled(8 + payload, 0xA5);
    request[..8].copy_from_slice(&(payload as u64).to_le_bytes());
    let mut reply = [0u8; 8];
    let mut t = Timings::new(budget);
    let mut i = 0;
    while !t.done() {
        let start = Instant::now();
        w.write_all(&request).context("sending a request")?;
        w.flush().context("sending a request")?;
        r.read_exact(&mut reply).context("reading a reply")?;
        let took = start.elapsed();
        ensure!(u64::from_le_bytes(reply) == payload as u64, "the server answered {reply:?}");
        if i >= budget.warmup {
            t.push(took);
        }
        i += 1;
    }
    Ok(t)
}

/// The server half: reads every request whole, answers with its length.
fn echo(mut r: impl Read, mut w: impl Write) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => return Ok(()),
            Err(e) => return Err(e).context("reading a request"),
        }
        let len = u64::from_le_bytes(head);
        ensure!(len <= MAX_REQUEST, "a request of {len} bytes is too large");
        let len = len as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        r.read_exact(&mut buf[..len]).context("reading a request")?;
        w.write_all(&(len as u64).to_le_bytes()).and_then(|()| w.flush()).context("replying")?;
    }
}

/// `__bench-child unix|tcp|pipe`: the echo server.
pub fn echo_server(role: Role, name: &str) -> anyhow::Result<()> {
    match role {
        #[cfg(unix)]
        Role::Unix => {
            let stream =
                std::os::unix::net::UnixStream::connect(name).with_context(|| format!("connecting to {name}"))?;
            say_ready()?;
            echo(stream.try_clone()?, stream)
        }
        Role::Tcp => {
            let stream = std::net::TcpStream::connect(("127.0.0.1", name.parse::<u16>().context("the port")?))
                .context("connecting to the bench")?;
            stream.set_nodelay(true)?;
            say_ready()?;
            echo(stream.try_clone()?, stream)
        }
        Role::Pipe => echo(std::io::stdin().lock(), std::io::stdout().lock()),
        other => bail!("{other:?} is not an echo server"),
    }
}

fn say_ready() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|()| out.flush()).context("writing to the bench")
}

/// Removes a file (the Unix socket) when dropped.
#[cfg(unix)]
struct RemoveOnDrop(std::path::PathBuf);

#[cfg(unix)]
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(unix)]
fn unix(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let path = std::env::temp_dir().join(format!("{}.sock", super::unique_name("uds")));
    let listener =
        std::os::unix::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    let cleanup = RemoveOnDrop(path.clone());
    let mut cmd = child_command("unix", ctx.cpus.server)?;
    cmd.arg("--name").arg(&path);
    let mut server = Proc::start(cmd, "the Unix-socket server", &[], Stdout::Lines)?;
    server.ready()?;
    let (stream, _) = listener.accept().context("accepting the server's connection")?;
    // Connected: the name is not needed any more.
    drop(cleanup);
    let t = ping_pong(stream.try_clone()?, &stream, payload, budget).map_err(|e| server.blame(e))?;
    drop(stream);
    server.finish()?;
    t.sample()
}

#[cfg(not(unix))]
fn unix(_payload: usize, _budget: Budget, _ctx: &Ctx) -> anyhow::Result<Sample> {
    Err(super::Unavailable("Unix sockets are not available on this platform".into()).into())
}

fn tcp(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding a loopback port")?;
    let port = listener.local_addr()?.port();
    let mut cmd = child_command("tcp", ctx.cpus.server)?;
    cmd.args(["--name", &port.to_string()]);
    let mut server = Proc::start(cmd, "the TCP server", &[], Stdout::Lines)?;
    server.ready()?;
    let (stream, _) = listener.accept().context("accepting the server's connection")?;
    stream.set_nodelay(true)?;
    let t = ping_pong(stream.try_clone()?, &stream, payload, budget).map_err(|e| server.blame(e))?;
    drop(stream);
    server.finish()?;
    t.sample()
}

fn pipe(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    let mut server = Proc::start(child_command("pipe", ctx.cpus.server)?, "the pipe server", &[], Stdout::Raw)?;
    let w = server.take_stdin().context("the server's input")?;
    let r = server.take_stdout().context("the server's output")?;
    let t = ping_pong(w, r, payload, budget).map_err(|e| server.blame(e))?;
    server.finish()?;
    t.sample()
}

/// The spin floor's "stop" value.
const SPIN_STOP: u64 = u64::MAX;

/// How long one spin round trip may take before the partner is declared
/// gone.
const SPIN_LIMIT: Duration = Duration::from_secs(5);

fn spin_floor(budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
    with_spin_partner(ctx, |round_trip| {
        let mut t = Timings::new(budget);
        let mut i = 0;
        while !t.done() {
            let took = round_trip()?;
            if i >= budget.warmup {
                t.push(took);
            }
            i += 1;
        }
        t.sample()
    })
}

/// `iters` round trips on the spin floor's line (after 10 untimed ones),
/// each after `between` ran untimed (`copydata bench --pauses`).
pub fn spin_floor_after(iters: usize, ctx: &Ctx, mut between: impl FnMut()) -> anyhow::Result<Vec<Duration>> {
    with_spin_partner(ctx, |round_trip| {
        let mut ns = Vec::with_capacity(iters);
        for i in 0..iters + 10 {
            between();
            let took = round_trip()?;
            if i >= 10 {
                ns.push(took);
            }
        }
        Ok(ns)
    })
}

/// Starts the spin partner on one shared cache line and hands `run` a
/// function that makes one round trip and returns its time; stops the
/// partner afterwards.
fn with_spin_partner<T>(
    ctx: &Ctx,
    run: impl FnOnce(&mut dyn FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let section = Section::anonymous(4096)?;
    // One cache line (the mapping is page-aligned); the counter is its first
    // word.
    let view = section.map_mut(0, 64)?;
    let word = view.atomic_u64(0)?;
    word.store(0, Ordering::SeqCst);
    let cmd = child_command("spin", ctx.cpus.server)?;
    let mut partner = Proc::start(cmd, "the spin partner", &[&section], Stdout::Lines)?;
    partner.ready()?;
    let mut seq = 0u64;
    let mut round_trip = || {
        let start = Instant::now();
        word.store(seq + 1, Ordering::Release);
        let mut spins = 0u32;
        while word.load(Ordering::Acquire) != seq + 2 {
            spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 20) && start.elapsed() > SPIN_LIMIT {
                anyhow::bail!("no answer within {SPIN_LIMIT:?}");
            }
        }
        seq += 2;
        Ok(start.elapsed())
    };
    let out = run(&mut round_trip);
    word.store(SPIN_STOP, Ordering::Release);
    match out {
        Ok(out) => {
            partner.finish()?;
            Ok(out)
        }
        Err(e) => Err(partner.blame(e)),
    }
}

/// `__bench-child spin`: answers every odd counter value with the next one.
pub fn spin_partner() -> anyhow::Result<()> {
    let sections = copydata::inherited_sections()?;
    let section = sections.first().context("no section was inherited")?;
    let view = section.map_mut(0, 64)?;
    let word = view.atomic_u64(0)?;
    say_ready()?;
    let mut spins = 0u32;
    loop {
        let v = word.load(Ordering::Acquire);
        if v == SPIN_STOP {
            return Ok(());
        }
        if v % 2 == 1 {
            word.store(v + 1, Ordering::Release);
            continue;
        }
        spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 16) && super::stopping() {
            return Ok(());
        }
    }
}

fn memcpy_floor(payload: usize, budget: Budget) -> anyhow::Result<Sample> {
    let src = PageBuf::new(payload, 0x5A);
    let mut dst = PageBuf::new(payload, 0);
    let mut t = Timings::new(budget);
    let mut i = 0;
    while !t.done() {
        let start = Instant::now();
        dst.bytes_mut().copy_from_slice(src.bytes());
        std::hint::black_box(dst.bytes_mut().as_mut_ptr());
        let took = start.elapsed();
        if i >= budget.warmup {
            t.push(took);
        }
        i += 1;
    }
    t.sample()
}

fn fill_and_sum_floor(payload: usize, budget: Budget) -> anyhow::Result<Sample> {
    let mut buf = PageBuf::new(payload, 0);
    let mut t = Timings::new(budget);
    let mut i = 0usize;
    while !t.done() {
        let byte = (i % 251) as u8 + 1;
        let start = Instant::now();
        let bytes = buf.bytes_mut();
        // SAFETY: `bytes` is this function's own buffer of `payload` bytes,
        // borrowed by nothing else during the call.
        unsafe { fill_raw(bytes.as_mut_ptr(), payload, byte) };
        let sum = sum_bytes(std::hint::black_box(buf.bytes()));
        let took = start.elapsed();
        ensure!(sum == payload as u64 * u64::from(byte), "the sum is wrong");
        if i >= budget.warmup {
            t.push(took);
        }
        i += 1;
    }
    t.sample()
}
