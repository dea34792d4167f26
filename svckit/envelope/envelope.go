// Package envelope is svckit's versioned binary framing for NSQ message bodies.
//
// NSQ messages have no headers, so every piece of metadata svckit needs travels
// in the body. Version 1 layout (all integers big-endian):
//
//	offset  size  field
//	0       2     magic "SK"
//	2       1     version (1)
//	3       1     flags (reserved, must be 0)
//	4       16    message id
//	20      8     sequence number within the stream (0 = not sequenced)
//	28      8     creation time, unix nanoseconds
//	36      1+n   stream id          (u8 length, then bytes)
//	..      1+n   content type       (u8 length, then bytes)
//	..      1+n   correlation id     (u8 length, then bytes)
//	..      4+n   payload            (u32 length, then bytes)
//
// The fixed header comes first so that a decoder can reject garbage after four
// bytes, and every variable field is length-prefixed so that truncation is
// always detected. Decoding never panics on any input: it returns an error.
package envelope

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// Version is the envelope version this package writes.
const Version = 1

const (
	magic0, magic1 = 'S', 'K'
	fixedLen       = 36
	// MaxFieldLen is the longest stream id, content type or correlation id.
	MaxFieldLen = 255
	// DefaultMaxPayload bounds payloads when the caller sets no limit; nsqd's
	// own default --max-msg-size is 1 MiB.
	DefaultMaxPayload = 1 << 20
)

// Errors returned by Decode. They are sentinel values so callers (the dead-letter
// path, metrics) can classify why a message was rejected.
var (
	ErrTooShort       = errors.New("envelope: too short")
	ErrBadMagic       = errors.New("envelope: not an svckit envelope (bad magic)")
	ErrUnknownVersion = errors.New("envelope: unknown version")
	ErrBadFlags       = errors.New("envelope: unknown flags")
	ErrTruncated      = errors.New("envelope: truncated field")
	ErrTrailing       = errors.New("envelope: trailing bytes after payload")
	ErrOversized      = errors.New("envelope: payload larger than allowed")
	ErrFieldTooLong   = errors.New("envelope: field longer than 255 bytes")
)

// ID is a 16-byte message id.
type ID [16]byte

// String renders the id as 32 hex digits.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Envelope is one message with its metadata.
type Envelope struct {
	ID            ID
	Stream        string
	Seq           uint64
	Created       time.Time
	ContentType   string
	CorrelationID string
	Payload       []byte
}

// EncodedLen is the number of bytes Append will add for e.
func (e *Envelope) EncodedLen() int {
	return fixedLen + 3 + len(e.Stream) + len(e.ContentType) + len(e.CorrelationID) + 4 + len(e.Payload)
}

// Marshal returns the encoded envelope in a new slice.
func (e *Envelope) Marshal() ([]byte, error) {
	return e.Append(make([]byte, 0, e.EncodedLen()))
}

// Append appends the encoded envelope to dst and returns the extended slice.
func (e *Envelope) Append(dst []byte) ([]byte, error) {
	if len(e.Stream) > MaxFieldLen {
		return dst, fmt.Errorf("stream id: %w", ErrFieldTooLong)
	}
	if len(e.ContentType) > MaxFieldLen {
		return dst, fmt.Errorf("content type: %w", ErrFieldTooLong)
	}
	if len(e.CorrelationID) > MaxFieldLen {
		return dst, fmt.Errorf("correlation id: %w", ErrFieldTooLong)
	}
	if uint64(len(e.Payload)) > 0xFFFFFFFF {
		return dst, ErrOversized
	}
	var created int64
	if !e.Created.IsZero() {
		created = e.Created.UnixNano()
	}
	dst = append(dst, magic0, magic1, Version, 0)
	dst = append(dst, e.ID[:]...)
	dst = binary.BigEndian.AppendUint64(dst, e.Seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(created))
	dst = appendShort(dst, e.Stream)
	dst = appendShort(dst, e.ContentType)
	dst = appendShort(dst, e.CorrelationID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.Payload)))
	dst = append(dst, e.Payload...)
	return dst, nil
}

func appendShort(dst []byte, s string) []byte {
	dst = append(dst, byte(len(s)))
	return append(dst, s...)
}

