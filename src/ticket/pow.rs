//! Proof of work before the queue: stateless challenge seeds and the check
//! of a solution.
//!
//! A seed is `base64url(version | difficulty | expiry | random | mac)`: the
//! MAC (HMAC-SHA256 under the queue's proof-of-work key, truncated to 128
//! bits) covers the other bytes, the queue's name and the client's key, so
//! a seed is good for one client of one queue until it expires, on every
//! instance that shares the ticket secret, and nothing is stored when it is
//! issued. A solution is a nonce such that SHA-256(`seed.nonce`) starts with
//! at least `difficulty` zero bits; the client sends `seed.nonce` in the
//! `Flashgate-Pow` header. Checking it costs one HMAC and one SHA-256;
//! whether the seed was used before is the queue backend's answer, in the
//! admission's own atomic step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use sha2::{Digest, Sha256};

use super::{hmac, random_bytes, TicketSecret};

/// The request header that carries a solution.
pub const HEADER: &str = "flashgate-pow";
pub use crate::config::MAX_POW_DIFFICULTY as MAX_DIFFICULTY;
/// The longest nonce accepted, in characters.
pub const MAX_NONCE_LEN: usize = 32;

const VERSION: u8 = 1;
const EXPIRY_BYTES: usize = 4;
const RANDOM_BYTES: usize = 14;
const BODY_BYTES: usize = 2 + EXPIRY_BYTES + RANDOM_BYTES;
const MAC_BYTES: usize = 16;
const RAW_BYTES: usize = BODY_BYTES + MAC_BYTES;
/// base64url of 36 bytes: no padding, no spare bits.
pub const SEED_LEN: usize = 48;
/// How much longer than its seed a spent seed's record lives: an instance
/// whose clock is behind by up to this still finds the record while it
/// takes the seed for unexpired.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// One queue's key for challenge seeds, derived from the ticket secret and
/// the queue's name (a seed of one queue never verifies for another).
#[derive(Clone, Copy)]
pub struct PowKey([u8; 32]);

impl std::fmt::Debug for PowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PowKey(<redacted>)")
    }
}

/// A challenge as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub seed: String,
    pub difficulty: u8,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A solution that passed every check that needs no shared state: what the
/// backend records so that it is used once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solved {
    /// The seed's random part: the single-use record's name.
    pub id: [u8; RANDOM_BYTES],
    /// How long the record must live: until the seed expires, plus
    /// [`CLOCK_MARGIN`].
    pub ttl: Duration,
}

/// Why a solution is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    /// Malformed, forged, of another client or queue, or a hash without
    /// enough zero bits.
    #[error("the proof of work is not a valid solution of a challenge issued to this client for this queue")]
    Invalid,
    #[error("the challenge has expired; fetch a new one")]
    Expired,
    /// Issued at a lower difficulty than the queue asks for now.
    #[error("the challenge was issued at difficulty {seed}, the queue now asks for {now}; fetch a new one")]
    Insufficient { seed: u8, now: u8 },
}

impl PowKey {
    /// The key of queue `queue` under `secret`.
    pub fn new(secret: &TicketSecret, queue: &str) -> Self {
        let mut mac = hmac(&secret.0);
        mac.update(b"flashgate pow key v1\0");
        mac.update(queue.as_bytes());
        PowKey(mac.finalize().into_bytes().into())
    }

    /// A fresh challenge of `difficulty` for `client` of `queue`, good for
    /// `ttl` from `now`.
    pub fn issue(
        &self,
        queue: &str,
        client: &str,
        difficulty: u8,
        now: SystemTime,
        ttl: Duration,
    ) -> Challenge {
        let expires_at = unix_secs(now).saturating_add(ttl.as_secs().max(1));
        let mut raw = [0u8; RAW_BYTES];
        raw[0] = VERSION;
        raw[1] = difficulty.min(MAX_DIFFICULTY);
        // Unix seconds in 32 bits: good until 2106.
        raw[2..2 + EXPIRY_BYTES].copy_from_slice(&(expires_at as u32).to_be_bytes());
        raw[2 + EXPIRY_BYTES..BODY_BYTES].copy_from_slice(&random_bytes::<RANDOM_BYTES>());
        let mac = self.mac(&raw[..BODY_BYTES], queue, client);
        raw[BODY_BYTES..].copy_from_slice(&mac.finalize().into_bytes()[..MAC_BYTES]);
        Challenge {
            seed: URL_SAFE_NO_PAD.encode(raw),
            difficulty: raw[1],
            expires_at: u64::from(expires_at as u32),
        }
    }

