package daemon

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/policy"
)

func TestStartupSettings(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		want   []string // nil with ok false: refused
		ok     bool
	}{
		{map[string]string{"user": "a", "database": "b", "application_name": "psql", "client_encoding": "UTF8", "DateStyle": "ISO"},
			[]string{"DateStyle", "application_name", "client_encoding"}, true},
		{map[string]string{"options": "-c statement_timeout=5s --lock-timeout=1s -csearch_path=evil"},
			[]string{"statement_timeout", "lock_timeout", "search_path"}, true},
		{map[string]string{"_pq_.command_batching": "on", "search_path": "x"}, []string{"search_path"}, true},
		{map[string]string{"options": "-B 100"}, nil, false},
		{map[string]string{"options": "-c role"}, nil, false},
		{map[string]string{"replication": "database"}, nil, false},
	} {
		got, err := startupSettings(tc.params)
		if (err == nil) != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("%v: %q, %v; want %q ok=%v", tc.params, got, err, tc.want, tc.ok)
		}
	}
}

const startupPolicy = `version: 1
identities:
  - name: admin-bot
  - name: reader
  - name: reviewed
targets:
  - name: db
    protocol: postgres
    addresses: [127.0.0.1]
    port: 5432
rules:
  - name: admin-bot-all
    identity: admin-bot
    target: db
    sql: {class: [read, session, transaction, admin]}
    action: allow
  - name: reader
    identity: reader
    target: db
    sql: {class: read}
    action: allow
  - name: reviewed-admin
    identity: reviewed
    target: db
    sql: {class: admin}
    action: approve
    approve: {reviewers: [root], timeout: 1m}
`

// TestDecideStartup: a startup parameter gets the decision of the SET it
// stands for (issue 12: search_path was refused "as admin" under a policy
// allowing admin).
func TestDecideStartup(t *testing.T) {
	pol, err := policy.Load(context.Background(), policy.Source{Name: "startup.yaml", Text: []byte(startupPolicy)}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	target := pol.Target("db")
	for _, tc := range []struct {
		identity string
		names    []string
		want     string // rule and action of each decision, in order
	}{
		{"admin-bot", []string{"application_name", "search_path", "standard_conforming_strings"},
			"search_path:admin-bot-all:allow standard_conforming_strings:admin-bot-all:allow"},
		{"admin-bot", []string{"role"}, "role:default-deny:deny"},
		// Session settings pass whatever the policy: a read-only policy
		// still lets psql send application_name and client_encoding.
		{"reader", []string{"application_name", "client_encoding", "statement_timeout"}, ""},
		{"reader", []string{"search_path"}, "search_path:default-deny:deny"},
		{"reviewed", []string{"search_path"}, "search_path:reviewed-admin:deny"},
	} {
		subj := &policy.Subject{Tag: tc.identity}
		var got []string
		for _, v := range decideStartup(pol, subj, target, tc.names) {
			got = append(got, v.name+":"+v.decision.Rule+":"+v.decision.Action.String())
		}
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("%s %v: %q, want %q", tc.identity, tc.names, s, tc.want)
		}
	}
}