// Decoder decodes envelopes with a payload size limit.
type Decoder struct {
	// MaxPayload is the largest payload accepted; 0 means DefaultMaxPayload.
	MaxPayload int
	// Strings, if set, interns stream ids and content types: a consumer
	// sees the same few over and over, and a string per message for each
	// is garbage.
	Strings *StringCache
}

// StringCache interns short strings, up to a bound. Safe for concurrent use.
//
// Reads take no lock: the map is copied on each insertion and published
// through an atomic pointer. A consumer's handler goroutines look up the
// same few strings for every message, and a shared read lock was a cache
// line they all wrote to, twice per string.
type StringCache struct {
	m  atomic.Pointer[map[string]string]
	mu sync.Mutex // serialises insertions
}

// stringCacheMax bounds a StringCache: past it, strings are allocated as
// if there were no cache (a consumer of many streams gains little anyway).
const stringCacheMax = 4096

func (c *StringCache) get(b []byte) string {
	if m := c.m.Load(); m != nil {
		if s, ok := (*m)[string(b)]; ok { // no allocation: looked up in place
			return s
		}
	}
	s := string(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old == nil {
		old = &map[string]string{}
	}
	if v, ok := (*old)[s]; ok {
		return v
	}
	if len(*old) >= stringCacheMax {
		return s
	}
	m := maps.Clone(*old)
	m[s] = s
	c.m.Store(&m)
	return s
}

// Decode decodes b with the default payload limit. See Decoder.Decode.
func Decode(b []byte) (Envelope, error) { return Decoder{}.Decode(b) }

// Decode parses one envelope. The returned Payload aliases b (no copy): callers
// that keep it beyond the life of b must copy it.
func (d Decoder) Decode(b []byte) (Envelope, error) {
	var e Envelope
	if len(b) < 4 {
		return e, ErrTooShort
	}
	if b[0] != magic0 || b[1] != magic1 {
		return e, ErrBadMagic
	}
	if b[2] != Version {
		return e, fmt.Errorf("%w %d (this build reads %d)", ErrUnknownVersion, b[2], Version)
	}
	if b[3] != 0 {
		return e, fmt.Errorf("%w 0x%02x", ErrBadFlags, b[3])
	}
	if len(b) < fixedLen {
		return e, ErrTooShort
	}
	copy(e.ID[:], b[4:20])
	e.Seq = binary.BigEndian.Uint64(b[20:28])
	if ns := int64(binary.BigEndian.Uint64(b[28:36])); ns != 0 {
		e.Created = time.Unix(0, ns)
	}
	rest := b[fixedLen:]
	var err error
	var raw []byte
	if raw, rest, err = readShort(rest, "stream id"); err != nil {
		return Envelope{}, err
	}
	e.Stream = d.str(raw)
	if raw, rest, err = readShort(rest, "content type"); err != nil {
		return Envelope{}, err
	}
	e.ContentType = d.str(raw)
	if raw, rest, err = readShort(rest, "correlation id"); err != nil {
		return Envelope{}, err
	}
	e.CorrelationID = string(raw)
	if len(rest) < 4 {
		return Envelope{}, fmt.Errorf("payload length: %w", ErrTruncated)
	}
	n := uint64(binary.BigEndian.Uint32(rest))
	rest = rest[4:]
	limit := d.MaxPayload
	if limit <= 0 {
		limit = DefaultMaxPayload
	}
	if n > uint64(limit) {
		return Envelope{}, fmt.Errorf("%w: %d > %d bytes", ErrOversized, n, limit)
	}
	if uint64(len(rest)) < n {
		return Envelope{}, fmt.Errorf("payload: %w (%d of %d bytes)", ErrTruncated, len(rest), n)
	}
	if uint64(len(rest)) > n {
		return Envelope{}, fmt.Errorf("%w: %d", ErrTrailing, uint64(len(rest))-n)
	}
	e.Payload = rest[:n:n]
	return e, nil
}

func (d Decoder) str(b []byte) string {
	if d.Strings == nil || len(b) == 0 {
		return string(b)
	}
	return d.Strings.get(b)
}

func readShort(b []byte, what string) ([]byte, []byte, error) {
	if len(b) < 1 {
		return nil, nil, fmt.Errorf("%s length: %w", what, ErrTruncated)
	}
	n := int(b[0])
	if len(b) < 1+n {
		return nil, nil, fmt.Errorf("%s: %w", what, ErrTruncated)
	}
	return b[1 : 1+n], b[1+n:], nil
}
