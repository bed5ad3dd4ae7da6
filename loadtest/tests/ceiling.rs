//! The ceiling answers like the gateway's admission, without doing any work.

use std::time::Duration;

use bytes::Bytes;
use flashgate_loadtest::ceiling;
use flashgate_loadtest::client::{Connection, Target};
use hyper::Method;

#[tokio::test]
async fn every_request_gets_the_same_202_ticket() {
    let server = ceiling::start(&ceiling::Options {
        listen: "127.0.0.1:0".into(),
    })
    .await
    .expect("ceiling starts");
    let target = Target::parse(&server.url()).expect("url");
    let mut conn = Connection::new(target.clone(), Duration::from_secs(10));
    for path in ["/checkout", "/anything/else"] {
        let req = target
            .request(Method::POST, path, Bytes::from_static(b"{\"sku\":\"a\"}"))
            .expect("request");
        let answer = conn.send(req).await.expect("answer");
        assert_eq!(answer.status, 202);
        assert_eq!(answer.retry_after(), Some(Duration::from_secs(1)));
        let location = answer.headers.get("location").expect("Location");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        assert_eq!(
            location.to_str().ok(),
            body["poll_url"].as_str(),
            "Location and poll_url agree"
        );
        for field in [
            "ticket",
            "queue",
            "status",
            "position",
            "eta_seconds",
            "poll_url",
        ] {
            assert!(body.get(field).is_some(), "{field} missing");
        }
        // Same size as the gateway's answer: a 27-character ticket id.
        assert_eq!(body["ticket"].as_str().map(str::len), Some(27));
        assert_eq!(answer.body, Bytes::from_static(ceiling::body().as_bytes()));
    }
}
