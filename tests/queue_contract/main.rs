//! One contract per backend seam, every backend: the embedded queue, Redis
//! streams and a queue partitioned over Redis must behave the same.
//!
//! One module per seam — `line`, `tickets`, `knobs`, `schedule`,
//! `changes`, `events`, `dead_letters` — each a few suites; `backends` runs every suite over every
//! backend (`line::burst::memory`, `…::redis`, `…::partitioned`).

#[path = "../support/mod.rs"]
mod support;

mod backends;
mod changes;
mod dead_letters;
mod events;
mod fair;
mod knobs;
mod line;
mod schedule;
mod tickets;
