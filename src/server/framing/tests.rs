use super::*;
use tokio::io::AsyncReadExt;

fn verdict(bytes: &[u8]) -> Head {
    head(bytes)
}

#[test]
fn heads_are_framed_as_hyper_frames_them() {
    let h = |s: &str| verdict(s.as_bytes());
    assert_eq!(
        h("GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"),
        Head::Complete {
            len: 27,
            body: BodyLength::Bytes(0)
        }
    );
    assert_eq!(
        h("\r\n\r\nPOST / HTTP/1.1\r\ncontent-length:  12 \r\n\r\n"),
        Head::Complete {
            len: 45,
            body: BodyLength::Bytes(12)
        }
    );
    assert_eq!(
        h("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n"),
        Head::Complete {
            len: 41,
            body: BodyLength::Bytes(3)
        }
    );
    assert_eq!(
        h("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
        Head::Complete {
            len: 47,
            body: BodyLength::Chunked
        }
    );
    assert_eq!(h("GET / HTTP/1.1\r\nHost: x\r\n"), Head::Partial);
    assert_eq!(h("GET / HTTP/1.1\r"), Head::Partial);
}

#[test]
fn ambiguous_heads_are_refused() {
    for (bytes, why) in [
        ("GET / HTTP/1.1\nHost: x\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: x\n\n", "bare LF"),
        ("\nGET / HTTP/1.1\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n", "bare CR"),
        ("GET / HTTP/1.1\r\nA: 1\r\n B: 2\r\n\r\n", "folded"),
        (
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "together",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            "together",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "coding",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "coding",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "coding",
        ),
        ("POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n", "malformed"),
        (
            "POST / HTTP/1.1\r\nContent-Length: 4 4\r\n\r\n",
            "malformed",
        ),
        ("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", "malformed"),
        (
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "malformed",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\n",
            "conflicting",
        ),
    ] {
        match verdict(bytes.as_bytes()) {
            Head::Refused(reason) => assert!(reason.contains(why), "{bytes:?}: {reason}"),
            other => panic!("{bytes:?} was not refused: {other:?}"),
        }
    }
}

#[test]
fn chunked_bodies_end_where_hyper_ends_them() {
    let body = b"5;ext=1\r\nhello\r\nA \r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let mut c = Chunked::default();
    assert_eq!(c.advance(body), Some(Ok(body.len() - 4)));
    // Byte by byte, the same end.
    let mut c = Chunked::default();
    let mut ended = None;
    for (i, b) in body.iter().enumerate() {
        if let Some(r) = c.advance(std::slice::from_ref(b)) {
            ended = Some((i, r));
            break;
        }
    }
    assert_eq!(ended, Some((body.len() - 5, Ok(1))));
    for bad in [
        &b"2\n{}\r\n0\r\n\r\n"[..],
        b"2\r\n{}\n0\r\n\r\n",
        b"fffffffffffffffff1\r\n",
        b"x\r\n",
        b"2;a\nb\r\n",
        b"2 3\r\n",
    ] {
        assert_eq!(
            Chunked::default().advance(bad),
            Some(Err(())),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// Hands out its bytes `step` at a time.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(self.bytes.len() - self.at)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

async fn through(bytes: &[u8], step: usize) -> Vec<u8> {
    let trickle = Trickle {
        bytes: bytes.to_vec(),
        at: 0,
        step,
    };
    let mut out = Vec::new();
    Strict::new(trickle, 8192)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn pipelined_requests_pass_whole_at_every_split() {
    let stream = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab\ncd\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\n\n\n\r\n0\r\n\r\n\
GET /c HTTP/1.1\r\n\r\n";
    for step in 1..=stream.len() {
        assert_eq!(through(stream, step).await, stream, "step {step}");
    }
}

#[tokio::test]
async fn a_refused_head_ends_the_stream_after_the_requests_before_it() {
    let good = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    let bad = b"POST /b HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
    let stream = [&good[..], &bad[..]].concat();
    let expected = [&good[..], REFUSED].concat();
    for step in 1..=stream.len() {
        assert_eq!(through(&stream, step).await, expected, "step {step}");
    }
}

/// Random mutations of a pipelined stream: whatever the bytes, the
/// follower never panics, its verdict does not depend on how the
/// stream is split into reads, and it only ever cuts a stream short by
/// refusing a head.
#[tokio::test]
async fn mutated_streams_get_the_same_verdict_at_any_split() {
    let base = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab\ncd\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: 1\r\n\r\n\
GET /c HTTP/1.1\r\n\r\n";
    let alphabet = b"\r\n :;,\t0123456789abcdefABCDEF-+chunkedContent-LengthTransfer-Encoding";
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    for case in 0..2000 {
        let mut stream = base.to_vec();
        for _ in 0..1 + next() % 4 {
            let at = next() % stream.len();
            let b = alphabet[next() % alphabet.len()];
            match next() % 3 {
                0 => stream[at] = b,
                1 => stream.insert(at, b),
                _ => {
                    stream.remove(at);
                }
            }
        }
        let whole = through(&stream, stream.len()).await;
        let step = 1 + next() % 16;
        assert_eq!(
            through(&stream, step).await,
            whole,
            "case {case}, step {step}"
        );
        match whole.strip_suffix(REFUSED) {
            Some(passed) => assert!(stream.starts_with(passed), "case {case}"),
            None => assert_eq!(whole, stream, "case {case}"),
        }
    }
}

#[tokio::test]
async fn heads_longer_than_the_limit_are_left_to_hyper() {
    let mut stream = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    stream.extend(std::iter::repeat_n(b'a', 20_000));
    stream.extend_from_slice(b"\nbare\n\n");
    assert_eq!(through(&stream, 1000).await, stream);
}
