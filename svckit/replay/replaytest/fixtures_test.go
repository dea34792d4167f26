package replaytest_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
	"github.com/svckit/svckit/svckit/stage"
)

// value is message seq of stream: a digit, 0 and 7 among them.
func value(stream string, seq uint64) uint64 {
	return (seq*7 + uint64(stream[len(stream)-1])) % 10
}

func payload(stream string, seq uint64) []byte {
	return strconv.AppendUint(nil, value(stream, seq), 10)
}

func parse(b []byte) (uint64, error) {
	v, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("value %q: %w", b, err)
	}
	return v, nil
}

// sumFold is a correct fold: the count and sum of values, and how many
// were 0 and 7 (a stage filters out the zeros and rejects the sevens).
type sumFold struct {
	Count  uint64 `json:"count"`
	Sum    uint64 `json:"sum"`
	Zeros  uint64 `json:"zeros"`
	Sevens uint64 `json:"sevens"`
}

func (f *sumFold) Apply(_ uint64, p []byte) error {
	v, err := parse(p)
	if err != nil {
		return err
	}
	f.Count++
	f.Sum += v
	switch v {
	case 0:
		f.Zeros++
	case 7:
		f.Sevens++
	}
	return nil
}

func (f *sumFold) State() []byte { b, _ := json.Marshal(f); return b }

func (f *sumFold) Restore(b []byte) error {
	var g sumFold
	if err := json.Unmarshal(b, &g); err != nil {
		return err
	}
	*f = g
	return nil
}

// nondetFold: every fold has a salt of its own in its State.
type nondetFold struct {
	sumFold
	salt int
}

func (f *nondetFold) State() []byte {
	b, _ := json.Marshal(struct {
		sumFold
		Salt int `json:"salt"`
	}{f.sumFold, f.salt})
	return b
}

// dropFold's Restore drops the sum.
type dropFold struct{ sumFold }

func (f *dropFold) Restore(b []byte) error {
	if err := f.sumFold.Restore(b); err != nil {
		return err
	}
	f.Sum = 0
	return nil
}

// mergeFold counts values in a map, and Restore unmarshals into it: a
// restore into a fold that has entries merges.
type mergeFold struct{ Seen map[string]uint64 }

func (f *mergeFold) Apply(_ uint64, p []byte) error {
	if f.Seen == nil {
		f.Seen = map[string]uint64{}
	}
	f.Seen[string(p)]++
	return nil
}
func (f *mergeFold) State() []byte          { b, _ := json.Marshal(f.Seen); return b }
func (f *mergeFold) Restore(b []byte) error { return json.Unmarshal(b, &f.Seen) }

// retainFold keeps the last payload it was given, not a copy.
type retainFold struct {
	sumFold
	last []byte
}

func (f *retainFold) Restore(b []byte) error {
	var x struct {
		sumFold
		Last string `json:"last"`
	}
	if err := json.Unmarshal(b, &x); err != nil {
		return err
	}
	f.sumFold, f.last = x.sumFold, []byte(x.Last)
	return nil
}

func (f *retainFold) Apply(seq uint64, p []byte) error {
	f.last = p
	return f.sumFold.Apply(seq, p)
}

func (f *retainFold) State() []byte {
	b, _ := json.Marshal(struct {
		sumFold
		Last string `json:"last"`
	}{f.sumFold, string(f.last)})
	return b
}

// aliasFold's State returns a buffer it writes again next time.
type aliasFold struct {
	sumFold
	buf []byte
}

func (f *aliasFold) State() []byte {
	f.buf = fmt.Appendf(f.buf[:0], `{"count":%d,"sum":%d}`, f.Count, f.Sum)
	return f.buf
}

// binaryFold's State is not JSON.
type binaryFold struct{ sumFold }

func (f *binaryFold) State() []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, f.Count), f.Sum)
}

func (f *binaryFold) Restore(b []byte) error {
	if len(b) != 16 {
		return fmt.Errorf("state of %d bytes", len(b))
	}
	f.Count, f.Sum = binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])
	return nil
}

// countingState's State counts its calls, in the state.
type countingState struct {
	sumFold
	calls int
}

func (f *countingState) State() []byte {
	f.calls++
	b, _ := json.Marshal(struct {
		sumFold
		Calls int `json:"calls"`
	}{f.sumFold, f.calls})
	return b
}

