package envelope

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// sample returns an envelope with every field set to a non-trivial value.
func sample() Envelope {
	return Envelope{
		ID:            ID{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff},
		Stream:        "sensor-7",
		Seq:           42,
		Created:       time.Unix(1_700_000_000, 123456789),
		ContentType:   "application/x-svckit-reading+json",
		CorrelationID: "00112233445566778899aabbccddeeff",
		Payload:       []byte(`{"value":21.5}`),
	}
}

func mustMarshal(t testing.TB, e *Envelope) []byte {
	t.Helper()
	b, err := e.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return b
}

// equalEnvelope compares two envelopes; times are compared with Equal (the
// decoder returns local-time values) and a nil payload equals an empty one.
func equalEnvelope(t *testing.T, got, want Envelope) {
	t.Helper()
	if got.ID != want.ID {
		t.Errorf("ID = %s, want %s", got.ID, want.ID)
	}
	if got.Stream != want.Stream {
		t.Errorf("Stream = %q, want %q", got.Stream, want.Stream)
	}
	if got.Seq != want.Seq {
		t.Errorf("Seq = %d, want %d", got.Seq, want.Seq)
	}
	if !got.Created.Equal(want.Created) || got.Created.IsZero() != want.Created.IsZero() {
		t.Errorf("Created = %v, want %v", got.Created, want.Created)
	}
	if got.ContentType != want.ContentType {
		t.Errorf("ContentType = %q, want %q", got.ContentType, want.ContentType)
	}
	if got.CorrelationID != want.CorrelationID {
		t.Errorf("CorrelationID = %q, want %q", got.CorrelationID, want.CorrelationID)
	}
	if !bytes.Equal(got.Payload, want.Payload) {
		t.Errorf("Payload = %d bytes %.40q, want %d bytes %.40q", len(got.Payload), got.Payload, len(want.Payload), want.Payload)
	}
	if got.Part != want.Part || got.Parts != want.Parts || got.Marker != want.Marker {
		t.Errorf("Part, Parts, Marker = %d, %d, %v, want %d, %d, %v", got.Part, got.Parts, got.Marker, want.Part, want.Parts, want.Marker)
	}
	if got.CreationContext() != want.CreationContext() {
		t.Errorf("Trace = %x, want %x", got.CreationContext(), want.CreationContext())
	}
}

// sampleTrace is a W3C trace context with every byte set.
func sampleTrace() *TraceContext {
	return &TraceContext{TraceID: [16]byte{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID: [8]byte{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}, Flags: 0x01}
}

func TestRoundTrip(t *testing.T) {
	max := strings.Repeat("x", MaxFieldLen)
	big := make([]byte, DefaultMaxPayload) // exactly the default limit: accepted
	for i := range big {
		big[i] = byte(i * 7)
	}
	full := sample()

	cases := map[string]Envelope{
		"all fields":    full,
		"zero value":    {},
		"zero time":     func() Envelope { e := full; e.Created = time.Time{}; return e }(),
		"empty fields":  {ID: full.ID, Seq: 1, Created: full.Created, Payload: []byte("p")},
		"empty payload": func() Envelope { e := full; e.Payload = []byte{}; return e }(),
		"nil payload":   func() Envelope { e := full; e.Payload = nil; return e }(),
		"255-byte fields": func() Envelope {
			e := full
			e.Stream, e.ContentType, e.CorrelationID = max, max, max
			return e
		}(),
		"1 MiB payload":      func() Envelope { e := full; e.Payload = big; return e }(),
		"max seq":            func() Envelope { e := full; e.Seq = ^uint64(0); return e }(),
		"negative time":      func() Envelope { e := full; e.Created = time.Unix(-1_000_000, 5); return e }(),
		"UTC time":           func() Envelope { e := full; e.Created = time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC); return e }(),
		"well-known type":    func() Envelope { e := full; e.ContentType = "application/octet-stream"; return e }(),
		"no id":              func() Envelope { e := full; e.ID = ID{}; return e }(),
		"seq 2^63":           func() Envelope { e := full; e.Seq = 1 << 63; return e }(),
		"part 0 of 2":        func() Envelope { e := full; e.Part, e.Parts = 0, 2; return e }(),
		"part 299 of 300":    func() Envelope { e := full; e.Part, e.Parts = 299, 300; return e }(),
		"max parts":          func() Envelope { e := full; e.Part, e.Parts = 1<<32-2, 1<<32-1; return e }(),
		"marker":             {Stream: "s", Seq: 7, Created: full.Created, Marker: true},
		"marker, reason":     {Stream: "s", Seq: 7, Marker: true, Payload: []byte("dead-lettered by worker: bad reading")},
		"part marker":        {Stream: "s", Seq: 7, Marker: true, Part: 1, Parts: 2},
		"traced":             func() Envelope { e := full; e.Trace = sampleTrace(); return e }(),
		"traced, no id":      func() Envelope { e := full; e.ID = ID{}; e.Trace = sampleTrace(); return e }(),
		"traced, flags 0xff": func() Envelope { e := full; e.Trace = sampleTrace(); e.Trace.Flags = 0xff; return e }(),
		"a zero context":     func() Envelope { e := full; e.Trace = &TraceContext{}; return e }(),
		"traced part":        {Stream: "s", Seq: 7, Part: 1, Parts: 2, Trace: sampleTrace(), Payload: []byte("p")},
		"traced marker":      {Stream: "s", Seq: 7, Marker: true, Trace: sampleTrace()},
		"binary fields": func() Envelope {
			e := full
			e.Stream, e.ContentType, e.CorrelationID = "\x00\xff", "\n", "\x00"
			e.Payload = []byte{0, 0, 0, 0}
			return e
		}(),
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			b := mustMarshal(t, &want)
			if len(b) != want.EncodedLen() {
				t.Fatalf("len(Marshal) = %d, EncodedLen = %d", len(b), want.EncodedLen())
			}
			if want.MaxEncodedLen() < len(b) {
				t.Fatalf("MaxEncodedLen %d < %d encoded bytes", want.MaxEncodedLen(), len(b))
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			equalEnvelope(t, got, want)
			// Re-encoding the decoded value gives the same bytes.
			again := mustMarshal(t, &got)
			if !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs")
			}
		})
	}
}

