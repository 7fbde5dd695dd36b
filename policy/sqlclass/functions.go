package sqlclass

// funcEffect is what calling a known built-in function does.
type funcEffect struct {
	class      Class
	lock       bool
	unknowable bool // runs SQL or code given as a string
}

// knownEffects lists built-in and common-extension functions that are not
// plain reads. Names are without the pg_catalog schema. Anything not here and
// not in readOnlyFuncs is unknown and makes a statement at least Write.
var knownEffects = map[string]funcEffect{}

func init() {
	admin := []string{
		// server files
		"pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file",
		"pg_ls_logdir", "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir",
		"pg_ls_logicalsnapdir", "pg_ls_logicalmapdir", "pg_ls_replslotdir",
		"pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls",
		"lo_import", "lo_export",
		// processes and server state
		"pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
		"pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
		"pg_start_backup", "pg_stop_backup", "pg_promote", "pg_wal_replay_pause",
		"pg_wal_replay_resume", "pg_log_backend_memory_contexts", "pg_import_system_collations",
		"pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
		"pg_drop_replication_slot", "pg_copy_physical_replication_slot",
		"pg_copy_logical_replication_slot", "pg_replication_slot_advance",
		"pg_logical_slot_get_changes", "pg_logical_slot_peek_changes",
		"pg_logical_slot_get_binary_changes", "pg_logical_slot_peek_binary_changes",
		"pg_replication_origin_create", "pg_replication_origin_drop",
		"pg_replication_origin_session_setup", "pg_replication_origin_advance",
		"pg_stat_reset", "pg_stat_reset_shared", "pg_stat_reset_single_table_counters",
		"pg_stat_reset_single_function_counters", "pg_stat_reset_slru",
		"pg_stat_reset_replication_slot", "pg_stat_reset_subscription_stats",
		"pg_stat_statements_reset",
		// settings (set_config('role', ...) changes the acting role)
		"set_config",
		// holding a backend
		"pg_sleep", "pg_sleep_for", "pg_sleep_until",
	}
	for _, n := range admin {
		knownEffects[n] = funcEffect{class: Admin}
	}
	// dblink connects to a server of the caller's choosing and runs SQL
	// there; the *_to_xml functions of a schema or a database read every
	// table in it, which no table rule can name.
	for _, n := range []string{
		"dblink", "dblink_exec", "dblink_open", "dblink_fetch", "dblink_send_query",
		"dblink_get_result", "dblink_connect", "dblink_connect_u", "dblink_close",
		"dblink_disconnect", "dblink_build_sql_insert", "dblink_build_sql_update",
		"dblink_build_sql_delete",
		"database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
		"schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
	} {
		knownEffects[n] = funcEffect{class: Admin, unknowable: true}
	}
	for _, n := range []string{
		"nextval", "setval", "lo_create", "lo_creat", "lo_unlink", "lo_put", "lo_from_bytea",
		"lo_open", "lowrite", "lo_truncate", "lo_truncate64", "pg_notify",
		"pg_logical_emit_message", "txid_current", "pg_current_xact_id",
		"pg_advisory_unlock", "pg_advisory_unlock_all", "pg_advisory_unlock_shared",
	} {
		knownEffects[n] = funcEffect{class: Write}
	}
	for _, n := range []string{
		"pg_advisory_lock", "pg_advisory_xact_lock", "pg_advisory_lock_shared",
		"pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_xact_lock",
		"pg_try_advisory_lock_shared", "pg_try_advisory_xact_lock_shared",
	} {
		knownEffects[n] = funcEffect{class: Write, lock: true}
	}
	for _, n := range []string{"setseed", "pg_stat_clear_snapshot"} {
		knownEffects[n] = funcEffect{class: Session}
	}
	for _, n := range readOnlyList {
		readOnlyFuncs[n] = struct{}{}
	}
}

// readOnlyFuncs holds built-ins known to only compute or read: the common
// aggregate, window, string, math, date, JSON, array and catalog functions.
var readOnlyFuncs = map[string]struct{}{}

