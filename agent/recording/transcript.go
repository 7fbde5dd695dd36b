package recording

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/store"
)

// maxRowsShown is how many rows of each result a transcript prints.
const maxRowsShown = 5

// Replay writes the transcript of session id to w (`interlock replay ID`).
// The header says whether the recording still matches its sealed hash.
func Replay(ctx context.Context, st *store.Store, id string, w io.Writer) error {
	ss, err := st.Session(ctx, id)
	if err != nil {
		return err
	}
	rd, err := Open(ctx, st, ss)
	if err != nil {
		return err
	}
	defer rd.Close()
	seal := "open (not sealed yet)"
	if ss.RecordingSHA256 != "" {
		if err := Verify(ctx, st, id); err != nil {
			seal = "TAMPERED: " + err.Error()
		} else {
			seal = "sha256 " + ss.RecordingSHA256 + " (verified)"
		}
	}
	return Transcript(w, ss, seal, rd)
}

// Transcript writes a readable account of a recording: a header from the
// session row, then one line per message that matters to a reader (for
// PostgreSQL: startup, statements, bind parameters, decisions with their
// rule, result columns and the first rows as the agent saw them, command
// tags with row counts such as "SELECT 3, 3 rows", errors and notices), each
// with its seq and its offset from the session start. seal describes the
// recording's integrity for the header.
func Transcript(w io.Writer, ss store.Session, seal string, rd *Reader) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "session %s  %s -> %s (%s) on %s\n", ss.ID, ss.Identity, ss.Target, ss.Protocol, ss.Host)
	fmt.Fprintf(bw, "  process pid %d uid %d exe %s cgroup %s\n", ss.PID, ss.UID, ss.Exe, ss.Cgroup)
	fmt.Fprintf(bw, "  client %s  upstream %s\n", ss.ClientAddr, ss.UpstreamAddr)
	fmt.Fprintf(bw, "  started %s", ss.Started.Format(time.RFC3339Nano))
	if !ss.Ended.IsZero() {
		fmt.Fprintf(bw, "  ended %s (%s)  outcome %s  %d messages  in %d B  out %d B",
			ss.Ended.Format(time.RFC3339Nano), ss.Ended.Sub(ss.Started).Round(time.Microsecond), ss.Outcome,
			ss.Messages, ss.BytesIn, ss.BytesOut)
	}
	fmt.Fprintf(bw, "\n  recording %s\n\n", seal)

	var rn renderer = genericRenderer{}
	if ss.Protocol == "postgresql" || rd.Header().Protocol == "postgresql" {
		rn = &pgRenderer{}
	}
	start := ss.Started
	if start.IsZero() {
		start = time.Unix(0, rd.Header().Started)
	}
	for {
		fr, err := rd.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			fmt.Fprintf(bw, "(recording ends inside a frame: the session was cut short)\n")
			break
		}
		if err != nil {
			bw.Flush()
			return err
		}
		prefix := fmt.Sprintf("#%-4d +%10.6fs ", fr.Seq, fr.Time.Sub(start).Seconds())
		if fr.IsVerdict {
			v := fr.Verdict
			act := v.Action
			if !v.Enforced {
				act = "would " + act + " (audit mode)"
			}
			fmt.Fprintf(bw, "%s   decision: %s", strings.Repeat(" ", len(prefix)), act)
			if v.Rule != "" {
				fmt.Fprintf(bw, " by rule %s", v.Rule)
			}
			if v.Reason != "" {
				fmt.Fprintf(bw, ": %s", v.Reason)
			}
			if v.ApprovalID != "" {
				fmt.Fprintf(bw, " [approval %s]", v.ApprovalID)
			}
			fmt.Fprintf(bw, " (request #%d)\n", fr.Seq)
			continue
		}
		dir := "<-"
		if fr.FromClient {
			dir = "->"
		}
		for _, line := range rn.render(fr) {
			fmt.Fprintf(bw, "%s%s %s\n", prefix, dir, line)
			prefix = strings.Repeat(" ", len(prefix))
		}
	}
	for _, line := range rn.finish() {
		fmt.Fprintf(bw, "%s\n", line)
	}
	return bw.Flush()
}

type renderer interface {
	render(Frame) []string
	finish() []string
}

// genericRenderer shows any protocol's messages by type and size with a
// printable excerpt.
type genericRenderer struct{}

func (genericRenderer) render(fr Frame) []string {
	t := "data"
	if fr.Type != 0 {
		t = fmt.Sprintf("type %q", fr.Type)
	}
	return []string{fmt.Sprintf("%s %d bytes: %s", t, len(fr.Body), printable(fr.Body, 80))}
}

func (genericRenderer) finish() []string { return nil }

