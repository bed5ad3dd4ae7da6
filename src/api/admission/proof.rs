//! The proof-of-work step of an admission: the `Flashgate-Pow` header
//! checked against the queue's difficulty, with no I/O
//! ([`crate::ticket::pow`]); whether the seed was spent before is the
//! backend's answer in the atomic step.

use http::{HeaderMap, HeaderName};

use crate::http::problem::{Code, Problem};
use crate::queue::Queue;
use crate::ticket::pow::{PowError, Solved, HEADER};

/// The solution header.
pub(super) static POW_HEADER: HeaderName = HeaderName::from_static(HEADER);

/// Why the proof of work does not let the request in.
pub(super) enum PowRefusal {
    /// Missing or not genuine: refused at once, before the body is read.
    Now(Problem),
    /// A genuine seed of this client, expired or below a raised difficulty:
    /// refused unless the request is a retry of an admitted one (an
    /// Idempotency-Key replay still gets its ticket).
    Unless(Problem),
}

/// Checks the request's solution for `client` at `difficulty` (> 0).
pub(super) fn check(
    queue: &Queue,
    headers: &HeaderMap,
    client: &str,
    difficulty: u8,
) -> Result<Solved, PowRefusal> {
    let problem =
        |code, detail: String| Problem::new(code, detail).challenge(challenge_url(&queue.name));
    let mut values = headers.get_all(&POW_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        let detail = format!(
            "this queue asks for a proof of work: fetch a challenge, solve it and send `Flashgate-Pow: seed.nonce` (difficulty {difficulty})"
        );
        return Err(PowRefusal::Now(problem(Code::PowRequired, detail)));
    };
    let now = queue.clock.now();
    match queue
        .tag
        .pow()
        .verify(value.as_bytes(), &queue.name, client, difficulty, now)
    {
        Ok(solved) => Ok(solved),
        Err(e @ PowError::Invalid) => {
            Err(PowRefusal::Now(problem(Code::PowInvalid, e.to_string())))
        }
        Err(e @ PowError::Expired) => {
            Err(PowRefusal::Unless(problem(Code::PowExpired, e.to_string())))
        }
        Err(e @ PowError::Insufficient { .. }) => Err(PowRefusal::Unless(problem(
            Code::PowInsufficient,
            e.to_string(),
        ))),
    }
}

/// Where a client of `queue` fetches a challenge.
pub(super) fn challenge_url(queue: &str) -> String {
    format!("/challenge?queue={queue}")
}

/// The `reason` label of `flashgate_pow_failures_total` for a refusal's
/// code, `None` for a code that is not about the proof of work.
pub(super) fn failure_reason(code: Code) -> Option<&'static str> {
    Some(match code {
        Code::PowRequired => "required",
        Code::PowInvalid => "invalid",
        Code::PowExpired => "expired",
        Code::PowInsufficient => "insufficient",
        Code::PowReused => "reused",
        _ => return None,
    })
}
