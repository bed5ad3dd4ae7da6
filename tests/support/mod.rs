//! The test harness: real parts on loopback, each started by a builder and
//! stopped when its handle drops.
//!
//! - [`Redis`]: a private redis-server (`Redis::builder().durable().start()`),
//!   and [`RedisCluster`]; [`SentinelSetup`]: a primary, its replica and
//!   three sentinels (`kill_primary`, `wait_for_promotion`, `restart`);
//! - [`MockUpstream`]: a recording order service
//!   (`MockUpstream::builder().fail_first(2).start().await`);
//! - [`Gateway`]: flashgate in this process (`.start().await`) or as the
//!   built binary (`.process().await`), from one [`GatewayBuilder`];
//! - [`Client`]: a typed client of one gateway (`admit`, `poll`,
//!   `until_terminal`, `patch_knobs`, `metrics`, …);
//! - [`eventually`]: waits for a condition with a deadline;
//! - [`backends!`]: one test over the embedded, Redis and partitioned queue;
//! - [`pki`]: throw-away CAs and server certificates (openssl CLI);
//! - [`load`]: clients that retry with their Idempotency-Key, as a sale's
//!   do; [`chaos`]: the chaos-under-load scenario built on them;
//! - [`raw`]: HTTP as bytes on a socket; [`stacks`]: the Python order
//!   services and apps of `target/test-venv`.
//!
//! Each test file compiles all of it and uses a part: what one file leaves
//! unused is no defect.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod chaos;
mod client;
mod gateway;
pub mod load;
pub mod pki;
mod process;
pub mod raw;
mod redis;
mod sentinel;
pub mod stacks;
mod upstream;
mod wait;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

pub use client::{get, http_client, send, try_get, Answer, Client, HttpClient, Metrics, Outcome};
pub(crate) use gateway::backends;
pub use gateway::{Backend, Gateway, GatewayBuilder};
pub use process::GatewayProcess;
pub use redis::{info_stat, Redis, RedisBuilder, RedisCluster};
pub use sentinel::{SentinelSetup, MASTER};
pub use upstream::{MockUpstream, MockUpstreamBuilder, Received, UpstreamControl, KNEE_PENALTY};
pub use wait::{eventually, eventually_every};

/// Anything with a URL a gateway can be pointed at: an upstream, a Redis,
/// or the URL itself.
pub trait Url {
    fn url(&self) -> String;
}

impl Url for str {
    fn url(&self) -> String {
        self.to_string()
    }
}

impl Url for String {
    fn url(&self) -> String {
        self.clone()
    }
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The built `flashgate` binary, with none of the test's own `FLASHGATE_*`
/// or `RUST_LOG` settings leaking in.
pub fn flashgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flashgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FLASHGATE_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// `kill -SIG PID`, asserting it was delivered.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// Raises this process's open-files limit to its hard limit (children
/// inherit it) and returns the new soft limit: thousands of client
/// connections need more descriptors than the usual 1024.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A port for a server a test starts (redis-server, a gateway process) that
/// nothing else takes before that server binds it: free now, never handed
/// out twice by this test process, and below the kernel's ephemeral range,
/// where port-0 binds (the mock upstreams) and outgoing connections draw
/// theirs. A port from `bind(0)` could be taken meanwhile by either, and the
/// server then failed to start ("timed out waiting for: gateway up").
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    // From 10000: clear of the well-known services' ports.
    let low = ephemeral_low().clamp(20000, 65535);
    let (first, span) = (10000u16, low - 10000);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Each test process starts at its own place, so one left running by an
    // earlier run is rarely in the way.
    let mut port = next.unwrap_or(first + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        let candidate = port;
        port = if port + 1 >= low { first } else { port + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some(port);
            return candidate;
        }
    }
    panic!("no free port below {low}");
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}
