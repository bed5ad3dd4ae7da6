//! What a queue looks like in Redis: every key name and every field name,
//! in one place (SPEC §7).
//!
//! The Rust code names fields through these constants. The Lua scripts
//! (`scripts.rs`) spell the same names as literals — a script is one fixed
//! text whose hash `EVALSHA` calls, and its literals cost nothing per call —
//! so the test at the end of this file checks that each script still spells
//! every name it is documented here to use.
//!
//! The keys of one queue (partition) share a hash tag, `{queue}` (or
//! `{queue:partition}`), so on a Redis Cluster each script and transaction
//! runs on one node:
//!
//! | key                          | type        | holds                                   |
//! |------------------------------|-------------|-----------------------------------------|
//! | `<base>:stream`              | stream      | the line: one entry per queued request ([`EntryField`]), read through the consumer group [`GROUP`]; other services may add groups of their own. A finished entry is acknowledged, and trimmed once every group is done with it or it is past `stream_retention` (`trim.rs`) |
//! | `<base>:dead`                | stream      | dead letters ([`DeadField`] + the entry's [`EntryField`]s), removed by a replay or a discard (`dead.rs`) |
//! | `<base>:counters`            | hash        | [`CounterField`]                        |
//! | `<base>:knobs`               | hash        | [`KnobField`]                           |
//! | `<base>:rate`                | string      | when the drain's next free slot is due, µs of Redis's clock (`RESERVE_LUA`) |
//! | `<base>:rate_period`         | string      | the period, µs, the slots up to `rate` were reserved at (`RESERVE_LUA`): a rate rise re-spaces them |
//! | `<base>:prequeue`            | sorted set  | pre-queued ticket ids by their random place (`RELEASE_LUA`) |
//! | `<base>:ticket:<id>`         | hash        | one ticket ([`TicketField`]), expires with the ticket TTL |
//! | `<base>:idem:<key>`          | hash        | one Idempotency-Key claim ([`ClaimField`]), same TTL |
//! | `<base>:changes`             | channel     | pub/sub: the id of each ticket whose status changed |
//! | `<base>:events`              | stream      | lifecycle events ([`EventField`]), trimmed by age with `MINID ~` as they are written |
//! | `<base>:pow:<id>`            | string      | a proof-of-work seed was used (`ADMIT_LUA`), until a minute after the seed expires |
//! | `<base>:expired:<id>`        | string      | the `expired` event of a ticket was written (`START_ATTEMPT_LUA`), ticket TTL |
//! | `<base>:quota`               | hash        | a fair sale's admissions per client ([`QuotaField`]), TTL `per_client_window` renewed by each admission |
//! | `<prefix>:ticket-secret`     | string      | the ticket MAC secret shared by every instance, no TTL |

use crate::ticket::TicketId;

/// The consumer group every instance reads the stream through.
pub const GROUP: &str = "flashgate";

/// The names of one queue's (partition's) keys.
pub struct Keys {
    pub stream: String,
    pub dead: String,
    pub counters: String,
    pub knobs: String,
    /// The drain's shared slot schedule (`RESERVE_LUA`).
    pub rate: String,
    /// The period the schedule's slots were reserved at (`RESERVE_LUA`).
    pub rate_period: String,
    pub prequeue: String,
    /// The lifecycle events ([`EventField`]).
    pub events: String,
    /// Pub/sub channel of ticket status changes (not a key: channels are
    /// cluster-wide, the hash tag only keeps names apart).
    pub changes: String,
    pub ticket_prefix: String,
    pub idempotency_prefix: String,
    /// Markers of the tickets whose `expired` event was written.
    pub expired_prefix: String,
    /// Admissions per client of a fair sale ([`QuotaField`]).
    pub quota: String,
    /// Markers of the proof-of-work seeds used (`ADMIT_LUA`).
    pub pow_prefix: String,
}

