//! A fair sale in the line ([`flashgate::backend::FairLimits`]): each
//! product's stock, each client's limits, and what a cancel gives back —
//! decided in the admission's one atomic step, the same on every backend.

use flashgate::backend::knobs::{KnobsPatch, ProductPatch};
use flashgate::backend::{Admit, AdmitLimits, Cancel, EventQuery, FairLimits, QueuedRequest};

use crate::backends::{over_every_backend, Backend};

over_every_backend!(product_stock, client_quota, cancel_gives_back);

/// Limits with products of `stock` units each (in the suite's partition)
/// and the given per-client limits.
fn limits(
    backend: &Backend,
    stock: u64,
    per_client: Option<u64>,
    per_product: Option<u64>,
    cancel_returns: bool,
) -> AdmitLimits {
    AdmitLimits {
        fair: FairLimits {
            product_stock: Some(backend.limit(stock)),
            per_client,
            per_client_product: per_product,
            window_secs: 3600,
            cancel_returns,
        },
        ..backend.cap(100)
    }
}

/// Request `n` buying `product` as client `client`.
fn buy(backend: &Backend, n: u8, product: &str, client: &str) -> QueuedRequest {
    QueuedRequest {
        product: Some(product.into()),
        client: client.into(),
        ..backend.request(n)
    }
}

fn admitted(a: &Admit) -> bool {
    matches!(a, Admit::Admitted { .. })
}

/// Each product sells its own stock and no more; the stored entry names
/// its product; an operator's stock knob and the upstream's sold-out flag
/// of one product leave the others alone.
async fn product_stock(backend: Backend) {
    let q = backend.q.clone();
    let two = limits(&backend, 2, None, None, true);
    for n in 0..2 {
        let a = q
            .admit(buy(&backend, n, "a", "c1"), None, two)
            .await
            .unwrap();
        assert!(admitted(&a), "{a:?}");
    }
    assert_eq!(
        q.admit(buy(&backend, 2, "a", "c1"), None, two)
            .await
            .unwrap(),
        Admit::ProductSoldOut
    );
    let b = q
        .admit(buy(&backend, 3, "b", "c1"), None, two)
        .await
        .unwrap();
    assert!(admitted(&b), "another product sells on: {b:?}");
    // A request without a product is not counted against any.
    let plain = q.admit(backend.request(4), None, two).await.unwrap();
    assert!(admitted(&plain), "{plain:?}");

    // The entries carry their product to the drain.
    let first = backend.next1().await.expect("the first entry");
    assert_eq!(first.request.unwrap().product.as_deref(), Some("a"));
    let got = backend.next(10).await;
    let products: Vec<Option<String>> = got
        .into_iter()
        .map(|d| d.request.unwrap().product)
        .collect();
    assert_eq!(
        products,
        [Some("a".into()), Some("b".into()), None],
        "in admission order"
    );

    // A stock knob for `a` wins over the configured one.
    let mut more = KnobsPatch::default();
    more.products.insert(
        "a".into(),
        ProductPatch {
            stock: Some(Some(backend.limit(3))),
            ..ProductPatch::default()
        },
    );
    let knobs = q.set_knobs(&more, Some("admin")).await.unwrap();
    assert_eq!(knobs.products["a"].stock, Some(backend.limit(3)));
    let a = q
        .admit(buy(&backend, 5, "a", "c1"), None, two)
        .await
        .unwrap();
    assert!(admitted(&a), "a third unit of `a`: {a:?}");
    assert_eq!(
        q.admit(buy(&backend, 6, "a", "c1"), None, two)
            .await
            .unwrap(),
        Admit::ProductSoldOut
    );

    // The upstream says `b` is sold out: `b` only.
    let mut gone = KnobsPatch::default();
    gone.products.insert(
        "b".into(),
        ProductPatch {
            sold_out: Some(true),
            ..ProductPatch::default()
        },
    );
    let knobs = q.set_knobs(&gone, Some("upstream")).await.unwrap();
    assert!(knobs.product_sold_out("b") && !knobs.product_sold_out("a"));
    assert_eq!(
        q.admit(buy(&backend, 7, "b", "c1"), None, two)
            .await
            .unwrap(),
        Admit::ProductSoldOut
    );
    let c = q
        .admit(buy(&backend, 8, "c", "c1"), None, two)
        .await
        .unwrap();
    assert!(admitted(&c), "{c:?}");
    assert_eq!(q.knobs().await.unwrap().products, knobs.products);

    // Each product's sell-outs are events naming it; an operator's stock
    // knob is a knob change like the others.
    let query = |kind: &str| EventQuery {
        types: vec![kind.into()],
        limit: 100,
        ..EventQuery::default()
    };
    let sold_out = q.events(&query("sold_out")).await.unwrap().events;
    let said: Vec<(&str, &str)> = (sold_out.iter())
        .map(|e| (e.fields["product"].as_str(), e.fields["reason"].as_str()))
        .collect();
    assert_eq!(said, [("a", "stock"), ("a", "stock"), ("b", "upstream")]);
    let changed = q.events(&query("knobs_changed")).await.unwrap().events;
    let changes: Vec<serde_json::Value> = (changed.iter())
        .map(|e| serde_json::from_str(&e.fields["changes"]).unwrap())
        .collect();
    assert_eq!(
        changes,
        [
            serde_json::json!({"stock:a": {"old": null, "new": backend.limit(3)}}),
            serde_json::json!({"sold_out:b": {"old": false, "new": true}}),
        ]
    );
}

