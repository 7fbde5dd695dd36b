package http

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	nethttp "net/http"
	"strconv"
	"strings"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// MaxMaskedBody caps a response body a Mask verdict rewrites: it is held
// whole. A larger one is refused (502) rather than passed on unmasked.
const MaxMaskedBody = 16 << 20

// maskResponse rewrites resp's body under a Mask verdict: a JSON body's
// string and number fields by their dotted path (array elements take their
// array's path), a text body as one field named "body". Content-Encoding
// gzip is undone and redone; the body goes out with its new length. A body
// it cannot mask (another type or encoding, too large, not the JSON it
// says) is an error: the caller refuses the response rather than pass it
// on unmasked.
func maskResponse(resp *nethttp.Response, m protocol.Masker) error {
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	isJSON := ct == "application/json" || strings.HasSuffix(ct, "+json")
	if !isJSON && !strings.HasPrefix(ct, "text/") {
		return fmt.Errorf("cannot mask a response of type %q", ct)
	}
	enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding")))
	if enc != "" && enc != "identity" && enc != "gzip" {
		return fmt.Errorf("cannot mask a response encoded %q", enc)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxMaskedBody+1))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read the response to mask: %w", err)
	}
	if len(raw) > MaxMaskedBody {
		return fmt.Errorf("cannot mask a response over %d bytes", MaxMaskedBody)
	}
	if len(raw) == 0 {
		// Nothing to mask (HEAD, 204, 304).
		resp.Body = nethttp.NoBody
		return nil
	}
	body := raw
	if enc == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("gunzip the response to mask: %w", err)
		}
		if body, err = io.ReadAll(io.LimitReader(zr, MaxMaskedBody+1)); err != nil || len(body) > MaxMaskedBody {
			return fmt.Errorf("gunzip the response to mask: %v (at most %d bytes)", err, MaxMaskedBody)
		}
	}
	if isJSON {
		body, err = maskJSON(m, body)
	} else if fm := m.Plan([]string{"body"}); fm != nil {
		if masked, changed := fm.Mask(nil, 0, body); changed {
			body = masked
		}
	}
	if err != nil {
		return err
	}
	if enc == "gzip" {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write(body)
		zw.Close()
		body = zb.Bytes()
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.TransferEncoding = nil
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	// The masked body is not the one these describe.
	resp.Header.Del("Etag")
	resp.Header.Del("Content-Md5")
	resp.Header.Del("Digest")
	return nil
}

// maskJSON rewrites the fields of a JSON document that m masks. It reads
// the document twice with encoding/json's tokenizer: once for the paths of
// its fields (m plans them all at once), once to write it out, compact,
// with each masked value as a string.
func maskJSON(m protocol.Masker, doc []byte) ([]byte, error) {
	var paths []string
	if err := walkJSON(doc, func(path string, _ json.Token) { paths = append(paths, path) }, nil); err != nil {
		return nil, err
	}
	fm := m.Plan(paths)
	if fm == nil {
		return doc, nil
	}
	var out bytes.Buffer
	i := 0
	err := walkJSON(doc, func(_ string, tok json.Token) {
		v := leafText(tok)
		if masked, changed := fm.Mask(nil, i, []byte(v)); changed {
			tok = string(masked)
		}
		i++
		b, _ := json.Marshal(tok)
		out.Write(b)
	}, &out)
	return out.Bytes(), err
}

// leafText is a string or number field's value as text.
func leafText(tok json.Token) string {
	if s, ok := tok.(string); ok {
		return s
	}
	return tok.(json.Number).String()
}

// jsonFrame is one open object or array of walkJSON.
type jsonFrame struct {
	obj  bool
	n    int    // members written
	key  string // the current member's key (objects)
	path string // the frame's own path
}

// walkJSON reads one JSON document token by token and calls leaf for each
// string or number value with its dotted path. When out is set, it writes
// the document there, compact, except leaves, which leaf writes itself.
func walkJSON(doc []byte, leaf func(path string, tok json.Token), out *bytes.Buffer) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var stack []jsonFrame
	write := func(s string) {
		if out != nil {
			out.WriteString(s)
		}
	}
	// beforeValue writes what separates a value from the one before it and
	// returns the value's path.
	beforeValue := func() string {
		if len(stack) == 0 {
			return ""
		}
		f := &stack[len(stack)-1]
		if f.obj {
			return joinPath(f.path, f.key)
		}
		if f.n > 0 {
			write(",")
		}
		f.n++
		return f.path
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return errors.New("the JSON document ends early")
		}
		if err != nil {
			return fmt.Errorf("the response is not the JSON it says: %w", err)
		}
		if len(stack) > 0 && stack[len(stack)-1].obj && isKey(&stack[len(stack)-1], tok) {
			f := &stack[len(stack)-1]
			if f.n > 0 {
				write(",")
			}
			f.n++
			f.key = tok.(string)
			b, _ := json.Marshal(f.key)
			write(string(b) + ":")
			continue
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				path := beforeValue()
				write(t.String())
				stack = append(stack, jsonFrame{obj: t == '{', path: path, key: keyPending})
			default:
				stack = stack[:len(stack)-1]
				write(t.String())
				markValueDone(stack)
			}
		case string, json.Number:
			path := beforeValue()
			leaf(path, t)
			markValueDone(stack)
		default:
			beforeValue()
			b, _ := json.Marshal(t)
			write(string(b))
			markValueDone(stack)
		}
		if len(stack) == 0 {
			break
		}
	}
	// JSON's white space only (bytes.TrimSpace would pass a \v).
	if len(bytes.Trim(doc[dec.InputOffset():], " \t\r\n")) > 0 {
		return errors.New("the response holds more than one JSON document")
	}
	return nil
}

// keyPending marks an object frame whose next token is a key.
const keyPending = "\x00"

func isKey(f *jsonFrame, tok json.Token) bool {
	_, isString := tok.(string)
	return isString && f.key == keyPending
}

// markValueDone notes that the open object's member got its value, so its
// next token is a key.
func markValueDone(stack []jsonFrame) {
	if len(stack) > 0 && stack[len(stack)-1].obj {
		stack[len(stack)-1].key = keyPending
	}
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}
