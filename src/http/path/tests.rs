use super::*;

fn normal(path: &str) -> String {
    normalize(path)
        .unwrap_or_else(|e| panic!("{path} refused: {e}"))
        .into_owned()
}

fn refused(path: &str) -> PathError {
    match normalize(path) {
        Ok(p) => panic!("{path} accepted as {p}"),
        Err(e) => e,
    }
}

#[test]
fn a_normal_path_is_borrowed_unchanged() {
    for path in [
        "/",
        "/checkout",
        "/checkout/",
        "/api/v1/orders;jsessionid=1",
        "/a-b_c.d~e/!$&'()*+,;=:@",
        "/.well-known/x",
        "/..a/a..",
    ] {
        assert!(
            matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
            "{path}"
        );
    }
}

#[test]
fn escapes_of_unreserved_characters_are_decoded() {
    assert_eq!(normal("/%63heckout"), "/checkout");
    assert_eq!(normal("/check%6Fut"), "/checkout");
    assert_eq!(normal("/check%6fut"), "/checkout");
    assert_eq!(normal("/%43HECKOUT"), "/CHECKOUT");
    assert_eq!(normal("/%2D%2e%5F%7E%30%41%7a"), "/-._~0Az");
}

#[test]
fn other_escapes_are_kept_with_uppercase_hex() {
    assert_eq!(normal("/a%3bb"), "/a%3Bb");
    assert_eq!(normal("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(normal("/a%20b%3F%23%25"), "/a%20b%3F%23%25");
}

#[test]
fn bytes_that_may_not_stand_in_a_path_are_escaped() {
    assert_eq!(normal("/café"), "/caf%C3%A9");
    assert_eq!(normal("/a\"b{c}|^[]"), "/a%22b%7Bc%7D%7C%5E%5B%5D");
    // The same resource however it was spelled.
    assert_eq!(normal("/café"), normal("/caf%c3%a9"));
}

#[test]
fn double_encoding_is_decoded_once_only() {
    assert_eq!(normal("/%2563heckout"), "/%2563heckout");
    assert_eq!(normal("/checkout%252f"), "/checkout%252f");
    assert_eq!(normal("/checkout%252F"), "/checkout%252F");
    assert_eq!(normal("/%252e%252e/checkout"), "/%252e%252e/checkout");
}

#[test]
fn dot_segments_are_resolved() {
    assert_eq!(normal("/./checkout"), "/checkout");
    assert_eq!(normal("/x/../checkout"), "/checkout");
    assert_eq!(normal("/x/y/../../checkout"), "/checkout");
    assert_eq!(normal("/checkout/."), "/checkout/");
    assert_eq!(normal("/checkout/x/.."), "/checkout/");
    assert_eq!(normal("/a/.."), "/");
    assert_eq!(normal("/."), "/");
}

#[test]
fn dot_segments_spelled_with_escapes_are_resolved() {
    assert_eq!(normal("/%2e/checkout"), "/checkout");
    assert_eq!(normal("/x/%2e%2e/checkout"), "/checkout");
    assert_eq!(normal("/x/%2E%2E/checkout"), "/checkout");
    assert_eq!(normal("/x/.%2e/checkout"), "/checkout");
}

#[test]
fn repeated_slashes_are_merged() {
    assert_eq!(normal("//checkout"), "/checkout");
    assert_eq!(normal("/api//v1///orders"), "/api/v1/orders");
    assert_eq!(normal("/checkout//"), "/checkout/");
    assert_eq!(normal("//"), "/");
    assert_eq!(normal("//x/./..//y/"), "/y/");
}

#[test]
fn a_climb_above_the_root_is_refused() {
    assert_eq!(refused("/.."), PathError::AboveRoot);
    assert_eq!(refused("/../checkout"), PathError::AboveRoot);
    assert_eq!(refused("/%2E%2E/checkout"), PathError::AboveRoot);
    assert_eq!(refused("/x/../../checkout"), PathError::AboveRoot);
}

#[test]
fn encoded_separators_are_refused_in_any_case() {
    for path in [
        "/checkout%2f",
        "/checkout%2F",
        "/check%2Fout",
        "/..%2fcheckout",
    ] {
        assert_eq!(refused(path), PathError::EncodedSlash, "{path}");
    }
    for path in ["/checkout%5c", "/checkout%5C", "/x%5C..%5Ccheckout"] {
        assert_eq!(refused(path), PathError::EncodedBackslash, "{path}");
    }
}

#[test]
fn nul_backslash_and_broken_escapes_are_refused() {
    assert_eq!(refused("/checkout%00"), PathError::EncodedNul);
    assert_eq!(refused("/checkout\0"), PathError::EncodedNul);
    assert_eq!(refused("/checkout\\"), PathError::Backslash);
    assert_eq!(refused("/x\\..\\checkout"), PathError::Backslash);
    for path in [
        "/%zz",
        "/checkout%4",
        "/checkout%",
        "/%g0",
        "/%0g",
        "/a%%41",
    ] {
        assert_eq!(refused(path), PathError::InvalidEscape, "{path}");
    }
}

#[test]
fn dot_segments_with_parameters_are_refused() {
    // Tomcat reads `..;x` as `..`: `/x/..;/checkout` is its `/checkout`.
    for path in [
        "/x/..;/checkout",
        "/x/..;a=b/checkout",
        "/.;/checkout",
        "/x/%2e%2e;/c",
    ] {
        assert_eq!(refused(path), PathError::DotSegmentParameters, "{path}");
    }
}

#[test]
fn a_target_that_is_not_a_path_is_refused() {
    assert_eq!(refused("*"), PathError::NotAbsolute);
    assert_eq!(refused(""), PathError::NotAbsolute);
    assert_eq!(refused("checkout"), PathError::NotAbsolute);
}

#[test]
fn normal_form_is_a_fixed_point() {
    for path in [
        "/%63heckout/",
        "//a/./b/../c;x=1//",
        "/caf%c3%a9/%7e",
        "/%2563",
        "/a/b/%2E%2E/",
        "/A%3bB",
    ] {
        let once = normal(path);
        assert_eq!(normal(&once), once, "{path}");
        assert!(
            matches!(normalize(&once), Ok(Cow::Borrowed(_))) || once.contains('%'),
            "{path} -> {once} should take the fast path"
        );
    }
}

#[test]
fn routes_match_with_and_without_a_trailing_slash() {
    assert!(matches("/checkout", "/checkout", false));
    assert!(matches("/checkout", "/checkout/", false));
    assert!(matches("/checkout/", "/checkout", false));
    assert!(matches("/", "/", false));
    assert!(!matches("/checkout", "/checkout/x", false));
    assert!(!matches("/checkout", "/", false));
    assert!(!matches("/api/checkout", "/checkout", false));
    assert!(!matches("/checkout", "/checkouts", false));
}

#[test]
fn path_parameters_never_defeat_a_match() {
    assert!(matches("/checkout", "/checkout;a=b", false));
    assert!(matches("/checkout", "/checkout/;a=b", false));
    assert!(matches("/checkout", "/checkout;", false));
    assert!(matches("/checkout", "/;a=b/checkout", false));
    assert!(matches(
        "/api/checkout",
        "/api;v=1/checkout;jsessionid=x",
        false
    ));
    // An escaped `;` is data, not a parameter.
    assert!(!matches("/checkout", "/checkout%3Ba=b", false));
}

#[test]
fn routes_match_case_sensitively_unless_asked() {
    assert!(!matches("/checkout", "/Checkout", false));
    assert!(!matches("/checkout", "/CHECKOUT", false));
    assert!(matches("/checkout", "/Checkout", true));
    assert!(matches("/checkout", "/CHECKOUT/;A=B", true));
    assert!(matches("/Checkout", "/checkout", true));
    assert!(!matches("/checkout", "/checkOut/x", true));
}

#[test]
fn every_spelling_of_the_checkout_route_matches_it_once_normal() {
    for spelling in [
        "/checkout/",
        "//checkout",
        "/%63heckout",
        "/check%6Fut",
        "/./checkout",
        "/x/../checkout",
        "/checkout;a=b",
        "/checkout/;a=b",
        "/%2e/checkout",
        "/x/%2e%2e/checkout",
        "/checkout/.",
        "//%63heck%6fut//;a=b",
    ] {
        let path = normal(spelling);
        assert!(matches("/checkout", &path, false), "{spelling} -> {path}");
    }
    for spelling in ["/%2563heckout", "/checkout%252f", "/Checkout", "/CHECKOUT"] {
        let path = normal(spelling);
        assert!(!matches("/checkout", &path, false), "{spelling} -> {path}");
    }
}

#[test]
fn configured_route_paths_are_normalized_or_refused() {
    assert_eq!(route_path("/check%6Fut").unwrap(), "/checkout");
    assert_eq!(route_path("//api/./orders/").unwrap(), "/api/orders/");
    assert!(route_path("/checkout;v=1")
        .unwrap_err()
        .contains("parameters"));
    assert!(route_path("/checkout%2F").unwrap_err().contains("%2F"));
    assert!(route_path("/../x").unwrap_err().contains("above the root"));
}

#[test]
fn every_combination_of_tricky_pieces_normalizes_to_a_fixed_point_or_is_refused() {
    const PIECES: [&str; 13] = [
        "/", "//", ".", "..", "%2e", "%2E", "c", "C", ";a=b", "%63", "%2563", "%2f", "%4",
    ];
    let mut accepted = 0;
    for n in 0..PIECES.len().pow(4) {
        let mut path = String::from("/");
        let mut k = n;
        for _ in 0..4 {
            path.push_str(PIECES[k % PIECES.len()]);
            k /= PIECES.len();
        }
        let Ok(once) = normalize(&path) else { continue };
        accepted += 1;
        assert!(once.starts_with('/'), "{path} -> {once}");
        assert!(!once.contains("//"), "{path} -> {once}");
        assert!(
            !once.split('/').any(|s| dot_head(s).is_some()),
            "{path} -> {once}"
        );
        assert!(
            once.bytes().all(|b| b == b'/' || b == b'%' || is_plain(b)),
            "{path} -> {once}"
        );
        assert_eq!(normalize(&once).as_deref(), Ok(once.as_ref()), "{path}");
    }
    // The generator reaches both sides.
    assert!(accepted > 1000 && accepted < PIECES.len().pow(4));
}
