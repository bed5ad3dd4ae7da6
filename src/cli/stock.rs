//! `flashgate admin stock`: a fair sale's stock per product — every
//! product as a table, one product, or a change to one (`--set N`,
//! `--add N`), through `/admin/queues/{queue}/stock`.

use clap::Args;
use http::Method;
use serde_json::{json, Value};

use super::client::{call, CallError};

/// `flashgate admin stock [--queue Q] [PRODUCT [--set N | --add N]]`.
#[derive(Debug, Clone, Args)]
pub struct StockArgs {
    /// The queue (default: the first the gateway lists).
    #[arg(long)]
    pub queue: Option<String>,
    /// One product; without it, every product.
    pub product: Option<String>,
    /// Set the product's stock (a runtime override; adds a product the
    /// sale did not have).
    #[arg(
        long,
        requires = "product",
        conflicts_with = "add",
        allow_negative_numbers = false
    )]
    pub set: Option<u64>,
    /// Add units to the product's stock, in one step (negative: take away,
    /// never below 0).
    #[arg(long, requires = "product", allow_negative_numbers = true)]
    pub add: Option<i64>,
}

/// Runs `admin stock`; returns what to print (`json`: the API's answer).
pub async fn run(
    base: &str,
    token: Option<&str>,
    json_out: bool,
    args: &StockArgs,
) -> Result<String, CallError> {
    let queue = match &args.queue {
        Some(q) => q.clone(),
        None => {
            let all = call(base, token, Method::GET, "/admin/queues", None).await?;
            all["queues"][0]["name"]
                .as_str()
                .unwrap_or("checkout")
                .to_string()
        }
    };
    let list = format!("/admin/queues/{queue}/stock");
    let (answer, one) = match (&args.product, args.set, args.add) {
        (None, _, _) => (call(base, token, Method::GET, &list, None).await?, None),
        (Some(p), set, add) => {
            let path = format!("{list}/{}", encode(p));
            let answer = match (set, add) {
                (Some(n), _) => {
                    call(base, token, Method::PUT, &path, Some(json!({ "stock": n }))).await?
                }
                (None, Some(n)) => {
                    call(base, token, Method::PATCH, &path, Some(json!({ "add": n }))).await?
                }
                (None, None) => call(base, token, Method::GET, &path, None).await?,
            };
            (answer, Some(p.clone()))
        }
    };
    if json_out {
        return Ok(serde_json::to_string_pretty(&answer).unwrap_or_default());
    }
    let rows: Vec<(String, Value)> = match one {
        Some(p) => vec![(p, answer)],
        None => (answer["products"].as_object().into_iter().flatten())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    Ok(table(&queue, &rows))
}

/// A product name as one path segment.
fn encode(product: &str) -> String {
    product
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn table(queue: &str, rows: &[(String, Value)]) -> String {
    let mut t =
        super::table::Table::new(&["QUEUE", "PRODUCT", "STOCK", "SOLD", "LEFT", "SOLD-OUT"]);
    for (product, p) in rows {
        let n = |k: &str| p[k].as_u64().map_or("-".into(), |n| n.to_string());
        let sold_out = if p["sold_out"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        t.row(vec![
            queue.into(),
            product.clone(),
            n("stock"),
            n("sold"),
            n("stock_left"),
            sold_out.into(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_print_as_a_table_and_names_as_one_segment() {
        let rows = vec![(
            "sneaker-42".to_string(),
            json!({"stock": 100, "sold": 40, "stock_left": 60, "sold_out": false}),
        )];
        let out = table("checkout", &rows);
        assert_eq!(
            out.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["checkout", "sneaker-42", "100", "40", "60", "no"]
        );
        assert_eq!(encode("a b?"), "a%20b%3F");
    }
}
