package operator

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/nsqauth"
	"github.com/svckit/svckit/svckit/ownership"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/urfave/cli/v2"
)

func aclCommand() *cli.Command {
	return &cli.Command{
		Name:  "acl",
		Usage: "Consul ACLs for a pipeline: one least-privilege token per service",
		Subcommands: []*cli.Command{{
			Name:  "apply",
			Usage: "create or update the policies and tokens (needs a management token: CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE)",
			Description: `Each service NAME (--service) gets the policy svckit-service-NAME and a
token whose secret is written to --tokens/NAME.token (0600): it may register
and deregister instances of NAME only, and read the catalog (services and
nodes, which discovery needs) and its agent's own description.

--node NODE names a Consul node (agent) the services talk to: they may read
that agent's own description (which node it is), and owners may create
sessions on it, and nothing of other nodes' agents and sessions.

--owner NAME=STREAM lets NAME own STREAM: create sessions on the --nodes and
write its claim under svckit/streams/STREAM/ (one owner per stream), nothing
else in KV.
--nsqauth NAME lets NAME read the nsqd authorization policy
(svckit/nsqauth/policy) and register the secrets it issues
(svckit/nsqauth/issued/). --agent NODE gives the Consul agent of NODE its
token (--tokens/agent-NODE.token): write its node, register the services its
configuration names (--agent-service, default nsqd and nsqlookupd).

A token file that exists is kept: its secret is the token's, so that applying
again, or on a datacenter whose Consul lost its data, gives every service the
token it already has. Applying twice changes nothing.

--bootstrap makes the management token given (CONSUL_HTTP_TOKEN or
CONSUL_HTTP_TOKEN_FILE, e.g. the management.token of 'svckit secrets init')
Consul's, once per datacenter: on a datacenter already bootstrapped it only
checks that the token is still a management token. No agent's configuration
holds it. --nsqauth-policy writes nsqd's authorization policy when none is
there (nsqauth's own token may only read it); an existing policy is never
overwritten. --wait waits for the datacenter's Consul to have a leader
first; without one in time the exit status is 75 (try again later: the
servers of a multi-host datacenter elect one when enough of them are up).`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "tokens", Required: true, Usage: "directory for the token files (created 0700)"},
				&cli.StringSliceFlag{Name: "service", Usage: "a service name (repeatable)"},
				&cli.StringSliceFlag{Name: "node", Usage: "a Consul node whose agent the services talk to (repeatable; required with --service or --owner)"},
				&cli.StringSliceFlag{Name: "owner", Usage: "NAME=STREAM: the service may own the stream (repeatable)"},
				&cli.StringSliceFlag{Name: "nsqauth", Usage: "the nsqd authorization server's service name (repeatable)"},
				&cli.StringSliceFlag{Name: "agent", Usage: "a Consul agent's node name (repeatable)"},
				&cli.StringSliceFlag{Name: "agent-service", Value: cli.NewStringSlice("nsqd", "nsqlookupd"), Usage: "services the agents register from their configuration"},
				&cli.BoolFlag{Name: "bootstrap", Usage: "make the management token given Consul's if the datacenter's ACLs are not bootstrapped yet"},
				&cli.StringFlag{Name: "nsqauth-policy", Usage: "file with nsqd's authorization policy, written to Consul KV when none is there"},
				&cli.DurationFlag{Name: "wait", Usage: "wait up to this long for a Consul leader (exit status 75 without one)"},
			},
			Action: runACLApply,
		}},
	}
}

// aclRole is one token: its policy's rules.
type aclRole struct {
	name  string // token file name, policy svckit-<kind>-<name>
	kind  string // service or agent
	rules []string
}

func (r aclRole) policyName() string { return "svckit-" + r.kind + "-" + r.name }
func (r aclRole) fileName() string {
	if r.kind == "agent" {
		return "agent-" + r.name + ".token"
	}
	return r.name + ".token"
}

