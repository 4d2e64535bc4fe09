use super::*;
use crate::{
    mask::{Scanner, rows::ColumnRule},
    pg::messages::{
        CommandComplete, CopyData, CopyInResponse, DataRow, FieldDescription, Format, Parse, Query,
        ReadyForQuery, TransactionStatus,
    },
    policy::Statement,
};

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
const GITHUB: &str = "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R";

fn masker(
    rules: &[(&str, crate::api::policy::MaskStrategy)],
    mode: FailureMode,
    limit: usize,
) -> Arc<Masker> {
    let rules = rules
        .iter()
        .map(|(name, strategy)| ColumnRule {
            name: regex::Regex::new(name).unwrap(),
            strategy: *strategy,
            keep_last: 0,
        })
        .collect();
    Arc::new(Masker::new(
        Scanner::new(&["all"]).unwrap(),
        rules,
        b"k".repeat(16),
        limit,
        mode,
    ))
}

fn session(masker: Arc<Masker>) -> ResultMasking {
    let mut s = ResultMasking::new();
    s.set_masker(Some(masker));
    s
}

fn field(name: &str, type_oid: u32, format: Format) -> FieldDescription {
    FieldDescription {
        name: name.into(),
        table_oid: 0,
        column_id: 0,
        type_oid,
        type_size: -1,
        type_modifier: -1,
        format,
    }
}

fn description(fields: Vec<FieldDescription>) -> Frame {
    RowDescription { fields }.to_frame().unwrap()
}

fn row(cells: &[Option<&[u8]>]) -> Frame {
    DataRow::from_cells(cells.iter().copied())
        .unwrap()
        .to_frame()
        .unwrap()
}

fn ready() -> Frame {
    ReadyForQuery::new(TransactionStatus::Idle).to_frame().unwrap()
}

fn complete() -> Frame {
    CommandComplete::new("SELECT 1").to_frame().unwrap()
}

fn empty(tag: u8) -> Frame {
    Frame::new(tag, &[]).unwrap()
}

fn query(sql: &str) -> Frame {
    Query::new(sql.to_owned()).to_frame().unwrap()
}

fn parse() -> Frame {
    Parse {
        statement: String::new(),
        sql: "SELECT $1".into(),
        param_types: Vec::new(),
    }
    .to_frame()
    .unwrap()
}

fn bind(portal: &str, statement: &str) -> Frame {
    Bind {
        portal: portal.into(),
        statement: statement.into(),
        param_formats: Vec::new(),
        params: Vec::new(),
        result_formats: Vec::new(),
    }
    .to_frame()
    .unwrap()
}

fn execute(portal: &str) -> Frame {
    Execute {
        portal: portal.into(),
        max_rows: 0,
    }
    .to_frame()
    .unwrap()
}

fn describe(target: Target, name: &str) -> Frame {
    Describe {
        target,
        name: name.into(),
    }
    .to_frame()
    .unwrap()
}

fn sync() -> Frame {
    empty(fe::SYNC)
}

/// Feeds server frames; what the client got, as frames.
fn answer(s: &mut ResultMasking, frames: Vec<Frame>) -> Vec<Frame> {
    let metrics = Metrics::new();
    frames
        .into_iter()
        .filter_map(|f| s.on_server(f, &metrics).unwrap().to_client)
        .collect()
}

fn cells(frame: &Frame) -> Vec<Option<String>> {
    DataRow::decode(frame)
        .unwrap()
        .cells()
        .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect()
}

fn copy_classification(format: CopyFormat) -> Classification {
    Classification {
        statements: vec![Statement {
            copy_out: Some(format),
            ..Default::default()
        }],
    }
}

#[test]
fn a_simple_query_is_planned_by_its_row_description() {
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    assert!(s.on_client(&query("SELECT"), None).unwrap().is_none());
    let clean = row(&[Some(b"1"), Some(b"shipped")]);
    let got = answer(
        &mut s,
        vec![
            description(vec![
                field("id", 23, Format::Text),
                field("note", 25, Format::Text),
            ]),
            clean.clone(),
            row(&[Some(b"2"), Some(format!("key {AWS}").as_bytes())]),
            complete(),
            ready(),
        ],
    );
    assert_eq!(got.len(), 5);
    assert_eq!(got[1].raw(), clean.raw(), "a clean row goes on as it came");
    assert_eq!(
        cells(&got[2]),
        [Some("2".into()), Some("key [masked:aws-access-key-id]".into())]
    );
}