/// A client's admissions stop at its limit whatever keys it sends, per
/// queue and per product; a replay of an admitted request still gets its
/// ticket; other clients are not affected.
async fn client_quota(backend: Backend) {
    let q = backend.q.clone();
    let quota = limits(&backend, 100, Some(3), Some(2), true);
    for n in 0..2 {
        let claim = backend.claim(&format!("k{n}"), &format!("f{n}"));
        let a = q
            .admit(buy(&backend, n, "a", "alice"), Some(claim), quota)
            .await
            .unwrap();
        assert!(admitted(&a), "{a:?}");
    }
    // Two of `a` is alice's limit for `a`; her third admission is `b`.
    let claim = backend.claim("k2", "f2");
    assert_eq!(
        q.admit(buy(&backend, 2, "a", "alice"), Some(claim), quota)
            .await
            .unwrap(),
        Admit::QuotaExceeded
    );
    let b = q
        .admit(buy(&backend, 3, "b", "alice"), None, quota)
        .await
        .unwrap();
    assert!(admitted(&b), "{b:?}");
    // Three in all: nothing more, of any product, with any key.
    for (n, product) in [(4, "b"), (5, "c")] {
        let claim = backend.claim(&format!("k{n}"), &format!("f{n}"));
        assert_eq!(
            q.admit(buy(&backend, n, product, "alice"), Some(claim), quota)
                .await
                .unwrap(),
            Admit::QuotaExceeded
        );
    }
    // Idempotency first: her first request, again, is its ticket.
    let again = backend.claim("k0", "f0");
    let replay = q
        .admit(buy(&backend, 0, "a", "alice"), Some(again.clone()), quota)
        .await
        .unwrap();
    assert!(matches!(replay, Admit::Replayed { .. }), "{replay:?}");
    assert!(matches!(
        q.replay(&again).await.unwrap(),
        Some(Admit::Replayed { .. })
    ));
    // Bob has limits of his own.
    let bob = q
        .admit(buy(&backend, 6, "a", "bob"), None, quota)
        .await
        .unwrap();
    assert!(admitted(&bob), "{bob:?}");
}

/// A cancelled ticket gives its unit back to its product and to the
/// queue's stock, and its place back to its client — unless give-back is
/// off.
async fn cancel_gives_back(backend: Backend) {
    let q = backend.q.clone();
    let one = AdmitLimits {
        stock: Some(backend.limit(1)),
        ..limits(&backend, 1, Some(1), None, true)
    };
    let first = buy(&backend, 0, "a", "alice");
    assert!(admitted(&q.admit(first.clone(), None, one).await.unwrap()));
    // The queue's stock of one is spent.
    assert_eq!(
        q.admit(buy(&backend, 1, "a", "bob"), None, one)
            .await
            .unwrap(),
        Admit::SoldOut
    );
    let cancelled = q.cancel(&first.ticket).await.unwrap();
    assert!(matches!(cancelled, Cancel::Cancelled(..)), "{cancelled:?}");
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.admitted, stats.returned), (1, 1), "{stats:?}");
    // Cancelling again gives nothing more back.
    assert!(matches!(
        q.cancel(&first.ticket).await.unwrap(),
        Cancel::AlreadyCancelled(..)
    ));
    let second = buy(&backend, 2, "a", "alice");
    let a = q.admit(second.clone(), None, one).await.unwrap();
    assert!(admitted(&a), "the unit and alice's place came back: {a:?}");
    assert_eq!(
        q.admit(buy(&backend, 3, "a", "bob"), None, one)
            .await
            .unwrap(),
        Admit::SoldOut,
        "one unit came back, not two"
    );

    // Without give-back, a cancel keeps the unit and the place spent.
    let kept = limits(&backend, 1, Some(1), None, false);
    let third = buy(&backend, 4, "b", "carol");
    assert!(admitted(&q.admit(third.clone(), None, kept).await.unwrap()));
    assert!(matches!(
        q.cancel(&third.ticket).await.unwrap(),
        Cancel::Cancelled(..)
    ));
    assert_eq!(
        q.admit(buy(&backend, 5, "b", "dave"), None, kept)
            .await
            .unwrap(),
        Admit::ProductSoldOut
    );
    assert_eq!(
        q.admit(buy(&backend, 6, "c", "carol"), None, kept)
            .await
            .unwrap(),
        Admit::QuotaExceeded
    );
}
