package operator

import (
	"errors"
	"fmt"
	"os"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/infra"
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
check validates the tree and names file and service of every problem.
${VAR:-default} in compose files is resolved with this environment, as
docker-compose would.`,
		Subcommands: []*cli.Command{
			{
				Name:   "ls",
				Usage:  "list datacenters, hosts and their containers",
				Flags:  []cli.Flag{root()},
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
loopback.`,
				Flags:  []cli.Flag{root()},
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
	return infra.Fprint(c.App.Writer, t)
}

func runInfraCheck(c *cli.Context) error {
	t, err := loadInfra(c)
	if err != nil {
		return err
	}
	probs := infra.Check(t)
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
