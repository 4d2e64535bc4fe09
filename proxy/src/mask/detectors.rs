//! The built-in detectors of secret values (and opt-in personal data).
//!
//! Each detector is a small rule: the keywords that must appear in a value
//! before its pattern is worth running (the prefilter), a regular expression,
//! optionally a check of the candidate (Luhn, IBAN mod-97), and examples that
//! must and must not match, which run as tests. The rules are our own, written
//! after the formats their issuers document and the public rule sets
//! (gitleaks, trufflehog, GitHub secret scanning) describe.
//!
//! gitleaks' rules (see [`super::gitleaks`]) join them, one detector a rule.
//!
//! When a pattern has a capture group, only the group is the secret (the
//! password of a connection string, the value of `password=`, or a token
//! without the delimiter byte after it that stands in for a look-ahead, which
//! the `regex` crate does not have); otherwise the whole match is.

use std::sync::LazyLock;

/// How a candidate is checked beyond its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The pattern is enough.
    None,
    /// A payment card number: 13 to 19 digits, the first a card network's
    /// (2 to 6), passing the Luhn checksum.
    Luhn,
    /// An IBAN: country, check digits and BBAN passing ISO 13616 mod-97.
    Iban,
}

/// What finds a detector's secrets.
#[derive(Debug, Clone, Copy)]
pub enum Pattern {
    /// A regular expression (Rust `regex` syntax, matched on bytes). When it
    /// has a capture group, only the group is the secret.
    Regex(&'static str),
    /// Code, for what a regular expression cannot say: the secret's ranges.
    Code(fn(&[u8], &mut Vec<std::ops::Range<usize>>)),
    /// A rule of gitleaks' set, matched as gitleaks matches it.
    Gitleaks(&'static super::gitleaks::Rule),
}

/// One detector.
#[derive(Debug, Clone, Copy)]
pub struct Detector {
    /// The name shown in the mask and in metrics, e.g. `aws-access-key-id`.
    pub name: &'static str,
    /// The name a Policy enables it by (`masking.detectors`); several
    /// detectors share one (`github` covers every GitHub token kind).
    pub group: &'static str,
    /// Only on when named explicitly, never by `all`: personal data, and
    /// a few gitleaks rules (see [`in_all`](super::gitleaks::in_all)).
    /// Where its find overlaps another detector's, the other names it.
    pub opt_in: bool,
    /// Lower-case keywords; the pattern only runs on a value containing one
    /// (ASCII case-insensitively). Empty means the pattern always runs.
    pub keywords: &'static [&'static str],
    /// What finds the secret.
    pub pattern: Pattern,
    /// The check of each candidate.
    pub check: Check,
    /// Values in which the detector must find a secret.
    pub positives: &'static [&'static str],
    /// Look-alike values it must leave alone.
    pub negatives: &'static [&'static str],
}

/// The group of every rule imported from gitleaks.
pub const GITLEAKS: &str = "gitleaks";

/// Every built-in detector: ours, then gitleaks' rules (each named by its
/// rule id, all in the group [`GITLEAKS`]).
pub static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    OURS.iter()
        .copied()
        .chain(super::gitleaks::RULES.iter().map(|rule| Detector {
            name: rule.id,
            group: GITLEAKS,
            opt_in: !super::gitleaks::in_all(rule),
            keywords: rule.keywords,
            pattern: Pattern::Gitleaks(rule),
            check: Check::None,
            positives: rule.positives,
            negatives: rule.negatives,
        }))
        .collect()
});

/// The name of the key/value detector (see `assign.rs`).
pub const ASSIGNMENT: &str = "password-assignment";

