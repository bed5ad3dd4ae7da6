//! The HTTP vocabulary the edge, the verbs and the upstream client share:
//! bodies, problem answers, header hygiene, path normalization, and who a
//! client is.

pub mod body;
pub mod client;
pub mod forwarded;
pub mod headers;
pub mod path;
pub mod problem;
