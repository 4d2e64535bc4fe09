//! `replay`: a session's timeline as a person reads it — who connected,
//! each statement with its decision, what came back, and how it ended.
//!
//! With a public key the session is verified first and an unverified
//! timeline is refused unless asked for; without one the timeline is read
//! as stored, damaged parts shown as such, under a warning.

use std::{collections::BTreeMap, io::Write, path::Path};

use gatehouse_recording::{
    chunk,
    format::{Body, ErrorInfo, Event, MANIFEST, Manifest, read_verifying_key},
};

use crate::{
    Error, Result,
    recordings::{Folder, Recordings, is_chunk},
    text, time, verify,
};

/// Recorded values wider than this are cut in the rows table.
const MAX_CELL: usize = 40;

/// What a replay shows.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// A warning for the top: the timeline is not verified.
    pub warning: Option<String>,
    /// What verification found: events, chunks, signing key.
    pub verified: Option<String>,
    /// The manifest, when there is one that parses.
    pub manifest: Option<Manifest>,
    /// The events and what could not be read, in order.
    pub entries: Vec<Entry>,
}

/// One item of a timeline.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A recorded event.
    Event(Event),
    /// An event of a kind this version does not know (written by a newer
    /// gateway).
    Unknown {
        /// Its time.
        at: String,
        /// Its kind.
        kind: String,
    },
    /// What could not be read: a chunk, a line.
    Problem(String),
}

/// Replays a session (its id or folder key) on `out`.
pub async fn run(
    recordings: &Recordings,
    session: &str,
    public_key: Option<&Path>,
    unverified: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let key = public_key.map(read_verifying_key).transpose()?;
    let folder = recordings.find(session).await?;
    let objects = recordings.objects(&folder).await?;
    let timeline = match key {
        None => Timeline {
            warning: Some(
                "WARNING: this timeline is NOT verified (no --public-key): it is shown as stored, \
                 and whoever can write to the store could have changed it."
                    .into(),
            ),
            ..read(&objects)
        },
        Some(key) => match verify::check(recordings.prefix(), &folder, &objects, &key) {
            Ok(verified) => Timeline {
                warning: None,
                verified: Some(format!(
                    "yes: {} events in {} chunks, signed by key {}",
                    verified.events.len(),
                    verified.manifest.chunks.len(),
                    verified.manifest.key_id
                )),
                entries: verified.events.into_iter().map(Entry::Event).collect(),
                manifest: Some(verified.manifest),
            },
            Err(e) if unverified => Timeline {
                warning: Some(format!(
                    "WARNING: {}\nWARNING: shown anyway (--unverified): this may not be what the gateway recorded.",
                    text::block(&e.to_string())
                )),
                ..read(&objects)
            },
            Err(e) => return Err(Error::Refused(Box::new(e))),
        },
    };
    print(&folder, &timeline, out)?;
    Ok(())
}

/// Reads a session's objects as they are, without verifying: the chunks in
/// order of their names, each line an entry, whatever does not read a
/// [`Entry::Problem`].
pub fn read(objects: &BTreeMap<String, Vec<u8>>) -> Timeline {
    let mut entries = Vec::new();
    let manifest = match objects
        .get(MANIFEST)
        .map(|m| serde_json::from_slice::<Manifest>(m))
    {
        Some(Ok(manifest)) => Some(manifest),
        Some(Err(e)) => {
            entries.push(Entry::Problem(format!("{MANIFEST} does not parse: {e}")));
            None
        }
        None => None,
    };
    for (name, bytes) in objects.iter().filter(|(name, _)| is_chunk(name)) {
        let lines = match chunk::decode(bytes) {
            Ok(lines) => lines,
            Err(why) => {
                entries.push(Entry::Problem(format!("{name}: {why}")));
                continue;
            }
        };
        for (i, line) in lines.iter().enumerate() {
            entries.push(
                entry(line).unwrap_or_else(|why| {
                    Entry::Problem(format!("{name} line {}: not an event: {why}", i + 1))
                }),
            );
        }
    }
    Timeline {
        warning: None,
        verified: None,
        manifest,
        entries,
    }
}

