//! One module per subcommand.

pub mod demo;
pub mod ls;
pub mod section;
