//! Python parts from `target/test-venv` (made by `scripts/test` from the
//! pins in `tests/requirements.txt`): real order services on real web
//! stacks for tests/bypass.rs — Flask under gunicorn (WSGI) and Starlette
//! under uvicorn (ASGI), the apps in `tests/stacks/` — and the ASGI apps of
//! `tests/apps/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::raw::request;
use super::{eventually, free_port, repo, signal, Url};

/// A web stack the order service runs on.
#[derive(Clone, Copy)]
pub enum Stack {
    /// Flask under gunicorn.
    Wsgi,
    /// Starlette under uvicorn.
    Asgi,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Wsgi => "flask+gunicorn",
            Stack::Asgi => "starlette+uvicorn",
        }
    }
}

/// The venv's `bin/`, which must hold `tools`; fails, naming
/// `scripts/test`, when they are not there (say, `cargo test` was run on
/// its own on a fresh checkout).
pub fn venv_bin(tools: &[&str]) -> PathBuf {
    let venv = std::env::var_os("FLASHGATE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/test-venv"));
    let bin = venv.join("bin");
    for tool in tools {
        assert!(
            bin.join(tool).exists(),
            "{} has no {tool}: run scripts/test, which installs the pinned packages of \
             tests/requirements.txt there (or point FLASHGATE_TEST_VENV at such a venv)",
            venv.display()
        );
    }
    bin
}

/// A real order service: the stack's server process, its log of what it
/// saw and took. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct OrderService {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OrderService {
    pub async fn start(stack: Stack, case_insensitive: bool) -> OrderService {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("orders.jsonl");
        std::fs::write(&log, "").expect("order log");
        let port = free_port();
        let bin = venv_bin(&["gunicorn", "uvicorn"]);
        let apps = repo().join("tests/stacks");
        let mut cmd = match stack {
            Stack::Wsgi => {
                let mut c = Command::new(bin.join("gunicorn"));
                c.args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "1"])
                    .arg("--chdir")
                    .arg(&apps)
                    .arg("wsgi_orders:app");
                c
            }
            Stack::Asgi => {
                let mut c = Command::new(bin.join("uvicorn"));
                c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--no-access-log", "--log-level", "warning"])
                    .arg("--app-dir")
                    .arg(&apps)
                    .arg("asgi_orders:app");
                c
            }
        };
        let output = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let child = cmd
            .env("ORDERS_LOG", &log)
            .env(
                "ORDERS_CASE_INSENSITIVE",
                if case_insensitive { "1" } else { "0" },
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", stack.name()));
        let service = OrderService {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        let addr = service.addr;
        let server_log = service._dir.path().join("server.log");
        eventually(Duration::from_secs(30), stack.name(), || async {
            let up = tokio::net::TcpStream::connect(addr).await.is_ok();
            if !up {
                let text = std::fs::read_to_string(&server_log).unwrap_or_default();
                assert!(!text.contains("Traceback"), "{}: {text}", stack.name());
            }
            up.then_some(())
        })
        .await;
        // Answered by the framework itself (404): its worker is serving.
        let a = request(addr, "GET", "/ready", &[], "").await;
        assert_eq!(a.status, 404, "{} is up", stack.name());
        service
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The log so far, one JSON object per line.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .expect("order log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    pub fn orders(&self) -> Vec<Value> {
        let mut events = self.events();
        events.retain(|e| e["event"] == "order");
        events
    }
}

impl Drop for OrderService {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Url for OrderService {
    fn url(&self) -> String {
        OrderService::url(self)
    }
}

/// uvicorn serving an ASGI app of `tests/apps/` (`module:app`), killed
/// when dropped. It is not waited for: the test's first request does.
pub struct AsgiApp {
    child: Child,
    port: u16,
}

impl AsgiApp {
    pub fn start(app: &str) -> AsgiApp {
        let python = venv_bin(&["python"]).join("python");
        let port = free_port();
        let child = Command::new(python)
            .args(["-m", "uvicorn", "--app-dir"])
            .arg(repo().join("tests/apps"))
            .args([app, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--log-level", "warning"])
            .stdin(Stdio::null())
            .spawn()
            .expect("uvicorn starts");
        AsgiApp { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Url for AsgiApp {
    fn url(&self) -> String {
        AsgiApp::url(self)
    }
}

impl Drop for AsgiApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
