package postgres

import "github.com/jackc/pgx/v5/pgtype"

// TextMasker masks the values of one result set as text; policy/mask's
// *Plan is one. Mask appends the masked form of value (from column col) to
// dst and reports whether it differs from value.
type TextMasker interface {
	Mask(dst []byte, col int, value []byte) ([]byte, bool)
}

// MaskText returns a ColumnMasker that masks each result set with the
// TextMasker plan returns for its column names; plan returns nil when no
// value of that result can change. A binary-format value of a type whose
// binary form is not its text cannot carry a masked string, so a field of
// such a column that would change is sent as NULL. The ColumnMasker is safe
// for concurrent use when plan is.
func MaskText(plan func(columns []string) TextMasker) ColumnMasker {
	return textMasker(plan)
}

type textMasker func(columns []string) TextMasker

func (tm textMasker) Plan(cols []Column) RowMasker {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	p := tm(names)
	if p == nil {
		return nil
	}
	rm := &rowMasker{plan: p, binary: make([]bool, len(cols))}
	for i, c := range cols {
		rm.binary[i] = c.Format == 1 && !textual(c.TypeOID)
	}
	return rm
}

type rowMasker struct {
	plan   TextMasker
	binary []bool // binary format of a type whose wire form is not its text
	buf    []byte
}

// MaskValue masks one field. A binary-format value of a non-text type cannot
// carry a masked string, so a field that would change is sent as NULL.
func (rm *rowMasker) MaskValue(col int, v []byte) []byte {
	if v == nil {
		return nil
	}
	out, changed := rm.plan.Mask(rm.buf[:0], col, v)
	if !changed {
		return v
	}
	rm.buf = out
	if col < len(rm.binary) && rm.binary[col] {
		return nil
	}
	return out
}

// textual reports whether a type's binary wire form is its text: text,
// varchar, bpchar, name, unknown, json and xml.
func textual(oid uint32) bool {
	switch oid {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.UnknownOID, pgtype.JSONOID, pgtype.XMLOID:
		return true
	}
	return false
}
