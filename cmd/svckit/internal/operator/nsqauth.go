package operator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/nsqauth"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/service"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// exitCode carries a subcommand's own exit code (it printed its error).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

// nsqFlags are the global flags with which the CLI talks to nsqd (dead
// letters, replay --publish): the same names and variables as the
// services', so one environment serves both.
func nsqFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "nsq-auth-secret", Usage: "secret sent to nsqd's auth server (AUTH): the operator's identity", EnvVars: config.Env("nsq-auth-secret")},
		&cli.StringFlag{Name: "nsq-auth-secret-file", Usage: "file holding the secret sent to nsqd's auth server", EnvVars: config.Env("nsq-auth-secret-file")},
		&cli.BoolFlag{Name: "nsq-tls", Usage: "use TLS to nsqd", EnvVars: config.Env("nsq-tls")},
		&cli.StringFlag{Name: "nsq-tls-cacert", Usage: "CA certificate file for TLS to nsqd", EnvVars: config.Env("nsq-tls-cacert")},
	}
}

// nsqConfig is go-nsq's configuration from the global NSQ flags.
func nsqConfig(c *cli.Context) (*nsq.Config, error) {
	cfg := nsq.NewConfig()
	secret, err := config.AuthSecret(c.String("nsq-auth-secret"), c.String("nsq-auth-secret-file"))
	if err != nil {
		return nil, usageError{err}
	}
	cfg.AuthSecret = secret
	if c.Bool("nsq-tls") {
		if err := cfg.Set("tls_v1", true); err != nil {
			return nil, usagef("--nsq-tls: %v", err)
		}
		if ca := c.String("nsq-tls-cacert"); ca != "" {
			if err := cfg.Set("tls_root_ca_file", ca); err != nil {
				return nil, usagef("--nsq-tls-cacert %q: %v", ca, err)
			}
		}
	}
	return cfg, nil
}