// aclRoles turns the flags into roles, each with the least its job needs.
func aclRoles(services, nodes, owners, auths, agents, agentServices []string) ([]aclRole, error) {
	// Discovery reads the catalog.
	catalogRead := []string{`service_prefix "" { policy = "read" }`, `node_prefix "" { policy = "read" }`}
	// A service asks its agent who it is (/v1/agent/self: its node, the
	// address it reaches Consul from): read of those agents only, not of
	// every agent (an agent's monitor streams its log).
	var agentRead, sessions []string
	for _, n := range nodes {
		if !validName(n) {
			return nil, fmt.Errorf("--node %q: want [A-Za-z0-9_-]", n)
		}
		agentRead = append(agentRead, fmt.Sprintf(`agent %q { policy = "read" }`, n))
		// A session lives on the node of the agent the owner talks to;
		// write of sessions on other nodes would let it destroy other
		// owners' sessions, and with them their claims.
		sessions = append(sessions, fmt.Sprintf(`session %q { policy = "write" }`, n))
	}
	if len(nodes) == 0 && (len(services) > 0 || len(owners) > 0 || len(auths) > 0) {
		return nil, errors.New("--node: name the Consul nodes whose agents the services talk to")
	}
	byName := map[string]*aclRole{}
	var order []string
	role := func(name string) (*aclRole, error) {
		if !validName(name) || strings.HasPrefix(name, "agent-") {
			return nil, fmt.Errorf("service name %q: want [A-Za-z0-9_-], not starting with agent- (the agents' token files)", name)
		}
		if r, ok := byName[name]; ok {
			return r, nil
		}
		rules := append([]string{fmt.Sprintf(`service %q { policy = "write" }`, name)}, catalogRead...)
		r := &aclRole{name: name, kind: "service", rules: append(rules, agentRead...)}
		byName[name] = r
		order = append(order, name)
		return r, nil
	}
	for _, s := range services {
		if _, err := role(s); err != nil {
			return nil, fmt.Errorf("--service: %w", err)
		}
	}
	for _, o := range owners {
		name, stream, ok := strings.Cut(o, "=")
		if !ok || !replay.ValidStreamID(stream) {
			return nil, fmt.Errorf("--owner %q: want NAME=STREAM", o)
		}
		r, err := role(name)
		if err != nil {
			return nil, fmt.Errorf("--owner: %w", err)
		}
		for _, rule := range sessions {
			if !slices.Contains(r.rules, rule) {
				r.rules = append(r.rules, rule)
			}
		}
		r.rules = append(r.rules, fmt.Sprintf(`key_prefix %q { policy = "write" }`, ownership.DefaultKeyPrefix+"/"+stream+"/"))
	}
	for _, a := range auths {
		r, err := role(a)
		if err != nil {
			return nil, fmt.Errorf("--nsqauth: %w", err)
		}
		r.rules = append(r.rules,
			fmt.Sprintf(`key %q { policy = "read" }`, nsqauth.DefaultKVPrefix+"/policy"),
			fmt.Sprintf(`key_prefix %q { policy = "write" }`, nsqauth.DefaultKVPrefix+"/issued/"))
	}
	roles := make([]aclRole, 0, len(order)+len(agents))
	for _, n := range order {
		roles = append(roles, *byName[n])
	}
	for _, node := range agents {
		if !validName(node) {
			return nil, fmt.Errorf("--agent %q: want [A-Za-z0-9_-]", node)
		}
		rules := append([]string{fmt.Sprintf(`node %q { policy = "write" }`, node)}, catalogRead...)
		for _, s := range agentServices {
			rules = append(rules, fmt.Sprintf(`service %q { policy = "write" }`, s))
		}
		roles = append(roles, aclRole{name: node, kind: "agent", rules: rules})
	}
	if len(roles) == 0 {
		return nil, errors.New("nothing to apply: give --service, --owner, --nsqauth or --agent")
	}
	return roles, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func runACLApply(c *cli.Context) error {
	roles, err := aclRoles(c.StringSlice("service"), c.StringSlice("node"), c.StringSlice("owner"), c.StringSlice("nsqauth"), c.StringSlice("agent"), c.StringSlice("agent-service"))
	if err != nil {
		return usageError{err}
	}
	dir := c.String("tokens")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating --tokens %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restricting --tokens %s to its owner: %w", dir, err)
	}
	var seed []byte
	if f := c.String("nsqauth-policy"); f != "" {
		if seed, err = os.ReadFile(f); err != nil {
			return usagef("--nsqauth-policy: %v", err)
		}
		if _, err := nsqauth.ParsePolicy(seed); err != nil {
			return usagef("--nsqauth-policy %s: %v", f, err)
		}
	}
	consul, err := consulClient(c)
	if err != nil {
		return err
	}
	if d := c.Duration("wait"); d > 0 {
		if err := waitLeader(c.Context, consul, d); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "svckit: %v\n", err)
			return exitCode(ExitTempFail)
		}
	}
	acl := consul.ACL()
	q := (&api.QueryOptions{}).WithContext(c.Context)
	w := (&api.WriteOptions{}).WithContext(c.Context)
	if c.Bool("bootstrap") {
		if err := bootstrapACL(c, consul); err != nil {
			return err
		}
	}
	if seed != nil {
		key := nsqauth.DefaultKVPrefix + "/policy"
		ok, _, err := consul.KV().CAS(&api.KVPair{Key: key, Value: seed, ModifyIndex: 0}, w)
		if err != nil {
			return fmt.Errorf("writing nsqd's authorization policy to %s: %w", key, err)
		}
		if ok {
			fmt.Fprintf(c.App.Writer, "nsqauth policy written to %s\n", key)
		} else {
			fmt.Fprintf(c.App.Writer, "nsqauth policy kept: %s is there already (change it with consul kv put)\n", key)
		}
	}
	existing, _, err := acl.TokenList(q)
	if err != nil {
		return fmt.Errorf("listing ACL tokens (is CONSUL_HTTP_TOKEN a management token?): %w", err)
	}
	for _, r := range roles {
		pol := &api.ACLPolicy{Name: r.policyName(), Description: "svckit: " + r.kind + " " + r.name, Rules: strings.Join(r.rules, "\n")}
		old, _, err := acl.PolicyReadByName(pol.Name, q)
		switch {
		case err != nil:
			return fmt.Errorf("reading ACL policy %s: %w", pol.Name, err)
		case old == nil:
			if pol, _, err = acl.PolicyCreate(pol, w); err != nil {
				return fmt.Errorf("creating ACL policy %s: %w", pol.Name, err)
			}
		default:
			pol.ID = old.ID
			if pol, _, err = acl.PolicyUpdate(pol, w); err != nil {
				return fmt.Errorf("updating ACL policy %s: %w", pol.Name, err)
			}
		}
		path := filepath.Join(dir, r.fileName())
		desc := "svckit: " + r.kind + " " + r.name
		var current *api.ACLToken // Consul's token of this role, if any
		if i := slices.IndexFunc(existing, func(e *api.ACLTokenListEntry) bool { return e.Description == desc }); i >= 0 {
			if current, _, err = acl.TokenRead(existing[i].AccessorID, q); err != nil {
				return fmt.Errorf("reading the ACL token of %s %s: %w", r.kind, r.name, err)
			}
		}
		secret, err := readTokenFile(path)
		if err != nil {
			return err
		}
		if secret == "" {
			// No file: Consul's token, if it has one (the file was lost),
			// else a new secret.
			secret = newUUID()
			if current != nil {
				secret = current.SecretID
			}
			if err := writeSecret(path, []byte(secret+"\n")); err != nil {
				return err
			}
		}
		tok := &api.ACLToken{Description: desc, SecretID: secret, Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}
		switch {
		case current != nil && current.SecretID == secret:
			tok.AccessorID = current.AccessorID
			if _, _, err := acl.TokenUpdate(tok, w); err != nil {
				return fmt.Errorf("updating the ACL token of %s %s: %w", r.kind, r.name, err)
			}
		default:
			if current != nil {
				// The file is what the services read: Consul's token
				// takes its secret (a token's secret cannot be changed,
				// so it is made anew).
				if _, err := acl.TokenDelete(current.AccessorID, w); err != nil {
					return fmt.Errorf("replacing the ACL token of %s %s: %w", r.kind, r.name, err)
				}
			}
			if _, _, err := acl.TokenCreate(tok, w); err != nil {
				return fmt.Errorf("creating the ACL token of %s %s: %w", r.kind, r.name, err)
			}
		}
		fmt.Fprintf(c.App.Writer, "%s %s: policy %s, token in %s\n", r.kind, r.name, pol.Name, path)
	}
	return nil
}

