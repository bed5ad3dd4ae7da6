use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_800_000_000;
const TTL: Duration = Duration::from_secs(300);

fn key() -> PowKey {
    PowKey::new(&TicketSecret::new(vec![7u8; 32]), "checkout")
}

fn solved(difficulty: u8) -> String {
    let c = key().issue("checkout", "10.0.0.1", difficulty, at(NOW), TTL);
    solve(&c.seed, c.difficulty).0
}

#[test]
fn a_solution_verifies_once_for_its_client_and_queue() {
    let c = key().issue("checkout", "10.0.0.1", 8, at(NOW), TTL);
    assert_eq!(c.seed.len(), SEED_LEN);
    assert!(!c.seed.contains('.'));
    assert_eq!((c.difficulty, c.expires_at), (8, NOW + 300));
    let (header, _) = solve(&c.seed, 8);
    let ok = key()
        .verify(header.as_bytes(), "checkout", "10.0.0.1", 8, at(NOW + 10))
        .unwrap();
    assert_eq!(ok.ttl, Duration::from_secs(290));
    assert_eq!(ok.id_hex().len(), 28);
    // Another instance with the same secret agrees.
    let again = key().verify(header.as_bytes(), "checkout", "10.0.0.1", 0, at(NOW));
    assert_eq!(again.unwrap().id, ok.id);
}

#[test]
fn forged_and_foreign_solutions_are_invalid() {
    let header = solved(4);
    let k = key();
    let verify =
        |h: &str, queue: &str, client: &str| k.verify(h.as_bytes(), queue, client, 0, at(NOW));
    assert_eq!(
        verify(&header, "checkout", "10.0.0.2"),
        Err(PowError::Invalid)
    );
    assert_eq!(verify(&header, "other", "10.0.0.1"), Err(PowError::Invalid));
    let other_secret = PowKey::new(&TicketSecret::new(vec![8u8; 32]), "checkout");
    assert_eq!(
        other_secret.verify(header.as_bytes(), "checkout", "10.0.0.1", 0, at(NOW)),
        Err(PowError::Invalid)
    );
    // A flipped bit anywhere in the seed (here: the difficulty byte).
    let mut raw = URL_SAFE_NO_PAD.decode(&header[..SEED_LEN]).unwrap();
    raw[1] = 0;
    let forged = format!("{}{}", URL_SAFE_NO_PAD.encode(&raw), &header[SEED_LEN..]);
    assert_eq!(
        verify(&forged, "checkout", "10.0.0.1"),
        Err(PowError::Invalid)
    );
    for bad in [
        "",
        "no-dot",
        ".1",
        &header[..SEED_LEN],
        &format!("{}.", &header[..SEED_LEN]),
    ] {
        assert_eq!(
            verify(bad, "checkout", "10.0.0.1"),
            Err(PowError::Invalid),
            "{bad}"
        );
    }
    let long = format!("{}.{}", &header[..SEED_LEN], "1".repeat(MAX_NONCE_LEN + 1));
    assert_eq!(
        verify(&long, "checkout", "10.0.0.1"),
        Err(PowError::Invalid)
    );
}

#[test]
fn a_nonce_without_enough_zero_bits_is_invalid() {
    let c = key().issue("checkout", "c", 16, at(NOW), TTL);
    // A nonce that meets a lower difficulty but not the seed's own.
    let (header, _) = (0u64..)
        .map(|n| format!("{}.{n}", c.seed))
        .map(|h| {
            let bits = leading_zero_bits(&Sha256::digest(h.as_bytes()));
            (h, bits)
        })
        .find(|(_, bits)| *bits < 16)
        .unwrap();
    let got = key().verify(header.as_bytes(), "checkout", "c", 0, at(NOW));
    assert_eq!(got, Err(PowError::Invalid));
}

#[test]
fn expired_seeds_are_refused() {
    let header = solved(2);
    let k = key();
    let verify = |secs| k.verify(header.as_bytes(), "checkout", "10.0.0.1", 0, at(secs));
    assert!(verify(NOW + 299).is_ok());
    assert_eq!(verify(NOW + 300), Err(PowError::Expired));
    assert_eq!(verify(NOW + 10_000), Err(PowError::Expired));
}

#[test]
fn seeds_below_the_current_difficulty_are_insufficient() {
    let header = solved(3);
    let k = key();
    let verify = |required| k.verify(header.as_bytes(), "checkout", "10.0.0.1", required, at(NOW));
    assert!(verify(3).is_ok());
    assert!(verify(1).is_ok());
    assert_eq!(verify(4), Err(PowError::Insufficient { seed: 3, now: 4 }));
}

#[test]
fn leading_zero_bits_counts_across_bytes() {
    assert_eq!(leading_zero_bits(&[0x80]), 0);
    assert_eq!(leading_zero_bits(&[0x01]), 7);
    assert_eq!(leading_zero_bits(&[0, 0, 0x20, 0xff]), 18);
    assert_eq!(leading_zero_bits(&[0, 0]), 16);
}

#[test]
fn solve_meets_the_difficulty() {
    let (header, tries) = solve("seed", 10);
    assert!(leading_zero_bits(&Sha256::digest(header.as_bytes())) >= 10);
    assert_eq!(header, format!("seed.{}", tries - 1));
}

/// The gateway's cost per admission with proof of work on: parse, HMAC,
/// expiry, one SHA-256. A measurement, printed:
/// `cargo test --release --lib ticket::pow::tests::verification_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test: run it with --ignored --nocapture"]
fn verification_cost() {
    let k = key();
    let header = solved(12);
    let n = 200_000u32;
    let started = std::time::Instant::now();
    for _ in 0..n {
        let got = k.verify(
            std::hint::black_box(header.as_bytes()),
            "checkout",
            "10.0.0.1",
            12,
            at(NOW + 1),
        );
        assert!(got.is_ok());
    }
    let per = started.elapsed() / n;
    println!("proof-of-work verification: {per:?} per admission ({n} runs)");
}
