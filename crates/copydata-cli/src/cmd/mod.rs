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
