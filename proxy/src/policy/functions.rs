//! Named groups of built-in and extension functions that act outside the
//! tables a statement names.
//!
//! Whether a call is a read is the catalog's to say (see
//! [`judge_function`](super::judge_function)): most of these are VOLATILE
//! and would count as side effects anyway; the groups name why in a
//! refusal's hint. A few are STABLE or IMMUTABLE and still act outside the
//! tables (`table_to_xml` reads any table by name, `crosstab` and
//! `xpath_table` run their text arguments as queries): for them, the group
//! is what makes the call a side effect.
//!
//! A group applies to a function the catalog shows as a built-in (schema
//! `pg_catalog`) or an extension's, by its own name, case-insensitively. A
//! user's function that happens to share a name or prefix is judged on its
//! volatility like any other.

/// A group of functions with side effects, and why they are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideEffectGroup {
    /// A short name for the group, used in hints.
    pub name: &'static str,
    /// Why calling these functions is more than reading data.
    pub why: &'static str,
    /// Function names matched exactly.
    pub exact: &'static [&'static str],
    /// Name prefixes: every function whose name starts with one matches.
    pub prefixes: &'static [&'static str],
}

/// Every group of listed functions.
pub const SIDE_EFFECT_GROUPS: &[SideEffectGroup] = &[
    SideEffectGroup {
        name: "server files",
        why: "reads, lists or writes files on the database server's file system, outside any table a policy names",
        exact: &[
            "pg_read_file",
            "pg_read_binary_file",
            "pg_stat_file",
            "pg_logdir_ls",
            "pg_hba_file_rules",
            "pg_ident_file_mappings",
            "pg_show_all_file_settings",
        ],
        // pg_ls_dir, pg_ls_logdir, pg_ls_waldir, pg_ls_tmpdir, ...; and
        // adminpack's pg_file_write, pg_file_rename, pg_file_unlink, pg_file_sync.
        prefixes: &["pg_ls_", "pg_file_"],
    },
    SideEffectGroup {
        name: "large objects",
        why: "large objects live outside tables; lo_import and lo_export also read and write server files",
        exact: &["loread", "lowrite"],
        // lo_import, lo_export, lo_create, lo_creat, lo_unlink, lo_open,
        // lo_put, lo_get, lo_from_bytea, lo_truncate, lo_lseek, ...
        prefixes: &["lo_"],
    },
    SideEffectGroup {
        name: "remote connections",
        why: "opens connections to other servers (dblink, postgres_fdw) and runs statements there, where no policy applies",
        exact: &[],
        prefixes: &["dblink", "postgres_fdw_"],
    },
    SideEffectGroup {
        name: "queries in strings",
        why: "runs SQL given as a string, or reads a table given by name, so the classifier never sees what it reads",
        exact: &[
            "query_to_xml",
            "query_to_xmlschema",
            "query_to_xml_and_xmlschema",
            "cursor_to_xml",
            "cursor_to_xmlschema",
            "table_to_xml",
            "table_to_xmlschema",
            "table_to_xml_and_xmlschema",
            "schema_to_xml",
            "schema_to_xmlschema",
            "schema_to_xml_and_xmlschema",
            "database_to_xml",
            "database_to_xmlschema",
            "database_to_xml_and_xmlschema",
            // ts_stat(sqlquery) and ts_rewrite(query, select) run their text argument.
            "ts_stat",
            "ts_rewrite",
            // tablefunc: crosstab runs its text arguments, connectby reads a table by name.
            "connectby",
            // xml2: xpath_table builds and runs a query from its arguments.
            "xpath_table",
        ],
        prefixes: &["crosstab"],
    },
    SideEffectGroup {
        name: "sequence changes",
        why: "advances or sets a sequence, a write that no transaction rollback undoes",
        exact: &["nextval", "setval"],
        prefixes: &[],
    },
    SideEffectGroup {
        name: "settings",
        why: "changes session or server settings (set_config can change role, search_path or how strings are parsed) or reloads the server's configuration",
        exact: &[
            "set_config",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_rotate_logfile_old",
        ],
        prefixes: &[],
    },
    SideEffectGroup {
        name: "backend signalling",
        why: "cancels or terminates other sessions, or makes them write to the server log",
        exact: &[
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_log_backend_memory_contexts",
        ],
        prefixes: &[],
    },
    SideEffectGroup {
        name: "WAL, backup and replication",
        why: "acts on the server as a whole: switches or replays WAL, starts backups, promotes a standby, creates, drops or consumes replication slots (which also exposes every table's changes)",
        exact: &[
            "pg_switch_wal",
            "pg_switch_xlog",
            "pg_create_restore_point",
            "pg_promote",
            "pg_backup_start",
            "pg_backup_stop",
            "pg_start_backup",
            "pg_stop_backup",
            "pg_wal_replay_pause",
            "pg_wal_replay_resume",
            "pg_xlog_replay_pause",
            "pg_xlog_replay_resume",
            "pg_create_physical_replication_slot",
            "pg_create_logical_replication_slot",
            "pg_copy_physical_replication_slot",
            "pg_copy_logical_replication_slot",
            "pg_drop_replication_slot",
            "pg_replication_slot_advance",
            "pg_sync_replication_slots",
            "pg_logical_emit_message",
            "pg_import_system_collations",
        ],
        prefixes: &["pg_logical_slot_", "pg_replication_origin_"],
    },
    SideEffectGroup {
        name: "statistics",
        why: "resets, restores or clears the server's statistics, which monitoring and the planner rely on",
        exact: &[
            "pg_restore_relation_stats",
            "pg_restore_attribute_stats",
            "pg_clear_relation_stats",
            "pg_clear_attribute_stats",
            // The pg_stat_statements extension's.
            "pg_stat_statements_reset",
        ],
        prefixes: &["pg_stat_reset"],
    },
    SideEffectGroup {
        name: "index and counter maintenance",
        why: "writes index pages, or advances a cluster-wide counter (OIDs, transaction ids, which wrap around), outside any table a policy names",
        exact: &[
            "brin_summarize_new_values",
            "brin_summarize_range",
            "brin_desummarize_range",
            "gin_clean_pending_list",
            "pg_nextoid",
            // STABLE, and each assigns the calling transaction an id.
            "txid_current",
            "pg_current_xact_id",
        ],
        prefixes: &[],
    },
    SideEffectGroup {
        name: "page surgery",
        why: "the pg_surgery extension changes table pages directly, past every check PostgreSQL makes",
        exact: &["heap_force_kill", "heap_force_freeze"],
        prefixes: &[],
    },
    SideEffectGroup {
        name: "job scheduling",
        why: "schedules statements to run later as another session (the pg_cron extension), where no policy applies",
        exact: &["schedule", "schedule_in_database", "unschedule", "alter_job"],
        prefixes: &[],
    },
    SideEffectGroup {
        name: "advisory locks",
        why: "takes or releases locks other sessions wait on, beyond the statement and possibly beyond the transaction",
        exact: &[],
        prefixes: &["pg_advisory_", "pg_try_advisory_"],
    },
    SideEffectGroup {
        name: "notifications",
        why: "sends a notification to every session listening on the channel",
        exact: &["pg_notify"],
        prefixes: &[],
    },
];

