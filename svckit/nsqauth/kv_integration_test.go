package nsqauth_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/nsqauth"
	"github.com/svckit/svckit/svckit/testenv"
)

const seed = `{"identities": {
  "sensor": {"publish": ["readings"]},
  "worker": {"subscribe": {"readings": ["workers"]}, "publish": ["results"]}
}}`

// The policy in Consul KV against a real agent: seeded once (an operator's
// policy is never overwritten), secrets issued by one server instance are
// known to every instance following the prefix, a change of the policy or
// a revoked secret reaches them at once, and a broken policy keeps the
// last good one in use.
func TestKVSourceFollowsConsul(t *testing.T) {
	c := testenv.StartConsul(t)
	kv := c.Client.KV()
	const prefix = "test/nsqauth"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(seed string) *nsqauth.Server {
		srv := nsqauth.NewServer(nsqauth.ServerOptions{})
		src := &nsqauth.KVSource{KV: kv, Prefix: prefix, Seed: []byte(seed), Getenv: func(string) string { return "" }}
		go src.Run(ctx, srv)
		return srv
	}
	identity := func(srv *nsqauth.Server, secret string) string {
		t := srv.Table()
		if t == nil {
			return "(no table)"
		}
		a, refused := t.Lookup(secret, false)
		if refused != "" {
			return "(" + string(refused) + ")"
		}
		return a.Identity
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		testenv.WaitFor(t, 30*time.Second, what, cond)
	}

	a := start(seed)
	wait("the seed in KV and in server a", func() bool { return a.Ready() == nil })
	pair, _, err := kv.Get(nsqauth.PolicyKey(prefix), nil)
	if err != nil || pair == nil || string(pair.Value) != seed {
		t.Fatalf("policy in KV: %v %v", pair, err)
	}
	// A second instance with another seed changes nothing.
	b := start(`{"identities": {"other": {"publish": ["x"]}}}`)
	wait("server b loaded", func() bool { return b.Ready() == nil })
	if pair, _, _ := kv.Get(nsqauth.PolicyKey(prefix), nil); string(pair.Value) != seed {
		t.Fatalf("the policy in KV was overwritten by a seed: %s", pair.Value)
	}

	// A secret issued through a file, registered by one issuer, known to both.
	secret, created, err := nsqauth.IssueSecret(filepath.Join(t.TempDir(), "secret"))
	if err != nil || !created {
		t.Fatal(err)
	}
	if identity(a, secret) != "(unknown secret)" {
		t.Fatal("a secret not registered yet was known")
	}
	if err := nsqauth.RegisterIssued(ctx, kv, prefix, "worker", "host1", nsqauth.HashSecret(secret), nil); err != nil {
		t.Fatal(err)
	}
	for name, srv := range map[string]*nsqauth.Server{"a": a, "b": b} {
		wait("server "+name+" knows the issued secret", func() bool { return identity(srv, secret) == "worker" })
	}

	// The policy changes: worker becomes sensor-like.
	if _, err := kv.Put(&api.KVPair{Key: nsqauth.PolicyKey(prefix), Value: []byte(strings.Replace(seed, `"publish": ["results"]`, `"publish": ["results", "extra"]`, 1))}, nil); err != nil {
		t.Fatal(err)
	}
	wait("server a sees the new policy", func() bool {
		an, _ := a.Table().Lookup(secret, false)
		return len(an.Authorizations) == 3
	})

	// A broken policy: the last good one stays, Ready says why.
	if _, err := kv.Put(&api.KVPair{Key: nsqauth.PolicyKey(prefix), Value: []byte(`{"identities": {"worker": {"publsh": ["x"]}}}`)}, nil); err != nil {
		t.Fatal(err)
	}
	wait("server a reports the broken policy", func() bool {
		err := a.Ready()
		return err != nil && strings.Contains(err.Error(), "unknown field")
	})
	if identity(a, secret) != "worker" {
		t.Fatal("a broken policy dropped the last good one")
	}

	// Revoking the issued secret.
	if _, err := kv.Delete(nsqauth.IssuedKey(prefix, "worker", "host1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(&api.KVPair{Key: nsqauth.PolicyKey(prefix), Value: []byte(seed)}, nil); err != nil {
		t.Fatal(err)
	}
	for name, srv := range map[string]*nsqauth.Server{"a": a, "b": b} {
		wait("server "+name+" forgets the revoked secret", func() bool { return identity(srv, secret) == "(unknown secret)" && srv.Ready() == nil })
	}

	// Consul away: the servers keep answering with what they have.
	if err := nsqauth.RegisterIssued(ctx, kv, prefix, "sensor", "host1", nsqauth.HashSecret(secret), nil); err != nil {
		t.Fatal(err)
	}
	wait("server a knows the sensor's secret", func() bool { return identity(a, secret) == "sensor" })
	c.Kill()
	wait("server a notices Consul is away", func() bool { return a.Ready() != nil })
	if identity(a, secret) != "sensor" {
		t.Fatal("server a forgot its table while Consul was away")
	}
}
