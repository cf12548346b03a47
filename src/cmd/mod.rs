//! The modules of the `moat render` and `moat run` commands (the other commands live with what
//! they drive: `moat probe` in [`crate::probe`], `moat agent` in [`crate::agent`]).

pub mod render;
pub mod run;
