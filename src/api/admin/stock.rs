//! A fair sale's stock per product in the admin API:
//!
//! - `GET /admin/queues/{name}/stock`: every product, as `/admin/queues`
//!   shows them.
//! - `GET /admin/queues/{name}/stock/{product}`: one.
//! - `PUT` or `PATCH /admin/queues/{name}/stock/{product}` with
//!   `{"stock": N}` (`null`: back to the configured stock) or `{"add": N}`
//!   (N may be negative; added in one step on the shared knobs, never below
//!   0). A product not configured is added, up to
//!   [`ProductFrom::MAX_PRODUCTS`] in all.

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::events::percent_decode;
use crate::api::App;
use crate::backend::knobs::{Knobs, KnobsPatch};
use crate::backend::knobs::{ProductPatch, MAX_STOCK};
use crate::config::ProductFrom;
use crate::http::body::{json, Body};
use crate::http::exchange;
use crate::http::problem::{Code, Problem};
use crate::queue::Queue;

/// One product as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProductInfo {
    /// The stock in force (a run-time knob, else the configured one).
    pub stock: u64,
    /// Units held by admissions (cancels given back).
    pub sold: u64,
    pub stock_left: u64,
    /// The upstream said it is sold out.
    pub sold_out: bool,
}

/// The products of a queue: those configured and those added at run time,
/// with what was sold of each (`None` when the backend did not answer).
pub async fn products(q: &Queue) -> BTreeMap<String, ProductInfo> {
    let config = q.config();
    let knobs = q.knobs();
    if config.product_from.is_none() {
        return BTreeMap::new();
    }
    let sold = q.backend.products_sold().await.unwrap_or_default();
    product_infos(&config.product_stock, &knobs, &sold)
}

fn product_infos(
    configured: &BTreeMap<String, u64>,
    knobs: &Knobs,
    sold: &BTreeMap<String, u64>,
) -> BTreeMap<String, ProductInfo> {
    let names = configured.keys().chain(knobs.products.keys());
    names
        .map(|name| {
            let stock = (knobs.products.get(name).and_then(|k| k.stock))
                .or_else(|| configured.get(name).copied())
                .unwrap_or(0);
            let sold = sold.get(name).copied().unwrap_or(0);
            let info = ProductInfo {
                stock,
                sold,
                stock_left: stock.saturating_sub(sold),
                sold_out: knobs.product_sold_out(name),
            };
            (name.clone(), info)
        })
        .collect()
}

/// A change to one product's stock.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockChange {
    #[serde(default, deserialize_with = "present")]
    stock: Option<Option<u64>>,
    add: Option<i64>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// Routes `/admin/queues/{name}/stock[/{product}]`.
pub async fn route(
    app: &App,
    method: &Method,
    name: &str,
    product: Option<&str>,
    actor: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let queue = match app.named_queue(name) {
        Ok(queue) => queue,
        Err(not_found) => return not_found.into_response(),
    };
    exchange::note(|n| n.queue = Some(queue.name.clone()));
    if queue.config().product_from.is_none() {
        return Problem::new(
            Code::NotFound,
            format!("queue `{name}` sells no products (no product_from)"),
        )
        .into_response();
    }
    let product = product.map(|p| percent_decode(p).unwrap_or_default());
    match (method, product) {
        (&Method::GET, None) => json(
            StatusCode::OK,
            &serde_json::json!({ "queue": name, "products": products(queue).await }),
        ),
        (_, None) => Problem::new(Code::MethodNotAllowed, "the stock list accepts GET")
            .allow("GET".into())
            .into_response(),
        (&Method::GET, Some(p)) => match products(queue).await.remove(&p) {
            Some(info) => json(StatusCode::OK, &info),
            None => unknown(&p),
        },
        (&Method::PUT | &Method::PATCH, Some(p)) => change(queue, &p, actor, req).await,
        (_, Some(_)) => Problem::new(
            Code::MethodNotAllowed,
            "a product's stock accepts GET, PUT and PATCH",
        )
        .allow("GET, PUT, PATCH".into())
        .into_response(),
    }
}

fn unknown(product: &str) -> Response<Body> {
    Problem::new(
        Code::UnknownProduct,
        format!("`{product}` is not a product of this queue"),
    )
    .product(product)
    .into_response()
}

async fn change(
    queue: &Queue,
    product: &str,
    actor: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let bad = |why: String| Problem::new(Code::BadRequest, why).into_response();
    if !ProductFrom::valid_product(product) {
        return bad(format!(
            "`{product}`: a product is 1-64 visible ASCII characters, no `:` nor `/`"
        ));
    }
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(format!("cannot read the body: {e}")),
    };
    exchange::read(body.len() as u64);
    let change: StockChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return bad(format!(
                "body must be {{\"stock\": N}} or {{\"add\": N}}: {e}"
            ))
        }
    };
    let config = queue.config();
    let configured = config.product_stock.get(product).copied();
    let known = configured.is_some() || queue.knobs().products.contains_key(product);
    let count = config.product_stock.len() + queue.knobs().products.len();
    if !known && count >= ProductFrom::MAX_PRODUCTS {
        return bad(format!(
            "the queue has {} products, the most it may have",
            ProductFrom::MAX_PRODUCTS
        ));
    }
    let patch = match (change.stock, change.add) {
        (Some(stock), None) if stock.is_none_or(|s| s <= MAX_STOCK) => ProductPatch {
            stock: Some(stock),
            ..ProductPatch::default()
        },
        (None, Some(units)) if units.unsigned_abs() <= MAX_STOCK => ProductPatch {
            add: Some((units, configured.unwrap_or(0))),
            ..ProductPatch::default()
        },
        _ => {
            return bad(format!(
                "body must be {{\"stock\": N}} or {{\"add\": N}}, |N| at most {MAX_STOCK}"
            ))
        }
    };
    let mut knobs = KnobsPatch::default();
    knobs.products.insert(product.to_string(), patch);
    match queue.backend.set_knobs(&knobs, Some(actor)).await {
        Ok(knobs) => {
            info!(actor, queue = %queue.name, product, stock = ?knobs.product_stock(&config, product), "product stock set by the admin API");
            queue.update_knobs(knobs);
            match products(queue).await.remove(product) {
                Some(info) => json(StatusCode::OK, &info),
                None => unknown(product),
            }
        }
        Err(e) => Problem::new(Code::Unavailable, format!("the change was not stored: {e}"))
            .retry_after(1)
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::knobs::ProductKnobs;

    #[test]
    fn products_show_the_stock_in_force_and_what_is_left() {
        let configured = BTreeMap::from([("a".to_string(), 10), ("b".to_string(), 5)]);
        let mut knobs = Knobs::default();
        knobs.products.insert(
            "b".into(),
            ProductKnobs {
                stock: Some(8),
                sold_out: true,
            },
        );
        knobs.products.insert(
            "new".into(),
            ProductKnobs {
                stock: Some(3),
                sold_out: false,
            },
        );
        let sold = BTreeMap::from([("a".to_string(), 4), ("b".to_string(), 9)]);
        let infos = product_infos(&configured, &knobs, &sold);
        let view = |p: &str| {
            let i = &infos[p];
            (i.stock, i.sold, i.stock_left, i.sold_out)
        };
        assert_eq!(view("a"), (10, 4, 6, false));
        assert_eq!(view("b"), (8, 9, 0, true));
        assert_eq!(view("new"), (3, 0, 3, false));
        assert_eq!(infos.len(), 3);
    }
}