// tot is a consumer's state of one stream.
type tot struct {
	Count uint64 `json:"count"`
	Sum   uint64 `json:"sum"`
}

// totals is a correct Applier: per stream, the count and sum of the
// values applied. A snapshot is any JSON object with count and sum.
type totals struct{ m map[string]*tot }

func newTotals() *totals { return &totals{m: map[string]*tot{}} }

func (a *totals) get(stream string) *tot {
	if a.m[stream] == nil {
		a.m[stream] = &tot{}
	}
	return a.m[stream]
}

func (a *totals) Apply(stream string, env envelope.Envelope) error {
	v, err := parse(env.Payload)
	if err != nil {
		return pubsub.Reject(err)
	}
	x := a.get(stream)
	x.Count++
	x.Sum += v
	return nil
}

func (a *totals) ApplySnapshot(stream string, _ uint64, state []byte) error {
	var x tot
	if err := json.Unmarshal(state, &x); err != nil {
		return err
	}
	*a.get(stream) = x
	return nil
}

func (a *totals) ExportState(stream string) ([]byte, error) {
	var x tot
	if a.m[stream] != nil {
		x = *a.m[stream]
	}
	return json.Marshal(x)
}

func (a *totals) ImportState(stream string, b []byte) error { return a.ApplySnapshot(stream, 0, b) }

// missField counts distinct values, and exports the count but not the
// set: after a checkpoint, values seen before count again.
type missField struct {
	distinct map[string]uint64
	seen     map[string]map[uint64]bool
}

func newMissField() missField {
	return missField{distinct: map[string]uint64{}, seen: map[string]map[uint64]bool{}}
}

func (a missField) Apply(stream string, env envelope.Envelope) error {
	v, err := parse(env.Payload)
	if err != nil {
		return err
	}
	if a.seen[stream] == nil {
		a.seen[stream] = map[uint64]bool{}
	}
	if !a.seen[stream][v] {
		a.seen[stream][v] = true
		a.distinct[stream]++
	}
	return nil
}

func (a missField) ApplySnapshot(string, uint64, []byte) error { return errors.New("no snapshots") }

func (a missField) ExportState(stream string) ([]byte, error) {
	return json.Marshal(map[string]uint64{"distinct": a.distinct[stream]})
}

func (a missField) ImportState(stream string, b []byte) error {
	var x map[string]uint64
	if err := json.Unmarshal(b, &x); err != nil {
		return err
	}
	a.distinct[stream] = x["distinct"]
	return nil
}

// unknownErr cannot export a stream it has nothing of.
type unknownErr struct{ *totals }

func (a unknownErr) ExportState(stream string) ([]byte, error) {
	if a.m[stream] == nil {
		return nil, errors.New("no such stream")
	}
	return a.totals.ExportState(stream)
}

// shared keys its state by content type instead of stream: every
// stream's messages land in one entry.
type shared struct{ *totals }

func (a shared) Apply(_ string, env envelope.Envelope) error {
	return a.totals.Apply(env.ContentType, env)
}

func (a shared) ExportState(string) ([]byte, error) { return a.totals.ExportState("text/plain") }

// lastWins keeps the last value applied.
type lastWins struct {
	*totals
	last map[string]uint64
}

func (a lastWins) Apply(stream string, env envelope.Envelope) error {
	v, _ := parse(env.Payload)
	a.last[stream] = v
	return a.totals.Apply(stream, env)
}

func (a lastWins) ExportState(stream string) ([]byte, error) {
	return json.Marshal(map[string]uint64{"count": a.get(stream).Count, "last": a.last[stream]})
}

func (a lastWins) ImportState(stream string, b []byte) error {
	var x struct {
		Count uint64 `json:"count"`
		Last  uint64 `json:"last"`
	}
	if err := json.Unmarshal(b, &x); err != nil {
		return err
	}
	a.get(stream).Count, a.last[stream] = x.Count, x.Last
	return nil
}

// snapMerge's ApplySnapshot adds the snapshot to the state.
type snapMerge struct{ *totals }

func (a snapMerge) ApplySnapshot(stream string, _ uint64, state []byte) error {
	var x tot
	if err := json.Unmarshal(state, &x); err != nil {
		return err
	}
	a.get(stream).Count += x.Count
	a.get(stream).Sum += x.Sum
	return nil
}

func (a snapMerge) ImportState(stream string, b []byte) error { return a.totals.ImportState(stream, b) }

