use super::*;

fn alone(detector: &Detector) -> Scanner {
    let id = DETECTORS.iter().position(|d| std::ptr::eq(d, detector)).unwrap();
    Scanner::with_ids(&[id], &[])
}

/// Our own detectors; gitleaks' rules have their own examples test, under
/// gitleaks' semantics, in `gitleaks::tests`.
fn ours() -> impl Iterator<Item = &'static Detector> {
    DETECTORS
        .iter()
        .filter(|d| !matches!(d.pattern, Pattern::Gitleaks(_)))
}

/// The part of a positive example that is the secret: what the detector
/// alone finds in it.
fn secrets_in(scanner: &Scanner, value: &str) -> Vec<String> {
    let mut found = Vec::new();
    scanner.find(value.as_bytes(), &mut found);
    found
        .iter()
        .map(|f| String::from_utf8_lossy(&value.as_bytes()[f.range.clone()]).into_owned())
        .collect()
}

#[test]
fn every_detector_finds_its_positives_and_leaves_its_negatives() {
    for detector in ours() {
        assert!(
            !detector.positives.is_empty() && !detector.negatives.is_empty(),
            "{} needs examples both ways",
            detector.name
        );
        let scanner = alone(detector);
        for positive in detector.positives {
            let secrets = secrets_in(&scanner, positive);
            assert!(!secrets.is_empty(), "{} missed {positive:?}", detector.name);
            let masked = String::from_utf8(scanner.mask(positive.as_bytes()).unwrap()).unwrap();
            for secret in &secrets {
                assert!(
                    secret.len() >= 6,
                    "{}: {secret:?} is too short to be the secret",
                    detector.name
                );
                assert!(!masked.contains(secret.as_str()), "{}: {masked:?}", detector.name);
            }
            assert!(masked.contains(&replacement(detector.name)), "{masked}");
        }
        for negative in detector.negatives {
            assert_eq!(
                secrets_in(&scanner, negative),
                Vec::<String>::new(),
                "{} fired on {negative:?}",
                detector.name
            );
        }
    }
}

#[test]
fn keywords_are_lower_case_and_found_in_every_positive() {
    for detector in DETECTORS.iter() {
        for keyword in detector.keywords {
            assert_eq!(*keyword, keyword.to_ascii_lowercase(), "{}", detector.name);
        }
        if detector.keywords.is_empty() {
            continue;
        }
        for positive in detector.positives {
            let lower = positive.to_ascii_lowercase();
            assert!(
                detector.keywords.iter().any(|k| lower.contains(k)),
                "{}: the prefilter would skip {positive:?}",
                detector.name
            );
        }
    }
}

#[test]
fn all_secret_detectors_together_mask_every_positive() {
    let scanner = Scanner::new(&["all"]).unwrap();
    for detector in DETECTORS.iter().filter(|d| !d.opt_in) {
        for positive in detector.positives {
            let secrets = secrets_in(&alone(detector), positive);
            let masked = String::from_utf8(scanner.mask(positive.as_bytes()).unwrap()).unwrap();
            for secret in secrets {
                assert!(!masked.contains(&secret), "{masked:?} still holds {secret:?}");
            }
        }
    }
}

