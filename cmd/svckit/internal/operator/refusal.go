package operator

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/nsqauth"
	"github.com/svckit/svckit/svckit/replay"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// The refusals the CLI meets, and what to do about them. nsqd refuses a
// connection without the operator's NSQ secret, or with one its
// authorization server does not know or does not allow what is asked;
// a service refuses a request to its signed endpoints (/deadletters,
// /streams, /replay, /snapshot) without its replay secret. Each such
// error ends with the flag and variable to set and where the secret is
// kept, on the laptop (the Procfile) and in a datacenter: the text is
// here, in nsqSecretHint and replaySecretHint, and nowhere else.

// laptopOperatorNSQSecret is the operator's NSQ secret on the laptop,
// relative to the repository's root: etc/nsqauth/secrets.sh makes one file
// per NSQAUTH_SECRET_* variable of etc/nsqauth/policy.json in
// var/nsqauth/secrets/ when the Procfile starts (its nsqauth process).
const laptopOperatorNSQSecret = "var/nsqauth/secrets/NSQAUTH_SECRET_OPERATOR"

// replaySecretFile is the replay secret's file in a datacenter's secrets
// directory ($SVCKIT_SECRETS/DC, made by svckit secrets init).
const replaySecretFile = "replay.secret"

// nsqSecretHint says which flag or variable gives the operator's NSQ
// secret and where it is kept; given: a secret was given, and refused.
func nsqSecretHint(given bool) string {
	give := "give the operator's NSQ secret"
	if given {
		give = "give the operator's NSQ secret instead"
	}
	return give + " with --nsq-auth-secret-file or SVCKIT_NSQ_AUTH_SECRET_FILE (or --nsq-auth-secret, SVCKIT_NSQ_AUTH_SECRET): " +
		"on the laptop the file " + laptopOperatorNSQSecret + " of the checkout (from its root; etc/nsqauth/secrets.sh makes it when the Procfile starts), " +
		"in a datacenter one made by svckit nsqauth issue --identity operator --name YOU --out FILE"
}

// How a service refused the replay secret, for replaySecretHint.
type replayRefusalKind int

const (
	replayNoSecret    replayRefusalKind = iota // 401, none given
	replayWrongSecret                          // 401 to a signed request
	replayUnproven                             // given, and the service proved no knowledge of it
)

// replaySecretHint says which flag or variable gives the services' replay
// secret (their --replay-secret) and where it is kept.
func replaySecretHint(kind replayRefusalKind) string {
	where := "in a datacenter the file $SVCKIT_SECRETS/DC/" + replaySecretFile + " (default ~/.svckit/secrets/DC/" + replaySecretFile +
		", made by ./build.sh secrets DC); the laptop keeps none: its services (Procfile) run without --replay-secret"
	flags := "--secret-file or SVCKIT_REPLAY_SECRET_FILE (or --secret, SVCKIT_REPLAY_SECRET)"
	switch kind {
	case replayWrongSecret:
		return "give the service's own replay secret (the one it was started with) by " + flags + ": " + where
	case replayUnproven:
		return "a service run without a replay secret (the laptop's: the Procfile gives them none) proves none: for it, set none of " + flags +
			"; a service run with the secret given would have proven it, so otherwise this is not the service Consul names"
	default:
		return "give the services' replay secret with " + flags + ": " + where
	}
}

// refused is a refusal the CLI met: what was refused and why, then what
// to do about it.
type refused struct {
	msg, hint string
	err       error
}

func (r *refused) Error() string { return r.msg + ": " + r.hint }
func (r *refused) Unwrap() error { return r.err }

// nsqRefusal is err with what to do about it when it is nsqd's
// authorization refusing the CLI (go-nsq's "Auth Required", nsqd's
// E_UNAUTHORIZED or E_AUTH_FAILED: in err or as a producer's last error,
// which comes as text); else err. given: an NSQ secret was given.
func nsqRefusal(err error, given bool) error {
	var r *refused
	if err == nil || errors.As(err, &r) {
		return err
	}
	s := err.Error()
	var why string
	switch {
	case strings.Contains(s, "Auth Required"):
		why = "nsqd requires a secret and none was given"
	case strings.Contains(s, "E_UNAUTHORIZED") && strings.Contains(s, "no authorizations found"):
		why = "nsqd's authorization server knows no such secret, or takes it only over TLS: --nsq-tls"
	case strings.Contains(s, "E_UNAUTHORIZED"):
		why = "the secret given may not do this: it is not the operator's, or the policy does not allow the operator; the policy is " + nsqauthPolicies()
	case strings.Contains(s, "E_AUTH_FAILED"):
		return &refused{msg: s, err: err, hint: "nsqd got no answer from its authorization server, so it judged no secret: " +
			"start svckit nsqauth serve (on the laptop the Procfile's nsqauth, on 127.0.0.1:4180 or $LAPTOP_NSQAUTH_HTTP_PORT; in a datacenter each host's nsqauth)"}
	default:
		return err
	}
	return &refused{msg: s + " (" + why + ")", hint: nsqSecretHint(given), err: err}
}