impl Keys {
    /// `<prefix>:{<queue>}:…`, or `<prefix>:{<queue>:<partition>}:…` when
    /// the queue has more than one partition, so partitions spread over a
    /// cluster's shards.
    pub fn new(prefix: &str, queue: &str, partition: u32, partitions: u32) -> Self {
        let base = if partitions > 1 {
            format!("{prefix}:{{{queue}:{partition}}}")
        } else {
            format!("{prefix}:{{{queue}}}")
        };
        Keys {
            stream: format!("{base}:stream"),
            dead: format!("{base}:dead"),
            counters: format!("{base}:counters"),
            knobs: format!("{base}:knobs"),
            rate: format!("{base}:rate"),
            rate_period: format!("{base}:rate_period"),
            prequeue: format!("{base}:prequeue"),
            events: format!("{base}:events"),
            changes: format!("{base}:changes"),
            ticket_prefix: format!("{base}:ticket:"),
            idempotency_prefix: format!("{base}:idem:"),
            expired_prefix: format!("{base}:expired:"),
            quota: format!("{base}:quota"),
            pow_prefix: format!("{base}:pow:"),
        }
    }

    /// A ticket's hash.
    pub fn ticket(&self, id: &TicketId) -> String {
        // Not format!: these two are made for every admission, and
        // concat sizes its one allocation and copies (~100 instructions
        // instead of ~1,000).
        [self.ticket_prefix.as_str(), id.as_str()].concat()
    }

    /// An Idempotency-Key claim's hash (`key` is the claim's digest).
    pub fn claim(&self, key: &str) -> String {
        [self.idempotency_prefix.as_str(), key].concat()
    }

    /// The ticket secret shared by every queue and instance on this Redis.
    pub fn ticket_secret(prefix: &str) -> String {
        format!("{prefix}:ticket-secret")
    }
}

/// Fields of a stream entry: the request, whole, and where it stood.
/// Written by `ADMIT_LUA` and `RELEASE_LUA`. Other services read these
/// entries with consumer groups of their own: the README's "Consuming the
/// sale from other services" documents each field for them, and
/// [`ENTRY_VERSION`] says which version of that table an entry follows.
pub enum EntryField {}

/// The entry schema version `ADMIT_LUA` and `RELEASE_LUA` write in
/// [`EntryField::VERSION`]. Adding a field keeps it; changing or removing one
/// bumps it. Entries without the field were stored before versioning: their
/// headers are `name: value` CRLF lines and they have no `k`.
pub const ENTRY_VERSION: &str = "1";

impl EntryField {
    /// The schema version, [`ENTRY_VERSION`].
    pub const VERSION: &'static str = "v";
    /// The ticket's sequence number.
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const SEQ: &'static str = "s";
    /// Tickets ahead of it when it entered the line.
    pub const AHEAD: &'static str = "w";
    pub const TICKET: &'static str = "t";
    pub const METHOD: &'static str = "m";
    pub const PATH: &'static str = "p";
    /// End-to-end headers, a JSON array of `[name, value]` pairs
    /// (`crate::http::headers::encode`).
    pub const HEADERS: &'static str = "h";
    pub const BODY: &'static str = "b";
    /// The client's own `Idempotency-Key`, empty when it sent none.
    pub const IDEMPOTENCY_KEY: &'static str = "k";
    pub const CLIENT: &'static str = "c";
    pub const FORWARDED_FOR: &'static str = "f";
    pub const FORWARDED_PROTO: &'static str = "x";
    /// Admission time, ms since the epoch.
    pub const ADMITTED_AT: &'static str = "a";
    /// Only on an entry put back in line by an operator: the id of the dead
    /// letter it was replayed from (`REPLAY_LUA`). The same ticket then has
    /// two entries in the stream, the first one failed.
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const REPLAY_OF: &'static str = "r";
    /// The product the request buys (`product_from`); absent when none
    /// (and on entries stored before products).
    pub const PRODUCT: &'static str = "pr";
}

/// Fields of a ticket's hash. Written by `ADMIT_LUA` (queued),
/// `START_ATTEMPT_LUA` (in flight), `CANCEL_LUA` (cancelled) and the
/// backend's completion and failure; statuses are `TicketStatus::as_str`.
pub enum TicketField {}

