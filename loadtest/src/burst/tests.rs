use super::admission::is_url_safe;
use super::poll::epoch_ms;
use super::upstream_base;

#[test]
fn timestamps_in_the_contracts_format_are_read_to_the_millisecond() {
    assert_eq!(epoch_ms("1970-01-01T00:00:01.250Z"), Some(1250));
    assert_eq!(
        epoch_ms("2026-11-27T12:00:00.000Z"),
        Some(1_795_780_800_000)
    );
    assert_eq!(epoch_ms("yesterday"), None);
}

#[test]
fn only_url_safe_tickets_are_polled() {
    assert!(is_url_safe("AbC-_09"));
    assert!(!is_url_safe("../admin"));
    assert!(!is_url_safe(""));
}

#[test]
fn the_upstream_is_given_by_its_base_or_its_stats_url() {
    assert_eq!(upstream_base("http://h:1/stats"), "http://h:1");
    assert_eq!(upstream_base("http://h:1/"), "http://h:1");
}
