//! The baseline: the same server stack as the gateway answering every request
//! with a fixed admission answer, doing no work. The gateway's admission
//! throughput is measured as a fraction of this one's.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};

use crate::server::{self, Running, ServerError};

/// The gateway's 202 body with a 27-character ticket id, the length of the
/// gateway's own: the same shape and size.
const BODY: &str = concat!(
    r#"{"ticket":"AAAAAAAAAAAAAAAAAAAAAAAAAAA","queue":"checkout","status":"queued","#,
    r#""position":42,"eta_seconds":0.42,"poll_url":"/tickets/AAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#
);

/// `flashgate-loadtest ceiling` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
}

/// Starts the ceiling server in the background.
pub async fn start(options: &Options) -> Result<Running, ServerError> {
    let listener = server::bind(&options.listen).await?;
    server::spawn(listener, answer)
}

async fn answer(req: Request<Incoming>) -> Response<Full<Bytes>> {
    // The gateway reads the whole body before it answers; so does the
    // baseline, or it would not be the same work on the wire.
    let _ = req.into_body().collect().await;
    let mut resp = server::json(StatusCode::ACCEPTED, Bytes::from_static(BODY.as_bytes()));
    resp.headers_mut().insert(
        LOCATION,
        HeaderValue::from_static("/tickets/AAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The fixed body, for tests and size comparisons.
pub fn body() -> &'static str {
    BODY
}
