package operator

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/nsqauth"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/testenv"
)

// clearSecretEnv keeps the test's environment from giving the CLI a
// secret (restored after the test).
func clearSecretEnv(t *testing.T) {
	t.Helper()
	for _, v := range []string{"SVCKIT_NSQ_AUTH_SECRET", "SVCKIT_NSQ_AUTH_SECRET_FILE", "SVCKIT_REPLAY_SECRET", "SVCKIT_REPLAY_SECRET_FILE"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
}

// wantRefusal runs the CLI and wants it refused: exit 1, nothing on
// stdout but what is listed, and one line on stderr holding every want.
func wantRefusal(t *testing.T, what string, args []string, wants ...string) {
	t.Helper()
	code, _, errs := runCLI(t, args...)
	line := strings.TrimSuffix(errs, "\n")
	if code != ExitFailure || strings.Contains(line, "\n") || !strings.HasPrefix(line, "svckit: ") {
		t.Errorf("%s: exit %d, stderr %q: want exit 1 and one line", what, code, errs)
		return
	}
	for _, w := range wants {
		if !strings.Contains(line, w) {
			t.Errorf("%s: stderr lacks %q:\n%s", what, w, line)
		}
	}
	t.Logf("%s:\n%s", what, line)
}

// The names of what to set, in every refusal of the operator's NSQ secret.
var nsqSecretNames = []string{"--nsq-auth-secret-file", "SVCKIT_NSQ_AUTH_SECRET_FILE", "--nsq-auth-secret", "SVCKIT_NSQ_AUTH_SECRET",
	laptopOperatorNSQSecret, "svckit nsqauth issue --identity operator"}

// laptopSecrets runs the repository's etc/nsqauth/secrets.sh as the
// Procfile's nsqauth process does, from root (the repository's stand-in),
// and returns the environment it gives nsqauth (NSQAUTH_SECRET_* → secret).
func laptopSecrets(t *testing.T, root string) map[string]string {
	t.Helper()
	cmd := exec.Command("sh", filepath.Join(repoRoot, "etc", "nsqauth", "secrets.sh"))
	cmd.Dir = root
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NSQAUTH_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// Its default secrets directory (the hint's); the repository's policy.
	cmd.Env = append(cmd.Env, "NSQAUTH_POLICY="+filepath.Join(repoRoot, "etc", "nsqauth", "policy.json"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("etc/nsqauth/secrets.sh: %v", err)
	}
	env := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if !ok {
			t.Fatalf("etc/nsqauth/secrets.sh printed %q", sc.Text())
		}
		env[k] = v
	}
	return env
}

// Every refusal by nsqd's authorization that the operator can meet names
// the flag and variable to set and where the laptop keeps the operator's
// secret, telling no secret from a refused one: against the real nsqd
// (--auth-http-address) asking svckit's authorization server with the
// repository's laptop policy and the secrets etc/nsqauth/secrets.sh
// makes. The file the message names for the laptop is where the script
// puts the operator's secret, and that file works.
func TestNSQRefusalsNameTheOperatorsSecret(t *testing.T) {
	clearSecretEnv(t)
	root := t.TempDir()
	env := laptopSecrets(t, root)
	operatorFile := filepath.Join(root, laptopOperatorNSQSecret)
	if b, err := os.ReadFile(operatorFile); err != nil || string(b) != env["NSQAUTH_SECRET_OPERATOR"] {
		t.Fatalf("etc/nsqauth/secrets.sh did not make the operator's secret at %s (the file the refusals name): %q %v", laptopOperatorNSQSecret, b, err)
	}
	table, err := nsqauth.LoadFile(filepath.Join(repoRoot, "etc", "nsqauth", "policy.json"), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	authSrv := nsqauth.NewServer(nsqauth.ServerOptions{})
	authSrv.SetTable(table)
	mux := http.NewServeMux()
	authSrv.Register(func(pattern string, h http.Handler) { mux.Handle(pattern, h) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	stopAuth := func() {
		hs.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("authorization server: %v", err)
		}
	}
	authUp := true
	defer func() {
		if authUp {
			stopAuth()
		}
	}()

	st := testenv.StartStackWith(t, testenv.NSQDOptions{ExtraArgs: []string{"--auth-http-address=" + ln.Addr().String()}})
	consul := "--consul-addr=" + st.Consul.HTTPAddr
	// --wait: nsqd refuses a SUB after the connection is made.
	ls := []string{"deadletter", "ls", "--topic=readings", "--wait=1s"}

	wantRefusal(t, "deadletter ls without a secret", append([]string{consul}, ls...),
		append([]string{"Auth Required", "none was given", "give the operator's NSQ secret with"}, nsqSecretNames...)...)
	wantRefusal(t, "deadletter requeue without a secret", []string{consul, "deadletter", "requeue", "--topic=readings", "--wait=200ms"},
		append([]string{"Auth Required", "none was given"}, nsqSecretNames...)...)
	wantRefusal(t, "deadletter ls with an unknown secret", append([]string{consul, "--nsq-auth-secret=" + nsqauth.NewSecret()}, ls...),
		append([]string{"E_UNAUTHORIZED", "knows no such secret", "give the operator's NSQ secret instead"}, nsqSecretNames...)...)
	// The worker's secret is known, but the worker may not read *.dead.
	t.Setenv("SVCKIT_NSQ_AUTH_SECRET", env["NSQAUTH_SECRET_WORKER"])
	wantRefusal(t, "deadletter ls with the worker's secret", append([]string{consul}, ls...),
		append([]string{"E_UNAUTHORIZED", "AUTH failed for SUB", "is not the operator's", "etc/nsqauth/policy.json", "svckit/nsqauth/policy", "instead"}, nsqSecretNames...)...)
	os.Unsetenv("SVCKIT_NSQ_AUTH_SECRET")

	// replay --publish: nsqd's refusal before anything is replayed (the
	// owner registered here is never asked), not after 30s of retries.
	testenv.Register(t, st.Consul, &api.AgentServiceRegistration{ID: "sensor-refusal", Name: "sensor", Address: "127.0.0.1", Port: testenv.FreePort(t),
		Tags: []string{replay.OwnerTag("s1"), replay.PublishesTag("readings")}})
	testenv.WaitPassing(t, st.Consul, "sensor", 1)
	start := time.Now()
	wantRefusal(t, "replay --publish without a secret", []string{consul, "replay", "--stream=s1", "--from=1", "--to=5", "--publish=readings", "--quiet"},
		append([]string{"republishing to readings", "Auth Required", "none was given"}, nsqSecretNames...)...)
	if d := time.Since(start); d > publishStall/2 {
		t.Errorf("replay --publish took %s to be refused", d)
	}
	wantRefusal(t, "replay --publish with an unknown secret",
		[]string{consul, "--nsq-auth-secret=" + nsqauth.NewSecret(), "replay", "--stream=s1", "--from=1", "--to=5", "--publish=readings", "--quiet"},
		append([]string{"E_UNAUTHORIZED", "knows no such secret", "instead"}, nsqSecretNames...)...)

	// The file the refusals name for the laptop is the operator's secret.
	if code, out, errs := runCLI(t, append([]string{consul, "--nsq-auth-secret-file=" + operatorFile}, ls...)...); code != 0 || !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("deadletter ls --nsq-auth-secret-file %s: exit %d\n%s%s", laptopOperatorNSQSecret, code, out, errs)
	}
	t.Setenv("SVCKIT_NSQ_AUTH_SECRET_FILE", operatorFile)
	if code, out, errs := runCLI(t, append([]string{consul}, ls...)...); code != 0 || !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("deadletter ls with SVCKIT_NSQ_AUTH_SECRET_FILE=%s: exit %d\n%s%s", laptopOperatorNSQSecret, code, out, errs)
	}

	// With its authorization server away, nsqd refuses every secret
	// unjudged: the message says so rather than blame the secret.
	stopAuth()
	authUp = false
	wantRefusal(t, "deadletter ls with the authorization server away", append([]string{consul}, ls...),
		"E_AUTH_FAILED", "judged no secret", "svckit nsqauth serve", "4180")
}

// startReplayOwner runs a svckit service in this process that owns stream
// s1 (topic t1) and serves its /streams, /replay, /snapshot and
// /deadletters, with args (its replay secret), until the test ends; it
// returns the service and its HTTP address as registered in Consul.
func startReplayOwner(t *testing.T, st *testenv.Stack, name string, args ...string) (*service.Service, string) {
	t.Helper()
	cfg := serviceConfig(t, name, append([]string{"--consul-addr=" + st.Consul.HTTPAddr, "--data-dir=" + t.TempDir(),
		"--check-interval=1s", "--shutdown-timeout=10s"}, args...)...)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := service.New(ctx, cfg, testenv.Logger(t))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if name == "owner" {
		if _, err := s.OpenStream(ctx, service.StreamOptions{Stream: "s1", Topic: "t1",
			Owner: replay.OwnerOptions{Log: retainlog.DefaultOptions(""), ContentType: "text/plain"}}); err != nil {
			cancel()
			t.Fatal(err)
		}
	}
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("service %s: %v", name, err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("service %s did not stop", name)
		}
	})
	e := testenv.WaitPassing(t, st.Consul, name, 1)[0]
	return s, net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port))
}

