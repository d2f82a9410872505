//! The peer libraries, built with `--features peers` (Linux): ipc-channel
//! request/reply over its channels and iceoryx2 request-response with a
//! busy-polling client and server, each between two processes. The server
//! reads every byte of each request and replies with their sum.

/// Whether this build has the peer rows.
pub const BUILT: bool = cfg!(all(feature = "peers", target_os = "linux"));

/// Why `--peers` cannot run.
pub const NOT_BUILT: &str = if cfg!(target_os = "linux") {
    "--peers needs a build with the `peers` feature: cargo run --release -p copydata-cli --features peers -- bench --peers"
} else {
    "--peers is supported on Linux only"
};

#[cfg(all(feature = "peers", target_os = "linux"))]
pub use imp::{run, serve};

#[cfg(not(all(feature = "peers", target_os = "linux")))]
use super::{Ctx, Role, Row, Sample};

#[cfg(not(all(feature = "peers", target_os = "linux")))]
pub fn run(_row: &Row, _ctx: &Ctx) -> anyhow::Result<Sample> {
    Err(super::Unavailable(NOT_BUILT.into()).into())
}

#[cfg(not(all(feature = "peers", target_os = "linux")))]
pub fn serve(_role: Role, _name: &str) -> anyhow::Result<()> {
    anyhow::bail!(NOT_BUILT)
}

#[cfg(all(feature = "peers", target_os = "linux"))]
mod imp {
    use std::hint::spin_loop;
    use std::time::{Duration, Instant};

    use anyhow::{Context, anyhow, bail, ensure};
    use iceoryx2::prelude::*;
    use ipc_channel::ipc::{self as ipcc, IpcOneShotServer, IpcReceiver, IpcSender};

    use super::super::baseline::{filled, sum_bytes};
    use super::super::procs::{Proc, Stdout, child_command};
    use super::super::{Budget, Ctx, Role, Row, Sample, Timings, Transport, stopping, unique_name};

    /// The byte every request is filled with.
    const FILL: u8 = 0x3C;

    /// How long one round trip may take before the server is declared gone.
    const LIMIT: Duration = Duration::from_secs(10);

    /// What the ipc-channel server hands back: its request sender and its
    /// reply receiver.
    type Bootstrap = (IpcSender<Vec<u8>>, IpcReceiver<u64>);

    pub fn run(row: &Row, ctx: &Ctx) -> anyhow::Result<Sample> {
        let budget = ctx.budget(row);
        match row.transport {
            Transport::IpcChannel => ipc_channel_row(row.payload, budget, ctx),
            Transport::Iceoryx2 => iceoryx2_row(row.payload, budget, ctx),
            other => bail!("{} is not a peer", other.name()),
        }
    }

    pub fn serve(role: Role, name: &str) -> anyhow::Result<()> {
        match role {
            Role::IpcChannel => ipc_channel_server(name),
            Role::Iceoryx2 => iceoryx2_server(name),
            other => bail!("{other:?} is not a peer server"),
        }
    }

    fn expected(payload: usize) -> u64 {
        payload as u64 * u64::from(FILL)
    }