// readTokenFile is the token secret in path, "" if there is no file. A
// symbolic link, a file others may read, or anything but a UUID is refused.
func readTokenFile(path string) (string, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s: want a regular file only its owner may read (mode %v)", path, fi.Mode())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	if !validUUID(s) {
		return "", fmt.Errorf("%s: not a token secret (a UUID)", path)
	}
	return s, nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
				return false
			}
		}
	}
	return true
}

// ExitTempFail is acl apply's exit status when Consul has no leader in
// time (sysexits' EX_TEMPFAIL): try again later.
const ExitTempFail = 75

// waitLeader polls Consul until it names a leader or d passes.
func waitLeader(ctx context.Context, consul *api.Client, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last error
	for {
		leader, err := consul.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		switch {
		case err == nil && leader != "":
			return nil
		case err == nil:
			last = errors.New("no leader elected yet")
		default:
			last = err
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("Consul has no leader after %s (%v): its servers elect one when enough of them are up", d, last)
		case <-t.C:
		}
	}
}

// bootstrapACL makes the management token given Consul's when the ACL
// system has not been bootstrapped, and otherwise checks that it is one.
func bootstrapACL(c *cli.Context, consul *api.Client) error {
	cfg := consulConfig(c)
	secret := cfg.Token
	if secret == "" && cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("--bootstrap: reading the management token: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if !validUUID(secret) {
		return usagef("--bootstrap: give the management token to make Consul's (CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE; a UUID)")
	}
	_, _, err := consul.ACL().BootstrapWithToken(secret)
	switch {
	case err == nil:
		fmt.Fprintln(c.App.Writer, "Consul's ACLs bootstrapped with the management token given")
		return nil
	case !strings.Contains(err.Error(), "ACL bootstrap no longer allowed"):
		return fmt.Errorf("bootstrapping Consul's ACLs: %w", err)
	}
	// Bootstrapped before: by this token, or by someone else.
	tok, _, err := consul.ACL().TokenReadSelf((&api.QueryOptions{}).WithContext(c.Context))
	if err != nil {
		return fmt.Errorf("Consul's ACLs were bootstrapped with another token than the one given: %w", err)
	}
	for _, p := range tok.Policies {
		if p.Name == "global-management" {
			return nil
		}
	}
	return errors.New("Consul's ACLs were bootstrapped with another token: the one given is not a management token")
}