func TestAppendAppends(t *testing.T) {
	e := sample()
	prefix := []byte("prefix")
	b, err := e.Append(append([]byte(nil), prefix...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, prefix) {
		t.Fatalf("Append lost dst contents")
	}
	got, err := Decode(b[len(prefix):])
	if err != nil {
		t.Fatal(err)
	}
	equalEnvelope(t, got, e)
}

func TestLayout(t *testing.T) {
	e := sample()
	b := mustMarshal(t, &e)
	if string(b[:2]) != "SK" || b[2] != Version || b[3] != flagID {
		t.Fatalf("header = %x", b[:4])
	}
	if !bytes.Equal(b[4:20], e.ID[:]) {
		t.Fatalf("id bytes = %x", b[4:20])
	}
	if b[20] != byte(e.Seq) { // 42: a one-byte uvarint
		t.Fatalf("seq = %d", b[20])
	}
	if got := int64(binary.BigEndian.Uint64(b[21:29])); got != e.Created.UnixNano() {
		t.Fatalf("created = %d", got)
	}
	if int(b[29]) != len(e.Stream) || string(b[30:30+len(e.Stream)]) != e.Stream {
		t.Fatalf("stream field = %q", b[29:30+len(e.Stream)])
	}
	if !bytes.HasSuffix(b, e.Payload) {
		t.Fatalf("payload is not last")
	}
	if n := b[len(b)-len(e.Payload)-1]; int(n) != len(e.Payload) {
		t.Fatalf("payload length = %d", n)
	}
}

// TestGoldenV2 pins version 2 byte for byte: a change of the format must be
// a new version, not a silent drift. It is also the bench's hop message:
// 45 bytes around a 200-byte payload (version 1 took 76).
func TestGoldenV2(t *testing.T) {
	e := Envelope{ID: ID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, Stream: "bench-hop", Seq: 300_000,
		Created: time.Unix(0, 0x0102030405060708), ContentType: "application/octet-stream", Payload: make([]byte, 200)}
	b := mustMarshal(t, &e)
	want := "534b0203" + "0102030405060708090a0b0c0d0e0f10" + "e0a712" + "0102030405060708" +
		"0962656e63682d686f70" + "01" + "00" + "c801"
	if got := fmt.Sprintf("%x", b[:len(b)-200]); got != want {
		t.Fatalf("encoded\n got  %s\n want %s", got, want)
	}
	if overhead := len(b) - len(e.Payload); overhead != 45 {
		t.Fatalf("overhead %d bytes, want 45", overhead)
	}
	v1, err := appendV1(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	if overhead := len(v1) - len(e.Payload); overhead != 76 {
		t.Fatalf("version 1 overhead %d bytes, want 76", overhead)
	}
}

// appendV1 is the version 1 encoder this package used to have: the
// decoder must go on reading what it wrote (older producers, retained logs).
func appendV1(dst []byte, e *Envelope) ([]byte, error) {
	if len(e.Stream) > MaxFieldLen || len(e.ContentType) > MaxFieldLen || len(e.CorrelationID) > MaxFieldLen {
		return dst, ErrFieldTooLong
	}
	var created int64
	if !e.Created.IsZero() {
		created = e.Created.UnixNano()
	}
	dst = append(dst, magic0, magic1, 1, 0)
	dst = append(dst, e.ID[:]...)
	dst = binary.BigEndian.AppendUint64(dst, e.Seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(created))
	dst = appendShort(dst, e.Stream)
	dst = appendShort(dst, e.ContentType)
	dst = appendShort(dst, e.CorrelationID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.Payload)))
	return append(dst, e.Payload...), nil
}

