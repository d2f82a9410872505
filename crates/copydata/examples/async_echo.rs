//! An echo mailbox and its client, both async (tokio), in two processes.
//!
//! ```text
//! cargo run -p copydata --features tokio --example async_echo
//! ```
//!
//! The server binds a mailbox (Win32: creates the window a `FindWindow`
//! would find) and answers each request as a stream item; the client, a
//! second copy of this program, awaits each reply (`SendMessageTimeout`
//! without blocking a thread: Linux waits in the runtime's epoll), then
//! sends one payload as a zero-copy loan.

use std::time::Duration;

use copydata::Reply;
use copydata::tokio::{AsyncMailbox, AsyncSender};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, name] = &args[..]
        && role == "client"
    {
        return client(name).await;
    }
    // A name per run, so two runs do not meet.
    let name = format!("copydata-example-echo-{}", std::process::id());
    let mut inbox = AsyncMailbox::bind(&name)?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?).args(["client", &name]).spawn()?;
    // Serve until the client is done: each request is answered from a task,
    // so a slow answer would not hold up the stream.
    loop {
        tokio::select! {
            Some(request) = inbox.recv() => {
                tokio::spawn(async move {
                    let text = String::from_utf8_lossy(request.payload()).to_uppercase();
                    let code = request.tag() as i64;
                    let _ = request.reply(Reply::new(code, text.into_bytes()));
                });
            }
            status = child.wait() => {
                println!("server: client exited with {}", status?);
                return Ok(());
            }
        }
    }
}

async fn client(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut sender = AsyncSender::connect(name).await?;
    for (tag, word) in ["hello", "async", "copydata"].iter().enumerate() {
        // Dropping this future (a timeout, a `select!`) would be safe: the
        // connection is then dropped and the late reply never delivered.
        let reply = sender.send_timeout(tag as u64, word.as_bytes(), Duration::from_secs(5)).await?;
        println!("client: {word} -> {} (code {})", String::from_utf8_lossy(&reply.data), reply.code);
    }
    // A zero-copy loan: written in place in shared memory, then sent.
    let mut loan = sender.loan(4).await?;
    loan.write_at(0, b"loan")?;
    let reply = loan.send_timeout(3, Duration::from_secs(5)).await?;
    println!("client: a loan of 4 bytes -> {} (code {})", String::from_utf8_lossy(&reply.data), reply.code);
    Ok(())
}
