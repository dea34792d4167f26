// Package ownership makes "one owner per stream" enforceable: a process
// assigns a stream's sequence numbers only while it holds the stream's
// claim in Consul.
//
// A claim is a KV entry (<KeyPrefix>/<stream>, JSON) naming the holder:
// its instance id, Consul node, process id, the id of the data directory
// that holds the stream's log (DataID), and a Consul session. The session
// has a TTL the holder renews; the claim is written and taken over only by
// check-and-set on the entry's index, so two processes can never both
// think they took it.
//
// Taking a claim:
//   - none yet: take it;
//   - held by a live session of another process: refuse (HeldError), unless
//     it is this process's own predecessor: the same instance, on the same
//     node, with the same data directory, under the same running kernel
//     (boot id). This process has locked the data directory
//     (durable.LockDir), and flock is the kernel's, so the predecessor is
//     dead though its session has not expired yet: that is a restart after
//     kill -9, and it takes the stream back at once. Under another kernel
//     (the machine rebooted, or a copy of the directory elsewhere) nothing
//     proves it dead: the claim is taken once its session expired;
//   - held by a dead session: take it over, if the data directory is the
//     one the claim names (a moved volume keeps its DataID). A different
//     data directory does not hold the stream's log: taking the stream
//     there would start its sequence again, so it is refused (ErrOtherData)
//     until an operator releases the claim (Release, `svckit stream
//     release`).
//
// Holding a claim: a Lease is valid for TTL minus a margin (TTL/5) after
// the start of its last successful renewal that also found the claim still
// naming its session (Consul expires a session no sooner than TTL after its
// last renewal, and another process can take the claim only after that).
// The margin covers the step from Hold to the append it guards (a GC
// pause, a slow write); the clock is CLOCK_BOOTTIME, which counts a
// suspended machine's sleep. Hold blocks while the lease is not valid: an
// owner cut off from Consul stops assigning sequence numbers before anyone
// else could take its stream, and goes on, after the sequence it stopped
// at, once it holds the claim again.
package ownership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/logging"
)

// DefaultKeyPrefix is where claims live in Consul KV.
const DefaultKeyPrefix = "svckit/streams"

// Options configures a Lease. Client, Stream, Instance and DataID are
// required; other zero values take the defaults named on each field.
type Options struct {
	Client   *api.Client
	Stream   string
	Instance string // the service's instance id
	Node     string // the local Consul agent's node name
	// DataID identifies the data directory holding the stream's log (a
	// random id kept in it): a claim moves only with it.
	DataID    string
	KeyPrefix string        // default DefaultKeyPrefix
	TTL       time.Duration // session TTL; default and minimum 10s (Consul's)
	// Timeout bounds each request to Consul; default TTL/4.
	Timeout time.Duration
	Logger  *slog.Logger // nil = discard
}

// Claim is the KV entry naming a stream's holder.
type Claim struct {
	Stream   string    `json:"stream"`
	Instance string    `json:"instance"`
	Node     string    `json:"node"`
	PID      int       `json:"pid"`
	DataID   string    `json:"data_id"`
	Session  string    `json:"session"`
	Since    time.Time `json:"since"`
	BootID   string    `json:"boot_id,omitempty"` // the holder's kernel boot
}

// HeldError: another live process holds the stream.
type HeldError struct{ Holder Claim }

func (e *HeldError) Error() string {
	return fmt.Sprintf("stream %s is held by instance %s on node %s (pid %d, since %s); refusing to publish it from a second process",
		e.Holder.Stream, e.Holder.Instance, e.Holder.Node, e.Holder.PID, e.Holder.Since.Format(time.RFC3339))
}

// ErrOtherData: the claim names another data directory.
var ErrOtherData = errors.New("the stream's log is in another data directory")

// OtherDataError: the stream's claim names another data directory.
type OtherDataError struct {
	Holder Claim
	DataID string
}

func (e *OtherDataError) Error() string {
	return fmt.Sprintf("stream %s was last held by instance %s on node %s with data directory %s; this one is %s and does not hold the stream's log, so its sequence would start again: refusing (move the stream's directory here, or release the claim with `svckit stream release --stream %s` if the old log is gone for good)",
		e.Holder.Stream, e.Holder.Instance, e.Holder.Node, e.Holder.DataID, e.DataID, e.Holder.Stream)
}

func (e *OtherDataError) Unwrap() error { return ErrOtherData }

// Lease is a held (or once held) claim.
type Lease struct {
	o   Options
	key string
	log *slog.Logger

	epoch      time.Time    // the monotonic clock validUntil counts from
	validUntil atomic.Int64 // ns since epoch; 0 = not held

	mu      sync.Mutex
	session string
	claim   Claim
	changed chan struct{} // closed and replaced when validity changes
	lost    error         // why the lease is not held, for Held
}

