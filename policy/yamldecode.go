package policy

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Pos is a position in a policy file, for error messages.
type Pos struct {
	File      string
	Line, Col int
}

// String renders "file:line:col".
func (p Pos) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Error is one problem in a policy file, at a position.
type Error struct {
	Pos Pos
	Msg string
}

// Error renders "file:line:col: message".
func (e *Error) Error() string { return e.Pos.String() + ": " + e.Msg }

// ErrorList is every problem found in one file, in file order. Load returns
// it so `interlock policy check` can show them all at once.
type ErrorList []*Error

// Error renders one error per line.
func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// keyPos records where each key's value sits in the file, so an error
// about one field points at that field rather than its parent.
type keyPos map[string]Pos

// at returns the position of key's value, or def when the key is absent.
func (k keyPos) at(key string, def Pos) Pos {
	if p, ok := k[key]; ok {
		return p
	}
	return def
}

// orderedMap keeps a YAML mapping's pairs in file order (column rules are
// tried first to last).
type orderedMap []kv

type kv struct {
	Key, Value string
	Pos        Pos
}

// decoder fills Go values from YAML nodes, strictly: unknown keys, wrong
// types and out-of-range numbers are errors with the node's position.
type decoder struct {
	file string
	errs ErrorList
}

func (d *decoder) pos(n *yaml.Node) Pos { return Pos{File: d.file, Line: n.Line, Col: n.Column} }

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, &Error{Pos: d.pos(n), Msg: fmt.Sprintf(format, args...)})
}

var (
	durationType   = reflect.TypeOf(time.Duration(0))
	posType        = reflect.TypeOf(Pos{})
	keyPosType     = reflect.TypeOf(keyPos(nil))
	orderedMapType = reflect.TypeOf(orderedMap(nil))
	anyMapType     = reflect.TypeOf(map[string]any(nil))
)

// decode fills v (addressable) from n.
func (d *decoder) decode(n *yaml.Node, v reflect.Value) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	// A type that decodes itself (a size with units, say) gets its node,
	// and its error is reported at the node's position.
	if v.CanAddr() {
		if u, ok := v.Addr().Interface().(yaml.Unmarshaler); ok {
			if err := u.UnmarshalYAML(n); err != nil {
				d.errorf(n, "%v", err)
			}
			return
		}
	}
	t := v.Type()
	switch {
	case t == durationType:
		if !d.scalar(n, "a duration such as 30s or 10m") {
			return
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil || dur < 0 {
			d.errorf(n, "%q is not a duration (use 30s, 10m, 1h)", n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	case t == orderedMapType:
		if n.Kind != yaml.MappingNode {
			d.errorf(n, "expected a mapping of name: value, got %s", kindName(n))
			return
		}
		var m orderedMap
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if val.Kind != yaml.ScalarNode {
				d.errorf(val, "value of %q must be a single word, got %s", k.Value, kindName(val))
				continue
			}
			m = append(m, kv{Key: k.Value, Value: val.Value, Pos: d.pos(k)})
		}
		v.Set(reflect.ValueOf(m))
		return
	case t == anyMapType:
		if n.Kind != yaml.MappingNode {
			d.errorf(n, "expected a mapping, got %s", kindName(n))
			return
		}
		m := map[string]any{}
		if err := n.Decode(&m); err != nil {
			d.errorf(n, "%v", err)
			return
		}
		v.Set(reflect.ValueOf(m))
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		if n.Tag == "!!null" {
			return
		}
		p := reflect.New(t.Elem())
		d.decode(n, p.Elem())
		v.Set(p)
	case reflect.Struct:
		d.decodeStruct(n, v)
	case reflect.Map:
		d.decodeMap(n, v)
	case reflect.Slice:
		if n.Kind == yaml.ScalarNode && t.Elem().Kind() != reflect.Struct {
			// A single value where a list is expected: a list of one.
			e := reflect.New(t.Elem()).Elem()
			d.decode(n, e)
			v.Set(reflect.Append(reflect.MakeSlice(t, 0, 1), e))
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.errorf(n, "expected a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i))
		}
		v.Set(s)
	case reflect.String:
		if d.scalar(n, "a string") {
			v.SetString(n.Value)
		}
	case reflect.Bool:
		if !d.scalar(n, "true or false") {
			return
		}
		var b bool
		switch strings.ToLower(n.Value) {
		case "true", "yes", "on":
			b = true
		case "false", "no", "off":
		default:
			d.errorf(n, "expected true or false, got %q", n.Value)
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int32, reflect.Int64:
		if !d.scalar(n, "a number") {
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, t.Bits())
		if err != nil {
			d.errorf(n, "expected a whole number that fits %s, got %q", t.Kind(), n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if !d.scalar(n, "a number") {
			return
		}
		u, err := strconv.ParseUint(n.Value, 10, t.Bits())
		if err != nil {
			d.errorf(n, "expected a whole number from 0 to %d, got %q", uint64(1)<<t.Bits()-1, n.Value)
			return
		}
		v.SetUint(u)
	default:
		d.errorf(n, "internal: cannot decode into %s", t)
	}
}

func (d *decoder) scalar(n *yaml.Node, what string) bool {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, "expected %s, got %s", what, kindName(n))
		return false
	}
	return true
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value) {
	t := v.Type()
	fields := map[string]int{}
	var names []string
	keys := keyPos{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Type == posType {
			v.Field(i).Set(reflect.ValueOf(d.pos(n)))
			continue
		}
		if f.Type == keyPosType {
			v.Field(i).Set(reflect.ValueOf(keys))
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = i
		names = append(names, tag)
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "expected a mapping with keys %s, got %s", strings.Join(names, ", "), kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		idx, ok := fields[k.Value]
		if !ok {
			d.errorf(k, "unknown key %q%s", k.Value, suggest(k.Value, names))
			continue
		}
		if seen[k.Value] {
			d.errorf(k, "key %q given twice", k.Value)
			continue
		}
		seen[k.Value] = true
		keys[k.Value] = d.pos(val)
		d.decode(val, v.Field(idx))
	}
}

// decodeMap fills a map keyed by name (credential sources, pool sizes).
func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value) {
	t := v.Type()
	if t.Key().Kind() != reflect.String {
		d.errorf(n, "internal: cannot decode into %s", t)
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "expected a mapping of name: value, got %s", kindName(n))
		return
	}
	m := reflect.MakeMapWithSize(t, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := reflect.ValueOf(k.Value).Convert(t.Key())
		if m.MapIndex(key).IsValid() {
			d.errorf(k, "key %q given twice", k.Value)
			continue
		}
		e := reflect.New(t.Elem()).Elem()
		d.decode(val, e)
		m.SetMapIndex(key, e)
	}
	v.Set(m)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

// suggest returns `; did you mean "x"?` for the closest known name.
func suggest(got string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(got, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		if len(known) == 0 {
			return " (none defined)"
		}
		sort.Strings(known)
		return " (known: " + strings.Join(known, ", ") + ")"
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
