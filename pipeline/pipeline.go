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
	Result int64 // factor × Value²
}

// Compute is the worker's computation: factor × value². The factor is the
// worker's own configuration, which the app does not know: after an outage
// the app must get results computed by the workers (relayed through them),
// not compute them itself.
func Compute(r Reading, factor int64) Result {
	return Result{Value: r.Value, Result: factor * r.Value * r.Value}
}

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
func MarshalResult(r Result) []byte { return AppendResult(make([]byte, 0, 16), r) }

// AppendResult appends r's 16 bytes to b.
func AppendResult(b []byte, r Result) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(r.Value))
	return binary.BigEndian.AppendUint64(b, uint64(r.Result))
}

// UnmarshalResult decodes a result.
func UnmarshalResult(b []byte) (Result, error) {
	if len(b) != 16 {
		return Result{}, fmt.Errorf("result: %w %d", ErrBadPayload, len(b))
	}
	return Result{Value: int64(binary.BigEndian.Uint64(b)), Result: int64(binary.BigEndian.Uint64(b[8:]))}, nil
}

// Aggregate is the sensor's fold of one stream over sequences 1..Seq: the
// stream's snapshot.
type Aggregate struct {
	Seq     uint64 `json:"seq"`      // highest sequence folded in
	Count   uint64 `json:"count"`    // readings folded in
	Sum     int64  `json:"sum"`      // Σ value
	SumSq   int64  `json:"sum_sq"`   // Σ value²
	Zeros   uint64 `json:"zeros"`    // readings of 0 (a stage may filter them out)
	Last    int64  `json:"last"`     // value at LastSeq
	LastSeq uint64 `json:"last_seq"` // sequence of Last: the highest folded, whatever the order
}

// Add folds in the reading with sequence seq. Order does not matter.
func (a *Aggregate) Add(seq uint64, r Reading) {
	a.Count++
	a.Sum += r.Value
	a.SumSq += r.Value * r.Value
	if r.Value == 0 {
		a.Zeros++
	}
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

// Totals is the app's per-stream state: the fold of the results it
// applied. A worker maps the sensor's Aggregate onto it for a snapshot
// (TotalsOf), with the factor only the worker knows.
type Totals struct {
	Count      uint64 `json:"count"`       // results applied
	Sum        int64  `json:"sum"`         // Σ value
	SumResults int64  `json:"sum_results"` // Σ result (factor × value²)
	Zeros      uint64 `json:"zeros"`       // results of a reading of 0
	Last       int64  `json:"last"`        // value at LastSeq
	LastSeq    uint64 `json:"last_seq"`    // the highest sequence applied, whatever the order
}

// Add folds in the result of sequence seq. Order does not matter.
func (t *Totals) Add(seq uint64, r Result) {
	t.Count++
	t.Sum += r.Value
	t.SumResults += r.Result
	if r.Value == 0 {
		t.Zeros++
	}
	if seq >= t.LastSeq {
		t.Last, t.LastSeq = r.Value, seq
	}
}

// TotalsOf is what the app's state is after the results of every reading
// the sensor folded into a, computed with factor.
func TotalsOf(a Aggregate, factor int64) Totals {
	return Totals{Count: a.Count, Sum: a.Sum, SumResults: factor * a.SumSq, Zeros: a.Zeros, Last: a.Last, LastSeq: a.LastSeq}
}

// Marshal encodes the totals as JSON.
func (t Totals) Marshal() []byte { b, _ := json.Marshal(t); return b }

// UnmarshalTotals decodes totals.
func UnmarshalTotals(b []byte) (Totals, error) {
	var t Totals
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("totals: %w", err)
	}
	return t, nil
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
