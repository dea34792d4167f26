package nsqauth

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/logging"
)

// LoadFile reads and compiles the policy in path, with secrets from getenv.
func LoadFile(path string, getenv func(string) string) (*Table, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return Compile(p, getenv, nil)
}

// FileSource follows a policy file: it is read again when its size or
// modification time changes. A file that no longer parses keeps the last
// good table in use (and shows in the server's Ready).
type FileSource struct {
	Path     string
	Getenv   func(string) string
	Interval time.Duration // how often the file is looked at; default 2s
	Logger   *slog.Logger
}

// Run follows the file until ctx ends; the server must already have the
// table of the file as it is now (LoadFile).
func (f *FileSource) Run(ctx context.Context, srv *Server) {
	if f.Interval <= 0 {
		f.Interval = 2 * time.Second
	}
	log := f.Logger
	if log == nil {
		log = logging.Discard()
	}
	stamp := func() string {
		st, err := os.Stat(f.Path)
		if err != nil {
			return "error: " + err.Error()
		}
		return fmt.Sprintf("%d %d", st.Size(), st.ModTime().UnixNano())
	}
	last := stamp()
	tick := time.NewTicker(f.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := stamp()
		if now == last {
			continue
		}
		last = now
		t, err := LoadFile(f.Path, f.Getenv)
		if err != nil {
			log.Error("nsqauth policy file changed but cannot be used; keeping the last one", "file", f.Path, "err", err)
			srv.SetSourceError(err)
			continue
		}
		srv.SetSourceError(nil)
		srv.SetTable(t)
	}
}

// DefaultKVPrefix is where the datacenters keep the policy in Consul KV.
const DefaultKVPrefix = "svckit/nsqauth"

// PolicyKey is the Consul KV key of the policy under prefix.
func PolicyKey(prefix string) string { return strings.TrimSuffix(prefix, "/") + "/policy" }

// IssuedKey is the Consul KV key under which a secret issued to identity
// is registered (its hex SHA-256) by name (an issuer: a host, an operator).
func IssuedKey(prefix, identity, name string) string {
	return strings.TrimSuffix(prefix, "/") + "/issued/" + identity + "/" + name
}

// KVSource follows the policy in Consul KV (<prefix>/policy) and the
// secrets registered under <prefix>/issued/<identity>/<name>, with
// blocking queries: every instance of the server sees a change within
// moments. While Consul does not answer, the last table stays in use.
type KVSource struct {
	KV     *api.KV
	Prefix string
	// Seed is written to <prefix>/policy if no policy is there (create
	// only: a policy an operator changed in KV is never overwritten).
	Seed   []byte
	Getenv func(string) string
	Logger *slog.Logger
}