/// A dotted passphrase is a secret; a dotted name code reads a setting
/// through is a reference.
#[test]
fn a_dotted_passphrase_is_masked_and_a_code_reference_is_not() {
    let scanner = Scanner::new(&["all"]).unwrap();
    for (value, word) in [
        (
            "postgres://app:correct.horse.battery.staple@db.internal/app",
            "horse",
        ),
        ("DB_PASSWORD=correct.horse.battery.staple", "horse"),
        (r#"{"password": "tiger.lily.moon"}"#, "lily"),
        ("DB_PASSWORD=global.warming.is.real", "warming"),
        ("postgres://app:system.of.a.down@db/app", "down"),
        ("postgres://app:input.output.error@db.internal/app", "output"),
        ("export PASSWORD=this.is.my.pass", "my.pass"),
        ("DB_PASSWORD=window.seat.please.now", "seat"),
    ] {
        let masked = String::from_utf8(scanner.mask(value.as_bytes()).unwrap_or_default()).unwrap();
        assert!(!masked.contains(word), "{value:?} -> {masked:?}");
    }
    for value in [
        "password = config.db.password",
        "pass: process.env.DB_PASS,",
        "token: $settings.api.token",
        "postgres://app:${DB_PASSWORD}@db/orders",
        "password = user.password",
        "password = request.form.password",
        "api_key = req.body.apiKey",
        "token = response.data.token",
    ] {
        assert_eq!(scanner.mask(value.as_bytes()), None, "{value:?}");
    }
}

/// What `built_in` relies on: no built-in pattern fails to compile.
#[test]
fn every_detector_compiles() {
    for detector in DETECTORS.iter() {
        if let Err(e) = Matcher::new(detector.pattern) {
            panic!("{}: {e}", detector.name);
        }
    }
}

#[test]
fn every_built_in_detector_and_the_policies_own_fit_one_scanner() {
    assert!(DETECTORS.len() + MAX_CUSTOM_DETECTORS <= MAX_DETECTORS);
}

/// A Policy's own pattern masks what it says: its group, even where the
/// group looks like a placeholder, or its whole match where the group took
/// no part.
#[test]
fn a_policys_own_pattern_masks_its_group_or_its_match() {
    let custom = |name: &str, regex: &str, keyword: &str| {
        Arc::new(Custom::new(name, regex, &[keyword.to_owned()]).unwrap())
    };
    let scanner = Scanner::with_ids(
        &[],
        &[
            custom("acme-pin", r"(?i)badge_pin=([0-9]{6})", "badge_pin"),
            custom("acme-phrase", r"recovery_phrase=([a-z.]{12,})", "recovery_phrase"),
            custom(
                "acme",
                r"\b(?:acme_key=([A-Za-z0-9]{20})|ACMEKEY-[0-9]{12})\b",
                "acme",
            ),
        ],
    );
    let masked = |v: &str| String::from_utf8(scanner.mask(v.as_bytes()).unwrap()).unwrap();
    assert_eq!(masked("badge_pin=111111"), "badge_pin=[masked:acme-pin]");
    assert_eq!(
        masked("recovery_phrase=correct.horse.battery.staple"),
        "recovery_phrase=[masked:acme-phrase]"
    );
    assert_eq!(
        masked("legacy ACMEKEY-482913775310 in use"),
        "legacy [masked:acme] in use"
    );
    assert_eq!(masked("acme_key=Q7ZK2M9XW4P3LN8R5TV1"), "acme_key=[masked:acme]");
}

/// The automaton walks a long value in lanes side by side: a keyword is
/// seen wherever it lies, across the lanes' borders too.
#[test]
fn a_keyword_is_seen_at_every_position() {
    let ids: Vec<usize> = (0..DETECTORS.len()).collect();
    let scanner = Scanner::with_ids(&ids, &[]);
    for (i, c) in scanner.detectors.iter().enumerate() {
        let Some(keyword) = DETECTORS[c.id].keywords.iter().max_by_key(|k| k.len()) else {
            continue;
        };
        for len in [keyword.len(), 11, 19, 23, 40, 63, 97, 130] {
            for at in 0..=len.saturating_sub(keyword.len()) {
                let mut text = vec![b' '; len.max(keyword.len())];
                text[at..at + keyword.len()].copy_from_slice(keyword.to_ascii_uppercase().as_bytes());
                let found = scanner.candidates(&text);
                assert!(found.iter().any(|j| j == i), "{keyword:?} at {at} of {len}");
            }
        }
    }
}

#[test]
fn look_alikes_pass_unchanged_with_every_detector_on() {
    let names: Vec<&str> = DETECTORS.iter().map(|d| d.name).collect();
    let scanner = Scanner::new(&names).unwrap();
    for value in [
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "2026-11-28T14:39:21.123456+00:00",
        "2026-11-28 14:39:21",
        "The quick brown fox jumps over the lazy dog.",
        "order #1234 shipped to warehouse 7",
        "{\"status\": \"shipped\", \"items\": 3}",
        "SELECT * FROM orders WHERE id = 42",
        "d41d8cd98f00b204e9800998ecf8427e",
        "",
    ] {
        assert_eq!(scanner.mask(value.as_bytes()), None, "{value:?} was changed");
    }
}

#[test]
fn personal_data_is_only_masked_when_named() {
    let all = Scanner::new(&["all"]).unwrap();
    assert_eq!(all.mask(b"ada@example.com 4111 1111 1111 1111"), None);
    let pii = Scanner::new(&["email", "card"]).unwrap();
    let masked = pii.mask(b"ada@example.com 4111 1111 1111 1111").unwrap();
    assert_eq!(masked, b"[masked:email] [masked:payment-card]");
}

#[test]
fn unknown_detector_names_are_refused_with_the_list() {
    let err = Scanner::new(&["aws", "githubb"]).unwrap_err();
    assert_eq!(err.name, "githubb");
    assert!(err.to_string().contains("github"), "{err}");
}

#[test]
fn overlapping_finds_merge_and_invalid_utf8_is_scanned() {
    let scanner = Scanner::new(&["all"]).unwrap();
    // A connection string whose password is itself a token: one mask.
    let value = b"postgres://app:ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R@db/x";
    let masked = scanner.mask(value).unwrap();
    assert!(
        !masked.windows(10).any(|w| w == b"1a2B3c4D5e"),
        "{}",
        String::from_utf8_lossy(&masked)
    );
    let mut bytes = b"\xff\xfe AKIAIOSFODNN7EXAMPLE \xc3".to_vec();
    let masked = scanner.mask(&bytes).unwrap();
    assert_eq!(masked, b"\xff\xfe [masked:aws-access-key-id] \xc3");
    bytes.clear();
    assert_eq!(scanner.mask(&bytes), None);
}

#[test]
fn checksums_decide_cards_and_ibans() {
    assert!(detectors::passes(detectors::Check::Luhn, b"4111111111111111"));
    assert!(!detectors::passes(detectors::Check::Luhn, b"4111111111111112"));
    assert!(!detectors::passes(detectors::Check::Luhn, b"0000"));
    assert!(detectors::passes(
        detectors::Check::Iban,
        b"GB82WEST12345698765432"
    ));
    assert!(!detectors::passes(
        detectors::Check::Iban,
        b"GB82WEST12345698765433"
    ));
    assert!(!detectors::passes(detectors::Check::Iban, b"GB82"));
}

#[test]
fn statement_text_is_masked_with_every_secret_detector() {
    assert_eq!(
        statement_text("UPDATE keys SET v = 'AKIAIOSFODNN7EXAMPLE' WHERE id = 1"),
        "UPDATE keys SET v = '[masked:aws-access-key-id]' WHERE id = 1"
    );
    let clean = "SELECT id FROM orders WHERE id = 42";
    assert!(matches!(statement_text(clean), Cow::Borrowed(s) if s == clean));
}

#[test]
fn a_secret_overlapping_personal_data_is_named_as_the_secret() {
    let scanner = Scanner::new(&["all", "email"]).unwrap();
    let masked = scanner
        .mask(b"git clone https://ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R@github.com/acme/app")
        .unwrap();
    assert_eq!(
        String::from_utf8(masked).unwrap(),
        "git clone https://[masked:github-token]/acme/app"
    );
}

mod generated {
    //! Text generated from the pieces secrets are written with (key names,
    //! separators, quotes, escapes, braces, line breaks), thrown at every
    //! detector: the scanner never panics, every find lies inside the value,
    //! and a masked JSON document is still JSON with the same shape.

    use proptest::prelude::*;

    use super::*;

    const PIECES: &[&str] = &[
        "password",
        "PGPASSWORD",
        "db_pass",
        "apiKey",
        "token",
        "Authorization",
        "name",
        "value",
        "key",
        "secret",
        "--token",
        "sig",
        "=",
        ":",
        ":=",
        "=>",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\"",
        "'",
        "`",
        "\\",
        "\\\"",
        "\\n",
        "\\u0041",
        "\\ud83d",
        "%",
        "%3A",
        "%4",
        "{",
        "}",
        "}}",
        "[",
        "]",
        "<",
        ">",
        "</",
        "/>",
        ";",
        "&",
        ",",
        "@",
        "//",
        "://",
        "|",
        "- ",
        "x",
        "Zq8-",
        "ghp_",
        "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bD1fH3jL5",
        "eyJ",
        "é",
        "\u{0}",
        "-----BEGIN PRIVATE KEY-----",
        "redis",
        "AKIA",
        "${X}",
        "****",
        "SK",
        "s.",
        "hvs.",
        "q~",
        "hf_",
        "SG.",
        "heroku",
        "acme_",
        "A3-",
        "zz-top",
        "shpat_",
        "dop_v1_",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn the_scanner_holds_on_any_text(value in text()) {
            let scanner = Scanner::new(&["all", "card", "email", "iban"]).unwrap();
            let mut found = Vec::new();
            scanner.find(value.as_bytes(), &mut found);
            for f in &found {
                prop_assert!(f.range.start < f.range.end && f.range.end <= value.len(), "{f:?} in {value:?}");
            }
            for pair in found.windows(2) {
                prop_assert!(pair[0].range.end <= pair[1].range.start, "{found:?}");
            }
            let _ = scanner.mask(value.as_bytes());
        }

        #[test]
        fn candidates_are_the_detectors_whose_keyword_occurs(value in text()) {
            let custom = Arc::new(Custom::new("acme", "acme_[a-z0-9]{8}", &["acme_".into(), "zz-top".into()]).unwrap());
            let ids = resolve(&["all", "card", "email", "iban", "generic-api-key"]).unwrap();
            let scanner = Scanner::with_ids(&ids, &[custom]);
            let lower = value.to_ascii_lowercase();
            let mut expected = Set::default();
            for (i, c) in scanner.detectors.iter().enumerate() {
                let keywords: Vec<&str> = match &c.matcher {
                    Slot::BuiltIn => DETECTORS[c.id].keywords.to_vec(),
                    Slot::Custom(custom) => custom.keywords.iter().map(String::as_str).collect(),
                };
                // The automaton looks for each keyword's first
                // KEYWORD_PREFIX bytes.
                let prefix = |k: &str| k[..k.len().min(KEYWORD_PREFIX)].to_owned();
                if keywords.is_empty() || keywords.iter().any(|k| lower.contains(&prefix(k))) {
                    expected.insert(i);
                }
            }
            prop_assert_eq!(scanner.candidates(value.as_bytes()), expected, "{:?}", value);
        }

        #[test]
        fn a_masked_json_document_is_still_json(values in prop::collection::vec(text(), 1..4)) {
            let scanner = Scanner::new(&["all"]).unwrap();
            let doc = serde_json::json!({
                "a": values[0],
                "nested": {"b": values.get(1), "list": [values.get(2), values.get(3)]},
                "text": serde_json::to_string(&values).unwrap(),
            });
            let raw = serde_json::to_vec(&doc).unwrap();
            if let Some(masked) = scanner.mask(&raw) {
                let reread: Result<serde_json::Value, _> = serde_json::from_slice(&masked);
                prop_assert!(reread.is_ok(), "{}", String::from_utf8_lossy(&masked));
                let reread = reread.unwrap();
                prop_assert!(reread["nested"]["list"].is_array());
            }
        }
    }
}

/// The services issue 16 names, as application tables hold their
/// credentials; values written for this test, not taken from any rule's
/// examples.
#[test]
fn service_credentials_are_masked_where_tables_hold_them() {
    let scanner = Scanner::new(&["all"]).unwrap();
    for (value, secret) in [
        (
            "twilio sid and SK4f0e8a6b2c9d1e3f5a7b9c0d2e4f6a8b1 for sms",
            "SK4f0e8a6b2c9d1e3f5a7b9c0d2e4f6a8b1",
        ),
        (
            "sendgrid: 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",
            "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",
        ),
        (
            "mailgun_api_key = 'key-3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2e'",
            "3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2e",
        ),
        (
            "shop token 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",
            "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",
        ),
        (
            "DO_TOKEN=dop_v1_4a7c1e9b3d6f0a2c5e8b1d4f7a0c3e6b9d2f5a8c1e4b7d0f3a6c9e2b5d8f1a4c",
            "dop_v1_4a7c1e9b3d6f0a2c5e8b1d4f7a0c3e6b9d2f5a8c1e4b7d0f3a6c9e2b5d8f1a4c",
        ),
        (
            "heroku auth token: 5d8f2a7c-3e1b-4c9d-8a6f-0b2e4d7c9a1f",
            "5d8f2a7c-3e1b-4c9d-8a6f-0b2e4d7c9a1f",
        ),
        (
            "DATADOG_APP_KEY=7c3e9a1f5b8d2e6a0c4f7b9d1e3a5c8f2b6d0e4a",
            "7c3e9a1f5b8d2e6a0c4f7b9d1e3a5c8f2b6d0e4a",
        ),
        (
            "hub token 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",
            "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",
        ),
        (
            "databricks: dapi8f2c6a0e4b9d3f7a1c5e8b2d6f0a4c9e",
            "dapi8f2c6a0e4b9d3f7a1c5e8b2d6f0a4c9e",
        ),
        (
            "twine upload -p pypi-AgEIcHlwaS5vcmcCJDk3ZWQ5YjJlLTRhYjEtNDc4Yi1hNzQ1LWJmMGU2ZDFlYzE2MgACKlsz",
            "pypi-AgEIcHlwaS5vcmcCJDk3ZWQ5YjJlLTRhYjEtNDc4Yi1hNzQ1LWJmMGU2ZDFlYzE2MgACKlsz",
        ),
        (
            "vault login hvs.CAESIJx9Qm2Wn4Er6Tb8Yv0Uc3Xi5Zo7La9Ks1Jd3Hf5Gp7Mq9Nw1Be3Rt5Yu7Io9Pa1Sd3Fg5Hj7Kl9Zx1Cv3Bn5Mq7Wn9",
            "hvs.CAESIJx9Qm2Wn4Er6Tb8Yv0Uc3Xi5Zo7La9Ks1Jd3Hf5Gp7Mq9Nw1Be3Rt5Yu7Io9Pa1Sd3Fg5Hj7Kl9Zx1Cv3Bn5Mq7Wn9",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=acmeprod;AccountKey=q8Zx3Vb7Nm1Lk5Jh9Gf2Ds6Ap0Oi4Uy8Tr2Ew6Qz1Xc5Vb9Nm3Lk7Jh1Gf5Ds9Ap3Oi7Uy1Tr5Ew9Qz3Xc7Vb1Nm5Lk9Jh==;EndpointSuffix=core.windows.net",
            "q8Zx3Vb7Nm1Lk5Jh9Gf2Ds6Ap0Oi4Uy8Tr2Ew6Qz1Xc5Vb9Nm3Lk7Jh1Gf5Ds9Ap3Oi7Uy1Tr5Ew9Qz3Xc7Vb1Nm5Lk9Jh==",
        ),
        (
            "https://acmeprod.blob.core.windows.net/exports/q3.csv?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-12-31T00:00:00Z&spr=https&sig=Xq8%2BLk2Wm9Rt4Vy7Zn3PdHs5Jf1Gc6Ba0Ne8Qi4Uo2%3D",
            "Xq8%2BLk2Wm9Rt4Vy7Zn3PdHs5Jf1Gc6Ba0Ne8Qi4Uo2%3D",
        ),
        (
            r#"{"type": "service_account", "project_id": "acme-prod", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n", "client_email": "etl@acme-prod.iam.gserviceaccount.com"}"#,
            "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
        ),
        (
            r#"{"auths": {"registry.acme.io": {"auth": "ZGVwbG95OlJ4OC1WbjItUXQ1"}}}"#,
            "ZGVwbG95OlJ4OC1WbjItUXQ1",
        ),
    ] {
        let masked = scanner
            .mask(value.as_bytes())
            .map(|m| String::from_utf8(m).unwrap());
        let masked = masked.unwrap_or_else(|| panic!("nothing masked in {value:?}"));
        assert!(!masked.contains(secret), "{secret:?} left in {masked:?}");
    }
}
