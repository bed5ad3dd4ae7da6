//! Tickets: their ids, their states and how they are shown to clients.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub mod pow;
mod view;
pub use view::{
    eta_seconds, format_time_ms, now_ms, position, retry_after, retry_after_value, AdmissionView,
    Place, ResponseView, TicketView, PAUSED_RETRY_AFTER,
};

type HmacSha256 = Hmac<Sha256>;

const RANDOM_BYTES: usize = 16;
const TAG_BYTES: usize = 4;
/// HMAC-SHA256 truncated to 128 bits: a forger must guess it online, one
/// request per guess.
const MAC_BYTES: usize = 16;
const RAW_BYTES: usize = RANDOM_BYTES + TAG_BYTES + MAC_BYTES;
/// base64url of 36 bytes: a multiple of 3, so no padding and no spare bits
/// (every 48-character string of the alphabet has exactly one meaning).
const ENCODED_LEN: usize = 48;
pub use crate::config::MIN_SECRET_LEN;

/// A ticket id: 128 bits from the OS CSPRNG, a 32-bit tag of the queue name
/// and a MAC over both, base64url-encoded. The tag lets any instance find the
/// queue of a ticket without a lookup; the MAC lets it refuse a forged id
/// before any lookup.
///
/// Shared, not owned: an id is cloned into the queue, the caches and the
/// change feed, and a clone is a reference count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TicketId(Arc<str>);

/// The server secret that every ticket MAC key derives from; the same on
/// every instance that shares a queue.
#[derive(Clone)]
pub struct TicketSecret(Vec<u8>);

impl TicketSecret {
    /// A secret from configuration or from the shared store.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        TicketSecret(bytes.into())
    }

    /// 256 fresh bits from the OS CSPRNG.
    pub fn random() -> Self {
        TicketSecret(random_bytes::<32>().to_vec())
    }

    /// Lower-case hex, to store or share the secret as text.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSecret(<redacted>)")
    }
}

/// What a queue needs to mint and check its ticket ids: the public tag of
/// its name and its own MAC key (derived from the secret and the name, so a
/// ticket of one queue never verifies for another).
#[derive(Clone, Copy)]
pub struct QueueTag {
    tag: [u8; TAG_BYTES],
    key: [u8; 32],
    /// The queue's key for proof-of-work seeds, under the same secret.
    pow: pow::PowKey,
}

impl QueueTag {
    /// The tag and key of queue `queue` under `secret`.
    pub fn new(secret: &TicketSecret, queue: &str) -> Self {
        let digest = Sha256::digest(queue.as_bytes());
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&digest[..TAG_BYTES]);
        let mut mac = hmac(&secret.0);
        mac.update(b"flashgate ticket key v1\0");
        mac.update(queue.as_bytes());
        QueueTag {
            tag,
            key: mac.finalize().into_bytes().into(),
            pow: pow::PowKey::new(secret, queue),
        }
    }

    /// The queue's key for proof-of-work seeds ([`pow`]).
    pub fn pow(&self) -> &pow::PowKey {
        &self.pow
    }

    /// A tag under a throwaway secret: ids it mints verify nowhere else.
    /// For tools and backend tests that only need unique, well-formed ids.
    pub fn of(queue: &str) -> Self {
        Self::new(&TicketSecret::random(), queue)
    }

    /// True when `claim` was minted by this queue under this secret. The MAC
    /// comparison takes the same time wherever the first wrong byte is.
    pub fn verify(&self, claim: &TicketClaim) -> bool {
        let mut mac = hmac(&self.key);
        mac.update(&claim.raw[..RANDOM_BYTES + TAG_BYTES]);
        let tag_ok = claim.raw[RANDOM_BYTES..RANDOM_BYTES + TAG_BYTES] == self.tag;
        let mac_ok = mac
            .verify_truncated_left(&claim.raw[RANDOM_BYTES + TAG_BYTES..])
            .is_ok();
        tag_ok & mac_ok
    }

    fn seal(&self, random: &[u8; RANDOM_BYTES]) -> [u8; RAW_BYTES] {
        let mut raw = [0u8; RAW_BYTES];
        raw[..RANDOM_BYTES].copy_from_slice(random);
        raw[RANDOM_BYTES..RANDOM_BYTES + TAG_BYTES].copy_from_slice(&self.tag);
        let mut mac = hmac(&self.key);
        mac.update(&raw[..RANDOM_BYTES + TAG_BYTES]);
        let full = mac.finalize().into_bytes();
        raw[RANDOM_BYTES + TAG_BYTES..].copy_from_slice(&full[..MAC_BYTES]);
        raw
    }
}

