package main

import (
	"fmt"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// login is what `interlock exec --user NAME` gives the command: the user's
// uid, primary and supplementary groups, and the environment a login sets.
type login struct {
	cred *syscall.Credential
	env  map[string]string
}

// lookupLogin resolves a user name (or numeric uid) the way login(1) would:
// every group the user belongs to, HOME from the user database.
func lookupLogin(name string) (login, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var uerr error
		if u, uerr = user.LookupId(name); uerr != nil {
			return login{}, fmt.Errorf("look up user %s: %w", name, err)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return login{}, fmt.Errorf("parse uid of %s: %w", name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return login{}, fmt.Errorf("parse gid of %s: %w", name, err)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return login{}, fmt.Errorf("look up groups of %s: %w", name, err)
	}
	groups := make([]uint32, 0, len(ids))
	for _, id := range ids {
		g, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return login{}, fmt.Errorf("parse group %s of %s: %w", id, name, err)
		}
		groups = append(groups, uint32(g))
	}
	return login{
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups},
		env:  map[string]string{"HOME": u.HomeDir, "USER": u.Username, "LOGNAME": u.Username},
	}, nil
}

// environ returns base with the login's variables set, and without the
// ones that name the invoking user's identity to tools (sudo's SUDO_*,
// root's mail spool).
func (l login) environ(base []string) []string {
	out := make([]string, 0, len(base)+len(l.env))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, set := l.env[k]; set || k == "MAIL" || strings.HasPrefix(k, "SUDO_") {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range l.env {
		out = append(out, k+"="+v)
	}
	return out
}
