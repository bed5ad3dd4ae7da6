//! flashgate-loadtest: a flash-sale burst generator for flashgate, the mock
//! order service it verifies delivery against, and the do-nothing "ceiling"
//! server that gateway throughput is measured against.
//!
//! Each subcommand is a library function so that tests run them in-process.

pub mod burst;
pub mod ceiling;
pub mod chart;
pub mod client;
pub mod polls;
pub mod pow;
pub mod report;
pub mod server;
pub mod upstream;
