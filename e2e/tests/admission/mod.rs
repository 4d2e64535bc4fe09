//! Who may create and review an ApprovalRequest is decided by the API server
//! itself: the ValidatingAdmissionPolicy of `config/admission`, installed by
//! the suite's setup, against the real kube-apiserver. Requests are created by
//! a proxy's ServiceAccount through a token the API server issued; approvers
//! review with the README's `kubectl patch`, with RBAC (the approver role)
//! letting them patch, so every refusal here is the policy's.

use std::{path::PathBuf, process::Output, sync::Arc};

use anyhow::{Context as _, ensure};
use gatehouse_e2e::{TestEnv, User};
use serde_json::{Value, json};

use super::repo;

/// How the API server names the policy in a refusal.
const POLICY: &str = "ValidatingAdmissionPolicy 'gatehouse-approvalrequests'";

/// The Connection the tests' requests are held for.
const CONNECTION: &str = "orders-db";

/// A requester that is no person and no approver: an agent's ServiceAccount.
const AGENT: &str = "system:serviceaccount:agents:planner";

/// One test's namespace: approvers in group `dba` hold the approver role, and
/// `proxy` is a kubeconfig of the proxy of [`CONNECTION`].
pub struct Namespace {
    env: Arc<TestEnv>,
    /// The namespace's name.
    pub name: String,
    /// Kubeconfig of ServiceAccount `gatehouse-orders-db`, which may create
    /// ApprovalRequests here.
    pub proxy: PathBuf,
    /// The admission policy stays in force while the namespace is in use.
    _admission: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// Runs kubectl with `command` and returns its output whatever the exit status.
async fn output(command: &mut tokio::process::Command) -> anyhow::Result<Output> {
    Ok(command.output().await?)
}

/// Fails unless `out` exited 0; returns stdout.
fn ok(out: &Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn kubectl_ok(env: &TestEnv, user: User, args: &[&str]) -> anyhow::Result<String> {
    Ok(env.kube.kubectl_run(user, args, None).await?)
}

/// Fails unless the API server let `out`'s request through.
fn allowed(out: &Output, what: &str) -> anyhow::Result<()> {
    ok(out, what).map(drop)
}

/// Fails unless the policy refused `out`'s request with `message`.
fn refused(out: &Output, what: &str, message: &str) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{what} was allowed");
    ensure!(
        stderr.contains(POLICY) && stderr.contains(message),
        "{what} was refused, but not by the policy with {message:?}:\n{stderr}"
    );
    Ok(())
}

/// Applies `config/rbac` (the `gatehouse-approver` ClusterRole). Other tests
/// apply it at the same time; server-side apply may then lose a race to
/// create it, so a failure is retried.
pub(crate) async fn install_roles(env: &TestEnv) -> anyhow::Result<()> {
    let rbac = repo().join("config/rbac");
    let args = ["apply", "--server-side", "-k", rbac.to_str().context("path")?];
    let mut last = String::new();
    for _ in 0..5 {
        let out = output(env.kube.kubectl(User::Admin).args(args)).await?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!("kubectl apply -k config/rbac failed: {last}")
}

impl Namespace {
    /// Creates namespace `name` with the approver role bound to group `dba`
    /// and the proxy of [`CONNECTION`].
    pub async fn new(env: &Arc<TestEnv>, name: &str) -> anyhow::Result<Namespace> {
        let admission = crate::ADMISSION.clone().read_owned().await;
        kubectl_ok(env, User::Admin, &["create", "namespace", name]).await?;
        install_roles(env).await?;
        kubectl_ok(
            env,
            User::Admin,
            &[
                "create",
                "rolebinding",
                "dba-approves",
                "--clusterrole=gatehouse-approver",
                "--group=dba",
                "-n",
                name,
            ],
        )
        .await?;
        // What the operator grants each proxy on ApprovalRequests.
        let role = format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: gatehouse-proxy, namespace: {name}}}
rules:
  - {{apiGroups: [gatehouse.dev], resources: [approvalrequests], verbs: [create, get, list, watch]}}
  - {{apiGroups: [gatehouse.dev], resources: [approvalrequests/status], verbs: [get, patch]}}
"#
        );
        env.kube
            .kubectl_run(User::Admin, &["apply", "--server-side", "-f", "-"], Some(&role))
            .await?;
        let mut namespace = Namespace {
            env: env.clone(),
            name: name.to_owned(),
            proxy: PathBuf::new(),
            _admission: admission,
        };
        namespace.proxy = namespace.proxy_of(CONNECTION).await?;
        Ok(namespace)
    }

    /// A kubeconfig of ServiceAccount `gatehouse-<connection>` (as the
    /// operator names each proxy's account) holding a token the API server
    /// issued, with the proxy's rights on ApprovalRequests.
    pub async fn proxy_of(&self, connection: &str) -> anyhow::Result<PathBuf> {
        let (env, ns) = (&self.env, self.name.as_str());
        let sa = format!("gatehouse-{connection}");
        kubectl_ok(env, User::Admin, &["create", "serviceaccount", &sa, "-n", ns]).await?;
        kubectl_ok(
            env,
            User::Admin,
            &[
                "create",
                "rolebinding",
                &sa,
                "--role=gatehouse-proxy",
                &format!("--serviceaccount={ns}:{sa}"),
                "-n",
                ns,
            ],
        )
        .await?;
        let token = kubectl_ok(
            env,
            User::Admin,
            &["create", "token", &sa, "-n", ns, "--duration=2h"],
        )
        .await?;
        let path = env.path().join(format!("kubeconfig-{ns}-{sa}"));
        env.kube.write_token_kubeconfig(&path, &sa, &token, ns)?;
        Ok(path)
    }

    /// Binds the approver role to `user` too, so that RBAC lets them patch
    /// and only the policy decides.
    pub async fn let_patch(&self, user: User) -> anyhow::Result<()> {
        kubectl_ok(
            &self.env,
            User::Admin,
            &[
                "create",
                "rolebinding",
                &format!("{user}-may-patch"),
                "--clusterrole=gatehouse-approver",
                &format!("--user={user}"),
                "-n",
                &self.name,
            ],
        )
        .await
        .map(drop)
    }

    /// `kubectl create -f` of `manifest` as `user`, or as the ServiceAccount
    /// of `kubeconfig`.
    pub async fn create(&self, as_: As<'_>, manifest: &Value) -> anyhow::Result<Output> {
        let name = manifest["metadata"]["name"].as_str().context("no name")?;
        let file = self.env.path().join(format!("{}-{name}.json", self.name));
        std::fs::write(&file, serde_json::to_vec(manifest)?)?;
        let mut command = as_.kubectl(&self.env);
        command.args(["create", "-n", &self.name, "-f"]).arg(&file);
        output(&mut command).await
    }

    /// Creates a request as the proxy of its Connection; fails unless allowed.
    pub async fn held(&self, manifest: &Value) -> anyhow::Result<()> {
        let out = self.create(As::Kubeconfig(&self.proxy), manifest).await?;
        allowed(&out, "the proxy's create")
    }

    /// The approver's patch, exactly as the README gives it: `user` appends
    /// `reviews` (one review each) to `/spec/reviews`.
    pub async fn review(&self, user: User, request: &str, reviews: &[Value]) -> anyhow::Result<Output> {
        let ops: Vec<Value> = reviews
            .iter()
            .map(|r| json!({"op": "add", "path": "/spec/reviews/-", "value": r}))
            .collect();
        let patch = serde_json::to_string(&ops)?;
        output(self.env.kube.kubectl(user).args([
            "patch",
            "approvalrequest",
            request,
            "-n",
            &self.name,
            "--type=json",
            "-p",
            &patch,
        ]))
        .await
    }

    /// The users who reviewed `request`, in order.
    pub async fn reviewers(&self, request: &str) -> anyhow::Result<String> {
        kubectl_ok(
            &self.env,
            User::Admin,
            &[
                "get",
                "approvalrequest",
                request,
                "-n",
                &self.name,
                "-o",
                "jsonpath={.spec.reviews[*].user}",
            ],
        )
        .await
    }
}

