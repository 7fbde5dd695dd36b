package testenv

import "testing"

func TestStartPostgres(t *testing.T) {
	Privileged(t)
	pg := StartPostgres(t)
	if got := pg.Psql(t, "select 40+2"); got != "42" {
		t.Fatalf("select 40+2 = %q", got)
	}
}
