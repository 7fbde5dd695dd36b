package daemon

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/interlock-dev/interlock/policy"
	"github.com/interlock-dev/interlock/policy/sqlclass"
)

// startupSettings lists the run-time parameters a StartupMessage sets: its
// parameters other than user and database (protocol options, _pq_.*, are
// the decoder's), and the settings the options parameter gives with
// "-c name=value" or "--name=value". Anything else in options is an error,
// since it could carry a setting in a form not parsed here; so is a
// replication connection, which no statement policy can decide.
func startupSettings(params map[string]string) ([]string, error) {
	var names []string
	for _, name := range slices.Sorted(maps.Keys(params)) {
		value := params[name]
		switch strings.ToLower(name) {
		case "user", "database":
			continue
		case "replication":
			return nil, fmt.Errorf("replication connections are not allowed through interlock")
		case "options":
			opts, err := optionSettings(value)
			if err != nil {
				return nil, err
			}
			names = append(names, opts...)
			continue
		}
		if strings.HasPrefix(name, "_pq_.") {
			continue
		}
		names = append(names, name)
	}
	return names, nil
}

func optionSettings(options string) ([]string, error) {
	var names []string
	f := strings.Fields(options)
	for i := 0; i < len(f); i++ {
		var setting string
		switch {
		case f[i] == "-c" && i+1 < len(f):
			i++
			setting = f[i]
		case strings.HasPrefix(f[i], "-c"):
			setting = f[i][2:]
		case strings.HasPrefix(f[i], "--"):
			setting = f[i][2:]
		default:
			return nil, fmt.Errorf("startup option %q is not allowed through interlock", f[i])
		}
		name, _, ok := strings.Cut(setting, "=")
		if !ok {
			return nil, fmt.Errorf("startup option %q is not allowed through interlock", f[i])
		}
		names = append(names, strings.ReplaceAll(name, "-", "_"))
	}
	return names, nil
}

// startupVerdict is the policy's decision on one startup setting.
type startupVerdict struct {
	name     string
	decision policy.Decision
}

// decideStartup decides the startup settings like the SET each stands for,
// since a setting in the StartupMessage changes the session as that SET
// would, with no statement to decide later. Settings of the session class
// and below (application_name, client_encoding, DateStyle, timeouts) pass
// without a decision, as they always have: every client sends some, and a
// policy that allows only reads would otherwise refuse psql at connect. The
// others (role, search_path, default_transaction_read_only, ...) get the
// decision their SET would get; an approval becomes a denial, since a
// connection cannot wait for one.
func decideStartup(pol *policy.Policy, subj *policy.Subject, t *policy.Target, names []string) []startupVerdict {
	var out []startupVerdict
	for _, name := range names {
		st := sqlclass.SettingStatement(name)
		if st.Class <= sqlclass.Session {
			continue
		}
		dec := pol.Decide(&policy.Input{Subject: subj, Target: t, Protocol: "postgres",
			Op: policy.Operation{Kind: policy.OpSQL, SQL: &st}})
		if dec.Action == policy.Approve {
			dec = policy.Decision{Action: policy.Deny, Rule: dec.Rule,
				Message: "it needs an approval, which a connection cannot wait for; SET it once connected"}
		}
		out = append(out, startupVerdict{name: name, decision: dec})
	}
	return out
}
