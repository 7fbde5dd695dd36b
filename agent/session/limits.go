package session

import (
	"sync"
)

// sessionLimits counts each identity's open sessions and keeps
// the buffer budget its sessions share. It is safe for concurrent use.
type sessionLimits struct {
	mu       sync.Mutex
	sessions map[string]int
	budgets  map[string]*budget
}

// acquire takes one of identity's max session slots (max 0: no cap) and
// reports whether one was free; a taken slot is given back with release.
func (l *sessionLimits) acquire(identity string, max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions == nil {
		l.sessions = map[string]int{}
	}
	if max > 0 && l.sessions[identity] >= max {
		return false
	}
	l.sessions[identity]++
	return true
}

func (l *sessionLimits) release(identity string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[identity]--; l.sessions[identity] <= 0 {
		delete(l.sessions, identity)
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
