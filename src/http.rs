//! The HTTP vocabulary the edge, the verbs and the upstream client share:
//! bodies, problem answers, header hygiene, path normalization, who a
//! client is, request ids and trace context, and what a request's handlers
//! note for its access log line.

pub mod body;
pub mod client;
pub mod exchange;
pub mod forwarded;
pub mod headers;
pub mod path;
pub mod problem;
pub mod trace;
