package operator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/urfave/cli/v2"
)

// NSQDStatsAudience is the audience a request for nsqd-stats' GET /stats
// is signed for: the Consul name of the nsqd it speaks for.
const NSQDStatsAudience = "nsqd"

func nsqdStatsCommand() *cli.Command {
	return &cli.Command{
		Name:  "nsqd-stats",
		Usage: "serve one nsqd's GET /stats to holders of the replay secret (the datacenters' console reads it)",
		Description: `nsqd's HTTP API is not covered by NSQ's authentication (its /pub takes any
topic from anyone), so the datacenters keep it on nsqd's own loopback.
This runs beside nsqd, in its network namespace (docker-compose's
network_mode: service:nsqd), and serves only its statistics: GET /stats
answers requests signed with the statistics' own secret (not the replay
secret: whoever holds a secret can sign with it, and this container shares
nsqd's unauthenticated API), as the services' /streams does with theirs,
and proves its answers; GET /health answers whether nsqd does (its /ping).
The console finds it by nsqd's Consul meta stats_port.

A container in another's network namespace stays in the old one when that
container restarts alone (docker restart, a crash): once nsqd has not
answered for --nsqd-gone-after, this exits, and its restart policy starts
it again in nsqd's current namespace.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "nsqd-http-address", Value: "127.0.0.1:4151", Usage: "nsqd's HTTP API, on its loopback", EnvVars: config.Env("nsqd-http-address")},
			&cli.StringFlag{Name: "listen", Value: "0.0.0.0:4171", Usage: "where to serve", EnvVars: config.Env("nsqd-stats-listen")},
			&cli.StringFlag{Name: "secret", Usage: "the statistics' own secret: GET /stats answers only requests signed with it (the console's --nsqd-stats-secret)", EnvVars: config.Env("nsqd-stats-secret")},
			&cli.StringFlag{Name: "secret-file", Usage: "file holding it, instead of --secret (a datacenter's: $SVCKIT_SECRETS/DC/" + NSQDStatsSecretFile + ")", EnvVars: config.Env("nsqd-stats-secret-file")},
			&cli.DurationFlag{Name: "nsqd-gone-after", Value: 10 * time.Second, Usage: "exit (to be restarted) once nsqd has not answered /ping for this long", EnvVars: config.Env("nsqd-gone-after")},
		},
		Action: runNSQDStats,
	}
}

// NSQDStatsSecretFile is the statistics' secret in a datacenter's secrets.
const NSQDStatsSecretFile = "nsqdstats.secret"

func runNSQDStats(c *cli.Context) error {
	secret := c.String("secret")
	if f := c.String("secret-file"); f != "" {
		if secret != "" {
			return usagef("give --secret or --secret-file, not both")
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("nsqd-stats: reading --secret-file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if secret == "" {
		return usagef("nsqd-stats serves only holders of its secret: give --secret-file or SVCKIT_NSQD_STATS_SECRET_FILE (a datacenter's %s)", NSQDStatsSecretFile)
	}
	gone := c.Duration("nsqd-gone-after")
	if gone <= 0 {
		return usagef("--nsqd-gone-after %s: must be positive", gone)
	}
	nsqd := c.String("nsqd-http-address")
	if _, _, err := net.SplitHostPort(nsqd); err != nil {
		return usagef("--nsqd-http-address %q: want HOST:PORT", nsqd)
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return fmt.Errorf("nsqd-stats: listening on %s: %w", c.String("listen"), err)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Handler: nsqdStatsHandler(nsqd, secret), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	fmt.Fprintf(c.App.Writer, "nsqd-stats: serving the /stats of nsqd at %s on %s to holders of the replay secret\n", nsqd, ln.Addr())
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	go func() { errc <- watchNSQD(ctx, nsqd, gone) }()
	var served error
	select {
	case err := <-errc:
		served = err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("nsqd-stats: shutting down: %w", err)
	}
	if served != nil {
		return fmt.Errorf("nsqd-stats: %w", served)
	}
	return nil
}

// watchNSQD returns an error once nsqd at addr has not answered GET /ping
// for gone (nil when ctx ends first). Not answering at first is allowed
// for as long: nsqd may start after this.
func watchNSQD(ctx context.Context, addr string, gone time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	every := min(2*time.Second, gone/4)
	last := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/ping", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				last = time.Now()
				continue
			}
		}
		if time.Since(last) >= gone {
			return fmt.Errorf("nsqd at %s has not answered /ping for %s (restarted, and this left in its old network namespace?): exiting to be started again beside it", addr, gone.Round(time.Second))
		}
	}
}

// nsqdStatsHandler serves GET /stats (signed) and GET /health of the nsqd
// whose HTTP API is at addr.
func nsqdStatsHandler(addr, secret string) http.Handler {
	client := &http.Client{Timeout: 5 * time.Second}
	pass := func(w http.ResponseWriter, r *http.Request, path string, limit int64) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+addr+path, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, "nsqd does not answer: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, io.LimitReader(resp.Body, limit))
	}
	mux := http.NewServeMux()
	// Only the statistics, whatever the query asks: nothing else of
	// nsqd's API is reachable through here. Without its memory
	// statistics, which nsqd reads by stopping the world.
	mux.Handle("GET /stats", replay.RequireSecret(secret, NSQDStatsAudience, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pass(w, r, "/stats?format=json&include_mem=false", 64<<20)
	})))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		pass(w, r, "/ping", 1<<10)
	})
	return mux
}
