//! flashgate: a flash-sale traffic-shaping gateway.
//!
//! Requests on queued routes are stored in a durable queue and answered at
//! once with a ticket ([`api::admission`]); the queue is replayed to the order
//! service at a governed rate ([`drain`]); clients follow their ticket
//! ([`api::tickets`]).
//!
//! The modules are layers, each importing only those below it (checked by
//! `tests/layers.rs`; README "Layout"):
//!
//! - assembly: [`gateway`], [`demo`], [`cli`] (and the binary's `main`);
//! - the HTTP edge: [`server`] (listeners, routing, CORS, passthrough);
//! - the product's verbs: [`api`] (admission, tickets, the admin API, pages);
//! - [`drain`]: pacer, attempts, adaptive rate;
//! - [`queue`]: one queue at run time (knobs, change feed, counters, upkeep);
//! - [`backend`]: the seams to the store, and the memory, Redis and
//!   partitioned backends;
//! - foundation: [`http`] (bodies, problems, headers, paths, client
//!   identity), [`upstream`], [`ticket`], [`metrics`], [`config`], [`clock`].

pub mod api;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod drain;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod ticket;
pub mod upstream;

pub use config::Config;
pub use gateway::Gateway;
