//! Sold out: an upstream answer that says so flips the queue on every
//! instance, and the tickets still waiting then fail without being sent.

use std::time::Duration;

use tracing::warn;

use super::{Drain, MAX_BATCH};
use crate::backend::events::UPSTREAM_ACTOR;
use crate::backend::knobs::{KnobsPatch, ProductPatch};
use crate::backend::Delivery;
use crate::ticket::TicketError;
use crate::upstream::Answer;

impl Drain {
    /// Whether an upstream answer means the sale is sold out.
    pub(super) fn says_sold_out(&self, answer: &Answer) -> bool {
        let config = self.queue.config();
        config.sold_out_statuses.contains(&answer.status.as_u16())
            && config.sold_out_body.as_ref().is_none_or(|needle| {
                String::from_utf8_lossy(&answer.body).contains(needle.as_str())
            })
    }

    /// Flips the queue to sold out on every instance — or, for a request
    /// that buys a product, only that product: the others keep selling.
    pub(super) async fn flip_sold_out(&self, product: Option<&str>) {
        if let Some(product) = product {
            return self.flip_product(product).await;
        }
        if self.queue.knobs().sold_out {
            return;
        }
        warn!(queue = %self.name(), actor = UPSTREAM_ACTOR, "the upstream says sold out: waiting tickets fail, admissions get 410");
        let patch = KnobsPatch {
            sold_out: Some(true),
            ..KnobsPatch::default()
        };
        if let Some(knobs) = self
            .persist_value(|| self.queue.backend.set_knobs(&patch, Some(UPSTREAM_ACTOR)))
            .await
        {
            self.queue.update_knobs(knobs);
        }
    }

    async fn flip_product(&self, product: &str) {
        if self.queue.knobs().product_sold_out(product) {
            return;
        }
        warn!(queue = %self.name(), product, actor = UPSTREAM_ACTOR, "the upstream says a product is sold out: its waiting tickets fail, its admissions get 410");
        let mut patch = KnobsPatch::default();
        let sold_out = ProductPatch {
            sold_out: Some(true),
            ..ProductPatch::default()
        };
        patch.products.insert(product.to_string(), sold_out);
        if let Some(knobs) = self
            .persist_value(|| self.queue.backend.set_knobs(&patch, Some(UPSTREAM_ACTOR)))
            .await
        {
            self.queue.update_knobs(knobs);
        }
    }

    /// A delivery whose product the upstream said is sold out: its ticket
    /// fails without being sent (true), as the queue's do when it sold out.
    pub(super) async fn fail_product_sold_out(&self, delivery: &Delivery) -> bool {
        let Some(product) = (delivery.request.as_ref().ok())
            .and_then(|r| r.product.as_deref())
            .filter(|p| self.queue.knobs().product_sold_out(p))
        else {
            return false;
        };
        let err = TicketError {
            code: "sold_out".into(),
            detail: format!("`{product}` sold out before this ticket's turn"),
        };
        if self
            .persist(|| self.queue.backend.fail(delivery, &err, false))
            .await
        {
            self.metrics.dispatch(self.name(), "failed");
        }
        true
    }

    /// Sold out: fails the waiting tickets at once, without a slot or a
    /// permit, and without sending them; false on shutdown.
    pub(super) async fn fail_sold_out(&self, carried: Vec<Delivery>) -> bool {
        let batch = if carried.is_empty() {
            let next = tokio::select! {
                next = self.queue.backend.next(Duration::from_millis(200), MAX_BATCH) => next,
                _ = self.shutdown.cancelled() => return false,
            };
            match next {
                Ok(batch) => batch,
                Err(_) => return self.pause(Duration::from_millis(200)).await,
            }
        } else {
            carried
        };
        let err = TicketError {
            code: "sold_out".into(),
            detail: "the sale sold out before this ticket's turn".into(),
        };
        for delivery in batch {
            if !self
                .persist(|| self.queue.backend.fail(&delivery, &err, false))
                .await
            {
                return false;
            }
            self.metrics.dispatch(self.name(), "failed");
        }
        true
    }
}