#[test]
fn an_undescribed_execute_gets_the_proxys_describe_and_its_answer_is_kept() {
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    assert!(s.on_client(&parse(), None).unwrap().is_none());
    assert!(s.on_client(&bind("", ""), None).unwrap().is_none());
    let injected = s.on_client(&execute(""), None).unwrap().unwrap();
    assert_eq!(Describe::decode(&injected).unwrap().target, Target::Portal);
    assert!(s.on_client(&sync(), None).unwrap().is_none());
    let got = answer(
        &mut s,
        vec![
            empty(be::PARSE_COMPLETE),
            empty(be::BIND_COMPLETE),
            // The answer to the proxy's Describe: binary text column.
            description(vec![field("t", 25, Format::Binary)]),
            row(&[Some(GITHUB.as_bytes())]),
            complete(),
            ready(),
        ],
    );
    let tags: Vec<u8> = got.iter().map(Frame::tag).collect();
    assert_eq!(
        tags,
        [
            be::PARSE_COMPLETE,
            be::BIND_COMPLETE,
            be::DATA_ROW,
            be::COMMAND_COMPLETE,
            be::READY_FOR_QUERY
        ]
    );
    assert_eq!(cells(&got[2]), [Some("[masked:github-token]".into())]);
}

#[test]
fn the_clients_own_describe_plans_its_execute_and_is_forwarded() {
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    s.on_client(&describe(Target::Statement, "s"), None).unwrap();
    s.on_client(&bind("p", "s"), None).unwrap();
    s.on_client(&describe(Target::Portal, "p"), None).unwrap();
    assert!(
        s.on_client(&execute("p"), None).unwrap().is_none(),
        "no Describe of our own"
    );
    s.on_client(&sync(), None).unwrap();
    let got = answer(
        &mut s,
        vec![
            empty(be::PARAMETER_DESCRIPTION),
            description(vec![field("t", 25, Format::Text)]),
            empty(be::BIND_COMPLETE),
            description(vec![field("t", 25, Format::Text)]),
            row(&[Some(AWS.as_bytes())]),
            complete(),
            ready(),
        ],
    );
    assert_eq!(got.len(), 7, "every answer reaches the client");
    assert_eq!(cells(&got[4]), [Some("[masked:aws-access-key-id]".into())]);
}

#[test]
fn an_error_drops_what_its_segment_owed() {
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    // A failing pipeline: the server skips the Describe the proxy added.
    s.on_client(&bind("", "missing"), None).unwrap();
    assert!(s.on_client(&execute(""), None).unwrap().is_some());
    s.on_client(&sync(), None).unwrap();
    // Then a good one.
    s.on_client(&bind("", "s"), None).unwrap();
    assert!(s.on_client(&execute(""), None).unwrap().is_some());
    s.on_client(&sync(), None).unwrap();
    let error = ErrorResponse::error("26000", "prepared statement \"missing\" does not exist")
        .to_frame()
        .unwrap();
    let got = answer(
        &mut s,
        vec![
            error,
            ready(),
            empty(be::BIND_COMPLETE),
            description(vec![field("t", 25, Format::Text)]),
            row(&[Some(AWS.as_bytes())]),
            complete(),
            ready(),
        ],
    );
    let tags: Vec<u8> = got.iter().map(Frame::tag).collect();
    assert_eq!(
        tags,
        [
            be::ERROR_RESPONSE,
            be::READY_FOR_QUERY,
            be::BIND_COMPLETE,
            be::DATA_ROW,
            be::COMMAND_COMPLETE,
            be::READY_FOR_QUERY
        ]
    );
    assert_eq!(cells(&got[3]), [Some("[masked:aws-access-key-id]".into())]);
}

#[test]
fn strict_refuses_the_result_and_withholds_the_rest_of_the_segment() {
    let mut s = session(masker(&[], FailureMode::Strict, 8));
    s.on_client(&query("SELECT"), None).unwrap();
    let got = answer(
        &mut s,
        vec![
            description(vec![field("note", 25, Format::Text)]),
            row(&[Some(b"short")]),
            row(&[Some(b"much too long")]),
            row(&[Some(b"short")]),
            complete(),
            ready(),
        ],
    );
    let tags: Vec<u8> = got.iter().map(Frame::tag).collect();
    assert_eq!(
        tags,
        [
            be::ROW_DESCRIPTION,
            be::DATA_ROW,
            be::ERROR_RESPONSE,
            be::READY_FOR_QUERY
        ]
    );
    let error = ErrorResponse::decode(&got[2]).unwrap();
    assert_eq!(error.fields.code().as_deref(), Some("54000"));
    let message = error.fields.message().unwrap().into_owned();
    assert!(
        message.contains("13 bytes in column 1 is larger than the masking scan limit of 8 bytes"),
        "{message}"
    );
    assert!(error.fields.detail().unwrap().contains("ran on the server"));
    // The next query is served normally.
    s.on_client(&query("SELECT"), None).unwrap();
    let got = answer(
        &mut s,
        vec![
            description(vec![field("note", 25, Format::Text)]),
            row(&[Some(b"fine")]),
            complete(),
            ready(),
        ],
    );
    assert_eq!(got.len(), 4);
}

