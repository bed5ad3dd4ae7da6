//! What an operator deploys with, each checked by the tool made for it:
//! `examples/flashgate.toml` by `flashgate check-config` (and against the
//! config tree's keys, so it cannot go stale), the systemd unit by
//! `systemd-analyze verify` and `security`, the Kubernetes manifests by
//! `kubernetes-validate` (the Kubernetes JSON schemas, strict) and by running
//! the built binary on their ConfigMap; and the health listener, which lets
//! probes and scrapers in while `/admin/*` stays private.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::stacks::venv_bin;
use support::{flashgate, free_port, get, repo, Gateway, MockUpstream, Redis};

/// `flashgate check-config --config FILE` and more flags.
fn check_config(file: &Path, args: &[&str]) -> Output {
    flashgate()
        .arg("check-config")
        .arg("--config")
        .arg(file)
        .args(args)
        .output()
        .expect("the flashgate binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A line of `text` that sets `key`, or shows it commented out (`# key = `).
fn names_key(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start_matches('#').trim_start();
        l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

fn example() -> PathBuf {
    repo().join("examples/flashgate.toml")
}

#[test]
fn example_config_passes_check_config_with_every_value_at_its_default() {
    let out = check_config(&example(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The example's only value that is not a default is the required
    // upstream: with it alone, and no file, the effective config is the same.
    let file: toml::Table = std::fs::read_to_string(example()).unwrap().parse().unwrap();
    let upstream = file["upstream"]
        .as_str()
        .expect("the example sets upstream");
    let empty = tempfile::NamedTempFile::new().unwrap();
    let defaults = check_config(empty.path(), &["--upstream", upstream]);
    assert!(defaults.status.success(), "{}", text(&defaults.stderr));
    assert_eq!(text(&out.stdout), text(&defaults.stdout));
}

#[test]
fn example_config_names_every_key_of_the_config_tree() {
    let example = std::fs::read_to_string(example()).unwrap();
    let keys = flashgate::config::keys();
    assert!(keys.len() > 40, "the config tree has its keys");
    let mut missing = Vec::new();
    for key in keys {
        // At the top level a queue's name and routes are `queue` and
        // `route`; in a [[queue]] table, `name` and `routes`.
        let top = key.flag.replace('-', "_");
        if !names_key(&example, &top) {
            missing.push(top);
        }
        if key.names_queue() && !names_key(&example, &key.name) {
            missing.push(format!("[[queue]] {}", key.name));
        }
    }
    assert!(
        missing.is_empty(),
        "examples/flashgate.toml does not name {missing:?}"
    );
}

/// `systemd-analyze`, which `scripts/test` installs (package `systemd`).
fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze runs (apt-get install systemd; scripts/test does)")
}

/// The unit as shipped, with its ExecStart pointed at the built binary
/// (verify checks that the binary exists), in a directory of its own.
fn unit_copy() -> (tempfile::TempDir, PathBuf, String) {
    let shipped = std::fs::read_to_string(repo().join("deploy/systemd/flashgate.service")).unwrap();
    let exec = "ExecStart=/usr/local/bin/flashgate ";
    assert!(shipped.contains(exec), "{shipped}");
    let built = format!("ExecStart={} ", env!("CARGO_BIN_EXE_flashgate"));
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("flashgate.service");
    std::fs::write(&unit, shipped.replace(exec, &built)).unwrap();
    (dir, unit, shipped)
}

/// The value of `Key=` in a unit file (the last one set).
fn directive<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let (_dir, unit, shipped) = unit_copy();
    let out = systemd_analyze(&["verify"], &unit);
    // verify exits 0 on an unknown key or a bad value (it only warns): any
    // output is a defect too.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The exposure score, 0-100 (1.4 is shown as 14): "OK" is below 40.
    let out = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    assert!(
        out.status.success(),
        "systemd-analyze security: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(directive(&shipped, key), Some(value), "{key}");
    }
    let nofile: u64 = directive(&shipped, "LimitNOFILE").unwrap().parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    // systemd's SIGKILL comes after the shutdown grace the config allows.
    let stop =
        flashgate::config::parse_duration(directive(&shipped, "TimeoutStopSec").unwrap()).unwrap();
    let grace = flashgate::Config::default().shutdown_grace;
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} <= shutdown_grace {grace:?}"
    );
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(repo().join("deploy/kubernetes").join(name)).unwrap()
}

/// The ConfigMap's `flashgate.toml`: the block scalar under its key.
fn configmap_toml() -> String {
    let configmap = manifest("configmap.yaml");
    let mut lines = configmap
        .lines()
        .skip_while(|l| l.trim() != "flashgate.toml: |");
    assert!(
        lines.next().is_some(),
        "configmap.yaml has data.flashgate.toml"
    );
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first number after `key:` in a manifest.
fn yaml_number(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no number for {key}"))
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    let bin = venv_bin(&["kubernetes-validate"]);
    let out = Command::new(bin.join("kubernetes-validate"))
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate: {report}");
    for kind in ["configmap", "deployment", "poddisruptionbudget", "service"] {
        assert!(
            report.contains(&format!("passed for resource {kind}/flashgate")),
            "{kind} was validated: {report}"
        );
    }
    assert!(
        !report.contains("ERROR") && !report.contains("WARN"),
        "{report}"
    );
}

#[test]
fn kubernetes_configmap_passes_check_config_and_fits_the_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flashgate.toml");
    std::fs::write(&file, configmap_toml()).unwrap();
    let out = check_config(&file, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: toml::Table = text(&out.stdout).parse().unwrap();
    let port = |key: &str| -> u64 {
        let addr: std::net::SocketAddr = config[key].as_str().unwrap().parse().unwrap();
        addr.port().into()
    };
    let admin: std::net::SocketAddr = config["admin_listen"].as_str().unwrap().parse().unwrap();
    assert!(admin.ip().is_loopback(), "the admin API stays in the pod");

    let deployment = manifest("deployment.yaml");
    // The container ports the probes and the Service name are the
    // listeners of the ConfigMap.
    assert!(deployment.contains(&format!("containerPort: {}", port("listen"))));
    assert!(deployment.contains(&format!("containerPort: {}", port("health_listen"))));
    assert_eq!(
        yaml_number(&deployment, "prometheus.io/port"),
        port("health_listen")
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let at = deployment.find(probe).expect(probe);
        assert!(deployment[at..].contains("port: health"), "{probe}");
    }
    let grace = flashgate::config::parse_duration(config["shutdown_grace"].as_str().unwrap())
        .unwrap()
        .as_secs();
    let termination = yaml_number(&deployment, "terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} <= shutdown_grace {grace}s"
    );
}

/// The built binary on the ConfigMap's file, as a pod runs it (its Redis,
/// upstream and addresses replaced by the test's own): the kubelet's probes
/// and the scrape get their answers on the health port, which has no admin
/// API, and an order goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configmap_serves_probes_on_the_health_port_and_orders_on_the_public_one() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let health = free_port();
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .toml(&configmap_toml())
        .args(&["--health-listen", &format!("127.0.0.1:{health}")])
        .process()
        .await;
    let health = format!("http://127.0.0.1:{health}");
    for path in ["/healthz", "/readyz"] {
        let a = get(&format!("{health}{path}")).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    let metrics = get(&format!("{health}/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("flashgate_"), "{}", metrics.text());
    let c = gw.client();
    assert_eq!(c.admin_get("/admin/queues").await.status, 200);
    for (method, path) in [
        ("GET", "/admin/queues"),
        ("PATCH", "/admin/queues/checkout"),
    ] {
        let a = support::send(method, &format!("{health}{path}"), &[], "{}").await;
        assert_eq!(a.status, 404, "{method} {path} on the health port");
    }
    let ticket = c.ticket(r#"{"sku":"k8s"}"#).await;
    let done = c.until_terminal(&ticket, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(upstream.received().len(), 1);
}

#[test]
fn serve_refuses_an_open_admin_api_beyond_loopback() {
    let out = flashgate()
        .args(["serve", "--upstream", "http://127.0.0.1:9"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("0.0.0.0:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("`admin_listen`") && err.contains("admin_token"),
        "{err}"
    );
}

#[test]
fn license_is_the_apache_2_0_text_cargo_toml_names() {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(repo().join("LICENSE")).unwrap();
    assert!(
        license.contains("Apache License\n                           Version 2.0, January 2004")
    );
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
}

/// Runs `podman` (installed by `scripts/test` with mmdebstrap and runc),
/// asserting success; its stdout.
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs (apt-get install podman; scripts/test does)");
    assert!(
        out.status.success(),
        "podman {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

/// The run-time base the image is built on here: glibc and libgcc from
/// Debian packages (mmdebstrap, no maintainer scripts, no shell), in place
/// of the Containerfile's default public base, which no registry serves here.
/// Made once per machine (about 20 s), then reused.
fn debian_base() -> &'static str {
    const BASE: &str = "localhost/flashgate-base:bookworm";
    let exists = Command::new("podman")
        .args(["image", "exists", BASE])
        .status()
        .expect("podman runs (apt-get install podman; scripts/test does)");
    if !exists.success() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("base.tar");
        let out = Command::new("mmdebstrap")
            .args([
                "--variant=extract",
                "--include=libc6,libgcc-s1",
                "--format=tar",
            ])
            .args(["bookworm".as_ref(), tar.as_os_str()])
            .output()
            .expect("mmdebstrap runs (apt-get install mmdebstrap; scripts/test does)");
        assert!(out.status.success(), "mmdebstrap: {}", text(&out.stderr));
        podman(&["import", tar.to_str().unwrap(), BASE]);
    }
    BASE
}

/// A container that is removed when the test ends, passed or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.0]).output();
    }
}

/// The image of `deploy/container/Containerfile`, built with podman from the
/// binary this test run built (stripped; `BINARY=prebuilt`), on a base made
/// from Debian packages; then run: non-root, no shell, its health check
/// passes, an order is admitted, polled and completed through it, and
/// `podman stop` (SIGTERM) ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_image_builds_runs_an_order_and_stops_on_sigterm() {
    let base = debian_base();
    let context = tempfile::tempdir().unwrap();
    let binary = context.path().join("flashgate");
    std::fs::copy(env!("CARGO_BIN_EXE_flashgate"), &binary).unwrap();
    let strip = Command::new("strip")
        .arg(&binary)
        .status()
        .expect("strip runs");
    assert!(strip.success());
    let image = format!("localhost/flashgate-test:{}", std::process::id());
    let containerfile = repo().join("deploy/container/Containerfile");
    podman(&[
        "build",
        "--quiet",
        // HEALTHCHECK is a Docker-format field: OCI images drop it.
        "--format=docker",
        "--build-arg",
        &format!("BASE={base}"),
        "--build-arg",
        "BINARY=prebuilt",
        "-f",
        containerfile.to_str().unwrap(),
        "-t",
        &image,
        context.path().to_str().unwrap(),
    ]);
    let _image = ImageGuard(image.clone());
    let config = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Config.StopSignal}} {{json .Config.Healthcheck.Test}} {{.Size}}",
        &image,
    ]);
    let fields: Vec<&str> = config.split(' ').collect();
    assert_eq!(fields[..2], ["65532:65532", "SIGTERM"], "{config}");
    assert!(fields[2].contains("flashgate"), "{config}");
    let size: u64 = fields[3].parse().unwrap();
    eprintln!("image size: {size} bytes");

    // This machine's cgroups are a v1/v2 hybrid, which crun refuses; runc
    // runs there. Raising limits is not allowed here, so they are lowered.
    let run_flags = [
        "--runtime=runc",
        "--ulimit=nofile=4096:4096",
        "--ulimit=nproc=4096:4096",
    ];
    let mut sh = Command::new("podman");
    sh.arg("run").arg("--rm").args(run_flags);
    let sh = sh
        .args(["--entrypoint", "/bin/sh", &image, "-c", "true"])
        .output()
        .unwrap();
    assert!(!sh.status.success(), "the image has no shell");

    let upstream = MockUpstream::start().await;
    let (public, admin, health) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "listen = \"127.0.0.1:{public}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         health_listen = \"127.0.0.1:{health}\"\nupstream = \"{}\"\nshutdown_grace = \"5s\"\n",
        support::Url::url(&upstream)
    );
    std::fs::write(dir.path().join("flashgate.toml"), toml).unwrap();
    // Readable by the image's user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.path().join("flashgate.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let name = format!("flashgate-test-{}", std::process::id());
    let mut run = vec!["run", "-d", "--name", &name, "--network=host"];
    run.extend(run_flags);
    let admin_url = format!("FLASHGATE_ADMIN_URL=http://127.0.0.1:{admin}");
    let volume = format!("{}:/etc/flashgate:ro", dir.path().display());
    run.extend(["-e", &admin_url, "-v", &volume, &image]);
    podman(&run);
    let container = Container(name.clone());

    let url = format!("http://127.0.0.1:{health}/readyz");
    support::eventually(Duration::from_secs(20), "the container ready", || async {
        support::try_get(&url)
            .await
            .filter(|a| a.status == 200)
            .map(|_| ())
    })
    .await;
    podman(&["healthcheck", "run", &name]);
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let c = support::Client::new(at(public), at(admin));
    let ticket = c.ticket(r#"{"sku":"container"}"#).await;
    let done = c.until_terminal(&ticket, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(upstream.received().len(), 1);

    podman(&["stop", "--time=20", &name]);
    let exit = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    let logs = Command::new("podman")
        .args(["logs", &name])
        .output()
        .unwrap();
    let logs = format!("{}{}", text(&logs.stdout), text(&logs.stderr));
    assert_eq!(exit, "0", "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
    drop(container);
}

/// An image that is removed when the test ends.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
        // And the `prebuilt` stage's intermediate image (`--layers=false`,
        // which would leave none, fails on podman 4.3's multi-stage builds).
        let prebuilt = "label=flashgate.stage=prebuilt";
        let _ = (Command::new("podman"))
            .args(["image", "prune", "-f", "--filter", prebuilt])
            .output();
    }
}