func mustV1(t testing.TB, e Envelope) []byte {
	t.Helper()
	b, err := appendV1(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Version 1 envelopes decode to what was encoded, and re-encode as version
// 2 to the same envelope.
func TestDecodeV1(t *testing.T) {
	full := sample()
	for name, want := range map[string]Envelope{
		"all fields":      full,
		"zero value":      {},
		"well-known type": func() Envelope { e := full; e.ContentType = "application/json"; return e }(),
		"no id":           func() Envelope { e := full; e.ID = ID{}; return e }(),
		"max seq":         func() Envelope { e := full; e.Seq = ^uint64(0); return e }(),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Decode(mustV1(t, want))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			equalEnvelope(t, got, want)
			again, err := Decode(mustMarshal(t, &got))
			if err != nil {
				t.Fatal(err)
			}
			equalEnvelope(t, again, want)
		})
	}
	good := mustV1(t, full)
	payOff := len(good) - len(full.Payload) - 4
	for _, c := range []struct {
		name string
		in   []byte
		want error
	}{
		{"flags 1", func() []byte { b := bytes.Clone(good); b[3] = 1; return b }(), ErrBadFlags},
		{"fixed header minus one", good[:v1FixedLen-1], ErrTooShort},
		{"no stream length", good[:v1FixedLen], ErrTruncated},
		{"payload length cut", good[:payOff+3], ErrTruncated},
		{"payload cut", good[:len(good)-1], ErrTruncated},
		{"trailing byte", append(bytes.Clone(good), 0), ErrTrailing},
		{"payload length above default limit", func() []byte {
			b := bytes.Clone(good)
			binary.BigEndian.PutUint32(b[payOff:], DefaultMaxPayload+1)
			return b
		}(), ErrOversized},
	} {
		if _, err := Decode(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: Decode error = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestZeroTimeEncodesAsZero(t *testing.T) {
	e := Envelope{}
	b := mustMarshal(t, &e)
	if got := binary.BigEndian.Uint64(b[5:13]); got != 0 { // after the header and a one-byte seq
		t.Fatalf("zero time encoded as %d", got)
	}
	d, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Created.IsZero() {
		t.Fatalf("decoded time %v, want zero", d.Created)
	}
}

// The wire format cannot tell the Unix epoch from "no time": both are 0.
// Documented here so that a change of that rule is deliberate.
func TestUnixEpochDecodesAsZeroTime(t *testing.T) {
	e := Envelope{Created: time.Unix(0, 0)}
	d, err := Decode(mustMarshal(t, &e))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Created.IsZero() {
		t.Fatalf("epoch decoded as %v; the format maps 0 to the zero time", d.Created)
	}
}

func TestDecodePayloadAliasesInput(t *testing.T) {
	e := sample()
	b := mustMarshal(t, &e)
	d, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if cap(d.Payload) != len(d.Payload) {
		t.Fatalf("payload cap %d > len %d: an append could overwrite the caller's buffer", cap(d.Payload), len(d.Payload))
	}
	b[len(b)-1] ^= 0xff
	if d.Payload[len(d.Payload)-1] != b[len(b)-1] {
		t.Fatalf("payload does not alias the input (documented: no copy)")
	}
}

func TestDecodeErrors(t *testing.T) {
	e := sample()
	good := mustMarshal(t, &e)

	// Offsets of the fields in good (an id, a one-byte seq, a written-out
	// content type, a one-byte payload length).
	streamOff := 4 + 16 + 1 + 8
	ctOff := streamOff + 1 + len(e.Stream)
	corrOff := ctOff + 1 + len(e.ContentType)
	payOff := corrOff + 1 + len(e.CorrelationID)

	with := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	// withPayloadLength replaces good's payload length with the bytes given.
	withPayloadLength := func(length ...byte) []byte {
		b := append(append([]byte(nil), good[:payOff]...), length...)
		return append(b, e.Payload...)
	}
	// withParts flags good as split and puts part and parts after the
	// one-byte sequence (at 21), bypassing the encoder's checks.
	withParts := func(part, parts byte) []byte {
		b := append([]byte(nil), good[:21]...)
		b[3] |= flagParts
		b = append(b, part, parts)
		return append(b, good[21:]...)
	}
	coded := e
	coded.ContentType = "application/json"
	codedGood := mustMarshal(t, &coded)
	longPayload := e
	longPayload.Payload = make([]byte, 200) // a two-byte payload length
	longGood := mustMarshal(t, &longPayload)
	withTrace := e
	withTrace.Trace = sampleTrace()
	traced := mustMarshal(t, &withTrace) // the trace context at 20
	with3 := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), traced...))
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"nil", nil, ErrTooShort},
		{"empty", []byte{}, ErrTooShort},
		{"one byte", []byte("S"), ErrTooShort},
		{"three bytes", []byte("SK\x02"), ErrTooShort},
		{"header only", good[:4], ErrTooShort},
		{"shortest minus one", good[:v2MinLen-1], ErrTooShort},
		{"bad magic first byte", with(func(b []byte) []byte { b[0] = 's'; return b }), ErrBadMagic},
		{"bad magic second byte", with(func(b []byte) []byte { b[1] = 'X'; return b }), ErrBadMagic},
		{"bad magic short input", []byte("XXXX"), ErrBadMagic},
		{"json", []byte(`{"value":1}`), ErrBadMagic},
		{"version 0", with(func(b []byte) []byte { b[2] = 0; return b }), ErrUnknownVersion},
		{"version 4", with(func(b []byte) []byte { b[2] = 4; return b }), ErrUnknownVersion},
		{"version 3 without a trace context", with(func(b []byte) []byte { b[2] = 3; return b }), ErrMalformed},
		{"version 2 with a trace context", with(func(b []byte) []byte { b[3] |= flagTrace; return b }), ErrBadFlags},
		{"trace context cut", traced[:4+16+traceLen-1], ErrTruncated},
		{"zero trace id", with3(func(b []byte) []byte { clear(b[20:36]); return b }), ErrMalformed},
		{"zero span id", with3(func(b []byte) []byte { clear(b[36:44]); return b }), ErrMalformed},
		{"version 3 flags 0x20", with3(func(b []byte) []byte { b[3] |= 0x20; return b }), ErrBadFlags},
		{"version 255 short", []byte("SK\xff\x00"), ErrUnknownVersion},
		{"parts flag, parts cut", with(func(b []byte) []byte { b[3] |= flagParts; return b[:21] }), ErrTruncated},
		{"one part", withParts(0, 1), ErrParts},
		{"part beyond parts", withParts(3, 3), ErrParts},
		{"marker with a content type", with(func(b []byte) []byte { b[3] |= flagMarker; return b }), ErrParts},
		{"flags 0x80", with(func(b []byte) []byte { b[3] |= 0x80; return b }), ErrBadFlags},
		{"id cut", good[:4+15], ErrTruncated},
		{"zero id flagged", with(func(b []byte) []byte { clear(b[4:20]); return b }), ErrMalformed},
		{"overlong seq", append(append(append([]byte(nil), good[:20]...), 0x80|42, 0), good[21:]...), ErrMalformed},
		{"no stream length", good[:streamOff], ErrTruncated},
		{"stream cut", good[:streamOff+2], ErrTruncated},
		{"stream length beyond end", with(func(b []byte) []byte { b[streamOff] = 255; return b }), ErrTruncated},
		{"no content type length", good[:ctOff], ErrTruncated},
		{"content type cut", good[:ctOff+1], ErrTruncated},
		{"unknown content type code", func() []byte {
			b := append([]byte(nil), codedGood...)
			b[ctOff] = 200
			return b
		}(), ErrMalformed},
		{"well-known content type written out", func() []byte {
			b := append(append([]byte(nil), good[:ctOff]...), byte(len(coded.ContentType)))
			b = append(b, coded.ContentType...)
			return append(b, good[corrOff:]...)
		}(), ErrMalformed},
		{"no correlation id length", good[:corrOff], ErrTruncated},
		{"correlation id cut", good[:corrOff+5], ErrTruncated},
		{"no payload length", good[:payOff], ErrTruncated},
		{"payload length cut", longGood[:len(longGood)-200-1], ErrTruncated},
		{"payload cut", good[:len(good)-1], ErrTruncated},
		{"payload empty but announced", good[:payOff+1], ErrTruncated},
		{"trailing byte", append(append([]byte(nil), good...), 0), ErrTrailing},
		{"trailing envelope", append(append([]byte(nil), good...), good...), ErrTrailing},
		{"payload length too small", withPayloadLength(byte(len(e.Payload) - 1)), ErrTrailing},
		{"overlong payload length", withPayloadLength(0x80|byte(len(e.Payload)), 0), ErrMalformed},
		{"payload length overflows", withPayloadLength(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), ErrMalformed},
		{"payload length above default limit", withPayloadLength(binary.AppendUvarint(nil, DefaultMaxPayload+1)...), ErrOversized},
		{"payload length max u32", withPayloadLength(binary.AppendUvarint(nil, 0xFFFFFFFF)...), ErrOversized},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Decode(c.in)
			if !errors.Is(err, c.want) {
				t.Fatalf("Decode error = %v, want %v", err, c.want)
			}
			if got.Stream != "" || got.Payload != nil || got.Seq != 0 || got.ID != (ID{}) || got.Trace != nil {
				t.Fatalf("Decode returned a partial envelope with an error: %+v", got)
			}
			// Exactly one class: the sentinels are distinct.
			for _, other := range []error{ErrTooShort, ErrBadMagic, ErrUnknownVersion, ErrBadFlags, ErrTruncated, ErrTrailing, ErrOversized, ErrFieldTooLong, ErrMalformed} {
				if other != c.want && errors.Is(err, other) {
					t.Fatalf("error %v also matches %v", err, other)
				}
			}
		})
	}
}

