package main

import (
	"strconv"
	"testing"

	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
)

// CounterFold against the replay.Fold contract (svckit/replay/replaytest):
// deterministic, its State JSON and stable, a restore at any point
// continuing exactly, Restore replacing the fold. The payloads are what
// produce publishes: the values in decimal.
func TestCounterFoldConformance(t *testing.T) {
	replaytest.TestFold(t,
		func() replay.Fold { return &CounterFold{} },
		func(seq uint64) []byte { return strconv.AppendUint(nil, seq, 10) },
		replaytest.FoldOptions{})
}
