// Command intruder plays an intruder inside a datacenter's Docker network:
// it tries, with no credentials, to write and read Consul's ACL-protected
// state, to publish and subscribe on nsqd, and to read and delete a
// service's replay and dead-letter data, and prints one JSON object per
// attempt on stdout:
//
//	{"attempt":"<name>","target":"<addr or url>","outcome":"refused"|"allowed"|"unreachable","detail":"<one line>"}
//
// It always exits 0 after its attempts (2 on bad flags): the test that runs
// it decides what the outcomes mean. Given credentials (--consul-token,
// --nsq-secret, --replay-secret) it is the test's positive control, proving
// the addresses are right: it then makes only the attempts that read, so
// that the control never changes the datacenter.
//
// The classification rule, for every attempt:
//
//   - refused: the server said no to the caller — HTTP 401 or 403, a TLS
//     alert about the client's certificate, or an NSQ error frame (E_INVALID,
//     E_AUTH_FIRST, E_UNAUTHORIZED, E_AUTH_FAILED, E_BAD_..., ...) or nsqd
//     closing the connection before it said OK. Consul filters what an ACL
//     does not let a token read instead of answering 403, so a read that
//     comes back filtered also counts as refused: 404 for a KV tree, a
//     catalog listing only "consul".
//   - unreachable: no answer — connection refused, timeout, DNS failure,
//     a TLS failure that is not the server refusing the client.
//   - allowed: everything else, whatever the status (a 404 or 500 from a
//     handler means the request got past authentication; the detail says
//     what the handler answered).
//
// Writes that could succeed are made as harmless as an intruder's write can
// be: KV writes use ?cas=0 (the same key:write permission; an existing key
// is not overwritten, and the answer is then "false"), a registered service
// is deregistered again and a created session destroyed.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// Outcomes.
const (
	refused     = "refused"
	allowed     = "allowed"
	unreachable = "unreachable"
)

// result is one attempt's line on stdout.
type result struct {
	Attempt string `json:"attempt"`
	Target  string `json:"target"`
	Outcome string `json:"outcome"`
	Detail  string `json:"detail"`
}

