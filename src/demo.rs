//! `flashgate demo`: the gateway in front of a sample checkout service, a
//! short flash-sale burst, and a live view of it draining.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::backend::knobs::KnobsPatch;
use crate::cli::DemoArgs;
use crate::config::{Config, QueueConfig};
use crate::Gateway;

/// A stand-in order service: places an order after a few milliseconds while
/// stock lasts, then answers 410 sold out. Redeliveries (same
/// `Idempotency-Key`) get the original answer and change nothing.
pub struct SampleShop {
    pub addr: SocketAddr,
    pub orders: Arc<AtomicU32>,
    shop: Arc<Shop>,
}

struct Shop {
    stock: AtomicU32,
    orders: Arc<AtomicU32>,
    answers: Mutex<HashMap<String, (StatusCode, String)>>,
}

impl SampleShop {
    pub async fn start(stock: u32) -> anyhow::Result<SampleShop> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let orders = Arc::new(AtomicU32::new(0));
        let shop = Arc::new(Shop {
            stock: AtomicU32::new(stock),
            orders: orders.clone(),
            answers: Mutex::new(HashMap::new()),
        });
        let serving = shop.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shop = serving.clone();
                let service = service_fn(move |req| {
                    let shop = shop.clone();
                    async move { Ok::<_, std::convert::Infallible>(shop.order(req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Ok(SampleShop { addr, orders, shop })
    }

    /// Puts `units` back on the shelf.
    pub fn restock(&self, units: u32) {
        self.shop.stock.store(units, Ordering::SeqCst);
    }
}

impl Shop {
    async fn order(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let _ = req.into_body().collect().await;
        // An order takes the shop a few milliseconds.
        tokio::time::sleep(Duration::from_millis(
            5 + getrandom::u64().unwrap_or(0) % 10,
        ))
        .await;
        let (status, body) = {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            answers
                .entry(key)
                .or_insert_with(|| {
                    let left = self
                        .stock
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| s.checked_sub(1));
                    match left {
                        Ok(before) => {
                            let n = self.orders.fetch_add(1, Ordering::SeqCst) + 1;
                            (
                                StatusCode::CREATED,
                                format!(
                                    r#"{{"order_id":"ord-{n:06}","sku":"sneaker-42","units_left":{}}}"#,
                                    before - 1
                                ),
                            )
                        }
                        Err(_) => (StatusCode::GONE, r#"{"error":"sold_out"}"#.to_string()),
                    }
                })
                .clone()
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    }
}

/// Runs the demo until `stop` resolves (or the burst drains, with `--exit`).
pub async fn run(args: DemoArgs, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let shop = SampleShop::start(args.stock).await?;
    let mut config = Config {
        listen: args.listen.parse().context("--listen")?,
        admin_listen: args.admin_listen.parse().context("--admin-listen")?,
        redis_url: args.redis_url.clone().filter(|u| !u.is_empty()),
        shutdown_grace: Duration::from_secs(5),
        queue: vec![QueueConfig {
            upstream: format!("http://{}", shop.addr),
            drain_rate: args.drain_rate,
            max_attempts: 5,
            // The sample shop answers 410 once its stock is gone: the queue
            // then flips to sold out and the tickets still waiting fail fast.
            sold_out_statuses: vec![410],
            ..QueueConfig::default()
        }],
        ..Config::default()
    };
    config.validate()?;
    let gateway = Gateway::start(config).await.context(
        "cannot start the demo gateway (is another program on its port? try --listen 127.0.0.1:0)",
    )?;
    let public = gateway.public_addr;
    let admin = gateway.admin_addr;
    println!();
    println!(
        "flashgate demo: sample checkout service on {}, {} units in stock",
        shop.addr, args.stock
    );
    println!(
        "gateway on http://{public} (admin http://{admin}), draining at {}/s",
        args.drain_rate
    );
    println!(
        "sending a flash-sale burst: {} checkouts over {} connections\n",
        args.requests, args.concurrency
    );

    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let burst = tokio::spawn(burst(
        public,
        args.requests,
        args.concurrency,
        admitted.clone(),
        refused.clone(),
    ));
    let queue = gateway.app.queues[0].clone();
    let metrics = gateway.app.metrics.clone();
    let mut burst = Some(burst);
    let mut burst_time = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Some(done) = burst.take_if(|b| b.is_finished()) {
            burst_time = Some(done.await.unwrap_or_default());
        }
        let stats = queue.backend.stats().await.unwrap_or_default();
        let completed = metrics
            .dispatches
            .with_label_values(&["checkout", "completed"])
            .get();
        println!(
            "{:>5.1}s  admitted {:>5}  queue depth {:>5}  in flight {:>3}  drained {:>5}  completed {:>5}  orders placed {:>4}",
            started.elapsed().as_secs_f64(),
            admitted.load(Ordering::Relaxed),
            stats.depth,
            stats.in_flight,
            stats.dispatched,
            completed,
            shop.orders.load(Ordering::Relaxed),
        );
        if burst_time.is_some() && stats.depth == 0 && stats.in_flight == 0 {
            break;
        }
    }
    let burst_time = burst_time.unwrap_or_default();
    let total = started.elapsed();
    let n = admitted.load(Ordering::Relaxed);
    println!();
    println!(
        "burst absorbed: {n} admitted in {:.2}s ({:.0} admissions/s), {} refused",
        burst_time.as_secs_f64(),
        n as f64 / burst_time.as_secs_f64().max(1e-3),
        refused.load(Ordering::Relaxed)
    );
    let orders = u64::from(shop.orders.load(Ordering::Relaxed));
    let sold_out = metrics
        .dispatches
        .with_label_values(&["checkout", "failed"])
        .get();
    println!(
        "drained in {:.1}s against a limit of {}/s: {orders} orders placed; {} answered by the shop after it sold out, {sold_out} failed fast as sold out without reaching it",
        total.as_secs_f64(),
        args.drain_rate,
        n.saturating_sub(orders + sold_out),
    );
    if args.exit {
        gateway.shutdown();
        gateway.wait().await;
        return Ok(());
    }
    // Restock and reopen, so the commands below show a whole ticket's life.
    shop.restock(args.stock);
    let reopen = KnobsPatch {
        sold_out: Some(false),
        ..KnobsPatch::default()
    };
    if let Ok(knobs) = queue.backend.set_knobs(&reopen, Some("demo")).await {
        queue.update_knobs(knobs);
    }
    println!(
        "\nThe shop restocked {} units and the sale is open again. The gateway keeps serving; try it (Ctrl-C to stop):\n",
        args.stock
    );
    println!("  # join the queue");
    println!(
        "  curl -i -X POST http://{public}/checkout -H 'content-type: application/json' -H 'Idempotency-Key: my-first-order' -d '{{\"sku\":\"sneaker-42\",\"qty\":1}}'"
    );
    println!("  # poll the ticket (use the poll_url from the answer)");
    println!("  curl -s http://{public}/tickets/<ticket>");
    println!("  # watch the queue");
    println!("  curl -s http://{admin}/metrics | grep '^flashgate_'");
    println!("  curl -s http://{admin}/admin/queues");
    stop.await;
    println!("stopping");
    gateway.shutdown();
    gateway.wait().await;
    Ok(())
}

/// Sends `requests` checkouts over `concurrency` connections.
async fn burst(
    target: SocketAddr,
    requests: u32,
    concurrency: u32,
    admitted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) -> Duration {
    let started = Instant::now();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let next = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, admitted, refused) = (
            client.clone(),
            next.clone(),
            admitted.clone(),
            refused.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return;
                }
                let body = format!(r#"{{"sku":"sneaker-42","qty":1,"customer":"c-{i:05}"}}"#);
                let req = Request::post(format!("http://{target}/checkout"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("demo-{i}"))
                    .body(Full::new(Bytes::from(body)));
                let Ok(req) = req else { continue };
                match client.request(req).await {
                    Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        let _ = resp.into_body().collect().await;
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    started.elapsed()
}
