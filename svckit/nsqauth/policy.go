// Package nsqauth is an authorization server for nsqd's auth protocol
// (nsqd --auth-http-address): nsqd asks it
//
//	GET /auth?remote_ip=…&tls=true|false&secret=…&common_name=…
//
// when a client sends AUTH, and again once the answer's ttl has passed, and
// allows the client exactly what the answer lists:
//
//	{"ttl": 60, "identity": "worker", "identity_url": "",
//	 "authorizations": [{"topic": "^results$", "channels": [".*"], "permissions": ["publish"]}, …]}
//
// Which secret is which identity, and what each identity may do, is a
// Policy (JSON): kept in a file, or in Consul KV, where every instance of
// the server follows it with blocking queries. A policy names no secret:
// an identity's secret is read from the server's environment (secret_env),
// given as its SHA-256 (secret_sha256), or issued by a server instance and
// registered as a SHA-256 in Consul KV (see Issue). A secret the policy
// does not know gets no authorization, and nsqd closes the connection.
//
// Topic and channel names in a policy are exact names or globs, where *
// stands for any characters (NSQ names cannot contain it); everything is
// anchored, so "readings" does not match "readings.dead".
//
// The server runs as a svckit service: `svckit nsqauth serve` (package
// cmd/svckit/internal/operator), which also has `hash` and `issue` for
// operators.
//
// nsqd's HTTP API (/pub, /mpub, /topic/create, …) is not covered by this
// protocol: whoever reaches it may publish anywhere. Bind it to loopback.
package nsqauth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// DefaultTTL is how long nsqd may keep an answer, in seconds, when the
// policy does not say: a revoked secret or permission stops working on a
// connection at most this long after the server learnt of it.
const DefaultTTL = 60

// MinSecretLen is the shortest secret the server accepts from its
// environment: a short one could be guessed through nsqd's AUTH.
const MinSecretLen = 16

// Policy is the configuration of the server: identities and what each may
// do.
type Policy struct {
	// TTL is how long (seconds) nsqd keeps an answer before asking again.
	TTL int `json:"ttl,omitempty"`
	// RequireTLS refuses every secret that nsqd received over a connection
	// without TLS (the secret crossed the network in clear); an identity's
	// own require_tls overrides it.
	RequireTLS bool `json:"require_tls,omitempty"`
	// Identities by name (the identity nsqd logs and shows in its stats).
	Identities map[string]Identity `json:"identities"`
}

// Identity is one client identity: how its secret is known, and what it
// may publish and subscribe to.
type Identity struct {
	// SecretEnv names the environment variable of the server that holds
	// this identity's secret. Unset or empty: no secret from there.
	SecretEnv string `json:"secret_env,omitempty"`
	// SecretSHA256 are hex SHA-256 digests of secrets of this identity.
	SecretSHA256 []string `json:"secret_sha256,omitempty"`
	// RequireTLS overrides the policy's require_tls for this identity.
	RequireTLS *bool `json:"require_tls,omitempty"`
	// IdentityURL is passed to nsqd as identity_url (informative).
	IdentityURL string `json:"identity_url,omitempty"`
	// Publish lists the topics (names or globs) the identity may publish to.
	Publish []string `json:"publish,omitempty"`
	// Subscribe maps topics (names or globs) to the channels (names or
	// globs) the identity may subscribe to on them.
	Subscribe map[string][]string `json:"subscribe,omitempty"`
}

// Authorization is one entry of nsqd's auth answer. Topic and channels are
// regular expressions, which nsqd does not anchor.
type Authorization struct {
	Topic       string   `json:"topic"`
	Channels    []string `json:"channels"`
	Permissions []string `json:"permissions"`
}

// Answer is the server's answer to nsqd.
type Answer struct {
	TTL            int             `json:"ttl"`
	Identity       string          `json:"identity"`
	IdentityURL    string          `json:"identity_url"`
	Authorizations []Authorization `json:"authorizations"`
}

