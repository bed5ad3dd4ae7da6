//! flashgate: a flash-sale traffic-shaping gateway.
//!
//! Requests on queued routes are stored in a durable queue and answered at
//! once with a ticket ([`admission`]); the queue is replayed to the order
//! service at a governed rate ([`drain`]); clients poll their ticket ([`poll`]).

pub mod admin;
pub mod admission;
pub mod body;
pub mod cli;
pub mod client;
pub mod config;
pub mod cors;
pub mod demo;
pub mod drain;
pub mod feed;
pub mod framing;
pub mod gateway;
pub mod headers;
pub mod knobs;
pub mod metrics;
pub mod pacer;
pub mod path;
pub mod poll;
pub mod problem;
pub mod queue;
pub mod server;
pub mod ticket;
pub mod upstream;
pub mod web;

pub use config::Config;
pub use gateway::Gateway;
