package session

import (
	"sync"
)

// slotKind is what an open slot is counted against: a decoded session
// (limits.sessions) or a plain TCP connection (limits.connections).
type slotKind uint8

const (
	sessionSlot slotKind = iota
	connectionSlot
	questionSlot
)

type slotKey struct {
	kind     slotKind
	identity string
}

// sessionLimits counts each identity's open sessions and plain
// connections and keeps the buffer budget its sessions share. It is safe
// for concurrent use.
type sessionLimits struct {
	mu      sync.Mutex
	open    map[slotKey]int
	budgets map[string]*budget
}

// acquire takes one of identity's max slots of kind (max 0: no cap) and
// reports whether one was free; a taken slot is given back with release.
func (l *sessionLimits) acquire(kind slotKind, identity string, max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open == nil {
		l.open = map[slotKey]int{}
	}
	k := slotKey{kind, identity}
	if max > 0 && l.open[k] >= max {
		return false
	}
	l.open[k]++
	return true
}

func (l *sessionLimits) release(kind slotKind, identity string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := slotKey{kind, identity}
	if l.open[k]--; l.open[k] <= 0 {
		delete(l.open, k)
	}
}

// budget returns identity's shared buffer budget of size bytes. The
// configuration does not change while interlockd runs, so the first size
// asked for is the size.
func (l *sessionLimits) budget(identity string, size int64) *budget {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.budgets == nil {
		l.budgets = map[string]*budget{}
	}
	b := l.budgets[identity]
	if b == nil {
		b = &budget{size: size}
		l.budgets[identity] = b
	}
	return b
}

// budget implements protocol.Budget: bytes one identity's sessions may
// buffer together.
type budget struct {
	mu         sync.Mutex
	size, used int64
}

func (b *budget) Reserve(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+int64(n) > b.size {
		return false
	}
	b.used += int64(n)
	return true
}

func (b *budget) Release(n int) {
	b.mu.Lock()
	b.used -= int64(n)
	b.mu.Unlock()
}