// pgRenderer decodes PostgreSQL messages with pgproto3.
type pgRenderer struct {
	columns []string
	rows    int
	shown   int
	copied  int64
}

// finish reports rows of a result the recording ends in the middle of.
func (p *pgRenderer) finish() []string {
	if p.rows > p.shown {
		return []string{fmt.Sprintf("... %d more rows (no command tag: the session ended mid-result)", p.rows-p.shown)}
	}
	return nil
}

func (p *pgRenderer) render(fr Frame) []string {
	if fr.FromClient {
		return p.client(fr)
	}
	return p.server(fr)
}

func (p *pgRenderer) client(fr Frame) []string {
	b := fr.Body
	bad := func(err error) []string {
		return []string{fmt.Sprintf("malformed %q message (%d bytes): %v", fr.Type, len(b), err)}
	}
	switch fr.Type {
	case 0:
		if len(b) < 4 {
			return []string{fmt.Sprintf("short startup packet (%d bytes)", len(b))}
		}
		switch code := binary.BigEndian.Uint32(b); code {
		case 80877103:
			return []string{"SSLRequest"}
		case 80877104:
			return []string{"GSSENCRequest"}
		case 80877102:
			var m pgproto3.CancelRequest
			if err := m.Decode(b); err != nil {
				return bad(err)
			}
			return []string{fmt.Sprintf("CancelRequest for backend pid %d", m.ProcessID)}
		default:
			var m pgproto3.StartupMessage
			if err := m.Decode(b); err != nil {
				return bad(err)
			}
			keys := make([]string, 0, len(m.Parameters))
			for k := range m.Parameters {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var sb strings.Builder
			fmt.Fprintf(&sb, "startup protocol %d.%d", m.ProtocolVersion>>16, m.ProtocolVersion&0xffff)
			for _, k := range keys {
				fmt.Fprintf(&sb, " %s=%s", k, m.Parameters[k])
			}
			return []string{sb.String()}
		}
	case 'Q':
		var m pgproto3.Query
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		return []string{"query: " + oneLine(m.String)}
	case 'P':
		var m pgproto3.Parse
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		name := m.Name
		if name == "" {
			name = "unnamed"
		}
		return []string{fmt.Sprintf("parse %s: %s", name, oneLine(m.Query))}
	case 'B':
		var m pgproto3.Bind
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		params := make([]string, len(m.Parameters))
		for i, v := range m.Parameters {
			binary := len(m.ParameterFormatCodes) == 1 && m.ParameterFormatCodes[0] == 1 ||
				i < len(m.ParameterFormatCodes) && len(m.ParameterFormatCodes) > 1 && m.ParameterFormatCodes[i] == 1
			params[i] = fmt.Sprintf("$%d=%s", i+1, value(v, binary))
		}
		return []string{fmt.Sprintf("bind %s%s", orUnnamed(m.PreparedStatement), paren(params))}
	case 'E':
		var m pgproto3.Execute
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		if m.MaxRows > 0 {
			return []string{fmt.Sprintf("execute %s (max %d rows)", orUnnamed(m.Portal), m.MaxRows)}
		}
		return []string{"execute " + orUnnamed(m.Portal)}
	case 'X':
		return []string{"terminate"}
	case 'p':
		return []string{"password message (not recorded)"}
	case 'd':
		p.copied += int64(len(b))
		return nil
	case 'c':
		n := p.copied
		p.copied = 0
		return []string{fmt.Sprintf("copy done (%d bytes sent)", n)}
	case 'f':
		var m pgproto3.CopyFail
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		return []string{"copy fail: " + m.Message}
	case 'F':
		var m pgproto3.FunctionCall
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		return []string{fmt.Sprintf("function call oid %d (%d args)", m.Function, len(m.Arguments))}
	case 'S', 'H', 'D', 'C':
		return nil // Sync, Flush, Describe, Close: protocol plumbing
	}
	return []string{fmt.Sprintf("message %q (%d bytes)", fr.Type, len(b))}
}

func (p *pgRenderer) server(fr Frame) []string {
	b := fr.Body
	bad := func(err error) []string {
		return []string{fmt.Sprintf("malformed %q message (%d bytes): %v", fr.Type, len(b), err)}
	}
	switch fr.Type {
	case 0:
		return []string{fmt.Sprintf("answer %q", b)}
	case 'R':
		if len(b) < 4 {
			return bad(errors.New("short"))
		}
		switch binary.BigEndian.Uint32(b) {
		case 0:
			return []string{"authentication ok"}
		case 3:
			return []string{"authentication: cleartext password requested"}
		case 5:
			return []string{"authentication: md5 password requested"}
		case 10:
			var m pgproto3.AuthenticationSASL
			if err := m.Decode(b); err != nil {
				return bad(err)
			}
			return []string{"authentication: SASL " + strings.Join(m.AuthMechanisms, ", ")}
		}
		return nil
	case 'S':
		var m pgproto3.ParameterStatus
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		if m.Name == "server_version" {
			return []string{"server version " + m.Value}
		}
		return nil
	case 'K', '1', '2', '3', 'n', 't':
		return nil // BackendKeyData, Parse/Bind/CloseComplete, NoData, ParameterDescription
	case 'Z':
		var m pgproto3.ReadyForQuery
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		switch m.TxStatus {
		case 'T':
			return []string{"ready (in transaction)"}
		case 'E':
			return []string{"ready (failed transaction)"}
		}
		return nil
	case 'T':
		var m pgproto3.RowDescription
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		p.columns = p.columns[:0]
		for _, f := range m.Fields {
			p.columns = append(p.columns, string(f.Name))
		}
		p.rows, p.shown = 0, 0
		return []string{"columns: " + strings.Join(p.columns, ", ")}
	case 'D':
		var m pgproto3.DataRow
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		p.rows++
		if p.shown >= maxRowsShown {
			return nil
		}
		p.shown++
		vals := make([]string, len(m.Values))
		for i, v := range m.Values {
			vals[i] = value(v, false)
		}
		return []string{"row: " + strings.Join(vals, " | ")}
	case 'C':
		var m pgproto3.CommandComplete
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		out := []string{}
		if p.rows > p.shown {
			out = append(out, fmt.Sprintf("... %d more rows", p.rows-p.shown))
		}
		tag := string(m.CommandTag)
		if p.rows > 0 || len(p.columns) > 0 {
			tag = fmt.Sprintf("%s, %d rows", tag, p.rows)
		}
		p.rows, p.shown, p.columns = 0, 0, p.columns[:0]
		return append(out, tag)
	case 's':
		n := p.rows
		p.rows, p.shown = 0, 0
		return []string{fmt.Sprintf("portal suspended, %d rows", n)}
	case 'I':
		return []string{"empty query"}
	case 'E', 'N':
		var m pgproto3.ErrorResponse
		if fr.Type == 'N' {
			var n pgproto3.NoticeResponse
			if err := n.Decode(b); err != nil {
				return bad(err)
			}
			m = pgproto3.ErrorResponse(n)
		} else if err := m.Decode(b); err != nil {
			return bad(err)
		}
		line := fmt.Sprintf("%s %s: %s", m.Severity, m.Code, m.Message)
		if m.Detail != "" {
			line += " (" + m.Detail + ")"
		}
		return []string{line}
	case 'A':
		var m pgproto3.NotificationResponse
		if err := m.Decode(b); err != nil {
			return bad(err)
		}
		return []string{fmt.Sprintf("notification on %s from pid %d: %s", m.Channel, m.PID, m.Payload)}
	case 'G', 'H', 'W':
		return []string{map[byte]string{'G': "copy in started", 'H': "copy out started", 'W': "copy both started"}[fr.Type]}
	case 'd':
		p.copied += int64(len(b))
		return nil
	case 'c':
		n := p.copied
		p.copied = 0
		return []string{fmt.Sprintf("copy done (%d bytes received)", n)}
	}
	return []string{fmt.Sprintf("message %q (%d bytes)", fr.Type, len(b))}
}

func orUnnamed(s string) string {
	if s == "" {
		return "unnamed"
	}
	return s
}

func paren(ps []string) string {
	if len(ps) == 0 {
		return ""
	}
	return " (" + strings.Join(ps, ", ") + ")"
}

// value renders one field: NULL, quoted text, or hex for binary and
// non-UTF-8 data; long values are cut.
func value(v []byte, binary bool) string {
	if v == nil {
		return "NULL"
	}
	if binary || !utf8.Valid(v) {
		if len(v) > 32 {
			return fmt.Sprintf("\\x%s... (%d bytes)", hex.EncodeToString(v[:32]), len(v))
		}
		return "\\x" + hex.EncodeToString(v)
	}
	return printable(v, 64)
}

// printable cuts b to max runes and escapes control characters.
func printable(b []byte, max int) string {
	s := string(b)
	cut := false
	if utf8.RuneCountInString(s) > max {
		r := []rune(s)
		s, cut = string(r[:max]), true
	}
	q := fmt.Sprintf("%q", s)
	q = q[1 : len(q)-1]
	if cut {
		q += fmt.Sprintf("... (%d bytes)", len(b))
	}
	return q
}

// oneLine keeps a statement on one transcript line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 1000 {
		s = s[:1000] + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return lineBreaks.Replace(s)
}

var lineBreaks = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ", "\t", " ")
