//! Proof of work, solved natively: a nonce such that SHA-256(`seed.nonce`)
//! starts with `difficulty` zero bits (flashgate's `GET /challenge`).

use sha2::{Digest, Sha256};

/// Counts nonces up from 0 until one meets `difficulty`; the
/// `Flashgate-Pow` header value `seed.nonce`.
pub fn solve(seed: &str, difficulty: u8) -> String {
    let mut text = String::with_capacity(seed.len() + 21);
    for nonce in 0u64.. {
        text.clear();
        text.push_str(seed);
        text.push('.');
        text.push_str(&nonce.to_string());
        if zero_bits(&Sha256::digest(text.as_bytes())) >= u32::from(difficulty) {
            break;
        }
    }
    text
}

/// Zero bits at the start of `hash`.
pub fn zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in hash {
        if b != 0 {
            return bits + b.leading_zeros();
        }
        bits += 8;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solutions_meet_the_difficulty() {
        let found = solve("seed", 12);
        assert!(found.starts_with("seed."));
        assert!(zero_bits(&Sha256::digest(found.as_bytes())) >= 12);
        assert_eq!(zero_bits(&[0, 0x0f]), 12);
        assert_eq!(solve("seed", 0), "seed.0");
    }
}
