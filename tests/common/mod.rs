//! Only for tests/queue_contract.rs until it moves to tests/support (issue
//! 17): the two names it uses, from there.

#[path = "../support/mod.rs"]
mod support;

pub use support::{eventually, Redis as RedisServer};
