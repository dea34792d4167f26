// Package deadletter keeps the messages a consumer cannot handle: their
// format, a durable local store for the ones nsqd will not take, and the
// "publish to <topic>.dead, else keep locally" path every dead letter goes
// through (Sink).
//
// A dead letter is the original message's bytes, unchanged, with what
// happened to it beside them (version 1, integers big-endian):
//
//	size   field
//	4      magic "SKDL"
//	1      version (1)
//	4      n: length of the metadata
//	n      metadata, a JSON object: topic, channel, reason, attempts, time,
//	       nsq_id, and stream and seq when the original is an envelope
//	rest   the original bytes, raw
//
// The format before it was a JSON object with the original base64'd inside
// it, a third larger than the original: a 900 KB message made a 1.23 MB dead
// letter, above nsqd's default --max-msg-size of 1 MiB, which nsqd refused
// (closing the publishing connection) so that the message cycled forever.
// Framed, a dead letter is the original plus a few hundred bytes. Decode
// still reads the JSON format: such dead letters may sit in nsqd.
//
// The package does not import pubsub (pubsub imports it): it publishes
// through the small TopicPublisher interface, which *pubsub.Producer satisfies.
package deadletter

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Format constants.
const (
	Magic   = "SKDL"
	Version = 1
	// HeaderLen is the magic, the version and the metadata's length.
	HeaderLen = len(Magic) + 1 + 4
	// MaxMetaLen bounds the metadata a decoder accepts: the reason is cut
	// to MaxReasonLen when encoding, so real metadata stays far below it.
	MaxMetaLen = 64 << 10
	// MaxReasonLen is the longest reason kept (a handler's error text can
	// be anything; the original bytes are what matters).
	MaxReasonLen = 4096
)

// ErrNotDeadLetter is returned by Decode for bytes that are neither format.
var ErrNotDeadLetter = errors.New("deadletter: not a dead letter")

// Meta is what is known about a dead letter besides its original bytes.
type Meta struct {
	Topic    string    `json:"topic"`
	Channel  string    `json:"channel"`
	Reason   string    `json:"reason"`
	Attempts uint16    `json:"attempts"`
	Time     time.Time `json:"time"`
	NSQID    string    `json:"nsq_id,omitempty"`
	// Stream and Seq identify the original when it is an envelope (a
	// rejected or exhausted message, or a replayed one the tracker could
	// not apply); empty for a body that did not decode.
	Stream string `json:"stream,omitempty"`
	Seq    uint64 `json:"seq,omitempty"`
}

// Letter is a dead letter: its metadata and the original bytes.
type Letter struct {
	Meta
	Original []byte `json:"-"`
}

// Topic is where a topic's dead letters are published.
func Topic(topic string) string { return topic + ".dead" }

// Marshal encodes l in the current format.
func (l Letter) Marshal() ([]byte, error) {
	m := l.Meta
	m.Reason = cut(m.Reason, MaxReasonLen)
	meta, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding dead letter metadata of %s: %w", l.Topic, err)
	}
	b := make([]byte, HeaderLen, HeaderLen+len(meta)+len(l.Original))
	copy(b, Magic)
	b[len(Magic)] = Version
	binary.BigEndian.PutUint32(b[len(Magic)+1:], uint32(len(meta)))
	b = append(b, meta...)
	return append(b, l.Original...), nil
}

// Decode reads a dead letter in either format. Original aliases b in the
// current format.
func Decode(b []byte) (Letter, error) {
	if len(b) > 0 && b[0] == '{' {
		return decodeJSON(b)
	}
	meta, orig, err := split(b)
	if err != nil {
		return Letter{}, err
	}
	var l Letter
	if err := json.Unmarshal(meta, &l.Meta); err != nil {
		return Letter{}, fmt.Errorf("%w: metadata: %v", ErrNotDeadLetter, err)
	}
	l.Original = orig
	return l, nil
}

// DecodeMeta reads the metadata of a dead letter in the current format
// from its beginning: at least HeaderLen bytes and the metadata's length
// (MetaLen) after them, so that a listing need not read the originals.
func DecodeMeta(head []byte) (Meta, error) {
	meta, _, err := split(head)
	if err != nil {
		return Meta{}, err
	}
	var m Meta
	if err := json.Unmarshal(meta, &m); err != nil {
		return Meta{}, fmt.Errorf("%w: metadata: %v", ErrNotDeadLetter, err)
	}
	return m, nil
}

// MetaLen checks a current-format header (the first HeaderLen bytes) and
// returns the length of the metadata after it.
func MetaLen(header []byte) (int, error) {
	if len(header) < HeaderLen || string(header[:len(Magic)]) != Magic {
		return 0, fmt.Errorf("%w: bad magic", ErrNotDeadLetter)
	}
	if v := header[len(Magic)]; v != Version {
		return 0, fmt.Errorf("%w: unknown version %d", ErrNotDeadLetter, v)
	}
	n := binary.BigEndian.Uint32(header[len(Magic)+1:])
	if n > MaxMetaLen {
		return 0, fmt.Errorf("%w: metadata of %d bytes", ErrNotDeadLetter, n)
	}
	return int(n), nil
}

// split returns the metadata and the original of a current-format letter.
func split(b []byte) (meta, orig []byte, err error) {
	n, err := MetaLen(b)
	if err != nil {
		return nil, nil, err
	}
	if len(b) < HeaderLen+n {
		return nil, nil, fmt.Errorf("%w: truncated metadata", ErrNotDeadLetter)
	}
	return b[HeaderLen : HeaderLen+n], b[HeaderLen+n:], nil
}

// legacy is the JSON format written before the framed one.
type legacy struct {
	Meta
	Original []byte `json:"original"` // base64 in JSON
}

func decodeJSON(b []byte) (Letter, error) {
	var l legacy
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&l); err != nil {
		return Letter{}, fmt.Errorf("%w: JSON: %v", ErrNotDeadLetter, err)
	}
	if l.Topic == "" {
		return Letter{}, fmt.Errorf("%w: JSON without a topic", ErrNotDeadLetter)
	}
	return Letter{Meta: l.Meta, Original: l.Original}, nil
}

// cut shortens s to at most n bytes without splitting a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const more = "…"
	s = s[:n-len(more)]
	for i := len(s) - 1; i >= 0 && i >= len(s)-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			if !utf8.FullRuneInString(s[i:]) {
				s = s[:i]
			}
			break
		}
	}
	return s + more
}