var (
	identityName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	// an NSQ topic or channel name in which * may stand for any characters
	nameGlob = regexp.MustCompile(`^[.a-zA-Z0-9_*-]{1,64}(#ephemeral)?$`)
	hexSHA   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	envName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// ServiceName is the authorization server's name in Consul.
const ServiceName = "nsqauth"

// ValidIdentity reports whether name can be an identity: 1-64 of
// [A-Za-z0-9._-], starting with a letter or digit.
func ValidIdentity(name string) bool { return identityName.MatchString(name) }

// ParsePolicy reads a policy (JSON; unknown fields are an error, so that
// a misspelt permission is not silently ignored) and checks it.
func ParsePolicy(b []byte) (*Policy, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if dec.More() {
		return nil, errors.New("policy: trailing data after the JSON object")
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate reports the first problem of the policy, naming the identity.
func (p *Policy) Validate() error {
	if p.TTL < 0 {
		return fmt.Errorf("policy: ttl %d: must be positive (or absent: %d)", p.TTL, DefaultTTL)
	}
	if len(p.Identities) == 0 {
		return errors.New("policy: no identities")
	}
	for _, name := range slices.Sorted(maps.Keys(p.Identities)) {
		id := p.Identities[name]
		if !identityName.MatchString(name) {
			return fmt.Errorf("policy: identity %q: want 1-64 of [A-Za-z0-9._-]", name)
		}
		if id.SecretEnv != "" && !envName.MatchString(id.SecretEnv) {
			return fmt.Errorf("policy: identity %s: secret_env %q is not an environment variable name", name, id.SecretEnv)
		}
		for _, h := range id.SecretSHA256 {
			if !hexSHA.MatchString(h) {
				return fmt.Errorf("policy: identity %s: secret_sha256 %q: want 64 lower-case hex digits", name, h)
			}
		}
		if len(id.Publish) == 0 && len(id.Subscribe) == 0 {
			return fmt.Errorf("policy: identity %s may neither publish nor subscribe", name)
		}
		for _, t := range id.Publish {
			if !nameGlob.MatchString(t) {
				return fmt.Errorf("policy: identity %s: publish %q: want a topic name, * standing for any characters", name, t)
			}
		}
		for t, chans := range id.Subscribe {
			if !nameGlob.MatchString(t) {
				return fmt.Errorf("policy: identity %s: subscribe %q: want a topic name, * standing for any characters", name, t)
			}
			if len(chans) == 0 {
				return fmt.Errorf("policy: identity %s: subscribe %q: no channels", name, t)
			}
			for _, c := range chans {
				if !nameGlob.MatchString(c) {
					return fmt.Errorf("policy: identity %s: subscribe %q: channel %q: want a channel name, * standing for any characters", name, t, c)
				}
			}
		}
	}
	return nil
}

// GlobRegexp turns a name or glob into the anchored regular expression
// nsqd is given: * is any characters, everything else is literal.
func GlobRegexp(glob string) string {
	parts := strings.Split(glob, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return "^" + strings.Join(parts, ".*") + "$"
}

// Authorizations is what the identity may do, as nsqd wants it: one entry
// per topic published to (nsqd checks a publish against the channel "",
// which ".*" matches) and one per topic subscribed to. The order is
// stable.
func (id Identity) Authorizations() []Authorization {
	out := make([]Authorization, 0, len(id.Publish)+len(id.Subscribe))
	for _, t := range id.Publish {
		out = append(out, Authorization{Topic: GlobRegexp(t), Channels: []string{".*"}, Permissions: []string{"publish"}})
	}
	for _, t := range slices.Sorted(maps.Keys(id.Subscribe)) {
		a := Authorization{Topic: GlobRegexp(t), Permissions: []string{"subscribe"}}
		for _, c := range id.Subscribe[t] {
			a.Channels = append(a.Channels, GlobRegexp(c))
		}
		out = append(out, a)
	}
	return out
}

// HashSecret is the hex SHA-256 of a secret, as policies and Consul KV keep
// it.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// Table is a compiled policy: every known secret (by its SHA-256) with its
// identity's answer. It is immutable.
type Table struct {
	ttl     int
	byHash  map[[32]byte]*entry
	answers map[string]*entry // by identity
	// Warnings are what compiling found wrong but survivable (an unset
	// secret_env, a registered hash for an unknown identity, …).
	Warnings []string
}

type entry struct {
	identity   string
	requireTLS bool
	answer     Answer
	secrets    int
}

// Issued are secrets registered outside the policy: identity → name of
// the registration → hex SHA-256.
type Issued map[string]map[string]string

// Compile builds the table: secrets from getenv (secret_env), from the
// policy (secret_sha256) and issued ones. A secret claimed by two
// identities is an error: nsqd would be told either.
func Compile(p *Policy, getenv func(string) string, issued Issued) (*Table, error) {
	t := &Table{ttl: p.TTL, byHash: map[[32]byte]*entry{}, answers: map[string]*entry{}}
	if t.ttl == 0 {
		t.ttl = DefaultTTL
	}
	owner := map[[32]byte]string{}
	add := func(e *entry, hexHash, from string) error {
		var h [32]byte
		if _, err := hex.Decode(h[:], []byte(hexHash)); err != nil || len(hexHash) != 64 {
			t.Warnings = append(t.Warnings, fmt.Sprintf("identity %s: %s: not a hex SHA-256: ignored", e.identity, from))
			return nil
		}
		if other, ok := owner[h]; ok && other != e.identity {
			return fmt.Errorf("policy: identities %s and %s share a secret (%s)", other, e.identity, from)
		}
		owner[h] = e.identity
		if t.byHash[h] == nil {
			e.secrets++
		}
		t.byHash[h] = e
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(p.Identities)) {
		id := p.Identities[name]
		e := &entry{identity: name, requireTLS: p.RequireTLS}
		if id.RequireTLS != nil {
			e.requireTLS = *id.RequireTLS
		}
		e.answer = Answer{TTL: t.ttl, Identity: name, IdentityURL: id.IdentityURL, Authorizations: id.Authorizations()}
		t.answers[name] = e
		if id.SecretEnv != "" {
			switch v := strings.TrimSpace(getenv(id.SecretEnv)); {
			case v == "":
				t.Warnings = append(t.Warnings, fmt.Sprintf("identity %s: $%s is not set: no secret from the environment", name, id.SecretEnv))
			case len(v) < MinSecretLen:
				t.Warnings = append(t.Warnings, fmt.Sprintf("identity %s: $%s is shorter than %d characters: ignored", name, id.SecretEnv, MinSecretLen))
			default:
				if err := add(e, HashSecret(v), "$"+id.SecretEnv); err != nil {
					return nil, err
				}
			}
		}
		for i, h := range id.SecretSHA256 {
			if err := add(e, h, fmt.Sprintf("secret_sha256[%d]", i)); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(issued)) {
		e := t.answers[name]
		if e == nil {
			t.Warnings = append(t.Warnings, fmt.Sprintf("secrets issued to %s, which the policy does not name: ignored", name))
			continue
		}
		for _, reg := range slices.Sorted(maps.Keys(issued[name])) {
			if err := add(e, strings.TrimSpace(issued[name][reg]), "issued "+reg); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// Refusal is why a secret was refused.
type Refusal string

// Reasons a secret is refused.
const (
	RefusedUnknown Refusal = "unknown secret"
	RefusedNoTLS   Refusal = "TLS required"
)

// Lookup answers for a secret: the identity's answer, or a refusal. tls is
// whether the client's connection to nsqd uses TLS.
func (t *Table) Lookup(secret string, tls bool) (Answer, Refusal) {
	if secret == "" {
		return Answer{}, RefusedUnknown
	}
	e := t.byHash[sha256.Sum256([]byte(secret))]
	if e == nil {
		return Answer{}, RefusedUnknown
	}
	if e.requireTLS && !tls {
		return Answer{Identity: e.identity}, RefusedNoTLS
	}
	return e.answer, ""
}

// TTL is the ttl the table answers with.
func (t *Table) TTL() int { return t.ttl }

// IdentityInfo describes one identity for GET /identities: never a secret
// or a hash.
type IdentityInfo struct {
	Identity       string          `json:"identity"`
	Secrets        int             `json:"secrets"` // how many secrets are known for it
	RequireTLS     bool            `json:"require_tls"`
	Authorizations []Authorization `json:"authorizations"`
}

// Identities lists the identities, by name.
func (t *Table) Identities() []IdentityInfo {
	out := make([]IdentityInfo, 0, len(t.answers))
	for _, e := range t.answers {
		out = append(out, IdentityInfo{Identity: e.identity, Secrets: e.secrets, RequireTLS: e.requireTLS, Authorizations: e.answer.Authorizations})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}
