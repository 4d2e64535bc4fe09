//! The harness is real: CRDs, samples and CEL rules on the real API server,
//! kubectl explain and get, TokenReview, RBAC, PostgreSQL and S3.

use std::{process::Output, sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use aws_sdk_s3::primitives::ByteStream;
use gatehouse_e2e::{
    TestEnv, User,
    kube::AUDIENCE,
    postgres::{APP_USER, DATABASE, Postgres},
    s3::BUCKET,
};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::{admission::Namespace, repo};

/// Runs kubectl as `user` and returns its output whatever the exit status.
async fn kubectl(env: &TestEnv, user: User, args: &[&str]) -> anyhow::Result<Output> {
    Ok(env.kube.kubectl(user).args(args).output().await?)
}

/// Runs kubectl as `user`; fails unless it exits 0. Returns stdout.
async fn kubectl_ok(env: &TestEnv, user: User, args: &[&str]) -> anyhow::Result<String> {
    Ok(env.kube.kubectl_run(user, args, None).await?)
}

/// Creates a namespace for one test.
async fn namespace(env: &TestEnv, name: &str) -> anyhow::Result<String> {
    kubectl_ok(env, User::Admin, &["create", "namespace", name]).await?;
    Ok(name.to_owned())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub async fn crds_install_server_side_and_reapply_changes_nothing(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let names = [
        "connections.gatehouse.dev",
        "policies.gatehouse.dev",
        "approvalrequests.gatehouse.dev",
    ];
    let version = |crd: &str| {
        let env = env.clone();
        let crd = crd.to_owned();
        async move {
            kubectl_ok(
                &env,
                User::Admin,
                &["get", "crd", &crd, "-o", "jsonpath={.metadata.resourceVersion}"],
            )
            .await
        }
    };
    let mut before = Vec::new();
    for crd in names {
        // Installed by the suite's setup with `kubectl apply --server-side`.
        let managers = kubectl_ok(
            &env,
            User::Admin,
            &[
                "get",
                "crd",
                crd,
                "--show-managed-fields",
                "-o",
                "jsonpath={.metadata.managedFields[*].operation}",
            ],
        )
        .await?;
        ensure!(
            managers.split_whitespace().any(|op| op == "Apply"),
            "{crd} not applied server-side: {managers}"
        );
        before.push(version(crd).await?);
    }
    let crd_dir = repo().join("config/crd");
    kubectl_ok(
        &env,
        User::Admin,
        &["apply", "--server-side", "-k", crd_dir.to_str().context("path")?],
    )
    .await?;
    for (crd, before) in names.iter().zip(before) {
        let after = version(crd).await?;
        ensure!(
            before == after,
            "re-applying {crd} changed it: resourceVersion {before} -> {after}"
        );
    }
    Ok(())
}

fn sample_approval_request_name() -> anyhow::Result<String> {
    let text = std::fs::read_to_string(repo().join("config/samples/approvalrequest.yaml"))?;
    let value: serde_json::Value = serde_norway::from_str(&text)?;
    Ok(value["metadata"]["name"]
        .as_str()
        .context("sample ApprovalRequest has no name")?
        .to_owned())
}

pub async fn samples_are_accepted_and_listed_with_printer_columns(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let samples = Namespace::new(&env, "samples").await?;
    let ns = samples.name.clone();
    let dir = repo().join("config/samples");
    let kustomization: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml"))?)?;
    let files = kustomization["resources"]
        .as_array()
        .context("config/samples/kustomization.yaml lists no resources")?;
    for file in files {
        let path = dir.join(file.as_str().context("resource")?);
        let mut sample: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(&path)?)?;
        if sample["kind"] != "ApprovalRequest" {
            kubectl_ok(
                &env,
                User::Admin,
                &[
                    "apply",
                    "--server-side",
                    "-n",
                    &ns,
                    "-f",
                    path.to_str().context("path")?,
                ],
            )
            .await?;
            continue;
        }
        // The admission policy lets only the Connection's proxy create a
        // request, and without reviews: as on a cluster, the proxy creates
        // it and each approver adds their review with the README's patch.
        let name = sample["metadata"]["name"].as_str().context("name")?.to_owned();
        let reviews = sample["spec"]
            .as_object_mut()
            .context("spec")?
            .remove("reviews")
            .unwrap_or_default();
        samples.held(&sample).await?;
        for review in reviews.as_array().into_iter().flatten() {
            let user = User::ALL
                .into_iter()
                .find(|u| review["user"] == u.name())
                .with_context(|| format!("no e2e user for the sample review {review}"))?;
            let out = samples.review(user, &name, std::slice::from_ref(review)).await?;
            ensure!(
                out.status.success(),
                "the sample's review by {user} was refused: {}",
                stderr(&out)
            );
        }
    }
    let table = kubectl_ok(&env, User::Admin, &["get", "gatehouse", "-n", &ns]).await?;
    for header in [
        "TYPE",
        "TARGET",
        "DATABASE",
        "ENDPOINT",
        "READY",
        "CONNECTIONS",
        "REQUESTER",
        "RULE",
        "PHASE",
        "EXPIRES",
    ] {
        ensure!(
            table.contains(header),
            "`kubectl get gatehouse` lacks column {header}:\n{table}"
        );
    }
    let ar = sample_approval_request_name()?;
    for name in [
        "connection.gatehouse.dev/orders-db".to_owned(),
        "policy.gatehouse.dev/agents-readonly".to_owned(),
        "policy.gatehouse.dev/writes-need-approval".to_owned(),
        format!("approvalrequest.gatehouse.dev/{ar}"),
    ] {
        ensure!(
            table.contains(&name),
            "`kubectl get gatehouse` lacks {name}:\n{table}"
        );
    }
    let connection_row = table
        .lines()
        .find(|l| l.starts_with("connection.gatehouse.dev/orders-db"))
        .context("row")?;
    ensure!(
        connection_row.contains("postgres") && connection_row.contains("orders.db.svc"),
        "{connection_row}"
    );
    // Short names resolve too.
    let short = kubectl_ok(
        &env,
        User::Admin,
        &["get", "gconn,gpol,gapr", "-n", &ns, "-o", "name"],
    )
    .await?;
    ensure!(short.lines().count() == 4, "short names listed {short}");
    Ok(())
}

/// Reads `# expect: ...` from an invalid manifest.
fn expected_message(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect:"))
        .map(str::trim)
}

pub async fn invalid_manifests_are_rejected_with_their_cel_message(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let ns = namespace(&env, "invalid").await?;
    let dir = repo().join("e2e/tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<Vec<_>, _>>()?;
    files.sort_by_key(|e| e.path());
    ensure!(
        files.len() >= 10,
        "expected at least 10 invalid manifests in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for file in files {
        let path = file.path();
        let text = std::fs::read_to_string(&path)?;
        let expect =
            expected_message(&text).with_context(|| format!("{} has no `# expect:` line", path.display()))?;
        let out = kubectl(
            &env,
            User::Admin,
            &[
                "apply",
                "--server-side",
                "-n",
                &ns,
                "-f",
                path.to_str().context("path")?,
            ],
        )
        .await?;
        let err = stderr(&out);
        if out.status.success() {
            failures.push(format!(
                "{}: accepted, expected rejection with {expect:?}",
                path.display()
            ));
        } else if !err.contains(expect) {
            failures.push(format!(
                "{}: rejected, but without {expect:?}:\n{err}",
                path.display()
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    // None of them left anything behind.
    let left = kubectl_ok(&env, User::Admin, &["get", "gatehouse", "-n", &ns, "-o", "name"]).await?;
    ensure!(left.trim().is_empty(), "rejected manifests created {left}");
    Ok(())
}

pub async fn approval_request_spec_and_reviews_are_immutable(env: Arc<TestEnv>) -> anyhow::Result<()> {
    // The proxy of orders-db creates the request and alice and bob (group dba)
    // review it, as the admission policy requires. The other changes are
    // tried as admin, whom RBAC lets through: the API server checks the CRD's
    // CEL before it asks the admission policy, so the refusals are the CRD's.
    let immutable = Namespace::new(&env, "immutable").await?;
    let ns = immutable.name.clone();
    let manifest: serde_json::Value = serde_norway::from_str(
        "apiVersion: gatehouse.dev/v1alpha1\nkind: ApprovalRequest\nmetadata:\n  name: held-delete\nspec:\n  connection: orders-db\n  connectionUID: 6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10\n  requester: {username: \"system:serviceaccount:agents:planner\"}\n  sessionID: 01JTEST\n  statement: DELETE FROM orders WHERE id = $1\n  statementHash: 5e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab19f86d081\n  fingerprint: 5e2c0ab1\n  parametersHash: 9f86d0815e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab1\n  policy: writes-need-approval\n  rule: writes-need-approval\n  approvers: {groups: [dba], required: 2}\n  expiresAt: \"2030-01-01T00:00:00Z\"\n",
    )?;
    immutable.held(&manifest).await?;
    let patch_as = |user: User, kind: &'static str, body: &'static str| {
        let env = env.clone();
        let ns = ns.clone();
        async move {
            kubectl(
                &env,
                user,
                &[
                    "patch",
                    "-n",
                    &ns,
                    "gapr",
                    "held-delete",
                    "--type",
                    kind,
                    "-p",
                    body,
                ],
            )
            .await
        }
    };
    let patch = |kind: &'static str, body: &'static str| patch_as(User::Admin, kind, body);

    // The README's approval patch applies to a request with no reviews yet.
    let out = patch_as(
        User::Alice,
        "json",
        r#"[{"op":"add","path":"/spec/reviews/-","value":{"user":"alice","groups":["dba"],"decision":"Approved","reason":"ticket 812"}}]"#,
    )
    .await?;
    ensure!(
        out.status.success(),
        "the first review was refused: {}",
        stderr(&out)
    );

    let out = patch("merge", r#"{"spec":{"statement":"DELETE FROM orders"}}"#).await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("spec is immutable except spec.reviews"),
        "{}",
        stderr(&out)
    );
    let out = patch(
        "json",
        r#"[{"op":"replace","path":"/spec/parametersHash","value":"0000000000000000000000000000000000000000000000000000000000000000"}]"#,
    )
    .await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("spec is immutable except spec.reviews"),
        "{}",
        stderr(&out)
    );
    let out = patch(
        "json",
        r#"[{"op":"replace","path":"/spec/reviews/0/decision","value":"Denied"}]"#,
    )
    .await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("existing reviews cannot be changed or removed"),
        "{}",
        stderr(&out)
    );
    let out = patch("json", r#"[{"op":"remove","path":"/spec/reviews/0"}]"#).await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("existing reviews cannot be changed or removed"),
        "{}",
        stderr(&out)
    );
    let out = patch_as(
        User::Bob,
        "json",
        r#"[{"op":"add","path":"/spec/reviews/-","value":{"user":"bob","groups":["dba"],"decision":"Approved"}}]"#,
    )
    .await?;
    ensure!(
        out.status.success(),
        "adding a review was refused: {}",
        stderr(&out)
    );
    let users = kubectl_ok(
        &env,
        User::Admin,
        &[
            "get",
            "-n",
            &ns,
            "gapr",
            "held-delete",
            "-o",
            "jsonpath={.spec.reviews[*].user}",
        ],
    )
    .await?;
    ensure!(users == "alice bob", "reviews are {users:?}");
    Ok(())
}

pub async fn explain_prints_field_docs(env: Arc<TestEnv>) -> anyhow::Result<()> {
    // The API server publishes a new CRD's OpenAPI a moment after it is established.
    let mut last = String::new();
    for _ in 0..60 {
        let out = kubectl(&env, User::Admin, &["explain", "connection.spec.target"]).await?;
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        if out.status.success() && last.contains("DNS name or IP address of the target") {
            for expected in [
                "GROUP:      gatehouse.dev",
                "KIND:       Connection",
                "database",
                "TCP port of the target",
                "tls",
            ] {
                ensure!(last.contains(expected), "explain lacks {expected:?}:\n{last}");
            }
            let action = kubectl_ok(&env, User::Admin, &["explain", "policies.spec.rules.action"]).await?;
            ensure!(action.contains("requireApproval"), "{action}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("kubectl explain connection.spec.target never showed the field docs:\n{last}")
}

async fn review(env: &TestEnv, token: &str, audiences: &[&str]) -> anyhow::Result<TokenReview> {
    let api: Api<TokenReview> = Api::all(env.kube.client(User::Admin).await?);
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
        },
        ..Default::default()
    };
    Ok(api.create(&PostParams::default(), &review).await?)
}

fn authenticated(review: &TokenReview) -> bool {
    review
        .status
        .as_ref()
        .and_then(|s| s.authenticated)
        .unwrap_or(false)
}

pub async fn service_account_token_passes_token_review_and_altered_fails(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = namespace(&env, "agents").await?;
    kubectl_ok(
        &env,
        User::Admin,
        &["create", "serviceaccount", "planner", "-n", &ns],
    )
    .await?;
    let token = kubectl_ok(
        &env,
        User::Admin,
        &["create", "token", "planner", "-n", &ns, "--audience", AUDIENCE],
    )
    .await?;
    let token = token.trim();

    let ok = review(&env, token, &[AUDIENCE]).await?;
    ensure!(authenticated(&ok), "a fresh token was refused: {:?}", ok.status);
    let user = ok
        .status
        .as_ref()
        .and_then(|s| s.user.as_ref())
        .context("no user in review")?;
    ensure!(
        user.username.as_deref() == Some("system:serviceaccount:agents:planner"),
        "{user:?}"
    );
    ensure!(
        user.groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|g| g == "system:serviceaccounts:agents")),
        "{user:?}"
    );

    // One character of the signature changed.
    let (head, signature) = token.rsplit_once('.').context("token is not a JWT")?;
    let mut sig: Vec<char> = signature.chars().collect();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == 'A' { 'B' } else { 'A' };
    let altered = format!("{head}.{}", sig.into_iter().collect::<String>());
    let bad = review(&env, &altered, &[AUDIENCE]).await?;
    ensure!(!authenticated(&bad), "an altered token was accepted");

    // A token for another audience does not pass as a gatehouse token.
    let other = kubectl_ok(&env, User::Admin, &["create", "token", "planner", "-n", &ns]).await?;
    let wrong = review(&env, other.trim(), &[AUDIENCE]).await?;
    ensure!(
        !authenticated(&wrong),
        "a token for the API server's audience passed as a gatehouse token"
    );
    Ok(())
}

pub async fn user_without_rights_is_refused_by_rbac(env: Arc<TestEnv>) -> anyhow::Result<()> {
    for args in [
        &["get", "connections", "-n", "default"][..],
        &["get", "secrets", "-n", "default"][..],
        &["create", "namespace", "nobody-was-here"][..],
    ] {
        let out = kubectl(&env, User::Nobody, args).await?;
        ensure!(!out.status.success(), "nobody may {args:?}");
        let err = stderr(&out);
        ensure!(
            err.contains("Forbidden") && err.contains("User \"nobody\" cannot"),
            "{args:?}: {err}"
        );
    }
    // The same request as admin works: the refusal is RBAC, not a broken server.
    kubectl_ok(&env, User::Admin, &["get", "connections", "-n", "default"]).await?;
    let can = kubectl(
        &env,
        User::Alice,
        &["auth", "can-i", "patch", "approvalrequests.gatehouse.dev"],
    )
    .await?;
    ensure!(
        String::from_utf8_lossy(&can.stdout).trim() == "no",
        "alice has rights before any binding"
    );
    Ok(())
}

pub async fn postgres_answers_with_scram_and_seed_data(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let app = env.postgres.app().await?;
    for (table, rows) in [("orders", 1000i64), ("customers", 100), ("api_credentials", 6)] {
        let count: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        ensure!(count == rows, "{table} has {count} rows, seeded {rows}");
    }
    let me: String = app.query_one("SELECT current_user::text", &[]).await?.get(0);
    ensure!(me == APP_USER, "connected as {me}");
    // The application role may not change the schema.
    let err = app
        .batch_execute("CREATE TABLE sneaky (id int)")
        .await
        .err()
        .context("CREATE TABLE succeeded")?;
    ensure!(
        err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );

    let admin = env.postgres.superuser(DATABASE).await?;
    let methods: Vec<String> = admin
        .query(
            "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type <> 'local'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(methods == ["scram-sha-256"], "host auth methods: {methods:?}");

    let wrong = env
        .postgres
        .config(APP_USER, "not-the-password", DATABASE)
        .connect(tokio_postgres::NoTls)
        .await;
    let err = wrong.err().context("a wrong password was accepted")?;
    ensure!(
        err.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err}"
    );
    Ok(())
}

pub async fn s3_stores_and_returns_objects(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let s3 = env.s3.client();
    let buckets = s3.list_buckets().send().await?;
    ensure!(
        buckets.buckets().iter().any(|b| b.name() == Some(BUCKET)),
        "bucket {BUCKET} missing"
    );

    let key = "e2e/probe.txt";
    s3.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from_static(b"gatehouse"))
        .send()
        .await?;
    let body = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    ensure!(&body[..] == b"gatehouse", "read back {body:?}");

    // Multipart, as recordings of long sessions use it: a 5 MiB part and a small last one.
    let key = "e2e/multipart.bin";
    let parts: [Vec<u8>; 2] = [vec![7u8; 5 * 1024 * 1024], b"tail".to_vec()];
    let upload = s3
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await?;
    let id = upload.upload_id().context("no upload id")?;
    let mut completed = Vec::new();
    for (n, part) in parts.iter().enumerate() {
        let number = i32::try_from(n + 1)?;
        let done = s3
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(id)
            .part_number(number)
            .body(ByteStream::from(part.clone()))
            .send()
            .await?;
        completed.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(done.e_tag().map(str::to_owned))
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await?;
    let body = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    ensure!(
        body.len() == 5 * 1024 * 1024 + 4 && body.ends_with(b"tail"),
        "multipart object is {} bytes",
        body.len()
    );

    // Wrong credentials are refused.
    let err = aws_sdk_s3::Client::from_conf(
        s3.config()
            .to_builder()
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "nobody", "wrong", None, None, "t",
            ))
            .build(),
    )
    .list_buckets()
    .send()
    .await
    .err()
    .context("wrong S3 credentials were accepted")?;
    // S3 says InvalidAccessKeyId; versitygw says which user it did not find.
    let code = err
        .as_service_error()
        .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e))
        .unwrap_or_default();
    ensure!(
        ["InvalidAccessKeyId", "XAdminUserNotFound", "AccessDenied"].contains(&code),
        "not refused by the server: {err:?}"
    );
    Ok(())
}

