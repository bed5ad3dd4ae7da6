use super::*;

/// `toml` after the one key every config needs.
fn load(toml: &str) -> Result<Config, String> {
    Config::from_toml(&format!("upstream = \"http://127.0.0.1:9\"\n{toml}"))
        .map_err(|e| e.to_string())
}

#[test]
fn branding_keys_are_read_and_checked() {
    let c = load(
        "waiting_room_shop_name = \"Ada's <Shop>\"\n\
         waiting_room_logo_url = \"https://cdn.example.com:8443/logo.png\"\n\
         waiting_room_return_url = \"https://shop.example/orders/{ticket}\"\n\
         waiting_room_accent = \"#1a4d2e\"\n\
         waiting_room_background = \"#fed\"\n\
         waiting_room_lang = \"de-CH\"\n\
         [waiting_room_text]\n\
         queued_title = \"Du bist in der Warteschlange\"\n",
    )
    .unwrap();
    assert_eq!(c.waiting_room_shop_name.as_deref(), Some("Ada's <Shop>"));
    assert_eq!(
        c.waiting_room_text["queued_title"],
        "Du bist in der Warteschlange"
    );
    assert_eq!(
        logo_origin(c.waiting_room_logo_url.as_deref().unwrap()),
        Some("https://cdn.example.com:8443")
    );
}

#[test]
fn colours_must_be_hex_and_readable_on_the_card() {
    assert_eq!(parse_colour("#fff"), Some([255, 255, 255]));
    assert_eq!(parse_colour("#2f5bd3"), Some([0x2f, 0x5b, 0xd3]));
    for bad in [
        "red",
        "#ffff",
        "2f5bd3",
        "#gggggg",
        "#12345",
        "rgb(0,0,0)",
        "#fff;}",
    ] {
        assert_eq!(parse_colour(bad), None, "{bad}");
    }
    // Known WCAG values: black on white is 21:1, #777 on white 4.48:1.
    assert!((contrast([0; 3], [255; 3]) - 21.0).abs() < 1e-9);
    assert!((contrast([0x77; 3], [255; 3]) - 4.48).abs() < 0.01);
    let err = load("waiting_room_accent = \"#777\"\n").unwrap_err();
    assert!(
        err.contains("waiting_room_accent") && err.contains("4.5:1"),
        "{err}"
    );
    let err = load("waiting_room_accent = \"tomato\"\n").unwrap_err();
    assert!(err.contains("#rrggbb"), "{err}");
    let err = load("waiting_room_background = \"url(x)\"\n").unwrap_err();
    assert!(err.contains("waiting_room_background"), "{err}");
    assert!(load("waiting_room_accent = \"#767676\"\n").is_ok());
}

#[test]
fn logo_and_return_urls_are_https_or_same_origin_only() {
    for bad in [
        "http://cdn.example/logo.png",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "//cdn.example/logo.png",
        "https://cdn.example/lo go.png",
        "https://cdn.example/logo.png'; script-src *",
        "https:///logo.png",
    ] {
        let err = load(&format!("waiting_room_logo_url = {bad:?}\n")).unwrap_err();
        assert!(err.contains("waiting_room_logo_url"), "{bad}: {err}");
    }
    assert!(load("waiting_room_logo_url = \"/static/logo.svg\"\n").is_ok());
    for bad in [
        "javascript:alert(1)",
        "shop.example",
        "https://",
        "https://x/\"><b>",
    ] {
        let err = load(&format!("waiting_room_return_url = {bad:?}\n")).unwrap_err();
        assert!(err.contains("waiting_room_return_url"), "{bad}: {err}");
    }
    assert!(load("waiting_room_return_url = \"http://localhost:3000/done\"\n").is_ok());
}

#[test]
fn unknown_text_keys_and_bad_language_tags_are_refused() {
    let err = load("[waiting_room_text]\nqueued_titel = \"x\"\n").unwrap_err();
    assert!(
        err.contains("unknown text key `queued_titel`") && err.contains("queued_title"),
        "{err}"
    );
    let err = load("waiting_room_lang = \"en\\\"><script>\"\n").unwrap_err();
    assert!(err.contains("waiting_room_lang"), "{err}");
    // From a flag or variable: a JSON object.
    let c = load("waiting_room_text = '{\"leave\": \"Quitter\"}'\n").unwrap();
    assert_eq!(c.waiting_room_text["leave"], "Quitter");
}
