use super::timeline::bucket;

#[test]
fn a_timeline_counts_every_event_and_tracks_depth() {
    let admitted = [0.0, 0.01, 0.02, 0.3];
    let drained = [0.5, 0.9, 1.9];
    let t = bucket(&admitted, &drained);
    // 1.9 s of events fit the first width that gives under 150 buckets.
    assert_eq!(t.bucket_seconds, 0.05);
    let width = t.bucket_seconds;
    let ins: f64 = t.points.iter().map(|p| p.admitted_per_second * width).sum();
    let outs: f64 = t.points.iter().map(|p| p.drained_per_second * width).sum();
    assert_eq!((ins.round(), outs.round()), (4.0, 3.0));
    assert_eq!(t.points.first().map(|p| p.depth), Some(3));
    assert_eq!(t.points.last().map(|p| p.depth), Some(1));
}

#[test]
fn long_runs_get_wider_buckets() {
    let t = bucket(&[0.0, 600.0], &[]);
    assert_eq!(t.bucket_seconds, 5.0);
    assert!(t.points.len() <= 150);
}

#[test]
fn an_empty_run_has_an_empty_timeline() {
    assert!(bucket(&[], &[]).points.is_empty());
}
