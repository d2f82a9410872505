//! An echo mailbox, and a sender that gives up after a timeout.
//!
//! ```text
//! cargo run -p copydata --example echo
//! ```
//!
//! The parent binds a mailbox that sends every message back, then starts a
//! sender (itself again, in the `sender` role). The sender's first message
//! comes back at once; the second one asks the handler to take its time
//! and the sender stops waiting after 200 ms, as `SendMessageTimeoutW` does.

use std::process::Command;
use std::time::Duration;

use copydata::{Mailbox, Reply, SendError, Sender};

const ECHO: u64 = 1;
const SLOW_ECHO: u64 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, name] = &args[..]
        && role == "sender"
    {
        // FindWindowW (by the mailbox's name) and a connection; sends reuse it.
        let mut mailbox = Sender::connect(name)?;
        // SendMessageTimeoutW(WM_COPYDATA, COPYDATASTRUCT { dwData: ECHO, .. }):
        // the tag is dwData, the reply code the LRESULT, plus reply bytes.
        let reply = mailbox.send_timeout(ECHO, b"hello", Duration::from_secs(5))?;
        println!("sender: reply {} {:?}", reply.code, String::from_utf8_lossy(&reply.data));
        match mailbox.send_timeout(SLOW_ECHO, b"are you there?", Duration::from_millis(200)) {
            // Like ERROR_TIMEOUT: the message may still be handled, but its
            // late reply is dropped, never taken for a later send's reply.
            Err(e @ SendError::TimedOut { .. }) => println!("sender: {e}"),
            other => return Err(format!("expected a timeout, got {other:?}").into()),
        }
        return Ok(());
    }

    let name = format!("copydata-example-echo-{}", std::process::id());
    // RegisterClassW + CreateWindowExW(HWND_MESSAGE) on Windows; a Unix
    // socket (socket + bind + listen) in the user's runtime directory on Linux.
    let mailbox = Mailbox::bind(&name)?;
    // The window procedure's WM_COPYDATA case, run on a background thread
    // (the GetMessageW / DispatchMessageW loop) until `server` is dropped.
    let server = mailbox.serve(|msg| {
        if msg.tag() == SLOW_ECHO {
            std::thread::sleep(Duration::from_secs(1));
        }
        Reply::new(0, msg.payload().to_vec())
    });
    let status = Command::new(std::env::current_exe()?).args(["sender", &name]).status()?;
    drop(server);
    if !status.success() {
        return Err(format!("the sender failed: {status}").into());
    }
    Ok(())
}