    /// Checks `header` (`seed.nonce`) for `client` of `queue` at `now`
    /// against the difficulty the queue asks for now: the MAC first (so a
    /// forger learns nothing else), then expiry, difficulty and the hash.
    pub fn verify(
        &self,
        header: &[u8],
        queue: &str,
        client: &str,
        required: u8,
        now: SystemTime,
    ) -> Result<Solved, PowError> {
        let dot = header
            .iter()
            .position(|&b| b == b'.')
            .ok_or(PowError::Invalid)?;
        let (seed, nonce) = (&header[..dot], &header[dot + 1..]);
        let nonce_ok = !nonce.is_empty()
            && nonce.len() <= MAX_NONCE_LEN
            && nonce
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        if seed.len() != SEED_LEN || !nonce_ok {
            return Err(PowError::Invalid);
        }
        let mut raw = [0u8; RAW_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(seed, &mut raw) {
            Ok(RAW_BYTES) => {}
            _ => return Err(PowError::Invalid),
        }
        // Constant time wherever the first wrong byte is.
        let mac = self.mac(&raw[..BODY_BYTES], queue, client);
        if raw[0] != VERSION || mac.verify_truncated_left(&raw[BODY_BYTES..]).is_err() {
            return Err(PowError::Invalid);
        }
        let difficulty = raw[1];
        let mut expiry = [0u8; EXPIRY_BYTES];
        expiry.copy_from_slice(&raw[2..2 + EXPIRY_BYTES]);
        let expires_at = u64::from(u32::from_be_bytes(expiry));
        let now_secs = unix_secs(now);
        if now_secs >= expires_at {
            return Err(PowError::Expired);
        }
        if difficulty < required {
            return Err(PowError::Insufficient {
                seed: difficulty,
                now: required,
            });
        }
        if leading_zero_bits(&Sha256::digest(header)) < u32::from(difficulty) {
            return Err(PowError::Invalid);
        }
        let mut id = [0u8; RANDOM_BYTES];
        id.copy_from_slice(&raw[2 + EXPIRY_BYTES..BODY_BYTES]);
        Ok(Solved {
            id,
            ttl: Duration::from_secs(expires_at - now_secs) + CLOCK_MARGIN,
        })
    }

    fn mac(&self, body: &[u8], queue: &str, client: &str) -> super::HmacSha256 {
        let mut mac = hmac(&self.0);
        mac.update(body);
        // Length-prefixed: no queue/client pair reads as another.
        mac.update(&(queue.len() as u32).to_be_bytes());
        mac.update(queue.as_bytes());
        mac.update(client.as_bytes());
        mac
    }
}

/// Zero bits at the start of `hash`.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in hash {
        if b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

/// Finds a nonce for `seed` at `difficulty` by counting up in decimal (for
/// tools and tests; browsers use the served script). Returns the header
/// value `seed.nonce` and the hashes tried.
pub fn solve(seed: &str, difficulty: u8) -> (String, u64) {
    let mut value = String::with_capacity(seed.len() + 21);
    let mut digits = itoa::Buffer::new();
    for n in 0u64.. {
        value.clear();
        value.push_str(seed);
        value.push('.');
        value.push_str(digits.format(n));
        if leading_zero_bits(&Sha256::digest(value.as_bytes())) >= u32::from(difficulty) {
            return (value, n + 1);
        }
    }
    unreachable!("a u64 of nonces holds a solution of any difficulty up to 32")
}

impl Solved {
    /// The id as the single-use record's name: hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