/// Who sends a request.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// A static-token user.
    User(User),
    /// The identity of a kubeconfig (a ServiceAccount's token).
    Kubeconfig(&'a std::path::Path),
}

impl As<'_> {
    fn kubectl(self, env: &TestEnv) -> tokio::process::Command {
        match self {
            As::User(user) => env.kube.kubectl(user),
            As::Kubeconfig(path) => {
                // The later --kubeconfig wins.
                let mut command = env.kube.kubectl(User::Nobody);
                command.arg("--kubeconfig").arg(path);
                command
            }
        }
    }
}

/// An ApprovalRequest as the proxy creates it for a held DELETE.
pub fn request(name: &str, requester: &str, approvers: Value) -> Value {
    json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": "ApprovalRequest",
        "metadata": {"name": name},
        "spec": {
            "connection": CONNECTION,
            "connectionUID": "6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10",
            "requester": {"username": requester},
            "sessionID": "3f9c2b7e-61a4-4d0b-9c55-0e8f2a1d7b40",
            "statement": "DELETE FROM public.orders WHERE id = $1",
            "parameters": [{"type": "int4", "format": "text", "value": "42"}],
            "statementHash": "5e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab19f86d081",
            "parametersHash": "9f86d0815e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab19f86d0815e2c0ab1",
            "fingerprint": "5e2c0ab1",
            "policy": "writes-need-approval",
            "rule": "orders-writes",
            "approvers": approvers,
            "expiresAt": "2030-01-15T10:05:00Z",
        },
    })
}