    fn ipc_channel_row(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
        let (one_shot, name) = IpcOneShotServer::<Bootstrap>::new().context("creating an ipc-channel server")?;
        let mut cmd = child_command("ipc-channel", ctx.cpus.server)?;
        cmd.args(["--name", &name]);
        let server = Proc::start(cmd, "the ipc-channel server", &[], Stdout::Lines)?;
        // accept() blocks until the child connects; if it dies first, the
        // watchdog's kill cannot unblock it, so accept on a thread.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(one_shot.accept().map_err(|e| anyhow!("{e:?}")));
        });
        let (_, (requests, replies)) = rx
            .recv_timeout(super::super::procs::CHILD_TIMEOUT)
            .map_err(|_| server.blame(anyhow!("the server did not connect")))?
            .map_err(|e| server.blame(e.context("accepting the server's connection")))?;
        let request = filled(payload, FILL);
        let mut t = Timings::new(budget);
        let mut i = 0;
        while !t.done() {
            let start = Instant::now();
            requests.send(request.clone()).map_err(|e| server.blame(anyhow!("sending: {e:?}")))?;
            let sum = replies.recv().map_err(|e| server.blame(anyhow!("receiving the reply: {e:?}")))?;
            let took = start.elapsed();
            ensure!(sum == expected(payload), "the server summed {sum}");
            if i >= budget.warmup {
                t.push(took);
            }
            i += 1;
        }
        drop(requests);
        server.finish()?;
        t.sample()
    }

    fn ipc_channel_server(name: &str) -> anyhow::Result<()> {
        let (req_tx, req_rx) = ipcc::channel::<Vec<u8>>()?;
        let (rep_tx, rep_rx) = ipcc::channel::<u64>()?;
        let bootstrap = IpcSender::<Bootstrap>::connect(name.to_string()).context("connecting to the bench")?;
        bootstrap.send((req_tx, rep_rx)).map_err(|e| anyhow!("sending the channels: {e:?}"))?;
        // Ends when the bench drops its request sender.
        while let Ok(request) = req_rx.recv() {
            rep_tx.send(sum_bytes(&request)).map_err(|e| anyhow!("replying: {e:?}"))?;
        }
        Ok(())
    }

    fn service_name(name: &str) -> anyhow::Result<ServiceName> {
        name.try_into().map_err(|e| anyhow!("service name {name:?}: {e:?}"))
    }

    /// iceoryx2's own objects in `/dev/shm` (its global management segment
    /// stays after its last node is gone).
    fn iceoryx2_objects() -> Vec<std::ffi::OsString> {
        std::fs::read_dir("/dev/shm")
            .map(|d| d.flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("iox2_")).collect())
            .unwrap_or_default()
    }

    fn iceoryx2_row(payload: usize, budget: Budget, ctx: &Ctx) -> anyhow::Result<Sample> {
        set_log_level(LogLevel::Error);
        let before = iceoryx2_objects();
        let name = unique_name("iox");
        let mut cmd = child_command("iceoryx2", ctx.cpus.server)?;
        cmd.args(["--name", &name, "--payload", &payload.to_string()]);
        let mut server = Proc::start(cmd, "the iceoryx2 server", &[], Stdout::Lines)?;
        server.ready()?;
        let t = iceoryx2_client(&name, payload, budget).map_err(|e| server.blame(e));
        let finished = server.finish();
        // Leave /dev/shm as it was: remove what this row's nodes left there
        // (never objects that were there before, another program's).
        for object in iceoryx2_objects() {
            if !before.contains(&object) {
                let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(object));
            }
        }
        let t = t?;
        finished?;
        t.sample()
    }

    fn iceoryx2_client(name: &str, payload: usize, budget: Budget) -> anyhow::Result<Timings> {
        let node = NodeBuilder::new().create::<ipc::Service>().map_err(|e| anyhow!("creating a node: {e:?}"))?;
        let service = node
            .service_builder(&service_name(name)?)
            .request_response::<[u8], u64>()
            .open()
            .map_err(|e| anyhow!("opening the service: {e:?}"))?;
        let client = service
            .client_builder()
            .initial_max_slice_len(payload.max(1))
            .create()
            .map_err(|e| anyhow!("creating a client: {e:?}"))?;
        let request = filled(payload, FILL);
        let round_trip = || -> anyhow::Result<Option<u64>> {
            let start = Instant::now();
            let loan = client.loan_slice_uninit(payload).map_err(|e| anyhow!("loaning a request: {e:?}"))?;
            let pending = loan.write_from_slice(&request).send().map_err(|e| anyhow!("sending: {e:?}"))?;
            if pending.number_of_server_connections() == 0 {
                return Ok(None);
            }
            let mut spins = 0u32;
            loop {
                if let Some(response) = pending.receive().map_err(|e| anyhow!("receiving: {e:?}"))? {
                    return Ok(Some(*response));
                }
                spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1 << 12) && start.elapsed() > LIMIT {
                    bail!("no answer within {LIMIT:?}");
                }
            }
        };
        // The server's port may not be connected to this client yet: a
        // request that reached no server is dropped, so retry until one does.
        let connecting = Instant::now();
        while round_trip()?.is_none() {
            ensure!(connecting.elapsed() < LIMIT, "no server connected within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut t = Timings::new(budget);
        let mut i = 0;
        while !t.done() {
            let start = Instant::now();
            let sum = round_trip()?.context("the server disconnected")?;
            let took = start.elapsed();
            ensure!(sum == expected(payload), "the server summed {sum}");
            if i >= budget.warmup {
                t.push(took);
            }
            i += 1;
        }
        Ok(t)
    }

    fn iceoryx2_server(name: &str) -> anyhow::Result<()> {
        set_log_level(LogLevel::Error);
        let node = NodeBuilder::new().create::<ipc::Service>().map_err(|e| anyhow!("creating a node: {e:?}"))?;
        let service = node
            .service_builder(&service_name(name)?)
            .request_response::<[u8], u64>()
            .create()
            .map_err(|e| anyhow!("creating the service: {e:?}"))?;
        let server = service.server_builder().create().map_err(|e| anyhow!("creating a server: {e:?}"))?;
        println!("ready");
        let mut idle = 0u32;
        loop {
            match server.receive().map_err(|e| anyhow!("receiving: {e:?}"))? {
                Some(request) => {
                    let sum = sum_bytes(request.payload());
                    request.send_copy(sum).map_err(|e| anyhow!("replying: {e:?}"))?;
                    idle = 0;
                }
                None => {
                    spin_loop();
                    idle = idle.wrapping_add(1);
                    if idle.is_multiple_of(1 << 16) && stopping() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