// Every strict prefix of a valid envelope is rejected, never decoded.
func TestEveryTruncationRejected(t *testing.T) {
	e := sample()
	coded := Envelope{Stream: "s", Seq: 1 << 40, ContentType: "text/plain", Payload: make([]byte, 300)}
	for name, good := range map[string][]byte{
		"v2":                      mustMarshal(t, &e),
		"v2, code, no id, varint": mustMarshal(t, &coded),
		"v1":                      mustV1(t, e),
	} {
		for i := 0; i < len(good); i++ {
			_, err := Decode(good[:i])
			if err == nil {
				t.Fatalf("%s: prefix of %d/%d bytes decoded without error", name, i, len(good))
			}
			if !errors.Is(err, ErrTooShort) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("%s: prefix of %d bytes: error %v is neither ErrTooShort nor ErrTruncated", name, i, err)
			}
		}
	}
}

func TestDecoderMaxPayload(t *testing.T) {
	e := sample()
	e.Payload = bytes.Repeat([]byte("a"), 100)
	b := mustMarshal(t, &e)

	for _, c := range []struct {
		max  int
		want error
	}{
		{99, ErrOversized},
		{1, ErrOversized},
		{100, nil},
		{101, nil},
		{0, nil},  // default limit
		{-1, nil}, // non-positive means default
	} {
		_, err := Decoder{MaxPayload: c.max}.Decode(b)
		if !errors.Is(err, c.want) {
			t.Errorf("MaxPayload %d: error %v, want %v", c.max, err, c.want)
		}
	}

	// The limit applies to the announced length, before the bytes are there,
	// so a huge announced payload is rejected without waiting for it.
	_, err := Decoder{MaxPayload: 10}.Decode(b[:len(b)-50])
	if !errors.Is(err, ErrOversized) {
		t.Fatalf("truncated oversized payload: error %v, want ErrOversized", err)
	}

	// A payload above the default limit decodes with a larger custom limit.
	big := sample()
	big.Payload = make([]byte, DefaultMaxPayload+1)
	bb := mustMarshal(t, &big)
	if _, err := Decode(bb); !errors.Is(err, ErrOversized) {
		t.Fatalf("default decoder on %d-byte payload: %v, want ErrOversized", len(big.Payload), err)
	}
	got, err := Decoder{MaxPayload: 2 << 20}.Decode(bb)
	if err != nil {
		t.Fatalf("Decoder{2 MiB}: %v", err)
	}
	if len(got.Payload) != DefaultMaxPayload+1 {
		t.Fatalf("payload %d bytes", len(got.Payload))
	}
}