/// `user`'s approval, naming the approver group `dba` when they are in it.
fn approved(user: User, reason: &str) -> Value {
    review(user, "Approved", reason)
}

fn denied(user: User, reason: &str) -> Value {
    review(user, "Denied", reason)
}

fn review(user: User, decision: &str, reason: &str) -> Value {
    let mut review = json!({"user": user.name(), "decision": decision, "reason": reason});
    if user.groups().contains(&"dba") {
        review["groups"] = json!(["dba"]);
    }
    review
}

/// Group `dba` approves; one approval is enough.
fn dba() -> Value {
    json!({"groups": ["dba"], "required": 1})
}

pub async fn an_approver_approves_and_a_later_review_is_refused_as_decided(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-approve").await?;
    ns.held(&request("held-delete", AGENT, dba())).await?;

    let out = ns
        .review(User::Alice, "held-delete", &[approved(User::Alice, "ticket 812")])
        .await?;
    allowed(&out, "alice's approval")?;
    let out = ns
        .review(User::Bob, "held-delete", &[approved(User::Bob, "me too")])
        .await?;
    refused(
        &out,
        "bob's review after alice's approval (1 required)",
        "this request is already Approved; no review can be added after a decision or expiry",
    )?;
    ensure!(ns.reviewers("held-delete").await? == "alice");
    Ok(())
}

pub async fn two_approvals_are_needed_and_a_third_is_refused_as_decided(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-two").await?;
    ns.held(&request(
        "held-delete",
        AGENT,
        json!({"groups": ["dba"], "required": 2}),
    ))
    .await?;

    let out = ns
        .review(User::Alice, "held-delete", &[approved(User::Alice, "ticket 812")])
        .await?;
    allowed(&out, "alice's approval")?;
    // One approval of two: the request is still open.
    let out = ns
        .review(User::Bob, "held-delete", &[approved(User::Bob, "ticket 812")])
        .await?;
    allowed(&out, "bob's approval, the second of two")?;
    // carol is in dba and not the requester: only the decision stops her.
    let out = ns
        .review(
            User::Requester,
            "held-delete",
            &[approved(User::Requester, "late")],
        )
        .await?;
    refused(
        &out,
        "carol's review after two of two approvals",
        "this request is already Approved; no review can be added after a decision or expiry",
    )?;
    ensure!(ns.reviewers("held-delete").await? == "alice bob");
    Ok(())
}

pub async fn the_requester_cannot_review_her_own_request(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-requester").await?;
    // carol sent it, and carol is in dba, which may approve it.
    ns.held(&request("held-delete", "carol", dba())).await?;

    let out = ns
        .review(
            User::Requester,
            "held-delete",
            &[approved(User::Requester, "trust me")],
        )
        .await?;
    refused(
        &out,
        "carol approving her own request",
        "carol sent this statement and cannot review it; one of its other approvers must",
    )?;
    let out = ns
        .review(User::Alice, "held-delete", &[approved(User::Alice, "ticket 812")])
        .await?;
    allowed(&out, "alice's approval of carol's request")?;
    ensure!(ns.reviewers("held-delete").await? == "alice");
    Ok(())
}

