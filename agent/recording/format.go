package recording

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// A recording file is a header and a stream of frames:
//
//	file    = magic header-len(uvarint) header(JSON) frame*
//	frame   = kind(1) ...
//	message = kind(1: from client, 2: from server) type(1) dt(varint) len(uvarint) body
//	verdict = kind(3) dt(varint) seq(uvarint) enforced(1) str(action) str(rule) str(reason) str(approval) str(statement)
//	str     = len(uvarint) bytes
//
// dt is nanoseconds since the header's start time. Messages are numbered
// from 0 in file order (their seq); a verdict names the seq of the request
// it judged. A file cut short by a crash reads up to its last whole frame.
const magic = "ILREC1\n"

const (
	kindClient  = 1
	kindServer  = 2
	kindVerdict = 3
)

// maxFrameBody bounds a frame's body when reading, so a corrupt length never
// makes the reader allocate gigabytes. The proxy's decoders cap messages far
// below this.
const maxFrameBody = 1 << 30

// Header is the self-description at the start of a recording file, enough to
// export it without the store.
type Header struct {
	Version  int    `json:"v"`
	Session  string `json:"session"`
	Host     string `json:"host"`
	Protocol string `json:"protocol"`
	Client   string `json:"client"`
	Upstream string `json:"upstream"`
	Started  int64  `json:"started_ns"`
}

// Verdict is the policy decision on one request, as recorded beside it.
type Verdict struct {
	Action string // "allow", "deny", "mask", "approve"
	Rule   string
	Reason string
	// Enforced is false in audit mode: the action is what the policy would
	// have done.
	Enforced   bool
	ApprovalID string
	// Statement is the request as the policy saw it (for example one SQL
	// statement of a multi-statement Query); it is stored with the decision
	// so sessions can be filtered and re-decided without decoding the file.
	Statement string
	// Op is the operation the statement was decided as, where its protocol
	// names one (an SSH request, an HTTP method): stored with the decision
	// for replays, not written to the file, whose message beside the
	// verdict says it.
	Op string
}

// Frame is one recorded item: a protocol message or a verdict.
type Frame struct {
	// Seq numbers messages from 0; for a verdict it is the judged request.
	Seq  int64
	Time time.Time
	// IsVerdict tells a verdict (Verdict set) from a message (FromClient,
	// Type and Body set).
	IsVerdict  bool
	FromClient bool
	Type       byte
	Body       []byte
	Verdict    Verdict
}

// Reader reads a recording file frame by frame. It is not safe for
// concurrent use.
type Reader struct {
	c      io.Closer
	r      *bufio.Reader
	header Header
	start  time.Time
	seq    int64
}

// OpenFile opens the recording at path and reads its header.
func OpenFile(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open recording: %w", err)
	}
	r, err := NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.c = f
	return r, nil
}

// NewReader reads a recording from rd, starting with its header.
func NewReader(rd io.Reader) (*Reader, error) {
	r := &Reader{r: bufio.NewReaderSize(rd, 64<<10)}
	m := make([]byte, len(magic))
	if _, err := io.ReadFull(r.r, m); err != nil || string(m) != magic {
		return nil, fmt.Errorf("read recording header: not an Interlock recording")
	}
	n, err := binary.ReadUvarint(r.r)
	if err != nil || n > 1<<20 {
		return nil, fmt.Errorf("read recording header: bad length")
	}
	hb := make([]byte, n)
	if _, err := io.ReadFull(r.r, hb); err != nil {
		return nil, fmt.Errorf("read recording header: %w", err)
	}
	if err := json.Unmarshal(hb, &r.header); err != nil {
		return nil, fmt.Errorf("decode recording header: %w", err)
	}
	r.start = time.Unix(0, r.header.Started).UTC()
	return r, nil
}

// Header returns the file's header.
func (r *Reader) Header() Header { return r.header }

// Close closes the file opened by OpenFile or Open.
func (r *Reader) Close() error {
	if r.c == nil {
		return nil
	}
	return r.c.Close()
}

// Next returns the next frame; io.EOF after the last whole frame, and
// io.ErrUnexpectedEOF when the file ends inside a frame (a session that was
// cut short). The returned Body is freshly allocated.
func (r *Reader) Next() (Frame, error) {
	kind, err := r.r.ReadByte()
	if err != nil {
		return Frame{}, err // io.EOF at a frame boundary
	}
	var fr Frame
	switch kind {
	case kindClient, kindServer:
		typ, err := r.r.ReadByte()
		if err != nil {
			return fr, unexpected(err)
		}
		dt, err := binary.ReadVarint(r.r)
		if err != nil {
			return fr, unexpected(err)
		}
		body, err := r.bytes()
		if err != nil {
			return fr, err
		}
		fr = Frame{Seq: r.seq, Time: r.start.Add(time.Duration(dt)), FromClient: kind == kindClient, Type: typ, Body: body}
		r.seq++
		return fr, nil
	case kindVerdict:
		dt, err := binary.ReadVarint(r.r)
		if err != nil {
			return fr, unexpected(err)
		}
		seq, err := binary.ReadUvarint(r.r)
		if err != nil {
			return fr, unexpected(err)
		}
		enforced, err := r.r.ReadByte()
		if err != nil {
			return fr, unexpected(err)
		}
		var strs [5]string
		for i := range strs {
			b, err := r.bytes()
			if err != nil {
				return fr, err
			}
			strs[i] = string(b)
		}
		return Frame{Seq: int64(seq), Time: r.start.Add(time.Duration(dt)), IsVerdict: true,
			Verdict: Verdict{Action: strs[0], Rule: strs[1], Reason: strs[2], Enforced: enforced == 1,
				ApprovalID: strs[3], Statement: strs[4]}}, nil
	default:
		return fr, fmt.Errorf("read recording: unknown frame kind %d", kind)
	}
}

func (r *Reader) bytes() ([]byte, error) {
	n, err := binary.ReadUvarint(r.r)
	if err != nil {
		return nil, unexpected(err)
	}
	if n > maxFrameBody {
		return nil, fmt.Errorf("read recording: frame of %d bytes is corrupt", n)
	}
	// Grow with what is actually read, so a corrupt length in a short file
	// costs no more memory than the file holds.
	b := make([]byte, 0, min(n, 64<<10))
	for uint64(len(b)) < n {
		chunk := min(n-uint64(len(b)), 64<<10)
		b = append(b, make([]byte, chunk)...)
		if _, err := io.ReadFull(r.r, b[uint64(len(b))-chunk:]); err != nil {
			return nil, unexpected(err)
		}
	}
	return b, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendMessage encodes a message frame onto dst without allocating when dst
// has room.
func appendMessage(dst []byte, fromClient bool, typ byte, dt int64, body []byte) []byte {
	kind := byte(kindServer)
	if fromClient {
		kind = kindClient
	}
	dst = append(dst, kind, typ)
	dst = binary.AppendVarint(dst, dt)
	dst = binary.AppendUvarint(dst, uint64(len(body)))
	return append(dst, body...)
}

func appendVerdict(dst []byte, seq int64, dt int64, v Verdict) []byte {
	dst = append(dst, kindVerdict)
	dst = binary.AppendVarint(dst, dt)
	dst = binary.AppendUvarint(dst, uint64(seq))
	enforced := byte(0)
	if v.Enforced {
		enforced = 1
	}
	dst = append(dst, enforced)
	for _, s := range [...]string{v.Action, v.Rule, v.Reason, v.ApprovalID, v.Statement} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	return dst
}
