//! The knob store ([`flashgate::backend::KnobStore`]): knobs set on one
//! instance are the knobs of every instance, admission obeys the stock and
//! sold-out knobs at once, and the adaptive rate takes one step at a time
//! across instances.

use std::time::Duration;

use flashgate::backend::knobs::{KnobsPatch, RateStep};
use flashgate::backend::{Admit, AdmitLimits};

use crate::backends::{over_every_backend, Backend};

over_every_backend!(patches_are_shared, stock_and_sold_out, adaptive_rate);

/// A patch changes the fields it names and no other, returns the knobs as
/// they now are and counts a version; another instance reads the same.
async fn patches_are_shared(backend: Backend) {
    let q = backend.q.clone();
    let other = backend.instance("c2");
    let before = q.knobs().await.unwrap();
    assert_eq!(before.drain_rate, None);
    assert!(!before.paused && !before.sold_out);
    assert_eq!((before.stock, before.open), (None, None));
    let after = q
        .set_knobs(
            &KnobsPatch {
                paused: Some(true),
                open: Some(Some(false)),
                ..KnobsPatch::default()
            },
            Some("admin"),
        )
        .await
        .unwrap();
    assert!(after.paused && after.open == Some(false));
    assert_eq!((after.drain_rate, after.stock), (None, None));
    assert!(after.version > before.version, "{after:?}");
    assert_eq!(other.knobs().await.unwrap(), after);
    // `Some(None)` returns a knob to its configuration.
    let back = other
        .set_knobs(
            &KnobsPatch {
                open: Some(None),
                ..KnobsPatch::default()
            },
            Some("admin"),
        )
        .await
        .unwrap();
    assert_eq!(back.open, None);
    assert!(back.paused, "a patch leaves the fields it does not name");
    assert!(back.version > after.version);
    assert_eq!(q.knobs().await.unwrap(), back);
}

/// Stock counts every admission; a stock knob beats the configured stock;
/// the sold-out flag refuses everything but replays.
async fn stock_and_sold_out(backend: Backend) {
    let q = backend.q.clone();
    // Eight admissions, one of them with a key.
    for n in 0..7 {
        q.admit(backend.request(n), None, backend.cap(100))
            .await
            .unwrap();
    }
    let keyed = q
        .admit(
            backend.request(7),
            Some(backend.claim("k1", "f1")),
            backend.cap(100),
        )
        .await
        .unwrap();
    assert!(matches!(keyed, Admit::Admitted { seq: 8, .. }), "{keyed:?}");

    // Stock counts every admission so far (8); a stock knob beats the config.
    let limited = AdmitLimits {
        stock: Some(backend.limit(8)),
        ..backend.cap(100)
    };
    assert_eq!(
        q.admit(backend.request(20), None, limited).await.unwrap(),
        Admit::SoldOut
    );
    let knobs = q
        .set_knobs(
            &KnobsPatch {
                stock: Some(Some(backend.limit(9))),
                drain_rate: Some(Some(7.5)),
                ..Default::default()
            },
            Some("admin"),
        )
        .await
        .unwrap();
    assert_eq!(
        (knobs.stock, knobs.drain_rate),
        (Some(backend.limit(9)), Some(7.5))
    );
    assert!(matches!(
        q.admit(backend.request(21), None, limited).await.unwrap(),
        Admit::Admitted { .. }
    ));
    assert_eq!(
        q.admit(backend.request(22), None, limited).await.unwrap(),
        Admit::SoldOut
    );
    // The sold-out flag refuses everything but replays; `null` clears the
    // rate override (back to the configured rate).
    let knobs = q
        .set_knobs(
            &KnobsPatch {
                stock: Some(None),
                drain_rate: Some(None),
                sold_out: Some(true),
                ..Default::default()
            },
            Some("admin"),
        )
        .await
        .unwrap();
    assert_eq!((knobs.stock, knobs.drain_rate), (None, None));
    assert_eq!(q.knobs().await.unwrap().drain_rate, None);
    assert_eq!(
        q.admit(backend.request(23), None, backend.cap(100))
            .await
            .unwrap(),
        Admit::SoldOut
    );
    assert!(matches!(
        q.admit(
            backend.request(24),
            Some(backend.claim("k1", "f1")),
            backend.cap(100)
        )
        .await
        .unwrap(),
        Admit::Replayed { .. }
    ));
    let knobs = q.knobs().await.unwrap();
    assert!(knobs.sold_out && knobs.stock.is_none() && !knobs.paused);
}

/// Adaptive steps, seen from two instances (`a`, `b`) of one queue.
async fn adaptive_rate(backend: Backend) {
    let (a, b) = (backend.q.clone(), backend.instance("r2"));
    // Adaptive steps: one down, then none either way for a second, from
    // any instance.
    let step = |down| RateStep {
        down,
        floor: 10.0,
        ceiling: 100.0,
        configured: 100.0,
    };
    let knobs = a.adapt_rate(&step(true)).await.unwrap().expect("a step");
    assert_eq!(knobs.drain_rate, Some(70.0));
    assert_eq!(b.adapt_rate(&step(true)).await.unwrap(), None);
    assert_eq!(b.adapt_rate(&step(false)).await.unwrap(), None);
    assert_eq!(a.knobs().await.unwrap().drain_rate, Some(70.0));
    tokio::time::sleep(RateStep::SPACING + Duration::from_millis(100)).await;
    let knobs = b.adapt_rate(&step(false)).await.unwrap().expect("a step");
    assert_eq!(knobs.drain_rate, Some(74.5), "70 + (100 - 10) / 20");
    // An operator's rate is where the next step starts from.
    let patch = KnobsPatch {
        drain_rate: Some(Some(50.0)),
        ..KnobsPatch::default()
    };
    a.set_knobs(&patch, Some("admin")).await.unwrap();
    let knobs = a.adapt_rate(&step(true)).await.unwrap().expect("a step");
    assert_eq!(knobs.drain_rate, Some(35.0));
    // Bounds hold: down from 35 ends at the floor, not below.
    for _ in 0..4 {
        tokio::time::sleep(RateStep::SPACING + Duration::from_millis(100)).await;
        a.adapt_rate(&step(true)).await.unwrap();
    }
    assert_eq!(a.knobs().await.unwrap().drain_rate, Some(10.0));
}
