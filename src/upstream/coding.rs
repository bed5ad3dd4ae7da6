//! Content codings of upstream answers (RFC 9110 §8.4). The drain asks the
//! upstream for `identity`; one that compresses anyway has its answer
//! decoded here before it is stored, so a ticket shows the body as text, a
//! sold-out needle is found in it, and any client can read
//! `/tickets/{id}/response` whatever it accepts.
//!
//! Decoding is bounded: each layer's output stops one byte past the stored
//! answer's limit (a zip bomb costs at most that), at most [`MAX_LAYERS`]
//! layers are peeled, and at most [`CONCURRENT_DECODES`] run at once, on the
//! blocking pool, since a brotli stream may claim a 16 MiB window.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

/// Codings peeled per answer at most; any below stay, named in
/// `Content-Encoding` (no real server stacks more than two).
pub const MAX_LAYERS: usize = 4;

/// Decodes running at once per instance, whatever the drain's in-flight
/// limit: bounds the memory decoding can take (a brotli window of up to
/// 16 MiB plus the output, each).
pub const CONCURRENT_DECODES: usize = 4;

/// Digests of the bytes as sent (RFC 9530): wrong once they are decoded.
static DIGESTS: [HeaderName; 2] = [
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("repr-digest"),
];

/// The answer decodes to more than the stored answer's limit: a zip bomb,
/// or just too big. Handled like an answer sent over the limit.
#[derive(Debug, thiserror::Error)]
#[error("the answer decodes to more than {limit} bytes (Content-Encoding: {codings})")]
pub struct TooLarge {
    pub limit: usize,
    pub codings: String,
}

/// A content coding the gateway decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// `gzip` and its alias `x-gzip`; several members are one body.
    Gzip,
    /// `deflate`: a zlib stream as RFC 9110 says, or raw deflate as some
    /// servers send it (browsers accept both).
    Deflate,
    /// `br`.
    Brotli,
}

impl Coding {
    /// A lower-case coding token; `None` for any other coding.
    fn parse(token: &str) -> Option<Self> {
        match token {
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            _ => None,
        }
    }

    fn reader(self, body: &[u8]) -> Box<dyn Read + '_> {
        match self {
            Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
            Coding::Deflate if is_zlib(body) => Box::new(flate2::read::ZlibDecoder::new(body)),
            Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(body)),
            Coding::Brotli => Box::new(brotli_decompressor::Decompressor::new(body, 4096)),
        }
    }
}

/// An RFC 1950 header: method 8 (deflate), a window of at most 32 KiB, and
/// the two bytes a multiple of 31.
fn is_zlib(b: &[u8]) -> bool {
    b.len() >= 2
        && b[0] & 0x0f == 8
        && b[0] >> 4 <= 7
        && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

/// Decodes upstream answers, bounded in size and in concurrency.
#[derive(Clone)]
pub struct Decoder {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl Decoder {
    /// Decoded bodies of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Decoder {
            slots: Arc::new(Semaphore::new(CONCURRENT_DECODES)),
            limit,
        }
    }

    /// The body with the codings the gateway knows peeled off, last applied
    /// first, and the headers made to match: `Content-Encoding` names what
    /// is left (an unknown coding, or a layer that did not decode, stays as
    /// sent), `Content-Length` goes, a strong `ETag` is weakened.
    pub async fn decode(&self, headers: &mut HeaderMap, body: Bytes) -> Result<Bytes, TooLarge> {
        let Some(codings) = content_codings(headers) else {
            return Ok(body);
        };
        if codings.is_empty() || body.is_empty() {
            // Only `identity`, or nothing to decode: the header says nothing.
            headers.remove(header::CONTENT_ENCODING);
            return Ok(body);
        }
        let layers: Vec<Coding> = codings
            .iter()
            .rev()
            .take(MAX_LAYERS)
            .map_while(|c| Coding::parse(c))
            .collect();
        if layers.is_empty() {
            return Ok(body);
        }
        let (decoded, peeled) = {
            // Never closed: an error would only mean no slot, so decode anyway.
            let _slot = self.slots.acquire().await;
            let limit = self.limit;
            let sent = body.clone();
            match tokio::task::spawn_blocking(move || peel(&layers, sent, limit)).await {
                Ok(Peeled::Within(decoded, peeled)) => (decoded, peeled),
                Ok(Peeled::TooLarge) => {
                    return Err(TooLarge {
                        limit: self.limit,
                        codings: codings.join(", "),
                    })
                }
                // A decoder panicked: the answer is kept as it was sent.
                Err(_) => (body, 0),
            }
        };
        if peeled == 0 {
            return Ok(decoded);
        }
        let left = &codings[..codings.len() - peeled];
        match HeaderValue::from_str(&left.join(", ")) {
            Ok(v) if !left.is_empty() => _ = headers.insert(header::CONTENT_ENCODING, v),
            _ => _ = headers.remove(header::CONTENT_ENCODING),
        }
        // hyper frames the stored body itself; the sent length is wrong now.
        headers.remove(header::CONTENT_LENGTH);
        for name in &DIGESTS {
            headers.remove(name);
        }
        // A strong validator names these exact bytes (RFC 9110 §8.8.1).
        if let Some(strong) = headers
            .get(header::ETAG)
            .filter(|v| v.as_bytes().starts_with(b"\""))
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(strong.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, v);
            }
        }
        Ok(decoded)
    }
}

/// The codings in `Content-Encoding`, in the order applied, lower-case,
/// without `identity`; `None` without the header.
fn content_codings(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter().peekable();
    values.peek()?;
    Some(
        values
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t != "identity")
            .collect(),
    )
}

#[derive(Debug)]
enum Peeled {
    /// The body after the first `n` layers; a layer that did not decode
    /// (corrupt, truncated) and those below it stay.
    Within(Bytes, usize),
    TooLarge,
}

/// Decodes `layers` in turn (outermost first), none past `limit` bytes.
fn peel(layers: &[Coding], mut body: Bytes, limit: usize) -> Peeled {
    for (done, coding) in layers.iter().enumerate() {
        let mut out = Vec::new();
        let read = coding
            .reader(&body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out);
        match read {
            Ok(_) if out.len() > limit => return Peeled::TooLarge,
            Ok(_) => body = Bytes::from(out),
            Err(_) => return Peeled::Within(body, done),
        }
    }
    Peeled::Within(body, layers.len())
}

#[cfg(test)]
mod tests;