// nsqauthPolicies names where the policies are: the laptop's file, the
// datacenters' Consul KV key.
func nsqauthPolicies() string {
	return "etc/nsqauth/policy.json on the laptop, Consul KV " + nsqauth.PolicyKey(nsqauth.DefaultKVPrefix) + " in a datacenter"
}

// checkNSQAuth connects to each nsqd as the CLI will (IDENTIFY, AUTH) and
// returns the first refusal of its secret, with what to do about it,
// before anything is read or published. An nsqd that cannot be reached is
// not a refusal: the producer fails over from it.
func checkNSQAuth(addrs []string, cfg *nsq.Config) error {
	for _, a := range addrs {
		p, err := nsq.NewProducer(a, cfg)
		if err != nil {
			return fmt.Errorf("nsqd %s: %w", a, err)
		}
		p.SetLogger(nil, nsq.LogLevelError)
		err = p.Ping()
		p.Stop()
		var r *refused
		if err = nsqRefusal(err, cfg.AuthSecret != ""); errors.As(err, &r) {
			return fmt.Errorf("nsqd %s: %w", a, err)
		}
	}
	return nil
}

// httpRefusal is a service's 401 to the CLI: its method, path and reason.
type httpRefusal struct {
	method, path, reason string
}

func (e *httpRefusal) Error() string {
	return fmt.Sprintf("%s %s refused: HTTP 401 (%s)", e.method, e.path, e.reason)
}

// refusalTransport turns a 401 into an *httpRefusal error, whichever
// client (svckit/replay's, svckit/deadletter's) asked: their own errors
// for it differ, and deadletter's is only text.
type refusalTransport struct{ base http.RoundTripper }

func (t refusalTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	return nil, &httpRefusal{method: req.Method, path: req.URL.RequestURI(), reason: strings.TrimSpace(string(b))}
}

// serviceHTTP is the HTTP client the CLI asks services with (no timeout:
// a replay may be long; the callers' contexts bound the rest).
var serviceHTTP = &http.Client{Transport: refusalTransport{http.DefaultTransport}}

// replayRefusal is err with what to do about it when a service refused
// the CLI's request for want of its replay secret (401), or did not prove
// that it knows the secret given; else err. given: a secret was given.
func replayRefusal(err error, given bool) error {
	var r *refused
	var h *httpRefusal
	switch {
	case err == nil || errors.As(err, &r):
		return err
	case errors.As(err, &h):
		kind := replayNoSecret
		if given {
			kind = replayWrongSecret
		}
		return &refused{msg: h.Error(), hint: replaySecretHint(kind), err: err}
	case given && (errors.Is(err, replay.ErrUpstreamUnproven) || errors.Is(err, deadletter.ErrServerUnproven)):
		return &refused{msg: err.Error(), hint: replaySecretHint(replayUnproven), err: err}
	}
	return err
}

// replaySecretFlags are the commands' --secret and --secret-file: the
// services' replay secret, under the variables the services read it from.
func replaySecretFlags(usage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "secret", Usage: usage, EnvVars: config.Env("replay-secret")},
		&cli.StringFlag{Name: "secret-file", Usage: "file holding it, instead of --secret (a datacenter's: $SVCKIT_SECRETS/DC/" + replaySecretFile + ")", EnvVars: config.Env("replay-secret-file")},
	}
}

// replaySecret is --secret, or the trimmed content of --secret-file.
func replaySecret(c *cli.Context) (string, error) {
	secret, file := c.String("secret"), c.String("secret-file")
	if file == "" {
		return secret, nil
	}
	if secret != "" {
		return "", usagef("--secret and --secret-file (SVCKIT_REPLAY_SECRET and SVCKIT_REPLAY_SECRET_FILE): give one")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", usagef("--secret-file: %v", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", usagef("--secret-file %s: empty", file)
	}
	return s, nil
}