impl TicketField {
    pub const STATUS: &'static str = "st";
    /// Its place in line (`0` while pre-queued).
    pub const SEQ: &'static str = "seq";
    /// Attempts started, across every instance.
    pub const ATTEMPTS: &'static str = "att";
    pub const ADMITTED_AT: &'static str = "adm";
    pub const COMPLETED_AT: &'static str = "cmp";
    /// The upstream's answer: status, encoded headers, body.
    pub const RESPONSE_STATUS: &'static str = "rs";
    pub const RESPONSE_HEADERS: &'static str = "rh";
    pub const RESPONSE_BODY: &'static str = "rb";
    /// Why it failed: a code and a detail.
    pub const ERROR_CODE: &'static str = "ec";
    pub const ERROR_DETAIL: &'static str = "ed";
    /// While pre-queued, the entry waits in the ticket hash: each
    /// [`EntryField`] under this prefix (`e:t`, `e:m`, …).
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const PREQUEUED_ENTRY: &'static str = "e:";
    /// Its product, when it has one.
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const PRODUCT: &'static str = "pr";
    /// Its client, when a per-client limit counted it.
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const CLIENT: &'static str = "cl";
    /// `1`: a cancel gives its unit and its client's place back.
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const GIVE_BACK: &'static str = "gb";
}

/// Fields of the queue's counters hash.
pub enum CounterField {}

impl CounterField {
    /// Admissions so far (stock and capacity count these).
    pub const ADMITTED: &'static str = "admitted";
    /// Entries whose first attempt started (or that were skipped).
    pub const DISPATCHED: &'static str = "dispatched";
    /// The last sequence number handed out.
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const SEQ: &'static str = "seq";
    /// Dead letters put back in line (`REPLAY_LUA`): they count in the
    /// depth (`admitted + replayed - dispatched`) and the capacity, not in
    /// the stock, which their admission spent.
    pub const REPLAYED: &'static str = "replayed";
    /// Units cancelled tickets gave back to the stock (`CANCEL_LUA`): the
    /// stock counts `admitted - returned`.
    pub const RETURNED: &'static str = "returned";
    /// `sold:<product>`: units of a product held by admissions (given back
    /// by a cancel).
    pub const SOLD_PREFIX: &'static str = "sold:";
}

/// Fields of a queue's quota hash (`ADMIT_LUA`, `CANCEL_LUA`).
pub enum QuotaField {}

// Spelled by the Lua scripts only; the test below holds them to it.
#[cfg_attr(not(test), allow(dead_code))]
impl QuotaField {
    /// `c:<client>`: the client's admissions in the queue.
    pub const CLIENT_PREFIX: &'static str = "c:";
    /// `p:<product>:<client>`: the client's admissions of one product.
    pub const PRODUCT_PREFIX: &'static str = "p:";
}

/// Fields of the queue's knobs hash (`set_knobs`, `ADAPT_LUA`). Flags are
/// `"1"`/`"0"`; an absent field means "as configured".
pub enum KnobField {}

impl KnobField {
    pub const DRAIN_RATE: &'static str = "drain_rate";
    pub const PAUSED: &'static str = "paused";
    pub const STOCK: &'static str = "stock";
    pub const OPEN: &'static str = "open";
    pub const SOLD_OUT: &'static str = "sold_out";
    /// `stock:<product>`: a product's stock set at run time.
    pub const STOCK_PREFIX: &'static str = "stock:";
    /// `sold_out:<product>`: `1` once the upstream said the product is
    /// sold out.
    pub const SOLD_OUT_PREFIX: &'static str = "sold_out:";
    pub const POW_DIFFICULTY: &'static str = "pow_difficulty";
    pub const VERSION: &'static str = "version";
    /// When the adaptive rate last moved, and last moved down (ms of
    /// Redis's clock).
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const ADAPTED_AT: &'static str = "adapted_at";
    // Spelled by the Lua scripts only; the test below holds them to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub const DECREASED_AT: &'static str = "decreased_at";
}

/// Fields of an Idempotency-Key claim's hash (`ADMIT_LUA`).
pub enum ClaimField {}

impl ClaimField {
    pub const TICKET: &'static str = "t";
    /// What the first request asked for: a retry must ask the same.
    pub const FINGERPRINT: &'static str = "f";
    pub const SEQ: &'static str = "s";
}