/// Kinds of event this version reads; others are shown as unknown.
const KINDS: [&str; 7] = [
    "connect",
    "statement",
    "result",
    "rows",
    "notice",
    "gap",
    "disconnect",
];

fn entry(line: &[u8]) -> Result<Entry, String> {
    let error = match serde_json::from_slice::<Event>(line) {
        Ok(event) => return Ok(Entry::Event(event)),
        Err(e) => e.to_string(),
    };
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|_| error.clone())?;
    match (value["kind"].as_str(), value["at"].as_str()) {
        (Some(kind), Some(at)) if !KINDS.contains(&kind) => Ok(Entry::Unknown {
            at: at.to_owned(),
            kind: kind.to_owned(),
        }),
        _ => Err(error),
    }
}

/// Writes a timeline.
pub fn print(folder: &Folder, timeline: &Timeline, out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(warning) = &timeline.warning {
        writeln!(out, "{warning}\n")?;
    }
    let manifest = timeline.manifest.as_ref();
    let connect = timeline.entries.iter().find_map(|entry| match entry {
        Entry::Event(Event {
            body:
                Body::Connect {
                    user,
                    groups,
                    client,
                    tls,
                    ..
                },
            ..
        }) => Some((user, groups, client, *tls)),
        _ => None,
    });
    let mut header = vec![
        ["session", &folder.session].map(text::line).to_vec(),
        ["folder", &folder.key].map(text::line).to_vec(),
        vec![
            "connection".into(),
            text::line(&format!("{}/{}", folder.namespace, folder.connection)),
        ],
    ];
    match (connect, manifest) {
        (Some((user, groups, client, tls)), _) => {
            header.push(vec!["user".into(), who(user, groups)]);
            let tls = if tls { "over TLS" } else { "without TLS" };
            header.push(vec!["client".into(), format!("{} {tls}", text::line(client))]);
        }
        (None, Some(manifest)) => header.push(vec!["user".into(), text::line(&manifest.user)]),
        (None, None) => header.push(vec!["user".into(), "? (no connect event)".into()]),
    }
    match manifest {
        Some(m) => {
            header.push(vec!["started".into(), text::line(&m.started)]);
            header.push(vec![
                "ended".into(),
                format!("{} ({})", text::line(&m.ended), text::line(&m.end)),
            ]);
        }
        None => {
            let first = timeline.entries.iter().find_map(|entry| match entry {
                Entry::Event(event) => Some(event.at.as_str()),
                _ => None,
            });
            header.push(vec![
                "started".into(),
                first.map_or_else(|| "?".into(), text::line),
            ]);
            header.push(vec![
                "ended".into(),
                "open: no manifest (the session is still open, or its proxy has not recovered it)".into(),
            ]);
        }
    }
    if let Some(verified) = &timeline.verified {
        header.push(vec!["verified".into(), verified.clone()]);
    }
    for line in text::columns(&header, "  ") {
        writeln!(out, "{line}")?;
    }
    writeln!(out)?;
    for entry in &timeline.entries {
        match entry {
            Entry::Event(event) => print_event(event, out)?,
            Entry::Unknown { at, kind } => print_lines(
                out,
                at,
                &text::line(kind),
                &["(a kind of event this version does not know)".into()],
            )?,
            Entry::Problem(problem) => writeln!(out, "!! {}", text::line(problem))?,
        }
    }
    Ok(())
}

