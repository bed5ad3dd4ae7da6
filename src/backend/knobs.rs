//! The knobs operators turn during a sale (SPEC §5): drain rate, pause,
//! stock, open/closed, and the sold-out flag. They live in the queue backend
//! ([`KnobStore`]) so a change on one instance reaches every instance, and
//! each instance keeps a watched copy.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::QueueError;
use crate::config::QueueConfig;

/// How often each instance re-reads the shared knobs.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The largest `stock` a PATCH sets: 2^53 - 1, the largest whole number
/// Redis scripts (which count in doubles) hold exactly.
pub const MAX_STOCK: u64 = (1 << 53) - 1;

/// A queue's runtime settings as stored in the backend. `None` means "as
/// configured".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Knobs {
    /// Requests per second sent upstream.
    pub drain_rate: Option<f64>,
    /// No dispatch while paused; admission goes on.
    pub paused: bool,
    /// Admissions allowed in total.
    pub stock: Option<u64>,
    /// `Some(true)` opens the sale now, `Some(false)` closes it, `None`
    /// follows `opens_at`/`closes_at`.
    pub open: Option<bool>,
    /// Set when stock ran out or the upstream said so: admissions get 410
    /// and waiting tickets fail without reaching the upstream.
    pub sold_out: bool,
    /// Proof-of-work difficulty (leading zero bits); `None`: as configured.
    pub pow_difficulty: Option<u8>,
    /// Counts changes, so a read that raced with a change cannot roll an
    /// instance's copy back.
    #[serde(skip)]
    pub version: u64,
    /// A fair sale's products with a knob set (`stock:<p>`, `sold_out:<p>`).
    #[serde(skip)]
    pub products: BTreeMap<String, ProductKnobs>,
}

/// One product's knobs; absent: as configured, not sold out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductKnobs {
    /// Its stock set at run time (the admin API).
    pub stock: Option<u64>,
    /// Set when the upstream said it is sold out: its admissions get 410
    /// and its waiting tickets fail without reaching the upstream.
    pub sold_out: bool,
}

/// A change to one product's knobs; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    /// `Some(None)` returns to the configured stock.
    pub stock: Option<Option<u64>>,
    /// Adds units (or takes them away, not below 0) to the stock in force,
    /// in the same step: `(units, configured stock)`.
    pub add: Option<(i64, u64)>,
    pub sold_out: Option<bool>,
}

/// A change to the knobs (`PATCH /admin/queues/{name}`); absent fields stay
/// as they are.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnobsPatch {
    /// Requests per second, > 0 and ≤ 1,000,000; `Some(None)` returns to
    /// the configured rate.
    #[serde(default, deserialize_with = "present")]
    pub drain_rate: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub paused: Option<bool>,
    /// `Some(None)` returns to the configured stock.
    #[serde(default, deserialize_with = "present_count")]
    pub stock: Option<Option<u64>>,
    /// `Some(None)` returns to the schedule.
    #[serde(default, deserialize_with = "present")]
    pub open: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    pub sold_out: Option<bool>,
    /// Products' knobs (the admin API's stock routes, the drain); not
    /// part of the PATCH body.
    #[serde(skip)]
    pub products: BTreeMap<String, ProductPatch>,
    /// 0-32 bits (0 = off); `Some(None)` returns to the configured one.
    #[serde(default, deserialize_with = "present_bits")]
    pub pow_difficulty: Option<Option<u8>>,
}

/// A field that is present: its value, `null` only where the type allows it
/// (absent fields are `None` by `default`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A present count, or `null`: a whole number, also when written as one
/// with a zero fraction (`3292.0`, which JSON Schema counts as an integer).
fn present_count<'de, D>(d: D) -> Result<Option<Option<u64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(Some(None));
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=MAX_STOCK as f64).contains(f))
            .map(|f| f as u64)
    });
    match whole {
        Some(count) => Ok(Some(Some(count))),
        None => Err(D::Error::custom(format!(
            "`{n}` is not a whole number from 0 to {MAX_STOCK}"
        ))),
    }
}

/// A present number of bits (0-32), or `null`; like [`present_count`], a
/// zero fraction is still a whole number.
fn present_bits<'de, D>(d: D) -> Result<Option<Option<u8>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    match present_count(d)? {
        // The range (0-32) is `validate`'s to check.
        Some(Some(n)) => u8::try_from(n)
            .map(|bits| Some(Some(bits)))
            .map_err(|_| D::Error::custom(format!("`{n}` is not a whole number from 0 to 32"))),
        other => Ok(other.map(|_| None)),
    }
}

