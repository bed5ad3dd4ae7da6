//! The access log (`--access-log`): one line per request on every listener,
//! as nginx and Envoy write them, in JSON or nginx's `combined` format.
//!
//! Writing never holds a request up: a finished request hands its line to
//! a bounded channel ([`AccessLog::log`] never waits), and one writer
//! thread formats the lines and writes them through a buffer, in batches
//! (every [`LINGER`] while lines keep coming), flushed whenever the channel
//! runs empty. A sink slower than the traffic fills
//! the channel; the lines beyond it are dropped and counted
//! (`flashgate_access_log_dropped_total`). A file is opened again on
//! [`AccessLog::reopen`] (SIGUSR1), after logrotate moved it away.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use prometheus::IntCounter;
use serde::Serialize;
use tracing::warn;

use crate::config::{AccessLog as Sink, AccessLogFormat};
use crate::http::exchange::Note;

/// The writer's buffer: lines are written in chunks of about this size
/// while the channel is busy, at once when it runs empty.
const WRITE_BUFFER: usize = 64 * 1024;

/// How long the writer lets lines gather while they keep coming: a line
/// reaches the sink at most about this late.
const LINGER: Duration = Duration::from_millis(10);

/// The access log of a running gateway.
pub struct AccessLog {
    lines: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    dropped: IntCounter,
}

enum Message {
    Line(Box<Entry>),
    /// Look at the reopen flag now.
    Wake,
}

/// One request, as its line reports it.
#[derive(Debug)]
pub struct Entry {
    /// When the request arrived.
    pub time: SystemTime,
    pub request_id: HeaderValue,
    /// `public`, `admin` or `health`.
    pub listener: &'static str,
    pub peer: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub status: u16,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// From arrival to the answer's last byte (or the client leaving).
    pub duration: Duration,
    pub note: Note,
}

impl AccessLog {
    /// The access log `sink` asks for, or `None` when it is `off`; a file
    /// is opened (created, appended to) now, so a bad path stops the start.
    pub fn start(
        sink: &Sink,
        format: AccessLogFormat,
        buffer: u32,
        dropped: IntCounter,
    ) -> io::Result<Option<Arc<AccessLog>>> {
        let target = match sink {
            Sink::Off => return Ok(None),
            Sink::Stdout => Target::Stdout,
            Sink::Stderr => Target::Stderr,
            Sink::Path(path) => Target::File(path.clone()),
        };
        let out = target.open()?;
        let (lines, rx) = mpsc::sync_channel(buffer.max(1) as usize);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            target,
            format,
            out: BufWriter::with_capacity(WRITE_BUFFER, out),
            line: Vec::with_capacity(512),
            reopen: reopen.clone(),
            dropped: dropped.clone(),
            failing: false,
        };
        // A thread of its own: a file or pipe write blocks, and must block
        // no request's task.
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Some(Arc::new(AccessLog {
            lines,
            reopen,
            dropped,
        })))
    }

    /// Hands a finished request's line to the writer, or drops and counts
    /// it when the writer is that far behind.
    pub fn log(&self, entry: Box<Entry>) {
        match self.lines.try_send(Message::Line(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Opens the file again (SIGUSR1, after logrotate moved it): the lines
    /// from now on go to a new file at the configured path. Nothing to do
    /// for stdout and stderr.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
        // A full channel wakes the writer anyway.
        let _ = self.lines.try_send(Message::Wake);
    }
}

/// Where the lines go.
enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Target {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Target::Stdout => Box::new(io::stdout()),
            Target::Stderr => Box::new(io::stderr()),
            Target::File(path) => Box::new(append(path)?),
        })
    }
}

fn append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The writer thread's state.
struct Writer {
    target: Target,
    format: AccessLogFormat,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The line being formatted, reused.
    line: Vec<u8>,
    reopen: Arc<AtomicBool>,
    dropped: IntCounter,
    /// Whether the last write failed (warned once per spell).
    failing: bool,
}

