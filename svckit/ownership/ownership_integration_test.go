package ownership_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/ownership"
	"github.com/svckit/svckit/svckit/testenv"
)

func opts(c *api.Client, instance, node, data string) ownership.Options {
	return ownership.Options{Client: c, Stream: "s1", Instance: instance, Node: node, DataID: data}
}

func acquire(t *testing.T, o ownership.Options) *ownership.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := ownership.Acquire(ctx, o)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", o.Instance, err)
	}
	return l
}

// run keeps l renewed until stop is called or the test ends.
func run(t *testing.T, l *ownership.Lease) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// One live holder: a second process, another instance, is refused with an
// error naming the stream and the holder; the holder's predecessor rule
// (same instance, node and data directory) takes the stream back at once;
// a process with another data directory cannot take a stream whose holder
// is gone until the claim is released.
func TestClaimIsExclusive(t *testing.T) {
	c := testenv.StartConsul(t)
	a := acquire(t, opts(c.Client, "sensor-a", "node-1", "data-a"))
	killA := run(t, a)
	if err := a.Hold(context.Background()); err != nil {
		t.Fatalf("holder: Hold = %v", err)
	}

	_, err := ownership.Acquire(context.Background(), opts(c.Client, "sensor-b", "node-2", "data-b"))
	var held *ownership.HeldError
	if !errors.As(err, &held) || held.Holder.Instance != "sensor-a" {
		t.Fatalf("second owner: %v, want a HeldError naming sensor-a", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "stream s1") || !strings.Contains(msg, "sensor-a") || strings.Contains(msg, "\n") {
		t.Fatalf("the refusal must be one line naming the stream and the holder: %q", msg)
	}
	// Same data directory, another instance: still refused while A lives.
	if _, err := ownership.Acquire(context.Background(), opts(c.Client, "sensor-b", "node-2", "data-a")); !errors.As(err, &held) {
		t.Fatalf("another instance with the holder's data: %v, want HeldError", err)
	}

	// A restart of A (its session still alive: it was SIGKILLed, which
	// stopping its renewals stands for) takes the stream back at once.
	killA()
	start := time.Now()
	a2 := acquire(t, opts(c.Client, "sensor-a", "node-1", "data-a"))
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the restarted holder took %s to take its stream back: it waited for the old session", took)
	}
	run(t, a2)
	if err := a2.Held(); err != nil {
		t.Fatalf("restarted holder: %v", err)
	}

	// A clean stop releases the session; the claim stays with data-a.
	a2.Release(context.Background())
	_, err = ownership.Acquire(context.Background(), opts(c.Client, "sensor-c", "node-3", "data-c"))
	if !errors.Is(err, ownership.ErrOtherData) {
		t.Fatalf("another data directory after the holder stopped: %v, want ErrOtherData", err)
	}
	// The holder's data directory moved to another instance: it may take it.
	moved := acquire(t, opts(c.Client, "sensor-d", "node-4", "data-a"))
	moved.Release(context.Background())
	// An operator releases the claim: now data-c may start the stream.
	if _, err := ownership.ReleaseClaim(context.Background(), c.Client, "", "s1"); err != nil {
		t.Fatal(err)
	}
	acquire(t, opts(c.Client, "sensor-c", "node-3", "data-c"))
	if _, err := ownership.ReleaseClaim(context.Background(), c.Client, "", "s1"); !errors.As(err, &held) {
		t.Fatalf("releasing a held claim: %v, want HeldError", err)
	}
}

// A holder cut off from Consul stops holding before its session can expire
// (so before anyone could take the stream), and holds it again, by itself,
// once Consul is reachable.
func TestLeaseLostWhenCutOffAndRetaken(t *testing.T) {
	c := testenv.StartConsul(t)
	proxy := testenv.StartProxy(t, c.HTTPAddr)
	cfg := api.DefaultConfig()
	cfg.Address = proxy.Addr
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := acquire(t, opts(client, "sensor-a", "node-1", "data-a"))
	run(t, l)
	sid := l.Claim().Session

	proxy.Cut()
	// Consul expires a session no sooner than its TTL after the last
	// renewal it received: the lease, valid for the TTL from the start of
	// its last renewal, must lapse while Consul still has the session, so
	// that nobody else could have taken the stream yet.
	if !testenv.Eventually(30*time.Second, func() bool { return l.Held() != nil }) {
		t.Fatal("the lease did not lapse while cut off from Consul")
	}
	if e, _, err := c.Client.Session().Info(sid, nil); err != nil || e == nil {
		t.Fatalf("the session was gone (%v) before the cut-off holder stopped holding", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err = l.Hold(ctx)
	cancel()
	if err == nil {
		t.Fatal("Hold returned nil while cut off from Consul")
	}
	// Meanwhile Consul expires the session (it may take up to twice the TTL).
	testenv.WaitFor(t, 40*time.Second, "Consul to expire the cut-off session", func() bool {
		e, _, err := c.Client.Session().Info(sid, nil)
		return err == nil && e == nil
	})

	proxy.Heal()
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Hold(ctx); err != nil {
		t.Fatalf("the lease was not taken again after the cut healed: %v", err)
	}
	if got := l.Claim().Session; got == sid {
		t.Fatalf("still the expired session %s", sid)
	}
}

// A claim held by this instance under another boot of the kernel (the
// machine rebooted, or a copy of its data directory runs elsewhere) is not
// taken while its session lives: nothing proves that holder dead. It is
// taken as soon as the session is gone.
func TestClaimOfAnotherBootWaitsForItsSession(t *testing.T) {
	c := testenv.StartConsul(t)
	sid, _, err := c.Client.Session().CreateNoChecks(&api.SessionEntry{TTL: "60s", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := json.Marshal(ownership.Claim{Stream: "s1", Instance: "sensor-a", Node: "node-1", PID: 1, DataID: "data-a", Session: sid, BootID: "another-boot"})
	if _, err := c.Client.KV().Put(&api.KVPair{Key: ownership.Key("", "s1"), Value: old}, nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := ownership.Acquire(context.Background(), opts(c.Client, "sensor-a", "node-1", "data-a"))
		done <- err
	}()
	// A hold, not synchronisation: the session stays alive on purpose for
	// two of Acquire's looks at it (one a second).
	<-time.After(2500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the claim of another boot was taken while its session lived (%v)", err)
	default:
	}
	if _, err := c.Client.Session().Destroy(sid, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after the session ended: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the claim was not taken after its session ended")
	}
}