var readOnlyList = []string{
	// aggregates and window functions
	"count", "sum", "avg", "min", "max", "array_agg", "string_agg", "json_agg", "jsonb_agg",
	"json_object_agg", "jsonb_object_agg", "bool_and", "bool_or", "every", "bit_and", "bit_or",
	"bit_xor", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "corr",
	"covar_pop", "covar_samp", "regr_slope", "regr_intercept", "regr_count", "regr_r2",
	"regr_avgx", "regr_avgy", "percentile_cont", "percentile_disc", "mode", "rank",
	"dense_rank", "row_number", "ntile", "lag", "lead", "first_value", "last_value",
	"nth_value", "cume_dist", "percent_rank", "xmlagg", "range_agg", "any_value",
	// strings
	"lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length",
	"bit_length", "substr", "substring", "trim", "btrim", "ltrim", "rtrim", "lpad", "rpad",
	"concat", "concat_ws", "replace", "reverse", "left", "right", "position", "strpos",
	"split_part", "repeat", "format", "quote_ident", "quote_literal", "quote_nullable",
	"md5", "sha224", "sha256", "sha384", "sha512", "encode", "decode", "to_hex", "ascii",
	"chr", "regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array",
	"regexp_split_to_table", "regexp_count", "regexp_instr", "regexp_like", "regexp_substr",
	"translate", "starts_with", "string_to_array", "string_to_table", "array_to_string",
	"overlay", "normalize", "unistr", "convert_from", "convert_to", "to_ascii", "parse_ident",
	"like_escape", "similar_to_escape", "text", "lo_get", "loread",
	// numbers
	"abs", "ceil", "ceiling", "floor", "round", "trunc", "mod", "power", "pow", "sqrt", "cbrt",
	"exp", "ln", "log", "log10", "sign", "pi", "random", "random_normal", "div", "gcd", "lcm",
	"width_bucket", "degrees", "radians", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
	"factorial", "scale", "trim_scale", "min_scale",
	// dates and times
	"now", "date_trunc", "date_part", "extract", "age", "to_char", "to_date", "to_timestamp",
	"to_number", "make_date", "make_time", "make_timestamp", "make_timestamptz",
	"make_interval", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
	"timeofday", "justify_days", "justify_hours", "justify_interval", "isfinite", "date_bin",
	"timezone", "overlaps", "generate_series", "generate_subscripts",
	// JSON
	"json_build_object", "jsonb_build_object", "json_build_array", "jsonb_build_array",
	"to_json", "to_jsonb", "row_to_json", "array_to_json", "json_extract_path",
	"json_extract_path_text", "jsonb_extract_path", "jsonb_extract_path_text",
	"json_array_length", "jsonb_array_length", "json_each", "jsonb_each", "json_each_text",
	"jsonb_each_text", "json_array_elements", "jsonb_array_elements",
	"json_array_elements_text", "jsonb_array_elements_text", "json_object_keys",
	"jsonb_object_keys", "json_typeof", "jsonb_typeof", "jsonb_set", "jsonb_insert",
	"jsonb_pretty", "jsonb_strip_nulls", "json_strip_nulls", "jsonb_path_query",
	"jsonb_path_exists", "jsonb_path_match", "jsonb_path_query_array",
	"jsonb_path_query_first", "json_populate_record", "jsonb_populate_record",
	"json_to_record", "jsonb_to_record", "json_to_recordset", "jsonb_to_recordset",
	"json_object", "jsonb_object",
	// arrays
	"array_length", "array_upper", "array_lower", "array_dims", "array_ndims", "cardinality",
	"array_append", "array_prepend", "array_cat", "array_remove", "array_replace",
	"array_position", "array_positions", "unnest", "array_fill", "trim_array",
	// session and catalog information
	"version", "current_setting", "current_database", "current_schema", "current_schemas",
	"inet_client_addr", "inet_server_addr", "pg_backend_pid", "pg_postmaster_start_time",
	"pg_typeof", "format_type", "pg_get_viewdef", "pg_get_indexdef", "pg_get_constraintdef",
	"pg_get_functiondef", "pg_get_triggerdef", "pg_get_expr", "pg_get_userbyid",
	"pg_get_serial_sequence", "pg_table_size", "pg_relation_size", "pg_total_relation_size",
	"pg_indexes_size", "pg_database_size", "pg_size_pretty", "pg_column_size",
	"obj_description", "col_description", "shobj_description", "has_table_privilege",
	"has_schema_privilege", "has_database_privilege", "has_column_privilege",
	"has_function_privilege", "has_sequence_privilege", "pg_has_role",
	"pg_table_is_visible", "pg_function_is_visible", "pg_type_is_visible", "to_regclass",
	"to_regtype", "to_regproc", "to_regnamespace", "to_regrole", "pg_encoding_to_char",
	"pg_is_in_recovery", "pg_current_wal_lsn", "pg_last_wal_receive_lsn",
	"gen_random_uuid", "num_nulls", "num_nonnulls", "pg_get_keywords", "pg_blocking_pids",
	"pg_current_snapshot", "pg_input_is_valid", "pg_client_encoding", "host", "network",
	"netmask", "masklen", "isempty", "lower_inc", "upper_inc", "pg_get_partkeydef",
	"pg_get_statisticsobjdef", "pg_get_ruledef", "pg_get_function_arguments",
	"pg_get_function_result", "pg_get_function_identity_arguments", "pg_index_column_has_property",
	"is_normalized", "pg_collation_for", "xmlexists", "xpath", "xpath_exists",
	"xml_is_well_formed", "system_user", "array_to_tsvector", "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
	"websearch_to_tsquery", "ts_rank", "ts_rank_cd", "ts_headline",
	// SQL text or a relation named by text, which the classifier reads
	// (sqltext.go); a cursor, which its DECLARE was decided by.
	"ts_rewrite", "ts_stat", "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
	"table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
	"cursor_to_xml", "cursor_to_xmlschema",
}
