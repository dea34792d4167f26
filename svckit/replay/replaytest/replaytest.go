package replaytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// TB is what the suite needs of a test. *testing.T satisfies
// TB[*testing.T] (and *testing.B TB[*testing.B]), so a user passes their t;
// the suite's own tests pass a recorder, to see that a check fails on a
// broken implementation.
type TB[T any] interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	// Run runs f as a subtest named name and reports whether it passed.
	Run(name string, f func(T)) bool
}

// DefaultN is how many messages per stream a check uses when its options
// say 0.
const DefaultN = 32

// Features says what an Applier's state supports, as Watermill's Features
// says what a Pub/Sub does. The zero value claims the most: every check
// runs, and exported states are compared byte for byte.
type Features struct {
	// OrderSensitive: a stream's state depends on the order its messages
	// are applied in. The tracker applies messages in the order they
	// arrive (NSQ does not order them; replay fills gaps later), so such a
	// state differs between runs and between a consumer and its
	// recovery. The order check is skipped, saying so.
	OrderSensitive bool
	// Equal reports whether two exports of a stream's state are the same
	// state; nil is bytes.Equal. Use it for an encoding that is not
	// canonical, or for a field the consumer accepts to differ (name it
	// in the test).
	Equal func(a, b []byte) bool
	// SnapshotEqual compares a state recovered through a snapshot with one
	// that applied every message; nil is Equal. A snapshot may not carry
	// everything an applied state does: compare what it does carry.
	SnapshotEqual func(a, b []byte) bool
}

func (f Features) equal(a, b []byte) bool {
	if f.Equal != nil {
		return f.Equal(a, b)
	}
	return bytes.Equal(a, b)
}

func (f Features) snapshotEqual(a, b []byte) bool {
	if f.SnapshotEqual != nil {
		return f.SnapshotEqual(a, b)
	}
	return f.equal(a, b)
}

// viaJSON is state as it comes back out of svckit's JSON encodings of
// states (snapshot.json, GET /snapshot, the checkpoint): a json.RawMessage
// field, marshalled and unmarshalled. It fails for bytes that are not JSON
// (nor nil, which comes back as null).
func viaJSON(state []byte) ([]byte, error) {
	type file struct {
		State json.RawMessage `json:"state"`
	}
	b, err := json.Marshal(file{State: state})
	if err != nil {
		return nil, err
	}
	var out file
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return out.State, nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// scribble overwrites b: what a reused buffer does to whoever kept it.
func scribble(b []byte) {
	for i := range b {
		b[i] = ^b[i]
	}
}

// show formats a state or payload for a failure message: JSON as it is,
// anything else quoted; long ones cut.
func show(b []byte) string {
	const most = 400
	switch {
	case b == nil:
		return "nil"
	case len(b) == 0:
		return `""`
	}
	cut := b
	if len(cut) > most {
		cut = cut[:most]
	}
	s := ""
	if json.Valid(b) && utf8.Valid(b) {
		s = string(cut)
	} else {
		s = fmt.Sprintf("%q", cut)
	}
	if len(b) > most {
		s += fmt.Sprintf("… (%d bytes)", len(b))
	}
	return s
}

// orDefault is n, or DefaultN when n is 0.
func orDefault(n uint64) uint64 {
	if n == 0 {
		return DefaultN
	}
	return n
}
