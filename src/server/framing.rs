//! Strict HTTP/1.1 message framing, checked on the bytes before hyper sees
//! them.
//!
//! hyper follows RFC 9112 where it lets a server choose leniency: it accepts
//! bare-LF line endings (§2.2) and, given both `Content-Length` and
//! `Transfer-Encoding`, frames the body as chunked and closes afterwards
//! (§6.1). A gateway in front of a shop must be stricter: another hop that
//! reads such a message differently would see a different request boundary,
//! which is how requests are smuggled. [`Strict`] wraps a connection, follows
//! its request boundaries (heads, `Content-Length` and chunked bodies, as
//! hyper frames them) and holds each head back until it is complete. A head
//! that is ambiguous never reaches hyper: in its place hyper reads a request
//! line it cannot parse, so it answers 400 after the responses owed to the
//! earlier pipelined requests, and closes the connection. Nothing after the
//! bad head is ever read.
//!
//! Refused here: a line ending in a bare LF or containing a bare CR, an
//! obsolete folded header line, `Transfer-Encoding` beside `Content-Length`,
//! any transfer coding but a single `chunked`, and a malformed or
//! conflicting `Content-Length`. What hyper refuses itself (bad chunk
//! syntax, oversized chunk sizes, invalid tokens) it still refuses: where
//! this follower and hyper would disagree it stops checking and passes the
//! bytes through, and hyper closes the connection on the error.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// What hyper reads in place of a refused head: a request line with a NUL
/// where the method belongs, which it answers with 400 and a close.
const REFUSED: &[u8] = b"\0 / HTTP/1.1\r\n\r\n";

/// A connection whose requests are framed strictly (module docs).
pub struct Strict<S> {
    inner: S,
    framing: Framing,
    /// The start of a head not yet complete, read but not handed on.
    held: Vec<u8>,
    /// Bytes ready to hand on, from `sent` onwards.
    ready: Vec<u8>,
    sent: usize,
    /// A head was refused: after `ready`, the stream ends.
    refused: bool,
}

impl<S> Strict<S> {
    /// `max_head` is hyper's buffer limit: a head longer than that is left
    /// to hyper to refuse (431).
    pub fn new(inner: S, max_head: usize) -> Self {
        Strict {
            inner,
            framing: Framing::new(max_head),
            held: Vec::new(),
            ready: Vec::new(),
            sent: 0,
            refused: false,
        }
    }

