package sqlclass

import (
	"hash/maphash"
	"sync"
)

// Classifier wraps a [Dialect] with a bounded parse cache keyed by query
// text, so a statement sent again (or again with other literals, for plain
// DML) is parsed once. It is safe for concurrent use.
type Classifier struct {
	dialect Dialect
	shards  [cacheShards]cacheShard
	perCap  int
	seed    maphash.Seed
	bufs    sync.Pool
}

const cacheShards = 16

type cacheShard struct {
	mu sync.RWMutex
	m  map[string]*Query
}

// maxCachedText bounds the length of a text that is cached; longer texts
// (bulk INSERTs, generated SQL) are parsed every time rather than pinning
// large keys in memory.
const maxCachedText = 8 << 10

// NewClassifier returns a classifier for d caching at most capacity queries
// (at least cacheShards). When a shard is full an arbitrary entry is evicted:
// cheaper than LRU bookkeeping on every hit, and a working set that fits
// stays cached.
func NewClassifier(d Dialect, capacity int) *Classifier {
	c := &Classifier{dialect: d, perCap: max(1, capacity/cacheShards), seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string]*Query)
	}
	c.bufs.New = func() any { b := make([]byte, 0, 256); return &b }
	return c
}

// Dialect returns the dialect the classifier parses with.
func (c *Classifier) Dialect() Dialect { return c.dialect }

// Classify returns the classification of text, from the cache when it can.
// A text that does not parse yields a Query with Err set (also cached), so
// callers have one value to decide on. The result is shared: do not modify.
func (c *Classifier) Classify(text string) *Query {
	// Exact keys start with 1 and shape keys copy the text's first byte, so
	// a text starting with 1 could alias another text's exact key.
	if len(text) > maxCachedText || (len(text) > 0 && text[0] == 1) {
		return c.parse(text)
	}
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	shape, shapeOK := c.dialect.ShapeKey((*bp)[:0], text)
	*bp = shape
	if shapeOK {
		if q := c.lookup(shape); q != nil {
			return q
		}
	}
	exact := append(append(shape[len(shape):], 1), text...)
	*bp = exact[:0]
	if q := c.lookup(exact); q != nil {
		return q
	}
	q := c.parse(text)
	if shapeOK && q.ShapeSafe && q.Err == nil {
		c.store(string(shape), q)
	} else {
		c.store(string(exact), q)
	}
	return q
}

func (c *Classifier) parse(text string) *Query {
	q, err := c.dialect.Classify(text)
	if err != nil {
		return &Query{Err: err}
	}
	return q
}

func (c *Classifier) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)%cacheShards]
}

func (c *Classifier) lookup(key []byte) *Query {
	s := c.shard(key)
	s.mu.RLock()
	q := s.m[string(key)]
	s.mu.RUnlock()
	return q
}

func (c *Classifier) store(key string, q *Query) {
	s := c.shard([]byte(key))
	s.mu.Lock()
	if len(s.m) >= c.perCap {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[key] = q
	s.mu.Unlock()
}

// Len returns the number of cached queries.
func (c *Classifier) Len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.RLock()
		n += len(c.shards[i].m)
		c.shards[i].mu.RUnlock()
	}
	return n
}
