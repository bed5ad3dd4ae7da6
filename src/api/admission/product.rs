//! A fair sale's product: where the request names it (`product_from`),
//! and the refusals when it names none or one the queue does not sell.

use http::HeaderMap;

use crate::api::admin::events::percent_decode;
use crate::backend::knobs::Knobs;
use crate::config::{ProductFrom, QueueConfig};
use crate::http::problem::{Code, Problem};

/// The product `request` buys on a queue with `product_from`: read from
/// the route's `path`, its `query`, its headers or its JSON body. `Err`:
/// `400 invalid_product` naming what was expected, or `404
/// unknown_product` for a product the queue does not sell.
pub(super) fn product_of(
    config: &QueueConfig,
    knobs: &Knobs,
    from: &ProductFrom,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Problem> {
    let found = match from {
        ProductFrom::Path(template) => {
            let at = template
                .iter()
                .position(|s| ProductFrom::is_slot(s))
                .unwrap_or(0);
            path.split('/')
                .filter(|s| !s.is_empty())
                .nth(at)
                .and_then(percent_decode)
        }
        ProductFrom::Query(name) => query.and_then(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                .find(|(k, _)| percent_decode(k).as_deref() == Some(name.as_str()))
                .and_then(|(_, v)| percent_decode(v))
        }),
        ProductFrom::Header(name) => (headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string()),
        ProductFrom::Json(pointer) => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|doc| match doc.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                n @ serde_json::Value::Number(_) => Some(n.to_string()),
                _ => None,
            }),
    };
    let Some(product) = found.filter(|p| ProductFrom::valid_product(p)) else {
        return Err(Problem::new(Code::InvalidProduct, expected(from)));
    };
    // Configured, or added at run time by the admin API.
    if !config.product_stock.contains_key(&product) && !knobs.products.contains_key(&product) {
        return Err(Problem::new(
            Code::UnknownProduct,
            format!("`{product}` is not a product of this sale"),
        )
        .product(&product));
    }
    Ok(product)
}

/// What a request without a readable product was expected to carry.
fn expected(from: &ProductFrom) -> String {
    let what = "a product (1-64 visible ASCII characters, no `:` nor `/`)";
    match from {
        ProductFrom::Path(_) => format!("expected {what} in the path, as in `{from}`"),
        ProductFrom::Query(name) => format!("expected {what} in query parameter `{name}`"),
        ProductFrom::Header(name) => format!("expected {what} in header `{name}`"),
        ProductFrom::Json(pointer) => {
            format!("expected {what} at JSON pointer `{pointer}` of a JSON body")
        }
    }
}
