package pubsub

import "testing"

// An Async completion that succeeds allocates nothing: only a failure's
// error is boxed (the early path keeps it for the chain's return).
func TestCompleteAllocatesNothing(t *testing.T) {
	m := &Message{route: &route{respond: func(*Message, error) {}}}
	allocs := testing.AllocsPerRun(100, func() {
		m.state.Store(asyncFlag) // running, Async: the completion comes early
		m.early = nil
		m.complete(nil)
	})
	if allocs != 0 {
		t.Fatalf("complete(nil) allocates %v times", allocs)
	}
}