// lazySum keeps the payloads (not copies) and sums them when exported.
type lazySum struct {
	*totals
	kept map[string][][]byte
}

func (a lazySum) Apply(stream string, env envelope.Envelope) error {
	a.kept[stream] = append(a.kept[stream], env.Payload)
	a.get(stream).Count++
	return nil
}

func (a lazySum) ExportState(stream string) ([]byte, error) {
	x := *a.get(stream)
	for _, p := range a.kept[stream] {
		for _, c := range p {
			x.Sum += uint64(c - '0')
		}
	}
	a.kept[stream] = nil
	a.get(stream).Sum = x.Sum
	return json.Marshal(x)
}

// aliasExport's ExportState returns a buffer it writes again next time.
type aliasExport struct {
	*totals
	buf *[]byte
}

func (a aliasExport) ExportState(stream string) ([]byte, error) {
	x := a.get(stream)
	*a.buf = fmt.Appendf((*a.buf)[:0], `{"count":%d,"sum":%d}`, x.Count, x.Sum)
	return *a.buf, nil
}

// salted exports a salt of its own with every stream.
type salted struct {
	*totals
	salt int
}

func (a salted) ExportState(stream string) ([]byte, error) {
	x := a.get(stream)
	return json.Marshal(map[string]uint64{"count": x.Count, "sum": x.Sum, "salt": uint64(a.salt)})
}

func (a salted) ImportState(stream string, b []byte) error { return a.totals.ImportState(stream, b) }

// envs are the messages a consumer of the owner's topic receives.
func envs(stream string, seq uint64) envelope.Envelope {
	return envelope.Envelope{ContentType: "text/plain", Payload: payload(stream, seq)}
}

// foldSnapshot is sumFold over messages 1..seq of stream.
func foldSnapshot(stream string, seq uint64) []byte {
	var f sumFold
	for q := uint64(1); q <= seq; q++ {
		_ = f.Apply(q, payload(stream, q))
	}
	return f.State()
}

// split is a stage: a 0 is filtered out, a 7 rejected, any other value v
// split in two parts, v - v/2 and v/2.
func split(_ context.Context, in envelope.Envelope) ([]stage.Output, error) {
	v, err := parse(in.Payload)
	if err != nil {
		return nil, pubsub.Reject(err)
	}
	switch v {
	case 0:
		return nil, nil
	case 7:
		return nil, pubsub.Reject(errors.New("no sevens"))
	}
	return []stage.Output{
		{ContentType: "text/plain", Payload: strconv.AppendUint(nil, v-v/2, 10)},
		{ContentType: "text/plain", Payload: strconv.AppendUint(nil, v/2, 10)},
	}, nil
}

// splitSnapshot maps sumFold onto what a consumer of split's outputs
// holds: two parts per value other than 0 and 7, whose values add up.
func splitSnapshot(_ string, _ uint64, up []byte) ([]byte, error) {
	var f sumFold
	if err := json.Unmarshal(up, &f); err != nil {
		return nil, err
	}
	return json.Marshal(tot{Count: 2 * (f.Count - f.Zeros - f.Sevens), Sum: f.Sum - 7*f.Sevens})
}

// double is a stage in its allocation-free form: one output of twice the
// value.
func double(_ context.Context, in envelope.Envelope, outs []stage.Output, buf []byte) ([]stage.Output, []byte, error) {
	v, err := parse(in.Payload)
	if err != nil {
		return outs, buf, pubsub.Reject(err)
	}
	start := len(buf)
	buf = strconv.AppendUint(buf, 2*v, 10)
	return append(outs, stage.Output{ContentType: "text/plain", Payload: buf[start:]}), buf, nil
}

func doubleSnapshot(_ string, _ uint64, up []byte) ([]byte, error) {
	var x tot
	if err := json.Unmarshal(up, &x); err != nil {
		return nil, err
	}
	return json.Marshal(tot{Count: x.Count, Sum: 2 * x.Sum})
}

// goodPipeline: sumFold, split, double, totals.
func goodPipeline() replaytest.Pipeline {
	return replaytest.Pipeline{
		NewFold:     func() replay.Fold { return &sumFold{} },
		ContentType: "text/plain",
		Payload:     payload,
		Stages: []replaytest.Stage{
			{Name: "split", Transform: split, Snapshot: splitSnapshot},
			{Name: "double", Append: double, Snapshot: doubleSnapshot},
		},
		NewApplier: func() replay.Applier { return newTotals() },
	}
}