// Key is the KV key of stream's claim.
func Key(prefix, stream string) string {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return prefix + "/" + stream + "/owner"
}

// Acquire takes the stream's claim (see the package comment for when it
// refuses) and returns a valid lease; Run keeps it.
func Acquire(ctx context.Context, o Options) (*Lease, error) {
	if o.Client == nil || o.Stream == "" || o.Instance == "" || o.DataID == "" {
		return nil, errors.New("ownership: Client, Stream, Instance and DataID are required")
	}
	if o.TTL <= 0 {
		o.TTL = 10 * time.Second
	}
	if o.TTL < 10*time.Second {
		o.TTL = 10 * time.Second // Consul refuses shorter session TTLs
	}
	if o.Timeout <= 0 {
		o.Timeout = o.TTL / 4
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	l := &Lease{o: o, key: Key(o.KeyPrefix, o.Stream), log: o.Logger.With("stream", o.Stream),
		epoch: time.Now(), changed: make(chan struct{})}
	if err := l.take(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Lease) now() int64 {
	if ns, ok := bootNanos(); ok {
		return ns
	}
	return int64(time.Since(l.epoch))
}

// valid is how long a renewal started at start is good for.
func (l *Lease) valid(start int64) int64 { return start + int64(l.o.TTL-l.o.TTL/5) }

// take creates a session and writes the claim with it, by check-and-set.
func (l *Lease) take(ctx context.Context) error {
	start := l.now()
	sid, err := l.newSessionPatiently(ctx)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		kv, err := l.get(ctx)
		if err != nil {
			l.destroy(sid)
			return err
		}
		var index uint64
		if kv != nil {
			index = kv.ModifyIndex
			var old Claim
			if err := json.Unmarshal(kv.Value, &old); err != nil {
				l.destroy(sid)
				return fmt.Errorf("decoding the claim of stream %s at %s: %w", l.o.Stream, l.key, err)
			}
			if err := l.mayTake(ctx, old); err != nil {
				l.destroy(sid)
				return err
			}
		}
		c := Claim{Stream: l.o.Stream, Instance: l.o.Instance, Node: l.o.Node, PID: os.Getpid(), BootID: bootID(),
			DataID: l.o.DataID, Session: sid, Since: time.Now().UTC()}
		b, _ := json.Marshal(c)
		rctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
		ok, _, err := l.o.Client.KV().CAS(&api.KVPair{Key: l.key, Value: b, ModifyIndex: index}, (&api.WriteOptions{}).WithContext(rctx))
		cancel()
		if err != nil {
			l.destroy(sid)
			return fmt.Errorf("writing the claim of stream %s: %w", l.o.Stream, err)
		}
		if ok {
			l.mu.Lock()
			l.session, l.claim, l.lost = sid, c, nil
			l.mu.Unlock()
			l.setValid(l.valid(start))
			l.log.Info("holding the stream", "key", l.key, "session", sid)
			return nil
		}
		if attempt >= 5 {
			l.destroy(sid)
			return fmt.Errorf("writing the claim of stream %s: it kept changing under us", l.o.Stream)
		}
	}
}

// mayTake decides whether the claim old may be replaced by this process's.
func (l *Lease) mayTake(ctx context.Context, old Claim) error {
	l.mu.Lock()
	mine := old.Session != "" && old.Session == l.session
	l.mu.Unlock()
	if mine {
		return nil // our own session, expired or not: take it back
	}
	alive, err := l.sessionAlive(ctx, old.Session)
	if err != nil {
		return err
	}
	sameData := old.DataID == "" || old.DataID == l.o.DataID
	sameInstance := old.Instance == l.o.Instance && old.Node == l.o.Node
	switch {
	case alive && sameInstance && old.DataID == l.o.DataID && old.BootID != "" && old.BootID == bootID():
		// This process locked the data directory under the same kernel,
		// so the process that held the claim with it is gone: its session
		// just has not expired yet. End it so that nothing lingers.
		l.log.Info("taking the stream back from this instance's previous process", "pid", old.PID, "session", old.Session)
		l.destroy(old.Session)
		return nil
	case alive && sameInstance && old.DataID == l.o.DataID:
		// Under another kernel nothing proves the holder dead: wait for
		// its session to expire.
		return l.waitExpiry(ctx, old)
	case alive && !sameInstance:
		return &HeldError{Holder: old}
	case !sameData:
		// Also this instance restarted with a data directory that is not
		// the one it held the stream with (replaced, or lost).
		return &OtherDataError{Holder: old, DataID: l.o.DataID}
	}
	return nil
}

// waitExpiry waits up to three TTLs (Consul expires a session within two)
// for old's session to expire.
func (l *Lease) waitExpiry(ctx context.Context, old Claim) error {
	l.log.Warn("the stream is held by this instance under another boot of the machine, or a copy of its data directory elsewhere; waiting for that session to expire",
		"node", old.Node, "pid", old.PID, "session", old.Session)
	deadline := time.Now().Add(3 * l.o.TTL)
	for time.Now().Before(deadline) {
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		alive, err := l.sessionAlive(ctx, old.Session)
		if err != nil {
			return err
		}
		if !alive {
			return nil
		}
	}
	return &HeldError{Holder: old}
}

// newSessionPatiently creates a session, asking again while Consul
// answers with a server error: an agent that has just started answers
// "Missing node registration" (500) until its node is in the catalog, and
// a process started with it (the laptop's Procfile, a compose file) must
// not exit for that.
func (l *Lease) newSessionPatiently(ctx context.Context) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	wait := 100 * time.Millisecond
	for {
		sid, err := l.newSession(ctx)
		var se api.StatusError
		if err == nil || !errors.As(err, &se) || se.Code < 500 || time.Now().After(deadline) {
			return sid, err
		}
		l.log.Warn("Consul cannot create a session yet; asking again", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("creating a Consul session for stream %s: %w (last: %v)", l.o.Stream, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(wait*2, 2*time.Second)
	}
}

func (l *Lease) newSession(ctx context.Context) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
	defer cancel()
	// No checks, only the TTL: the node's serf health check would end the
	// session whenever the agent restarts, which is no reason to stop.
	sid, _, err := l.o.Client.Session().CreateNoChecks(&api.SessionEntry{
		Name:     "svckit stream " + l.o.Stream + " (" + l.o.Instance + ")",
		TTL:      l.o.TTL.String(),
		Behavior: api.SessionBehaviorRelease,
	}, (&api.WriteOptions{}).WithContext(rctx))
	if err != nil {
		return "", fmt.Errorf("creating a Consul session for stream %s: %w", l.o.Stream, err)
	}
	return sid, nil
}

func (l *Lease) sessionAlive(ctx context.Context, sid string) (bool, error) {
	if sid == "" {
		return false, nil
	}
	rctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
	defer cancel()
	e, _, err := l.o.Client.Session().Info(sid, (&api.QueryOptions{RequireConsistent: true}).WithContext(rctx))
	if err != nil {
		return false, fmt.Errorf("asking Consul about session %s: %w", sid, err)
	}
	return e != nil, nil
}

func (l *Lease) get(ctx context.Context) (*api.KVPair, error) {
	rctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
	defer cancel()
	kv, _, err := l.o.Client.KV().Get(l.key, (&api.QueryOptions{RequireConsistent: true}).WithContext(rctx))
	if err != nil {
		return nil, fmt.Errorf("reading the claim of stream %s: %w", l.o.Stream, err)
	}
	return kv, nil
}

// destroy ends a session, best effort (an unreachable Consul expires it).
func (l *Lease) destroy(sid string) {
	if sid == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.o.Timeout)
	defer cancel()
	_, _ = l.o.Client.Session().Destroy(sid, (&api.WriteOptions{}).WithContext(ctx))
}

