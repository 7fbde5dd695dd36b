package daemon

import "testing"

func TestCheckStartupParameters(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		ok     bool
	}{
		{map[string]string{"user": "a", "database": "b", "application_name": "psql", "client_encoding": "UTF8", "DateStyle": "ISO"}, true},
		{map[string]string{"options": "-c statement_timeout=5s --lock_timeout=1s"}, true},
		{map[string]string{"role": "postgres"}, false},
		{map[string]string{"search_path": "evil,public"}, false},
		{map[string]string{"default_transaction_read_only": "off"}, false},
		{map[string]string{"options": "-c role=postgres"}, false},
		{map[string]string{"options": "-csearch_path=evil"}, false},
		{map[string]string{"options": "--session-authorization=postgres"}, false},
		{map[string]string{"options": "-B 100"}, false},
		{map[string]string{"replication": "database"}, false},
	} {
		err := checkStartupParameters(tc.params)
		if (err == nil) != tc.ok {
			t.Errorf("%v: err = %v, want ok=%v", tc.params, err, tc.ok)
		}
	}
}