pub async fn a_port_in_use_names_step_command_and_log(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let dir = env.path().join("port-in-use");
    std::fs::create_dir_all(&dir)?;
    let err = Postgres::start_on(&dir, port)
        .await
        .err()
        .context("PostgreSQL started on a port in use")?;
    let text = err.to_string();
    ensure!(text.contains("step 'start PostgreSQL' failed"), "{text}");
    ensure!(
        text.contains(&format!("port={port}")),
        "the command is not named: {text}"
    );
    ensure!(
        text.contains(&dir.join("postgres.log").display().to_string()),
        "the log is not named: {text}"
    );
    ensure!(
        text.contains("Address already in use") || text.contains("could not bind"),
        "the cause is not shown: {text}"
    );
    // Nothing of that attempt still runs.
    let marker = dir.display().to_string();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        ensure!(!cmdline.contains(&marker), "left behind: {cmdline}");
    }
    Ok(())
}

pub async fn approver_role_lets_the_dba_group_review_and_nothing_more(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = namespace(&env, "rbac").await?;
    let rbac = repo().join("config/rbac");
    kubectl_ok(
        &env,
        User::Admin,
        &["apply", "--server-side", "-k", rbac.to_str().context("path")?],
    )
    .await?;
    kubectl_ok(
        &env,
        User::Admin,
        &[
            "create",
            "rolebinding",
            "dba-approves",
            "--clusterrole=gatehouse-approver",
            "--group=dba",
            "-n",
            &ns,
        ],
    )
    .await?;
    let can = |user: User, verb: &'static str, resource: &'static str| {
        let env = env.clone();
        let ns = ns.clone();
        async move {
            let out = kubectl(&env, user, &["auth", "can-i", verb, resource, "-n", &ns]).await?;
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
        }
    };
    ensure!(
        can(User::Alice, "patch", "approvalrequests.gatehouse.dev").await?,
        "alice cannot review"
    );
    ensure!(
        can(User::Bob, "list", "approvalrequests.gatehouse.dev").await?,
        "bob cannot list requests"
    );
    ensure!(
        !can(User::Alice, "delete", "approvalrequests.gatehouse.dev").await?,
        "alice may delete requests"
    );
    ensure!(
        !can(User::Alice, "patch", "connections.gatehouse.dev").await?,
        "alice may change connections"
    );
    ensure!(
        !can(User::Nobody, "patch", "approvalrequests.gatehouse.dev").await?,
        "nobody may review"
    );
    Ok(())
}