func TestEncodeFieldTooLong(t *testing.T) {
	long := strings.Repeat("y", MaxFieldLen+1)
	for name, mod := range map[string]func(*Envelope){
		"stream":         func(e *Envelope) { e.Stream = long },
		"content type":   func(e *Envelope) { e.ContentType = long },
		"correlation id": func(e *Envelope) { e.CorrelationID = long },
	} {
		t.Run(name, func(t *testing.T) {
			e := sample()
			mod(&e)
			b, err := e.Marshal()
			if !errors.Is(err, ErrFieldTooLong) {
				t.Fatalf("Marshal error = %v, want ErrFieldTooLong", err)
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("error %q does not name the field %q", err, name)
			}
			if len(b) != 0 {
				t.Errorf("Marshal returned %d bytes with the error", len(b))
			}
			dst := []byte("keep")
			out, err := e.Append(dst)
			if !errors.Is(err, ErrFieldTooLong) {
				t.Fatalf("Append error = %v", err)
			}
			if string(out) != "keep" {
				t.Fatalf("Append modified dst on error: %q", out)
			}
		})
	}
}

func TestIDString(t *testing.T) {
	id := ID{0xde, 0xad, 0xbe, 0xef}
	if got, want := id.String(), "deadbeef000000000000000000000000"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}
}

