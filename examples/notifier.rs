//! A service that subscribes to the sale instead of being called: the
//! order-confirmation email of an asynchronous checkout, printed instead of
//! mailed, for every `completed` event of a queue.
//!
//! ```text
//! cargo run --example notifier -- redis://127.0.0.1:6379 'flashgate:{checkout}:events'
//! ```
//!
//! It reads the queue's event stream through a consumer group of its own
//! (`notifier`), the standard Redis-streams way: copies of it share the work,
//! and an event is acknowledged only once its email is out. A notifier that
//! restarts first goes through what it had read and not acknowledged, so it
//! misses nothing (an email may go twice after a crash: a real mailer keys
//! on the ticket). The README's "Consuming the sale from other services"
//! documents every field.

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Commands, RedisResult};

const GROUP: &str = "notifier";

fn main() -> RedisResult<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or("redis://127.0.0.1:6379".into());
    let stream = args.next().unwrap_or("flashgate:{checkout}:events".into());
    let consumer = args.next().unwrap_or("notifier-1".into());
    let mut redis = redis::Client::open(url)?.get_connection()?;
    // From the stream's start: events of a sale that began before the
    // notifier's first run are mailed too. Made already: BUSYGROUP, fine.
    let _: RedisResult<()> = redis.xgroup_create_mkstream(&stream, GROUP, "0");
    // `0`: this consumer's own unacknowledged events; `>`: new ones.
    let mut from = "0";
    loop {
        let options = StreamReadOptions::default()
            .group(GROUP, &consumer)
            .count(100)
            .block(5_000);
        let reply: StreamReadReply = redis.xread_options(&[&stream], &[from], &options)?;
        let events: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if events.is_empty() && from == "0" {
            from = ">";
        }
        for event in events {
            let field = |name: &str| event.get::<String>(name).unwrap_or_default();
            if field("type") == "completed" {
                println!(
                    "order confirmed: ticket {} (the shop answered {})",
                    field("ticket"),
                    field("status")
                );
            }
            redis.xack::<_, _, _, ()>(&stream, GROUP, &[&event.id])?;
        }
    }
}