fn print_event(event: &Event, out: &mut dyn Write) -> std::io::Result<()> {
    let mut lines: Vec<String> = Vec::new();
    let label = match &event.body {
        Body::Connect {
            connection,
            user,
            groups,
            client,
            tls,
            ..
        } => {
            lines.push(format!(
                "{} from {} {} to {}",
                who(user, groups),
                text::line(client),
                if *tls { "over TLS" } else { "without TLS" },
                text::line(&format!("{}/{}", connection.namespace, connection.name)),
            ));
            "connect"
        }
        Body::Statement {
            id,
            text: statement,
            decision,
            reason,
        } => {
            let verdict = match decision.as_str() {
                "allow" => "allowed".to_owned(),
                "deny" => "DENIED".to_owned(),
                "requireApproval" if reason.is_some() => "REFUSED (approval required)".to_owned(),
                "requireApproval" => "HELD for approval".to_owned(),
                other => text::line(other),
            };
            lines.extend(paragraph(
                &format!("{} {verdict}: ", statement_ref(*id)),
                statement,
            ));
            if let Some(reason) = reason {
                lines.push(format!("reason: {}", text::line(reason)));
            }
            "statement"
        }
        Body::Approval {
            statement,
            request,
            outcome,
            message,
        } => {
            let request = request
                .as_deref()
                .map_or_else(|| "no request".to_owned(), text::line);
            let what = if outcome == "approved" {
                "runs".to_owned()
            } else {
                "REFUSED".to_owned()
            };
            lines.push(format!(
                "{} approval {}: {} ({request}), {what}",
                statement_ref(*statement),
                text::line(outcome),
                message.as_deref().map_or_else(String::new, text::line),
            ));
            "approval"
        }
        Body::Result {
            statement,
            tag,
            rows,
            error,
            duration_us,
        } => {
            let (statement, took) = (statement_ref(*statement), time::micros(*duration_us));
            match (error, tag) {
                (Some(ErrorInfo { sqlstate, message }), _) => lines.extend(paragraph(
                    &format!("{statement} ERROR {} ({took}): ", text::line(sqlstate)),
                    message,
                )),
                (None, Some(tag)) => {
                    lines.push(format!("{statement} {}: {rows} rows in {took}", text::line(tag)));
                }
                (None, None) => lines.push(format!("{statement}: {rows} rows in {took}")),
            }
            "result"
        }
        Body::Rows {
            statement,
            columns,
            rows,
            truncated,
        } => {
            lines.push(format!(
                "{} recorded {} rows:",
                statement_ref(*statement),
                rows.len()
            ));
            lines.extend(table(columns, rows));
            if *truncated {
                lines.push("... (truncated)".into());
            }
            "rows"
        }
        Body::Notice {
            severity,
            sqlstate,
            message,
        } => {
            lines.extend(paragraph(
                &format!("{} {}: ", text::line(severity), text::line(sqlstate)),
                message,
            ));
            "notice"
        }
        Body::Gap { dropped } => {
            lines.push(format!(
                "{dropped} events were NOT recorded (recording.mode bestEffort with its spool full)"
            ));
            "GAP"
        }
        Body::Disconnect { reason } => {
            lines.push(text::line(reason));
            "disconnect"
        }
    };
    print_lines(out, &event.at, label, &lines)
}

/// `at  label  first line`, later lines under the first.
fn print_lines(out: &mut dyn Write, at: &str, label: &str, lines: &[String]) -> std::io::Result<()> {
    let at = text::line(at);
    let mut lines = lines.iter();
    writeln!(
        out,
        "{at}  {label:<10}  {}",
        lines.next().map_or("", String::as_str)
    )?;
    let indent = at.chars().count() + 2 + label.chars().count().max(10) + 2;
    for line in lines {
        writeln!(out, "{:indent$}{line}", "")?;
    }
    Ok(())
}

/// `head` and the first line of `text`, its later lines indented below.
fn paragraph(head: &str, text: &str) -> Vec<String> {
    let mut lines = text::lines(text).into_iter();
    let first = format!("{head}{}", lines.next().unwrap_or_default());
    std::iter::once(first)
        .chain(lines.map(|line| format!("    {line}")))
        .collect()
}

fn statement_ref(id: u64) -> String {
    if id == 0 { "#?".into() } else { format!("#{id}") }
}

fn who(user: &str, groups: &[String]) -> String {
    if groups.is_empty() {
        text::line(user)
    } else {
        let groups: Vec<String> = groups.iter().map(|g| text::line(g)).collect();
        format!("{} (groups: {})", text::line(user), groups.join(", "))
    }
}