impl KnobsPatch {
    /// Parses a `PATCH /admin/queues/{name}` body; errors name the field.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        // An object, not the sequence form serde would also take for a struct.
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| format!("body must be a JSON object: {e}"))?;
        let object = serde_json::Value::Object(fields);
        let patch: KnobsPatch = serde_path_to_error::deserialize(object).map_err(|e| {
            match e.path().to_string().as_str() {
                "." => format!("body: {}", e.inner()),
                field => format!("`{field}`: {}", e.inner()),
            }
        })?;
        if patch
            .drain_rate
            .flatten()
            .is_some_and(|r| !(r > 0.0 && r <= 1e6))
        {
            return Err("`drain_rate` must be a number > 0 and <= 1000000".into());
        }
        if patch.stock.flatten().is_some_and(|s| s > MAX_STOCK) {
            return Err(format!(
                "`stock` must be a whole number from 0 to {MAX_STOCK}"
            ));
        }
        if patch
            .pow_difficulty
            .flatten()
            .is_some_and(|d| d > crate::config::MAX_POW_DIFFICULTY)
        {
            return Err("`pow_difficulty` must be a whole number from 0 to 32".into());
        }
        Ok(patch)
    }

    pub fn apply(&self, k: &mut Knobs) {
        k.version += 1;
        if let Some(r) = self.drain_rate {
            k.drain_rate = r;
        }
        if let Some(p) = self.paused {
            k.paused = p;
        }
        if let Some(s) = self.stock {
            k.stock = s;
        }
        if let Some(o) = self.open {
            k.open = o;
        }
        if let Some(s) = self.sold_out {
            k.sold_out = s;
        }
        for (name, patch) in &self.products {
            let product = k.products.entry(name.clone()).or_default();
            if let Some(s) = patch.stock {
                product.stock = s;
            }
            if let Some((units, configured)) = patch.add {
                let base = product.stock.unwrap_or(configured);
                product.stock = Some(base.saturating_add_signed(units));
            }
            if let Some(s) = patch.sold_out {
                product.sold_out = s;
            }
            if *product == ProductKnobs::default() {
                k.products.remove(name);
            }
        }
        if let Some(d) = self.pow_difficulty {
            k.pow_difficulty = d;
        }
    }
}

/// One step of the adaptive drain (AIMD): an overload multiplies the rate
/// by [`RateStep::DECREASE`], a healthy spell adds a twentieth of the range;
/// the result stays within `[floor, ceiling]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStep {
    /// Down (an overload) or up (healthy, with a backlog).
    pub down: bool,
    pub floor: f64,
    pub ceiling: f64,
    /// The configured rate: where the rate starts when no knob is set.
    pub configured: f64,
}

impl RateStep {
    /// The factor an overload applies.
    pub const DECREASE: f64 = 0.7;
    /// Steps the same way at most this often, across all instances.
    pub const SPACING: Duration = Duration::from_secs(1);

    /// Multiplier and addend: `rate · mul + add`, then clamped.
    pub fn terms(&self) -> (f64, f64) {
        if self.down {
            (Self::DECREASE, 0.0)
        } else {
            (1.0, (self.ceiling - self.floor) / 20.0)
        }
    }

    /// The rate after this step from `current`.
    pub fn apply(&self, current: f64) -> f64 {
        let (mul, add) = self.terms();
        let rate = ((current * mul + add) * 1000.0).round() / 1000.0;
        rate.clamp(self.floor, self.ceiling)
    }
}

/// The shared knobs of one queue.
#[async_trait]
pub trait KnobStore: Send + Sync + 'static {
    /// Called every [`WATCH_INTERVAL`] by each instance's knob watcher: the
    /// knobs as stored (all `None`/false and version 0 when never set).
    async fn knobs(&self) -> Result<Knobs, QueueError>;

    /// Called for `PATCH /admin/queues/{name}`, and by the drain when the
    /// upstream says sold out: applies `patch` in one step and returns the
    /// knobs as they now are, their version counted up. Admissions see the
    /// change at once (their atomic step reads the stored stock and
    /// sold-out flag). In the same step, a `knobs_changed` event names
    /// `actor` and each knob whose value moved, and a flip to sold out
    /// writes a `sold_out` event (reason `upstream` for
    /// [`super::events::UPSTREAM_ACTOR`], else `operator`); `actor` `None`
    /// writes no event (a copy of a change recorded elsewhere).
    async fn set_knobs(&self, patch: &KnobsPatch, actor: Option<&str>)
        -> Result<Knobs, QueueError>;

    /// Called by the adaptive drain when it judges the upstream overloaded
    /// (`step.down`) or healthy with a backlog: moves the `drain_rate` knob
    /// one step, unless a step the same way (or, for an increase, any step)
    /// was taken by any instance in the last [`RateStep::SPACING`] — N
    /// instances judging the same overload take one step, not N. Returns the
    /// knobs after a step taken, `None` when no step was taken. A step
    /// writes a `knobs_changed` event by [`super::events::ADAPTIVE_ACTOR`].
    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError>;
}

/// Where a sale is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Not open yet; early arrivals wait this long (503 sale_not_open).
    NotOpen { opens_in: Duration },
    /// The pre-queue window: admitted in a random place in line, drained
    /// from the opening on.
    PreQueue { opens_in: Duration },
    /// Admitting and draining.
    Open,
    /// Closed: no admissions (410 sale_closed); what was admitted still drains.
    Closed,
}