pub async fn a_user_not_among_the_approvers_is_refused_by_the_policy(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-approvers").await?;
    // RBAC lets nobody patch here: what stops them is the policy.
    ns.let_patch(User::Nobody).await?;
    ns.held(&request("for-dba", AGENT, dba())).await?;
    let out = ns
        .review(User::Nobody, "for-dba", &[approved(User::Nobody, "why not")])
        .await?;
    refused(
        &out,
        "nobody approving a request for dba",
        "nobody is not among the approvers of this request (users: [], groups: [dba])",
    )?;

    // Approvers named by user: nobody may, the dba group may not.
    ns.held(&request(
        "for-nobody",
        AGENT,
        json!({"users": ["nobody"], "required": 1}),
    ))
    .await?;
    let out = ns
        .review(User::Alice, "for-nobody", &[approved(User::Alice, "ticket 812")])
        .await?;
    refused(
        &out,
        "alice approving a request for user nobody",
        "alice is not among the approvers of this request (users: [nobody], groups: [])",
    )?;
    let out = ns
        .review(
            User::Nobody,
            "for-nobody",
            &[approved(User::Nobody, "ticket 812")],
        )
        .await?;
    allowed(&out, "nobody's approval as a named approver")?;
    ensure!(ns.reviewers("for-dba").await?.is_empty());
    ensure!(ns.reviewers("for-nobody").await? == "nobody");
    Ok(())
}

pub async fn an_approver_adds_only_her_own_review_and_only_once(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-own").await?;
    ns.held(&request(
        "held-delete",
        AGENT,
        json!({"groups": ["dba"], "required": 2}),
    ))
    .await?;

    let out = ns
        .review(
            User::Alice,
            "held-delete",
            &[approved(User::Bob, "on bob's behalf")],
        )
        .await?;
    refused(
        &out,
        "alice adding a review as bob",
        "you can only add your own review, as alice (this review names bob)",
    )?;
    let out = ns
        .review(
            User::Alice,
            "held-delete",
            &[
                approved(User::Alice, "ticket 812"),
                approved(User::Bob, "ticket 812"),
            ],
        )
        .await?;
    refused(
        &out,
        "alice adding two reviews at once",
        "add one review at a time: your own, as alice",
    )?;
    ensure!(ns.reviewers("held-delete").await?.is_empty());

    let out = ns
        .review(User::Alice, "held-delete", &[approved(User::Alice, "ticket 812")])
        .await?;
    allowed(&out, "alice's approval")?;
    // A second review by alice: reviews are a list-map keyed by user, so the
    // CRD's schema refuses the duplicate before the policy (which would say
    // "alice has already reviewed this request") is asked.
    let out = ns
        .review(
            User::Alice,
            "held-delete",
            &[denied(User::Alice, "changed my mind")],
        )
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("Duplicate value"),
        "alice's second review: {stderr}"
    );
    ensure!(ns.reviewers("held-delete").await? == "alice");
    Ok(())
}

pub async fn after_a_denial_no_approval_is_added(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-denied").await?;
    ns.held(&request(
        "held-delete",
        AGENT,
        json!({"groups": ["dba"], "required": 2}),
    ))
    .await?;

    let out = ns
        .review(
            User::Alice,
            "held-delete",
            &[denied(User::Alice, "not during the freeze")],
        )
        .await?;
    allowed(&out, "alice's denial")?;
    let out = ns
        .review(User::Bob, "held-delete", &[approved(User::Bob, "ticket 812")])
        .await?;
    refused(
        &out,
        "bob's approval after alice's denial",
        "this request is already Denied; no review can be added after a decision or expiry",
    )?;
    ensure!(ns.reviewers("held-delete").await? == "alice");
    Ok(())
}