func TestIDSourceSequential(t *testing.T) {
	s := NewIDSource()
	a, b := s.Next(), s.Next()
	if a == b {
		t.Fatalf("two ids equal: %s", a)
	}
	if !bytes.Equal(a[:8], b[:8]) {
		t.Fatalf("prefix changed between ids of one source: %s %s", a, b)
	}
	if binary.BigEndian.Uint64(b[8:]) != binary.BigEndian.Uint64(a[8:])+1 {
		t.Fatalf("counter not incremented by one: %s %s", a, b)
	}
	if other := NewIDSource().Next(); bytes.Equal(other[:8], a[:8]) {
		t.Fatalf("two sources share a random prefix %x", a[:8])
	}
}

func TestIDSourceConcurrentUnique(t *testing.T) {
	const goroutines, perG = 8, 5000
	sources := []*IDSource{NewIDSource(), NewIDSource()}
	var (
		mu   sync.Mutex
		seen = make(map[ID]struct{}, goroutines*perG)
		wg   sync.WaitGroup
	)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(src *IDSource) {
			defer wg.Done()
			ids := make([]ID, perG)
			for i := range ids {
				ids[i] = src.Next()
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				seen[id] = struct{}{}
			}
		}(sources[g%len(sources)])
	}
	wg.Wait()
	if len(seen) != goroutines*perG {
		t.Fatalf("%d unique ids out of %d", len(seen), goroutines*perG)
	}
}

// FuzzDecode: Decode never panics, and anything it accepts re-encodes to
// exactly the input (the format has one encoding per envelope).
func FuzzDecode(f *testing.F) {
	e := sample()
	f.Add(mustMarshal(f, &e))
	f.Add(mustMarshal(f, &Envelope{}))
	f.Add(mustMarshal(f, &Envelope{Stream: "s", Seq: 1 << 20, ContentType: "application/json", Payload: make([]byte, 130)}))
	f.Add(mustV1(f, e))
	f.Add(mustMarshal(f, &Envelope{Stream: "s", Seq: 9, Part: 2, Parts: 5, ContentType: "application/json", Payload: []byte("{}")}))
	f.Add(mustMarshal(f, &Envelope{Stream: "s", Seq: 9, Marker: true, Payload: []byte("why")}))
	traced := Envelope{Stream: "s", Seq: 9, Part: 1, Parts: 2, ContentType: "application/json", Payload: []byte("{}"), Trace: sampleTrace()}
	f.Add(mustMarshal(f, &traced))
	f.Add([]byte("SK\x01\x00"))
	f.Add([]byte("SK\x02\x03"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		env, err := Decoder{MaxPayload: 1 << 16}.Decode(in)
		if err != nil {
			if env.Payload != nil || env.Stream != "" {
				t.Fatalf("error %v with a non-empty envelope", err)
			}
			return
		}
		out, err := env.Marshal()
		if err != nil {
			t.Fatalf("decoded envelope does not encode: %v", err)
		}
		if env.EncodedLen() != len(out) || env.MaxEncodedLen() < len(out) {
			t.Fatalf("EncodedLen %d, MaxEncodedLen %d, encoded %d bytes", env.EncodedLen(), env.MaxEncodedLen(), len(out))
		}
		if in[2] == 1 { // version 1 re-encodes as version 2: the same envelope
			again, err := Decoder{MaxPayload: 1 << 16}.Decode(out)
			if err != nil {
				t.Fatalf("version 1 input re-encoded does not decode: %v", err)
			}
			if again.ID != env.ID || again.CreationContext() != env.CreationContext() || again.Stream != env.Stream || again.Seq != env.Seq || !again.Created.Equal(env.Created) ||
				again.ContentType != env.ContentType || again.CorrelationID != env.CorrelationID || !bytes.Equal(again.Payload, env.Payload) {
				t.Fatalf("version 1 input re-encoded decodes differently:\n %+v\n %+v", env, again)
			}
			return
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", in, out)
		}
	})
}