#[test]
fn best_effort_replaces_what_it_cannot_scan() {
    let mut s = session(masker(&[], FailureMode::BestEffort, 8));
    s.on_client(&query("SELECT"), None).unwrap();
    let got = answer(
        &mut s,
        vec![
            description(vec![
                field("note", 25, Format::Text),
                field("doc", 114, Format::Text),
            ]),
            row(&[Some(b"much too long"), Some(br#"{"also": "too long"}"#)]),
            complete(),
            ready(),
        ],
    );
    assert_eq!(
        cells(&got[1]),
        [Some(UNSCANNED.into()), Some(format!("\"{UNSCANNED}\""))]
    );
}

#[test]
fn malformed_rows_are_refused_in_either_mode() {
    for mode in [FailureMode::Strict, FailureMode::BestEffort] {
        let mut s = session(masker(&[], mode, 1 << 20));
        s.on_client(&query("SELECT"), None).unwrap();
        let truncated = Frame::new(be::DATA_ROW, &[0, 1, 0, 0, 0, 9, b'a']).unwrap();
        let got = answer(
            &mut s,
            vec![
                description(vec![field("note", 25, Format::Text)]),
                row(&[Some(b"a"), Some(AWS.as_bytes())]),
                truncated,
                complete(),
                ready(),
            ],
        );
        let tags: Vec<u8> = got.iter().map(Frame::tag).collect();
        assert_eq!(
            tags,
            [be::ROW_DESCRIPTION, be::ERROR_RESPONSE, be::READY_FOR_QUERY],
            "{mode:?}"
        );
        let error = ErrorResponse::decode(&got[1]).unwrap();
        assert!(
            error
                .fields
                .message()
                .unwrap()
                .contains("2 columns where its description has 1")
        );
    }
}

#[test]
fn a_row_without_a_description_is_refused() {
    let mut s = session(masker(&[], FailureMode::BestEffort, 1 << 20));
    s.on_client(&query("SELECT"), None).unwrap();
    let got = answer(&mut s, vec![row(&[Some(AWS.as_bytes())]), ready()]);
    assert_eq!(got[0].tag(), be::ERROR_RESPONSE);
    assert_eq!(got.len(), 2);
}

#[test]
fn errors_notices_and_notifications_are_masked() {
    use crate::api::policy::MaskStrategy;
    let mut s = session(masker(
        &[("^api_key$", MaskStrategy::Redact)],
        FailureMode::Strict,
        1 << 20,
    ));
    s.on_client(&query("INSERT"), None).unwrap();
    let error = ErrorResponse::error(
        "23505",
        "duplicate key value violates unique constraint \"keys_pkey\"",
    )
    .with_detail("Key (api_key)=(hunter2-not-detected) already exists.")
    .to_frame()
    .unwrap();
    let notice = NoticeResponse::notice(format!("rotated {GITHUB}"))
        .to_frame()
        .unwrap();
    let notification = NotificationResponse {
        process_id: 7,
        channel: "keys".into(),
        payload: format!("new key {AWS}"),
    }
    .to_frame()
    .unwrap();
    let got = answer(&mut s, vec![notice, notification, error, ready()]);
    let notice = NoticeResponse::decode(&got[0]).unwrap();
    assert_eq!(notice.fields.message().unwrap(), "rotated [masked:github-token]");
    let notification = NotificationResponse::decode(&got[1]).unwrap();
    assert_eq!(notification.payload, "new key [masked:aws-access-key-id]");
    let error = ErrorResponse::decode(&got[2]).unwrap();
    assert_eq!(
        error.fields.detail().unwrap(),
        "Key (api_key)=([masked]) already exists."
    );
    assert_eq!(error.fields.code().as_deref(), Some("23505"));
    s.on_client(&query("INSERT"), None).unwrap();
    let error = ErrorResponse::error(
        "23502",
        "null value in column \"owner\" violates not-null constraint",
    )
    .with_detail("Failing row contains (1, hunter2-not-detected, null).")
    .to_frame()
    .unwrap();
    let got = answer(&mut s, vec![error, ready()]);
    assert_eq!(
        ErrorResponse::decode(&got[0]).unwrap().fields.detail().unwrap(),
        "Failing row contains ([masked])."
    );
    // A detector finds a secret in any detail.
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    s.on_client(&query("INSERT"), None).unwrap();
    let error = ErrorResponse::error("23505", "duplicate key")
        .with_detail(format!("Key (note)=({AWS}) already exists."))
        .to_frame()
        .unwrap();
    let got = answer(&mut s, vec![error, ready()]);
    assert_eq!(
        ErrorResponse::decode(&got[0]).unwrap().fields.detail().unwrap(),
        "Key (note)=([masked:aws-access-key-id]) already exists."
    );
}

#[test]
fn copy_output_is_masked_field_by_field() {
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    let csv = CopyFormat::Csv {
        delimiter: b',',
        quote: b'"',
        escape: b'"',
    };
    s.on_client(&query("COPY"), Some(&copy_classification(csv)))
        .unwrap();
    let out = CopyOutResponse {
        format: Format::Text,
        column_formats: vec![Format::Text; 2],
    }
    .to_frame()
    .unwrap();
    let data = |line: &str| {
        CopyData {
            data: Bytes::copy_from_slice(line.as_bytes()),
        }
        .to_frame()
        .unwrap()
    };
    let got = answer(
        &mut s,
        vec![
            out,
            data(&format!("1,\"{AWS}, \"\"quoted\"\"\"\n")),
            data("2,plain\n"),
            empty(be::COPY_DONE),
            complete(),
            ready(),
        ],
    );
    assert_eq!(got.len(), 6);
    assert_eq!(
        CopyData::decode(&got[1]).unwrap().data,
        &b"1,\"[masked:aws-access-key-id], \"\"quoted\"\"\"\n"[..]
    );
    assert_eq!(CopyData::decode(&got[2]).unwrap().data, &b"2,plain\n"[..]);
}

#[test]
fn copy_rows_keep_their_structure() {
    let m = masker(&[], FailureMode::Strict, 1 << 20);
    let text = CopyFormat::Text { delimiter: b'\t' };
    let mask = |format, row: &str| {
        mask_copy_row(&m, format, row.as_bytes(), &mut MaskStats::default())
            .unwrap()
            .map(|r| String::from_utf8(r).unwrap())
    };
    // A private key without its END line matches to the end of its value:
    // only to the end of its field.
    let row = "1\t-----BEGIN PRIVATE KEY-----\\nMIIEvQ\tnext field\n";
    assert_eq!(mask(text, row).unwrap(), "1\t[masked:private-key]\tnext field\n");
    // An escaped delimiter stays inside its field.
    assert_eq!(
        mask(text, &format!("a\\\t{AWS}\tb\n")).unwrap(),
        "a\\\t[masked:aws-access-key-id]\tb\n"
    );
    // A secret ending just before an escaped backslash keeps the escape whole.
    let row = "password=hunter2hunter2\\\\\tb\n";
    let masked = mask(text, row).unwrap();
    assert!(masked.ends_with("\tb\n"), "{masked}");
    assert!(!masked.contains("hunter2"), "{masked}");
    assert_eq!(masked.matches('\t').count(), 1, "{masked}");
    assert_eq!(mask(text, "1\t\\N\tclean\n"), None);
    // bytea, hex-encoded (its backslash doubled in the text format).
    let blob = format!("1\t\\\\x{}\n", hex::encode(format!("key {AWS}")));
    let masked = mask(text, &blob).unwrap();
    assert_eq!(
        masked,
        format!("1\t\\\\x{}\n", hex::encode("key [masked:aws-access-key-id]"))
    );
    // CSV with a quoted newline.
    let csv = CopyFormat::Csv {
        delimiter: b',',
        quote: b'"',
        escape: b'"',
    };
    assert_eq!(
        mask(csv, &format!("\"line one\n{GITHUB}\",x\n")).unwrap(),
        "\"line one\n[masked:github-token]\",x\n"
    );
}

#[test]
fn copy_that_cannot_be_masked_is_refused_and_a_pending_copy_in_is_ended() {
    use crate::api::policy::MaskStrategy;
    let mut s = session(masker(
        &[("secret", MaskStrategy::Redact)],
        FailureMode::Strict,
        1 << 20,
    ));
    let text = CopyFormat::Text { delimiter: b'\t' };
    s.on_client(&query("COPY; COPY"), Some(&copy_classification(text)))
        .unwrap();
    let out = CopyOutResponse {
        format: Format::Text,
        column_formats: vec![Format::Text],
    }
    .to_frame()
    .unwrap();
    let copy_in = CopyInResponse {
        format: Format::Text,
        column_formats: vec![Format::Text],
    }
    .to_frame()
    .unwrap();
    let metrics = Metrics::new();
    let refused = s.on_server(out, &metrics).unwrap();
    let error = ErrorResponse::decode(&refused.to_client.unwrap()).unwrap();
    assert_eq!(error.fields.code().as_deref(), Some("0A000"));
    assert!(error.fields.message().unwrap().contains("use SELECT"));
    let data = CopyData {
        data: Bytes::from_static(b"s3cr3t\n"),
    }
    .to_frame()
    .unwrap();
    assert!(s.on_server(data, &metrics).unwrap().to_client.is_none());
    let reply = s.on_server(copy_in, &metrics).unwrap();
    assert!(reply.to_client.is_none());
    assert_eq!(reply.to_server.unwrap().tag(), fe::COPY_FAIL);
    assert!(s.on_server(ready(), &metrics).unwrap().to_client.is_some());
}

#[test]
fn prepared_copy_statements_are_followed_to_their_execute() {
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    let text = CopyFormat::Text { delimiter: b'\t' };
    let prepare = Parse {
        statement: "c".into(),
        sql: "COPY t TO STDOUT".into(),
        param_types: Vec::new(),
    }
    .to_frame()
    .unwrap();
    s.on_client(&prepare, Some(&copy_classification(text))).unwrap();
    s.on_client(&bind("", "c"), None).unwrap();
    s.on_client(&execute(""), None).unwrap();
    s.on_client(&sync(), None).unwrap();
    let out = CopyOutResponse {
        format: Format::Text,
        column_formats: vec![Format::Text],
    }
    .to_frame()
    .unwrap();
    let data = CopyData {
        data: Bytes::from(format!("{AWS}\n")),
    }
    .to_frame()
    .unwrap();
    let got = answer(
        &mut s,
        vec![
            empty(be::PARSE_COMPLETE),
            empty(be::BIND_COMPLETE),
            empty(be::NO_DATA),
            out,
            data,
            empty(be::COPY_DONE),
            complete(),
            ready(),
        ],
    );
    let tags: Vec<u8> = got.iter().map(Frame::tag).collect();
    assert_eq!(
        tags,
        [
            be::PARSE_COMPLETE,
            be::BIND_COMPLETE,
            be::COPY_OUT_RESPONSE,
            be::COPY_DATA,
            be::COPY_DONE,
            be::COMMAND_COMPLETE,
            be::READY_FOR_QUERY
        ]
    );
    assert_eq!(
        CopyData::decode(&got[3]).unwrap().data,
        &b"[masked:aws-access-key-id]\n"[..]
    );
}

#[test]
fn without_a_masker_everything_goes_through_untouched() {
    let mut s = ResultMasking::new();
    assert!(s.on_client(&execute(""), None).unwrap().is_none());
    s.on_client(&sync(), None).unwrap();
    let secret = row(&[Some(AWS.as_bytes())]);
    let got = answer(&mut s, vec![secret.clone(), complete(), ready()]);
    assert_eq!(got[0].raw(), secret.raw());
}

#[test]
fn counts_reach_the_metrics_at_ready_for_query() {
    let metrics = Metrics::new();
    let mut s = session(masker(&[], FailureMode::Strict, 1 << 20));
    s.on_client(&query("SELECT"), None).unwrap();
    for frame in [
        description(vec![field("note", 25, Format::Text)]),
        row(&[Some(AWS.as_bytes())]),
        row(&[Some(b"clean")]),
        complete(),
        ready(),
    ] {
        s.on_server(frame, &metrics).unwrap();
    }
    let text = metrics.render();
    assert!(text.contains("gatehouse_mask_values_scanned_total 2\n"), "{text}");
    assert!(text.contains("gatehouse_mask_bytes_scanned_total 25\n"), "{text}");
    assert!(
        text.contains("gatehouse_mask_detector_values_total{detector=\"aws-access-key-id\"} 1\n"),
        "{text}"
    );
}