pub async fn only_the_proxy_of_the_connection_creates_requests_without_reviews(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-create").await?;
    let held = request("held-delete", AGENT, dba());

    // The cluster admin, as themselves: RBAC allows it, the policy does not.
    let out = ns.create(As::User(User::Admin), &held).await?;
    refused(
        &out,
        "admin creating a request",
        "only the Gatehouse proxy of Connection orders-db (system:serviceaccount:admission-create:gatehouse-orders-db) may create its ApprovalRequests, not admin; to decide on a request, add a review to it with kubectl patch",
    )?;
    // The proxy of another Connection, with the same rights.
    let billing = ns.proxy_of("billing-db").await?;
    let out = ns.create(As::Kubeconfig(&billing), &held).await?;
    refused(
        &out,
        "billing-db's proxy creating a request for orders-db",
        "may create its ApprovalRequests, not system:serviceaccount:admission-create:gatehouse-billing-db;",
    )?;
    // The right proxy, but with a review already in.
    let mut reviewed = held.clone();
    reviewed["spec"]["reviews"] = json!([approved(User::Alice, "pre-approved")]);
    let out = ns.create(As::Kubeconfig(&ns.proxy), &reviewed).await?;
    refused(
        &out,
        "the proxy creating a request with a review",
        "a new ApprovalRequest must have no reviews; approvers add theirs with kubectl patch once it exists",
    )?;
    let names = kubectl_ok(
        &env,
        User::Admin,
        &["get", "approvalrequests", "-n", &ns.name, "-o", "name"],
    )
    .await?;
    ensure!(names.trim().is_empty(), "refused creates left {names}");

    let out = ns.create(As::Kubeconfig(&ns.proxy), &held).await?;
    allowed(&out, "the orders-db proxy's create")?;
    let mut billing_request = request("held-billing", AGENT, dba());
    billing_request["spec"]["connection"] = json!("billing-db");
    let out = ns.create(As::Kubeconfig(&billing), &billing_request).await?;
    allowed(&out, "the billing-db proxy's create for billing-db")?;
    Ok(())
}