func benchEnvelope() Envelope {
	payload := make([]byte, 200)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	return Envelope{
		ID:            NewIDSource().Next(),
		Stream:        "sensor-a1b2c3", // 13 bytes
		Seq:           1_234_567,
		Created:       time.Unix(1_700_000_000, 42),
		ContentType:   "application/json",                 // 16 bytes
		CorrelationID: "0123456789abcdef0123456789abcdef", // a hex message id, 32 bytes
		Payload:       payload,
	}
}

func BenchmarkEncode(b *testing.B) {
	e := benchEnvelope()
	buf := make([]byte, 0, e.EncodedLen())
	b.ReportAllocs()
	b.SetBytes(int64(e.EncodedLen()))
	for b.Loop() {
		var err error
		buf, err = e.Append(buf[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshal(b *testing.B) {
	e := benchEnvelope()
	b.ReportAllocs()
	b.SetBytes(int64(e.EncodedLen()))
	for b.Loop() {
		if _, err := e.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	e := benchEnvelope()
	in := mustMarshal(b, &e)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := Decode(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIDSourceNext(b *testing.B) {
	s := NewIDSource()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Next()
	}
}

// TestSeedCorpus keeps the committed fuzz corpus honest: files named valid_*
// decode, every other file is rejected.
func TestSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 5 {
		t.Fatalf("only %d seed files in %s", len(entries), dir)
	}
	for _, ent := range entries {
		raw, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" ||
			!strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
			t.Fatalf("%s: not a one-value 'go test fuzz v1' file", ent.Name())
		}
		in, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", ent.Name(), err)
		}
		_, err = Decode([]byte(in))
		if valid := strings.HasPrefix(ent.Name(), "valid_"); valid != (err == nil) {
			t.Errorf("%s: Decode error = %v", ent.Name(), err)
		}
	}
}

// TestDecoderInternsStrings: with a StringCache, repeated stream ids and
// content types come back as the same string (one allocation, not one per
// message), and the envelope is otherwise decoded as without it.
func TestDecoderInternsStrings(t *testing.T) {
	d := Decoder{Strings: &StringCache{}}
	var streams []string
	for seq := uint64(1); seq <= 3; seq++ {
		in := Envelope{Stream: "s-1", Seq: seq, ContentType: "text/plain", CorrelationID: fmt.Sprint("c", seq), Payload: []byte("p")}
		b, err := in.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out, err := d.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if out.Stream != in.Stream || out.ContentType != in.ContentType || out.CorrelationID != in.CorrelationID || out.Seq != seq {
			t.Fatalf("decoded %+v, want %+v", out, in)
		}
		streams = append(streams, out.Stream)
	}
	if unsafe.StringData(streams[0]) != unsafe.StringData(streams[2]) {
		t.Errorf("stream ids of three messages are separate strings; want one interned string")
	}
}

// The well-known content types: every code names a type that encodes back
// to it, and types that are not in the list have no code.
func TestContentTypeCodes(t *testing.T) {
	n := 0
	for c := 1; c < 256; c++ {
		name := contentTypeName(byte(c))
		if name == "" {
			continue
		}
		n++
		if got := contentTypeCode(name); got != byte(c) {
			t.Errorf("code %d names %q, which encodes as %d", c, name, got)
		}
	}
	if n != 9 {
		t.Errorf("%d well-known types, want 9 (codes are forever: change this only to add one)", n)
	}
	for _, s := range []string{"", "application/x-reading", "application/JSON", "application/json "} {
		if c := contentTypeCode(s); c != 0 {
			t.Errorf("%q has code %d", s, c)
		}
	}
}

// The layout of parts and markers, byte by byte: they are forever, like
// the rest of version 2 (retained logs and dead letters hold them).
func TestPartsAndMarkerLayout(t *testing.T) {
	part := Envelope{Stream: "s", Seq: 5, Part: 1, Parts: 3, Payload: []byte("p")}
	got := mustMarshal(t, &part)
	want := []byte{'S', 'K', 2, flagParts, 5, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 's', 0, 0, 1, 'p'}
	if !bytes.Equal(got, want) {
		t.Fatalf("part 1 of 3:\n got %x\nwant %x", got, want)
	}
	marker := Envelope{Stream: "s", Seq: 5, Marker: true}
	got = mustMarshal(t, &marker)
	want = []byte{'S', 'K', 2, flagMarker, 5, 0, 0, 0, 0, 0, 0, 0, 0, 1, 's', 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("marker:\n got %x\nwant %x", got, want)
	}
	for name, bad := range map[string]Envelope{
		"part of a whole":    {Stream: "s", Seq: 1, Part: 1},
		"part beyond parts":  {Stream: "s", Seq: 1, Part: 2, Parts: 2},
		"marker with a type": {Stream: "s", Seq: 1, Marker: true, ContentType: "text/plain"},
	} {
		if _, err := bad.Marshal(); !errors.Is(err, ErrParts) {
			t.Errorf("%s: Marshal = %v, want ErrParts", name, err)
		}
	}
}

// TestStringCacheHotAndMap: the first strings are found in the list
// checked before the map, later ones in the map, every one interned and
// none allocated when found; a lookup of a prefix or an extension of a
// cached string is not taken for it.
func TestStringCacheHotAndMap(t *testing.T) {
	var c StringCache
	want := map[string]string{}
	for i := range 3 * stringCacheHot {
		s := fmt.Sprintf("stream-%d", i)
		want[s] = c.get([]byte(s))
	}
	if h := c.hot.Load(); h == nil || len(*h) != stringCacheHot {
		t.Fatalf("hot list %v, want the first %d strings", h, stringCacheHot)
	}
	for s, first := range want {
		b := []byte(s)
		var got string
		if allocs := testing.AllocsPerRun(10, func() { got = c.get(b) }); allocs != 0 {
			t.Errorf("get(%q) allocated %v times once cached", s, allocs)
		}
		if got != s || unsafe.StringData(got) != unsafe.StringData(first) {
			t.Errorf("get(%q) = %q, not the interned string", s, got)
		}
	}
	for _, s := range []string{"stream-", "stream-00", "stream-1x", ""} {
		if got := c.get([]byte(s)); got != s {
			t.Errorf("get(%q) = %q", s, got)
		}
	}
}

// TestStringCacheMax: past Max, strings are returned but not kept.
func TestStringCacheMax(t *testing.T) {
	c := StringCache{Max: 3}
	for i := range 10 {
		s := fmt.Sprint("s", i)
		if got := c.get([]byte(s)); got != s {
			t.Fatalf("get(%q) = %q", s, got)
		}
	}
	if m := c.m.Load(); m == nil || len(*m) != 3 {
		t.Fatalf("the cache keeps %v strings, want Max = 3", m)
	}
}

// TestTraceLayout pins version 3 byte for byte: version 2's header with
// flag 0x10, the 25 bytes of trace context after the id, the rest as
// version 2. An envelope without a trace context is version 2, unchanged
// (TestGoldenV2), so tracing off costs no byte.
func TestTraceLayout(t *testing.T) {
	e := Envelope{Stream: "s", Seq: 5, Trace: sampleTrace(), Payload: []byte("p")}
	got := mustMarshal(t, &e)
	want := "534b0310" + "4bf92f3577b34da6a3ce929d0e0e4736" + "00f067aa0ba902b7" + "01" +
		"05" + "0000000000000000" + "0173" + "00" + "00" + "0170"
	if fmt.Sprintf("%x", got) != want {
		t.Fatalf("encoded\n got  %x\n want %s", got, want)
	}
	plain := e
	plain.Trace = nil
	if n := len(got) - len(mustMarshal(t, &plain)); n != traceLen {
		t.Fatalf("a trace context costs %d bytes, want %d", n, traceLen)
	}
	if b := mustMarshal(t, &plain); b[2] != Version || b[3]&flagTrace != 0 {
		t.Fatalf("an envelope without a trace context encodes as %x", b[:4])
	}
	bad := e
	bad.Trace = &TraceContext{TraceID: e.Trace.TraceID}
	if _, err := bad.Marshal(); !errors.Is(err, ErrTrace) {
		t.Fatalf("Marshal with a zero span id = %v, want ErrTrace", err)
	}
	half := plain
	half.Trace = &TraceContext{SpanID: e.Trace.SpanID, Flags: 1}
	if _, err := half.Marshal(); !errors.Is(err, ErrTrace) {
		t.Fatalf("Marshal with a span id and no trace id = %v, want ErrTrace", err)
	}
	if plain.MaxEncodedLen()+traceLen != e.MaxEncodedLen() {
		t.Fatalf("MaxEncodedLen %d without a context, %d with: the context's %d bytes are not counted only when present",
			plain.MaxEncodedLen(), e.MaxEncodedLen(), traceLen)
	}
}
