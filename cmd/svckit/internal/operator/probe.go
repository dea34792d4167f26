package operator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/svckit/svckit/internal/sharedsecret"
	"github.com/svckit/svckit/svckit/config"
	"github.com/urfave/cli/v2"
)

// probeMaxBody bounds what probe reads (and prints with --print).
const probeMaxBody = 1 << 20

func probeCommand() *cli.Command {
	return &cli.Command{
		Name:      "probe",
		Usage:     "HTTP GET a URL: exit 0 on 2xx, 1 otherwise (container health checks)",
		ArgsUsage: "URL",
		Description: `For health checks in images that have no shell and no curl (FROM scratch):

   healthcheck:
     test: ["CMD", "/bin/svckit", "probe", "http://127.0.0.1:8080/health"]

Exits 0 when the answer is 2xx within --timeout, 1 on any other status, a
connection error or the timeout (the reason goes to stderr), 2 on bad usage.
--print writes the body to stdout (e.g. "docker exec … svckit probe --print
http://127.0.0.1:8080/streams").`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Second, Usage: "give up after this long", EnvVars: config.Env("probe-timeout")},
			&cli.BoolFlag{Name: "print", Usage: "write the response body to stdout", EnvVars: config.Env("probe-print")},
			&cli.StringFlag{Name: "secret", Usage: "sign the request with the replay shared secret (the endpoints that show a service's data ask for it)", EnvVars: config.Env("replay-secret")},
			&cli.StringFlag{Name: "secret-file", Usage: "file holding the replay shared secret (instead of --secret)", EnvVars: config.Env("replay-secret-file")},
		},
		Action: runProbe,
	}
}

func runProbe(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("probe wants exactly one URL, got %d argument(s)", c.NArg())
	}
	raw := c.Args().First()
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("probe %q: want an http:// or https:// URL", raw)
	}
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return usagef("--timeout %s: must be positive", timeout)
	}
	secret, err := replaySecret(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	status, body, err := probe(ctx, u.String(), secret)
	if err != nil {
		return fmt.Errorf("probe %s: %w", u.Redacted(), err)
	}
	if c.Bool("print") {
		if _, err := c.App.Writer.Write(body); err != nil {
			return fmt.Errorf("probe %s: writing the body: %w", u.Redacted(), err)
		}
	}
	if status == http.StatusUnauthorized {
		kind := replayNoSecret
		if secret != "" {
			kind = replayWrongSecret
		}
		return fmt.Errorf("probe %s: HTTP %d (%s): %s", u.Redacted(), status, oneLine(strings.TrimSpace(string(body)), 200), replaySecretHint(kind))
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("probe %s: HTTP %d", u.Redacted(), status)
	}
	return nil
}

// probe GETs target and returns the status and (at most probeMaxBody of)
// the body. With a secret the request is signed; the answer's proof is not
// checked: a probe looks, it applies nothing (svckit's clients check it).
func probe(ctx context.Context, target, secret string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, nil, err
	}
	if secret != "" {
		if _, err := sharedsecret.Sign(req, secret); err != nil {
			return 0, nil, err
		}
	}
	req.Header.Set("User-Agent", "svckit-probe")
	// No proxy from the environment: a probe checks this container's view.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is in the caller's message already
		}
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, probeMaxBody))
	if err != nil {
		return resp.StatusCode, body, fmt.Errorf("reading the body: %w", err)
	}
	return resp.StatusCode, body, nil
}