/// Recorded rows as an aligned table, psql-like.
fn table(columns: &[String], rows: &[Vec<Option<String>>]) -> Vec<String> {
    let cell = |value: &str| text::cut(&text::line(value), MAX_CELL);
    let mut cells = vec![columns.iter().map(|c| cell(c)).collect::<Vec<_>>()];
    cells.extend(rows.iter().map(|row| {
        row.iter()
            .map(|v| v.as_deref().map_or_else(|| "NULL".into(), cell))
            .collect()
    }));
    let rule = text::widths(&cells)
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("-+-");
    let mut lines = text::columns(&cells, " | ");
    lines.insert(1, rule);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: Body) -> Event {
        Event {
            seq: 1,
            at: "2026-11-28T17:53:01.000000Z".into(),
            prev: String::new(),
            body,
        }
    }

    fn printed(body: Body) -> String {
        let mut out = Vec::new();
        print_event(&event(body), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rows_are_a_table_with_truncation_marked() {
        let out = printed(Body::Rows {
            statement: 2,
            columns: vec!["id".into(), "email".into()],
            rows: vec![
                vec![Some("1".into()), Some("a@example.com".into())],
                vec![Some("22".into()), None],
            ],
            truncated: true,
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "2026-11-28T17:53:01.000000Z  rows        #2 recorded 2 rows:"
        );
        let table: Vec<&str> = lines[1..].iter().map(|l| l.trim_start()).collect();
        assert_eq!(
            table,
            [
                "id | email",
                "---+--------------",
                "1  | a@example.com",
                "22 | NULL",
                "... (truncated)"
            ]
        );
    }

    #[test]
    fn refusals_and_errors_stand_out() {
        let out = printed(Body::Statement {
            id: 3,
            text: "DROP TABLE customers".into(),
            decision: "deny".into(),
            reason: Some("Policy shop/readonly denies DDL".into()),
        });
        assert!(out.contains("#3 DENIED: DROP TABLE customers"), "{out}");
        assert!(out.contains("reason: Policy shop/readonly denies DDL"), "{out}");
        let out = printed(Body::Result {
            statement: 4,
            tag: None,
            rows: 0,
            error: Some(ErrorInfo {
                sqlstate: "42P01".into(),
                message: "relation \"nope\" does not exist\nLINE 1".into(),
            }),
            duration_us: 450,
        });
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].ends_with("#4 ERROR 42P01 (450 us): relation \"nope\" does not exist"),
            "{out}"
        );
        assert_eq!(lines[1].trim(), "LINE 1");
    }

    #[test]
    fn unknown_kinds_and_garbage_are_entries_not_failures() {
        let objects = BTreeMap::from([
            (
                "chunk-000001.jsonl.gz".to_owned(),
                chunk::encode([
                    br#"{"seq":0,"at":"t","prev":"p","kind":"hologram","x":1}"#.as_slice(),
                    b"not json",
                ])
                .unwrap(),
            ),
            ("chunk-000002.jsonl.gz".to_owned(), b"garbage".to_vec()),
            (MANIFEST.to_owned(), b"{".to_vec()),
        ]);
        let timeline = read(&objects);
        assert!(timeline.manifest.is_none());
        let shown: Vec<String> = timeline
            .entries
            .iter()
            .map(|e| match e {
                Entry::Event(_) => "event".into(),
                Entry::Unknown { kind, .. } => format!("unknown {kind}"),
                Entry::Problem(p) => p.clone(),
            })
            .collect();
        assert!(shown[0].starts_with("manifest.json does not parse"), "{shown:?}");
        assert_eq!(shown[1], "unknown hologram");
        assert!(
            shown[2].starts_with("chunk-000001.jsonl.gz line 2: not an event"),
            "{shown:?}"
        );
        assert!(
            shown[3].starts_with("chunk-000002.jsonl.gz: not a gzip chunk"),
            "{shown:?}"
        );
    }
}
