//! Session parameters that decide how the server reads a statement's text.
//!
//! The policy parses statements as PostgreSQL does with the defaults
//! `standard_conforming_strings = on` and an ASCII-safe client encoding. If
//! the session ever left those, the server could read a string literal
//! differently from the proxy (a backslash-escaped quote, or a quote byte
//! inside a multi-byte character of SJIS, BIG5, GBK, UHC, GB18030 or JOHAB),
//! and a statement the policy judged harmless could be another one on the
//! server. So:
//!
//! - the classifier refuses `SET`s that would leave them (policy/classify.rs);
//! - a client may not ask for a client-only encoding in its startup packet;
//! - every ParameterStatus the server reports, at startup and later, is
//!   checked, and a session whose server reports an unsafe value is closed.
//!   That last check covers what no statement shows: a database or role
//!   default, or a function that calls `set_config` inside.
//!
//! Protocol versions: the proxy relays protocol 3.0. A client asking for a
//! newer 3.x minor version, or sending `_pq_.` protocol options, is answered
//! with NegotiateProtocolVersion, as PostgreSQL itself answers.

use crate::pg::{StartupMessage, messages::NegotiateProtocolVersion, startup::ProtocolVersion};

/// The client-only encodings: multi-byte encodings whose second byte may be
/// an ASCII quote or backslash. PostgreSQL refuses them as server encodings
/// for that reason; the proxy refuses them as client encodings.
/// Names as `clean` leaves them, with PostgreSQL's aliases.
const UNSAFE_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

/// An encoding name as PostgreSQL compares them: lower case, letters and digits only.
fn clean(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Why a parameter value is unsafe, as a message for the client.
pub fn check(name: &str, value: &str) -> Result<(), String> {
    if name.eq_ignore_ascii_case("standard_conforming_strings") && !value.eq_ignore_ascii_case("on") {
        return Err(format!(
            "standard_conforming_strings is {value} in this session; Gatehouse only relays sessions \
             where it is on (check the database's and role's defaults)"
        ));
    }
    if name.eq_ignore_ascii_case("client_encoding") && UNSAFE_ENCODINGS.contains(&clean(value).as_str()) {
        return Err(format!(
            "client_encoding {value} is not supported through Gatehouse: use UTF8 (in this encoding \
             the database could read a statement differently from the policy)"
        ));
    }
    Ok(())
}

/// Why a parameter value the server reports breaks a read-only session (see
/// `upstream::connect`), as a message for the client. PostgreSQL reports
/// `default_transaction_read_only` (since version 14), so a change no
/// statement showed (a function calling `set_config`) is seen when the
/// statement that made it ends.
pub fn check_read_only(name: &str, value: &str) -> Result<(), String> {
    if name.eq_ignore_ascii_case("default_transaction_read_only") && !value.eq_ignore_ascii_case("on") {
        return Err(format!(
            "default_transaction_read_only is {value} in this session, which Gatehouse keeps read-only \
             because no Policy lets you write; something the last statement ran turned it off, so the \
             session is closed (a new one starts read-only)"
        ));
    }
    Ok(())
}

/// Checks the parameters of a client's startup packet.
pub fn check_startup(startup: &StartupMessage) -> Result<(), String> {
    startup
        .params
        .iter()
        .try_for_each(|(name, value)| check(name, value))
}

/// The NegotiateProtocolVersion answer a client needs before authentication,
/// if it asked for more than protocol 3.0.
pub fn negotiation(startup: &StartupMessage) -> Option<NegotiateProtocolVersion> {
    let options: Vec<String> = startup
        .params
        .iter()
        .filter(|(name, _)| name.starts_with("_pq_."))
        .map(|(name, _)| name.clone())
        .collect();
    (startup.version != ProtocolVersion::V3_0 || !options.is_empty()).then(|| NegotiateProtocolVersion {
        newest_minor: u32::from(ProtocolVersion::V3_0.minor),
        unrecognized_options: options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_values_pass() {
        assert!(check("standard_conforming_strings", "on").is_ok());
        assert!(check("standard_conforming_strings", "off").is_err());
        assert!(check("client_encoding", "UTF8").is_ok());
        assert!(check("client_encoding", "SQL_ASCII").is_ok());
        assert!(check("client_encoding", "LATIN1").is_ok());
        for unsafe_name in [
            "SJIS",
            "Shift_JIS",
            "big5",
            "GBK",
            "WIN936",
            "gb-18030",
            "JOHAB",
            "UHC",
        ] {
            let err = check("client_encoding", unsafe_name).unwrap_err();
            assert!(err.contains("use UTF8"), "{err}");
        }
        assert!(check("application_name", "SJIS").is_ok());
    }

    #[test]
    fn a_read_only_session_must_stay_read_only() {
        assert!(check_read_only("default_transaction_read_only", "on").is_ok());
        assert!(check_read_only("application_name", "off").is_ok());
        for value in ["off", "OFF", "false", ""] {
            let err = check_read_only("default_transaction_read_only", value).unwrap_err();
            assert!(err.contains("no Policy lets you write"), "{err}");
        }
        assert!(check_read_only("Default_Transaction_Read_Only", "off").is_err());
    }

    #[test]
    fn startup_parameters_are_checked() {
        let ok = StartupMessage::new([("user", "a"), ("client_encoding", "UTF8")]);
        assert!(check_startup(&ok).is_ok());
        let bad = StartupMessage::new([("user", "a"), ("client_encoding", "BIG5")]);
        assert!(check_startup(&bad).is_err());
    }

    #[test]
    fn newer_versions_and_protocol_options_are_negotiated_down() {
        let plain = StartupMessage::new([("user", "a")]);
        assert_eq!(negotiation(&plain), None);

        let mut newer = StartupMessage::new([("user", "a"), ("_pq_.test_option", "1")]);
        newer.version = ProtocolVersion::V3_2;
        let answer = negotiation(&newer).unwrap();
        assert_eq!(answer.newest_minor, 0);
        assert_eq!(answer.unrecognized_options, ["_pq_.test_option"]);

        let options_only = StartupMessage::new([("user", "a"), ("_pq_.x", "1")]);
        assert!(negotiation(&options_only).is_some());
    }
}