/// Fields of a lifecycle event: one stream entry per event in
/// `<prefix>:{<queue>}:events` (one stream per partition,
/// `<prefix>:{<queue>:<i>}:events`), written by the same script or
/// transaction as the change it reports, so no event is written for a
/// change that did not happen and none is missed. Every field is a string.
///
/// | `type`          | when                                                  | its own fields |
/// |-----------------|-------------------------------------------------------|----------------|
/// | `admitted`      | a request was stored (`ADMIT_LUA`)                    | — |
/// | `dispatched`    | an attempt starts (`START_ATTEMPT_LUA`)               | `attempt`: 1-based, across instances |
/// | `completed`     | the upstream gave its final answer (`FINISH_LUA`)     | `status`: the upstream's status |
/// | `failed`        | the ticket failed (`FINISH_LUA`)                      | `code`, `detail` (as the ticket's `error`) |
/// | `cancelled`     | the client cancelled it while queued (`CANCEL_LUA`)   | — |
/// | `expired`       | the drain reached an entry whose ticket had expired under `ticket_ttl`; the request is still sent (`START_ATTEMPT_LUA`, once per ticket) | — |
/// | `sold_out`      | the sale sold out (no `ticket`)                       | `reason`: `stock` (the last unit was admitted; per partition), `upstream` (a sold-out status), `operator` (the admin API); `product`: set when one product sold out, not the queue |
/// | `knobs_changed` | a knob moved (`KNOBS_LUA`, `ADAPT_LUA`; no `ticket`)   | `actor`: `admin` (the admin token), `peer:<ip:port>` (admin API without a token), `adaptive`, `upstream`; `changes`: JSON, `{"drain_rate":{"old":100,"new":40}}`, `null` = as configured |
/// | `replayed`      | an operator put a dead letter back in line; the ticket is `queued` again (`REPLAY_LUA`) | `dead_letter`: its id; `actor` |
/// | `discarded`     | an operator discarded a dead letter; its ticket stays `failed` (`DISCARD_LUA`; `ticket` absent when it kept none) | `dead_letter`, `code`, `actor` |
///
/// A ticket has exactly one `admitted` and at most one terminal event
/// (`completed`, `failed` or `cancelled`) per time in line: `FINISH_LUA`
/// writes nothing for a ticket already final. A `replayed` event starts
/// its next time in line, which ends with a terminal event of its own.
/// Knob events are written on partition 0 only.
pub enum EventField {}

// Most are spelled by the Lua scripts only; the test below holds them to it.
#[cfg_attr(not(test), allow(dead_code))]
impl EventField {
    /// The schema's version, `1`.
    pub const VERSION: &'static str = "v";
    pub const TYPE: &'static str = "type";
    pub const QUEUE: &'static str = "queue";
    /// When it happened, ms since the epoch.
    pub const AT: &'static str = "at";
    /// The ticket, for ticket events.
    pub const TICKET: &'static str = "ticket";
    pub const ATTEMPT: &'static str = "attempt";
    pub const STATUS: &'static str = "status";
    pub const CODE: &'static str = "code";
    pub const DETAIL: &'static str = "detail";
    pub const REASON: &'static str = "reason";
    pub const ACTOR: &'static str = "actor";
    pub const CHANGES: &'static str = "changes";
    pub const DEAD_LETTER: &'static str = "dead_letter";
    /// On `sold_out` of one product: the product.
    pub const PRODUCT: &'static str = "product";
}

/// Fields of a dead letter, before the entry's own [`EntryField`]s.
pub enum DeadField {}

impl DeadField {
    /// The work stream's entry id.
    pub const ENTRY: &'static str = "entry";
    pub const CODE: &'static str = "code";
    pub const DETAIL: &'static str = "detail";
    /// The ticket's attempts when it failed (absent when its ticket had
    /// expired, and on dead letters written before it was kept).
    pub const ATTEMPTS: &'static str = "attempts";
}

#[cfg(test)]
mod tests {
    use super::super::dead::{DEAD_LUA, DISCARD_LUA, REPLAY_LUA};
    use super::super::scripts::{
        ADAPT_LUA, ADMIT_LUA, CANCEL_LUA, FINISH_LUA, KNOBS_LUA, RELEASE_LUA, RESERVE_LUA,
        START_ATTEMPT_LUA,
    };
    use super::*;
    use crate::ticket::TicketStatus;

    const ENTRY: [&str; 13] = [
        EntryField::VERSION,
        EntryField::IDEMPOTENCY_KEY,
        EntryField::SEQ,
        EntryField::AHEAD,
        EntryField::TICKET,
        EntryField::METHOD,
        EntryField::PATH,
        EntryField::HEADERS,
        EntryField::BODY,
        EntryField::CLIENT,
        EntryField::FORWARDED_FOR,
        EntryField::FORWARDED_PROTO,
        EntryField::ADMITTED_AT,
    ];