impl Namespace {
    /// A merge patch of `request`'s status (its phase, and `extra` fields)
    /// as the identity of `kubeconfig`, whatever the outcome.
    pub async fn set_status(&self, as_: As<'_>, request: &str, status: Value) -> anyhow::Result<Output> {
        let patch = json!({"status": status}).to_string();
        let mut command = as_.kubectl(&self.env);
        command.args([
            "patch",
            "approvalrequest",
            request,
            "-n",
            &self.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
        output(&mut command).await
    }

    /// `request`'s phase, or "" before any.
    pub async fn phase(&self, request: &str) -> anyhow::Result<String> {
        kubectl_ok(
            &self.env,
            User::Admin,
            &[
                "get",
                "approvalrequest",
                request,
                "-n",
                &self.name,
                "-o",
                "jsonpath={.status.phase}",
            ],
        )
        .await
    }
}

pub async fn an_expired_or_consumed_request_takes_no_review(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-expired").await?;
    let operator = env.kube.operator_kubeconfig().await?;
    // Expired: what the operator writes once expiresAt passes (CEL has no clock).
    ns.held(&request("expired", AGENT, dba())).await?;
    let out = ns
        .set_status(As::Kubeconfig(operator), "expired", json!({"phase": "Expired"}))
        .await?;
    allowed(&out, "the operator lapsing a Pending request")?;
    // Consumed: alice approves, the operator decides, the proxy runs it.
    ns.held(&request("consumed", AGENT, dba())).await?;
    allowed(
        &ns.review(User::Alice, "consumed", &[approved(User::Alice, "ticket 812")])
            .await?,
        "alice's approval",
    )?;
    for (as_, phase) in [
        (As::Kubeconfig(operator), "Approved"),
        (As::Kubeconfig(&ns.proxy), "Consumed"),
    ] {
        // The operator in the suite may have decided it already.
        if ns.phase("consumed").await? != phase {
            allowed(
                &ns.set_status(as_, "consumed", json!({"phase": phase})).await?,
                &format!("setting {phase}"),
            )?;
        }
    }
    for (name, phase) in [("expired", "Expired"), ("consumed", "Consumed")] {
        let out = ns
            .review(User::Bob, name, &[approved(User::Bob, "ticket 812")])
            .await?;
        refused(
            &out,
            &format!("bob's approval of a request in phase {phase}"),
            &format!("this request is already {phase}; no review can be added after a decision or expiry"),
        )?;
    }
    ensure!(ns.reviewers("expired").await?.is_empty());
    ensure!(ns.reviewers("consumed").await? == "alice");
    Ok(())
}

pub async fn only_the_operator_decides_and_only_the_requests_own_proxy_consumes(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-status").await?;
    let operator = env.kube.operator_kubeconfig().await?;
    let billing = ns.proxy_of("billing-db").await?;
    ns.held(&request("held-delete", AGENT, dba())).await?;
    let approve = json!({"phase": "Approved", "message": "approved by alice"});

    // Nobody but the operator and the request's own proxy writes status: not
    // the admin (RBAC lets them), not the proxy of another Connection.
    for (as_, who) in [
        (As::User(User::Admin), "admin"),
        (
            As::Kubeconfig(&billing),
            "system:serviceaccount:admission-status:gatehouse-billing-db",
        ),
    ] {
        let out = ns.set_status(as_, "held-delete", approve.clone()).await?;
        refused(
            &out,
            &format!("{who} setting Approved"),
            &format!("may write the status of its ApprovalRequests, not {who}"),
        )?;
    }
    // The proxy itself cannot approve, nor the operator without the reviews.
    refused(
        &ns.set_status(As::Kubeconfig(&ns.proxy), "held-delete", approve.clone())
            .await?,
        "the proxy approving its own request",
        "the proxy cannot move an ApprovalRequest from Pending to Approved",
    )?;
    refused(
        &ns.set_status(As::Kubeconfig(operator), "held-delete", approve.clone())
            .await?,
        "the operator approving without reviews",
        "needs 1 approval(s) from its approvers to be Approved; it has 0",
    )?;
    // A review by someone outside the approvers does not count either.
    ns.let_patch(User::Nobody).await?;
    refused(
        &ns.review(
            User::Nobody,
            "held-delete",
            &[json!({"user": "nobody", "groups": ["dba"], "decision": "Approved"})],
        )
        .await?,
        "nobody naming a group they are not in",
        "nobody is not in every group the review names ([dba]); name only the approver groups you belong to",
    )?;
    ensure!(
        ns.phase("held-delete").await? != "Approved",
        "approved without reviews"
    );

    // With alice's review the operator may approve; the proxy may consume,
    // once, changing nothing but its phase and message.
    allowed(
        &ns.review(User::Alice, "held-delete", &[approved(User::Alice, "ticket 812")])
            .await?,
        "alice's approval",
    )?;
    if ns.phase("held-delete").await? != "Approved" {
        allowed(
            &ns.set_status(As::Kubeconfig(operator), "held-delete", approve.clone())
                .await?,
            "the operator approving after alice",
        )?;
    }
    refused(
        &ns.set_status(
            As::Kubeconfig(operator),
            "held-delete",
            json!({"phase": "Consumed"}),
        )
        .await?,
        "the operator marking it Consumed",
        "the operator cannot move an ApprovalRequest from Approved to Consumed",
    )?;
    refused(
        &ns.set_status(
            As::Kubeconfig(&billing),
            "held-delete",
            json!({"phase": "Consumed"}),
        )
        .await?,
        "another Connection's proxy consuming it",
        "not system:serviceaccount:admission-status:gatehouse-billing-db",
    )?;
    refused(
        &ns.set_status(
            As::Kubeconfig(&ns.proxy),
            "held-delete",
            json!({"phase": "Consumed", "decidedBy": "mallory"}),
        )
        .await?,
        "the proxy rewriting who decided",
        "the proxy writes only an ApprovalRequest's phase and message",
    )?;
    allowed(
        &ns.set_status(
            As::Kubeconfig(&ns.proxy),
            "held-delete",
            json!({"phase": "Consumed", "message": "ran once"}),
        )
        .await?,
        "the proxy consuming it",
    )?;
    // A final phase never changes, whoever asks.
    for (as_, what) in [
        (As::Kubeconfig(operator), "operator"),
        (As::Kubeconfig(&ns.proxy), "proxy"),
    ] {
        refused(
            &ns.set_status(as_, "held-delete", json!({"phase": "Approved"}))
                .await?,
            &format!("the {what} reopening a Consumed request"),
            &format!("the {what} cannot move an ApprovalRequest from Consumed to Approved"),
        )?;
    }
    ensure!(ns.phase("held-delete").await? == "Consumed");

    // The proxy withdraws a Pending request (Expired), and nothing else.
    ns.held(&request("withdrawn", AGENT, dba())).await?;
    allowed(
        &ns.set_status(
            As::Kubeconfig(&ns.proxy),
            "withdrawn",
            json!({"phase": "Expired", "message": "withdrawn: the client went away"}),
        )
        .await?,
        "the proxy withdrawing its request",
    )?;
    Ok(())
}

pub async fn a_review_names_only_approver_groups_its_reviewer_belongs_to(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-groups").await?;
    ns.held(&request(
        "held-delete",
        AGENT,
        json!({"groups": ["dba", "sre"], "required": 2}),
    ))
    .await?;
    // alice is in dba, not sre.
    let as_sre = json!({"user": "alice", "groups": ["sre"], "decision": "Approved"});
    refused(
        &ns.review(User::Alice, "held-delete", &[as_sre]).await?,
        "alice approving as a member of sre",
        "alice is not in every group the review names ([sre])",
    )?;
    // Without a group she is no approver of it: she is listed by group only.
    let bare = json!({"user": "alice", "decision": "Approved"});
    refused(
        &ns.review(User::Alice, "held-delete", &[bare]).await?,
        "alice approving without naming her group",
        "alice is not among the approvers of this request (users: [], groups: [dba, sre])",
    )?;
    allowed(
        &ns.review(User::Alice, "held-delete", &[approved(User::Alice, "ticket 812")])
            .await?,
        "alice approving as a member of dba",
    )?;
    ensure!(ns.reviewers("held-delete").await? == "alice");
    Ok(())
}

pub async fn metadata_updates_pass_even_after_a_decision(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let ns = Namespace::new(&env, "admission-metadata").await?;
    ns.held(&request("held-delete", AGENT, dba())).await?;
    let out = ns
        .review(User::Alice, "held-delete", &[approved(User::Alice, "ticket 812")])
        .await?;
    allowed(&out, "alice's approval")?;

    // Decided, yet the operator and proxy may still label it, add and remove
    // finalizers and owner references: no review is added.
    let n = ns.name.as_str();
    for args in [
        &[
            "label",
            "approvalrequest",
            "held-delete",
            "-n",
            n,
            "gatehouse.dev/session=3f9c2b7e",
        ][..],
        &[
            "patch",
            "approvalrequest",
            "held-delete",
            "-n",
            n,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["gatehouse.dev/retention"],"annotations":{"gatehouse.dev/note":"kept 30 days"},"ownerReferences":[{"apiVersion":"gatehouse.dev/v1alpha1","kind":"Connection","name":"orders-db","uid":"6b1c1b7e-2f0a-4c3e-9d51-0b7a2e9c4f10"}]}}"#,
        ][..],
        &[
            "patch",
            "approvalrequest",
            "held-delete",
            "-n",
            n,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ][..],
    ] {
        kubectl_ok(&env, User::Admin, args).await?;
    }
    let labels = kubectl_ok(
        &env,
        User::Admin,
        &[
            "get",
            "approvalrequest",
            "held-delete",
            "-n",
            n,
            "-o",
            "jsonpath={.metadata.labels}",
        ],
    )
    .await?;
    ensure!(labels.contains("3f9c2b7e"), "labels are {labels}");
    ensure!(ns.reviewers("held-delete").await? == "alice");
    Ok(())
}