// config is what the flags say; secrets are the files' contents.
type config struct {
	Consul       string // https://consul:8501
	ConsulHTTP   string // http://consul:8500 (should be closed)
	ConsulToken  string // positive control
	RootCAs      *x509.CertPool
	NSQDs        []string // host:port
	NSQDHTTPS    []string // host:port of nsqd's HTTP API over TLS (should be closed)
	NSQSecret    string   // positive control
	Services     []string // http://sensor:8080
	Stream       string
	ReplaySecret string // positive control
	SensorID     string // "" = look it up
	SubChannel   string // the channel of results the SUB attempts name
	Console      string // https://console:8080
	ConsoleToken string // positive control: the operator's token
	StatsSecret  string // positive control: nsqd-stats' secret (svc-stats)
	MetricsToken string // positive control: the token /metrics asks for
	Timeout      time.Duration
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func parseFlags(args []string) (config, error) {
	var (
		cfg                                    config
		tokenFile, caFile, nsqFile, replayFile string
		consoleTokenFile, statsFile            string
		metricsFile                            string
		nsqds, nsqdHTTPS, services             multiFlag
	)
	fs := flag.NewFlagSet("intruder", flag.ContinueOnError)
	fs.StringVar(&cfg.Consul, "consul", "", "Consul HTTPS API `URL` (https://consul:8501)")
	fs.StringVar(&cfg.ConsulHTTP, "consul-http", "", "Consul plain-HTTP `URL` that should be closed (http://consul:8500)")
	fs.StringVar(&tokenFile, "consul-token", "", "`FILE` with a Consul token (positive control: reads only)")
	fs.StringVar(&caFile, "ca", "", "verify TLS against the CA certificates in `FILE` (default: no verification)")
	fs.Var(&nsqds, "nsqd", "nsqd TCP `HOST:PORT` (repeatable)")
	fs.Var(&nsqdHTTPS, "nsqd-https", "nsqd's HTTPS API `HOST:PORT` that should be closed (repeatable; POST /pub)")
	fs.StringVar(&nsqFile, "nsq-secret", "", "`FILE` with an NSQ AUTH secret (positive control: nsq-sub-tls only)")
	fs.Var(&services, "service", "svckit service base `URL` (http://sensor:8080, repeatable)")
	fs.StringVar(&cfg.Stream, "stream", "intruder", "stream `ID` for the replay, snapshot and claim attempts")
	fs.StringVar(&replayFile, "replay-secret", "", "`FILE` with the replay secret (positive control: signed reads only)")
	fs.StringVar(&cfg.SensorID, "sensor-id", "", "Consul service `ID` to try deregistering (default: from the catalog, else \"sensor\")")
	fs.StringVar(&cfg.SubChannel, "sub-channel", "intruder#ephemeral", "the `CHANNEL` of topic results the SUB attempts name (the control's identity must be allowed it)")
	fs.StringVar(&cfg.Console, "console", "", "the console's base `URL` (https://console:8080)")
	fs.StringVar(&consoleTokenFile, "operator-token", "", "`FILE` with the console's operator token (positive control: the console's reads)")
	fs.StringVar(&metricsFile, "metrics-token", "", "`FILE` with the token /metrics asks for (positive control: svc-metrics)")
	fs.StringVar(&statsFile, "stats-secret", "", "`FILE` with nsqd-stats' secret (positive control: svc-stats)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Second, "timeout of every network operation")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.Timeout <= 0 {
		return cfg, errors.New("--timeout must be positive")
	}
	cfg.NSQDs, cfg.NSQDHTTPS, cfg.Services = nsqds, nsqdHTTPS, services
	var err error
	if cfg.ConsulToken, err = readSecret(tokenFile); err != nil {
		return cfg, err
	}
	if cfg.NSQSecret, err = readSecret(nsqFile); err != nil {
		return cfg, err
	}
	if cfg.ReplaySecret, err = readSecret(replayFile); err != nil {
		return cfg, err
	}
	if cfg.ConsoleToken, err = readSecret(consoleTokenFile); err != nil {
		return cfg, err
	}
	if cfg.StatsSecret, err = readSecret(statsFile); err != nil {
		return cfg, err
	}
	if cfg.MetricsToken, err = readSecret(metricsFile); err != nil {
		return cfg, err
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return cfg, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("%s: no PEM certificates", caFile)
		}
	}
	return cfg, nil
}

// readSecret is file's content without surrounding white space ("" for no
// file), as svckit reads its secret files.
func readSecret(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", file)
	}
	return s, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "intruder:", err)
		}
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "intruder:", err)
		os.Exit(2)
	}
}

// run makes every attempt cfg asks for, writing one line per attempt to out;
// its error is out's.
func run(ctx context.Context, cfg config, out io.Writer) error {
	p := newProber(cfg)
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	var werr error
	emit := func(r result) {
		r.Detail = oneLine(r.Detail, 600)
		if werr == nil {
			werr = enc.Encode(r)
		}
	}
	if cfg.Consul != "" {
		p.consul(ctx, emit)
	}
	if cfg.ConsulHTTP != "" {
		emit(p.consulHTTPPort(ctx))
	}
	for _, addr := range cfg.NSQDHTTPS {
		// nsqd's HTTP API over TLS (0.0.0.0:4152 by default once it has
		// a certificate): NSQ's auth covers none of it.
		target := "https://" + addr + "/pub?topic=readings"
		if a, err := p.do(ctx, http.MethodPost, target, `{"intruder":true}`, nil); err != nil {
			emit(failed("nsqd-https-pub", target, err))
		} else {
			emit(result{"nsqd-https-pub", target, a.outcome(), a.String()})
		}
	}
	for _, addr := range cfg.NSQDs {
		p.nsq(ctx, addr, emit)
	}
	for _, base := range cfg.Services {
		p.service(ctx, base, emit)
	}
	if cfg.Console != "" {
		p.console(ctx, strings.TrimRight(cfg.Console, "/"), emit)
	}
	return werr
}

