//! `copydata section create|write|read|rm`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use copydata::{Access, Section, SectionOptions};

use crate::exit::Usage;
use crate::size::parse_size;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a named section (zero-filled). It lives while a process holds
    /// it: with --hold this command holds it until killed or interrupted.
    Create {
        /// The section's name (letters, digits, '.', '_', '-').
        name: String,
        /// The size in bytes, with an optional unit: 4096, 1kB (1000),
        /// 64KiB or 64k (65536), 1MB, 2GiB. kB, MB, GB, TB are powers of
        /// 1000; KiB, MiB, GiB, TiB and a bare k, m, g, t powers of 1024.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Print a ready line and keep the section alive until interrupted or
        /// terminated (which releases it).
        #[arg(long)]
        hold: bool,
        /// Linux: permission bits in octal (default 600: this user only).
        /// Granting group or others access shares the section with other
        /// users, who must open it with --allow-other-owner.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
    },
    /// Write bytes into a live named section.
    Write {
        /// The section's name.
        name: String,
        /// Where to start writing, in bytes (units as for `create --size`:
        /// 4KiB is 4096, 4kB 4000).
        #[arg(long, default_value_t = 0, value_parser = parse_size)]
        offset: u64,
        /// The bytes to write; `-` reads them from standard input. Other
        /// text starting with `-` is written as it is, unless it is an
        /// option (-q, -v, -h): data that may start with `-` goes after
        /// `--`.
        #[arg(conflicts_with = "file", allow_hyphen_values = true, value_parser = clap::value_parser!(std::ffi::OsString))]
        data: Option<std::ffi::OsString>,
        /// Write the contents of this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Accept a section of another user (or one others may write).
        /// Its owner can change it, and shrink it so that this command dies.
        #[arg(long)]
        allow_other_owner: bool,
    },
    /// Read bytes from a live named section (raw, to stdout or a file).
    Read {
        /// The section's name.
        name: String,
        /// Where to start reading, in bytes (units as for `create --size`:
        /// 4KiB is 4096, 4kB 4000).
        #[arg(long, default_value_t = 0, value_parser = parse_size)]
        offset: u64,
        /// How many bytes to read (default: to the end); units as for
        /// `create --size`.
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
        /// Write the bytes to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Accept a section of another user (or one others may write).
        /// Its owner can change it, and shrink it so that this command dies.
        #[arg(long)]
        allow_other_owner: bool,
    },
    /// Remove a section's name (holders keep their memory).
    Rm {
        /// The section's name.
        name: String,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create { name, size, hold, mode } => {
            let options = SectionOptions::new().mode(mode.unwrap_or(0o600));
            create(&name, size, hold, &options)
        }
        Command::Write { name, offset, data, file, allow_other_owner } => {
            write(&name, offset, data, file, &SectionOptions::new().allow_other_owner(allow_other_owner))
        }
        Command::Read { name, offset, len, out, allow_other_owner } => {
            let options = SectionOptions::new().access(Access::ReadOnly).allow_other_owner(allow_other_owner);
            read(&name, offset, len, out, &options)
        }
        Command::Rm { name } => {
            copydata::remove(&name)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An octal mode: 600, 0640, 0o660.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{text:?} is not an octal mode of at most 777")),
    }
}

fn create(name: &str, size: u64, hold: bool, options: &SectionOptions) -> anyhow::Result<ExitCode> {
    let section = Section::create_with(name, size, options)?;
    if hold {
        let (tx, rx) = std::sync::mpsc::channel();
        ctrlc::set_handler(move || {
            let _ = tx.send(());
        })
        .context("installing the interrupt handler")?;
        let mut out = io::stdout();
        writeln!(out, "ready {name} {size}")?;
        out.flush()?;
        // Held until interrupted or terminated: then the section is dropped
        // here, so the name goes at once. (If the process is killed outright,
        // the next create, open or ls reclaims the name.)
        let _ = rx.recv();
        drop(section);
        return Ok(ExitCode::SUCCESS);
    }
    drop(section);
    eprintln!("copydata: created {name:?} ({size} bytes); it is gone again now that no process holds it (use --hold)");
    Ok(ExitCode::SUCCESS)
}

fn write(
    name: &str,
    offset: u64,
    data: Option<std::ffi::OsString>,
    file: Option<PathBuf>,
    options: &SectionOptions,
) -> anyhow::Result<ExitCode> {
    let bytes = match (data.as_deref(), file) {
        (_, Some(path)) => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        (Some(d), None) if d == "-" => {
            let mut buf = Vec::new();
            io::stdin().read_to_end(&mut buf).context("reading standard input")?;
            buf
        }
        (Some(data), None) => super::arg_bytes(data)?,
        (None, None) => {
            return Err(Usage("give DATA, --file PATH or - (standard input)".into()).into());
        }
    };
    // (Opened even for no bytes: a missing section is an error either way.)
    let section = Section::open_with_options(name, options)?;
    if bytes.is_empty() {
        return if offset > section.len() {
            Err(copydata::MapError::OutOfRange { offset, len: 0, size: section.len() })
                .with_context(|| format!("section {name:?}"))
        } else {
            Ok(ExitCode::SUCCESS)
        };
    }
    let view = section.map_mut(offset, bytes.len()).with_context(|| format!("section {name:?}"))?;
    view.write_at(0, &bytes)?;
    Ok(ExitCode::SUCCESS)
}

fn read(
    name: &str,
    offset: u64,
    len: Option<u64>,
    out: Option<PathBuf>,
    options: &SectionOptions,
) -> anyhow::Result<ExitCode> {
    let section = Section::open_with_options(name, options)?;
    let len = match len {
        Some(len) => len,
        None => section.len().saturating_sub(offset),
    };
    // The range is checked (mapped) before the output file is touched: a
    // read that fails leaves an existing file as it was.
    let view = match usize::try_from(len).context("length too large")? {
        0 => None,
        len => Some(section.map(offset, len).with_context(|| format!("section {name:?}"))?),
    };
    if view.is_none() && offset > section.len() {
        return Err(copydata::MapError::OutOfRange { offset, len: 0, size: section.len() })
            .with_context(|| format!("section {name:?}"));
    }
    let mut sink: Box<dyn Write> = match &out {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => Box::new(io::stdout().lock()),
    };
    if let Some(view) = view {
        let len = view.len();
        let mut buf = vec![0; len.min(1 << 20)];
        let mut at = 0;
        while at < len {
            let n = buf.len().min(len - at);
            view.read_at(at, &mut buf[..n])?;
            sink.write_all(&buf[..n])?;
            at += n;
        }
    }
    sink.flush()?;
    Ok(ExitCode::SUCCESS)
}
