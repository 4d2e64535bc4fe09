//! `sessions`: the recorded sessions, one line each, oldest first.
//!
//! A session is read from its manifest when it has one; a session without
//! one (still open, or its proxy was killed and has not recovered it) from
//! its first chunk's `connect` event. The listing is not verified: it says
//! what the store holds, `verify` says whether that is what was signed.

use std::{io::Write, time::SystemTime};

use futures::{StreamExt as _, TryStreamExt as _};
use gatehouse_recording::{
    chunk,
    format::{Body, Event, MANIFEST, Manifest},
};

use crate::{
    Result,
    recordings::{Folder, Recordings},
    text, time,
};

/// How many sessions are read at once.
const CONCURRENT_SESSIONS: usize = 16;

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `NAMESPACE/NAME`, or `NAME` in any namespace.
    pub connection: Option<String>,
    /// The caller's username.
    pub user: Option<String>,
    /// Sessions still going at or after this time.
    pub since: Option<SystemTime>,
    /// Sessions that started at or before this time.
    pub until: Option<SystemTime>,
}

/// How a session ended, as far as the store tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The manifest's `end`: the disconnect reason, or `recovered`.
    Closed(String),
    /// No manifest: still open, or not yet recovered.
    Open,
    /// The manifest is there but does not parse.
    Unreadable,
}

/// One session, as listed.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The session's folder.
    pub folder: Folder,
    /// When it started (the manifest, the first event or the session id).
    pub started: Option<SystemTime>,
    /// When it ended (the manifest's last event).
    pub ended: Option<SystemTime>,
    /// The caller, when the manifest or the first event names one.
    pub user: Option<String>,
    /// How it ended.
    pub end: End,
    /// The number of events, from the manifest.
    pub events: Option<u64>,
}

impl Filter {
    /// Whether a session in this folder can match (before reading it).
    pub fn admits_folder(&self, folder: &Folder) -> bool {
        match self.connection.as_deref().map(|c| c.split_once('/')) {
            None => true,
            Some(Some((namespace, name))) => folder.namespace == namespace && folder.connection == name,
            Some(None) => self.connection.as_deref() == Some(folder.connection.as_str()),
        }
    }

    /// Whether a session matches: its folder, its user, and its time span
    /// overlapping `since`..`until` (an open session has not ended). What
    /// the store does not tell is not held against a session, except the
    /// user when one is asked for.
    pub fn admits(&self, summary: &Summary) -> bool {
        let user = match &self.user {
            Some(wanted) => summary.user.as_ref() == Some(wanted),
            None => true,
        };
        let since = match (self.since, summary.ended) {
            (Some(since), Some(ended)) => ended >= since,
            _ => true,
        };
        let until = match (self.until, summary.started) {
            (Some(until), Some(started)) => started <= until,
            _ => true,
        };
        self.admits_folder(&summary.folder) && user && since && until
    }
}

/// The sessions matching `filter`, oldest first.
pub async fn find(recordings: &Recordings, filter: &Filter) -> Result<Vec<Summary>> {
    let folders = recordings.folders().await?;
    let mut found: Vec<Summary> =
        futures::stream::iter(folders.into_iter().filter(|f| filter.admits_folder(f)))
            .map(|folder| summarize(recordings, folder))
            .buffered(CONCURRENT_SESSIONS)
            .try_filter(|summary| std::future::ready(filter.admits(summary)))
            .try_collect()
            .await?;
    found.sort_by(|a, b| (a.started, &a.folder.session).cmp(&(b.started, &b.folder.session)));
    Ok(found)
}

/// Reads what the listing shows of one session.
pub async fn summarize(recordings: &Recordings, folder: Folder) -> Result<Summary> {
    let mut summary = Summary {
        started: time::from_session_id(&folder.session),
        ended: None,
        user: None,
        end: End::Open,
        events: None,
        folder,
    };
    // A manifest removed since the listing leaves the session read as open.
    if summary.folder.has(MANIFEST)
        && let Some(bytes) = recordings.get(&summary.folder, MANIFEST).await?
    {
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(manifest) => {
                summary.started = time::recorded(&manifest.started).or(summary.started);
                summary.ended = time::recorded(&manifest.ended);
                summary.user = Some(manifest.user);
                summary.end = End::Closed(manifest.end);
                summary.events = Some(manifest.events);
                return Ok(summary);
            }
            Err(_) => summary.end = End::Unreadable,
        }
    }
    if let Some((at, user)) = first_connect(recordings, &summary.folder).await? {
        summary.started = time::recorded(&at).or(summary.started);
        summary.user = Some(user);
    }
    Ok(summary)
}