impl std::fmt::Debug for QueueTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueTag({:02x?}, key: <redacted>)", self.tag)
    }
}

/// A well-formed id as presented by a client: not yet checked against any
/// queue's key (see [`QueueTag::verify`]).
#[derive(Clone, Copy)]
pub struct TicketClaim {
    raw: [u8; RAW_BYTES],
}

impl std::fmt::Debug for TicketClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketClaim(..)")
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

/// Bytes of the OS CSPRNG fetched at once per thread: one `getrandom`
/// call per ticket was a syscall on every admission. Each byte is handed
/// out once, then overwritten with the next.
const RANDOM_POOL: usize = 4096;

struct RandomPool {
    bytes: [u8; RANDOM_POOL],
    used: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<RandomPool> = const {
        std::cell::RefCell::new(RandomPool { bytes: [0; RANDOM_POOL], used: RANDOM_POOL })
    };
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut raw = [0u8; N];
    if N > RANDOM_POOL {
        os_random(&mut raw);
        return raw;
    }
    POOL.with_borrow_mut(|pool| {
        if pool.used + N > RANDOM_POOL {
            os_random(&mut pool.bytes);
            pool.used = 0;
        }
        let taken = &mut pool.bytes[pool.used..pool.used + N];
        raw.copy_from_slice(taken);
        taken.fill(0);
        pool.used += N;
    });
    raw
}

fn os_random(buf: &mut [u8]) {
    // The OS CSPRNG only fails on a broken system; there is no safe
    // fallback for a secret, so that is a fatal error.
    getrandom::fill(buf).expect("OS random number generator failed");
}

impl TicketId {
    /// A fresh id for a ticket of the queue with this tag.
    pub fn generate(tag: QueueTag) -> Self {
        TicketId(URL_SAFE_NO_PAD.encode(tag.seal(&random_bytes())).into())
    }

    /// Decodes a client-supplied or stored id; anything but a canonical
    /// encoding of the right length is `None`. This checks the shape only:
    /// whether the id is genuine is [`QueueTag::verify`]'s answer.
    pub fn parse(s: &str) -> Option<(Self, TicketClaim)> {
        if s.len() != ENCODED_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_BYTES];
        let n = URL_SAFE_NO_PAD.decode_slice(s, &mut raw).ok()?;
        (n == RAW_BYTES).then(|| (TicketId(s.into()), TicketClaim { raw }))
    }

    /// A fresh id whose [`Self::partition`] among `partitions` is
    /// `partition`: drawn until one falls there (on average `partitions`
    /// draws), so the id alone still tells every instance where it lives.
    pub fn generate_in(tag: QueueTag, partition: u32, partitions: u32) -> Self {
        loop {
            let id = Self::generate(tag);
            if id.partition(partitions) == partition {
                return id;
            }
        }
    }

    /// Which of `partitions` holds this ticket: a hash of the id, so
    /// random ids spread evenly.
    pub fn partition(&self, partitions: u32) -> u32 {
        if partitions <= 1 {
            return 0;
        }
        (fnv1a(self.0.as_bytes()) % u64::from(partitions)) as u32
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// FNV-1a, 64 bits: a fast, stable hash for spreading keys over partitions
/// (not for secrets).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl std::fmt::Display for TicketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a ticket is in its life. Terminal states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Queued,
    InFlight,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Queued => "queued",
            TicketStatus::InFlight => "in_flight",
            TicketStatus::Completed => "completed",
            TicketStatus::Failed => "failed",
            TicketStatus::Cancelled => "cancelled",
            TicketStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TicketStatus::Queued,
            "in_flight" => TicketStatus::InFlight,
            "completed" => TicketStatus::Completed,
            "failed" => TicketStatus::Failed,
            "cancelled" => TicketStatus::Cancelled,
            "expired" => TicketStatus::Expired,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TicketStatus::Queued | TicketStatus::InFlight)
    }
}

/// The upstream's final answer, as stored on the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// End-to-end headers in the wire encoding of [`headers::encode`].
    pub headers: Bytes,
    pub body: Bytes,
}

/// Why a ticket failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TicketError {
    pub code: String,
    pub detail: String,
}

/// A ticket's state as kept by the queue backend.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRecord {
    pub status: TicketStatus,
    /// 1-based admission sequence number within the queue.
    pub seq: u64,
    pub attempts: u32,
    pub admitted_at_ms: u64,
    pub completed_at_ms: Option<u64>,
    pub response: Option<StoredResponse>,
    pub error: Option<TicketError>,
}

#[cfg(test)]
mod tests;