/// Parses a YAML manifest, dropping lines with a Helm template action (the
/// chart's labels) and the labels themselves.
fn manifest_without_labels(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    // The chart names its release's operator; with the default values, the
    // same account config/rbac/operator installs.
    let text = text
        .replace("{{ .Release.Namespace }}", "gatehouse-system")
        .replace(
            r#"{{ include "gatehouse.serviceAccountName" . }}"#,
            "gatehouse-operator",
        );
    let plain: String = text
        .lines()
        .filter(|line| !line.contains("{{"))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut value: Value =
        serde_norway::from_str(&plain).with_context(|| format!("parse {}", path.display()))?;
    value["metadata"]
        .as_object_mut()
        .with_context(|| format!("{} has no metadata", path.display()))?
        .remove("labels");
    Ok(value)
}

pub async fn the_chart_installs_the_same_policy_as_config_admission(
    _env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let root = repo();
    for (config, chart) in [
        ("approvalrequest-policy.yaml", "admission-policy.yaml"),
        ("approvalrequest-binding.yaml", "admission-binding.yaml"),
    ] {
        let config = manifest_without_labels(&root.join("config/admission").join(config))?;
        let chart = manifest_without_labels(&root.join("charts/gatehouse/templates").join(chart))?;
        ensure!(
            config == chart,
            "the chart's {} differs from config/admission's",
            chart["kind"]
        );
    }
    Ok(())
}