/// The first chunk's `connect` event: when, and who. `None` when there is
/// no first chunk or it does not start with one.
async fn first_connect(recordings: &Recordings, folder: &Folder) -> Result<Option<(String, String)>> {
    let Some(first) = folder.chunks().next() else {
        return Ok(None);
    };
    let Some(bytes) = recordings.get(folder, first).await? else {
        return Ok(None);
    };
    let Ok(lines) = chunk::decode(&bytes) else {
        return Ok(None);
    };
    let event = lines
        .first()
        .and_then(|line| serde_json::from_slice::<Event>(line).ok());
    Ok(match event {
        Some(Event {
            at,
            body: Body::Connect { user, .. },
            ..
        }) => Some((at, user)),
        _ => None,
    })
}

/// Writes the sessions as a table.
pub fn print(summaries: &[Summary], out: &mut dyn Write) -> std::io::Result<()> {
    if summaries.is_empty() {
        return writeln!(out, "No sessions found.");
    }
    let mut rows = vec![
        [
            "SESSION",
            "STARTED",
            "CONNECTION",
            "USER",
            "END",
            "EVENTS",
            "CHUNKS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for s in summaries {
        rows.push(vec![
            text::line(&s.folder.session),
            s.started.map_or_else(|| "?".into(), time::seconds),
            text::line(&format!("{}/{}", s.folder.namespace, s.folder.connection)),
            s.user.as_deref().map_or_else(|| "?".into(), text::line),
            match &s.end {
                End::Closed(reason) => text::line(reason),
                End::Open => "open".into(),
                End::Unreadable => "manifest unreadable".into(),
            },
            s.events.map_or_else(|| "-".into(), |n| n.to_string()),
            s.folder.chunks().count().to_string(),
        ]);
    }
    for line in text::columns(&rows, "  ") {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn summary(namespace: &str, connection: &str, user: &str) -> Summary {
        Summary {
            folder: Folder {
                key: format!("{namespace}/{connection}/2026/11/28/s"),
                namespace: namespace.into(),
                connection: connection.into(),
                session: "s".into(),
                objects: vec![],
            },
            started: Some(at("2026-11-28T17:00:00Z")),
            ended: Some(at("2026-11-28T18:00:00Z")),
            user: Some(user.into()),
            end: End::Closed("client_closed".into()),
            events: Some(3),
        }
    }

    #[test]
    fn connections_match_with_or_without_namespace() {
        let s = summary("shop", "orders-db", "planner");
        let by = |c: &str| Filter {
            connection: Some(c.into()),
            ..Filter::default()
        };
        assert!(by("shop/orders-db").admits(&s));
        assert!(by("orders-db").admits(&s));
        assert!(!by("other/orders-db").admits(&s));
        assert!(!by("shop").admits(&s));
    }

    #[test]
    fn times_select_sessions_that_overlap() {
        let s = summary("shop", "orders-db", "planner");
        let window = |since: Option<&str>, until: Option<&str>| Filter {
            since: since.map(at),
            until: until.map(at),
            ..Filter::default()
        };
        assert!(window(Some("2026-11-28T17:30:00Z"), None).admits(&s));
        assert!(window(Some("2026-11-28T18:00:00Z"), None).admits(&s));
        assert!(!window(Some("2026-11-28T18:00:01Z"), None).admits(&s));
        assert!(window(None, Some("2026-11-28T17:00:00Z")).admits(&s));
        assert!(!window(None, Some("2026-11-28T16:59:59Z")).admits(&s));
        let mut open = s.clone();
        open.ended = None;
        open.end = End::Open;
        assert!(window(Some("2030-01-01T00:00:00Z"), None).admits(&open));
    }

    #[test]
    fn an_unknown_user_matches_no_user_filter() {
        let mut s = summary("shop", "orders-db", "planner");
        let planner = Filter {
            user: Some("planner".into()),
            ..Filter::default()
        };
        assert!(planner.admits(&s));
        s.user = None;
        assert!(!planner.admits(&s));
        assert!(Filter::default().admits(&s));
    }
}
