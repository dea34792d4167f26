package deadletter

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func sampleLetter(orig []byte) Letter {
	return Letter{
		Meta: Meta{Topic: "orders", Channel: "svc", Reason: "decode: envelope: not an svckit envelope (bad magic)",
			Attempts: 3, Time: time.Date(2026, 12, 1, 10, 0, 0, 123, time.UTC), NSQID: "0a1b2c3d4e5f6789", Stream: "s-1", Seq: 42},
		Original: orig,
	}
}

// The original travels unchanged, and a dead letter is the original plus
// a small, bounded header: a body just under nsqd's limit makes a letter
// just over it, never one a third larger.
func TestMarshalKeepsOriginalRaw(t *testing.T) {
	orig := bytes.Repeat([]byte{0, 1, 2, 0xff, '{', '"'}, 150_000) // 900 KB, not UTF-8, not JSON
	l := sampleLetter(orig)
	b, err := l.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, orig) {
		t.Fatal("the encoded letter does not end with the original bytes")
	}
	if over := len(b) - len(orig); over > 512 {
		t.Errorf("a dead letter is %d bytes larger than its original, want at most 512", over)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Original, orig) {
		t.Error("decoded original differs")
	}
	if got.Meta != l.Meta {
		t.Errorf("decoded meta = %+v, want %+v", got.Meta, l.Meta)
	}
	// The metadata is JSON with the documented keys.
	n, err := MetaLen(b[:HeaderLen])
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(b[HeaderLen:HeaderLen+n], &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"topic", "channel", "reason", "attempts", "time", "nsq_id", "stream", "seq"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("metadata has no %q: %s", k, b[HeaderLen:HeaderLen+n])
		}
	}
}

// Dead letters written before the framed format (JSON, original base64'd)
// may still sit in nsqd: Decode reads them.
func TestDecodeReadsTheJSONFormat(t *testing.T) {
	old := `{"topic":"orders","channel":"svc","reason":"handler failed 5 times: boom","attempts":5,` +
		`"time":"2026-11-30T08:00:00Z","nsq_id":"0a1b2c3d4e5f6789","original":"Z2FyYmFnZS0x"}`
	l, err := Decode([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	if string(l.Original) != "garbage-1" || l.Topic != "orders" || l.Channel != "svc" || l.Attempts != 5 ||
		l.NSQID != "0a1b2c3d4e5f6789" || !l.Time.Equal(time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)) {
		t.Errorf("decoded %+v", l)
	}
}

func TestDecodeRefusesGarbage(t *testing.T) {
	good, _ := sampleLetter([]byte("x")).Marshal()
	bad := map[string][]byte{
		"empty":         nil,
		"short":         []byte("SKD"),
		"magic":         []byte("SKXX\x01\x00\x00\x00\x02{}"),
		"version":       append([]byte("SKDL\x02"), good[5:]...),
		"huge meta len": []byte("SKDL\x01\xff\xff\xff\xff{}"),
		"truncated":     good[:HeaderLen+3],
		"json no topic": []byte(`{"reason":"x"}`),
		"bad json":      []byte(`{"topic":`),
	}
	for name, b := range bad {
		if _, err := Decode(b); !errors.Is(err, ErrNotDeadLetter) {
			t.Errorf("%s: Decode error %v, want ErrNotDeadLetter", name, err)
		}
	}
}

func TestReasonIsCut(t *testing.T) {
	l := sampleLetter([]byte("x"))
	l.Reason = strings.Repeat("é", MaxReasonLen) // 2 bytes each
	b, err := l.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Reason) > MaxReasonLen || !utf8.ValidString(got.Reason) || !strings.HasSuffix(got.Reason, "…") {
		t.Errorf("reason of %d bytes, valid UTF-8 %v", len(got.Reason), utf8.ValidString(got.Reason))
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := sampleLetter([]byte("original")).Marshal()
	f.Add(good)
	f.Add([]byte(`{"topic":"t","original":"AA=="}`))
	f.Add([]byte("SKDL\x01\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := Decode(b)
		if err != nil || b[0] == '{' {
			return
		}
		// A framed letter re-encodes around the same original.
		again, err := l.Marshal()
		if err != nil {
			return // e.g. a time outside JSON's range
		}
		l2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded letter does not decode: %v", err)
		}
		if !bytes.Equal(l2.Original, l.Original) {
			t.Fatal("original changed by a round trip")
		}
	})
}