func (l *Lease) setValid(until int64) {
	l.validUntil.Store(until)
	l.mu.Lock()
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// Hold returns nil while the lease is valid; otherwise it waits until it is
// again or ctx ends. It is replay.Owner's Fence.
func (l *Lease) Hold(ctx context.Context) error {
	for {
		l.mu.Lock()
		ch := l.changed
		l.mu.Unlock()
		until := l.validUntil.Load()
		now := l.now()
		if now < until {
			return nil
		}
		var expire <-chan time.Time
		var t *time.Timer
		if until > 0 {
			// Valid until a renewal that may still be under way: look
			// again when it lands (changed) or in a moment.
			t = time.NewTimer(50 * time.Millisecond)
			expire = t.C
		}
		select {
		case <-ch:
		case <-expire:
		case <-ctx.Done():
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("not holding stream %s: %w", l.o.Stream, context.Cause(ctx))
		}
	}
}

// Held is nil while the lease is valid (a readiness check).
func (l *Lease) Held() error {
	if l.now() < l.validUntil.Load() {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return fmt.Errorf("not holding stream %s: %w", l.o.Stream, l.lost)
	}
	return fmt.Errorf("not holding stream %s: its Consul session could not be renewed", l.o.Stream)
}

// Run renews the lease every TTL/3 until ctx ends; when it lost the claim
// (its session expired while Consul was unreachable), it takes it again as
// soon as it may (its own claim, or a dead session with its data). Call
// Release after Run returned.
func (l *Lease) Run(ctx context.Context) {
	every := l.o.TTL / 3
	delay := every
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := l.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.mu.Lock()
			l.lost = err
			l.mu.Unlock()
			l.log.Warn("could not renew the stream's claim", "err", err, "valid_for", time.Duration(l.validUntil.Load()-l.now()).Round(time.Millisecond))
			delay = min(every/3, time.Second) + rand.N(100*time.Millisecond)
			continue
		}
		delay = every
	}
}

