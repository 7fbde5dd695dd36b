package postgres

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/decoders/transcript"
)

// maxRowsShown is how many rows of each result a transcript prints.
const maxRowsShown = 5

// Transcript describes a recorded PostgreSQL session for a reader
// (`interlock replay`): startup, statements, bind parameters, result columns
// and the first rows as the agent saw them, command tags with row counts
// such as "SELECT 3, 3 rows", errors and notices. Message bodies are decoded
// with pgproto3. It implements transcript.Describer; use one per session.
// It is not safe for concurrent use.
type Transcript struct {
	columns []string
	rows    int
	shown   int
	copied  int64
}

// Finish reports rows of a result the recording ends in the middle of.
func (p *Transcript) Finish() []string {
	if p.rows > p.shown {
		return []string{fmt.Sprintf("... %d more rows (no command tag: the session ended mid-result)", p.rows-p.shown)}
	}
	return nil
}

// Describe returns the transcript lines of one recorded message: typ is its
// type byte, 0 for the untyped packets that open a session (startup,
// SSLRequest, CancelRequest) and for the server's one-byte answer to an
// SSLRequest or GSSENCRequest. Protocol plumbing (Sync, ParseComplete,
// BackendKeyData...) has no lines; a body that does not decode gets a line
// saying so.
func (p *Transcript) Describe(fromClient bool, typ byte, body []byte) []string {
	if fromClient {
		return p.client(typ, body)
	}
	return p.server(typ, body)
}

func (p *Transcript) client(typ byte, b []byte) []string {
	bad := func(err error) []string {
		return []string{fmt.Sprintf("malformed %q message (%d bytes): %v", typ, len(b), err)}
	}
	switch typ {
	case 0:
		if len(b) < 4 {
			return []string{fmt.Sprintf("short startup packet (%d bytes)", len(b))}
		}
		switch code := binary.BigEndian.Uint32(b); code {
		case sslRequestCode:
			return []string{"SSLRequest"}
		case gssEncRequestCode:
			return []string{"GSSENCRequest"}
		case cancelRequestCode:
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
	return []string{fmt.Sprintf("message %q (%d bytes)", typ, len(b))}
}

func (p *Transcript) server(typ byte, b []byte) []string {
	bad := func(err error) []string {
		return []string{fmt.Sprintf("malformed %q message (%d bytes): %v", typ, len(b), err)}
	}
	switch typ {
	case 0:
		return []string{fmt.Sprintf("answer %q", b)}
	case 'R':
		if len(b) < 4 {
			return bad(errors.New("short"))
		}
		switch binary.BigEndian.Uint32(b) {
		case pgproto3.AuthTypeOk:
			return []string{"authentication ok"}
		case pgproto3.AuthTypeCleartextPassword:
			return []string{"authentication: cleartext password requested"}
		case pgproto3.AuthTypeMD5Password:
			return []string{"authentication: md5 password requested"}
		case pgproto3.AuthTypeSASL:
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
		if typ == 'N' {
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
		return []string{map[byte]string{'G': "copy in started", 'H': "copy out started", 'W': "copy both started"}[typ]}
	case 'd':
		p.copied += int64(len(b))
		return nil
	case 'c':
		n := p.copied
		p.copied = 0
		return []string{fmt.Sprintf("copy done (%d bytes received)", n)}
	}
	return []string{fmt.Sprintf("message %q (%d bytes)", typ, len(b))}
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
	return transcript.Printable(v, 64)
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
