package replay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"github.com/svckit/svckit/internal/sharedsecret/sharedsecrettest"
	"net/http"
	"strings"
	"testing"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
)

// mitm is a man in the middle (sharedsecrettest.Relay) that alters bodies.
func mitm(t *testing.T, real string, alter func(path string, body []byte) []byte) string {
	return sharedsecrettest.Relay(t, real, alter, nil)
}

// TestBorrowedProofRefused: the proof binds the answer's status and body,
// and every replayed frame carries its tag, so an answer whose proof was
// taken from the real server's is refused as soon as anything of it
// differs: no altered, dropped, reordered or added frame is handed on, no
// altered snapshot or position is taken.
func TestBorrowedProofRefused(t *testing.T) {
	f := newOwner(t, "m", retainlog.DefaultOptions(""), "")
	f.publish(t, 20)
	waitFor(t, "a snapshot", func() bool { _, _, err := f.owner.Snapshot(); return err == nil })
	_, srv, _ := authServer(t, f, authSecret)
	real := srv.URL
	ctx := context.Background()
	c := Client{Secret: authSecret}

	// Frames as the real server sends them (each with its tag).
	frames := func(body []byte) (out [][]byte) {
		for len(body) >= 4 {
			n := int(binary.BigEndian.Uint32(body))
			out = append(out, body[:4+n+16])
			body = body[4+n+16:]
		}
		return out
	}
	for name, alter := range map[string]func([][]byte) [][]byte{
		"a payload byte flipped": func(fs [][]byte) [][]byte {
			b := bytes.Clone(fs[3])
			b[len(b)-17] ^= 1
			fs[3] = b
			return fs
		},
		"two frames swapped":              func(fs [][]byte) [][]byte { fs[2], fs[5] = fs[5], fs[2]; return fs },
		"a frame dropped":                 func(fs [][]byte) [][]byte { return append(fs[:4], fs[5:]...) },
		"a frame repeated":                func(fs [][]byte) [][]byte { return append(fs[:4], append([][]byte{fs[3]}, fs[4:]...)...) },
		"cut short before the end record": func(fs [][]byte) [][]byte { return fs[:len(fs)-1] },
		"cut short after a frame":         func(fs [][]byte) [][]byte { return fs[:5] },
		"tags stripped": func(fs [][]byte) [][]byte {
			for i, b := range fs {
				fs[i] = b[:len(b)-16]
			}
			return fs
		},
	} {
		t.Run(name, func(t *testing.T) {
			addr := mitm(t, real, func(path string, body []byte) []byte {
				if path != "/replay" {
					return body
				}
				return bytes.Join(alter(frames(body)), nil)
			})
			var got []uint64
			n, err := c.Replay(ctx, addr, Request{Stream: "m", From: 1, To: 20}, func(env envelope.Envelope, _ int) error {
				got = append(got, env.Seq)
				return nil
			})
			if !errors.Is(err, ErrUpstreamUnproven) {
				t.Fatalf("replay through the man in the middle: %d frames, %v; want ErrUpstreamUnproven", n, err)
			}
			for i, s := range got {
				if s != uint64(i+1) {
					t.Fatalf("handed on %v: a frame that is not the owner's %dth", got, i+1)
				}
			}
			// Frames after the first altered one are never handed on (a
			// stream cut short hands on its genuine frames, then fails).
			if len(got) > 5 && !strings.HasPrefix(name, "cut short") {
				t.Fatalf("handed on %v: beyond the first altered frame", got)
			}
		})
	}

	// Damage the owner never reported, added on the way: refused (the end
	// record vouches for the trailer).
	forged := sharedsecrettest.Relay(t, real, nil, func(tr http.Header) {
		tr.Set(DamagedTrailer, "3-3")
	}, DamagedTrailer)
	if n, err := c.Replay(ctx, forged, Request{Stream: "m", From: 1, To: 20}, func(envelope.Envelope, int) error { return nil }); !errors.Is(err, ErrUpstreamUnproven) {
		t.Fatalf("a forged damage trailer: %d frames, %v; want ErrUpstreamUnproven", n, err)
	}

	// A request signed for another service (a stage serves its upstream's
	// paths), taken to the owner: the owner refuses it.
	toWorker := Client{Secret: authSecret, Audience: "worker"}
	if _, err := toWorker.Replay(ctx, strings.TrimPrefix(real, "http://"), Request{Stream: "m", From: 1, To: 20}, func(envelope.Envelope, int) error {
		t.Fatal("a frame was handed on from a server the request was not for")
		return nil
	}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("a request for the worker, answered by the sensor: %v; want ErrUnauthorized", err)
	}

	// A snapshot's state and a position altered: refused.
	addr := mitm(t, real, func(path string, body []byte) []byte {
		switch path {
		case "/snapshot":
			return bytes.Replace(body, []byte(`"seq":`), []byte(`"seq": `), 1)
		case "/streams":
			return bytes.Replace(body, []byte(`"last_seq":20`), []byte(`"last_seq":90`), 1)
		}
		return body
	})
	if seq, _, err := c.Snapshot(ctx, addr, "m"); !errors.Is(err, ErrUpstreamUnproven) {
		t.Fatalf("an altered snapshot: seq %d, %v; want ErrUpstreamUnproven", seq, err)
	}
	if st, err := c.Streams(ctx, addr); !errors.Is(err, ErrUpstreamUnproven) {
		t.Fatalf("altered positions: %+v, %v; want ErrUpstreamUnproven", st, err)
	}
	// The same man in the middle, altering nothing, is a faithful path.
	clean := mitm(t, real, func(_ string, body []byte) []byte { return body })
	if n, err := c.Replay(ctx, clean, Request{Stream: "m", From: 1, To: 20}, func(envelope.Envelope, int) error { return nil }); n != 20 || err != nil {
		t.Fatalf("an unaltered relay of the answer: %d, %v", n, err)
	}
	if st, err := c.Streams(ctx, clean); err != nil || len(st) != 1 || st[0].LastSeq != 20 {
		t.Fatalf("an unaltered relay of the positions: %+v, %v", st, err)
	}
}