// renew renews the session and checks that the claim still names it; if
// the session is gone, it takes the claim again.
func (l *Lease) renew(ctx context.Context) error {
	start := l.now()
	l.mu.Lock()
	sid := l.session
	l.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
	e, _, err := l.o.Client.Session().Renew(sid, (&api.WriteOptions{}).WithContext(rctx))
	cancel()
	if err != nil {
		return fmt.Errorf("renewing session %s: %w", sid, err)
	}
	if e == nil {
		// Expired (Consul was out of reach for a TTL): stop until the
		// claim is ours again.
		l.validUntil.Store(0)
		l.log.Warn("the stream's Consul session expired; not assigning sequence numbers until the claim is taken again")
		if err := l.take(ctx); err != nil {
			return fmt.Errorf("taking the claim again: %w", err)
		}
		return nil
	}
	kv, err := l.get(ctx)
	if err != nil {
		return err
	}
	var c Claim
	if kv == nil || json.Unmarshal(kv.Value, &c) != nil || c.Session != sid {
		// Released or taken by an operator: do not publish alongside
		// whoever has it now.
		l.validUntil.Store(0)
		l.destroy(sid)
		err := errors.New("the claim no longer names this process")
		l.log.Error("lost the stream's claim; not assigning sequence numbers", "err", err)
		if terr := l.take(ctx); terr != nil {
			return fmt.Errorf("%v; taking it again: %w", err, terr)
		}
		return nil
	}
	l.setValid(l.valid(start))
	l.mu.Lock()
	l.lost = nil
	l.mu.Unlock()
	return nil
}

// Release ends the session (clean shutdown). The claim stays, naming this
// instance and data directory, so only a process with this data directory
// takes the stream next; it may at once.
func (l *Lease) Release(context.Context) error {
	l.validUntil.Store(0)
	l.mu.Lock()
	sid := l.session
	l.mu.Unlock()
	l.destroy(sid)
	return nil
}

// Claim is the claim as this lease last wrote it.
func (l *Lease) Claim() Claim {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.claim
}

// ShowClaim returns a stream's claim and whether a live session holds it.
func ShowClaim(ctx context.Context, client *api.Client, prefix, stream string) (Claim, bool, error) {
	key := Key(prefix, stream)
	kv, _, err := client.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return Claim{}, false, fmt.Errorf("reading the claim of stream %s: %w", stream, err)
	}
	if kv == nil {
		return Claim{}, false, fmt.Errorf("stream %s has no claim at %s", stream, key)
	}
	var c Claim
	if err := json.Unmarshal(kv.Value, &c); err != nil {
		return Claim{}, false, fmt.Errorf("decoding the claim of stream %s: %w", stream, err)
	}
	if c.Session == "" {
		return c, false, nil
	}
	e, _, err := client.Session().Info(c.Session, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return c, false, fmt.Errorf("asking Consul about session %s: %w", c.Session, err)
	}
	return c, e != nil, nil
}

// ReleaseClaim deletes a stream's claim so that a process with another data
// directory may take the stream (`svckit stream release`): only when no
// live session holds it.
func ReleaseClaim(ctx context.Context, client *api.Client, prefix, stream string) (Claim, error) {
	key := Key(prefix, stream)
	kv, _, err := client.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return Claim{}, fmt.Errorf("reading the claim of stream %s: %w", stream, err)
	}
	c, alive, err := ShowClaim(ctx, client, prefix, stream)
	if err != nil {
		return c, err
	}
	if alive {
		return c, &HeldError{Holder: c}
	}
	if kv == nil {
		return c, fmt.Errorf("stream %s has no claim at %s", stream, key)
	}
	ok, _, err := client.KV().DeleteCAS(&api.KVPair{Key: key, ModifyIndex: kv.ModifyIndex}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return c, fmt.Errorf("deleting the claim of stream %s: %w", stream, err)
	}
	if !ok {
		return c, fmt.Errorf("the claim of stream %s changed while releasing it; try again", stream)
	}
	return c, nil
}
