//! The Redis change feed: pub/sub on the queue's change channel, on a
//! connection of its own (a subscribed connection can do nothing else).

use async_trait::async_trait;
use futures_util::StreamExt;

use super::conn::Conn;
use super::{unavailable, RedisQueue, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::backend::{Change, ChangeFeed, OnChange, QueueError};

impl RedisQueue {
    /// A pub/sub connection to one node, subscribed to the change channel.
    async fn subscribe(&self, client: &redis::Client) -> Result<redis::aio::PubSub, QueueError> {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| QueueError::Unavailable("pub/sub connect timed out".into()))?
            .map_err(unavailable)?;
        tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(&self.keys.changes))
            .await
            .map_err(|_| QueueError::Unavailable("SUBSCRIBE timed out".into()))?
            .map_err(unavailable)?;
        Ok(pubsub)
    }
}

#[async_trait]
impl ChangeFeed for RedisQueue {
    async fn follow_changes(&self, changed: &OnChange) -> Result<(), QueueError> {
        // Through Sentinel: the primary now, asked again when its
        // subscription fails or ends (a failover).
        if let Conn::Sentinel(sentinel) = &self.conn {
            let primary = sentinel.client().await.map_err(unavailable)?;
            let result = match self.subscribe(&primary.client).await {
                Ok(pubsub) => follow(pubsub, changed).await,
                Err(e) => Err(e),
            };
            sentinel.lost(primary.generation);
            return result;
        }
        // Published messages reach every node of a cluster: any one will do.
        let mut last_error = None;
        let mut subscribed = None;
        for node in self.endpoint.nodes() {
            let client = redis::Client::open(node.as_str())
                .map_err(|e| QueueError::Unavailable(format!("bad redis url: {e}")))?;
            match self.subscribe(&client).await {
                Ok(pubsub) => {
                    subscribed = Some(pubsub);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(pubsub) = subscribed else {
            return Err(last_error
                .unwrap_or_else(|| QueueError::Unavailable("no node to subscribe on".into())));
        };
        follow(pubsub, changed).await
    }
}

/// Passes on every change published on a subscribed connection until it
/// closes.
async fn follow(mut pubsub: redis::aio::PubSub, changed: &OnChange) -> Result<(), QueueError> {
    changed(Change::Resync);
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        if let Ok(id) = std::str::from_utf8(message.get_payload_bytes()) {
            changed(Change::Ticket(id));
        }
    }
    Err(QueueError::Unavailable(
        "the change feed's connection closed".into(),
    ))
}