    #[test]
    fn the_fair_sale_scripts_spell_the_schema_names() {
        spells(
            "ADMIT_LUA",
            ADMIT_LUA,
            &[
                EntryField::PRODUCT,
                TicketField::PRODUCT,
                TicketField::CLIENT,
                TicketField::GIVE_BACK,
                CounterField::RETURNED,
                CounterField::SOLD_PREFIX,
                KnobField::STOCK_PREFIX,
                KnobField::SOLD_OUT_PREFIX,
                QuotaField::CLIENT_PREFIX,
                QuotaField::PRODUCT_PREFIX,
                EventField::PRODUCT,
            ],
        );
        spells("RELEASE_LUA", RELEASE_LUA, &[EntryField::PRODUCT]);
        spells("REPLAY_LUA", REPLAY_LUA, &[EntryField::PRODUCT]);
        spells(
            "CANCEL_LUA",
            CANCEL_LUA,
            &[
                TicketField::PRODUCT,
                TicketField::CLIENT,
                TicketField::GIVE_BACK,
                CounterField::RETURNED,
                CounterField::SOLD_PREFIX,
                QuotaField::CLIENT_PREFIX,
                QuotaField::PRODUCT_PREFIX,
            ],
        );
    }

    fn spells(name: &str, script: &str, literals: &[&str]) {
        for literal in literals {
            assert!(
                script.contains(&format!("'{literal}'")),
                "{name} does not spell '{literal}': schema.rs and scripts.rs disagree"
            );
        }
    }

    #[test]
    fn the_scripts_spell_the_schema_names() {
        spells("ADMIT_LUA", ADMIT_LUA, &ENTRY);
        spells(
            "ADMIT_LUA",
            ADMIT_LUA,
            &[
                CounterField::ADMITTED,
                CounterField::DISPATCHED,
                CounterField::SEQ,
                KnobField::SOLD_OUT,
                KnobField::STOCK,
                ClaimField::TICKET,
                ClaimField::FINGERPRINT,
                ClaimField::SEQ,
                TicketField::STATUS,
                TicketField::SEQ,
                TicketField::ATTEMPTS,
                TicketField::ADMITTED_AT,
                TicketStatus::Queued.as_str(),
            ],
        );
        spells("RELEASE_LUA", RELEASE_LUA, &ENTRY);
        spells(
            "RELEASE_LUA",
            RELEASE_LUA,
            &[
                CounterField::SEQ,
                CounterField::DISPATCHED,
                TicketField::SEQ,
            ],
        );
        for script in [ADMIT_LUA, RELEASE_LUA] {
            assert!(script.contains(&format!("'{}", TicketField::PREQUEUED_ENTRY)));
        }
        // The version is written as a literal, into the stream and the
        // pre-queued entry.
        assert!(ADMIT_LUA.contains(&format!("'v', '{ENTRY_VERSION}'")));
        assert!(ADMIT_LUA.contains(&format!("'e:v', '{ENTRY_VERSION}'")));
        spells(
            "START_ATTEMPT_LUA",
            START_ATTEMPT_LUA,
            &[
                CounterField::DISPATCHED,
                TicketField::STATUS,
                TicketField::ATTEMPTS,
                TicketStatus::Cancelled.as_str(),
                TicketStatus::InFlight.as_str(),
            ],
        );
        spells(
            "CANCEL_LUA",
            CANCEL_LUA,
            &[
                TicketField::STATUS,
                TicketField::COMPLETED_AT,
                TicketStatus::Queued.as_str(),
                TicketStatus::Cancelled.as_str(),
            ],
        );
        spells(
            "ADAPT_LUA",
            ADAPT_LUA,
            &[
                KnobField::DRAIN_RATE,
                KnobField::ADAPTED_AT,
                KnobField::DECREASED_AT,
                KnobField::VERSION,
            ],
        );
        // Every event carries its version, queue, type and time.
        let event = [
            EventField::VERSION,
            EventField::QUEUE,
            EventField::TYPE,
            EventField::AT,
        ];
        for (name, script) in [
            ("ADMIT_LUA", ADMIT_LUA),
            ("START_ATTEMPT_LUA", START_ATTEMPT_LUA),
            ("CANCEL_LUA", CANCEL_LUA),
            ("ADAPT_LUA", ADAPT_LUA),
            ("FINISH_LUA", FINISH_LUA),
            ("KNOBS_LUA", KNOBS_LUA),
        ] {
            spells(name, script, &event);
            assert!(script.contains("'MINID', '~'"), "{name} trims as it writes");
        }
        spells(
            "ADMIT_LUA",
            ADMIT_LUA,
            &[EventField::TICKET, EventField::REASON],
        );
        spells(
            "START_ATTEMPT_LUA",
            START_ATTEMPT_LUA,
            &[EventField::TICKET, EventField::ATTEMPT],
        );
        spells("CANCEL_LUA", CANCEL_LUA, &[EventField::TICKET]);
        spells("FINISH_LUA", FINISH_LUA, &[EventField::TICKET]);
        spells(
            "KNOBS_LUA",
            KNOBS_LUA,
            &[EventField::ACTOR, EventField::CHANGES, EventField::REASON],
        );
        spells(
            "ADAPT_LUA",
            ADAPT_LUA,
            &[EventField::ACTOR, EventField::CHANGES],
        );
        for status in [
            TicketStatus::Completed,
            TicketStatus::Failed,
            TicketStatus::Cancelled,
        ] {
            spells("FINISH_LUA", FINISH_LUA, &[status.as_str()]);
        }
        // The schedule is one string key: no field names.
        assert!(!RESERVE_LUA.contains("HSET"));
    }

