//! The admin API's client, shared by `flashgate admin`, `flashgate admin
//! dead-letters` and `flashgate events`: one JSON call, its answer or why
//! it failed.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why an admin API call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("bad admin URL `{0}`")]
    Url(String),
    #[error("cannot reach the admin API at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the gateway answered {status}: {detail}")]
    Refused { status: u16, detail: String },
}

/// One admin API call: its JSON answer, or why it failed.
pub async fn call(
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CallError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut req = Request::builder()
        .method(method)
        .uri(&url)
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = req
        .body(Full::new(bytes))
        .map_err(|_| CallError::Url(base.to_string()))?;
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let unreachable = |why: String| CallError::Unreachable {
        url: url.clone(),
        why,
    };
    let resp = client
        .request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        let detail = value["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(CallError::Refused {
            status: status.as_u16(),
            detail,
        });
    }
    Ok(value)
}
