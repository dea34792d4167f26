package operator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/signal"
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
answers requests signed with the replay secret, as the services' /streams
does, and proves its answers; GET /health answers whether nsqd does (its
/ping). The console finds it by nsqd's Consul meta stats_port.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "nsqd-http-address", Value: "127.0.0.1:4151", Usage: "nsqd's HTTP API, on its loopback", EnvVars: config.Env("nsqd-http-address")},
			&cli.StringFlag{Name: "listen", Value: "0.0.0.0:4171", Usage: "where to serve", EnvVars: config.Env("nsqd-stats-listen")},
		}, replaySecretFlags("the replay secret: GET /stats answers only requests signed with it")...),
		Action: runNSQDStats,
	}
}

func runNSQDStats(c *cli.Context) error {
	secret, err := replaySecret(c)
	if err != nil {
		return err
	}
	if secret == "" {
		return usagef("nsqd-stats serves only holders of the replay secret: give --secret-file or SVCKIT_REPLAY_SECRET_FILE (a datacenter's replay.secret)")
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
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("nsqd-stats: serving: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("nsqd-stats: shutting down: %w", err)
	}
	return nil
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
