use std::io::Write;

use super::*;

const TEXT: &[u8] = b"{\"order\":\"ord-42\",\"note\":\"caf\xc3\xa9\"}";
const LIMIT: usize = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, HeaderValue::from_str(v).unwrap());
    }
    h
}

async fn decode(h: &mut HeaderMap, body: Vec<u8>) -> Result<Bytes, TooLarge> {
    Decoder::new(LIMIT).decode(h, Bytes::from(body)).await
}

#[tokio::test]
async fn each_known_coding_is_decoded_and_its_headers_dropped() {
    let cases = [
        ("gzip", gzip(TEXT)),
        ("x-gzip", gzip(TEXT)),
        ("GZip", gzip(TEXT)),
        ("deflate", zlib(TEXT)),
        ("deflate", raw_deflate(TEXT)),
        ("br", brotli(TEXT)),
        ("identity, gzip", gzip(TEXT)),
    ];
    for (coding, body) in cases {
        let mut h = headers(&[
            ("content-encoding", coding),
            ("content-length", &body.len().to_string()),
            ("content-type", "application/json"),
            ("content-digest", "sha-256=:AAAA:"),
        ]);
        let out = decode(&mut h, body).await.unwrap();
        assert_eq!(&out[..], TEXT, "{coding}");
        assert!(h.get("content-encoding").is_none(), "{coding}");
        assert!(h.get("content-length").is_none(), "{coding}");
        assert!(h.get("content-digest").is_none(), "{coding}");
        assert_eq!(h["content-type"], "application/json");
    }
}

#[tokio::test]
async fn stacked_codings_are_peeled_last_applied_first() {
    // `gzip, br`: gzipped, then the gzip bytes brotli-compressed.
    let mut h = headers(&[("content-encoding", "gzip, br")]);
    assert_eq!(
        &decode(&mut h, brotli(&gzip(TEXT))).await.unwrap()[..],
        TEXT
    );
    assert!(h.get("content-encoding").is_none());
    // The same stack over two header lines.
    let mut h = headers(&[
        ("content-encoding", "deflate"),
        ("content-encoding", "gzip"),
    ]);
    assert_eq!(&decode(&mut h, gzip(&zlib(TEXT))).await.unwrap()[..], TEXT);
    assert!(h.get("content-encoding").is_none());
}

#[tokio::test]
async fn gzip_members_are_one_body() {
    let mut body = gzip(b"{\"a\":");
    body.extend(gzip(b"1}"));
    let mut h = headers(&[("content-encoding", "gzip")]);
    assert_eq!(&decode(&mut h, body).await.unwrap()[..], b"{\"a\":1}");
}

#[tokio::test]
async fn unknown_codings_are_kept_as_sent() {
    let sent = b"\x28\xb5\x2f\xfd not really zstd".to_vec();
    let mut h = headers(&[("content-encoding", "zstd"), ("content-length", "22")]);
    let out = decode(&mut h, sent.clone()).await.unwrap();
    assert_eq!(&out[..], &sent[..]);
    assert_eq!(h["content-encoding"], "zstd");
    assert_eq!(h["content-length"], "22");
    // Known layers above an unknown one are still peeled.
    let mut h = headers(&[("content-encoding", "zstd, gzip")]);
    assert_eq!(&decode(&mut h, gzip(&sent)).await.unwrap()[..], &sent[..]);
    assert_eq!(h["content-encoding"], "zstd");
}

#[tokio::test]
async fn a_layer_that_does_not_decode_stays_with_its_name() {
    let mut truncated = gzip(TEXT);
    truncated.truncate(truncated.len() - 6);
    for (coding, body) in [
        ("gzip", truncated.clone()),
        ("gzip", TEXT.to_vec()),
        ("br", TEXT.to_vec()),
        ("deflate", b"\xff\xff\xff\xff".to_vec()),
    ] {
        let mut h = headers(&[("content-encoding", coding)]);
        let out = decode(&mut h, body.clone()).await.unwrap();
        assert_eq!(&out[..], &body[..], "{coding}");
        assert_eq!(h["content-encoding"], coding);
    }
    // `gzip, br` whose inner gzip is cut short: br peeled, gzip kept.
    let mut h = headers(&[("content-encoding", "gzip, br")]);
    let out = decode(&mut h, brotli(&truncated)).await.unwrap();
    assert_eq!(&out[..], &truncated[..]);
    assert_eq!(h["content-encoding"], "gzip");
}

#[tokio::test]
async fn identity_and_empty_bodies_need_no_header() {
    let mut h = headers(&[("content-encoding", "identity")]);
    assert_eq!(&decode(&mut h, TEXT.to_vec()).await.unwrap()[..], TEXT);
    assert!(h.get("content-encoding").is_none());
    let mut h = headers(&[("content-encoding", "gzip")]);
    assert!(decode(&mut h, Vec::new()).await.unwrap().is_empty());
    assert!(h.get("content-encoding").is_none());
    let mut h = headers(&[("content-length", "3")]);
    assert_eq!(&decode(&mut h, b"abc".to_vec()).await.unwrap()[..], b"abc");
    assert_eq!(h["content-length"], "3", "an identity answer is untouched");
}

#[tokio::test]
async fn strong_etags_are_weakened() {
    let mut h = headers(&[("content-encoding", "gzip"), ("etag", "\"v1\"")]);
    decode(&mut h, gzip(TEXT)).await.unwrap();
    assert_eq!(h["etag"], "W/\"v1\"");
    let mut h = headers(&[("content-encoding", "gzip"), ("etag", "W/\"v1\"")]);
    decode(&mut h, gzip(TEXT)).await.unwrap();
    assert_eq!(h["etag"], "W/\"v1\"");
}

#[tokio::test]
async fn decoded_size_is_bounded_by_the_limit() {
    let exact = vec![b'a'; LIMIT];
    for (coding, body) in [("gzip", gzip(&exact)), ("br", brotli(&exact))] {
        let mut h = headers(&[("content-encoding", coding)]);
        assert_eq!(decode(&mut h, body).await.unwrap().len(), LIMIT, "{coding}");
    }
    // 50 MB of zeros: about 50 KB gzipped, 2 KB as gzip-of-gzip.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for _ in 0..50 {
        e.write_all(&[0; 1_000_000]).unwrap();
    }
    let bomb = e.finish().unwrap();
    for (coding, body) in [
        ("gzip", bomb.clone()),
        ("gzip, gzip", gzip(&bomb)),
        ("br", brotli(&[0; LIMIT + 1])),
        ("deflate", zlib(&[0; LIMIT + 1])),
    ] {
        let mut h = headers(&[("content-encoding", coding)]);
        let err = decode(&mut h, body).await.unwrap_err();
        assert_eq!(err.limit, LIMIT);
        assert_eq!(err.codings, coding);
    }
}

#[tokio::test]
async fn at_most_max_layers_are_peeled() {
    let mut body = TEXT.to_vec();
    for _ in 0..MAX_LAYERS + 1 {
        body = gzip(&body);
    }
    let mut h = headers(&[("content-encoding", &["gzip"; MAX_LAYERS + 1].join(", "))]);
    let out = decode(&mut h, body).await.unwrap();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(&flate2_gunzip(&out)[..], TEXT);
}

fn flate2_gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn zlib_headers_are_told_from_raw_deflate() {
    assert!(is_zlib(&zlib(TEXT)));
    assert!(!is_zlib(&raw_deflate(TEXT)));
    assert!(!is_zlib(b"x"));
}