func nsqauthCommand() *cli.Command {
	return &cli.Command{
		Name:  "nsqauth",
		Usage: "nsqd's authorization server, and its secrets",
		Subcommands: []*cli.Command{
			{
				Name:      "serve",
				Usage:     "run the authorization server (a svckit service; --help lists its flags)",
				ArgsUsage: "[flags]",
				Description: `nsqd asks it (--auth-http-address=HOST:PORT, repeatable) who may publish
and subscribe where. The policy comes from a file (--policy) or from Consul
KV (--kv PREFIX). It registers in Consul as "nsqauth" with a health check.`,
				SkipFlagParsing: true,
				Action: func(c *cli.Context) error {
					code := nsqauthMain(append([]string{"svckit nsqauth serve"}, c.Args().Slice()...), c.App.Writer, c.App.ErrWriter, c.App.Version)
					if code != 0 {
						return exitCode(code)
					}
					return nil
				},
			},
			{
				Name:  "hash",
				Usage: "print the SHA-256 of the secret on stdin (for secret_sha256 in a policy, or Consul KV)",
				Action: func(c *cli.Context) error {
					line, err := bufio.NewReader(c.App.Reader).ReadString('\n')
					if err != nil && !errors.Is(err, io.EOF) {
						return err
					}
					s := strings.TrimRight(line, "\r\n")
					if len(s) < nsqauth.MinSecretLen {
						return usagef("the secret on stdin is shorter than %d characters", nsqauth.MinSecretLen)
					}
					_, err = fmt.Fprintln(c.App.Writer, nsqauth.HashSecret(s))
					return err
				},
			},
			{
				Name:  "issue",
				Usage: "make a secret for an identity and register its SHA-256 in Consul KV (prints the secret, or writes --out)",
				Description: `The authorization servers that follow Consul KV (serve --kv) accept the
secret at once. Registered under <prefix>/issued/<identity>/<name>; issuing
again under the same name replaces the secret, and
"consul kv delete <prefix>/issued/<identity>/<name>" revokes it.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "identity", Required: true, Usage: "identity of the policy (e.g. operator)"},
					&cli.StringFlag{Name: "name", Required: true, Usage: "name of this secret (a person, a host)"},
					&cli.StringFlag{Name: "prefix", Value: nsqauth.DefaultKVPrefix, Usage: "Consul KV prefix the servers follow", EnvVars: config.Env("nsqauth-kv")},
					&cli.StringFlag{Name: "out", Usage: "write the secret to this file (mode 0600; kept if it exists) instead of stdout"},
				},
				Action: runIssue,
			},
		},
	}
}

func runIssue(c *cli.Context) error {
	id, name, prefix := c.String("identity"), c.String("name"), strings.TrimSuffix(c.String("prefix"), "/")
	if id == "" || strings.Contains(id, "/") || name == "" || strings.Contains(name, "/") {
		return usagef("--identity %q --name %q: want names without /", id, name)
	}
	consul, err := consulClient(c)
	if err != nil {
		return err
	}
	kv := consul.KV()
	pair, _, err := kv.Get(nsqauth.PolicyKey(prefix), nil)
	if err != nil {
		return fmt.Errorf("reading %s: %w", nsqauth.PolicyKey(prefix), err)
	}
	if pair == nil {
		fmt.Fprintf(c.App.ErrWriter, "svckit: warning: no policy at %s yet\n", nsqauth.PolicyKey(prefix))
	} else if p, err := nsqauth.ParsePolicy(pair.Value); err == nil {
		if _, ok := p.Identities[id]; !ok {
			return usagef("--identity %s: the policy at %s has no such identity", id, nsqauth.PolicyKey(prefix))
		}
	}
	secret := nsqauth.NewSecret()
	if out := c.String("out"); out != "" {
		if secret, _, err = nsqauth.IssueSecret(out); err != nil {
			return err
		}
	}
	rctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	if err := nsqauth.RegisterIssued(rctx, kv, prefix, id, name, nsqauth.HashSecret(secret), nil); err != nil {
		return fmt.Errorf("registering at %s: %w", nsqauth.IssuedKey(prefix, id, name), err)
	}
	fmt.Fprintf(c.App.ErrWriter, "registered at %s\n", nsqauth.IssuedKey(prefix, id, name))
	if c.String("out") == "" {
		fmt.Fprintln(c.App.Writer, secret)
	}
	return nil
}

// nsqauthMain runs the authorization server as a svckit service (registered in
// Consul with a health check, /health, /ready, /metrics, graceful
// shutdown, the common flags and their environment variables) and returns
// its exit code. args[0] is the program name.
func nsqauthMain(args []string, stdout, stderr io.Writer, version string) int {
	return service.Main(args, stdout, stderr, nsqauthSpec(version))
}

// nsqauthSpec is the server as a service.Spec.
func nsqauthSpec(version string) service.Spec {
	return service.Spec{
		Name:    nsqauth.ServiceName,
		Usage:   "authorization server for nsqd (--auth-http-address): who may publish and subscribe where",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "policy", Usage: "policy file (JSON); read again when it changes", EnvVars: config.Env("nsqauth-policy")},
			&cli.StringFlag{Name: "kv", Usage: "Consul KV prefix of the policy (<prefix>/policy) and of issued secrets (<prefix>/issued/<identity>/<name>), followed with blocking queries (e.g. " + nsqauth.DefaultKVPrefix + ")", EnvVars: config.Env("nsqauth-kv")},
			&cli.StringFlag{Name: "seed", Usage: "with --kv: policy written to <prefix>/policy when there is none (JSON, or @FILE); a policy already in KV is never overwritten", EnvVars: config.Env("nsqauth-seed")},
			&cli.StringSliceFlag{Name: "issue", Usage: "with --kv: IDENTITY=FILE: keep a secret of IDENTITY in FILE (made when missing) and register its SHA-256 in KV under the --issuer name (repeatable)", EnvVars: config.Env("nsqauth-issue")},
			&cli.StringFlag{Name: "issuer", Usage: "name under which --issue registers secrets (default: the Consul agent's node name, so one per host)", EnvVars: config.Env("nsqauth-issuer")},
		},
		Setup: setupNSQAuth,
	}
}

func setupNSQAuth(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
	usage := func(format string, a ...any) error { return service.UsageError{Err: fmt.Errorf(format, a...)} }
	srv := nsqauth.NewServer(nsqauth.ServerOptions{Logger: s.Log, Registry: s.Metrics.Registry})
	// nsqd asks /auth and signs nothing (whoever holds a secret may ask
	// what it allows); the rest shows the policy: only to holders of the
	// replay secret, when there is one.
	srv.Register(func(pattern string, h http.Handler) {
		if pattern != "GET /auth" {
			h = replay.RequireSecret(s.Config.ReplaySecret, s.Config.Name, h)
		}
		s.HTTP.Handle(pattern, h)
	})
	s.HTTP.AddCheck("policy", srv.Ready)
	file, prefix := c.String("policy"), strings.TrimSuffix(c.String("kv"), "/")
	switch {
	case file != "" && prefix != "":
		return nil, usage("--policy and --kv: give one")
	case file == "" && prefix == "":
		return nil, usage("give --policy FILE or --kv PREFIX")
	case file != "" && (c.String("seed") != "" || len(c.StringSlice("issue")) > 0):
		return nil, usage("--seed and --issue need --kv (a policy file knows no issued secrets)")
	}
	if file != "" {
		t, err := nsqauth.LoadFile(file, os.Getenv)
		if err != nil {
			return nil, usage("--policy: %v", err)
		}
		srv.SetTable(t)
		src := &nsqauth.FileSource{Path: file, Getenv: os.Getenv, Logger: s.Log}
		s.Go(func(ctx context.Context) { src.Run(ctx, srv) })
		return nil, nil
	}
	var seed []byte
	if v := c.String("seed"); v != "" {
		seed = []byte(v)
		if name, ok := strings.CutPrefix(v, "@"); ok {
			b, err := os.ReadFile(name)
			if err != nil {
				return nil, usage("--seed: %v", err)
			}
			seed = b
		}
		if _, err := nsqauth.ParsePolicy(seed); err != nil {
			return nil, usage("--seed: %v", err)
		}
	}
	issuer := c.String("issuer")
	if issuer == "" {
		issuer = s.Node
	}
	if strings.Contains(issuer, "/") || issuer == "" {
		return nil, usage("--issuer %q: want a name without /", issuer)
	}
	for _, is := range c.StringSlice("issue") {
		id, path, ok := strings.Cut(is, "=")
		if !ok || !nsqauth.ValidIdentity(id) || path == "" {
			return nil, usage("--issue %q: want IDENTITY=FILE", is)
		}
		secret, created, err := nsqauth.IssueSecret(filepath.Clean(path))
		if err != nil {
			return nil, usage("--issue %s: %v", is, err)
		}
		hash := nsqauth.HashSecret(secret)
		key := nsqauth.IssuedKey(prefix, id, issuer)
		s.Log.Info("nsqauth issued secret", "identity", id, "file", path, "new", created, "key", key)
		done := make(chan struct{})
		s.HTTP.AddCheck("issued "+id, func() error {
			select {
			case <-done:
				return nil
			default:
				return fmt.Errorf("the SHA-256 of %s is not registered at %s yet", path, key)
			}
		})
		s.Go(func(ctx context.Context) {
			if nsqauth.RegisterIssued(ctx, s.Consul.KV(), prefix, id, issuer, hash, s.Log) == nil {
				close(done)
				s.Log.Info("nsqauth issued secret registered", "identity", id, "key", key)
			}
		})
	}
	src := &nsqauth.KVSource{KV: s.Consul.KV(), Prefix: prefix, Seed: seed, Getenv: os.Getenv, Logger: s.Log}
	s.Go(func(ctx context.Context) { src.Run(ctx, srv) })
	return nil, nil
}
