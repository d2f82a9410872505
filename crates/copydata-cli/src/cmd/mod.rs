//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod docs;
pub mod instance;
pub mod listen;
pub mod ls;
pub mod section;
pub mod send;
pub mod sync;

/// The bytes of a DATA argument (`send`, `section write`), exactly as given:
/// on Unix any bytes; on Windows the argument as UTF-8, which any valid
/// UTF-16 argument has (one with an unpaired surrogate is refused: such
/// bytes go through a file or standard input).
pub fn arg_bytes(arg: &std::ffi::OsStr) -> Result<Vec<u8>, crate::exit::Usage> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(arg.as_bytes().to_vec())
    }
    #[cfg(not(unix))]
    {
        arg.to_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| {
            crate::exit::Usage(
                "DATA is not valid Unicode: give such bytes with --file PATH or - (standard input)".into(),
            )
        })
    }
}
