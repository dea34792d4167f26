// Package pipeline is the reference pipeline's domain: what a sensor reads,
// what a worker computes, and the per-stream state the app keeps.
//
// Values are integers so that sums are exact in any order: a consumer that
// applied messages out of order, or recovered from a snapshot, must end with
// exactly the state of one that saw everything in order.
package pipeline

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Topics, channels and content types of the reference pipeline.
const (
	ReadingsTopic  = "readings"
	ResultsTopic   = "results"
	WorkersChannel = "workers"
	AppChannel     = "app"

	ReadingType = "application/x-reading"
	ResultType  = "application/x-result"
)

// Reading is one sensor value.
type Reading struct{ Value int64 }

// Result is what a worker computes from a reading.
type Result struct {
	Value  int64 // the reading
	Square int64 // Value²
}

// Compute is the worker's computation.
func Compute(r Reading) Result { return Result{Value: r.Value, Square: r.Value * r.Value} }

// ErrBadPayload is returned for payloads of the wrong size.
var ErrBadPayload = errors.New("bad payload size")

// MarshalReading encodes a reading as 8 bytes big-endian.
func MarshalReading(r Reading) []byte { return binary.BigEndian.AppendUint64(nil, uint64(r.Value)) }

// UnmarshalReading decodes a reading.
func UnmarshalReading(b []byte) (Reading, error) {
	if len(b) != 8 {
		return Reading{}, fmt.Errorf("reading: %w %d", ErrBadPayload, len(b))
	}
	return Reading{Value: int64(binary.BigEndian.Uint64(b))}, nil
}

// MarshalResult encodes a result as 16 bytes big-endian.
func MarshalResult(r Result) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(r.Value))
	return binary.BigEndian.AppendUint64(b, uint64(r.Square))
}

// UnmarshalResult decodes a result.
func UnmarshalResult(b []byte) (Result, error) {
	if len(b) != 16 {
		return Result{}, fmt.Errorf("result: %w %d", ErrBadPayload, len(b))
	}
	return Result{Value: int64(binary.BigEndian.Uint64(b)), Square: int64(binary.BigEndian.Uint64(b[8:]))}, nil
}

// Aggregate is the fold of one stream over sequences 1..Seq. The sensor keeps
// it as the stream's snapshot; the app's per-stream state is the same fold
// taken over results, so a snapshot maps onto app state directly.
type Aggregate struct {
	Seq     uint64 `json:"seq"`      // highest sequence folded in
	Count   uint64 `json:"count"`    // readings folded in
	Sum     int64  `json:"sum"`      // Σ value
	SumSq   int64  `json:"sum_sq"`   // Σ value² (the sum of the results' squares)
	Last    int64  `json:"last"`     // value at LastSeq
	LastSeq uint64 `json:"last_seq"` // sequence of Last: the highest folded, whatever the order
}

// Add folds in the reading with sequence seq. Order does not matter.
func (a *Aggregate) Add(seq uint64, r Reading) {
	a.Count++
	a.Sum += r.Value
	a.SumSq += r.Value * r.Value
	if seq >= a.LastSeq {
		a.Last, a.LastSeq = r.Value, seq
	}
	if seq > a.Seq {
		a.Seq = seq
	}
}

// Marshal encodes the aggregate as JSON.
func (a Aggregate) Marshal() []byte { b, _ := json.Marshal(a); return b }

// UnmarshalAggregate decodes an aggregate.
func UnmarshalAggregate(b []byte) (Aggregate, error) {
	var a Aggregate
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("aggregate: %w", err)
	}
	return a, nil
}

// AddResult folds in a worker's result for sequence seq (the app's side of
// Add: the square comes from the worker, not recomputed).
func (a *Aggregate) AddResult(seq uint64, r Result) {
	a.Count++
	a.Sum += r.Value
	a.SumSq += r.Square
	if seq >= a.LastSeq {
		a.Last, a.LastSeq = r.Value, seq
	}
	if seq > a.Seq {
		a.Seq = seq
	}
}

// ReadingFold is the sensor's snapshot of its stream (a replay.Fold).
type ReadingFold struct{ A Aggregate }

// Apply folds in one published reading.
func (f *ReadingFold) Apply(seq uint64, payload []byte) error {
	r, err := UnmarshalReading(payload)
	if err != nil {
		return err
	}
	f.A.Add(seq, r)
	return nil
}

// State encodes the fold.
func (f *ReadingFold) State() []byte { return f.A.Marshal() }

// Restore replaces the fold.
func (f *ReadingFold) Restore(b []byte) error {
	a, err := UnmarshalAggregate(b)
	if err != nil {
		return err
	}
	f.A = a
	return nil
}
