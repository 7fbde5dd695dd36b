package sqlclass

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/classify.golden from the classifier's output")

type goldenCase struct {
	sql  string
	want []string
	line int
}

// readGolden splits the golden file into cases: SQL lines, then "=>" lines.
func readGolden(t *testing.T, path string) (header []string, cases []goldenCase) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var cur goldenCase
	var sqlLines []string
	n := 0
	flush := func() {
		if len(sqlLines) > 0 {
			cur.sql = strings.Join(sqlLines, "\n")
			cases = append(cases, cur)
		}
		cur, sqlLines = goldenCase{}, nil
	}
	for sc.Scan() {
		n++
		l := sc.Text()
		switch {
		case len(cases) == 0 && len(sqlLines) == 0 && (strings.HasPrefix(l, "#") || l == ""):
			if len(cases) == 0 {
				header = append(header, l)
			}
		case l == "":
			flush()
		case strings.HasPrefix(l, "=>"):
			cur.want = append(cur.want, strings.TrimSpace(strings.TrimPrefix(l, "=>")))
		default:
			if len(sqlLines) == 0 {
				cur.line = n
			}
			sqlLines = append(sqlLines, l)
		}
	}
	flush()
	return header, cases
}

// describe renders a classification in the golden file's notation.
func describe(q *Query) []string {
	if q.Err != nil {
		var pe *ParseError
		if errors.As(q.Err, &pe) {
			return []string{fmt.Sprintf("error %s at %d: %s", pe.Code, pe.Position, pe.Message)}
		}
		return []string{"error: " + q.Err.Error()}
	}
	var out []string
	for _, s := range q.Statements {
		f := []string{s.Class.String(), s.Command}
		if s.BaseClass != s.Class {
			f = append(f, "base="+s.BaseClass.String())
		}
		for _, fl := range []struct {
			on   bool
			name string
		}{{s.Destructive, "destructive"}, {s.Lock, "lock"}, {s.Unknowable, "unknowable"}, {s.Multi, "multi"}} {
			if fl.on {
				f = append(f, fl.name)
			}
		}
		if len(s.Tables) > 0 {
			f = append(f, "tables="+strings.Join(s.Tables, ","))
		}
		if len(s.Functions) > 0 {
			f = append(f, "funcs="+strings.Join(s.Functions, ","))
		}
		out = append(out, strings.Join(f, " "))
	}
	return out
}

func TestGolden(t *testing.T) {
	const path = "testdata/classify.golden"
	header, cases := readGolden(t, path)
	if len(cases) < 100 {
		t.Fatalf("golden corpus has %d cases; expected the full corpus", len(cases))
	}
	var b strings.Builder
	for _, h := range header {
		b.WriteString(h + "\n")
	}
	for _, c := range cases {
		q, err := Postgres{}.Classify(c.sql)
		if err != nil {
			q = &Query{Err: err}
		}
		got := describe(q)
		fmt.Fprintf(&b, "%s\n", c.sql)
		for _, g := range got {
			fmt.Fprintf(&b, "=> %s\n", g)
		}
		b.WriteString("\n")
		if *update {
			continue
		}
		if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%s:%d: %q\n got: %q\nwant: %q", path, c.line, c.sql, got, c.want)
		}
	}
	if *update {
		if err := os.WriteFile(path, []byte(strings.TrimRight(b.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSettingClass(t *testing.T) {
	for name, want := range map[string]Class{
		"application_name": Session, "search_path": Admin, "ROLE": DCL, "session_authorization": DCL,
		"standard_conforming_strings": Admin, "statement_timeout": Session, "transaction_isolation": Transaction,
	} {
		if got := SettingClass(name); got != want {
			t.Errorf("SettingClass(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestSettingStatement holds a startup parameter to the classification of
// the SET it stands for.
func TestSettingStatement(t *testing.T) {
	for _, name := range []string{"application_name", "search_path", "Search_Path", "role",
		"session_authorization", "statement_timeout", "transaction_isolation", "DateStyle", "row_security"} {
		q, err := Postgres{}.Classify(fmt.Sprintf("SET %q = 'x'", name))
		if err != nil {
			t.Fatal(err)
		}
		st := SettingStatement(name)
		if got, want := comparable(st)+" "+strings.Join(st.Reasons, ","), comparable(q.Statements[0])+" "+strings.Join(q.Statements[0].Reasons, ","); got != want {
			t.Errorf("%s:\n got: %s\nwant: %s", name, got, want)
		}
	}
	// The shortcut the pipeline takes for the common startup parameters
	// agrees with the statement, "transaction" (SET TRANSACTION) included.
	for _, name := range []string{"application_name", "search_path", "Search_Path", "role", "transaction",
		"session characteristics", "session_authorization", "statement_timeout", "transaction_isolation",
		"DateStyle", "row_security", "client_encoding", "x.custom"} {
		if got, want := SettingStatementClass(name), SettingStatement(name).Class; got != want {
			t.Errorf("SettingStatementClass(%q) = %v, SettingStatement's class %v", name, got, want)
		}
	}
}

// TestNeverRead holds the security property directly, independent of the
// golden file: none of these may ever be classified as a plain read.
func TestNeverRead(t *testing.T) {
	for _, sql := range []string{
		"WITH x AS (DELETE FROM users RETURNING *) SELECT * FROM x",
		"WITH a AS (WITH b AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM b) SELECT * FROM a",
		"SELECT 1; DROP TABLE users",
		"DO $$ BEGIN NULL; END $$",
		"COPY users TO PROGRAM 'sh'",
		"COPY users TO '/tmp/x'",
		"COPY (SELECT 1) TO '/tmp/x'",
		"EXPLAIN ANALYZE DELETE FROM users",
		"EXPLAIN (ANALYZE) INSERT INTO users DEFAULT VALUES",
		"SELECT pg_read_file('/etc/passwd')",
		"SELECT pg_ls_dir('/')",
		"SELECT lo_import('/etc/passwd')",
		"SELECT lo_export(1, '/tmp/x')",
		"SELECT dblink_exec('x', 'DROP TABLE t')",
		"SELECT * FROM dblink('x', 'DELETE FROM t') AS t(a int)",
		"SELECT pg_terminate_backend(1)",
		"SELECT set_config('role', 'postgres', false)",
		"SELECT nextval('s')",
		"SELECT my_func()",
		"SELECT * FROM users FOR UPDATE",
		"SELECT * INTO t2 FROM users",
		"CALL p()",
		"EXECUTE wipe",
		"PREPARE wipe AS DELETE FROM users",
		"SET ROLE postgres",
		"ALTER SYSTEM SET x = 1",
		"TRUNCATE users",
		"VACUUM users",
		"LOCK users",
		"LISTEN x; DELETE FROM y",
		"SELECT query_to_xml('DELETE FROM t RETURNING 1', true, true, '')",
		"SELECT ts_stat('DELETE FROM t RETURNING 1')",
		"SELECT (SELECT pg_sleep(100))",
		"SELECT pg_catalog.set_config('session_authorization', 'postgres', false)",
	} {
		q, err := Postgres{}.Classify(sql)
		if err != nil {
			t.Errorf("%q: unexpected parse error %v", sql, err)
			continue
		}
		if q.Class() == Read {
			t.Errorf("%q classified as read: %q", sql, describe(q))
		}
	}
}
