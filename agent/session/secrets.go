package session

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"io"
	"math/big"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
)

// minSecretLen is the shortest value the leak guard looks for: a shorter
// one would turn up in ordinary traffic by chance. Tokens and generated
// passwords are longer.
const minSecretLen = 8

// secretSet is every secret interlockd holds for a session now (what it
// injects, what it logs in upstream with) and every placeholder standing
// for one, so that the leak guard can find them in what crosses an HTTP
// session. Safe for concurrent use; reads take no lock but the first after
// a change, which builds the snapshot readers share.
//
// Why a change only marks the snapshot stale: every session that logs in
// with a credential registers it and forgets it at its end, and building
// the snapshot is linear in the secrets held. Built at every change, 300
// open PostgreSQL sessions (which never read it) cost each new one 500 KiB
// of garbage and the time to make it.
type secretSet struct {
	mu    sync.Mutex
	regs  map[*secret]struct{}
	kept  map[[2]string]bool // value and owner of what keep registered
	stale atomic.Bool        // regs changed since snap was built
	snap  atomic.Pointer[[]secret]
}

// secret is one value the leak guard knows.
type secret struct {
	value []byte
	// owners are the targets the value may be sent to.
	owners []string
	// real, for a placeholder, is the value it stands for; nil for a
	// secret.
	real []byte
	// shown is what a response carries instead of a secret: its
	// placeholder when one stands for it, else asterisks; same length,
	// so a body's Content-Length stays right. The asterisks are made by
	// the first snapshot that includes the secret (see forms).
	shown []byte
	// placeholder is set on a placeholder and on its encoded forms.
	placeholder bool
	// encoded marks a base64 form of a value (Basic auth carries tokens
	// so): refused where the value is, let through unchanged to its
	// owners, never swapped.
	encoded bool
	// forms are the value's base64 forms (base64Forms), made once, by
	// the first snapshot that includes the secret: only an HTTP session
	// reads the snapshot, and the credential of every other session (a
	// PostgreSQL session's role) would otherwise hold its six forms for
	// as long as it lasts, idle or not, and make them at its start.
	forms [][]byte
}

// ownedBy reports whether target may receive the value.
func (s *secret) ownedBy(target string) bool { return slices.Contains(s.owners, target) }

// add registers a secret of owner; release forgets it. Values shorter
// than minSecretLen are not registered.
func (s *secretSet) add(value, owner string) (release func()) {
	return s.put(&secret{value: []byte(value), owners: []string{owner}})
}

// keep registers a secret of owner for as long as interlockd runs: one
// that stays valid after the session (a static token, a KV secret), so
// that it stays guarded after the session that read it.
func (s *secretSet) keep(value, owner string) {
	s.mu.Lock()
	k := [2]string{value, owner}
	done := s.kept[k]
	if s.kept == nil {
		s.kept = map[[2]string]bool{}
	}
	s.kept[k] = true
	s.mu.Unlock()
	if !done {
		s.add(value, owner)
	}
}

// addPlaceholder registers placeholder as standing for real, a secret of
// owner: on requests to owner it is swapped for real, elsewhere refused,
// and responses show it where real was.
func (s *secretSet) addPlaceholder(placeholder, real, owner string) (release func()) {
	rel := s.put(&secret{value: []byte(placeholder), owners: []string{owner}, real: []byte(real), shown: []byte(placeholder), placeholder: true})
	relReal := s.add(real, owner)
	return func() { rel(); relReal() }
}

func (s *secretSet) put(v *secret) (release func()) {
	if len(v.value) < minSecretLen {
		return func() {}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.regs == nil {
		s.regs = map[*secret]struct{}{}
	}
	s.regs[v] = struct{}{}
	s.stale.Store(true)
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.regs, v)
		s.stale.Store(true)
	}
}

// publish makes the registrations the snapshot readers see, one entry per
// value: its owners merged, a secret shown as its placeholder when one
// stands for it. Callers hold s.mu.
func (s *secretSet) publish() {
	byValue := map[string]*secret{}
	shownAs := map[string][]byte{}
	for r := range s.regs {
		if r.real != nil {
			shownAs[string(r.real)] = r.value
		}
	}
	for r := range s.regs {
		if r.forms == nil {
			r.forms = base64Forms(r.value)
		}
		if r.shown == nil {
			r.shown = bytes.Repeat([]byte("*"), len(r.value))
		}
		e, ok := byValue[string(r.value)]
		if !ok {
			c := *r
			c.owners = slices.Clone(r.owners)
			if ph, ok := shownAs[string(r.value)]; ok {
				c.shown = ph
			}
			byValue[string(r.value)] = &c
			continue
		}
		for _, o := range r.owners {
			if !slices.Contains(e.owners, o) {
				e.owners = append(e.owners, o)
			}
		}
		if r.real != nil {
			e.real = r.real
		}
	}
	snap := make([]secret, 0, 7*len(byValue))
	for _, e := range byValue {
		snap = append(snap, *e)
	}
	for _, e := range byValue {
		for _, form := range e.forms {
			if _, ok := byValue[string(form)]; !ok {
				snap = append(snap, secret{value: form, owners: e.owners, shown: bytes.Repeat([]byte("*"), len(form)),
					placeholder: e.placeholder, encoded: true})
			}
		}
	}
	s.snap.Store(&snap)
}