/// Our own detectors.
pub const OURS: &[Detector] = &[
    Detector {
        name: "aws-access-key-id",
        group: "aws",
        opt_in: false,
        keywords: &["akia", "asia", "abia", "acca", "a3t"],
        pattern: Pattern::Regex(r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b"),
        check: Check::None,
        positives: &["AKIAIOSFODNN7EXAMPLE", "key=ASIAY34FZKBOKMUTVV7A;"],
        negatives: &["AKIA-not-a-key", "akiaiosfodnn7example", "XAKIAIOSFODNN7EXAMPLEX"],
    },
    Detector {
        name: "aws-secret-access-key",
        group: "aws",
        opt_in: false,
        keywords: &["aws", "secret_access_key", "secretaccesskey"],
        pattern: Pattern::Regex(
            r#"(?i)(?:aws.{0,24}?)?secret.?access.?key["']?\s{0,4}[:=]\s{0,4}["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|$)"#,
        ),
        check: Check::None,
        positives: &[
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            r#"{"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
        ],
        negatives: &[
            "aws_secret_access_key = short",
            "the aws secret access key rotates monthly",
        ],
    },
    Detector {
        name: "github-token",
        group: "github",
        opt_in: false,
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        pattern: Pattern::Regex(r"\bgh[pousr]_[A-Za-z0-9]{36,251}\b"),
        check: Check::None,
        positives: &[
            "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R",
            "token ghs_16C7e42F292c6912E7710c838347Ae178B4a used",
        ],
        negatives: &["ghp_short", "ghx_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R"],
    },
    Detector {
        name: "github-fine-grained-token",
        group: "github",
        opt_in: false,
        keywords: &["github_pat_"],
        pattern: Pattern::Regex(r"\bgithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}\b"),
        check: Check::None,
        positives: &[
            "github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijABCDEFGHI",
        ],
        negatives: &["github_pat_tooshort"],
    },
    Detector {
        name: "gitlab-token",
        group: "gitlab",
        opt_in: false,
        keywords: &[
            "glpat-", "gldt-", "glptt-", "glrt-", "gloas-", "glcbt-", "glft-", "glsoat-",
        ],
        pattern: Pattern::Regex(r"\b(?:glpat|gldt|glptt|glrt|gloas|glcbt|glft|glsoat)-[A-Za-z0-9_\-]{20,}"),
        check: Check::None,
        positives: &[
            "glpat-xFz3Kp9QmT2vLw8RnY4s",
            "CI_JOB_TOKEN=glcbt-64_aBcDeFgHiJkLmNoPqRsTuV",
        ],
        negatives: &["glpat-short", "glpatx-xFz3Kp9QmT2vLw8RnY4s"],
    },
    Detector {
        name: "slack-token",
        group: "slack",
        opt_in: false,
        keywords: &["xox"],
        pattern: Pattern::Regex(r"\bxox[abeoprs]-(?:[0-9]+-)+[A-Za-z0-9\-]{8,}"),
        check: Check::None,
        positives: &[
            "xoxb-2837465019-5746382910-AbCdEfGhIjKlMnOpQrStUvWx",
            "xoxp-1234567890-1234567890-1234567890-0123456789abcdef0123456789abcdef",
        ],
        negatives: &["xoxb-", "xoxo hugs and kisses"],
    },
    Detector {
        name: "slack-webhook",
        group: "slack",
        opt_in: false,
        keywords: &["hooks.slack.com"],
        pattern: Pattern::Regex(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,}",
        ),
        check: Check::None,
        positives: &["https://hooks.slack.com/services/T0A1B2C3D/B0A1B2C3D/AbCdEfGhIjKlMnOpQrStUvWx"],
        negatives: &["https://hooks.slack.com/"],
    },
    Detector {
        name: "stripe-key",
        group: "stripe",
        opt_in: false,
        keywords: &["sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"],
        pattern: Pattern::Regex(
            r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,247}|whsec_[A-Za-z0-9]{32,})\b",
        ),
        check: Check::None,
        positives: &[
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc51Lg",
            "rk_test_51Habc0123456789ABCDEFGHIJ",
        ],
        negatives: &["pk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_short"],
    },
    Detector {
        name: "google-api-key",
        group: "google",
        opt_in: false,
        keywords: &["aiza"],
        pattern: Pattern::Regex(r"\b(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)"),
        check: Check::None,
        positives: &["AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"],
        negatives: &["AIzaShort", "aizasya1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q"],
    },
    Detector {
        name: "openai-key",
        group: "openai",
        opt_in: false,
        keywords: &["t3blbkfj", "sk-proj-", "sk-svcacct-", "sk-admin-"],
        pattern: Pattern::Regex(
            r"\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}|[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,})",
        ),
        check: Check::None,
        positives: &[
            "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34",
            "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",
        ],
        negatives: &["sk-proj-short", "risk-project-plan"],
    },
    Detector {
        name: "anthropic-key",
        group: "anthropic",
        opt_in: false,
        keywords: &["sk-ant-"],
        pattern: Pattern::Regex(r"\bsk-ant-(?:api|admin|oat|ort)[0-9]{2}-[A-Za-z0-9_\-]{32,}"),
        check: Check::None,
        positives: &[
            "sk-ant-api03-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34Yz56-AbCdEfAA",
            "ANTHROPIC_API_KEY=sk-ant-admin01-0123456789abcdefghijABCDEFGHIJ0123456789",
        ],
        negatives: &["sk-ant-api03-short", "task-ant-api03-notakey"],
    },
    Detector {
        name: "npm-token",
        group: "npm",
        opt_in: false,
        keywords: &["npm_"],
        pattern: Pattern::Regex(r"\bnpm_[A-Za-z0-9]{36}\b"),
        check: Check::None,
        positives: &["//registry/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"],
        negatives: &["npm_config_cache", "npm_a1B2c3"],
    },
    Detector {
        name: "jwt",
        group: "jwt",
        opt_in: false,
        keywords: &["eyj"],
        pattern: Pattern::Regex(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
        check: Check::None,
        positives: &[
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ],
        negatives: &["eyJhbGciOiJIUzI1NiJ9", "eyes.on.the.road"],
    },
    Detector {
        name: "private-key",
        group: "privateKey",
        opt_in: false,
        keywords: &["-----begin"],
        // To the END line; when the key is cut short, to the end of the
        // value or to the quote or bracket that closes the string holding
        // it (a key inside a JSON or XML document), which no PEM body has.
        pattern: Pattern::Regex(
            r#"(-----BEGIN[ A-Z0-9]{0,32}PRIVATE KEY(?: BLOCK)?-----(?:[^"'<>{}]*?-----END[ A-Z0-9]{0,32}PRIVATE KEY(?: BLOCK)?-----|[^"'<>{}]*))"#,
        ),
        check: Check::None,
        positives: &[
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA",
        ],
        negatives: &[
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----",
        ],
    },
    Detector {
        name: "connection-string-password",
        group: "connectionString",
        opt_in: false,
        keywords: &["://"],
        // The user may be empty and the password may hold raw `@` and `:`:
        // it runs to the last `@` before the host. It stops at `/ ? #`,
        // which a URL would read as the path, and at blanks and quotes.
        pattern: Pattern::Regex(
            r#"\b[A-Za-z][A-Za-z0-9+.\-]{1,30}://[^\s/?#@'":]*:([^\s/?#'"]+)@[A-Za-z0-9._~%\-\[\]]+(?:[:/?#\s'",;)]|$)"#,
        ),
        check: Check::None,
        positives: &[
            "postgres://app:s3cr3t-Pa55@db.internal:5432/orders",
            "DATABASE_URL='mongodb+srv://admin:hunter2hunter2@cluster0.example.net/'",
            "redis://:Rq8-only-pw@cache:6379/0",
            "mysql://root:p@ss:w0rd@db/app",
        ],
        negatives: &[
            "https://example.com/path?q=1",
            "postgres://app@db.internal/orders",
            "http://host:8080/path?by=ada@example.com",
            "postgres://app:${DB_PASSWORD}@db/orders",
            "postgres://app:****@db/orders",
        ],
    },
    Detector {
        name: "oracle-connect-password",
        group: "connectionString",
        opt_in: false,
        keywords: &["@"],
        // `user/password@//host:port/service`, `user/password@host:port:sid`
        // (JDBC thin), `user/password@(DESCRIPTION=...)`.
        pattern: Pattern::Regex(
            r#"(?i)\b[A-Za-z][\w$#]{0,29}/([^\s/@'"]{1,128})@(?://|\(description|[A-Za-z0-9.\-]+:[0-9]{2,5}[:/])"#,
        ),
        check: Check::None,
        positives: &[
            "sqlplus scott/t1ger-Pw@//db.example.com:1521/ORCL",
            "jdbc:oracle:thin:app/Zk9_pw@db:1521:ORCL",
            "app/Zk9_pw@(DESCRIPTION=(ADDRESS=(HOST=db)))",
        ],
        negatives: &["npm i @scope/pkg@1.2.3", "see docs/intro@v2 and a/b@c"],
    },
    Detector {
        name: ASSIGNMENT,
        group: "genericAssignment",
        opt_in: false,
        keywords: super::assign::KEYWORDS,
        pattern: Pattern::Code(super::assign::find),
        check: Check::None,
        positives: &[
            "password=Tr0ub4dor&3",
            r#"{"client_secret": "9f8e7d6c5b4a"}"#,
            "token: abc123def456",
            "redis.conf: requirepass x; secret:Zz9-long-value",
            "DB_PASS=correct horse battery",
            "<password>Sp4ce d Out</password>",
        ],
        negatives: &[
            "password reset requested",
            "token count: 42",
            "keyboard=qwerty layout",
            "password: incorrect",
            "password: ********",
        ],
    },
    Detector {
        name: "kubernetes-secret",
        group: "kubernetes",
        opt_in: false,
        keywords: super::kube::KEYWORDS,
        pattern: Pattern::Code(super::kube::find),
        check: Check::None,
        positives: &[
            "kind: Secret\ndata:\n  password: c3VwZXJzZWNyZXQ=\n  api-token: dG9rZW4tMTIz\n",
            r#"{"apiVersion":"v1","kind":"Secret","stringData":{"DB_PASS":"Tr0ub4dor&3"}}"#,
        ],
        negatives: &[
            "kind: ConfigMap\ndata:\n  color: blue\n",
            "kind: Secret\nmetadata:\n  name: db-credentials\n",
        ],
    },
    Detector {
        name: "payment-card",
        group: "card",
        opt_in: true,
        keywords: &[],
        pattern: Pattern::Regex(r"\b(?:[0-9][ \-]?){12,18}[0-9]\b"),
        check: Check::Luhn,
        positives: &[
            "4111 1111 1111 1111",
            "card 5555-5555-5555-4444 on file",
            "378282246310005",
        ],
        negatives: &[
            "4111 1111 1111 1112",
            "2026-11-28 14:39:21",
            "1234567890123",
            "1733450335000",
            "1180486393826549769",
        ],
    },
    Detector {
        name: "email",
        group: "email",
        opt_in: true,
        keywords: &["@"],
        pattern: Pattern::Regex(
            r"\b[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b",
        ),
        check: Check::None,
        positives: &["ada@example.com", "Contact: grace.hopper+navy@mail.example.org."],
        negatives: &["@handle", "user@localhost"],
    },
    Detector {
        name: "iban",
        group: "iban",
        opt_in: true,
        keywords: &[],
        pattern: Pattern::Regex(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        check: Check::Iban,
        positives: &["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
        negatives: &["DE89 3704 0044 0532 0130 01", "AB12 CDEF GHIJ"],
    },
];

/// Whether `candidate` passes `check`.
pub fn passes(check: Check, candidate: &[u8]) -> bool {
    match check {
        Check::None => true,
        Check::Luhn => luhn(candidate),
        Check::Iban => iban(candidate),
    }
}

fn luhn(candidate: &[u8]) -> bool {
    let digits: Vec<u32> = candidate
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    // The card networks' numbers start with 2 to 6 (Mastercard 2 and 5,
    // Amex and Diners 3, Visa 4, Discover and UnionPay 6); counts and ids
    // that pass Luhn by chance (1 in 10) mostly start with 1 or 9:
    // millisecond timestamps, snowflake ids.
    if !(13..=19).contains(&digits.len()) || !(2..=6).contains(&digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let double = d * 2;
                if double > 9 { double - 9 } else { double }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban(candidate: &[u8]) -> bool {
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    // Move the first four characters to the end, letters become 10..35,
    // and the number must leave 1 modulo 97.
    let (head, tail) = compact.split_at(4);
    let mut remainder = 0u32;
    for &b in tail.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}