    #[test]
    fn the_dead_letter_scripts_spell_the_schema_names() {
        spells("ADMIT_LUA", ADMIT_LUA, &[CounterField::REPLAYED]);
        spells(
            "DEAD_LUA",
            DEAD_LUA,
            &[
                DeadField::ENTRY,
                DeadField::CODE,
                DeadField::DETAIL,
                DeadField::ATTEMPTS,
                TicketField::ATTEMPTS,
            ],
        );
        // A replay copies every field of the request, not `w`.
        let copied: Vec<&str> = ENTRY
            .into_iter()
            .filter(|f| *f != EntryField::AHEAD)
            .collect();
        spells("REPLAY_LUA", REPLAY_LUA, &copied);
        assert!(!REPLAY_LUA.contains(&format!("'{}'", EntryField::AHEAD)));
        spells(
            "REPLAY_LUA",
            REPLAY_LUA,
            &[
                EntryField::REPLAY_OF,
                CounterField::SEQ,
                CounterField::REPLAYED,
                KnobField::SOLD_OUT,
                DeadField::CODE,
                TicketField::STATUS,
                TicketField::SEQ,
                TicketField::ATTEMPTS,
                TicketField::ADMITTED_AT,
                TicketField::COMPLETED_AT,
                TicketField::ERROR_CODE,
                TicketField::ERROR_DETAIL,
                TicketField::RESPONSE_STATUS,
                TicketField::RESPONSE_HEADERS,
                TicketField::RESPONSE_BODY,
                TicketStatus::Queued.as_str(),
                TicketStatus::Failed.as_str(),
                EventField::TICKET,
                EventField::DEAD_LETTER,
                EventField::ACTOR,
            ],
        );
        spells(
            "DISCARD_LUA",
            DISCARD_LUA,
            &[
                EntryField::TICKET,
                DeadField::CODE,
                EventField::TICKET,
                EventField::DEAD_LETTER,
                EventField::CODE,
                EventField::ACTOR,
            ],
        );
        let event = [
            EventField::VERSION,
            EventField::QUEUE,
            EventField::TYPE,
            EventField::AT,
        ];
        for (name, script) in [("REPLAY_LUA", REPLAY_LUA), ("DISCARD_LUA", DISCARD_LUA)] {
            spells(name, script, &event);
            assert!(script.contains("'MINID', '~'"), "{name} trims as it writes");
        }
    }

    #[test]
    fn partitions_have_hash_tags_of_their_own() {
        let one = Keys::new("fg", "checkout", 0, 1);
        assert_eq!(one.stream, "fg:{checkout}:stream");
        let third = Keys::new("fg", "checkout", 2, 3);
        assert_eq!(third.stream, "fg:{checkout:2}:stream");
        assert_eq!(third.claim("abc"), "fg:{checkout:2}:idem:abc");
    }
}
