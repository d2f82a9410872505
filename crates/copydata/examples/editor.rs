//! A tiny "editor" that runs once per user, as editors and browsers do.
//!
//! ```text
//! cargo run -p copydata --example editor -- notes.txt      # opens the editor
//! cargo run -p copydata --example editor -- "a b.txt" c.rs  # in another shell:
//!                                                           # the running editor opens them
//! cargo run -p copydata --example editor -- --quit          # closes it
//! ```
//!
//! The first launch becomes the primary (on Windows: it would own the main
//! window). A later launch finds it (the `FindWindow` of Win32), hands it its
//! file names and working directory (the `SendMessage(WM_COPYDATA)`), prints
//! the primary's answer and exits with its code.

use std::path::Path;

use copydata::instance::{Answer, InstanceOptions, SingleInstance};

fn open(files: &[std::ffi::OsString], cwd: Option<&Path>) -> usize {
    for f in files {
        // Relative names are relative to the launch's directory, not ours.
        let path = cwd.map_or_else(|| Path::new(f).to_path_buf(), |d| d.join(f));
        println!("opening {}", path.display());
    }
    files.len()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The id would be the application's name; tests give each run its own.
    let app = std::env::var("EDITOR_APP_ID").unwrap_or_else(|_| "copydata-example-editor".into());
    match SingleInstance::acquire(&app, &InstanceOptions::new())? {
        SingleInstance::Primary(primary) => {
            let me = std::process::id();
            println!("editor {me}: running");
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            open(&args, None);
            for launch in primary.incoming() {
                if launch.args().iter().any(|a| a == "--quit") {
                    launch.answer(Answer::new(0, format!("editor {me} closed")))?;
                    break;
                }
                let n = open(launch.args(), launch.cwd());
                // On Windows a GUI editor would now bring its window to the
                // front: the launch has allowed it (AllowSetForegroundWindow).
                launch.answer(Answer::new(0, format!("opened {n} file(s) in editor {me}")))?;
            }
            println!("editor {me}: closed");
        }
        SingleInstance::Secondary(secondary) => {
            println!("{}", String::from_utf8_lossy(secondary.data()));
            std::process::exit(secondary.code());
        }
    }
    Ok(())
}