    /// Takes the scan's verdict on `data` (the held head and what followed
    /// it): the passing part goes to `ready`, an unfinished head stays held.
    fn settle(&mut self, data: Vec<u8>) {
        match self.framing.scan(&data) {
            Scan::Pass(n) => {
                self.ready.extend_from_slice(&data[..n]);
                self.held.extend_from_slice(&data[n..]);
            }
            Scan::Refuse { pass, reason } => {
                tracing::debug!(reason, "request refused before routing: ambiguous framing");
                self.ready.extend_from_slice(&data[..pass]);
                self.ready.extend_from_slice(REFUSED);
                self.refused = true;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Strict<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.sent < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.sent);
                buf.put_slice(&this.ready[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.ready.len() {
                    this.ready.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.refused {
                return Poll::Ready(Ok(()));
            }
            // Read straight into hyper's buffer: in the common case (whole
            // requests per read) nothing is copied or allocated here.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len();
            if start == end {
                // End of stream: an unfinished head goes on as it is, for
                // hyper to judge.
                if this.held.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = std::mem::take(&mut this.held);
                continue;
            }
            if !this.held.is_empty() {
                let mut data = std::mem::take(&mut this.held);
                data.extend_from_slice(&buf.filled()[start..end]);
                buf.set_filled(start);
                this.settle(data);
                continue;
            }
            match this.framing.scan(&buf.filled()[start..]) {
                Scan::Pass(n) => {
                    this.held.extend_from_slice(&buf.filled()[start + n..end]);
                    buf.set_filled(start + n);
                }
                Scan::Refuse { pass, reason } => {
                    tracing::debug!(reason, "request refused before routing: ambiguous framing");
                    buf.set_filled(start + pass);
                    this.ready.extend_from_slice(REFUSED);
                    this.refused = true;
                }
            }
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

super::conn::write_through!(Strict);

/// The verdict on bytes that continue the stream where the last scan ended.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The first `n` bytes may go on; the rest starts a head not yet
    /// complete, to be scanned again with what follows.
    Pass(usize),
    /// The first `pass` bytes may go on; the head after them is refused.
    Refuse { pass: usize, reason: &'static str },
}

/// Follows request boundaries through the byte stream.
struct Framing {
    state: State,
    max_head: usize,
}

#[derive(Debug)]
enum State {
    /// Expecting (the rest of) a request head.
    Head,
    /// Inside a `Content-Length` body: this many bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// No longer followed: hyper refuses what comes and closes.
    Through,
}

impl Framing {
    fn new(max_head: usize) -> Self {
        Framing {
            state: State::Head,
            max_head,
        }
    }

    fn scan(&mut self, data: &[u8]) -> Scan {
        let mut at = 0;
        loop {
            match &mut self.state {
                State::Through => return Scan::Pass(data.len()),
                State::Body(left) => {
                    let n = (*left).min((data.len() - at) as u64);
                    at += n as usize;
                    *left -= n;
                    if *left > 0 {
                        return Scan::Pass(at);
                    }
                    self.state = State::Head;
                }
                State::Chunked(chunked) => match chunked.advance(&data[at..]) {
                    Some(Ok(n)) => {
                        at += n;
                        self.state = State::Head;
                    }
                    None => return Scan::Pass(data.len()),
                    Some(Err(())) => {
                        self.state = State::Through;
                        return Scan::Pass(data.len());
                    }
                },
                State::Head => match head(&data[at..]) {
                    Head::Partial if data.len() - at > self.max_head => {
                        self.state = State::Through;
                        return Scan::Pass(data.len());
                    }
                    Head::Partial => return Scan::Pass(at),
                    Head::Refused(reason) => return Scan::Refuse { pass: at, reason },
                    Head::Complete { len, body } => {
                        at += len;
                        self.state = match body {
                            BodyLength::Chunked => State::Chunked(Chunked::default()),
                            BodyLength::Bytes(0) => State::Head,
                            BodyLength::Bytes(n) => State::Body(n),
                        };
                    }
                },
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Head {
    Partial,
    Complete { len: usize, body: BodyLength },
    Refused(&'static str),
}

#[derive(Debug, PartialEq, Eq)]
enum BodyLength {
    Bytes(u64),
    Chunked,
}

/// Reads a request head from the start of `bytes`.
fn head(bytes: &[u8]) -> Head {
    let mut at = 0;
    // Empty lines before a request line are ignored (RFC 9112 §2.2).
    while bytes[at..].starts_with(b"\r\n") {
        at += 2;
    }
    let mut request_line = true;
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked = false;
    loop {
        // A line ends at its first CR, which must be followed by LF.
        let Some(end) = memchr::memchr2(b'\r', b'\n', &bytes[at..]) else {
            return Head::Partial;
        };
        let line = &bytes[at..at + end];
        match (bytes[at + end], bytes.get(at + end + 1)) {
            (b'\n', _) => return Head::Refused("a line ends in a bare LF"),
            (_, None) => return Head::Partial,
            (_, Some(b'\n')) => at += end + 2,
            (_, Some(_)) => return Head::Refused("a bare CR inside a line"),
        }
        if request_line {
            request_line = false;
            continue;
        }
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Head::Refused("a folded header line");
        }
        // A line without a colon is hyper's to refuse.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            for n in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let Some(n) = decimal(n) else {
                    return Head::Refused("a malformed Content-Length");
                };
                if length.is_some_and(|l| l != n) {
                    return Head::Refused("conflicting Content-Length values");
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings += value.split(|&b| b == b',').count();
            chunked = value.eq_ignore_ascii_case(b"chunked");
        }
    }
    let body = match (codings, length) {
        (0, n) => BodyLength::Bytes(n.unwrap_or(0)),
        (_, Some(_)) => return Head::Refused("Content-Length and Transfer-Encoding together"),
        (1, None) if chunked => BodyLength::Chunked,
        _ => return Head::Refused("a transfer coding other than a single `chunked`"),
    };
    Head::Complete { len: at, body }
}

/// A non-empty run of ASCII digits that fits a u64: no sign, no spaces.
fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Follows a chunked body by hyper's grammar (`proto::h1::decode`): hex
/// size, optional spaces, `;` extensions, CRLF, data, CRLF, ... then a zero
/// size, optional trailer lines and an empty line.
#[derive(Debug, Default)]
struct Chunked {
    step: Step,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    #[default]
    Start,
    Size,
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

impl Chunked {
    /// Consumes `data`: `None` when the body goes on past it, the length of
    /// the body's last part when it ends within, an error where hyper's
    /// decoder fails.
    fn advance(&mut self, data: &[u8]) -> Option<Result<usize, ()>> {
        use Step::*;
        let mut at = 0;
        while at < data.len() {
            if self.step == Data {
                let n = self.size.min((data.len() - at) as u64);
                at += n as usize;
                self.size -= n;
                if self.size == 0 {
                    self.step = DataCr;
                }
                continue;
            }
            let b = data[at];
            at += 1;
            let digit = (b as char).to_digit(16).map(u64::from);
            self.step = match (self.step, b, digit) {
                (Start | Size, _, Some(d)) => {
                    match self.size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                        Some(size) => self.size = size,
                        None => return Some(Err(())),
                    }
                    Size
                }
                (Size | SizeSpace, b' ' | b'\t', _) => SizeSpace,
                (Size | SizeSpace | Extension, b';', _) => Extension,
                (Size | SizeSpace | Extension, b'\r', _) => SizeLf,
                (Extension, b'\n', _) => return Some(Err(())),
                (Extension, _, _) => Extension,
                (SizeLf, b'\n', _) if self.size == 0 => EndCr,
                (SizeLf, b'\n', _) => Data,
                (DataCr, b'\r', _) => DataLf,
                (DataLf, b'\n', _) => Start,
                (EndCr, b'\r', _) => EndLf,
                (EndCr | Trailer, _, _) if b != b'\r' => Trailer,
                (Trailer, b'\r', _) => TrailerLf,
                (TrailerLf, b'\n', _) => EndCr,
                (EndLf, b'\n', _) => return Some(Ok(at)),
                _ => return Some(Err(())),
            };
        }
        None
    }
}

#[cfg(test)]
mod tests;
