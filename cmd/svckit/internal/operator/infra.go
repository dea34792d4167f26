package operator

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/svckit/svckit/cmd/svckit/internal/infra"
	"github.com/svckit/svckit/svckit/config"
	"github.com/urfave/cli/v2"
)

func infraCommand() *cli.Command {
	root := func() cli.Flag {
		return &cli.StringFlag{Name: "root", Value: ".", Usage: "the repository: datacenters/ and images/ are under it", EnvVars: config.Env("infra-root")}
	}
	return &cli.Command{
		Name:  "infra",
		Usage: "the infrastructure as source: datacenters/<dc>/<host>/docker-compose.yml and images/",
		Description: `ls lists datacenter → host → containers (image, published ports, volumes);
ls --json prints the whole tree as read (each container's environment,
volumes, ports, command, …; the field names are Go's), for scripts and
tests; check validates the tree and names file and service of every problem.
${VAR:-default} in compose files is resolved with this environment, as
docker-compose would.`,
		Subcommands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list datacenters, hosts and their containers",
				Flags: []cli.Flag{root(),
					&cli.BoolFlag{Name: "json", Usage: "print the tree as JSON: every host's containers with their environment, volumes and ports as read (and the problems met reading them)", EnvVars: config.Env("infra-json")},
				},
				Action: runInfraLs,
			},
			{
				Name:  "check",
				Usage: "validate the tree; exit 1 with each problem (file, service) if any",
				Description: `Problems: a compose file that does not parse; an image with no Dockerfile
under images/; a host port published twice on one host (or by two hosts of
one datacenter, which must be able to share one engine); a service of ours
(sensor, worker, app) without CONSUL_HTTP_ADDR; a stateful container
(consul, nsqd, sensor, app) without a volume for its state; a container
without a healthcheck or a restart policy; an nsqd without
--auth-http-address, with one that names no nsqauth container of its
datacenter, or with its HTTP API (which NSQ's auth does not cover) beyond
loopback.

And what makes a datacenter secure by default:
- Consul: its ACLs, gossip encryption and TLS come from a -config-file (or
  -config-dir) on a read-only secrets volume (one whose name says
  "secrets", filled by ./build.sh up; a configuration anywhere else is a
  problem, as infra check cannot read it); nothing in its command weakens
  them (-dev, -encrypt or tokens inline, and -hcl with acl { enabled =
  false }, default_policy other than "deny", verify_incoming/outgoing =
  false in tls.defaults or tls.internal_rpc, verify_server_hostname = false,
  encrypt_verify_incoming/outgoing = false); the API is HTTPS only
  (-hcl=ports { http = -1, https = 8501 }). The -hcl values are read by a
  small HCL reader: one it cannot read is a problem.
- nsqd: --tls-cert and --tls-key from a volume, --tls-required=tcp-https
  (or true), --tls-min-version=tls1.2 or tls1.3.
- nsqadmin (no authentication) does not run.
- Services of ours and nsqauth: CONSUL_HTTP_ADDR https:// (or
  CONSUL_HTTP_SSL=true), CONSUL_CACERT and CONSUL_HTTP_TOKEN_FILE on a
  volume, SVCKIT_NSQ_TLS=true with SVCKIT_NSQ_TLS_CACERT,
  SVCKIT_REPLAY_SECRET_FILE (sensor, worker, app), and no secret in the
  environment (CONSUL_HTTP_TOKEN, SVCKIT_REPLAY_SECRET,
  SVCKIT_NSQ_AUTH_SECRET).
- datacenters/<dc>/nsqauth-policy.json (or a seed on its nsqauth) where
  nsqauth runs: it parses and has "require_tls": true.
- datacenters/<dc>/acl.flags where Consul runs: --agent and --node name the
  agents' -node (their hosts' names), every SVCKIT_STREAM_ID of a sensor has
  its --owner=sensor=<id>, every secrets-<x> volume of a service of ours its
  --service=<x> (or --owner/--nsqauth).

--secrets DIR also reads each Consul agent's configuration from the
datacenters' secrets, DIR/<dc>/<its path below the secrets mount> (./build.sh
secrets writes them into ${SVCKIT_SECRETS:-~/.svckit/secrets}/<dc>), and
checks it: acl enabled with default_policy "deny"; encrypt set, its
verification not off; tls.defaults with ca_file, cert_file, key_file and
verify_incoming/verify_outgoing true; tls.internal_rpc
verify_server_hostname true; an initial_management token (else the ACL
bootstrap is open to whoever comes first). A file missing
there is a problem, and so is a datacenter running Consul without a
directory there. Without --secrets these checks are skipped: the secrets
are not in the repository.`,
				Flags: []cli.Flag{root(),
					&cli.StringFlag{Name: "secrets", Usage: "also check the Consul agents' configuration in the datacenters' secrets, DIR/<dc>/… (e.g. ~/.svckit/secrets)", EnvVars: config.Env("infra-secrets")},
				},
				Action: runInfraCheck,
			},
		},
	}
}

func loadInfra(c *cli.Context) (*infra.Tree, error) {
	if c.NArg() > 0 {
		return nil, usagef("infra %s takes no arguments (got %q); use --root", c.Command.Name, c.Args().First())
	}
	return infra.Load(c.String("root"), infra.Options{Env: os.LookupEnv})
}

func runInfraLs(c *cli.Context) error {
	t, err := loadInfra(c)
	if err != nil {
		return err
	}
	if len(t.Datacenters) == 0 {
		return fmt.Errorf("no datacenters under %s/%s", c.String("root"), infra.DatacentersDir)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(t)
	}
	return infra.Fprint(c.App.Writer, t)
}

func runInfraCheck(c *cli.Context) error {
	t, err := loadInfra(c)
	if err != nil {
		return err
	}
	secrets := c.String("secrets")
	// --secrets=~/… reaches us unexpanded (the shell expands ~ only at the
	// start of a word).
	if rest, ok := strings.CutPrefix(secrets, "~/"); ok {
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("--secrets %s: %w", secrets, err)
		}
		secrets = filepath.Join(home, rest)
	}
	probs := infra.Check(t, infra.CheckOptions{Secrets: secrets})
	for _, p := range probs {
		fmt.Fprintln(c.App.Writer, p)
	}
	if len(probs) > 0 {
		return fmt.Errorf("infra check: %d problem(s) in %s", len(probs), c.String("root"))
	}
	hosts, containers := 0, 0
	for _, dc := range t.Datacenters {
		hosts += len(dc.Hosts)
		for _, h := range dc.Hosts {
			containers += len(h.Containers)
		}
	}
	if hosts == 0 {
		return errors.New("infra check: no hosts")
	}
	fmt.Fprintf(c.App.Writer, "ok: %d datacenter(s), %d host(s), %d container(s)\n", len(t.Datacenters), hosts, containers)
	return nil
}