type prober struct {
	cfg  config
	http *http.Client
	tls  *tls.Config // for NSQ; ServerName is set per address
}

func newProber(cfg config) *prober {
	tc := &tls.Config{RootCAs: cfg.RootCAs, InsecureSkipVerify: cfg.RootCAs == nil, MinVersion: tls.VersionTLS12}
	tr := &http.Transport{
		Proxy:               nil, // straight to the target, whatever the environment says
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: cfg.Timeout,
		DisableKeepAlives:   true,
	}
	return &prober{
		cfg: cfg,
		tls: tc,
		http: &http.Client{
			Transport: tr,
			Timeout:   cfg.Timeout,
			// a redirect is an answer: report it, do not follow it
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// answer is an HTTP response, read.
type answer struct {
	method, path string
	status       int
	statusLine   string // "403 Forbidden"
	body         []byte
	bodyErr      error // the body could not be read to its end
}

func (a *answer) String() string {
	s := fmt.Sprintf("%s %s: HTTP %s", a.method, a.path, a.statusLine)
	if a.status/100 == 2 {
		s += fmt.Sprintf(" (%d bytes)", len(a.body))
	} else if line := firstLine(a.body); line != "" {
		s += ": " + line
	}
	if a.bodyErr != nil {
		s += " (body: " + a.bodyErr.Error() + ")"
	}
	return s
}

// denied is whether the server refused the caller.
func (a *answer) denied() bool {
	return a.status == http.StatusUnauthorized || a.status == http.StatusForbidden
}

// outcome is the rule for an answer: refused on 401/403, else allowed.
func (a *answer) outcome() string {
	if a.denied() {
		return refused
	}
	return allowed
}

// do makes one request within the timeout; header values "" are not sent.
func (p *prober) do(ctx context.Context, method, rawURL, body string, header map[string]string) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, rawURL, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	a := &answer{method: method, path: req.URL.RequestURI(), status: resp.StatusCode, statusLine: resp.Status}
	a.body, a.bodyErr = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return a, nil
}

// failed is the result of a request that got no HTTP answer.
func failed(attempt, target string, err error) result {
	outcome, detail := classifyErr(err)
	return result{attempt, target, outcome, detail}
}

// classifyErr says whether err is the server refusing the client (a TLS
// alert about the client's certificate) or no answer at all.
func classifyErr(err error) (outcome, detail string) {
	if tlsRefusal(err) {
		return refused, "TLS: the server refused the client: " + err.Error()
	}
	return unreachable, err.Error()
}

// tlsRefusal is whether err carries a TLS alert the server sends when it
// does not accept the client's certificate (or its lack of one).
func tlsRefusal(err error) bool {
	msg := err.Error()
	i := strings.Index(msg, "remote error: tls: ")
	if i < 0 {
		return false
	}
	alert := msg[i+len("remote error: tls: "):]
	for _, a := range []string{
		"certificate required", "bad certificate", "unsupported certificate",
		"revoked certificate", "expired certificate", "unknown certificate",
		"unknown certificate authority", "access denied",
	} {
		if strings.HasPrefix(alert, a) {
			return true
		}
	}
	return false
}

// --- Consul -----------------------------------------------------------

func (p *prober) consulURL(path string) string {
	return strings.TrimRight(p.cfg.Consul, "/") + path
}

func (p *prober) consulDo(ctx context.Context, method, path, body string) (*answer, error) {
	return p.do(ctx, method, p.consulURL(path), body, map[string]string{"X-Consul-Token": p.cfg.ConsulToken})
}

const policyBody = `{"ttl":60,"identities":{"intruder":{"publish":["readings"]}}}`

func (p *prober) consul(ctx context.Context, emit func(result)) {
	control := p.cfg.ConsulToken != ""
	if !control {
		emit(p.kvPut(ctx, "consul-kv-put-policy", "svckit/nsqauth/policy", policyBody))
		sum := sha256.Sum256([]byte("intruder"))
		emit(p.kvPut(ctx, "consul-kv-put-issued", "svckit/nsqauth/issued/intruder/"+hex.EncodeToString(sum[:]), "intruder"))
	}
	emit(p.kvRead(ctx))
	if !control {
		emit(p.serviceRegister(ctx))
		emit(p.serviceDeregister(ctx))
		emit(p.claim(ctx))
		// The claim's key without a session (a plain write).
		emit(p.kvPut(ctx, "consul-kv-put-claim", "svckit/streams/"+p.cfg.Stream+"/owner", "intruder"))
		emit(p.aclBootstrap(ctx))
	}
	emit(p.catalogRead(ctx))
}

// kvPut writes key with cas=0: the ACL check (key:write) is the same as a
// plain PUT's, but an existing key is left alone ("false").
func (p *prober) kvPut(ctx context.Context, attempt, key, body string) result {
	path := "/v1/kv/" + key + "?cas=0"
	target := p.consulURL(path)
	a, err := p.consulDo(ctx, http.MethodPut, path, body)
	if err != nil {
		return failed(attempt, target, err)
	}
	r := result{attempt, target, a.outcome(), a.String()}
	if a.status == http.StatusOK {
		switch b := strings.TrimSpace(string(a.body)); b {
		case "true":
			r.Detail += `: "true", written`
		case "false":
			r.Detail += `: "false", the ACL let the write through (cas=0 kept the existing value)`
		default:
			r.Detail += ": " + firstLine(a.body)
		}
	}
	return r
}

// aclBootstrap asks for the ACL system's bootstrap, which hands whoever
// gets it a management token: refused once the datacenter's ACLs are
// bootstrapped (Consul answers 403 "ACL bootstrap no longer allowed").
func (p *prober) aclBootstrap(ctx context.Context) result {
	const attempt, path = "consul-acl-bootstrap", "/v1/acl/bootstrap"
	a, err := p.consulDo(ctx, http.MethodPut, path, "")
	if err != nil {
		return failed(attempt, p.consulURL(path), err)
	}
	return result{attempt, p.consulURL(path), a.outcome(), a.String()}
}

func (p *prober) kvRead(ctx context.Context) result {
	const attempt, path = "consul-kv-read", "/v1/kv/svckit/?recurse"
	target := p.consulURL(path)
	a, err := p.consulDo(ctx, http.MethodGet, path, "")
	if err != nil {
		return failed(attempt, target, err)
	}
	r := result{attempt, target, a.outcome(), a.String()}
	switch a.status {
	case http.StatusNotFound:
		r.Outcome = refused
		r.Detail += " (Consul answers 404 when the ACL filters out every key)"
	case http.StatusOK:
		var kvs []struct{ Key string }
		if err := json.Unmarshal(a.body, &kvs); err != nil {
			r.Detail += ": not a KV list: " + err.Error()
			break
		}
		if len(kvs) == 0 {
			r.Outcome = refused
			r.Detail += ": empty list (ACL-filtered)"
			break
		}
		keys := make([]string, 0, 5)
		for i, kv := range kvs {
			if i == 5 {
				keys = append(keys, "...")
				break
			}
			keys = append(keys, kv.Key)
		}
		// the keys only: values may be secrets' hashes or policies
		r.Detail += fmt.Sprintf(": %d keys readable: %s", len(kvs), strings.Join(keys, " "))
	}
	return r
}

func (p *prober) serviceRegister(ctx context.Context) result {
	const attempt, path = "consul-service-register", "/v1/agent/service/register"
	const body = `{"ID":"intruder-worker","Name":"worker","Tags":["svckit-relay"],"Address":"10.0.0.66","Port":8080}`
	target := p.consulURL(path)
	a, err := p.consulDo(ctx, http.MethodPut, path, body)
	if err != nil {
		return failed(attempt, target, err)
	}
	r := result{attempt, target, a.outcome(), a.String()}
	if a.status/100 == 2 {
		// it was registered: take it away again
		d, err := p.consulDo(ctx, http.MethodPut, "/v1/agent/service/deregister/intruder-worker", "")
		if err != nil {
			r.Detail += "; cleanup: " + err.Error()
		} else {
			r.Detail += "; cleanup: " + d.String()
		}
	}
	return r
}

func (p *prober) serviceDeregister(ctx context.Context) result {
	const attempt = "consul-service-deregister"
	id, how := p.sensorID(ctx)
	path := "/v1/agent/service/deregister/" + url.PathEscape(id)
	target := p.consulURL(path)
	a, err := p.consulDo(ctx, http.MethodPut, path, "")
	if err != nil {
		r := failed(attempt, target, err)
		r.Detail = how + "; " + r.Detail
		return r
	}
	r := result{attempt, target, a.outcome(), how + "; " + a.String()}
	if a.status == http.StatusNotFound {
		// Consul looks the service up before it checks the ACL
		r.Detail += " (the service is not registered on this agent: the ACL was not tested; pass --sensor-id)"
	}
	return r
}

// sensorID is --sensor-id, else the first sensor in the catalog if the
// catalog can be read, else "sensor"; how says which.
func (p *prober) sensorID(ctx context.Context) (id, how string) {
	if p.cfg.SensorID != "" {
		return p.cfg.SensorID, "sensor id from --sensor-id"
	}
	a, err := p.consulDo(ctx, http.MethodGet, "/v1/catalog/service/sensor", "")
	if err != nil {
		return "sensor", "sensor id \"sensor\" (catalog lookup: " + err.Error() + ")"
	}
	var svcs []struct{ ServiceID string }
	if a.status == http.StatusOK && json.Unmarshal(a.body, &svcs) == nil && len(svcs) > 0 && svcs[0].ServiceID != "" {
		return svcs[0].ServiceID, fmt.Sprintf("sensor id %q from the catalog", svcs[0].ServiceID)
	}
	return "sensor", "sensor id \"sensor\" (catalog lookup: HTTP " + a.statusLine + ", " + firstLine(a.body) + ")"
}

func (p *prober) claim(ctx context.Context) result {
	const attempt = "consul-claim"
	owner := "/v1/kv/svckit/streams/" + p.cfg.Stream + "/owner"
	target := p.consulURL(owner)
	a, err := p.consulDo(ctx, http.MethodPut, "/v1/session/create", `{"Name":"intruder","TTL":"30s"}`)
	if err != nil {
		return failed(attempt, target, err)
	}
	if a.status != http.StatusOK {
		return result{attempt, target, a.outcome(), a.String()}
	}
	var s struct{ ID string }
	if err := json.Unmarshal(a.body, &s); err != nil || s.ID == "" {
		return result{attempt, target, allowed, a.String() + ": no session ID in " + firstLine(a.body)}
	}
	detail := "session " + s.ID + " created"
	path := owner + "?acquire=" + url.QueryEscape(s.ID)
	acq, err := p.consulDo(ctx, http.MethodPut, path, "intruder")
	var r result
	switch {
	case err != nil:
		r = failed(attempt, target, err)
		r.Detail = detail + "; acquire: " + r.Detail
	case acq.status != http.StatusOK:
		r = result{attempt, target, acq.outcome(), detail + "; acquire: " + acq.String()}
	default:
		r = result{attempt, target, allowed, detail + "; acquire: " + acq.String()}
		switch b := strings.TrimSpace(string(acq.body)); b {
		case "true":
			r.Detail += `: "true", the intruder owns the stream`
		case "false":
			r.Detail += `: "false", the ACL let the write through (the lock is held by another session)`
		default:
			r.Detail += ": " + firstLine(acq.body)
		}
	}
	d, err := p.consulDo(ctx, http.MethodPut, "/v1/session/destroy/"+url.PathEscape(s.ID), "")
	if err != nil {
		r.Detail += "; destroy: " + err.Error()
	} else {
		r.Detail += "; destroy: " + d.String()
	}
	return r
}

func (p *prober) catalogRead(ctx context.Context) result {
	const attempt, path = "consul-catalog-read", "/v1/catalog/services"
	target := p.consulURL(path)
	a, err := p.consulDo(ctx, http.MethodGet, path, "")
	if err != nil {
		return failed(attempt, target, err)
	}
	r := result{attempt, target, a.outcome(), a.String()}
	if a.status == http.StatusOK {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(a.body, &m); err != nil {
			r.Detail += ": not a service map: " + err.Error()
			return r
		}
		names := make([]string, 0, len(m))
		for k := range m {
			if k != "consul" {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		if len(names) == 0 {
			r.Outcome = refused
			r.Detail += fmt.Sprintf(": %d services, none but consul (ACL-filtered)", len(m))
		} else {
			r.Detail += ": services readable: " + strings.Join(names, " ")
		}
	}
	return r
}

// consulHTTPPort asks the plain-HTTP port, which should be closed; it
// never sends the token over plain HTTP (status/leader needs none).
func (p *prober) consulHTTPPort(ctx context.Context) result {
	const attempt = "consul-http-port"
	target := strings.TrimRight(p.cfg.ConsulHTTP, "/") + "/v1/status/leader"
	a, err := p.do(ctx, http.MethodGet, target, "", nil)
	if err != nil {
		return failed(attempt, target, err)
	}
	r := result{attempt, target, a.outcome(), a.String()}
	if a.status == http.StatusOK {
		r.Detail += ": " + firstLine(a.body)
	}
	return r
}

// --- svckit services --------------------------------------------------

func (p *prober) service(ctx context.Context, base string, emit func(result)) {
	base = strings.TrimRight(base, "/")
	control := p.cfg.ReplaySecret != ""
	auth := "" // "sign": the control signs each request with the replay secret
	q := url.Values{"stream": {p.cfg.Stream}}.Encode()
	emit(p.svc(ctx, "svc-streams", http.MethodGet, base+"/streams", auth))
	emit(p.svc(ctx, "svc-replay", http.MethodGet, base+"/replay?"+q+"&from=1&to=1", auth))
	emit(p.svc(ctx, "svc-snapshot", http.MethodGet, base+"/snapshot?"+q, auth))
	emit(p.svc(ctx, "svc-deadletters-list", http.MethodGet, base+"/deadletters?topic=readings", auth))
	emit(p.svc(ctx, "svc-state", http.MethodGet, base+"/state", auth))
	emit(p.svc(ctx, "svc-identities", http.MethodGet, base+"/identities", auth))
	// The metrics name the streams and count their messages: the control
	// sends the metrics token, as Prometheus would.
	if p.cfg.MetricsToken != "" {
		emit(p.svc(ctx, "svc-metrics", http.MethodGet, base+"/metrics", "Bearer "+p.cfg.MetricsToken))
	} else {
		emit(p.svc(ctx, "svc-metrics", http.MethodGet, base+"/metrics", auth))
	}
	// nsqd's statistics (svckit nsqd-stats, beside each nsqd): signed, by
	// the control, with their own secret; the replay secret is refused.
	if p.cfg.StatsSecret != "" {
		emit(p.svc(ctx, "svc-stats", http.MethodGet, base+"/stats", signature(p.cfg.StatsSecret, http.MethodGet, "/stats", time.Now())))
	} else {
		emit(p.svc(ctx, "svc-stats", http.MethodGet, base+"/stats", auth))
	}
	if !control {
		r := p.svc(ctx, "svc-deadletters-delete", http.MethodDelete, base+"/deadletters/readings/intruder-0", auth)
		if strings.Contains(r.Detail, "HTTP 404") {
			r.Detail += " (reached the handler: authentication passed)"
		}
		emit(r)
		// A request signed with a wrong secret.
		emit(p.svc(ctx, "svc-wrong-secret", http.MethodGet, base+"/streams", signature("wrong", http.MethodGet, "/streams", time.Now())))
	}
}

// console tries the console's state, its events and a requeue: with no
// token and a wrong one, or (the control) with the operator's.
func (p *prober) console(ctx context.Context, base string, emit func(result)) {
	control := p.cfg.ConsoleToken != ""
	bearer := ""
	if control {
		bearer = "Bearer " + p.cfg.ConsoleToken
	}
	do := func(attempt, method, path, body, auth string) {
		h := map[string]string{"Authorization": auth}
		if body != "" {
			h["Content-Type"] = "application/json"
		}
		a, err := p.do(ctx, method, base+path, body, h)
		if err != nil {
			emit(failed(attempt, base+path, err))
			return
		}
		r := result{attempt, base + path, a.outcome(), a.String()}
		if a.status == http.StatusNotFound {
			r.Detail += " (reached the handler: authentication passed)"
		}
		emit(r)
	}
	do("console-state", http.MethodGet, "/api/state", "", bearer)
	do("console-lag-history", http.MethodGet, "/api/lag-history", "", bearer)
	// A requeue of a letter that does not exist: the control's reaches
	// the handler (404) and changes nothing.
	do("console-requeue", http.MethodPost, "/api/deadletters/requeue", `{"topic":"readings","id":"intruder-0"}`, bearer)
	if !control {
		// The events stream on (the control's would not end).
		do("console-events", http.MethodGet, "/api/events", "", "")
		do("console-wrong-token", http.MethodGet, "/api/state", "", "Bearer not-the-operator-token")
	}
}

func (p *prober) svc(ctx context.Context, attempt, method, target, auth string) result {
	if auth == "" && p.cfg.ReplaySecret != "" {
		// The positive control: signed as svckit's clients sign, written
		// here from the protocol (docs/architecture.md), not svckit's code.
		u, err := url.Parse(target)
		if err != nil {
			return failed(attempt, target, err)
		}
		auth = signature(p.cfg.ReplaySecret, method, u.RequestURI(), time.Now())
	}
	a, err := p.do(ctx, method, target, "", map[string]string{"Authorization": auth})
	if err != nil {
		return failed(attempt, target, err)
	}
	return result{attempt, target, a.outcome(), a.String()}
}

// --- text ---------------------------------------------------------------

// firstLine is b's first non-empty line, printable and at most 200 runes.
func firstLine(b []byte) string {
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return oneLine(line, 200)
		}
	}
	return ""
}

// oneLine is s on one line of printable characters, at most max runes.
func oneLine(s string, max int) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == max {
			b.WriteString("...")
			break
		}
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			r = ' '
		case !unicode.IsPrint(r):
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// signature is the Authorization of a request signed with secret:
// Svckit-HMAC ts=…,nonce=…,mac=base64url(HMAC-SHA256(secret,
// "svckit-request\n" + method + "\n" + uri + "\n" + ts + "\n" + nonce)),
// for a request without Svckit-* headers.
func signature(secret, method, uri string, now time.Time) string {
	raw := make([]byte, 16)
	_, _ = rand.Read(raw)
	nonce := base64.RawURLEncoding.EncodeToString(raw)
	ts := strconv.FormatInt(now.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("svckit-request\n" + method + "\n" + uri + "\n" + ts + "\n" + nonce))
	return "Svckit-HMAC ts=" + ts + ",nonce=" + nonce + ",mac=" + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
