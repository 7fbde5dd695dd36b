package recording

// FreeFirstBuffers is how many first buffers (minBufSize) the free list
// holds for the next sessions.
func (r *Recorder) FreeFirstBuffers() int { return len(r.freeSmall) }
