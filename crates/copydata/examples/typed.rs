//! Typed request/reply between two processes (cargo feature `serde`).
//!
//! ```text
//! cargo run -p copydata --features serde --example typed
//! ```
//!
//! The parent binds a mailbox (as a Win32 server would create its window)
//! and serves it with a typed handler, then runs itself again as a child.
//! The child finds the mailbox by name (`FindWindow`) and sends Rust values
//! (`SendMessage(WM_COPYDATA)`, but with serde doing the packing a C program
//! does by hand into `COPYDATASTRUCT::lpData`); each reply is a value beside
//! a code (the `LRESULT`). The last request carries a section beside the
//! value (a frame of pixels the parent reads in place), which the value
//! names by its index.

use std::process::Command;
use std::time::Duration;

use copydata::typed::{TypedReply, TypedSender};
use copydata::{Mailbox, Section};
use serde::{Deserialize, Serialize};

/// What the child asks; an enum names the kind of request (the tag of a
/// raw message stays `copydata::typed::TAG`).
#[derive(Serialize, Deserialize, Debug)]
enum Ask {
    Resize {
        width: u32,
        height: u32,
    },
    SetTitle(String),
    /// A frame of `len` bytes in the message's section number `section`.
    Frame {
        section: usize,
        len: usize,
    },
}

/// What the parent answers.
#[derive(Serialize, Deserialize, Debug)]
enum Answer {
    Area(u64),
    Title {
        chars: usize,
    },
    /// The sum of the frame's bytes.
    FrameSum(u64),
    NoFrame,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, name] = &args[..]
        && flag == "--child"
    {
        // The child: connect once, send two requests, print the replies.
        let mut sender = TypedSender::<Ask, Answer>::connect(name)?;
        for ask in [Ask::Resize { width: 640, height: 480 }, Ask::SetTitle("Привет, мир".into())] {
            let reply = sender.send_timeout(&ask, Duration::from_secs(10))?;
            println!("child: {ask:?} -> code {}, {:?}", reply.code, reply.value);
        }
        // A frame goes beside the value, in shared memory: 64 KiB of pixels
        // 0, 1, 2, ... (mod 256), read in place by the parent.
        let frame = Section::anonymous(64 << 10)?;
        let pixels: Vec<u8> = (0..64 << 10).map(|i| i as u8).collect();
        frame.map_mut(0, pixels.len())?.write_at(0, &pixels)?;
        let ask = Ask::Frame { section: 0, len: pixels.len() };
        let reply = sender.send_with_sections(&ask, &[&frame], Some(Duration::from_secs(10)))?;
        println!("child: {ask:?} -> code {}, {:?}", reply.code, reply.value);
        return Ok(());
    }
    // The parent: a name of its own (a real program would use a fixed one).
    let name = format!("copydata-demo-typed-{}", std::process::id());
    let server = Mailbox::bind(&name)?.serve_typed(|ask: Ask, message| {
        println!("parent: {ask:?} from pid {}", message.sender().pid);
        match ask {
            Ask::Resize { width, height } => TypedReply::from(Answer::Area(u64::from(width) * u64::from(height))),
            Ask::SetTitle(title) => TypedReply::new(1, Answer::Title { chars: title.chars().count() }),
            Ask::Frame { section, len } => match message.sections().get(section).map(|s| s.map(0, len)) {
                Some(Ok(view)) => TypedReply::from(Answer::FrameSum(view.to_vec().iter().map(|&b| u64::from(b)).sum())),
                _ => TypedReply::new(-1, Answer::NoFrame),
            },
        }
    });
    let status = Command::new(std::env::current_exe()?).args(["--child", &name]).status()?;
    drop(server); // unbinds the mailbox
    if !status.success() {
        return Err(format!("the child failed: {status}").into());
    }
    Ok(())
}
