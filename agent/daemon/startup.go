package daemon

import (
	"fmt"
	"strings"

	"github.com/interlock-dev/interlock/policy/sqlclass"
)

// checkStartupParameters refuses startup parameters that would change the
// session without a statement the policy could decide: a role, a
// search_path that makes a "read" call a look-alike function, a
// read-only default switched off. Parameters of class Session and below
// (application_name, client_encoding, DateStyle, ...) pass; so do those the
// options parameter sets with "-c name=value" or "--name=value". Anything
// else in options is refused too, since it could carry such a setting in a
// form not parsed here.
func checkStartupParameters(params map[string]string) error {
	for name, value := range params {
		switch strings.ToLower(name) {
		case "user", "database":
			continue
		case "replication":
			return fmt.Errorf("replication connections are not allowed through interlock")
		case "options":
			if err := checkOptions(value); err != nil {
				return err
			}
			continue
		}
		if err := checkSetting(name); err != nil {
			return err
		}
	}
	return nil
}

func checkOptions(options string) error {
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
			return fmt.Errorf("startup option %q is not allowed through interlock", f[i])
		}
		name, _, ok := strings.Cut(setting, "=")
		if !ok {
			return fmt.Errorf("startup option %q is not allowed through interlock", f[i])
		}
		if err := checkSetting(strings.ReplaceAll(name, "-", "_")); err != nil {
			return err
		}
	}
	return nil
}

func checkSetting(name string) error {
	if c := sqlclass.SettingClass(name); c > sqlclass.Session {
		return fmt.Errorf("startup parameter %q is not allowed through interlock (it changes the session as %s)", name, c)
	}
	return nil
}
