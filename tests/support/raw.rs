//! HTTP/1.1 as bytes on a TCP connection: the request target and head sent
//! byte for byte, which a client library would normalize or refuse. One
//! request per connection ([`request`]), a kept-alive connection ([`Conn`]),
//! or any bytes and whatever comes back until the close ([`until_close`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one raw exchange may take at most.
const DEADLINE: Duration = Duration::from_secs(20);

/// An answer as read off the wire.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    /// Dechunked when the answer was chunked.
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// From a head (up to its blank line) and the body read after it.
    fn new(head: &str, body: Vec<u8>) -> Option<RawAnswer> {
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(RawAnswer {
            status,
            head: head.to_string(),
            headers,
            body,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `METHOD target HTTP/1.1` with `headers` and `body` (plus `Host`,
/// `Content-Length` and `Connection: close`) and reads the answer to EOF.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawAnswer {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // Head and body in one write: a server that answers from the head
        // alone then finds the body already read in, not arriving after its
        // close (which would reset the connection under the answer).
        let request = [head.as_bytes(), body.as_bytes()].concat();
        s.write_all(&request).await.expect("send the request");
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf).await {
            Ok(_) => {}
            // Closed with our bytes unread: the answer may be whole already.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !buf.is_empty() => {}
            Err(e) => panic!("{method} {target}: read the answer: {e}"),
        }
        buf
    };
    let buf = tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no answer within {DEADLINE:?}"));
    parse(&buf).unwrap_or_else(|| {
        panic!(
            "{method} {target}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&buf)
        )
    })
}

fn parse(buf: &[u8]) -> Option<RawAnswer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut answer = RawAnswer::new(head, buf[end + 4..].to_vec())?;
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        answer.body = dechunk(&answer.body)?;
    }
    Some(answer)
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// One HTTP/1.1 connection, used request after request.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    wait: Duration,
}

impl Conn {
    /// Connects; each answer and [`closed`](Self::closed) waits up to `wait`.
    pub async fn open(addr: SocketAddr, wait: Duration) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            wait,
        }
    }

    /// Sends `request` and reads one answer (Content-Length framed, as
    /// every answer of the gateway's own routes is).
    pub async fn ask(&mut self, request: &str) -> std::io::Result<RawAnswer> {
        self.stream.write_all(request.as_bytes()).await?;
        tokio::time::timeout(self.wait, self.read_answer())
            .await
            .map_err(|_| std::io::Error::other("no answer in time"))?
    }

    async fn read_answer(&mut self) -> std::io::Result<RawAnswer> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end - 4]).into_owned();
        let bad_head = || std::io::Error::other(format!("not an HTTP answer: {head:?}"));
        let mut answer = RawAnswer::new(&head, Vec::new()).ok_or_else(bad_head)?;
        let len: usize = answer
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + len {
            self.fill().await?;
        }
        answer.body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Ok(answer)
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Whether the server closed the connection (EOF within the wait).
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(self.wait, self.stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

/// What came back on one raw connection.
#[derive(Debug)]
pub struct Transcript {
    pub text: String,
    /// The server closed the connection (EOF or reset) before the deadline.
    pub closed: bool,
}

impl Transcript {
    /// The status of the first answer.
    pub fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
    }

    /// How many answers the server wrote.
    pub fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count()
    }
}

/// Writes `bytes` in one go, then reads until the server closes or `limit`.
pub async fn until_close(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Transcript {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may close before reading everything: that is fine.
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s, limit).await
}

/// Reads until the server closes or `limit`.
pub async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Transcript {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Transcript {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}
