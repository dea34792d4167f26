package envelope

import (
	"crypto/rand"
	"encoding/binary"
	"sync/atomic"
)

// IDSource makes unique message ids cheaply: a random 8-byte prefix drawn once
// per source, then a counter. Drawing 16 random bytes per message would put a
// syscall-class cost on the publish hot path for no extra uniqueness.
type IDSource struct {
	prefix  [8]byte
	counter atomic.Uint64
}

// NewIDSource returns a source with a fresh random prefix.
func NewIDSource() *IDSource {
	s := &IDSource{}
	_, _ = rand.Read(s.prefix[:]) // crypto/rand.Read never fails on supported platforms
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	s.counter.Store(binary.BigEndian.Uint64(seed[:]) >> 16)
	return s
}

// Next returns the next id.
func (s *IDSource) Next() ID {
	var id ID
	copy(id[:8], s.prefix[:])
	binary.BigEndian.PutUint64(id[8:], s.counter.Add(1))
	return id
}