impl Phase {
    /// Every phase's name, in the order a sale goes through them.
    pub const NAMES: [&'static str; 4] = ["not_open", "prequeue", "open", "closed"];

    /// The name `GET /admin/queues` (`sale`) and `flashgate_sale_phase{phase}`
    /// give this phase.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::NotOpen { .. } => "not_open",
            Phase::PreQueue { .. } => "prequeue",
            Phase::Open => "open",
            Phase::Closed => "closed",
        }
    }
}

impl Knobs {
    /// The rate the drain runs at now.
    pub fn drain_rate(&self, config: &QueueConfig) -> f64 {
        let rate = self.drain_rate.unwrap_or(config.drain_rate);
        match &config.adaptive {
            // An operator's rate is where the adaptive drain goes on from,
            // within its bounds.
            Some(a) => rate.clamp(a.floor, a.ceiling),
            None => rate,
        }
    }

    /// The stock limit in force.
    pub fn stock(&self, config: &QueueConfig) -> Option<u64> {
        self.stock.or(config.stock)
    }

    /// A product's stock in force (`None`: the queue does not sell it).
    pub fn product_stock(&self, config: &QueueConfig, product: &str) -> Option<u64> {
        let knob = self.products.get(product).and_then(|p| p.stock);
        knob.or_else(|| config.product_stock.get(product).copied())
    }

    /// Whether the upstream said `product` is sold out.
    pub fn product_sold_out(&self, product: &str) -> bool {
        self.products.get(product).is_some_and(|p| p.sold_out)
    }

    /// The proof-of-work difficulty in force (0 = off).
    pub fn pow_difficulty(&self, config: &QueueConfig) -> u8 {
        self.pow_difficulty.unwrap_or(config.pow_difficulty)
    }

    /// The sale's phase at `now`: an operator's open/close wins over the schedule.
    pub fn phase(&self, config: &QueueConfig, now: SystemTime) -> Phase {
        match self.open {
            Some(true) => return Phase::Open,
            Some(false) => return Phase::Closed,
            None => {}
        }
        if let Some(opens) = config.opens_at {
            if let Ok(wait) = opens.duration_since(now) {
                if !wait.is_zero() {
                    let early = config.prequeue_from.is_some_and(|from| now >= from);
                    return if early {
                        Phase::PreQueue { opens_in: wait }
                    } else {
                        Phase::NotOpen { opens_in: wait }
                    };
                }
            }
        }
        match config.closes_at {
            Some(closes) if now >= closes => Phase::Closed,
            _ => Phase::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_fields_are_validated_by_name() {
        let p = KnobsPatch::from_json(
            br#"{"drain_rate": 50, "paused": true, "stock": null, "open": false}"#,
        )
        .unwrap();
        assert_eq!(p.drain_rate, Some(Some(50.0)));
        let clear = KnobsPatch::from_json(br#"{"drain_rate": null}"#).unwrap();
        assert_eq!(clear.drain_rate, Some(None));
        assert_eq!(p.paused, Some(true));
        assert_eq!(p.stock, Some(None));
        assert_eq!(p.open, Some(Some(false)));
        let most = KnobsPatch::from_json(br#"{"stock": 9007199254740991, "sold_out": true}"#);
        assert_eq!(most.unwrap().stock, Some(Some(MAX_STOCK)));
        let pow = KnobsPatch::from_json(br#"{"pow_difficulty": 20}"#).unwrap();
        assert_eq!(pow.pow_difficulty, Some(Some(20)));
        // JSON Schema's integer: a zero fraction is still a whole number.
        let pow = KnobsPatch::from_json(br#"{"pow_difficulty": 11.0}"#).unwrap();
        assert_eq!(pow.pow_difficulty, Some(Some(11)));
        let pow = KnobsPatch::from_json(br#"{"pow_difficulty": null}"#).unwrap();
        assert_eq!(pow.pow_difficulty, Some(None));
        let whole = KnobsPatch::from_json(br#"{"stock": 3292.0}"#).unwrap();
        assert_eq!(whole.stock, Some(Some(3292)));
        for (body, field) in [
            (&br#"{"drain_rate": -1}"#[..], "drain_rate"),
            (br#"{"stock": "ten"}"#, "stock"),
            (br#"{"stock": -3}"#, "stock"),
            (br#"{"stock": 9007199254740992}"#, "stock"),
            (br#"{"stock": 1.5}"#, "stock"),
            (br#"{"stock": 1e300}"#, "stock"),
            (br#"{"paused": "yes"}"#, "paused"),
            (br#"{"speed": 3}"#, "speed"),
            (br#"{"sold_out": null}"#, "sold_out"),
            (br#"[1]"#, "body"),
            (br#"{"open": 1}"#, "open"),
            (br#"{"pow_difficulty": 33}"#, "pow_difficulty"),
            (br#"{"pow_difficulty": -1}"#, "pow_difficulty"),
        ] {
            let err = KnobsPatch::from_json(body).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }
}
