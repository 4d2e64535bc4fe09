//! Gatehouse's end-to-end suite: one binary, one shared environment (a real
//! control plane, PostgreSQL and S3), every test against real components.
//!
//! `cargo test -p gatehouse-e2e --test e2e [FILTER]`. The run folder (logs,
//! kubeconfigs) is kept when a test fails; its path is printed.

use std::{future::Future, path::PathBuf, pin::Pin, process::ExitCode, sync::Arc};

use gatehouse_e2e::TestEnv;
use libtest_mimic::{Arguments, Failed, Trial};

mod admission;
mod approvals_cli;
mod drivers;
mod harness;
mod identity;
mod masking;
mod operator;
mod ops;
mod packaging;
mod proxy;
mod recording;
mod session;
mod tls;
mod wall;

/// The ApprovalRequest admission policy: tests that rely on it (every
/// [`admission::Namespace`], the holds) hold it shared; the test that
/// removes it for a while holds it alone.
static ADMISSION: std::sync::LazyLock<Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::RwLock::new(())));

type TestFn = fn(Arc<TestEnv>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

macro_rules! tests {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((concat!(stringify!($module), "::", stringify!($name)), (|env| Box::pin($module::$name(env))) as TestFn)),*]
    };
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = tests![
        harness::crds_install_server_side_and_reapply_changes_nothing,
        harness::samples_are_accepted_and_listed_with_printer_columns,
        harness::invalid_manifests_are_rejected_with_their_cel_message,
        harness::approval_request_spec_and_reviews_are_immutable,
        harness::explain_prints_field_docs,
        harness::service_account_token_passes_token_review_and_altered_fails,
        harness::user_without_rights_is_refused_by_rbac,
        harness::postgres_answers_with_scram_and_seed_data,
        harness::s3_stores_and_returns_objects,
        harness::approver_role_lets_the_dba_group_review_and_nothing_more,
        harness::a_port_in_use_names_step_command_and_log,
        proxy::psql_reads_through_the_proxy_with_the_injected_credential,
        proxy::refused_statements_get_42501_and_the_session_goes_on,
        proxy::a_refusal_inside_a_transaction_fails_it_on_both_sides,
        proxy::extended_protocol_decides_on_parse,
        proxy::missing_and_altered_tokens_are_refused,
        proxy::a_policy_change_applies_to_open_sessions,
        session::newer_protocol_versions_are_negotiated_down_to_3_0,
        session::sessions_that_the_policy_could_misread_are_refused,
        ops::admin_endpoint_reports_health_readiness_and_counters,
        ops::config_reloads_are_counted_and_an_invalid_one_changes_nothing,
        ops::an_idle_session_gets_57p05_and_its_backend_ends,
        ops::a_third_connection_gets_53300_with_max_connections_2,
        ops::a_drain_fails_readiness_first_and_open_sessions_go_on,
        tls::psql_require_and_verify_full_read_through_the_proxy,
        tls::plaintext_is_refused_unless_allowed,
        tls::verify_full_fails_on_a_proxy_certificate_for_another_name,
        tls::a_client_certificate_is_the_identity,
        tls::upstream_require_and_verify_full_reach_postgres_in_tls,
        tls::upstream_require_never_falls_back_to_plaintext,
        tls::bytes_after_ssl_request_are_refused_and_the_proxy_survives,
        tls::direct_tls_needs_alpn_postgresql,
        tls::a_bad_certificate_file_refuses_the_configuration,
        tls::a_reload_reads_new_certificate_files_and_a_bad_one_keeps_the_last,
        identity::service_account_tokens_are_reviewed_and_their_policy_applies,
        identity::service_account_tokens_for_another_audience_altered_or_deleted_are_refused,
        identity::oidc_claims_name_the_caller_and_drive_the_policy,
        identity::oidc_tokens_expired_for_another_audience_issuer_or_altered_are_refused,
        identity::no_token_is_refused_with_28000,
        identity::an_unreachable_api_server_is_a_retry_not_a_refusal,
        drivers::psycopg_runs_the_same_scenario_directly_and_through_the_proxy,
        drivers::node_postgres_runs_the_same_scenario_directly_and_through_the_proxy,
        drivers::pgx_runs_the_same_scenario_directly_and_through_the_proxy,
        drivers::pgbench_select_only_runs_through_the_proxy_in_every_protocol,
        drivers::pgbench_tpcb_writes_are_refused_by_the_proxy,
        drivers::copy_in_and_out_through_the_proxy,
        drivers::a_cancelled_query_gets_57014_and_the_session_goes_on,
        drivers::a_notification_arrives_through_the_proxy,
        drivers::a_function_call_message_is_refused,
        drivers::evasions_are_refused_over_the_extended_protocol,
        drivers::evasions_are_refused_over_the_simple_protocol_and_literals_are_not,
        drivers::evasions_are_refused_through_prepare_and_execute,
        drivers::the_database_catalog_decides_which_calls_read,
        drivers::an_oversized_frame_is_refused_and_the_proxy_serves_the_next_client,
        drivers::a_slow_startup_is_closed_after_the_startup_timeout,
        drivers::a_client_vanishing_mid_pipeline_releases_its_backend,
        drivers::an_unknown_protocol_version_gets_a_fatal_error,
        wall::a_write_the_classifier_cannot_see_is_refused_by_postgresql,
        wall::every_way_to_turn_the_read_only_session_off_is_refused,
        wall::a_function_that_turns_the_session_read_write_ends_it,
        wall::a_caller_whose_policy_allows_a_write_gets_a_read_write_session,
        masking::psql_gets_every_secret_masked_in_rows_copy_and_errors,
        masking::errors_notices_and_the_proxy_log_mask_every_secret,
        masking::tokio_postgres_gets_binary_results_masked,
        masking::psycopg_gets_text_and_binary_results_masked,
        masking::look_alikes_arrive_unchanged,
        masking::column_rules_mask_by_name_and_keep_values_valid,
        masking::a_value_over_the_scan_limit_follows_the_failure_mode,
        recording::a_session_arrives_verifies_and_replays_what_the_agent_did,
        recording::a_changed_removed_reordered_or_added_chunk_fails_verification_naming_it,
        recording::an_s3_outage_during_50_concurrent_sessions_loses_no_recording,
        recording::a_proxy_killed_mid_session_uploads_its_recording_when_restarted,
        operator::a_connection_gets_its_proxy_children_and_a_ready_status,
        operator::an_invalid_policy_is_reported_on_itself_and_on_the_connections_it_selects,
        operator::an_invalid_policy_denies_its_subjects_through_the_proxy_until_fixed,
        operator::a_missing_secret_or_key_is_named_no_proxy_is_deployed_and_deletion_cleans_up,
        operator::a_name_someone_else_holds_is_reported_and_left_alone,
        operator::a_restarted_operator_changes_nothing_and_gitops_sees_no_diff,
        operator::the_operators_proxy_serves_an_agent_follows_a_policy_edit_and_a_rotated_secret,
        operator::a_held_statement_runs_once_when_approved_and_only_as_approved,
        operator::approval_requests_are_decided_expire_leave_events_and_go,
        operator::an_approval_covers_exactly_the_statement_shown,
        operator::decisions_only_the_right_party_writes_are_rechecked_by_the_proxy,
        admission::an_approver_approves_and_a_later_review_is_refused_as_decided,
        admission::two_approvals_are_needed_and_a_third_is_refused_as_decided,
        admission::the_requester_cannot_review_her_own_request,
        admission::a_user_not_among_the_approvers_is_refused_by_the_policy,
        admission::an_approver_adds_only_her_own_review_and_only_once,
        admission::after_a_denial_no_approval_is_added,
        admission::only_the_proxy_of_the_connection_creates_requests_without_reviews,
        admission::an_expired_or_consumed_request_takes_no_review,
        admission::only_the_operator_decides_and_only_the_requests_own_proxy_consumes,
        admission::a_review_names_only_approver_groups_its_reviewer_belongs_to,
        admission::metadata_updates_pass_even_after_a_decision,
        admission::the_chart_installs_the_same_policy_as_config_admission,
        packaging::the_chart_lints_and_renders_its_values_into_the_operators_flags,
        packaging::kustomize_builds_config_default_with_the_charts_rbac_and_deployment,
        packaging::the_rendered_chart_applies_to_the_api_server,
        packaging::the_operators_account_applies_a_connections_children_and_nothing_more,
        packaging::each_dockerfile_builds_a_binary_of_the_workspace,
        approvals_cli::pending_lists_what_waits_and_approve_adds_the_callers_own_review,
        approvals_cli::the_requester_and_users_outside_the_approvers_are_refused_with_the_api_servers_message,
        approvals_cli::deny_needs_a_reason_records_it_and_decides,
        approvals_cli::the_operator_serves_metrics_counting_reconciles_while_it_leads,
    ];
    let tracing = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
    );
    let _ = tracing.with_test_writer().try_init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("e2e: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Listing tests must not start anything.
    if args.list {
        let trials = tests
            .into_iter()
            .map(|(name, _)| Trial::test(name, || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }

    let env = match runtime.block_on(setup()) {
        Ok(env) => Arc::new(env),
        Err(e) => {
            eprintln!("e2e: the environment did not come up:\n{e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("e2e: environment up in {}", env.path().display());
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let env = env.clone();
            let handle = runtime.handle().clone();
            Trial::test(name, move || {
                handle
                    .block_on(test(env))
                    .map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    let Ok(mut env) = Arc::try_unwrap(env) else {
        eprintln!("e2e: a test still holds the environment");
        return ExitCode::FAILURE;
    };
    if conclusion.has_failed() {
        env.keep_folder();
        eprintln!("e2e: logs and kubeconfigs kept in {}", env.path().display());
    }
    let pids = env.pids();
    // The runtime first: the in-process proxies' tasks (config watchers)
    // end with it instead of complaining that the run folder went away.
    drop(runtime);
    drop(env);
    let survivors: Vec<u32> = pids
        .into_iter()
        .filter(|pid| gatehouse_e2e::process::is_alive(*pid))
        .collect();
    if !survivors.is_empty() {
        eprintln!("e2e: processes outlived the environment: {survivors:?}");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}

/// Starts the environment and installs the CRDs and the admission policy the
/// way a user does.
async fn setup() -> anyhow::Result<TestEnv> {
    let env = TestEnv::start().await?;
    env.kube.install_crds().await?;
    env.kube.install_admission().await?;
    Ok(env)
}

/// The repository root.
fn repo() -> PathBuf {
    gatehouse_e2e::repo_root()
}