// Every refusal of a service's signed endpoints the operator can meet
// (replay, stream show, deadletter ls, probe) names the flag and variable
// to set and where the secret is kept, telling no secret from a refused
// one; a service that cannot prove the secret given (one run without a
// secret, as on the laptop) is told apart. Against a real svckit service
// (an owner of a stream) started with the replay secret that svckit
// secrets init makes (the file the message names), which the CLI's
// --secret-file and SVCKIT_REPLAY_SECRET_FILE then give.
func TestReplaySecretRefusalsNameTheSecret(t *testing.T) {
	clearSecretEnv(t)
	dir := t.TempDir()
	if _, err := initSecrets(dir, "/secrets", "dc1", []string{"h1"}, nil); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, replaySecretFile)
	if _, err := os.Stat(secretFile); err != nil {
		t.Fatalf("svckit secrets init made no %s (the file the refusals name): %v", replaySecretFile, err)
	}
	st := testenv.StartStack(t)
	owner, ownerAddr := startReplayOwner(t, st, "owner", "--replay-secret-file="+secretFile)
	consul := "--consul-addr=" + st.Consul.HTTPAddr
	names := []string{"--secret-file", "SVCKIT_REPLAY_SECRET_FILE", "--secret", "SVCKIT_REPLAY_SECRET",
		"$SVCKIT_SECRETS/DC/replay.secret", "~/.svckit/secrets/DC/replay.secret", "./build.sh secrets DC", "the laptop keeps none"}
	none := append([]string{"HTTP 401", "give the services' replay secret with"}, names...)
	wrong := append([]string{"HTTP 401", "give the service's own replay secret"}, names...)

	wantRefusal(t, "stream show without a secret", []string{consul, "stream", "show", "--stream=s1"},
		append([]string{"GET /streams refused", "a shared secret is required"}, none...)...)
	wantRefusal(t, "stream show with a wrong secret", []string{consul, "stream", "show", "--stream=s1", "--secret=" + nsqauth.NewSecret()},
		append([]string{"GET /streams refused", "wrong shared secret"}, wrong...)...)
	wantRefusal(t, "replay without a secret", []string{consul, "replay", "--stream=s1", "--from=1", "--owner-service=owner", "--quiet"},
		append([]string{"asking owner", "GET /streams refused"}, none...)...)
	wantRefusal(t, "replay --to without a secret", []string{consul, "replay", "--stream=s1", "--from=1", "--to=1", "--owner-service=owner", "--quiet"},
		append([]string{"replaying s1", "GET /replay?", "refused"}, none...)...)
	wantRefusal(t, "deadletter ls without a secret", []string{consul, "deadletter", "ls", "--topic=t1", "--wait=200ms"},
		append([]string{"instance " + owner.Config.InstanceID, "its local dead letters are not listed", "GET /deadletters?topic=t1 refused"}, none...)...)
	wantRefusal(t, "deadletter ls with a wrong secret", []string{consul, "deadletter", "ls", "--topic=t1", "--wait=200ms", "--secret=" + nsqauth.NewSecret()},
		append([]string{"GET /deadletters?topic=t1 refused"}, wrong...)...)
	wantRefusal(t, "probe without a secret", []string{"probe", "http://" + ownerAddr + "/streams"},
		append([]string{"HTTP 401"}, none...)...)

	// The file the message names, given as it says.
	if code, out, errs := runCLI(t, consul, "stream", "show", "--stream=s1", "--secret-file="+secretFile); code != 0 || !strings.Contains(out, "owner "+owner.Config.InstanceID) {
		t.Fatalf("stream show --secret-file: exit %d\n%s%s", code, out, errs)
	}
	t.Setenv("SVCKIT_REPLAY_SECRET_FILE", secretFile)
	if code, out, errs := runCLI(t, consul, "deadletter", "ls", "--topic=t1", "--wait=200ms"); code != 0 || !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("deadletter ls with SVCKIT_REPLAY_SECRET_FILE: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := runCLI(t, consul, "stream", "show", "--stream=s1", "--secret=x"); code != ExitUsage || !strings.Contains(errs, "give one") {
		t.Errorf("--secret with SVCKIT_REPLAY_SECRET_FILE: exit %d %s; want 2", code, errs)
	}

	// A service run without a secret (the laptop's) proves none: the
	// secret given is not what is wrong with it.
	plain, _ := startReplayOwner(t, st, "plain")
	wantRefusal(t, "deadletter ls with a secret, a service without one", []string{consul, "deadletter", "ls", "--topic=t1", "--wait=200ms"},
		"instance "+plain.Config.InstanceID, "did not prove", "a service run without a replay secret", "proves none", "set none of --secret-file or SVCKIT_REPLAY_SECRET_FILE")
}
