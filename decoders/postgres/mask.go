package postgres

// MaskColumns returns a ColumnMasker that replaces every non-NULL value of
// the columns with one of the given names by Redact's stand-in. It is safe
// for concurrent use.
func MaskColumns(names ...string) ColumnMasker {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return columnSet(set)
}

type columnSet map[string]bool

func (s columnSet) Plan(cols []Column) RowMasker {
	var rm *redactRow
	for i, c := range cols {
		if s[c.Name] {
			if rm == nil {
				rm = &redactRow{cols: make([]*Column, len(cols))}
			}
			c := c
			rm.cols[i] = &c
		}
	}
	if rm == nil {
		return nil
	}
	return rm
}

type redactRow struct{ cols []*Column }

func (r *redactRow) MaskValue(col int, v []byte) []byte {
	if col >= len(r.cols) || r.cols[col] == nil || v == nil {
		return v
	}
	return Redact(*r.cols[col], v)
}

// Type OIDs Redact knows.
const (
	oidBool    = 16
	oidName    = 19
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidText    = 25
	oidJSON    = 114
	oidFloat4  = 700
	oidFloat8  = 701
	oidBPChar  = 1042
	oidVarchar = 1043
	oidNumeric = 1700
	oidJSONB   = 3802
)

var (
	redactedText = []byte("****")
	redactedJSON = []byte(`"****"`)
	zeroText     = []byte("0")
	falseText    = []byte("f")
	zeroBinary   = make([]byte, 8)
	// numeric 0 in binary: ndigits 0, weight 0, sign positive, dscale 0.
	numericZero = []byte{0, 0, 0, 0, 0, 0, 0, 0}
	jsonbString = []byte("\x01\"****\"")
)

// Redact returns a stand-in for v, a non-NULL value of column c, that a
// client can still decode as the column's type in the column's format:
// "****" for strings, zero for numbers, false for booleans, a JSON string
// for json; NULL (nil) for types it does not know. It never returns v.
func Redact(c Column, v []byte) []byte {
	binary := c.Format == 1
	switch c.TypeOID {
	case oidText, oidVarchar, oidBPChar, oidName:
		return redactedText
	case oidJSON:
		return redactedJSON
	case oidJSONB:
		if binary {
			return jsonbString
		}
		return redactedJSON
	case oidInt2, oidInt4, oidInt8, oidFloat4, oidFloat8:
		if binary {
			return zeroBinary[:min(len(v), len(zeroBinary))]
		}
		return zeroText
	case oidNumeric:
		if binary {
			return numericZero
		}
		return zeroText
	case oidBool:
		if binary {
			return zeroBinary[:1]
		}
		return falseText
	}
	if !binary {
		return redactedText
	}
	return nil
}