// Run follows the prefix until ctx ends.
func (k *KVSource) Run(ctx context.Context, srv *Server) {
	log := k.Logger
	if log == nil {
		log = logging.Discard()
	}
	prefix := strings.TrimSuffix(k.Prefix, "/")
	policyKey := PolicyKey(prefix)
	var idx uint64
	var lastErr, lastSeen string
	seeded := false
	delay := 200 * time.Millisecond
	fail := func(err error) {
		srv.SetSourceError(err)
		if msg := err.Error(); msg != lastErr {
			log.Error("nsqauth policy from Consul KV", "err", err)
			lastErr = msg
		}
	}
	for ctx.Err() == nil {
		pairs, meta, err := k.KV.List(prefix+"/", (&api.QueryOptions{WaitIndex: idx, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fail(fmt.Errorf("reading Consul KV %s/: %w (answering with the last policy read)", prefix, err))
			if !sleep(ctx, delay/2+mrand.N(delay/2+1)) {
				return
			}
			delay = min(delay*2, 5*time.Second)
			continue
		}
		delay = 200 * time.Millisecond
		// Consul's rules for blocking queries: an index that went back
		// starts over, and it is never 0.
		if meta.LastIndex < idx {
			idx = 0
		} else {
			idx = meta.LastIndex
		}
		idx = max(idx, 1)
		var policy []byte
		issued := Issued{}
		for _, p := range pairs {
			if p.Key == policyKey {
				policy = p.Value
				continue
			}
			rest, ok := strings.CutPrefix(p.Key, prefix+"/issued/")
			if !ok {
				continue
			}
			id, name, ok := strings.Cut(rest, "/")
			if !ok || id == "" || name == "" || strings.Contains(name, "/") {
				continue
			}
			if issued[id] == nil {
				issued[id] = map[string]string{}
			}
			issued[id][name] = string(p.Value)
		}
		if policy == nil {
			if len(k.Seed) > 0 && !seeded {
				ok, _, err := k.KV.CAS(&api.KVPair{Key: policyKey, Value: k.Seed, ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
				if err != nil {
					fail(fmt.Errorf("seeding %s in Consul KV: %w", policyKey, err))
					if !sleep(ctx, time.Second) {
						return
					}
					continue
				}
				seeded = true
				if ok {
					log.Info("nsqauth policy seeded in Consul KV", "key", policyKey)
				}
				idx = 0 // read it back at once
				continue
			}
			fail(fmt.Errorf("no policy at %s in Consul KV", policyKey))
			continue
		}
		seen := fingerprint(policy, issued)
		if seen == lastSeen {
			continue
		}
		p, err := ParsePolicy(policy)
		if err != nil {
			fail(fmt.Errorf("Consul KV %s: %w (answering with the last good policy)", policyKey, err))
			lastSeen = seen
			continue
		}
		t, err := Compile(p, k.Getenv, issued)
		if err != nil {
			fail(fmt.Errorf("Consul KV %s: %w (answering with the last good policy)", policyKey, err))
			lastSeen = seen
			continue
		}
		lastSeen, lastErr = seen, ""
		srv.SetSourceError(nil)
		srv.SetTable(t)
	}
}

// fingerprint identifies what a table is built from, so that a blocking
// query that returned without a change rebuilds nothing.
func fingerprint(policy []byte, issued Issued) string {
	var b strings.Builder
	b.Write(policy)
	for _, id := range slices.Sorted(maps.Keys(issued)) {
		for _, name := range slices.Sorted(maps.Keys(issued[id])) {
			fmt.Fprintf(&b, "\x00%s\x00%s\x00%s", id, name, issued[id][name])
		}
	}
	return b.String()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// NewSecret is a new random secret: 32 random bytes, hex.
func NewSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail
	return hex.EncodeToString(b)
}

// IssueSecret returns the secret kept in path, making a new one first when
// the file is missing or empty: written to a temporary file in the same
// directory (mode 0600), fsynced, renamed into place, the directory
// fsynced. A service given the file (--nsq-auth-secret-file) reads it.
func IssueSecret(path string) (secret string, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		s := strings.TrimSpace(string(b))
		if len(s) < MinSecretLen {
			return "", false, fmt.Errorf("%s: the secret in it is shorter than %d characters", path, MinSecretLen)
		}
		return s, false, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", false, err
	}
	secret = NewSecret()
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".secret-*")
	if err != nil {
		return "", false, err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename: nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return "", false, err
	}
	if _, err := f.WriteString(secret + "\n"); err != nil {
		f.Close()
		return "", false, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", false, err
	}
	if err := f.Close(); err != nil {
		return "", false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", false, err
	}
	if err := durable.OS().SyncDir(dir); err != nil {
		return "", false, err
	}
	return secret, true, nil
}

// RegisterIssued writes the hash of a secret issued to identity under
// name in Consul KV, trying again with backoff until it is written or ctx
// ends.
func RegisterIssued(ctx context.Context, kv *api.KV, prefix, identity, name, hash string, log *slog.Logger) error {
	if log == nil {
		log = logging.Discard()
	}
	key := IssuedKey(prefix, identity, name)
	delay := 200 * time.Millisecond
	last := ""
	for {
		_, err := kv.Put(&api.KVPair{Key: key, Value: []byte(hash)}, (&api.WriteOptions{}).WithContext(ctx))
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if msg := err.Error(); msg != last {
			log.Warn("registering an issued secret in Consul KV; trying again", "key", key, "err", err)
			last = msg
		}
		if !sleep(ctx, delay/2+mrand.N(delay/2+1)) {
			return ctx.Err()
		}
		delay = min(delay*2, 5*time.Second)
	}
}
