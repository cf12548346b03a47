//! The modules of the `moat render` and `moat run` commands and of the `kubectl moat` plugin (the
//! other commands live with what they drive: `moat probe` in [`crate::probe`], `moat agent` in
//! [`crate::agent`]).

pub mod plugin;
pub mod render;
pub mod run;
