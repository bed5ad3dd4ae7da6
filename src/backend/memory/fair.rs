//! The embedded fair sale: each product's units, each client's admissions,
//! and what a cancelled ticket gives back — the same rules as `ADMIT_LUA`
//! and `CANCEL_LUA`, under the queue's lock.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Fast;
use crate::backend::knobs::Knobs;
use crate::backend::{Admit, FairLimits, QueuedRequest};
use crate::ticket::TicketId;

/// The fair sale's state of one queue.
#[derive(Default)]
pub(super) struct Fair {
    /// Units cancelled tickets gave back to the queue's stock.
    pub returned: u64,
    /// Units of each product held by admissions.
    pub sold: HashMap<String, u64, Fast>,
    /// Admissions per client (`c:<client>`) and per product and client
    /// (`p:<product>:<client>`), forgotten together `window` after the
    /// last one, like the Redis quota hash's TTL.
    quota: HashMap<String, u64, Fast>,
    quota_expires: Option<Instant>,
    /// What each ticket admitted with give-back returns when cancelled.
    give_back: HashMap<TicketId, GiveBack, Fast>,
}

struct GiveBack {
    product: Option<String>,
    /// The client, when a per-client limit counted it.
    client: Option<String>,
}

/// A product's stock in force: its knob, else the configured one.
fn stock(knobs: &Knobs, product: &str, limits: &FairLimits) -> Option<u64> {
    let knob = knobs.products.get(product).and_then(|k| k.stock);
    knob.or(limits.product_stock)
}

fn client_field(client: &str) -> String {
    format!("c:{client}")
}

fn product_field(product: &str, client: &str) -> String {
    format!("p:{product}:{client}")
}

impl Fair {
    /// The refusal of the fair sale's rules for `request`, if any:
    /// its product sold out (a product's knobs win over `limits`), then
    /// its client's limits.
    pub fn refusal(
        &mut self,
        request: &QueuedRequest,
        limits: &FairLimits,
        knobs: &Knobs,
    ) -> Option<Admit> {
        if let Some(p) = &request.product {
            let stock = stock(knobs, p, limits);
            let sold = self.sold.get(p).copied().unwrap_or(0);
            if knobs.product_sold_out(p) || stock.is_some_and(|s| sold >= s) {
                return Some(Admit::ProductSoldOut);
            }
        }
        self.forget_quota();
        let count = |f: String| self.quota.get(&f).copied().unwrap_or(0);
        let over = limits
            .per_client
            .is_some_and(|max| count(client_field(&request.client)) >= max)
            || (limits.per_client_product.zip(request.product.as_ref()))
                .is_some_and(|(max, p)| count(product_field(p, &request.client)) >= max);
        over.then_some(Admit::QuotaExceeded)
    }

    /// Counts an admission of `request`; true when it took its product's
    /// last unit.
    pub fn count(&mut self, request: &QueuedRequest, limits: &FairLimits, knobs: &Knobs) -> bool {
        let mut last = false;
        if let Some(p) = &request.product {
            let sold = self.sold.entry(p.clone()).or_default();
            *sold += 1;
            last = stock(knobs, p, limits) == Some(*sold);
        }
        let quota = limits.per_client.is_some() || limits.per_client_product.is_some();
        if quota {
            *self.quota.entry(client_field(&request.client)).or_default() += 1;
            if let Some(p) = &request.product {
                *self
                    .quota
                    .entry(product_field(p, &request.client))
                    .or_default() += 1;
            }
            self.quota_expires =
                Some(Instant::now() + Duration::from_secs(limits.window_secs.max(1)));
        }
        if limits.cancel_returns {
            let back = GiveBack {
                product: request.product.clone(),
                client: quota.then(|| request.client.clone()),
            };
            self.give_back.insert(request.ticket.clone(), back);
        }
        last
    }

    /// A queued ticket was cancelled: its unit and its client's place come
    /// back, if it was admitted with give-back.
    pub fn cancelled(&mut self, ticket: &TicketId) {
        let Some(back) = self.give_back.remove(ticket) else {
            return;
        };
        self.returned += 1;
        if let Some(p) = &back.product {
            if let Some(sold) = self.sold.get_mut(p) {
                *sold = sold.saturating_sub(1);
            }
        }
        self.forget_quota();
        if let Some(c) = &back.client {
            let mut down = |f: String| {
                if let Some(n) = self.quota.get_mut(&f) {
                    *n = n.saturating_sub(1);
                }
            };
            down(client_field(c));
            if let Some(p) = &back.product {
                down(product_field(p, c));
            }
        }
    }

    /// The units each product's admissions hold.
    pub fn sold(&self) -> std::collections::BTreeMap<String, u64> {
        self.sold.iter().map(|(p, n)| (p.clone(), *n)).collect()
    }

    /// Forgets what tickets no longer held (expired) would give back.
    pub fn sweep(&mut self, held: impl Fn(&TicketId) -> bool) {
        self.give_back.retain(|t, _| held(t));
    }

    fn forget_quota(&mut self) {
        if self.quota_expires.is_some_and(|t| t <= Instant::now()) {
            self.quota.clear();
            self.quota_expires = None;
        }
    }
}
