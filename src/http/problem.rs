//! RFC 9457 problem details: every error answer of the public API, mapped to
//! its status and `code` in one place (SPEC §3.4).

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::http::body::{full, Body};
use crate::http::exchange;

/// An error answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub code: Code,
    pub detail: String,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// Methods allowed, sent as `Allow` with 405.
    pub allow: Option<String>,
    /// The product it is about (a fair sale's `product` member).
    pub product: Option<String>,
    /// Where to fetch a proof-of-work challenge (`challenge` member).
    pub challenge: Option<String>,
}

/// The `code` member: which rule refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    TicketNotFound,
    NotFound,
    MethodNotAllowed,
    BodyTooLarge,
    IdempotencyKeyReused,
    QueueFull,
    Unavailable,
    SoldOut,
    SaleClosed,
    SaleNotOpen,
    RateLimited,
    BadGateway,
    GatewayTimeout,
    Unauthorized,
    RequestTimeout,
    UriTooLong,
    /// `DELETE` on a ticket in flight or finished.
    TicketNotCancellable,
    /// `Prefer: wait` on an admission whose ticket was cancelled meanwhile.
    TicketCancelled,
    /// `GET /tickets/{id}/response` on a ticket that ended without an answer.
    TicketHasNoResponse,
    /// Admin API: no such dead letter (or replayed or discarded already).
    DeadLetterNotFound,
    /// Admin API: a dead letter that cannot be replayed (no request kept,
    /// its ticket not failed, the queue sold out).
    DeadLetterNotReplayable,
    /// A fair sale: the request names no readable product.
    InvalidProduct,
    /// A fair sale: the request names a product the queue does not sell.
    UnknownProduct,
    /// A fair sale: the client holds all the admissions it may.
    ClientQuotaExceeded,
    /// Proof of work is on and the admission carries none.
    PowRequired,
    /// A forged, foreign or wrong proof of work.
    PowInvalid,
    PowExpired,
    /// A proof of work issued at a lower difficulty than the one in force.
    PowInsufficient,
    /// A proof of work spent by an earlier admission.
    PowReused,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::TicketNotFound => "ticket_not_found",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::BodyTooLarge => "body_too_large",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::QueueFull => "queue_full",
            Code::Unavailable => "unavailable",
            Code::SoldOut => "sold_out",
            Code::SaleClosed => "sale_closed",
            Code::SaleNotOpen => "sale_not_open",
            Code::RateLimited => "rate_limited",
            Code::BadGateway => "bad_gateway",
            Code::GatewayTimeout => "gateway_timeout",
            Code::Unauthorized => "unauthorized",
            Code::RequestTimeout => "request_timeout",
            Code::UriTooLong => "uri_too_long",
            Code::TicketNotCancellable => "ticket_not_cancellable",
            Code::TicketCancelled => "ticket_cancelled",
            Code::TicketHasNoResponse => "ticket_has_no_response",
            Code::DeadLetterNotFound => "dead_letter_not_found",
            Code::DeadLetterNotReplayable => "dead_letter_not_replayable",
            Code::InvalidProduct => "invalid_product",
            Code::UnknownProduct => "unknown_product",
            Code::ClientQuotaExceeded => "client_quota_exceeded",
            Code::PowRequired => "pow_required",
            Code::PowInvalid => "pow_invalid",
            Code::PowExpired => "pow_expired",
            Code::PowInsufficient => "pow_insufficient",
            Code::PowReused => "pow_reused",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest | Code::InvalidProduct => StatusCode::BAD_REQUEST,
            Code::TicketNotFound
            | Code::NotFound
            | Code::DeadLetterNotFound
            | Code::UnknownProduct => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::QueueFull | Code::Unavailable | Code::SaleNotOpen => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::SoldOut | Code::SaleClosed | Code::TicketCancelled => StatusCode::GONE,
            Code::RateLimited | Code::ClientQuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Code::BadGateway => StatusCode::BAD_GATEWAY,
            Code::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::UriTooLong => StatusCode::URI_TOO_LONG,
            Code::TicketNotCancellable
            | Code::TicketHasNoResponse
            | Code::DeadLetterNotReplayable => StatusCode::CONFLICT,
            Code::PowRequired
            | Code::PowInvalid
            | Code::PowExpired
            | Code::PowInsufficient
            | Code::PowReused => StatusCode::FORBIDDEN,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Code::BadRequest => "Malformed request",
            Code::TicketNotFound => "Ticket not found",
            Code::NotFound => "Not found",
            Code::MethodNotAllowed => "Method not allowed",
            Code::BodyTooLarge => "Request body too large",
            Code::IdempotencyKeyReused => "Idempotency key reused with another request",
            Code::QueueFull => "Queue full",
            Code::Unavailable => "Temporarily unavailable",
            Code::SoldOut => "Sold out",
            Code::SaleClosed => "Sale closed",
            Code::SaleNotOpen => "Sale not open yet",
            Code::RateLimited => "Too many requests from this client",
            Code::BadGateway => "Upstream failed",
            Code::GatewayTimeout => "Upstream timed out",
            Code::Unauthorized => "Unauthorized",
            Code::RequestTimeout => "Request body not received in time",
            Code::UriTooLong => "Request target too long",
            Code::TicketNotCancellable => "Ticket can no longer be cancelled",
            Code::TicketCancelled => "Ticket cancelled",
            Code::TicketHasNoResponse => "Ticket ended without an answer",
            Code::DeadLetterNotFound => "Dead letter not found",
            Code::DeadLetterNotReplayable => "Dead letter cannot be replayed",
            Code::InvalidProduct => "No product in the request",
            Code::UnknownProduct => "Unknown product",
            Code::ClientQuotaExceeded => "Purchase limit per customer reached",
            Code::PowRequired => "Proof of work required",
            Code::PowInvalid => "Proof of work invalid",
            Code::PowExpired => "Proof of work expired",
            Code::PowInsufficient => "Proof of work below the current difficulty",
            Code::PowReused => "Proof of work already used",
        }
    }
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: &'static str,
    /// The request's `X-Request-Id`, to quote when reporting the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    /// The product the problem is about (a fair sale).
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<&'a str>,
    /// Where a fresh proof-of-work challenge is (the `pow_*` codes).
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge: Option<&'a str>,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Problem {
            code,
            detail: detail.into(),
            retry_after: None,
            allow: None,
            product: None,
            challenge: None,
        }
    }

    /// Names the product the problem is about (`product` member).
    pub fn product(mut self, product: &str) -> Self {
        self.product = Some(product.to_string());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Names the URL of a fresh proof-of-work challenge.
    pub fn challenge(mut self, url: String) -> Self {
        self.challenge = Some(url);
        self
    }

    pub fn allow(mut self, methods: String) -> Self {
        self.allow = Some(methods);
        self
    }

    /// The problem+json body, naming the request when there is one.
    fn document(&self, request_id: Option<&str>) -> Vec<u8> {
        let code = self.code.as_str();
        let doc = Document {
            kind: format!("urn:flashgate:problem:{code}"),
            title: self.code.title(),
            status: self.code.status().as_u16(),
            detail: &self.detail,
            code,
            request_id,
            product: self.product.as_deref(),
            challenge: self.challenge.as_deref(),
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// The answer: its status, the problem+json body (with the request's
    /// `request_id`), `Retry-After` and `Allow` when set.
    pub fn into_response(self) -> Response<Body> {
        let status = self.code.status();
        let code = self.code.as_str();
        exchange::note(|n| n.code = Some(code));
        let body =
            exchange::with_id(|id| self.document(Some(id))).unwrap_or_else(|| self.document(None));
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            h.insert(header::ALLOW, allow);
        }
        resp
    }
}
