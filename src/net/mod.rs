//! The network core.

pub mod membership;