// base64Forms returns the runs of base64 characters that v always
// becomes inside any longer base64 text, standard and URL alphabets: v
// can start at three offsets of a 3-byte group, and the characters at its
// ends, which mix in the neighbouring bytes, are left out. The six share
// one array: every session's credential keeps them while it lasts.
func base64Forms(v []byte) [][]byte {
	forms := make([][]byte, 0, 6)
	all := make([]byte, 0, 6*base64.StdEncoding.EncodedLen(len(v)+2))
	in := make([]byte, 2+len(v))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for k := range 3 {
			// v after k bytes of zeros, encoded: the run is the same
			// whatever the bytes before it.
			copy(in[k:], v)
			clear(in[:k])
			full := enc.AppendEncode(all, in[:k+len(v)])[len(all):]
			from, to := (8*k+5)/6, 8*(k+len(v))/6
			if to-from >= minSecretLen {
				start := len(all)
				all = append(all, full[from:to]...)
				forms = append(forms, all[start:len(all):len(all)])
			}
		}
	}
	return forms
}

// load returns the secrets known now, building their snapshot if they
// changed since the last.
func (s *secretSet) load() []secret {
	if s.stale.Load() {
		s.mu.Lock()
		if s.stale.Load() {
			s.publish()
			s.stale.Store(false)
		}
		s.mu.Unlock()
	}
	if p := s.snap.Load(); p != nil {
		return *p
	}
	return nil
}

// first finds the earliest occurrence in b of any of secrets: its index
// in secrets and its offset in b, or -1.
func first(b []byte, secrets []secret) (which, at int) {
	which, at = -1, -1
	for i := range secrets {
		if j := bytes.Index(b, secrets[i].value); j >= 0 && (at < 0 || j < at) {
			which, at = i, j
		}
	}
	return which, at
}

// scanner passes a body through, handing every occurrence of a known
// secret to replace, which returns what goes in its place (the same length)
// or an error that fails the read. It holds back the last bytes that could
// be the start of a secret until it knows, so a refused secret never
// leaves, not even in part.
type scanner struct {
	src     io.ReadCloser
	secrets []secret
	replace func(s *secret) ([]byte, error)
	hold    int
	pending []byte // read, not yet scanned to the end
	out     []byte // scanned, not yet returned
	err     error
	buf     [32 << 10]byte
}

func newScanner(src io.ReadCloser, secrets []secret, replace func(s *secret) ([]byte, error)) *scanner {
	longest := 0
	for _, s := range secrets {
		longest = max(longest, len(s.value))
	}
	return &scanner{src: src, secrets: secrets, replace: replace, hold: longest - 1}
}

func (s *scanner) Read(p []byte) (int, error) {
	for len(s.out) == 0 && s.err == nil {
		n, err := s.src.Read(s.buf[:])
		s.pending = append(s.pending, s.buf[:n]...)
		for {
			i, at := first(s.pending, s.secrets)
			if i < 0 {
				break
			}
			repl, rerr := s.replace(&s.secrets[i])
			if rerr != nil {
				s.out, s.pending, s.err = append(s.out, s.pending[:at]...), nil, rerr
				break
			}
			s.out = append(append(s.out, s.pending[:at]...), repl...)
			s.pending = s.pending[at+len(s.secrets[i].value):]
		}
		switch {
		case s.err != nil:
		case err != nil:
			s.out, s.pending, s.err = append(s.out, s.pending...), nil, err
		case len(s.pending) > s.hold:
			cut := len(s.pending) - s.hold
			s.out = append(s.out, s.pending[:cut]...)
			s.pending = append(s.pending[:0:0], s.pending[cut:]...)
		}
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	if len(s.out) == 0 && s.err != nil {
		return n, s.err
	}
	return n, nil
}

func (s *scanner) Close() error { return s.src.Close() }

// replaceAll rewrites every known secret in v with replace, or returns its
// error.
func replaceAll(v string, secrets []secret, replace func(s *secret) ([]byte, error)) (string, error) {
	b := []byte(v)
	var out []byte
	changed := false
	for {
		i, at := first(b, secrets)
		if i < 0 {
			break
		}
		repl, err := replace(&secrets[i])
		if err != nil {
			return "", err
		}
		out = append(append(out, b[:at]...), repl...)
		b = b[at+len(secrets[i].value):]
		changed = true
	}
	if !changed {
		return v, nil
	}
	return string(append(out, b...)), nil
}

// placeholderPrefix is how far a token's fixed prefix may reach (ghp_,
// github_pat_, sk-proj-): kept in a placeholder so tools that check a
// token's shape accept it.
const placeholderPrefix = 12

// newPlaceholder returns a random value of real's shape: its prefix up to
// the last '_' or '-' in its first placeholderPrefix bytes, then a random
// character of the same class (digit, lower, upper; others kept) for each
// of the rest.
func newPlaceholder(real string) string {
	keep := strings.LastIndexAny(real[:min(len(real), placeholderPrefix)], "_-") + 1
	for {
		out := []rune(real[:keep])
		for _, r := range real[keep:] {
			switch {
			case unicode.IsDigit(r):
				out = append(out, randomFrom("0123456789"))
			case unicode.IsLower(r):
				out = append(out, randomFrom("abcdefghijklmnopqrstuvwxyz"))
			case unicode.IsUpper(r):
				out = append(out, randomFrom("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
			default:
				out = append(out, r)
			}
		}
		if p := string(out); p != real {
			return p
		}
	}
}

func randomFrom(set string) rune {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(set))))
	return rune(set[n.Int64()])
}