impl Writer {
    fn run(mut self, lines: Receiver<Message>) {
        loop {
            let mut took = false;
            loop {
                match lines.try_recv() {
                    Ok(message) => {
                        self.take(message);
                        took = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.flush(),
                }
            }
            if took {
                // Busy: let the next lines gather while nobody waits on
                // the channel, so a request's send wakes no thread and the
                // buffer goes out in large writes, not one per line.
                std::thread::sleep(LINGER);
                continue;
            }
            // Quiet: out with what is buffered, then sleep until a line comes.
            self.flush();
            match lines.recv() {
                Ok(message) => self.take(message),
                Err(_) => return,
            }
        }
    }

    fn take(&mut self, message: Message) {
        if self.reopen.swap(false, Ordering::SeqCst) {
            self.reopen_file();
        }
        let Message::Line(entry) = message else {
            return;
        };
        self.line.clear();
        match self.format {
            AccessLogFormat::Json => json(&mut self.line, &entry),
            AccessLogFormat::Combined => combined(&mut self.line, &entry),
        }
        self.line.push(b'\n');
        let written = self.out.write_all(&self.line);
        self.wrote(written);
    }

    fn flush(&mut self) {
        let flushed = self.out.flush();
        self.wrote(flushed);
    }

    fn wrote(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) => {
                // What the buffer held may be lost: at least this line.
                self.dropped.inc();
                if !self.failing {
                    warn!(error = %e, "access log write failed: lines are dropped until it works again");
                }
                self.failing = true;
            }
        }
    }

    fn reopen_file(&mut self) {
        let Target::File(path) = &self.target else {
            return;
        };
        match append(path) {
            Ok(file) => {
                self.flush();
                self.out = BufWriter::with_capacity(WRITE_BUFFER, Box::new(file));
            }
            Err(e) => {
                warn!(error = %e, "access log not reopened: still writing to the file it had open")
            }
        }
    }
}

/// The JSON line: every field, `null` when unknown.
#[derive(Serialize)]
struct Json<'a> {
    time: String,
    request_id: &'a str,
    listener: &'static str,
    peer: String,
    client: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    route: Option<&'static str>,
    queue: Option<&'a str>,
    ticket: Option<&'a str>,
    code: Option<&'static str>,
    upstream_status: Option<u16>,
    attempt: Option<u32>,
    user_agent: Option<String>,
    referer: Option<String>,
}

fn json(out: &mut Vec<u8>, e: &Entry) {
    let text = |v: &Option<HeaderValue>| {
        v.as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let line = Json {
        time: humantime::format_rfc3339_millis(e.time).to_string(),
        request_id: e.request_id.to_str().unwrap_or_default(),
        listener: e.listener,
        peer: e.peer.to_string(),
        client: e.note.client.as_deref(),
        method: e.method.as_str(),
        path: target(&e.uri),
        protocol: protocol(e.version),
        status: e.status,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        duration_ms: e.duration.as_micros() as f64 / 1000.0,
        route: e.note.route,
        queue: e.note.queue.as_deref(),
        ticket: e.note.ticket.as_deref(),
        code: e.note.code,
        upstream_status: e.note.upstream_status,
        attempt: e.note.attempt,
        user_agent: text(&e.user_agent),
        referer: text(&e.referer),
    };
    // Plain data: serializing it into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
}

/// The request target as received: path and query.
fn target(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// nginx's `combined`, then the request id:
/// `$remote_addr - $remote_user [$time_local] "$request" $status
/// $body_bytes_sent "$http_referer" "$http_user_agent" "$request_id"`,
/// the time in UTC, and the quoted fields escaped as nginx does (`"`, `\`
/// and bytes outside printable ASCII as `\xHH`).
fn combined(out: &mut Vec<u8>, e: &Entry) {
    use std::io::Write as _;
    let _ = write!(out, "{} - - [", e.peer.ip());
    clf_time(out, e.time);
    out.extend_from_slice(b"] \"");
    escape(out, e.method.as_str().as_bytes());
    out.push(b' ');
    escape(out, target(&e.uri).as_bytes());
    out.push(b' ');
    out.extend_from_slice(protocol(e.version).as_bytes());
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes_out);
    quoted(out, &e.referer);
    out.extend_from_slice(b"\" \"");
    quoted(out, &e.user_agent);
    out.extend_from_slice(b"\" \"");
    escape(out, e.request_id.as_bytes());
    out.push(b'"');
}

fn quoted(out: &mut Vec<u8>, v: &Option<HeaderValue>) {
    match v {
        Some(v) => escape(out, v.as_bytes()),
        None => out.push(b'-'),
    }
}

fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = std::io::Write::write_fmt(out, format_args!("\\x{b:02X}"));
        } else {
            out.push(b);
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000`.
fn clf_time(out: &mut Vec<u8>, t: SystemTime) {
    use std::io::Write as _;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let month = MONTHS[usize::from(u8::from(t.month())) - 1];
    let _ = write!(
        out,
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        t.day(),
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    );
}

#[cfg(test)]
mod tests;