/// The group a function belongs to, by its name (without schema), or `None`
/// when it is not on the list.
pub fn side_effect_group(name: &str) -> Option<&'static SideEffectGroup> {
    let name = name.to_ascii_lowercase();
    SIDE_EFFECT_GROUPS
        .iter()
        .find(|g| g.exact.iter().any(|e| *e == name) || g.prefixes.iter().any(|p| name.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_functions_match_in_any_case() {
        for name in [
            "pg_read_file",
            "PG_READ_FILE",
            "pg_ls_dir",
            "lo_import",
            "lo_export",
            "lo_unlink",
            "dblink_exec",
            "query_to_xml",
            "table_to_xml_and_xmlschema",
            "nextval",
            "setval",
            "set_config",
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_switch_wal",
            "pg_create_restore_point",
            "pg_promote",
            "pg_advisory_lock",
            "pg_try_advisory_xact_lock_shared",
            "pg_logical_slot_get_changes",
            "pg_stat_reset_shared",
            "pg_notify",
        ] {
            assert!(side_effect_group(name).is_some(), "{name} should be listed");
        }
    }

    #[test]
    fn ordinary_functions_are_not_listed() {
        for name in [
            "now", "count", "lower", "currval", "pg_sleep", "length", "log", "login",
        ] {
            assert!(side_effect_group(name).is_none(), "{name} should not be listed");
        }
    }

    #[test]
    fn every_group_says_why() {
        for g in SIDE_EFFECT_GROUPS {
            assert!(!g.why.is_empty() && !g.name.is_empty());
            assert!(!g.exact.is_empty() || !g.prefixes.is_empty());
        }
    }
}
