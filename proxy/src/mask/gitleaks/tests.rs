use super::*;

/// What gitleaks' keyword check decides: the rule runs on `text`.
fn runs(rule: &Rule, text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    rule.keywords.is_empty() || rule.keywords.iter().any(|k| lower.contains(k))
}

fn finds(compiled: &Compiled, text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    if runs(compiled.rule(), text) {
        compiled.find(text.as_bytes(), &mut out);
    }
    out
}

#[test]
fn every_rule_compiles_and_has_a_unique_id() {
    let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), RULES.len());
    assert!(RULES.len() > 200, "{} rules", RULES.len());
    for rule in RULES {
        Compiled::new(rule).unwrap();
    }
    let left_out: Vec<&str> = RULES.iter().filter(|r| !in_all(r)).map(|r| r.id).collect();
    assert_eq!(
        left_out,
        [
            "freemius-secret-key",
            "hashicorp-tf-password",
            "kubernetes-secret-yaml",
            "nuget-config-password",
            "generic-api-key"
        ]
    );
}

/// gitleaks' own check of its rules (`utils.Validate`): every positive
/// yields a finding of its rule, no negative does.
#[test]
fn every_rule_passes_its_own_examples() {
    let mut failures = Vec::new();
    let mut positives = 0;
    for rule in RULES {
        let compiled = Compiled::new(rule).unwrap();
        for example in rule.positives {
            positives += 1;
            if finds(&compiled, example).is_empty() {
                failures.push(format!("{}: missed {example:?}", rule.id));
            }
        }
        // gitleaks skips a line that carries `gitleaks:allow`; the proxy
        // does not (anyone who writes a row could write it), so those
        // negatives are not negatives here.
        for example in rule.negatives.iter().filter(|e| !e.contains("gitleaks:allow")) {
            let found = finds(&compiled, example);
            if !found.is_empty() {
                failures.push(format!("{}: found {found:?} in {example:?}", rule.id));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(positives > 1000, "{positives} positive examples");
}

#[test]
fn the_secret_is_the_rules_group_and_not_the_whole_match() {
    let rule = RULES.iter().find(|r| r.id == "heroku-api-key").unwrap();
    let compiled = Compiled::new(rule).unwrap();
    let text = "HEROKU_API_KEY = 7a3c9e1f-2b4d-4e6f-8a0c-1d3e5f7a9b2c";
    let found = finds(&compiled, text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(&text[found[0].clone()], "7a3c9e1f-2b4d-4e6f-8a0c-1d3e5f7a9b2c");
}

/// Where gitleaks' secret is a piece of the token, the whole token is
/// masked; where it is a key's value, only the value.
#[test]
fn a_piece_of_a_token_masks_the_whole_match() {
    let mask = |id: &str, text: &str| {
        let rule = RULES.iter().find(|r| r.id == id).unwrap();
        let found = finds(&Compiled::new(rule).unwrap(), text);
        assert_eq!(found.len(), 1, "{id}: {found:?} in {text:?}");
        text[found[0].clone()].to_owned()
    };
    let token = "ZXlKaGJHY2lPaUpJVXpJMU5pSXNJblI1Y0NJNklrcFhWQ0o5LmV5SnpkV0lpT2lJeE1qTTBOVFkzT0Rrd0lpd2libUZ0WlNJNklrcHZhRzRnUkc5bElpd2lZV1J0YVc0aU9uUnlkV1Y5LlRKVkE5NU9yTTdFMmNCYWIzMFJNSHJIRGNFZnhqb1lad2VGT05GaDdIZ1E";
    assert_eq!(mask("jwt-base64", &format!("token={token} ")), token);
    let hook = "https://acme.webhook.office.com/webhookb2/1a2b3c4d-1a2b-1a2b-1a2b-1a2b3c4d5e6f@1a2b3c4d-1a2b-1a2b-1a2b-1a2b3c4d5e6f/IncomingWebhook/0123456789abcdef0123456789abcdef/1a2b3c4d-1a2b-1a2b-1a2b-1a2b3c4d5e6f";
    assert_eq!(mask("microsoft-teams-webhook", &format!("url: {hook}")), hook);
    assert_eq!(
        mask(
            "lob-api-key",
            "lob_key = 'live_0123456789abcdef0123456789abcdef012'"
        ),
        "live_0123456789abcdef0123456789abcdef012"
    );
    assert_eq!(
        mask(
            "lob-api-key",
            r#"{"lob_key": "live_0123456789abcdef0123456789abcdef012\n"}"#
        ),
        "live_0123456789abcdef0123456789abcdef012"
    );
}

#[test]
fn low_entropy_and_allowlisted_values_are_not_secrets() {
    // The global allowlist lets template variables through.
    let rule = RULES.iter().find(|r| r.id == "heroku-api-key").unwrap();
    let compiled = Compiled::new(rule).unwrap();
    assert!(finds(&compiled, "heroku_api_key = ${HEROKU_KEY}").is_empty());
    // 1Password secret keys need entropy above 3.8.
    let rule = RULES.iter().find(|r| r.id == "1password-secret-key").unwrap();
    let compiled = Compiled::new(rule).unwrap();
    assert!(finds(&compiled, "A3-AAAAAA-AAAAAAAAAAA-AAAAA-AAAAA-AAAAA").is_empty());
    assert_eq!(
        finds(&compiled, "A3-K7QX2M-9RTV4WZB8CN-H3JF6-Y5PL1-D0GS8").len(),
        1
    );
}

#[test]
fn shannon_entropy_is_gos() {
    assert_eq!(shannon(b""), 0.0);
    assert_eq!(shannon(b"aaaa"), 0.0);
    assert!((shannon(b"ab") - 1.0).abs() < 1e-12);
    assert!((shannon(b"abcd") - 2.0).abs() < 1e-12);
    // An invalid byte is one U+FFFD; a two-byte character counts two bytes
    // in the length: p(é) = 1/3, p(a) = 1/3.
    assert!((shannon(b"\xffa") - 1.0).abs() < 1e-12);
    let e = shannon("éa".as_bytes());
    assert!(
        (e - 2.0 * (-(1.0f64 / 3.0) * (1.0f64 / 3.0).log2())).abs() < 1e-12,
        "{e}"
    );
}

#[test]
fn the_line_is_gitleaks_line() {
    let text = b"one\ntwo key\nthree";
    assert_eq!(&text[line(text, 8, 11)], b"\ntwo key");
    // On the last line, to the end of the value.
    assert_eq!(&text[line(text, 13, 15)], b"one\ntwo key\nthree");
    assert_eq!(&b"abc"[line(b"abc", 0, 2)], b"abc");
}

fn masked_by_all(value: &str) -> String {
    let scanner = crate::mask::Scanner::new(&["all"]).unwrap();
    scanner
        .mask(value.as_bytes())
        .map_or_else(|| value.to_owned(), |m| String::from_utf8(m).unwrap())
}

/// A token followed by punctuation, as prose, URLs and markup write it.
#[test]
fn a_token_before_punctuation_is_found() {
    for token in [
        "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",
        "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",
        "pul-7f3c9a2e1b4d6f8a0c2e4b6d8f0a1c3e5b7d9f2a",
    ] {
        for value in [
            format!("The token is {token}."),
            format!("tokens: {token}, and more"),
            format!("rotate({token})"),
            format!("<v>{token}</v>"),
            format!("https://example.com/cb?t={token}&v=2"),
        ] {
            let masked = masked_by_all(&value);
            assert!(!masked.contains(token), "{masked}");
        }
    }
}

/// Matches that share a delimiter, and a greedy pattern that steps over
/// an earlier secret on its line: each secret is found.
#[test]
fn secrets_a_left_to_right_search_steps_over_are_found() {
    let (a, b) = (
        "QtT8Q~9C-_Ij~RouHVpD2Tuf3oHWGh.DQ3kcjbAn",
        "Zx81Q~k3L_mN7pQ.rS2tU4vW6xY8zA0bC1dE2fGh",
    );
    for sep in ["\n", " ", ","] {
        let masked = masked_by_all(&format!("{a}{sep}{b}"));
        assert!(!masked.contains(a) && !masked.contains(b), "{sep:?}: {masked}");
    }
    let masked = masked_by_all(
        "curl -u admin:Xq7pL2vR9t https://a.example/x && curl -u ci:Mz4kW8nB1s https://b.example/y",
    );
    assert!(
        !masked.contains("Xq7pL2vR9t") && !masked.contains("Mz4kW8nB1s"),
        "{masked}"
    );
}

/// A value built so that every match steps over all the secrets before
/// it: the searches stay bounded, and every secret is still masked.
#[test]
fn a_value_built_to_make_searches_quadratic_is_bounded_and_masked() {
    let rule = RULES.iter().find(|r| r.id == "curl-auth-user").unwrap();
    let compiled = Compiled::new(rule).unwrap();
    let text: String = (0..5_000)
        .map(|i| format!("curl -u u{i}:Pw{i:05}x "))
        .collect::<String>()
        + "https://h/";
    let started = std::time::Instant::now();
    let mut found = Vec::new();
    compiled.find(text.as_bytes(), &mut found);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let mut masked = vec![false; text.len()];
    for range in found {
        masked[range].iter_mut().for_each(|m| *m = true);
    }
    for i in [0, 1, 2_500, 4_999] {
        let secret = format!("Pw{i:05}x");
        let at = text.find(&secret).unwrap();
        assert!(masked[at..at + secret.len()].iter().all(|m| *m), "{secret}");
    }
}

/// One `curl` with many `-u` on one line, 256 KB: each match reaches the
/// last secret, so searching again before each one would be quadratic
/// (minutes here).
#[test]
fn one_curl_with_many_users_costs_bounded_time() {
    let scanner = crate::mask::Scanner::new(&["all"]).unwrap();
    let mut value = String::from("curl https://x.example");
    let mut i = 0;
    while value.len() < 1 << 18 {
        value.push_str(&format!(" -u u{i}:Xq7pL2vR{i}t"));
        i += 1;
    }
    let started = std::time::Instant::now();
    let masked = String::from_utf8(scanner.mask(value.as_bytes()).unwrap()).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for i in [0, 1, i / 2, i - 1] {
        assert!(!masked.contains(&format!(":Xq7pL2vR{i}t ")), "u{i}");
    }
}

/// The wider ending is only for tokens that name themselves by a prefix.
#[test]
fn only_self_naming_tokens_end_before_punctuation() {
    let named = |id: &str| {
        let rule = RULES.iter().find(|r| r.id == id).unwrap();
        names_itself(rule.regex, rule.secret_group)
    };
    for id in [
        "notion-api-token",
        "huggingface-organization-api-token",
        "shopify-access-token",
        "github-pat",
    ] {
        assert!(named(id), "{id}");
    }
    // A key's value, a bare hash beside a prefixed form, bare digits.
    for id in [
        "dropbox-api-token",
        "sourcegraph-access-token",
        "asana-client-id",
        "discord-client-id",
    ] {
        assert!(!named(id), "{id}");
    }
    for token in [
        "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",
        "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",
    ] {
        for value in [
            format!("Is it {token}?"),
            format!("Revoke {token}!"),
            format!("key {token}: revoked"),
            format!("He said \"the token is {token}.\" then left"),
            format!("(the token is {token}.)"),
            format!("<p>token {token}.</p>"),
            format!("https://x.example/api/{token}/status"),
            format!("https://x.example/cb?t={token}#frag"),
            format!("**{token}**"),
            format!("the token is {token}..."),
        ] {
            let masked = masked_by_all(&value);
            assert!(!masked.contains(token), "{value:?} -> {masked:?}");
        }
    }
    for value in [
        "See Dropbox: troubleshooting.",
        "Fixed upstream in [sourcegraph#123](https://github.com/sourcegraph/sourcegraph/commit/3f786850e387550fdab836ed7e6dc881de23001b).",
        "Bumped sourcegraph to 3f786850e387550fdab836ed7e6dc881de23001b, see changelog",
        "Asana task: 1201234567890123.",
        "discord,112233445566778899,active",
    ] {
        assert_eq!(masked_by_all(value), value);
    }
}
