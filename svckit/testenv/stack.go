package testenv

import (
	"testing"

	"github.com/svckit/svckit/internal/localstack"
)

// Stack is a whole svckit infrastructure: a Consul agent, an nsqlookupd and an
// nsqd registered with that lookupd, both registered in Consul.
type Stack struct {
	Consul  *Consul
	Lookupd *NSQLookupd
	NSQD    *NSQD
}

// StartStack starts consul, nsqlookupd and nsqd (registered with the
// lookupd), registers nsqd and nsqlookupd in consul, and waits until both are
// passing there and the lookupd knows the nsqd. Consul boots while the NSQ
// programs start.
func StartStack(t testing.TB) *Stack {
	t.Helper()
	return StartStackWith(t, NSQDOptions{})
}

// StartStackWith is StartStack with nsqd's options (its lookupd address is
// added to o.LookupdTCPAddrs).
func StartStackWith(t testing.TB, o NSQDOptions) *Stack {
	t.Helper()
	s, err := group(t).StartStack(localstack.NSQDOptions(o))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return &Stack{Consul: consulOf(s.Consul), Lookupd: lookupdOf(s.Lookupd), NSQD: nsqdOf(s.NSQD)}
}

// Register registers nsqd and nsqlookupd in consul (again, e.g. after a
// consul restart) and waits until both are passing.
func (s *Stack) Register(t testing.TB) {
	t.Helper()
	RegisterNSQLookupd(t, s.Consul, s.Lookupd)
	RegisterNSQD(t, s.Consul, s.NSQD)
	WaitPassing(t, s.Consul, "nsqlookupd", 1)
	WaitPassing(t, s.Consul, "nsqd", 1)
}

// Env returns the environment pointing svckit services at this stack's consul.
func (s *Stack) Env() []string { return s.Consul.Env() }
